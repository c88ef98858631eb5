//! Today's container engines for tests, run from a cached Debian testing (forky) chroot:
//! docker.io 28.5 (and its CLI), containerd 2.1, runc 1.3 (`scripts/engines.sh` builds it;
//! Debian stable's own are Docker 20.10 and runc 1.1.5, which Docker 28/29 cannot use: it
//! fails on the time namespace, FIELD.md). Inside the chroot dockerd finds the chroot's runc.
//!
//! Each engine runs in a private mount and PID namespace of its own, on the host's network
//! (the tests' registries listen on 127.0.0.1):
//! - the chroot's root is an overlay (the cache is its read-only lower layer, so it is never
//!   written to, and engines started at once share it), which also makes the root a mount
//!   point: without one, runc and dockerd's layer store fail (`remount /, flags: 0x84000:
//!   invalid argument`, `mount dst=/, flags=MS_REC|MS_SLAVE: invalid argument`) and
//!   containerd's btrfs snapshotter, not finding its directory's mount, takes the metadata
//!   plugin down with it (dockerd with the containerd store then exits: `error initializing
//!   buildkit: ... unknown service containerd.services.leases.v1.Leases`);
//! - `/proc` is the namespace's own, `/sys` and `/dev` the host's, `/run` a tmpfs, and the
//!   host's temporary directory is bound at the same path, so a socket or file under it (each
//!   engine's own directory, a test's sandbox) has one name inside and out;
//! - the first process (PID 1 of the namespace) is a small shell supervisor: it starts the
//!   daemons in order and on SIGTERM stops them in reverse order, each waited for. When it
//!   exits the kernel ends whatever is left in the namespace (shims, containers) and every
//!   mount in it goes away, so nothing leaks into the host's mount table.
//!
//! Commands "inside" (`docker`, `ctr`) enter the same namespaces and root with `nsenter`:
//! ctr's container I/O goes through FIFOs under the namespace's `/run` and its
//! `/proc/self`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The cache's directory name (under [`crate::python_base::cache_dir`]).
pub const ENGINES_DIR: &str = "forky-engines";
/// Written last into a whole chroot by `scripts/engines.sh` (the package versions).
pub const MARKER: &str = ".cudaimg-engines";

