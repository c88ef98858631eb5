//! A fault-injecting HTTP/1.1 proxy in front of a [`super::registry::TestRegistry`]: a mirror
//! that breaks on demand, at exact byte positions.
//!
//! [`FaultProxy::start`] listens on 127.0.0.1 (a free port) and forwards every request to the
//! upstream registry, streaming bodies both ways in 64 KiB pieces (never a whole blob in memory:
//! layers may be hundreds of MB). Each connection gets its own thread and carries one request:
//! every response says `Connection: close`, so clients open a new connection per request and
//! each request is seen, counted and faulted on its own.
//!
//! Faults ([`Fault`]) are added with [`FaultProxy::add`] and apply to requests whose target
//! (path and query) contains `path_contains`; counted faults fire `times` times and are then
//! spent ([`ALWAYS`] never is), persistent ones stay until [`FaultProxy::clear`]. A fault fires
//! only on a response it can affect (a cut needs a body longer than the cut, a flip a body that
//! holds the offset), so a HEAD or a short error body does not use up a count meant for a GET.
//!
//! Everything that passed is in [`FaultProxy::requests`]: method, target, status, the `Range`
//! and `Authorization` headers as received (to assert that credentials did or did not reach a
//! host), body bytes sent and the faults that fired. An entry is made when the request has been
//! read and updated before each write, so it is complete once the client has read the response.
//!
//! As a redirect target, [`FaultProxy::start_cdn`] plays a CDN: blob requests must carry the
//! [`CDN_SIGNATURE`] that [`Fault::RedirectBlobs`] puts into `Location`. Every proxy removes that
//! parameter before forwarding: distribution 2.8 would ignore it (checked: a blob GET with
//! `?X-Signature=..&Expires=..` answers 200), but it is the CDN's business, and without it the
//! registry's access log shows the path a client asked the registry for.
//!
//! Traffic goes to 127.0.0.1 only; the proxy stops listening and cuts its connections when
//! dropped.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::fixtures::sha256_digest;

/// `times` for a fault that never gets spent.
pub const ALWAYS: usize = usize::MAX;
/// The query parameter [`Fault::RedirectBlobs`] appends and a [`FaultProxy::start_cdn`] requires.
pub const CDN_SIGNATURE: &str = "X-Signature=secret-sig";
const SIGNATURE_PARAM: &str = "X-Signature";

/// Largest request head accepted (request line and headers).
const MAX_HEAD: u64 = 64 * 1024;
/// Socket timeouts: a connection thread never waits longer than this for a peer.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the accept loop looks for connections (the listener is non-blocking, so that
/// [`Fault::Refuse`] and drop can close it at any time).
const ACCEPT_POLL: Duration = Duration::from_millis(2);
/// Granularity of interruptible sleeps (stall, throttle): drop is noticed within this.
const SLEEP_STEP: Duration = Duration::from_millis(20);
/// Body bytes copied per read/write.
const PIECE: usize = 64 * 1024;
/// Before a reset (RST), how long the kernel gets to deliver what was already written: an RST
/// discards our unsent send queue, and the cut should still fall at the byte asked for.
const RESET_GRACE: Duration = Duration::from_millis(100);

