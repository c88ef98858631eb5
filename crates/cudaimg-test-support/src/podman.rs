//! Podman for tests: Debian 12's `podman` 4.3.1 (a host package, `scripts/setup.sh`) serving
//! Docker's API with `podman system service --time=0 unix://SOCK`, as root, with storage,
//! run root, temporary directory and network configs of its own, so tests never share the
//! host's images or networks.
//!
//! Its `containers.conf` makes `none` the default network (no CNI bridge or iptables rules
//! on the host) and sets `nofile` and `nproc` ulimits of 1024: in this sandbox runc cannot
//! raise those limits to podman's defaults (`error setting rlimit type 7: operation not
//! permitted`), for containers started through the API too.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use super::chroot;
use super::docker::stop_gracefully;

pub struct TestPodman {
    child: Child,
    dir: TempDir,
}

/// The flags `podman` takes for this instance's storage and state, service and CLI alike.
fn storage_flags(dir: &Path) -> Vec<String> {
    let p = |name: &str| dir.join(name).display().to_string();
    vec![
        "--root".into(),
        p("storage"),
        "--runroot".into(),
        p("runroot"),
        "--tmpdir".into(),
        p("libpod-tmp"),
        "--storage-driver".into(),
        "overlay".into(),
        "--cgroup-manager".into(),
        "cgroupfs".into(),
        "--events-backend".into(),
        "file".into(),
        "--network-config-dir".into(),
        p("networks"),
    ]
}

impl TestPodman {
    /// Starts it; `Err` only when it cannot be had here (not root, podman not installed):
    /// pass it to [`chroot::require`].
    pub fn try_start() -> Result<TestPodman, String> {
        if !chroot::is_root() {
            return Err("podman's service with its own storage needs root here".into());
        }
        if Command::new("podman").arg("--version").output().is_err() {
            return Err("podman is not installed (scripts/setup.sh installs it)".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("cudaimg-podman-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\nnetns = \"none\"\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("registries.conf"),
            "unqualified-search-registries = [\"docker.io\"]\nshort-name-mode = \"permissive\"\n",
        )
        .unwrap();
        let started = std::time::Instant::now();
        let log = std::fs::File::create(dir.path().join("podman.log")).unwrap();
        let mut service = Command::new("podman");
        Self::environment(&mut service, dir.path());
        let child = service
            .args(storage_flags(dir.path()))
            .args(["system", "service", "--time=0"])
            .arg(format!(
                "unix://{}",
                dir.path().join("podman.sock").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run podman: {e}"))?;
        let mut p = TestPodman { child, dir };
        let sock = p.dir.path().join("podman.sock");
        chroot::wait_for_ping(&sock, |deadline| {
            let ended = p.child.try_wait().ok().flatten();
            assert!(
                ended.is_none() && std::time::Instant::now() < deadline,
                "podman system service did not start ({ended:?}):\n{}",
                std::fs::read_to_string(p.dir.path().join("podman.log")).unwrap_or_default()
            );
        });
        eprintln!(
            "harness: podman's service answered in {:.1?}",
            started.elapsed()
        );
        Ok(p)
    }

    pub fn start() -> TestPodman {
        Self::try_start().unwrap_or_else(|why| panic!("podman: {why}"))
    }

    fn environment(c: &mut Command, dir: &Path) {
        c.env("CONTAINERS_CONF", dir.join("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"));
    }

    /// `unix://SOCKET` of its Docker-compatible API, for `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("podman.sock").display())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("podman.log")).unwrap_or_default()
    }

    /// `podman` with this instance's storage, state and configuration. `podman run` gets
    /// no network and the ulimits above by default.
    pub fn podman(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        Self::environment(&mut c, self.dir.path());
        c.args(storage_flags(self.dir.path())).args(args);
        c
    }

    /// `podman run --rm --network none` with the ulimits this sandbox needs, spelled out
    /// (as FIELD.md gives them), then `args` (the image, a command).
    pub fn run(&self, args: &[&str]) -> Command {
        let mut c = self.podman(&["run", "--rm", "--network", "none"]);
        c.args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .args(args);
        c
    }

    /// `podman image inspect` as JSON.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = crate::run_ok(&mut self.podman(&["image", "inspect", name]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0].clone()
    }
}

impl Drop for TestPodman {
    fn drop(&mut self) {
        // Containers a test left behind first (their conmon would outlive the service),
        // then the service itself.
        let _ = self
            .podman(&["rm", "--all", "--force", "--time", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        stop_gracefully(&mut self.child);
    }
}
