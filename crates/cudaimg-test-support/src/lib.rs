//! Integration-test harness for cudaimg, shared by the one integration test binary
//! (`tests/it/`) and the examples, compiled once as a library.
//!
//! - [`registry`]: real registries (`docker-registry`) per test, anonymous, Basic or Bearer auth,
//!   or pull-through mirrors; endpoints that refuse or never answer.
//! - [`fixtures`]: deterministic CUDA-like images (nvidia/cuda 12.4.1 shapes, both arches).
//! - [`push`]: byte-exact uploads of fixtures into a registry.
//! - [`token`]: a Bearer token server for distribution's token auth.
//! - [`docker`], [`podman`], [`containerd`]: real engines of today (Docker 20.10 and 28.5 with
//!   either store, Podman 4.3, containerd 2.1), Docker 28 and containerd from the cached forky
//!   chroot that [`chroot`] runs in namespaces of their own.
//! - [`Sandbox`] / [`cudaimg()`]: the CLI (and skopeo) run with a clean environment, so the
//!   host's config, credentials and proxies never leak into a test.
// A test harness: a failed setup step should stop the test with its message.
#![allow(clippy::unwrap_used)]
// Test code: std::fs is fine where a failure stops the test with its own message.
#![allow(clippy::disallowed_methods)]
// Test code: casts of small test sizes, long scenario functions, helper items next to the
// step that uses them, and big fixtures on the stack are fine here.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::too_many_lines,
    clippy::items_after_statements,
    clippy::large_stack_arrays,
    clippy::needless_pass_by_value,
    clippy::case_sensitive_file_extension_comparisons
)]

pub mod attest;
pub mod chroot;
pub mod containerd;
pub mod docker;
pub mod fixtures;
pub mod podman;
pub mod proxy;
pub mod push;
pub mod python_base;
pub mod registry;
pub mod token;

use std::ffi::OsStr;
use std::fs;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

pub use fixtures::{
    Arch, BlobRef, CudaSpec, Document, Fixture, FixtureStore, Flavor, Layer, MediaTypes,
    PlatformImage, Scale,
};
pub use proxy::{Fault, FaultProxy, ProxyRequest};
pub use push::Pusher;
pub use registry::{dead_endpoint, Blackhole, RegistryOptions, Request, TestRegistry};
pub use token::TokenServer;

/// Says why a test cannot run here, for it to return next. As root or under `CI=true`
/// ([`chroot::must_run`]) this panics instead: a suite that skips there has not tested
/// anything, so a missing tool or privilege is a failure that names what to install. Only a
/// developer's run as another user prints SKIPPED and passes.
pub fn skip(why: &str) {
    assert!(
        !chroot::must_run(),
        "cannot run this test: {why} (as root or with CI set, this is a failure, not a skip; \
         scripts/setup.sh installs what the tests use)"
    );
    eprintln!("SKIPPED: {why}");
}

