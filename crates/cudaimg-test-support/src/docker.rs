//! A real Docker Engine for tests, of either age people run:
//! - [`EngineKind::Stable`]: Debian 12's `dockerd` 20.10 (`docker.io` on the host), started as
//!   root with its own `--data-root`, exec root and socket;
//! - [`EngineKind::Current`]: Docker 28.5 from the cached forky chroot ([`crate::chroot`]), with
//!   its own containerd 2.1 (snapshotters the chroot cannot use disabled) and either the
//!   graphdriver store or the containerd image store (Docker 29's default).
//!
//! Both: no iptables, no bridge, the host's network (the tests' registries are on
//! 127.0.0.1), a socket reachable from the host ([`TestDocker::host`]), stopped on drop.
//!
//! And a runnable CUDA-like image: a fixture's layers plus a layer holding a static busybox.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use tempfile::TempDir;

use super::chroot::{self, Chrooted, Daemon};
use super::fixtures::{
    sha256_digest, Document, PlatformImage, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST,
};
use super::push::Pusher;
use super::BlobRef;

/// Which Docker Engine a test gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// The host's Debian 12 `dockerd` 20.10: graphdriver store, image ID = config digest.
    Stable,
    /// The chroot's Docker 28.5 with its own containerd 2.1 and runc 1.3.
    /// `containerd_store`: the containerd image store (`{"features":
    /// {"containerd-snapshotter": true}}`; image ID = manifest or index digest); else overlay2.
    Current { containerd_store: bool },
}

pub struct TestDocker {
    engine: Engine,
    kind: EngineKind,
}

enum Engine {
    Host { child: Child, dir: TempDir },
    Chroot(Chrooted),
}

/// Why no engine could be had here (not root, no dockerd): tests then say so and stop.
pub fn unavailable_reason() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("dockerd needs root".into());
    }
    if Command::new("dockerd").arg("--version").output().is_err() {
        return Some("dockerd is not installed (Debian package docker.io)".into());
    }
    None
}

impl TestDocker {
    pub fn start() -> TestDocker {
        Self::start_with_config(&serde_json::json!({}))
    }

