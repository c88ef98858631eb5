//! Every environment variable cudaimg reads, as a documented constant, in one place (as uv's
//! `EnvVars`). Code reads a variable only through one of these names, so this file is the
//! complete list; the README's "Environment" section is written from it.
//!
//! [`regular`]: the one way a file that a user or a peer names is opened and read (a
//! regular file, checked before any read, through a cap), at the bottom of the layers so
//! that every crate that reads such a file can use it.

pub mod regular;

/// The names of the environment variables cudaimg reads.
pub struct EnvVars;

impl EnvVars {
    /// The mirror configuration file (`--config`). Default: `./mirrors.toml`, then
    /// `$XDG_CONFIG_HOME/cudaimg/mirrors.toml`.
    pub const CUDAIMG_CONFIG: &'static str = "CUDAIMG_CONFIG";
    /// The local OCI image layout (`--store`). Default: `$XDG_DATA_HOME/cudaimg`.
    pub const CUDAIMG_STORE: &'static str = "CUDAIMG_STORE";
    /// `doctor`: the `nvidia-smi` to run instead of the one on `PATH`.
    pub const CUDAIMG_NVIDIA_SMI: &'static str = "CUDAIMG_NVIDIA_SMI";
    /// `doctor`: the file read instead of `/proc/driver/nvidia/version`.
    pub const CUDAIMG_PROC_DRIVER_VERSION: &'static str = "CUDAIMG_PROC_DRIVER_VERSION";
    /// `doctor`: the file read instead of `/etc/docker/daemon.json`.
    pub const CUDAIMG_DOCKER_DAEMON_JSON: &'static str = "CUDAIMG_DOCKER_DAEMON_JSON";
    /// `doctor`: the CDI spec directories, `:`-separated, instead of `/etc/cdi:/var/run/cdi`.
    pub const CUDAIMG_CDI_DIRS: &'static str = "CUDAIMG_CDI_DIRS";
    /// `pull --load` and `load`: how the image reaches a Docker-API engine (`--load-via`).
    /// `relay`: the engine pulls it from a registry cudaimg serves on 127.0.0.1, layer by
    /// layer as they download; `archive`: a `docker load` archive streamed into it; `auto`
    /// (the default): the relay where the engine says it can reach this host's loopback,
    /// else the archive, which is also the fallback when the relay fails.
    pub const CUDAIMG_LOAD_VIA: &'static str = "CUDAIMG_LOAD_VIA";
    /// `build`: the root of `PyTorch`'s wheel indexes (`{ROOT}/torch/` lists every variant),
    /// instead of `https://download.pytorch.org/whl`; an empty value means the default.
    pub const CUDAIMG_PYTORCH_INDEX: &'static str = "CUDAIMG_PYTORCH_INDEX";
    /// containerd's own (as `ctr` reads it): its socket, for `pull --load=containerd` and
    /// `load --to containerd` (`--containerd-address`).
    pub const CONTAINERD_ADDRESS: &'static str = "CONTAINERD_ADDRESS";
    /// Docker's own: the Engine's socket or address (`unix:///…`, `tcp://…`).
    pub const DOCKER_HOST: &'static str = "DOCKER_HOST";
    /// Docker's own: the context to use (`docker context use`), overriding `currentContext`
    /// in `config.json`; its endpoint is the Engine's address when `DOCKER_HOST` is unset.
    pub const DOCKER_CONTEXT: &'static str = "DOCKER_CONTEXT";
    /// The per-user runtime directory: a rootless Docker's socket is `$XDG_RUNTIME_DIR/docker.sock`.
    pub const XDG_RUNTIME_DIR: &'static str = "XDG_RUNTIME_DIR";
    /// Docker's own: the directory of `config.json` (credentials, credential helpers).
    pub const DOCKER_CONFIG: &'static str = "DOCKER_CONFIG";
    /// The XDG base directory for configuration (`mirrors.toml`).
    pub const XDG_CONFIG_HOME: &'static str = "XDG_CONFIG_HOME";
    /// The XDG base directory for data (the default store).
    pub const XDG_DATA_HOME: &'static str = "XDG_DATA_HOME";
    /// The home directory, the fallback for the XDG directories and `~` in paths.
    pub const HOME: &'static str = "HOME";
    /// Where `doctor` looks for `nvidia-smi` and the container toolkit's binaries.
    pub const PATH: &'static str = "PATH";
    /// The width human output fits into (tables, progress bars); else the terminal's, and
    /// no limit when stdout is not a terminal.
    pub const COLUMNS: &'static str = "COLUMNS";
}