/// A temporary home for one CLI run (or several): HOME, XDG dirs and `DOCKER_CONFIG` all point
/// inside it. Everything is removed when the sandbox is dropped, so keep it alive until the
/// commands built from it have finished.
pub struct Sandbox {
    dir: TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cudaimg-sandbox-")
            .tempdir()
            .unwrap();
        let sandbox = Sandbox { dir };
        for d in [
            sandbox.home(),
            sandbox.config_home(),
            sandbox.data_home(),
            sandbox.cache_home(),
            sandbox.runtime_dir(),
            sandbox.docker_config_dir(),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        sandbox
    }
    /// The sandbox root (home, docker-config etc. are below it).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    /// `$HOME`
    pub fn home(&self) -> PathBuf {
        self.root().join("home")
    }
    /// `$XDG_CONFIG_HOME` = `$HOME/.config`
    pub fn config_home(&self) -> PathBuf {
        self.home().join(".config")
    }
    /// `$XDG_DATA_HOME` = `$HOME/.local/share`
    pub fn data_home(&self) -> PathBuf {
        self.home().join(".local/share")
    }
    /// `$XDG_CACHE_HOME` = `$HOME/.cache`
    pub fn cache_home(&self) -> PathBuf {
        self.home().join(".cache")
    }
    /// `$XDG_RUNTIME_DIR` (containers tools look for `containers/auth.json` there).
    pub fn runtime_dir(&self) -> PathBuf {
        self.root().join("run")
    }
    /// `$DOCKER_CONFIG`: empty unless a test writes `config.json` into it.
    pub fn docker_config_dir(&self) -> PathBuf {
        self.root().join("docker-config")
    }
    /// A path for `--store` / `CUDAIMG_STORE` (not created: the CLI should create it).
    pub fn store_dir(&self) -> PathBuf {
        self.root().join("store")
    }
    /// Writes a file relative to the sandbox root (parents created) and returns its path,
    /// e.g. `sandbox.write("cudaimg.toml", "...")` for `--config`.
    pub fn write(&self, relative: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.root().join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, contents).unwrap();
        path
    }
    /// Writes a `mirrors.toml` that makes `official` docker.io's endpoint, with `mirrors` in
    /// front of it, and returns its path (for `--config`).
    pub fn write_hub_config(&self, official: &str, mirrors: &[&str]) -> PathBuf {
        let mirrors: Vec<String> = mirrors
            .iter()
            .map(|m| format!("{{ url = \"{m}\" }}"))
            .collect();
        self.write(
            "mirrors.toml",
            format!(
                "[registries.\"docker.io\"]\nendpoint = \"{official}\"\nmirrors = [{}]\n",
                mirrors.join(", ")
            ),
        )
    }

    /// Writes `$DOCKER_CONFIG/config.json`.
    pub fn write_docker_config(&self, json: &serde_json::Value) -> PathBuf {
        let path = self.docker_config_dir().join("config.json");
        fs::write(&path, serde_json::to_vec_pretty(json).unwrap()).unwrap();
        path
    }

    /// `program` with the environment cleared but for PATH, and HOME, XDG_*, `DOCKER_CONFIG`
    /// inside the sandbox. No proxy variables, no CUDAIMG_* from the host.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.config_home())
            .env("XDG_DATA_HOME", self.data_home())
            .env("XDG_CACHE_HOME", self.cache_home())
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env("DOCKER_CONFIG", self.docker_config_dir())
            // Panics of the CLI should say where, in a test log.
            .env("RUST_BACKTRACE", "1")
            .current_dir(self.root());
        command
    }
    /// The cudaimg binary built for this test run, sandboxed.
    pub fn cudaimg(&self) -> Command {
        self.command(cudaimg_binary())
    }
    /// `cudaimg --config CONFIG --store <the sandbox's store> ARGS...`
    pub fn cli(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = self.cudaimg();
        cmd.arg("--config")
            .arg(config)
            .arg("--store")
            .arg(self.store_dir());
        // `build` reads PyTorch's index unless told otherwise: tests stay offline and
        // deterministic (a test that wants an index passes one).
        cmd.env(
            "CUDAIMG_PYTORCH_INDEX",
            format!("{}/whl", crate::dead_endpoint()),
        );
        cmd.args(args);
        cmd
    }
    /// skopeo (an independent registry client, to check what a registry or layout holds).
    pub fn skopeo(&self) -> Command {
        self.command("skopeo")
    }
}

/// The binary under test, found from the running executable: the integration tests
/// (`target/<profile>/deps/it-HASH`) and the examples (`target/<profile>/examples/demo`) both
/// sit one directory below `target/<profile>/`, where cargo puts `cudaimg`.
/// Standard base64 of `s`, e.g. the `auth` field of docker's `config.json`
/// (`base64(user:pass)`).
pub fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub fn cudaimg_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("cudaimg"))
        .unwrap()
}

/// A sandboxed `cudaimg` command that owns its [`Sandbox`]: derefs to [`Command`], so
/// `cudaimg().args(["--json", "pull", r]).output()` works, and the sandbox lives until the end
/// of that statement. Keep the value (`let mut cli = cudaimg();`) to look at the store later.
pub struct Cudaimg {
    pub sandbox: Sandbox,
    command: Command,
}

/// `Command::new(env!("CARGO_BIN_EXE_cudaimg"))` in a fresh [`Sandbox`].
pub fn cudaimg() -> Cudaimg {
    let sandbox = Sandbox::new();
    let command = sandbox.cudaimg();
    Cudaimg { sandbox, command }
}

impl Deref for Cudaimg {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.command
    }
}

impl DerefMut for Cudaimg {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.command
    }
}

/// Runs a command and returns its output, panicking with both streams if it failed.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a command that must fail; returns its output.
pub fn run_fails(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        !output.status.success(),
        "{command:?} succeeded but should have failed:\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.2, say): another
/// client address on this machine, for tests of per-client limits.
pub fn connect_from(from: std::net::Ipv4Addr, to: &str) -> std::io::Result<std::net::TcpStream> {
    let to: std::net::SocketAddr = to
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&std::net::SocketAddr::from((from, 0)).into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}