    /// Starts an engine whose `daemon.json` is `config` (e.g. `{"registry-mirrors": [URL]}`).
    pub fn start_with_config(config: &serde_json::Value) -> TestDocker {
        let dir = tempfile::Builder::new()
            .prefix("cudaimg-dockerd-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let config_file = dir.path().join("daemon.json");
        std::fs::write(&config_file, serde_json::to_vec(config).unwrap()).unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(&config_file)
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("--host")
            .arg(format!(
                "unix://{}",
                dir.path().join("docker.sock").display()
            ))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start dockerd");
        let d = TestDocker {
            engine: Engine::Host { child, dir },
            kind: EngineKind::Stable,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d
            .docker(&["version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// Starts an engine of `kind` with `config` as its `daemon.json` (for `Current`, the
    /// store's feature flag is set in it as `kind` says). `Err` only when no such engine can
    /// be had here (not root, no dockerd, the chroot cannot be built): pass it to
    /// [`chroot::require`]. An engine that is there but fails to start panics with its logs.
    pub fn try_start_kind(kind: EngineKind, config: &serde_json::Value) -> Result<Self, String> {
        match kind {
            EngineKind::Stable => match unavailable_reason() {
                Some(why) => Err(why),
                None => Ok(Self::start_with_config(config)),
            },
            EngineKind::Current { containerd_store } => {
                Self::start_current(containerd_store, config)
            }
        }
    }

    /// [`TestDocker::try_start_kind`], panicking when the engine cannot be had.
    pub fn start_kind(kind: EngineKind, config: &serde_json::Value) -> Self {
        Self::try_start_kind(kind, config).unwrap_or_else(|why| panic!("{kind:?}: {why}"))
    }

    fn start_current(containerd_store: bool, config: &serde_json::Value) -> Result<Self, String> {
        if !chroot::is_root() {
            return Err("dockerd needs root".into());
        }
        let cache = chroot::engines_root()?;
        let mut config = config.clone();
        if !config.is_object() {
            config = serde_json::json!({});
        }
        config["features"]["containerd-snapshotter"] = containerd_store.into();
        let started = Instant::now();
        let mut ns = Chrooted::start(
            "cudaimg-dockerd28-",
            &cache,
            |dir| {
                std::fs::write(
                    dir.join("daemon.json"),
                    serde_json::to_vec_pretty(&config).unwrap(),
                )
                .unwrap();
                std::fs::write(
                    dir.join("containerd.toml"),
                    super::containerd::config_toml(dir, false),
                )
                .unwrap();
            },
            |dir| {
                let p = |name: &str| dir.join(name).display().to_string();
                vec![
                    Daemon {
                        log: "containerd.log",
                        argv: vec!["containerd".into(), "--config".into(), p("containerd.toml")],
                        ready_socket: Some(dir.join("containerd.sock")),
                    },
                    Daemon {
                        log: "dockerd.log",
                        argv: [
                            "dockerd",
                            "--containerd",
                            &p("containerd.sock"),
                            "--config-file",
                            &p("daemon.json"),
                            "--data-root",
                            &p("data"),
                            "--exec-root",
                            &p("exec"),
                            "--pidfile",
                            &p("dockerd.pid"),
                            "--host",
                            &format!("unix://{}", p("docker.sock")),
                            "--iptables=false",
                            "--ip6tables=false",
                            "--ip-masq=false",
                            "--bridge=none",
                        ]
                        .map(String::from)
                        .to_vec(),
                        ready_socket: Some(dir.join("docker.sock")),
                    },
                ]
            },
        )?;
        let sock = ns.dir().join("docker.sock");
        chroot::wait_for_ping(&sock, |deadline| ns.check_alive(deadline));
        eprintln!(
            "harness: Docker 28 (containerd store: {containerd_store}) answered in {:.1?}",
            started.elapsed()
        );
        Ok(TestDocker {
            engine: Engine::Chroot(ns),
            kind: EngineKind::Current { containerd_store },
        })
    }

    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// The engine's own directory (data root, exec root, socket, logs).
    pub fn dir(&self) -> &Path {
        match &self.engine {
            Engine::Host { dir, .. } => dir.path(),
            Engine::Chroot(ns) => ns.dir(),
        }
    }

    /// `unix://SOCKET`, for `DOCKER_HOST` on the host.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir().join("docker.sock").display())
    }

    /// dockerd's log (and, for `Current`, containerd's).
    pub fn log(&self) -> String {
        match &self.engine {
            Engine::Host { dir, .. } => {
                std::fs::read_to_string(dir.path().join("dockerd.log")).unwrap_or_default()
            }
            Engine::Chroot(ns) => ns.logs(),
        }
    }

    /// The `docker` CLI talking to this engine: the host's for `Stable`, the chroot's 28.5
    /// (run inside the engine's namespaces) for `Current`. Paths in arguments must be under
    /// the temporary directory (the same inside and out) or go through stdin/stdout.
    pub fn docker(&self, args: &[&str]) -> Command {
        let mut c = match &self.engine {
            Engine::Host { .. } => Command::new("docker"),
            Engine::Chroot(ns) => ns.command("/usr/bin/docker"),
        };
        c.env("DOCKER_HOST", self.host()).args(args);
        c
    }

    /// For `Current`: the socket of the engine's containerd (namespace `moby` holds its
    /// images and, with the containerd store, their content).
    pub fn containerd_address(&self) -> Option<PathBuf> {
        match &self.engine {
            Engine::Host { .. } => None,
            Engine::Chroot(ns) => Some(ns.dir().join("containerd.sock")),
        }
    }

    /// For `Current`: the chroot's `ctr --address SOCK --namespace moby`, inside.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let Engine::Chroot(ns) = &self.engine else {
            panic!("ctr is only wired for EngineKind::Current")
        };
        let mut c = ns.command("/usr/bin/ctr");
        c.arg("--address")
            .arg(ns.dir().join("containerd.sock"))
            .args(["--namespace", "moby"])
            .args(args);
        c
    }

    /// `docker info` as JSON.
    pub fn info(&self) -> serde_json::Value {
        let out = crate::run_ok(&mut self.docker(&["info", "--format", "{{json .}}"]));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Whether `docker info` says the containerd image store holds the images
    /// (`DriverStatus` has `driver-type io.containerd.snapshotter.v1`).
    pub fn uses_containerd_store(&self) -> bool {
        self.info()["DriverStatus"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|kv| kv[0] == "driver-type" && kv[1] == "io.containerd.snapshotter.v1")
    }

    /// `docker image inspect` as JSON.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = crate::run_ok(&mut self.docker(&["image", "inspect", name]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0].clone()
    }
}

impl Drop for TestDocker {
    fn drop(&mut self) {
        // SIGTERM lets dockerd unmount its overlay layers before the tempdir goes. A
        // `Current` engine's namespace stops itself (Chrooted's drop).
        if let Engine::Host { child, .. } = &mut self.engine {
            stop_gracefully(child);
        }
    }
}

/// A single-platform image: `base`'s layers plus a layer with a static busybox at
/// `/bin/busybox`, whose default command prints `message`.
pub struct Runnable {
    pub manifest: Document,
    pub config: Document,
    pub layer: (String, Vec<u8>),
    pub diff_ids: Vec<String>,
}

impl Runnable {
    pub fn build(base: &PlatformImage, message: &str, busybox: &Path) -> Runnable {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        let bytes = std::fs::read(busybox).unwrap();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(0);
        tar.append_data(&mut h, "bin/busybox", bytes.as_slice())
            .unwrap();
        let raw = tar.into_inner().unwrap();
        let diff_id = sha256_digest(&raw);
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let layer = gz.finish().unwrap();
        let layer_digest = sha256_digest(&layer);

        let mut config = base.config.json();
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(diff_id.into());
        config["config"]["Entrypoint"] = serde_json::Value::Null;
        config["config"]["Cmd"] = serde_json::json!(["/bin/busybox", "echo", message]);
        let diff_ids = config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect();
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config = Document {
            media_type: DOCKER_CONFIG.into(),
            digest: sha256_digest(&config_bytes),
            bytes: config_bytes,
        };
        let mut layers: Vec<serde_json::Value> = base
            .layers
            .iter()
            .map(|l| serde_json::json!({"mediaType": l.media_type, "size": l.size, "digest": l.digest}))
            .collect();
        layers.push(serde_json::json!({"mediaType": DOCKER_LAYER, "size": layer.len(), "digest": layer_digest}));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": config.bytes.len(), "digest": config.digest},
            "layers": layers,
        });
        let manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap();
        Runnable {
            manifest: Document {
                media_type: DOCKER_MANIFEST.into(),
                digest: sha256_digest(&manifest_bytes),
                bytes: manifest_bytes,
            },
            config,
            layer: (layer_digest, layer),
            diff_ids,
        }
    }

    /// Pushes it (with `base`'s layers) as `repo:tag`.
    pub fn push(&self, pusher: &Pusher, base: &PlatformImage, repo: &str, tag: &str) {
        pusher.push_platform(repo, base);
        pusher.push_blob(
            repo,
            BlobRef::Bytes {
                digest: &self.layer.0,
                bytes: &self.layer.1,
            },
        );
        pusher.push_blob(
            repo,
            BlobRef::Bytes {
                digest: &self.config.digest,
                bytes: &self.config.bytes,
            },
        );
        pusher.push_manifest(repo, tag, &self.manifest);
    }
}

/// Debian's busybox-static binary.
pub fn busybox() -> PathBuf {
    PathBuf::from("/bin/busybox")
}

/// Stops a daemon the way an init system would: SIGTERM, up to 20 s to exit (dockerd and
/// containerd unmount their layers then, before their tempdir is removed), then SIGKILL.
pub fn stop_gracefully(child: &mut std::process::Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
