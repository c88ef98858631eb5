//! containerd 2.1 on its own, as Kubernetes nodes run it: the forky chroot's `containerd`
//! ([`crate::chroot`]) with its own root, state and gRPC socket (reachable from the host),
//! the overlayfs snapshotter, and the chroot's `ctr` run inside its namespaces.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::chroot::{self, Chrooted, Daemon};

/// The config (version 3, containerd 2.x) of a containerd whose files all live in `dir`.
///
/// The btrfs, zfs and devmapper snapshotters are disabled: in a chroot whose root is not a
/// mount point they fail to find their directory's mount and take the metadata plugin (and
/// with it leases, content, images) down; they are of no use here in any case. `cri`: keep
/// the CRI plugin (a Kubernetes node's containerd) or disable it (as Docker's packages do).
pub fn config_toml(dir: &Path, cri: bool) -> String {
    let mut disabled = vec![
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.devmapper",
    ];
    if !cri {
        disabled.push("io.containerd.grpc.v1.cri");
    }
    let list: Vec<String> = disabled.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "version = 3\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [{list}]\n\n\
         [grpc]\n  address = \"{sock}\"\n",
        root = dir.join("containerd/root").display(),
        state = dir.join("containerd/state").display(),
        list = list.join(", "),
        sock = dir.join("containerd.sock").display(),
    )
}

pub struct TestContainerd {
    ns: Chrooted,
}

impl TestContainerd {
    /// Starts it; `Err` only when it cannot be had here (not root, the chroot cannot be
    /// built): pass it to [`chroot::require`].
    pub fn try_start() -> Result<TestContainerd, String> {
        if !chroot::is_root() {
            return Err("containerd needs root".into());
        }
        let cache = chroot::engines_root()?;
        let started = Instant::now();
        let ns = Chrooted::start(
            "cudaimg-containerd21-",
            &cache,
            |dir| std::fs::write(dir.join("containerd.toml"), config_toml(dir, true)).unwrap(),
            |dir| {
                vec![Daemon {
                    log: "containerd.log",
                    argv: vec![
                        "containerd".into(),
                        "--config".into(),
                        dir.join("containerd.toml").display().to_string(),
                    ],
                    ready_socket: Some(dir.join("containerd.sock")),
                }]
            },
        )?;
        let mut c = TestContainerd { ns };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c
            .ctr(&["version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            c.ns.check_alive(deadline);
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "harness: containerd 2.1 answered in {:.1?}",
            started.elapsed()
        );
        Ok(c)
    }

    pub fn start() -> TestContainerd {
        Self::try_start().unwrap_or_else(|why| panic!("containerd: {why}"))
    }

    /// The gRPC socket, for `--containerd-address` (a path, as containerd's clients take it).
    pub fn address(&self) -> PathBuf {
        self.ns.dir().join("containerd.sock")
    }

    /// Its own directory (root, state, socket, log).
    pub fn dir(&self) -> &Path {
        self.ns.dir()
    }

    pub fn log(&self) -> String {
        self.ns.logs()
    }

    /// The chroot's `ctr --address SOCK ARGS...`, run inside containerd's namespaces (so
    /// `ctr run` can open its FIFOs). Add `-n NAMESPACE` to the arguments as needed.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = self.ns.command("/usr/bin/ctr");
        c.arg("--address").arg(self.address()).args(args);
        c
    }

    /// `ctr -n NAMESPACE images ls`: each image's name and target digest.
    pub fn images(&self, namespace: &str) -> Vec<(String, String)> {
        let out = crate::run_ok(&mut self.ctr(&["-n", namespace, "images", "ls"]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let name = words.next()?.to_owned();
                let digest = words.find(|w| w.starts_with("sha256:"))?.to_owned();
                Some((name, digest))
            })
            .collect()
    }
}
