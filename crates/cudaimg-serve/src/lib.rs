//! `cudaimg serve`: the store as a read-only OCI distribution registry, for a LAN or an
//! air-gapped site whose nodes pull through the mirror settings they already have.
//!
//! - [`route`]: request targets to API routes, with mirror semantics (`/v2/nvidia/cuda` is
//!   Docker Hub's, `?ns=HOST` is containerd's choice of registry, `/v2/HOST/REPO` works).
//! - [`http`]: bounded request heads (`httparse`), response heads, `Range`.
//! - [`store`]: the only code that reads the store, through its API.
//! - [`auth`]: access for a LAN (`--htpasswd`: Basic, or Bearer tokens from `/token`), decided
//!   before a request is routed; [`htpasswd`] reads the users.
//! - [`send`]: blob bodies: `sendfile` on plain TCP, a buffered copy under TLS, a hashing
//!   copy with `--verify-reads`.
//!
//! Why not hyper: it cannot hand a file to `sendfile`, and a read-only registry needs only
//! GET/HEAD, keep-alive and `Range`; the loop here is small and its limits are explicit.
//!
//! Resource bounds, so that hostile or slow clients hold little: at most
//! `max_connections` connections (further ones wait in the kernel's accept queue), and no
//! more than fit the process's descriptor limit (raised to its hard limit at start; each
//! connection may hold a socket and a blob file); at most `max_per_client` of them from one
//! client address (further ones are closed at once, so one greedy client cannot starve the
//! others); a request head of at most [`http::MAX_HEAD`] bytes that must arrive within
//! `client_timeout`; an idle keep-alive connection closed after `client_timeout`, and any
//! connection closed between requests once it is [`CONNECTION_LIFE`] old; a send that makes
//! no progress for `client_timeout` aborts the connection. A request with a body (every
//! write) is refused and the connection closed without reading the body.

// Offsets are cast to `usize` only to index in-memory pieces (a manifest, a read buffer),
// which are bounded by their own length; the server targets 64-bit Linux (sendfile).
#![allow(clippy::cast_possible_truncation)]

pub mod auth;
pub mod htpasswd;
pub mod http;
pub mod route;
mod send;
pub mod store;
pub mod through;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use cudaimg_oci::manifest::OCI_INDEX;
use cudaimg_store::{Store, StoreError};
use http::{error_body, parse_head, parse_range, Head, HeadError, Parsed, RangeSpec, Request};
use route::{ManifestRef, Page, Route, RouteError};
use store::{BlobFile, Snapshot, StoreView};

/// How the server runs.
/// Where the server's own lines go (warnings, errors, the access log). The binary decides
/// (stderr, through its closed-pipe-safe writer); the library never prints.
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Clone)]
pub struct Options {
    /// Hash every blob as it is sent and abort the connection on a mismatch (no `sendfile`).
    pub verify_reads: bool,
    pub max_connections: usize,
    /// Connections one client address may hold at once; more are closed at once, so one
    /// greedy client cannot take every slot.
    pub max_per_client: usize,
    /// How long a client may take to send a head, stay idle, or not read what is sent.
    pub client_timeout: Duration,
    pub tls: Option<TlsFiles>,
    /// Who may read; `None`: anyone who can connect.
    pub access: Option<auth::Access>,
    /// One line per request, to `log`.
    pub access_log: bool,
    /// Receives every line the server has to say.
    pub log: Log,
    /// `--pull-through`: what the store lacks is fetched upstream (see [`through`]).
    pub pull_through: Option<through::PullThrough>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("verify_reads", &self.verify_reads)
            .field("max_connections", &self.max_connections)
            .field("max_per_client", &self.max_per_client)
            .field("client_timeout", &self.client_timeout)
            .field("tls", &self.tls)
            .field("access", &self.access)
            .field("access_log", &self.access_log)
            .field("pull_through", &self.pull_through.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            verify_reads: false,
            max_connections: 512,
            max_per_client: 64,
            client_timeout: Duration::from_secs(30),
            tls: None,
            access: None,
            access_log: false,
            log: Arc::new(|_| {}),
            pull_through: None,
        }
    }
}

