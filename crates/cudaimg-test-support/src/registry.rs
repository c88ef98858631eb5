//! A real OCI registry (CNCF distribution 2.8, Debian's `docker-registry`) per test.
//!
//! Each [`TestRegistry`] is its own process on 127.0.0.1 with a free port, its storage, config
//! and log in a temporary directory, and is killed when dropped. Tests talk HTTP to it like to
//! any mirror; its access log ([`TestRegistry::requests`], settled by a marker request whose line is
//! polled for) tells which requests reached it.
//!
//! Variants: anonymous ([`TestRegistry::start`]), htpasswd Basic auth
//! ([`TestRegistry::start_with_basic_auth`]; distribution 2.8 does not require TLS for it),
//! Bearer token auth against a [`super::token::TokenServer`], and a pull-through cache of another
//! registry ([`TestRegistry::start_mirror_of`]).
#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The registry binary (Debian package `docker-registry`).
const REGISTRY_BIN: &str = "docker-registry";
/// How long a registry may take to answer `GET /v2/` after spawning.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The path prefix of [`TestRegistry::log`]'s marker requests: outside `/v2/`, so a
/// pull-through cache does not forward them upstream; answered 404 and logged.
const MARKER: &str = "/cudaimg-test-log-marker-";
static MARKERS: AtomicU64 = AtomicU64::new(0);
/// How long a marker's log line may take to appear.
const LOG_DEADLINE: Duration = Duration::from_secs(30);
/// Spawn attempts: another process may take the port between our probe and the registry's bind.
const ATTEMPTS: usize = 5;

/// How a registry is set up; [`TestRegistry::start_with`] takes it.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// htpasswd Basic auth with one user.
    pub basic_auth: Option<(String, String)>,
    /// Bearer token auth (distribution's `auth: token:`).
    pub token_auth: Option<TokenAuthConfig>,
    /// Pull-through cache of this upstream URL (the registry is then read-only).
    pub proxy_remote: Option<String>,
}

/// distribution's `auth.token` section.
#[derive(Clone, Debug)]
pub struct TokenAuthConfig {
    /// Where clients get tokens, e.g. `http://127.0.0.1:PORT/token`.
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// PEM certificate(s) the registry trusts for token signatures.
    pub root_cert_bundle: PathBuf,
}

/// A running `docker-registry serve`, killed on drop.
pub struct TestRegistry {
    child: Child,
    port: u16,
    basic_auth: Option<(String, String)>,
    // Last: dropped after the child is killed (Drop::drop runs before field drops anyway).
    dir: TempDir,
}

/// One line of the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path and query, e.g. `/v2/nvidia/cuda/blobs/sha256:...`.
    pub path: String,
    pub status: u16,
}

impl TestRegistry {
    /// An anonymous registry (pull and push without credentials).
    pub fn start() -> Self {
        Self::start_with(RegistryOptions::default())
    }

    /// A registry that wants `user`/`pass` (htpasswd, bcrypt) for every request, `/v2/` included.
    pub fn start_with_basic_auth(user: &str, pass: &str) -> Self {
        Self::start_with(RegistryOptions {
            basic_auth: Some((user.to_string(), pass.to_string())),
            ..Default::default()
        })
    }

    /// A pull-through cache of `upstream` (distribution's `proxy.remoteurl`): a real mirror that
    /// fetches from upstream on demand. It refuses pushes.
    pub fn start_mirror_of(upstream: &TestRegistry) -> Self {
        Self::start_with(RegistryOptions {
            proxy_remote: Some(upstream.url()),
            ..Default::default()
        })
    }

    /// A registry with any combination of [`RegistryOptions`].
    pub fn start_with(options: RegistryOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cudaimg-registry-")
            .tempdir()
            .unwrap();
        if let Some((user, pass)) = &options.basic_auth {
            // Cost 4 is bcrypt's minimum: every request verifies it, and tests want speed.
            let hash = bcrypt::hash(pass, 4).unwrap();
            fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
        }
        let log_path = dir.path().join("registry.log");
        for attempt in 1..=ATTEMPTS {
            let port = free_port();
            let config = dir.path().join("config.yml");
            fs::write(&config, config_yaml(dir.path(), port, &options)).unwrap();
            let log = File::create(&log_path).unwrap();
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run `{REGISTRY_BIN}` (apt-get install docker-registry): {e}")
                });
            match wait_ready(&mut child, port, &log_path) {
                Ok(()) => {
                    return TestRegistry {
                        child,
                        port,
                        basic_auth: options.basic_auth,
                        dir,
                    };
                }
                Err(Failure::PortTaken) if attempt < ATTEMPTS => {}
                Err(failure) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "docker-registry on 127.0.0.1:{port} did not come up ({failure:?}, \
                         attempt {attempt}/{ATTEMPTS}); log tail:\n{}",
                        tail(&log_path, 40)
                    );
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }
    /// `127.0.0.1:PORT` (for image references: `HOST/nvidia/cuda:TAG`).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The Basic credentials this registry was started with, if any.
    pub fn basic_auth(&self) -> Option<(&str, &str)> {
        self.basic_auth
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }
    /// Root of the filesystem storage (`docker/registry/v2/...`), e.g. to corrupt a blob.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    /// The registry's whole log (application and access log), settled: every request
    /// answered before this call is in it. distribution writes an access-log line after
    /// the answer, so a log read right after a request may lack it; this sends a marker
    /// request first and reads the log once the marker's line is there (the marker lines
    /// themselves are left out). A stopped registry logs nothing more: its log is read as is.
    pub fn log(&self) -> String {
        let text = self.settled_log();
        let kept: Vec<&str> = text.lines().filter(|l| !l.contains(MARKER)).collect();
        kept.join("\n")
    }
    /// Requests answered so far, in order, from the settled access log ([`TestRegistry::log`]):
    /// exact counts, and "nothing was requested", hold for everything answered before the call.
    pub fn requests(&self) -> Vec<Request> {
        self.log().lines().filter_map(parse_access_line).collect()
    }
    /// Digests of blobs this registry served with a GET (any status < 400, ranges included).
    pub fn blob_downloads(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.status < 400)
            .filter_map(|r| {
                let (_, digest) = r.path.split_once("/blobs/")?;
                Some(digest.split('?').next()?.to_string())
            })
            .collect()
    }
}