/// A fault to inject; see the module docs for matching and counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Sends the headers and the first `bytes` bytes of a 2xx GET body (counted in the response,
    /// not in the blob), then ends the connection: with a FIN (`reset: false`, the client sees an
    /// early EOF) or an RST (`reset: true`, "connection reset by peer"; `SO_LINGER` 0 and close,
    /// after a short pause so that the bytes already written reach the client first).
    /// Chunked bodies stay chunked, so the client sees the cut; a body delimited only by the
    /// connection's end (no length, no chunks; the registry never sends one) cannot show it.
    CutAfter {
        path_contains: String,
        bytes: u64,
        reset: bool,
        times: usize,
    },
    /// Answers `status` with a small distribution-style JSON error (and `Retry-After` if given)
    /// without contacting upstream. Any method.
    Status {
        path_contains: String,
        status: u16,
        retry_after: Option<u64>,
        times: usize,
    },
    /// Sends `after_bytes` bytes of a 2xx GET body, then nothing for `for_secs` seconds with the
    /// connection open, then closes it (FIN) without the rest.
    Stall {
        path_contains: String,
        after_bytes: u64,
        for_secs: u64,
        times: usize,
    },
    /// XORs 0xFF into the byte at `offset` of the blob, in a 2xx GET body. For a 206 the body
    /// starts at the `Content-Range` start, and fires only if it covers `offset`. Headers
    /// (`Docker-Content-Digest` included) are left as upstream sent them.
    FlipByte {
        path_contains: String,
        offset: u64,
        times: usize,
    },
    /// Sends `bytes` more bytes (0xAB) after the end of a 2xx GET body: a source that sends
    /// more than the blob holds. The body goes out chunked, without upstream's
    /// `Content-Length`, so only counting the bytes shows the excess.
    AppendBytes {
        path_contains: String,
        bytes: u64,
        times: usize,
    },
    /// Drops the client's `Range` header, so upstream answers 200 with the whole body. Fires
    /// only on requests that have a `Range`.
    IgnoreRange { path_contains: String, times: usize },
    /// Paces body bytes of all responses together to `bytes_per_sec` (> 0). Persistent; the
    /// last one added wins.
    Throttle { bytes_per_sec: u64 },
    /// Answers blob GETs (`/blobs/<digest>`, not uploads) with `307 Location:
    /// {to}{path}?X-Signature=secret-sig`, like a registry that hands out signed CDN URLs.
    /// Persistent. `to` is e.g. the [`FaultProxy::url`] of a [`FaultProxy::start_cdn`].
    RedirectBlobs { to: String },
    /// Answers `401 WWW-Authenticate: Basic realm="proxy"` to every request without
    /// `Authorization: Basic base64(user:pass)`. Persistent. Accepted credentials are forwarded.
    RequireBasic { user: String, pass: String },
    /// Closes the listening socket: connections are refused (RST to the SYN) until
    /// [`FaultProxy::resume`] or [`FaultProxy::clear`] listens again on the same port.
    /// Connections in progress are cut as well (FIN): the mirror went down.
    Refuse,
    /// Answers GET/HEAD of manifests (`/manifests/` and `path_contains`) with `body` as
    /// `media_type`, `Docker-Content-Digest` being the body's own digest: a stale or lying
    /// mirror. Persistent.
    ServeManifest {
        path_contains: String,
        body: Vec<u8>,
        media_type: String,
    },
    /// Answers `GET /v2/<name>/tags/list` in pages, as CNCF distribution 3 and Docker Hub do
    /// (distribution 2.8, the test registry, ignores `n` and `last`): the full list is fetched
    /// from upstream, sorted, cut after `?last=`, and at most `min(n, max_page)` tags are
    /// sent, with `Link: </v2/<name>/tags/list?n=N&last=T>; rel="next"` while more remain.
    /// Persistent.
    PaginateTags { max_page: usize },
    /// Answers `status` (a distribution-style JSON error, with `Retry-After` and
    /// `WWW-Authenticate` if given) to requests with `method` whose target contains
    /// `path_contains`, after letting the first `skip` of them through. The request body is
    /// read and dropped: upstream never sees the request. Counted. E.g. a 500, or a 404 (a lost
    /// session), on the third `PATCH` of an upload.
    StatusOn {
        method: String,
        path_contains: String,
        skip: usize,
        status: u16,
        retry_after: Option<u64>,
        www_authenticate: Option<String>,
        times: usize,
    },
    /// Reads `bytes` bytes of the body of a request with `method` whose target contains
    /// `path_contains` (after letting the first `skip` through), then resets the client's
    /// connection: an upload cut mid-body. With `forward: false` none of the request reaches
    /// upstream (the cut fell before the registry, whose session is intact); with
    /// `forward: true` the request and those bytes go upstream, whose connection is then cut
    /// too (the registry got part of the body). Counted; fires only on a body declared longer
    /// than `bytes` (`Content-Length`).
    CutRequestAfter {
        method: String,
        path_contains: String,
        skip: usize,
        bytes: u64,
        forward: bool,
        times: usize,
    },
    /// Rewrites the `Location` header of every response to point at `to`
    /// (`http://HOST:PORT`), keeping path and query: a registry that sends uploads to another
    /// host. Persistent.
    RewriteLocation { to: String },
}

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Fault::CutAfter { .. } => "CutAfter",
            Fault::Status { .. } => "Status",
            Fault::Stall { .. } => "Stall",
            Fault::FlipByte { .. } => "FlipByte",
            Fault::AppendBytes { .. } => "AppendBytes",
            Fault::IgnoreRange { .. } => "IgnoreRange",
            Fault::Throttle { .. } => "Throttle",
            Fault::RedirectBlobs { .. } => "RedirectBlobs",
            Fault::RequireBasic { .. } => "RequireBasic",
            Fault::Refuse => "Refuse",
            Fault::ServeManifest { .. } => "ServeManifest",
            Fault::PaginateTags { .. } => "PaginateTags",
            Fault::StatusOn { .. } => "StatusOn",
            Fault::CutRequestAfter { .. } => "CutRequestAfter",
            Fault::RewriteLocation { .. } => "RewriteLocation",
        }
    }

    /// Initial count: `times` of counted faults, [`ALWAYS`] for persistent ones.
    fn times(&self) -> usize {
        match self {
            Fault::CutAfter { times, .. }
            | Fault::Status { times, .. }
            | Fault::Stall { times, .. }
            | Fault::FlipByte { times, .. }
            | Fault::AppendBytes { times, .. }
            | Fault::IgnoreRange { times, .. }
            | Fault::StatusOn { times, .. }
            | Fault::CutRequestAfter { times, .. } => *times,
            _ => ALWAYS,
        }
    }
}

/// One request the proxy received, and what it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRequest {
    pub method: String,
    /// The request target as received: path and query.
    pub path: String,
    /// Status sent to the client; `None` while (or if) no response head has been sent.
    pub status: Option<u16>,
    /// The `Range` header received (whether or not it was forwarded).
    pub range: Option<String>,
    /// The `Authorization` header received, verbatim.
    pub authorization: Option<String>,
    /// Body bytes written to the client (payload, without chunk framing). Written means
    /// accepted by the kernel: for a client that hung up early, that can exceed what it read.
    pub body_bytes: u64,
    /// Request body bytes read from the client (payload, without chunk framing): what an
    /// upload sent, whether or not it went on upstream.
    pub request_bytes: u64,
    /// Names of the faults that fired on this request, e.g. `["IgnoreRange", "FlipByte"]`.
    pub faults: Vec<&'static str>,
}

impl ProxyRequest {
    pub fn fault_fired(&self) -> bool {
        !self.faults.is_empty()
    }
}