/// Whether this run must not skip an engine test: as root, or in CI (`CI=true`), a missing
/// engine is a failure; only a developer's run as another user may print SKIPPED.
pub fn must_run() -> bool {
    is_root() || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// An engine, or `None` after printing why it is skipped. Panics with the reason instead
/// when [`must_run`]: a suite that skips as root or in CI has not tested anything.
pub fn require<T>(engine: Result<T, String>) -> Option<T> {
    match engine {
        Ok(e) => Some(e),
        Err(why) => {
            crate::skip(&format!("engine unavailable: {why}"));
            None
        }
    }
}

static BUILDING: Mutex<()> = Mutex::new(());

/// The chroot of today's engines, built by `scripts/engines.sh` if missing (once per
/// machine, ~1 min); `Err` says why it cannot be had (not root, no debootstrap, no mirror).
pub fn engines_root() -> Result<PathBuf, String> {
    let dir = crate::python_base::cache_dir().join(ENGINES_DIR);
    if dir.join(MARKER).is_file() {
        return Ok(dir);
    }
    if !is_root() {
        return Err(format!(
            "{} is missing and building it needs root (scripts/engines.sh)",
            dir.display()
        ));
    }
    let _one = BUILDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if dir.join(MARKER).is_file() {
        return Ok(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/engines.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("CUDAIMG_TEST_CACHE", crate::python_base::cache_dir())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() || !dir.join(MARKER).is_file() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(dir)
}

/// Why engines cannot run from the chroot here, without building anything.
fn namespace_tools_missing() -> Option<String> {
    for tool in ["unshare", "nsenter", "chroot", "mount"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("`{tool}` is not installed (util-linux, coreutils)"));
        }
    }
    None
}

/// One daemon the supervisor starts: its log file name, its command line (inside the
/// chroot), and the socket whose appearance means the next one may start.
pub struct Daemon {
    pub log: &'static str,
    pub argv: Vec<String>,
    pub ready_socket: Option<PathBuf>,
}

/// Daemons running from the chroot in their own namespaces (see the module's comment);
/// stopped gracefully on drop, their directory removed after.
pub struct Chrooted {
    /// `unshare`, whose child is the namespace's PID 1.
    child: Child,
    /// The supervisor's PID as the host sees it.
    pid1: u32,
    dir: TempDir,
}

// The setup, run by `unshare` in the new namespaces: $1 the cache, $2 the engine's
// directory, $3 the host's temporary directory; the rest is the supervisor's script.
const SETUP: &str = r#"
set -eu
cache=$1 dir=$2 tmp=$3
shift 3
root="$dir/root"
mkdir -p "$dir/overlay/upper" "$dir/overlay/work" "$root"
mount -t overlay overlay -o "lowerdir=$cache,upperdir=$dir/overlay/upper,workdir=$dir/overlay/work" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mkdir -p "$root$tmp"
mount --bind "$tmp" "$root$tmp"
exec chroot "$root" /bin/sh -c "$@"
"#;

// PID 1's script: its arguments are "LOG SOCKET COMMAND" triples (COMMAND quoted for the
// shell, SOCKET `-` for none). Starts each daemon, waiting for its socket before the next,
// then waits on the last; SIGTERM, or a daemon ending early, stops them all, last started
// first, each waited for.
const SUPERVISOR: &str = r#"
set -u
pids=""
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }
stop() {
    trap - TERM INT
    for p in $pids; do kill -TERM "$p" 2>/dev/null; wait "$p"; done
    exit "$1"
}
trap 'stop 0' TERM INT
while [ $# -ge 3 ]; do
    log=$1 sock=$2 cmd=$3
    shift 3
    eval "exec $cmd" >"$log" 2>&1 </dev/null &
    pids="$! $pids"
    if [ "$sock" != - ]; then
        while [ ! -S "$sock" ]; do
            alive "${pids%% *}" || stop 1
            sleep 0.05
        done
    fi
done
wait "${pids%% *}"
stop 1
"#;

impl Chrooted {
    /// Starts `daemons` in order from the chroot at `cache`, in a fresh directory named
    /// `prefix*` under the temporary directory (also returned by [`Chrooted::dir`]).
    /// `prepare` writes config files into that directory first. Returns when the last
    /// daemon's socket exists; the caller checks that it answers.
    pub fn start(
        prefix: &str,
        cache: &Path,
        prepare: impl FnOnce(&Path),
        daemons: impl FnOnce(&Path) -> Vec<Daemon>,
    ) -> Result<Chrooted, String> {
        if let Some(why) = namespace_tools_missing() {
            return Err(why);
        }
        let tmp = std::env::temp_dir()
            .canonicalize()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&tmp)
            .map_err(|e| e.to_string())?;
        prepare(dir.path());
        let daemons = daemons(dir.path());
        let mut args: Vec<String> = Vec::new();
        for d in &daemons {
            args.push(dir.path().join(d.log).display().to_string());
            args.push(
                d.ready_socket
                    .as_ref()
                    .map_or("-".into(), |s| s.display().to_string()),
            );
            args.push(
                d.argv
                    .iter()
                    .map(|a| sh_quote(a))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        let setup_log = std::fs::File::create(dir.path().join("setup.log")).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--propagation", "private"])
            .args(["--", "sh", "-c", SETUP, "setup"])
            .arg(cache)
            .arg(dir.path())
            .arg(&tmp)
            .arg(SUPERVISOR)
            .arg("supervisor")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(setup_log.try_clone().unwrap())
            .stderr(setup_log)
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        let mut c = Chrooted {
            child,
            pid1: 0,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let children = format!("/proc/{0}/task/{0}/children", c.child.id());
        loop {
            if let Some(pid) = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
            {
                c.pid1 = pid;
                break;
            }
            c.check_alive(deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(sock) = daemons.last().and_then(|d| d.ready_socket.clone()) {
            while !sock.exists() {
                c.check_alive(deadline);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(c)
    }

    /// Panics with the logs if the namespace ended or `deadline` passed.
    pub fn check_alive(&mut self, deadline: Instant) {
        let ended = self.child.try_wait().ok().flatten();
        assert!(
            ended.is_none() && Instant::now() < deadline,
            "engine from the chroot {}: {}",
            if ended.is_some() {
                "ended"
            } else {
                "did not start in time"
            },
            self.logs()
        );
    }

    /// The engine's own directory (data, state, sockets, logs), under the temporary
    /// directory: the same path inside the chroot.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `program` run inside: the same mount and PID namespaces, the chroot as its root.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("--target")
            .arg(self.pid1.to_string())
            .args(["--mount", "--pid", "--root", "--", program]);
        c
    }

    /// Every log in the engine's directory, for a failure's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.sort();
        for path in names
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
        {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            out.push_str(&format!("\n--- {}\n{tail}", path.display()));
        }
        out
    }

    /// SIGTERM to the supervisor (the daemons stop last started first), up to 30 s; then
    /// SIGKILL, which ends the whole PID namespace.
    fn stop(&mut self) {
        if self.pid1 != 0 {
            signal(self.pid1, "TERM");
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                eprintln!(
                    "harness: {} stopped in {:.1?}",
                    self.dir().display(),
                    started.elapsed()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.pid1 != 0 {
            signal(self.pid1, "KILL");
        }
        // And `unshare` itself, in case its child never came (it ignores SIGTERM).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Chrooted {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `s` as one word for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// `GET path` over a Unix socket (Docker's and Podman's API): the status code and body, or
/// `None` if nothing answers.
pub fn http_get(socket: &Path, path: &str) -> Option<(u16, String)> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: engine\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

/// Waits until `GET /_ping` on `socket` answers 200; `alive` panics (with logs) when the
/// engine ended or took too long.
pub fn wait_for_ping(socket: &Path, mut alive: impl FnMut(Instant)) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(socket, "/_ping").is_none_or(|(status, _)| status != 200) {
        alive(deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After an engine was dropped: nothing of `dir` is left, no mount in the host's table and
/// no process names it.
pub fn assert_cleaned_up(dir: &Path) {
    let needle = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&needle),
        "mounts under {needle} are left:\n{mounts}"
    );
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            left.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    assert!(left.is_empty(), "processes are left: {left:#?}");
    assert!(!dir.exists(), "{needle} is left");
}