/// PEM files for HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot use `{}` for TLS: {reason}", path.display())]
    Tls { path: PathBuf, reason: String },
    #[error(transparent)]
    Htpasswd(#[from] htpasswd::HtpasswdError),
    #[error("cannot draw a random token key: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServeError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ServeError::Bind { source, .. }
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                Some("another process listens there; choose another `--addr` (port 0 picks a free one)".into())
            }
            ServeError::Bind { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Some("ports below 1024 need root; use a port such as 5000".into())
            }
            ServeError::Bind { .. } => Some("`--addr` takes IP:PORT, e.g. `0.0.0.0:5000`".into()),
            ServeError::Tls { .. } => Some(
                "`--tls-cert` takes a PEM certificate chain and `--tls-key` its PEM private key \
                 (PKCS#8, PKCS#1 or SEC1)"
                    .into(),
            ),
            ServeError::Htpasswd(e) => Some(e.hint()),
            ServeError::Random(_) => None,
            ServeError::Store(e) => e.hint(),
        }
    }
}

/// A connection older than this is closed after the answer it is sending: a client that
/// keeps one alive with a request now and then still gives its slot back.
pub const CONNECTION_LIFE: Duration = Duration::from_secs(300);

/// Descriptors kept for everything but connections (the listener, the store, logs).
const SPARE_DESCRIPTORS: u64 = 64;

/// Raises the soft limit on open descriptors to the hard one, and returns how many
/// connections it then allows (two descriptors each: a socket and a blob file).
fn connections_allowed() -> Option<usize> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let soft = limit.current?;
    usize::try_from(soft.saturating_sub(SPARE_DESCRIPTORS) / 2).ok()
}

/// Connections per client address, and the cap.
struct PerClient {
    held: std::sync::Mutex<HashMap<IpAddr, usize>>,
    cap: usize,
}

/// One connection's place in [`PerClient`], given back on drop.
struct ClientSlot {
    clients: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut held = self.held.lock().ok()?;
        let n = held.entry(ip).or_default();
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.clients.held.lock() {
            if let Some(n) = held.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(&self.ip);
                }
            }
        }
    }
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    view: StoreView,
    opts: Options,
    tls: Option<tokio_rustls::TlsAcceptor>,
    gate: Option<auth::Gate>,
    through: Option<Arc<through::Through>>,
}