/// A running proxy; stops listening and cuts its connections when dropped.
pub struct FaultProxy {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Rule {
    fault: Fault,
    remaining: usize,
    /// Matching requests let through so far, for faults with a `skip`.
    skipped: usize,
}

struct Shared {
    upstream: SocketAddr,
    port: u16,
    /// Blob requests must carry [`CDN_SIGNATURE`].
    cdn: bool,
    /// `None` while refusing.
    listener: Mutex<Option<TcpListener>>,
    rules: Mutex<Vec<Rule>>,
    requests: Mutex<Vec<ProxyRequest>>,
    /// Sockets of connections in progress (client and upstream side), by connection, so that
    /// drop and [`Fault::Refuse`] can cut them.
    active: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_connection: AtomicU64,
    /// Throttle: when the pipe is free again.
    pacer: Mutex<Option<Instant>>,
    shutdown: AtomicBool,
}

impl FaultProxy {
    /// A transparent proxy of `upstream_url` (`http://127.0.0.1:PORT`) until faults are added.
    pub fn start(upstream_url: &str) -> FaultProxy {
        Self::start_with(upstream_url, false)
    }

    /// A CDN in front of `upstream_url`: like [`FaultProxy::start`], but blob GET/HEADs without
    /// [`CDN_SIGNATURE`] in the query get 403 (as a signed-URL CDN would).
    pub fn start_cdn(upstream_url: &str) -> FaultProxy {
        Self::start_with(upstream_url, true)
    }

    fn start_with(upstream_url: &str, cdn: bool) -> FaultProxy {
        let url = url::Url::parse(upstream_url).unwrap();
        assert_eq!(url.scheme(), "http", "upstream {upstream_url}: http only");
        assert_eq!(
            url.host_str(),
            Some("127.0.0.1"),
            "upstream {upstream_url}: tests talk to 127.0.0.1 only"
        );
        let upstream =
            SocketAddr::from((Ipv4Addr::LOCALHOST, url.port_or_known_default().unwrap()));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            port,
            cdn,
            listener: Mutex::new(Some(listener)),
            rules: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            active: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            pacer: Mutex::new(None),
            shutdown: AtomicBool::new(false),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("fault-proxy-{port}"))
                .spawn(move || accept_loop(shared))
                .unwrap()
        };
        FaultProxy {
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }
    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.shared.port)
    }
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// Adds a fault (after those already there: the first applicable one answers).
    pub fn add(&self, rule: Fault) {
        match &rule {
            Fault::Refuse => {
                self.shared.stop_listening();
                self.shared.cut_active();
            }
            Fault::Throttle { bytes_per_sec } => {
                assert!(*bytes_per_sec > 0, "Throttle needs a rate > 0 (use Stall)");
            }
            _ => {}
        }
        let remaining = rule.times();
        if !matches!(rule, Fault::Refuse) {
            self.shared.rules.lock().unwrap().push(Rule {
                fault: rule,
                remaining,
                skipped: 0,
            });
        }
    }

    /// Removes all faults and listens again if refusing: from now on the proxy is transparent.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
        *self.shared.pacer.lock().unwrap() = None;
        self.resume();
    }

    /// Listens again on the same port after [`Fault::Refuse`]. (std binds with `SO_REUSEADDR`, so
    /// the port's `TIME_WAIT` connections do not block it; panics if someone else took the port.)
    pub fn resume(&self) {
        let mut listener = self.shared.listener.lock().unwrap();
        if listener.is_none() {
            let bound = TcpListener::bind((Ipv4Addr::LOCALHOST, self.shared.port))
                .unwrap_or_else(|e| panic!("cannot listen again on {}: {e}", self.host()));
            bound.set_nonblocking(true).unwrap();
            *listener = Some(bound);
        }
    }

    /// Requests so far, in the order they were read.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.shared.requests.lock().unwrap().clone()
    }
    /// Forgets the requests so far.
    pub fn clear_requests(&self) {
        self.shared.requests.lock().unwrap().clear();
    }
    /// Body bytes sent to clients, all requests.
    pub fn body_bytes_sent(&self) -> u64 {
        self.requests().iter().map(|r| r.body_bytes).sum()
    }
    /// Request body bytes received (uploads), all requests.
    pub fn request_bytes_received(&self) -> u64 {
        self.requests().iter().map(|r| r.request_bytes).sum()
    }
    /// Body bytes sent for requests whose target contains `path_contains`.
    pub fn body_bytes_sent_for(&self, path_contains: &str) -> u64 {
        self.requests()
            .iter()
            .filter(|r| r.path.contains(path_contains))
            .map(|r| r.body_bytes)
            .sum()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        self.shared.stop_listening();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        // Connection threads are not joined: with their sockets shut down and the shutdown flag
        // set, they end within a sleep step.
        self.shared.cut_active();
    }
}

impl Shared {
    fn stop_listening(&self) {
        // Dropping the listener closes it: connects are refused from here on.
        self.listener.lock().unwrap().take();
    }