impl TestRegistry {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn raw_log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log up to (not including) the access-log line of a new marker request.
    fn settled_log(&self) -> String {
        let path = format!("{MARKER}{}", MARKERS.fetch_add(1, SeqCst));
        if !self.send_marker(&path) {
            return self.raw_log();
        }
        let line = format!("\"GET {path} HTTP/1.1\"");
        let deadline = Instant::now() + LOG_DEADLINE;
        loop {
            let text = self.raw_log();
            if let Some(at) = text.find(&line) {
                let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                return text[..start].to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the registry answered {path} but did not log it within {LOG_DEADLINE:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// `GET path` on a connection of its own; whether the registry answered.
    fn send_marker(&self, path: &str) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host()
        );
        let mut answer = Vec::new();
        c.write_all(request.as_bytes()).is_ok()
            && c.read_to_end(&mut answer).is_ok()
            && answer.starts_with(b"HTTP/1.1 ")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
enum Failure {
    PortTaken,
    // Read through `Debug`, in the setup panic message.
    Exited(#[allow(dead_code)] std::process::ExitStatus),
    Timeout,
}

/// Polls `GET /v2/` until this child answers it (any status: 401 counts for auth registries).
fn wait_ready(child: &mut Child, port: u16, log: &Path) -> Result<(), Failure> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(if tail(log, 20).contains("address already in use") {
                Failure::PortTaken
            } else {
                Failure::Exited(status)
            });
        }
        // The registry header, and the child still alive after answering, tell that it is
        // our registry answering, not whoever else may hold the port.
        if probe_v2(port) && child.try_wait().unwrap().is_none() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Failure::Timeout);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn probe_v2(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request =
        format!("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    response.starts_with("http/1.1 ")
        && response.contains("docker-distribution-api-version: registry/2.0")
}

/// A port that was free a moment ago (bind :0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `http://127.0.0.1:PORT` where nothing listens: connecting is refused at once.
///
/// The port is a privileged one (below 1024), checked to refuse: registries and other test
/// servers bind ephemeral ports, so none of them can start listening there during the test.
pub fn dead_endpoint() -> String {
    for port in [
        1u16, 9, 47, 79, 97, 111, 222, 333, 444, 555, 666, 777, 888, 999,
    ] {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return format!("http://127.0.0.1:{port}");
            }
            _ => {}
        }
    }
    panic!("every candidate port below 1024 on 127.0.0.1 accepts connections")
}

/// A TCP endpoint that accepts connections (the kernel does, from the backlog) but never
/// answers: for timeout tests. Stops existing when dropped.
pub struct Blackhole {
    _listener: TcpListener,
    url: String,
}

impl Blackhole {
    pub fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        Blackhole {
            _listener: listener,
            url,
        }
    }
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A YAML double-quoted string (JSON strings are valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn config_yaml(dir: &Path, port: u16, options: &RegistryOptions) -> String {
    let data = dir.join("data");
    let mut yaml = format!(
        "version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  # Fixed: upload state is HMAC'd with it; a random one would only make logs noisier.
  secret: cudaimg-harness
",
        data = yaml_str(data.to_str().unwrap()),
    );
    if options.basic_auth.is_some() {
        let htpasswd = dir.join("htpasswd");
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: cudaimg-test\n    path: {}\n",
            yaml_str(htpasswd.to_str().unwrap())
        ));
    }
    if let Some(token) = &options.token_auth {
        assert!(
            options.basic_auth.is_none(),
            "basic and token auth exclude each other"
        );
        yaml.push_str(&format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            yaml_str(&token.realm),
            yaml_str(&token.service),
            yaml_str(&token.issuer),
            yaml_str(token.root_cert_bundle.to_str().unwrap()),
        ));
    }
    if let Some(remote) = &options.proxy_remote {
        yaml.push_str(&format!("proxy:\n  remoteurl: {}\n", yaml_str(remote)));
    }
    yaml
}

/// Last `lines` lines of a file, for panic messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Parses `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "agent"`.
fn parse_access_line(line: &str) -> Option<Request> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let status = rest.trim_start().split(' ').next()?.parse().ok()?;
    Some(Request {
        method,
        path,
        status,
    })
}