impl Server {
    /// Checks the store and TLS files and binds `addr`. The connection cap is lowered to
    /// what the descriptor limit allows, with a warning.
    pub async fn bind(addr: &str, store: Store, mut opts: Options) -> Result<Server, ServeError> {
        let tls = opts.tls.as_ref().map(tls_acceptor).transpose()?;
        if let Some(allowed) = connections_allowed() {
            if allowed < opts.max_connections {
                (opts.log)(&format!(
                    "warning: the descriptor limit allows {allowed} connections, not {}: serving \
                     that many (`ulimit -n` raises it)",
                    opts.max_connections
                ));
                opts.max_connections = allowed.max(1);
            }
        }
        let through = opts.pull_through.as_ref().map(|p| {
            Arc::new(through::Through::new(
                p,
                store.clone(),
                Arc::clone(&opts.log),
            ))
        });
        let view = StoreView::new(store, Arc::clone(&opts.log));
        // A store that cannot be read is an error now, not on the first request.
        view.snapshot()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.to_owned(),
                source,
            })?;
        let gate = match &opts.access {
            Some(access) => {
                let local = listener.local_addr().map_err(|source| ServeError::Bind {
                    addr: addr.to_owned(),
                    source,
                })?;
                let log = Arc::clone(&opts.log);
                Some(auth::Gate::new(access, tls.is_some(), local, log)?)
            }
            None => None,
        };
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                view,
                opts,
                tls,
                gate,
                through,
            }),
        })
    }

    /// The connection cap in force (after [`Server::bind`] fitted it to the descriptor
    /// limit).
    pub fn max_connections(&self) -> usize {
        self.shared.opts.max_connections
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limit = Arc::new(Semaphore::new(self.shared.opts.max_connections.max(1)));
        let clients = Arc::new(PerClient {
            held: std::sync::Mutex::new(HashMap::new()),
            cap: self.shared.opts.max_per_client.max(1),
        });
        let accept = async {
            loop {
                // A permit first: at the cap, new connections wait in the accept queue.
                let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match self.listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and the like: say so, back off, keep serving the others.
                        (self.shared.opts.log)(&format!(
                            "warning: cannot accept a connection: {e}"
                        ));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Over its cap, a client's new connection is closed at once: it does not
                // take one of the slots others wait for.
                let Some(slot) = clients.take(peer.ip()) else {
                    drop(tcp);
                    continue;
                };
                let shared = Arc::clone(&self.shared);
                tokio::spawn(async move {
                    let _permit = permit;
                    let _slot = slot;
                    let _ = tcp.set_nodelay(true);
                    serve_connection(tcp, peer.ip(), shared).await;
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = shutdown => {}
        }
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let bad = |path: &PathBuf, reason: String| ServeError::Tls {
        path: path.clone(),
        reason,
    };
    // Read here, not by rustls-pki-types' file readers: the paths are the user's, and a FIFO
    // or a link to `/dev/zero` must be refused, not read until memory runs out.
    let read = |path: &PathBuf| {
        cudaimg_static::regular::read_capped(path, cudaimg_static::regular::MAX_TEXT_FILE)
            .map_err(|e| bad(path, e.to_string()))
    };
    let cert_pem = read(&files.cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(&files.cert, "it holds no certificate".into()));
    }
    let key_pem = read(&files.key)?;
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(&files.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| bad(&files.key, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A connection: plain TCP (blobs by `sendfile`) or TLS.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    async fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
        }
    }

    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(bytes).await,
            Conn::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }
}

async fn serve_connection(tcp: TcpStream, peer: IpAddr, shared: Arc<Shared>) {
    let timeout = shared.opts.client_timeout;
    let mut conn = match &shared.tls {
        None => Conn::Plain(tcp),
        Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => Conn::Tls(Box::new(s)),
            _ => return,
        },
    };
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let born = Instant::now();
    loop {
        if born.elapsed() > CONNECTION_LIFE {
            return;
        }
        // One head, complete within the timeout, whether the connection was idle or not.
        let deadline = Instant::now() + timeout;
        let req = loop {
            match parse_head(&buf) {
                Ok(Parsed::Done(req, len)) => {
                    buf.drain(..len);
                    break req;
                }
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    let status = if e == HeadError::TooLarge { 431 } else { 400 };
                    let body = error_body("UNSUPPORTED", &e.to_string(), "");
                    let _ =
                        send_simple(&mut conn, status, "application/json", &body, timeout).await;
                    return;
                }
            }
            match tokio::time::timeout_at(deadline, conn.read_some(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {
                    if !buf.is_empty() {
                        let body = error_body("UNSUPPORTED", "the request head took too long", "");
                        let _ =
                            send_simple(&mut conn, 408, "application/json", &body, timeout).await;
                    }
                    return;
                }
            }
        };
        let close = req.close || req.has_body;
        let (user, resp) = match &shared.gate {
            None => (None, respond(&shared, &req).await),
            Some(gate) => match gate.admit(&req, peer).await {
                auth::Verdict::Pass(user) => (Some(user), respond(&shared, &req).await),
                auth::Verdict::Answer(user, resp) => (user, resp),
            },
        };
        if shared.opts.access_log {
            let user = user.map(|u| format!(" user={}", cudaimg_oci::text::shown(&u)));
            (shared.opts.log)(&format!(
                "{} {} {} {}{}",
                req.method,
                cudaimg_oci::text::shown(&req.target),
                resp.status,
                resp.length,
                user.unwrap_or_default()
            ));
        }
        match send::send(&mut conn, resp, req.method == "HEAD", close, &shared.opts).await {
            Ok(()) if !close => {}
            _ => return,
        }
    }
}