    fn cut_active(&self) {
        for streams in self.active.lock().unwrap().values() {
            for stream in streams {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    fn register(&self, connection: u64, stream: &TcpStream) {
        if let Ok(clone) = stream.try_clone() {
            self.active
                .lock()
                .unwrap()
                .entry(connection)
                .or_default()
                .push(clone);
        }
    }

    fn record(&self, request: ProxyRequest) -> usize {
        let mut requests = self.requests.lock().unwrap();
        requests.push(request);
        requests.len() - 1
    }

    fn update(&self, index: usize, change: impl FnOnce(&mut ProxyRequest)) {
        // clear_requests may have removed the entry: then there is nothing to update.
        if let Some(request) = self.requests.lock().unwrap().get_mut(index) {
            change(request);
        }
    }

    /// Sleeps until `deadline` or until the proxy is dropped.
    fn sleep_until(&self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if now >= deadline || self.shutdown.load(SeqCst) {
                return;
            }
            thread::sleep((deadline - now).min(SLEEP_STEP));
        }
    }

    fn throttle(&self) -> Option<u64> {
        self.rules
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|rule| match rule.fault {
                Fault::Throttle { bytes_per_sec } => Some(bytes_per_sec),
                _ => None,
            })
    }

    /// Like [`Shared::take`] for faults with a `skip`: `applies` returns the skip and the
    /// value; the first applicable rule lets `skip` requests pass (`None`) before it fires.
    fn take_skipping<T>(&self, mut applies: impl FnMut(&Fault) -> Option<(usize, T)>) -> Option<T> {
        let mut rules = self.rules.lock().unwrap();
        let position = rules
            .iter()
            .position(|rule| rule.remaining > 0 && applies(&rule.fault).is_some())?;
        let (skip, found) = applies(&rules[position].fault)?;
        let rule = &mut rules[position];
        if rule.skipped < skip {
            rule.skipped += 1;
            return None;
        }
        if rule.remaining != ALWAYS {
            rule.remaining -= 1;
        }
        if rule.remaining == 0 {
            rules.remove(position);
        }
        Some(found)
    }

    /// Takes the first applicable rule (in insertion order) for which `applies` says yes,
    /// counts it down, and returns what `applies` made of it.
    fn take<T>(&self, mut applies: impl FnMut(&Fault) -> Option<T>) -> Option<T> {
        let mut rules = self.rules.lock().unwrap();
        let position = rules
            .iter()
            .position(|rule| rule.remaining > 0 && applies(&rule.fault).is_some())?;
        let found = applies(&rules[position].fault);
        let rule = &mut rules[position];
        if rule.remaining != ALWAYS {
            rule.remaining -= 1;
        }
        if rule.remaining == 0 {
            rules.remove(position);
        }
        found
    }
}

fn accept_loop(shared: Arc<Shared>) {
    // Ends when the proxy is dropped.
    while !shared.shutdown.load(SeqCst) {
        let accepted = match shared.listener.lock().unwrap().as_ref() {
            Some(listener) => listener.accept().ok(),
            None => None,
        };
        match accepted {
            Some((stream, _)) => {
                let shared = Arc::clone(&shared);
                let spawned = thread::Builder::new()
                    .name(format!("fault-proxy-{}-conn", shared.port))
                    .spawn(move || serve_connection(&shared, stream));
                if spawned.is_err() {
                    thread::sleep(ACCEPT_POLL);
                }
            }
            None => thread::sleep(ACCEPT_POLL),
        }
    }
}

/// How a connection ends once its response is done (or abandoned).
enum Ending {
    /// Close normally (FIN after the whole response).
    Close,
    /// Reset (RST): `SO_LINGER` 0, then close.
    Reset,
}

fn serve_connection(shared: &Shared, client: TcpStream) {
    let connection = shared.next_connection.fetch_add(1, SeqCst);
    // Accepted sockets may inherit the listener's O_NONBLOCK on some systems.
    let _ = client.set_nonblocking(false);
    let _ = client.set_read_timeout(Some(IO_TIMEOUT));
    let _ = client.set_write_timeout(Some(IO_TIMEOUT));
    let _ = client.set_nodelay(true);
    shared.register(connection, &client);
    let ending = handle(shared, connection, &client).unwrap_or(Ending::Close);
    // Our clones must go before the close below: a socket closes with its last descriptor.
    shared.active.lock().unwrap().remove(&connection);
    match ending {
        Ending::Close => {
            let _ = (&client).flush();
            let _ = client.shutdown(Shutdown::Write);
        }
        Ending::Reset => {
            thread::sleep(RESET_GRACE);
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        }
    }
    drop(client);
}

/// A request or response head: start line and headers in order.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a head (up to the empty line). `None` at a clean EOF before any byte.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut limited = reader.take(MAX_HEAD);
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        if limited.read_until(b'\n', &mut line)? == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "head cut short",
            ));
        }
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF before a request line is allowed (RFC 9112 2.2)
            }
            break;
        }
        lines.push(line);
    }
    let start = lines.remove(0);
    let headers = lines
        .into_iter()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_string(), value.trim().to_string()))
        })
        .collect();
    Ok(Some(Head { start, headers }))
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

fn framing(head: &Head, default: Framing) -> Framing {
    if head
        .get("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        Framing::Chunked
    } else if let Some(length) = head.get("content-length").and_then(|v| v.parse().ok()) {
        Framing::Length(length)
    } else {
        default
    }
}

/// Headers that describe one connection, not the message: never forwarded either way.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Decodes a response body of the given framing, reading no further than its end.
struct BodyReader<'a, R> {
    inner: &'a mut R,
    framing: Framing,
    /// Length: bytes left. Chunked: bytes left in the current chunk.
    left: u64,
    started: bool,
    done: bool,
}

impl<'a, R: BufRead> BodyReader<'a, R> {
    fn new(inner: &'a mut R, framing: Framing) -> Self {
        let (left, done) = match framing {
            Framing::None => (0, true),
            Framing::Length(n) => (n, n == 0),
            Framing::Chunked | Framing::Close => (0, false),
        };
        BodyReader {
            inner,
            framing,
            left,
            started: false,
            done,
        }
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        Read::take(&mut *self.inner, 4096).read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunk framing",
            ));
        }
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    }

    /// Moves to the next chunk; false after the last one (trailers consumed).
    fn next_chunk(&mut self) -> io::Result<bool> {
        if self.started {
            self.line()?; // CRLF after the previous chunk's data
        }
        self.started = true;
        let line = self.line()?;
        let size = line.split(';').next().unwrap_or("").trim();
        self.left = u64::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
        if self.left == 0 {
            // Trailers: bounded by the 4 KiB line limit and by the peer ending the response.
            while !self.line()?.is_empty() {}
            return Ok(false);
        }
        Ok(true)
    }
}

