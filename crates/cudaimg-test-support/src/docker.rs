//! A real Docker Engine for tests: `dockerd` (Debian's `docker.io`) started as root with its
//! own `--data-root`, exec root and socket, no iptables or bridge, stopped on drop. And a
//! runnable CUDA-like image: a fixture's layers plus a layer holding a static busybox.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use tempfile::TempDir;

use super::fixtures::{
    sha256_digest, Document, PlatformImage, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST,
};
use super::push::Pusher;
use super::BlobRef;

pub struct TestDocker {
    child: Child,
    dir: TempDir,
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
        let d = TestDocker { child, dir };
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

    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// The `docker` CLI talking to this engine.
    pub fn docker(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", self.host()).args(args);
        c
    }

    /// `docker image inspect` as JSON.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = self.docker(&["image", "inspect", name]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0].clone()
    }
}

impl Drop for TestDocker {
    fn drop(&mut self) {
        // SIGTERM lets dockerd unmount its overlay layers before the tempdir goes.
        stop_gracefully(&mut self.child);
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