async fn send_simple(
    conn: &mut Conn,
    status: u16,
    content_type: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    let mut bytes = Head::new(status)
        .header("Content-Type", content_type)
        .finish(body.len() as u64, true);
    bytes.extend_from_slice(body);
    tokio::time::timeout(timeout, conn.write_all(&bytes))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

/// A response: its head (without `Content-Length`), the length, and the body.
pub(crate) struct Response {
    pub status: u16,
    pub head: Head,
    pub length: u64,
    pub body: Body,
}

pub(crate) enum Body {
    Bytes(Vec<u8>),
    /// `length` bytes of a blob file from `start`.
    File(BlobFile, u64),
    /// A blob as it downloads (`--pull-through`).
    Stream(through::Stream),
}

fn json_response(status: u16, content_type: &str, body: Vec<u8>) -> Response {
    Response {
        status,
        head: Head::new(status).header("Content-Type", content_type),
        length: body.len() as u64,
        body: Body::Bytes(body),
    }
}

fn error(status: u16, code: &str, message: &str, detail: &str) -> Response {
    json_response(
        status,
        "application/json",
        error_body(code, message, detail),
    )
}

async fn respond(shared: &Arc<Shared>, req: &Request) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        let mut r = error(
            405,
            "UNSUPPORTED",
            "this registry is read-only: it serves a cudaimg store",
            &format!("{} is not allowed", cudaimg_oci::text::shown(&req.method)),
        );
        r.head = r.head.header("Allow", "GET, HEAD");
        return r;
    }
    let route = match route::parse(&req.target) {
        Ok(r) => r,
        Err(e) => return route_error(&e),
    };
    let view = Arc::clone(shared);
    let snap = match tokio::task::spawn_blocking(move || view.view.snapshot()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            (shared.opts.log)(&format!("error: cannot read the store: {e}"));
            return error(500, "UNKNOWN", "the store cannot be read", "");
        }
        Err(_) => return error(500, "UNKNOWN", "the store cannot be read", ""),
    };
    if let Some(through) = &shared.through {
        if let Some(r) = through.respond(&snap, &route, req).await {
            return r;
        }
    }
    match route {
        Route::Base => json_response(200, "application/json", b"{}".to_vec()),
        Route::Catalog(page) => {
            let (names, link) = paginate(snap.catalog(), &page, "/v2/_catalog?");
            let body = serde_json::json!({ "repositories": names });
            with_link(
                json_response(200, "application/json", body.to_string().into_bytes()),
                link,
            )
        }
        Route::Tags(name, page) => {
            let Some(repo) = snap.repos.get(&name.key) else {
                return name_unknown(&name.requested);
            };
            let tags: Vec<String> = repo.tags.keys().cloned().collect();
            let prefix = format!("/v2/{}/tags/list?", name.requested);
            let (tags, link) = paginate(tags, &page, &prefix);
            let body = serde_json::json!({ "name": name.requested, "tags": tags });
            with_link(
                json_response(200, "application/json", body.to_string().into_bytes()),
                link,
            )
        }
        Route::Manifest(name, reference) => manifest(&snap, &name, &reference),
        Route::Blob(name, digest) => blob(shared, &snap, &name, &digest, req).await,
        Route::Referrers(name, _) => {
            if !snap.repos.contains_key(&name.key) {
                return name_unknown(&name.requested);
            }
            // The store keeps no referrers (signatures, SBOMs): an empty index says so.
            let body = serde_json::json!({
                "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []
            });
            json_response(200, OCI_INDEX, body.to_string().into_bytes())
        }
    }
}

fn route_error(e: &RouteError) -> Response {
    match e {
        RouteError::Unknown => error(
            404,
            "UNSUPPORTED",
            "not an endpoint of the distribution API",
            "",
        ),
        RouteError::NameInvalid(n) => error(400, "NAME_INVALID", "invalid repository name", n),
        RouteError::DigestInvalid(d) => error(400, "DIGEST_INVALID", "invalid digest", d),
        RouteError::ManifestUnknown(r) => error(404, "MANIFEST_UNKNOWN", "manifest unknown", r),
        RouteError::BadQuery(q) => error(400, "UNSUPPORTED", "invalid query parameter", q),
    }
}

fn name_unknown(name: &str) -> Response {
    error(
        404,
        "NAME_UNKNOWN",
        "repository name not known to registry",
        name,
    )
}

fn with_link(mut r: Response, link: Option<String>) -> Response {
    if let Some(l) = link {
        r.head = r.head.header("Link", &format!("<{l}>; rel=\"next\""));
    }
    r
}