impl<R: BufRead> Read for BodyReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.framing == Framing::Close {
            let n = self.inner.read(buf)?;
            self.done = n == 0;
            return Ok(n);
        }
        if self.framing == Framing::Chunked && self.left == 0 && !self.next_chunk()? {
            self.done = true;
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body cut short",
            ));
        }
        self.left -= n as u64;
        if self.framing != Framing::Chunked && self.left == 0 {
            self.done = true;
        }
        Ok(n)
    }
}

/// Copies a request body from client to upstream as it is framed (chunked bytes verbatim).
fn copy_request_body(
    reader: &mut BufReader<TcpStream>,
    framing: Framing,
    out: &mut impl Write,
    count: &dyn Fn(u64),
) -> io::Result<()> {
    match framing {
        Framing::None | Framing::Close => Ok(()),
        Framing::Length(n) => copy_counted(reader, n, out, count),
        Framing::Chunked => {
            // Decoded then re-encoded in one chunk per piece: the same body, simpler framing.
            let mut body = BodyReader::new(reader, Framing::Chunked);
            let mut piece = vec![0; PIECE];
            loop {
                let n = body.read(&mut piece)?;
                if n == 0 {
                    return out.write_all(b"0\r\n\r\n");
                }
                count(n as u64);
                write!(out, "{n:x}\r\n")?;
                out.write_all(&piece[..n])?;
                out.write_all(b"\r\n")?;
            }
        }
    }
}

/// `bytes N-M/T` -> N
fn content_range_start(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes")?.trim();
    rest.split('-').next()?.trim().parse().ok()
}

/// The target without the CDN signature parameter.
fn without_signature(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(SIGNATURE_PARAM))
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

fn is_blob_path(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    path.contains("/blobs/") && !path.contains("/blobs/uploads")
}

fn basic_matches(authorization: Option<&str>, user: &str, pass: &str) -> bool {
    let Some((scheme, credentials)) = authorization.and_then(|a| a.trim().split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("basic")
        && base64::engine::general_purpose::STANDARD
            .decode(credentials.trim())
            .is_ok_and(|decoded| decoded == format!("{user}:{pass}").as_bytes())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected",
    }
}

/// distribution's error body: `{"errors":[{"code":..,"message":..,"detail":null}]}`.
fn registry_error(status: u16) -> Vec<u8> {
    let code = match status {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NOT_FOUND",
        429 => "TOOMANYREQUESTS",
        500..=599 => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    let message = format!("{} (injected by FaultProxy)", reason(status).to_lowercase());
    serde_json::to_vec(&serde_json::json!({
        "errors": [{"code": code, "message": message, "detail": null}]
    }))
    .unwrap()
}

/// A response the proxy makes itself.
struct Local {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    fault: Option<&'static str>,
}

impl Local {
    fn new(status: u16, content_type: &str, body: Vec<u8>, fault: Option<&'static str>) -> Self {
        Local {
            status,
            headers: vec![
                ("Content-Type".into(), content_type.into()),
                (
                    "Docker-Distribution-Api-Version".into(),
                    "registry/2.0".into(),
                ),
            ],
            body,
            fault,
        }
    }
    fn error(status: u16, fault: Option<&'static str>) -> Self {
        Local::new(status, "application/json", registry_error(status), fault)
    }
    fn header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.into(), value));
        self
    }
}

/// Faults decided on the request alone: a local answer, or the Range to drop.
fn request_faults(
    shared: &Shared,
    method: &str,
    target: &str,
    head: &Head,
) -> (Option<Local>, bool) {
    if shared.cdn
        && is_blob_path(target)
        && !target
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|p| p == CDN_SIGNATURE))
    {
        let body =
            b"<Error><Code>AccessDenied</Code><Message>missing or bad signature</Message></Error>";
        return (
            Some(Local::new(403, "application/xml", body.to_vec(), None)),
            false,
        );
    }
    let authorization = head.get("authorization");
    let local = shared.take(|fault| match fault {
        Fault::RequireBasic { user, pass } if !basic_matches(authorization, user, pass) => Some(
            Local::error(401, Some(fault.name()))
                .header("WWW-Authenticate", "Basic realm=\"proxy\"".into()),
        ),
        Fault::Status {
            path_contains,
            status,
            retry_after,
            ..
        } if target.contains(path_contains.as_str()) => {
            let mut local = Local::error(*status, Some(fault.name()));
            if let Some(seconds) = retry_after {
                local = local.header("Retry-After", seconds.to_string());
            }
            Some(local)
        }
        Fault::RedirectBlobs { to } if method == "GET" && is_blob_path(target) => {
            let separator = if target.contains('?') { '&' } else { '?' };
            let location = format!(
                "{}{target}{separator}{CDN_SIGNATURE}",
                to.trim_end_matches('/')
            );
            Some(
                Local::new(307, "text/plain", Vec::new(), Some(fault.name()))
                    .header("Location", location),
            )
        }
        Fault::ServeManifest {
            path_contains,
            body,
            media_type,
        } if (method == "GET" || method == "HEAD")
            && target.contains("/manifests/")
            && target.contains(path_contains.as_str()) =>
        {
            Some(
                Local::new(200, media_type, body.clone(), Some(fault.name()))
                    .header("Docker-Content-Digest", sha256_digest(body)),
            )
        }
        _ => None,
    });
    if local.is_some() {
        return (local, false);
    }
    let status_on = shared.take_skipping(|fault| match fault {
        Fault::StatusOn {
            method: m,
            path_contains,
            skip,
            status,
            retry_after,
            www_authenticate,
            ..
        } if m == method && target.contains(path_contains.as_str()) => {
            let mut local = Local::error(*status, Some(fault.name()));
            if let Some(seconds) = retry_after {
                local = local.header("Retry-After", seconds.to_string());
            }
            if let Some(challenge) = www_authenticate {
                local = local.header("WWW-Authenticate", challenge.clone());
            }
            Some((*skip, local))
        }
        _ => None,
    });
    if status_on.is_some() {
        return (status_on, false);
    }
    if method == "GET"
        && target
            .split('?')
            .next()
            .unwrap_or("")
            .ends_with("/tags/list")
    {
        let max_page = shared.take(|fault| match fault {
            Fault::PaginateTags { max_page } => Some(*max_page),
            _ => None,
        });
        if let Some(max_page) = max_page {
            return (Some(tag_page(shared, target, max_page)), false);
        }
    }
    let drop_range = head.get("range").is_some()
        && shared
            .take(|fault| match fault {
                Fault::IgnoreRange { path_contains, .. }
                    if target.contains(path_contains.as_str()) =>
                {
                    Some(())
                }
                _ => None,
            })
            .is_some();
    (None, drop_range)
}

