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
/// How far behind a throttle's schedule the pipe may fall before idle time is lost.
const PACE_CREDIT: Duration = Duration::from_millis(100);
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
    /// Paces body bytes of all responses together to `bytes_per_sec` (> 0), and request bodies
    /// (uploads) together to the same rate on their own: a full-duplex link of that speed.
    /// Persistent; the last one added wins.
    Throttle { bytes_per_sec: u64 },
    /// Cuts every upload session once, in its first request with a body (`PATCH` or `PUT`
    /// under `/blobs/uploads/`): the client's connection is reset after `percent` % of a body
    /// declared by `Content-Length`, and none of that request reaches the registry, as behind
    /// a proxy that buffers request bodies (nginx does by default). The session is intact, so
    /// a client that asks its status can resume. A body without a declared length (chunked,
    /// as skopeo sends) goes on upstream as it comes and is cut on both sides after
    /// `unsized_at` bytes, if it gets that far: the registry then holds part of it. Sessions
    /// are told apart by their path; one cut is the session's only one. Persistent.
    CutEachUpload { percent: u64, unsized_at: u64 },
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
    /// Answers requests with `method` whose target contains `path_contains` with `307
    /// Location: {to}{target}` (path and query kept), without contacting upstream: a registry
    /// that sends writes (a manifest `PUT`, an upload's `POST`, `PATCH` or closing `PUT`) to
    /// another host. A 307 asks the client to send the same method and body there.
    /// Persistent.
    RedirectWrites {
        method: String,
        path_contains: String,
        to: String,
    },
    /// Rewrites the `Location` header of every response to point at `to`
    /// (`http://HOST:PORT`), keeping path and query: a registry that sends uploads to another
    /// host. Persistent.
    RewriteLocation { to: String },
    /// Waits `millis` milliseconds after reading a request whose target contains
    /// `path_contains`, then relays it as usual: a cold pull-through cache that takes a while
    /// to start each answer (nothing at all, not even headers, reaches the client until
    /// then). Any method. Counted.
    Delay {
        path_contains: String,
        millis: u64,
        times: usize,
    },
    /// Rewrites the `Range` header of every `PATCH` response under `/blobs/uploads/` to
    /// `0-0`, keeping upstream's status (`202`): a registry that accepts every chunk and
    /// never holds more than its first byte. Persistent.
    PinUploadRange,
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
            Fault::RedirectWrites { .. } => "RedirectWrites",
            Fault::RequireBasic { .. } => "RequireBasic",
            Fault::Refuse => "Refuse",
            Fault::ServeManifest { .. } => "ServeManifest",
            Fault::PaginateTags { .. } => "PaginateTags",
            Fault::StatusOn { .. } => "StatusOn",
            Fault::CutRequestAfter { .. } => "CutRequestAfter",
            Fault::RewriteLocation { .. } => "RewriteLocation",
            Fault::CutEachUpload { .. } => "CutEachUpload",
            Fault::Delay { .. } => "Delay",
            Fault::PinUploadRange => "PinUploadRange",
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
            | Fault::Delay { times, .. }
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
    /// When its head was read: which clients were in flight at once (two processes
    /// overlapping) is told from these, not from the clients' own accounts.
    pub received_at: Instant,
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
    /// Throttle: when the pipe is free again, for response bodies and for request bodies.
    pacer: Mutex<Option<Instant>>,
    request_pacer: Mutex<Option<Instant>>,
    /// Upload sessions (paths) that [`Fault::CutEachUpload`] has cut.
    cut_sessions: Mutex<std::collections::HashSet<String>>,
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
            request_pacer: Mutex::new(None),
            cut_sessions: Mutex::new(std::collections::HashSet::new()),
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
            Fault::CutEachUpload { percent, .. } => {
                assert!(
                    *percent < 100,
                    "CutEachUpload cuts within the body: percent < 100"
                );
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
        *self.shared.request_pacer.lock().unwrap() = None;
        self.shared.cut_sessions.lock().unwrap().clear();
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

    /// Waits for `n` more bytes' slot of the throttled pipe `pacer`, if a throttle is set.
    fn pace(&self, pacer: &Mutex<Option<Instant>>, n: usize) {
        let Some(rate) = self.throttle() else {
            return;
        };
        // Reserve the next slot of the shared pipe, and go when it ends.
        let due = {
            let mut pacer = pacer.lock().unwrap();
            // A link idle for a moment may catch up that moment (up to PACE_CREDIT): a sleep
            // that overslept on a busy machine must not lower the rate.
            let now = Instant::now();
            let start = pacer.map_or(now, |free| {
                free.max(now.checked_sub(PACE_CREDIT).unwrap_or(now))
            });
            let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
            *pacer = Some(due);
            due
        };
        self.sleep_until(due);
    }

    /// Where [`Fault::CutEachUpload`] cuts this request's body, if it does: `(at, sized)`.
    fn upload_cut(&self, method: &str, target: &str, body: Framing) -> Option<(u64, bool)> {
        if !(method == "PATCH" || method == "PUT") {
            return None;
        }
        let session = target.split('?').next().unwrap_or(target);
        if !session.contains("/blobs/uploads/") || session.ends_with("/blobs/uploads/") {
            return None;
        }
        let cut = self.take(|fault| match fault {
            Fault::CutEachUpload {
                percent,
                unsized_at,
            } => match body {
                Framing::Length(n) if n > 1 => Some(((n * percent / 100).max(1), true)),
                Framing::Chunked => Some((*unsized_at, false)),
                _ => None,
            },
            _ => None,
        })?;
        // A session is cut once: the first body request of it that the fault applies to.
        self.cut_sessions
            .lock()
            .unwrap()
            .insert(session.to_owned())
            .then_some(cut)
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

mod faults;
mod http;
use faults::{
    body_faults, copy_counted, request_faults, respond_local, rewrite_location, write_head,
    BodyFaults, BodyWriter,
};
use http::{
    basic_matches, content_range_start, copy_chunked_until, copy_request_body, framing, hop_by_hop,
    is_blob_path, read_head, reason, without_signature, BodyReader, Framing, Head, Local,
};
mod handle;
use handle::handle;