/// The names after `last`, at most `n`, and the link to the next page if any remain.
fn paginate(sorted: Vec<String>, page: &Page, prefix: &str) -> (Vec<String>, Option<String>) {
    let mut rest: Vec<String> = match &page.last {
        Some(last) => sorted.into_iter().filter(|s| s > last).collect(),
        None => sorted,
    };
    let Some(n) = page.n else {
        return (rest, None);
    };
    if rest.len() <= n {
        return (rest, None);
    }
    rest.truncate(n);
    let link = rest
        .last()
        .map(|l| format!("{prefix}n={n}&last={}", l.replace('/', "%2F")));
    (rest, link)
}

fn manifest(snap: &Snapshot, name: &route::RepoName, reference: &ManifestRef) -> Response {
    let Some(repo) = snap.repos.get(&name.key) else {
        return name_unknown(&name.requested);
    };
    let digest = match reference {
        ManifestRef::Digest(d) => Some(d),
        ManifestRef::Tag(t) => repo.tags.get(t),
    };
    let Some((digest, m)) = digest.and_then(|d| repo.manifests.get(d).map(|m| (d, m))) else {
        let r = match reference {
            ManifestRef::Tag(t) => t.clone(),
            ManifestRef::Digest(d) => d.to_string(),
        };
        return error(
            404,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
            &format!("{}:{r}", name.requested),
        );
    };
    let mut r = json_response(200, &m.media_type, m.bytes.clone());
    r.head = r
        .head
        .header("Docker-Content-Digest", digest.as_str())
        .header("ETag", &format!("\"{digest}\""));
    r
}

async fn blob(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    name: &route::RepoName,
    digest: &cudaimg_oci::digest::Digest,
    req: &Request,
) -> Response {
    let Some(repo) = snap.repos.get(&name.key) else {
        return name_unknown(&name.requested);
    };
    let unknown = || {
        error(
            404,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
            digest.as_str(),
        )
    };
    // Manifests are blobs too, and are held in memory.
    let (size, in_memory) = match (repo.manifests.get(digest), repo.blobs.get(digest)) {
        (Some(m), _) => (m.bytes.len() as u64, Some(m)),
        (None, Some(size)) => (*size, None),
        (None, None) => return unknown(),
    };
    let (status, start, len) = match parse_range(req.range.as_deref(), size) {
        RangeSpec::Whole => (200, 0, size),
        RangeSpec::Part(s, e) => (206, s, e - s + 1),
        RangeSpec::Unsatisfiable => {
            let mut r = error(
                416,
                "BLOB_UNKNOWN",
                "range not satisfiable",
                &format!("size {size}"),
            );
            r.head = r.head.header("Content-Range", &format!("bytes */{size}"));
            return r;
        }
    };
    let body = if let Some(m) = in_memory {
        let (s, e) = (start as usize, (start + len) as usize);
        Body::Bytes(m.bytes.get(s..e).map(<[u8]>::to_vec).unwrap_or_default())
    } else {
        let view = Arc::clone(shared);
        let d = digest.clone();
        let (verify, part) = (shared.opts.verify_reads, status == 206);
        let opened =
            tokio::task::spawn_blocking(move || view.view.open_blob(&d, size, verify, part)).await;
        match opened {
            Ok(Ok(Some(f))) => Body::File(f, start),
            // Gone since the snapshot: a `gc` after an `rm`.
            Ok(Ok(None)) => return unknown(),
            Ok(Err(e)) => {
                (shared.opts.log)(&format!("error: {e}"));
                if let Some(h) = e.hint() {
                    (shared.opts.log)(&format!("hint: {h}"));
                }
                return error(
                    500,
                    "UNKNOWN",
                    "the blob cannot be read from the store",
                    digest.as_str(),
                );
            }
            Err(_) => return error(500, "UNKNOWN", "the blob cannot be read", ""),
        }
    };
    let mut head = Head::new(status)
        .header("Content-Type", "application/octet-stream")
        .header("Docker-Content-Digest", digest.as_str())
        .header("ETag", &format!("\"{digest}\""))
        .header("Accept-Ranges", "bytes");
    if status == 206 {
        head = head.header(
            "Content-Range",
            &format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    Response {
        status,
        head,
        length: len,
        body,
    }
}