/// One page of `target`'s tag list, from upstream's full list (see [`Fault::PaginateTags`]).
fn tag_page(shared: &Shared, target: &str, max_page: usize) -> Local {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: HashMap<&str, &str> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    let upstream = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}{path}", shared.upstream))
        .send()
        .unwrap();
    if !upstream.status().is_success() {
        return Local::error(upstream.status().as_u16(), Some("PaginateTags"));
    }
    let full: serde_json::Value = upstream.json().unwrap();
    let mut tags: Vec<String> = full["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    if let Some(last) = params.get("last") {
        tags.retain(|t| t.as_str() > *last);
    }
    let n = params
        .get("n")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(max_page)
        .min(max_page);
    let more = tags.len() > n;
    tags.truncate(n);
    let body = serde_json::json!({ "name": full["name"], "tags": tags });
    let mut local = Local::new(
        200,
        "application/json",
        serde_json::to_vec(&body).unwrap(),
        Some("PaginateTags"),
    );
    if let (true, Some(last)) = (more, tags.last()) {
        local = local.header("Link", format!("<{path}?n={n}&last={last}>; rel=\"next\""));
    }
    local
}

/// Faults applied to a body while it streams: positions in the response body.
#[derive(Default)]
struct BodyFaults {
    /// (position, reset)
    cut: Option<(u64, bool)>,
    /// (position, seconds)
    stall: Option<(u64, u64)>,
    flip: Option<u64>,
    /// Bytes to send after the body.
    append: Option<u64>,
    names: Vec<&'static str>,
}

/// Faults decided once upstream's response head is known (2xx GET bodies only).
fn body_faults(
    shared: &Shared,
    target: &str,
    status: u16,
    head: &Head,
    body: Framing,
) -> BodyFaults {
    let mut faults = BodyFaults::default();
    let length = match body {
        Framing::Length(n) => Some(n),
        Framing::None => Some(0),
        Framing::Chunked | Framing::Close => None,
    };
    let within = |position: u64| length.is_none_or(|n| position < n);
    let start = if status == 206 {
        head.get("content-range")
            .and_then(content_range_start)
            .unwrap_or(0)
    } else {
        0
    };
    // A cut and a stall both end the body: only the first applicable of the two fires.
    let ending = shared.take(|fault| match fault {
        Fault::CutAfter {
            path_contains,
            bytes,
            reset,
            ..
        } if target.contains(path_contains.as_str()) && within(*bytes) => {
            Some((fault.name(), Some((*bytes, *reset)), None))
        }
        Fault::Stall {
            path_contains,
            after_bytes,
            for_secs,
            ..
        } if target.contains(path_contains.as_str()) && within(*after_bytes) => {
            Some((fault.name(), None, Some((*after_bytes, *for_secs))))
        }
        _ => None,
    });
    if let Some((name, cut, stall)) = ending {
        faults.names.push(name);
        faults.cut = cut;
        faults.stall = stall;
    }
    faults.flip = shared.take(|fault| match fault {
        Fault::FlipByte {
            path_contains,
            offset,
            ..
        } if target.contains(path_contains.as_str())
            && *offset >= start
            && within(*offset - start) =>
        {
            Some(*offset - start)
        }
        _ => None,
    });
    if faults.flip.is_some() {
        faults.names.push("FlipByte");
    }
    // Only on a body that ends as upstream sent it: after a cut or stall there is no end.
    if faults.cut.is_none() && faults.stall.is_none() {
        faults.append = shared.take(|fault| match fault {
            Fault::AppendBytes {
                path_contains,
                bytes,
                ..
            } if target.contains(path_contains.as_str()) => Some(*bytes),
            _ => None,
        });
        if faults.append.is_some() {
            faults.names.push("AppendBytes");
        }
    }
    faults
}

/// Writes body bytes to the client: throttled, chunk-framed if asked, counted in the record
/// before they are written (so the count is complete once the client has them).
struct BodyWriter<'a> {
    shared: &'a Shared,
    index: usize,
    out: &'a TcpStream,
    chunked: bool,
}

impl BodyWriter<'_> {
    /// Largest piece to send at once: small under a throttle, so pacing is smooth.
    fn piece_size(&self) -> usize {
        match self.shared.throttle() {
            Some(rate) => usize::try_from(rate / 50).unwrap_or(PIECE).clamp(1, PIECE),
            None => PIECE,
        }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if let Some(rate) = self.shared.throttle() {
            // Reserve the next slot of the shared pipe, and send when it ends.
            let due = {
                let mut pacer = self.shared.pacer.lock().unwrap();
                let start = pacer.map_or(Instant::now(), |free| free.max(Instant::now()));
                let due = start + Duration::from_secs_f64(bytes.len() as f64 / rate as f64);
                *pacer = Some(due);
                due
            };
            self.shared.sleep_until(due);
        }
        // Counted first, so that a client holding the bytes finds them counted; taken back if
        // the write fails (the piece may then have arrived in part).
        let n = bytes.len() as u64;
        self.shared.update(self.index, |r| r.body_bytes += n);
        let mut out = self.out;
        let written = if self.chunked {
            write!(out, "{:x}\r\n", bytes.len())
                .and_then(|()| out.write_all(bytes))
                .and_then(|()| out.write_all(b"\r\n"))
        } else {
            out.write_all(bytes)
        };
        if written.is_err() {
            self.shared.update(self.index, |r| r.body_bytes -= n);
        }
        written
    }

    fn finish(&mut self) -> io::Result<()> {
        let mut out = self.out;
        if self.chunked {
            out.write_all(b"0\r\n\r\n")?;
        }
        out.flush()
    }
}

/// Copies exactly `n` body bytes, counting them as they arrive.
fn copy_counted(
    reader: &mut BufReader<TcpStream>,
    n: u64,
    out: &mut impl Write,
    count: &dyn Fn(u64),
) -> io::Result<()> {
    let mut piece = vec![0; PIECE];
    let mut left = n;
    while left > 0 {
        let want = left.min(PIECE as u64) as usize;
        let got = reader.read(&mut piece[..want])?;
        if got == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "request body"));
        }
        count(got as u64);
        out.write_all(&piece[..got])?;
        left -= got as u64;
    }
    Ok(())
}

/// `location` moved to the origin `to`, path and query kept.
fn rewrite_location(location: &str, to: &str) -> String {
    let path = ["http://", "https://"]
        .iter()
        .find_map(|scheme| location.strip_prefix(scheme))
        .map_or(location, |rest| rest.find('/').map_or("/", |i| &rest[i..]));
    format!("{}{path}", to.trim_end_matches('/'))
}

fn write_head(out: &TcpStream, status_line: &str, headers: &[(String, String)]) -> io::Result<()> {
    let mut head = format!("{status_line}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut out = out;
    out.write_all(head.as_bytes())
}

fn respond_local(
    shared: &Shared,
    index: usize,
    client: &TcpStream,
    method: &str,
    local: Local,
) -> io::Result<Ending> {
    let mut headers = local.headers;
    headers.push(("Content-Length".into(), local.body.len().to_string()));
    shared.update(index, |r| {
        r.status = Some(local.status);
        r.faults.extend(local.fault);
    });
    write_head(
        client,
        &format!("HTTP/1.1 {} {}", local.status, reason(local.status)),
        &headers,
    )?;
    if method != "HEAD" {
        let mut writer = BodyWriter {
            shared,
            index,
            out: client,
            chunked: false,
        };
        for piece in local.body.chunks(writer.piece_size()) {
            writer.send(piece)?;
        }
        writer.finish()?;
    }
    Ok(Ending::Close)
}

fn handle(shared: &Shared, connection: u64, client: &TcpStream) -> io::Result<Ending> {
    let mut reader = BufReader::new(client.try_clone()?);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(Ending::Close);
    };
    let mut start = head.start.split_whitespace();
    let method = start.next().unwrap_or("").to_string();
    let mut target = start.next().unwrap_or("/").to_string();
    // Absolute form (a client using us as its HTTP proxy): keep path and query.
    if let Some(rest) = target.strip_prefix("http://") {
        target = rest.find('/').map_or("/".into(), |i| rest[i..].to_string());
    }
    let index = shared.record(ProxyRequest {
        method: method.clone(),
        path: target.clone(),
        status: None,
        range: head.get("range").map(String::from),
        authorization: head.get("authorization").map(String::from),
        body_bytes: 0,
        request_bytes: 0,
        faults: Vec::new(),
    });
    let count = |n: u64| shared.update(index, |r| r.request_bytes += n);
    if head
        .get("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        // Expect is not forwarded; the client may send its body now.
        let mut out = client;
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let request_body = framing(&head, Framing::None);

    let (local, drop_range) = request_faults(shared, &method, &target, &head);
    if drop_range {
        shared.update(index, |r| r.faults.push("IgnoreRange"));
    }
    if let Some(local) = local {
        // Read the request body first: closing with unread input would reset the connection
        // and could destroy the answer before the client reads it.
        copy_request_body(&mut reader, request_body, &mut io::sink(), &count)?;
        return respond_local(shared, index, client, &method, local);
    }
    let cut = match request_body {
        Framing::Length(length) => shared.take_skipping(|fault| match fault {
            Fault::CutRequestAfter {
                method: m,
                path_contains,
                skip,
                bytes,
                forward,
                ..
            } if *m == method && target.contains(path_contains.as_str()) && length > *bytes => {
                Some((*skip, (*bytes, *forward)))
            }
            _ => None,
        }),
        _ => None,
    };
    if cut.is_some() {
        shared.update(index, |r| r.faults.push("CutRequestAfter"));
    }
    if let Some((bytes, false)) = cut {
        copy_counted(&mut reader, bytes, &mut io::sink(), &count)?;
        return Ok(Ending::Reset);
    }

    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) else {
        copy_request_body(&mut reader, request_body, &mut io::sink(), &count)?;
        return respond_local(shared, index, client, &method, Local::error(502, None));
    };
    upstream.set_read_timeout(Some(IO_TIMEOUT))?;
    upstream.set_write_timeout(Some(IO_TIMEOUT))?;
    upstream.set_nodelay(true)?;
    shared.register(connection, &upstream);

    // Request to upstream: same method, target (less the CDN signature) and headers (Host
    // included, so that registry-made URLs such as upload Locations point back at us).
    let mut request = format!("{method} {} HTTP/1.1\r\n", without_signature(&target));
    for (name, value) in &head.headers {
        if hop_by_hop(name) || (drop_range && name.eq_ignore_ascii_case("range")) {
            continue;
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if request_body == Framing::Chunked {
        request.push_str("Transfer-Encoding: chunked\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut upstream_out = &upstream;
    upstream_out.write_all(request.as_bytes())?;
    if let Some((bytes, true)) = cut {
        copy_counted(&mut reader, bytes, &mut upstream_out, &count)?;
        upstream_out.flush()?;
        // The registry has part of the body; now both sides of the connection break.
        thread::sleep(RESET_GRACE);
        let _ = socket2::SockRef::from(&upstream).set_linger(Some(Duration::ZERO));
        let _ = upstream.shutdown(Shutdown::Both);
        return Ok(Ending::Reset);
    }
    copy_request_body(&mut reader, request_body, &mut upstream_out, &count)?;
    upstream_out.flush()?;

    let mut upstream_in = BufReader::with_capacity(PIECE, &upstream);
    // Interim 1xx responses are skipped (a bounded few); the final one is forwarded.
    let mut response = None;
    for _ in 0..8 {
        let Some(head) = read_head(&mut upstream_in)? else {
            break;
        };
        let status: u16 = head
            .start
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(502);
        if !(100..200).contains(&status) {
            response = Some((status, head));
            break;
        }
    }
    let Some((status, response)) = response else {
        return respond_local(shared, index, client, &method, Local::error(502, None));
    };
    let body = if method == "HEAD" || status == 204 || status == 304 {
        Framing::None
    } else {
        framing(&response, Framing::Close)
    };
    let faults = if method == "GET" && (200..300).contains(&status) {
        body_faults(shared, &target, status, &response, body)
    } else {
        BodyFaults::default()
    };

    // Response to the client: upstream's status line and headers, but our own connection
    // handling; a chunked body stays chunked (re-framed), so a cut is visible to the client.
    // Bytes appended past the body cannot be announced by upstream's length: re-framed chunked.
    let chunked = body == Framing::Chunked || faults.append.is_some();
    let mut headers: Vec<(String, String)> = response
        .headers
        .iter()
        .filter(|(name, _)| !hop_by_hop(name))
        .filter(|(name, _)| faults.append.is_none() || !name.eq_ignore_ascii_case("content-length"))
        .cloned()
        .collect();
    let moved_to = shared.take(|fault| match fault {
        Fault::RewriteLocation { to } => Some(to.clone()),
        _ => None,
    });
    if let Some(to) = moved_to {
        for (name, value) in &mut headers {
            if name.eq_ignore_ascii_case("location") {
                *value = rewrite_location(value, &to);
                shared.update(index, |r| r.faults.push("RewriteLocation"));
            }
        }
    }
    if chunked {
        headers.push(("Transfer-Encoding".into(), "chunked".into()));
    }
    shared.update(index, |r| {
        r.status = Some(status);
        r.faults.extend(faults.names.iter().copied());
    });
    write_head(client, &response.start, &headers)?;

    let mut writer = BodyWriter {
        shared,
        index,
        out: client,
        chunked,
    };
    let mut reader = BodyReader::new(&mut upstream_in, body);
    let mut piece = vec![0; PIECE];
    let mut position = 0u64;
    // Ends with the upstream body (finite), an I/O error, or a fault.
    loop {
        if let Some((at, reset)) = faults.cut {
            if position == at {
                let mut out = client;
                out.flush()?;
                return Ok(if reset { Ending::Reset } else { Ending::Close });
            }
        }
        if let Some((at, seconds)) = faults.stall {
            if position == at {
                let mut out = client;
                out.flush()?;
                shared.sleep_until(Instant::now() + Duration::from_secs(seconds));
                return Ok(Ending::Close);
            }
        }
        // Stop each piece at the next fault position, so it falls on the exact byte.
        let mut size = writer.piece_size() as u64;
        for at in [faults.cut.map(|c| c.0), faults.stall.map(|s| s.0)]
            .into_iter()
            .flatten()
            .filter(|&at| at > position)
        {
            size = size.min(at - position);
        }
        let n = reader.read(&mut piece[..size as usize])?;
        if n == 0 {
            break;
        }
        if let Some(at) = faults.flip {
            if (position..position + n as u64).contains(&at) {
                piece[(at - position) as usize] ^= 0xFF;
            }
        }
        writer.send(&piece[..n])?;
        position += n as u64;
    }
    if let Some(extra) = faults.append {
        let filler = vec![0xAB; PIECE];
        let mut left = extra;
        while left > 0 {
            let n = left.min(PIECE as u64);
            writer.send(&filler[..n as usize])?;
            left -= n;
        }
    }
    writer.finish()?;
    Ok(Ending::Close)
}
