//! The relay: a registry on 127.0.0.1, for the one image being handed over, that the
//! engine pulls from while cudaimg downloads (`pull --load`), or right away (`load`).
//!
//! Why: `POST /images/load` unpacks nothing until the whole archive is in (Engine 20.10
//! untars it to a directory first), so every layer's import follows the download. An
//! engine's own pull imports each layer as soon as it has arrived, while later ones
//! download.
//!
//! What is served depends on the engine's store ([`Serve`]):
//! - [`Serve::Diffs`], for the graphdriver store (Engine 20.10, and 28/29 with the
//!   containerd store off): a manifest naming the same config (so the image ID, the config
//!   digest, is upstream's) and each gzip layer as its uncompressed tar under its diff ID,
//!   which spares the Engine the decompression, most of its import time (7.3 s against
//!   3.0 s for a 280 MB layer with Engine 20.10). Descriptor sizes of those layers are not
//!   known before they are decompressed: that store reads a blob to its end and checks the
//!   digest, not the size (moby's `layerDescriptor.Download`).
//! - [`Serve::Upstream`], for containerd's content store (Docker ≥ 28 with the containerd
//!   image store, and containerd itself): upstream's index, manifest and compressed blobs,
//!   byte-exact. That store refuses a blob whose size differs from its descriptor's, keeps
//!   blobs as pulled (so `docker push` and `docker save` reuse them), and names the image
//!   by its manifest's or index's digest, as `docker pull` would have.
//!
//! Verified on the way out: a blob's answer ends (the last chunk, or the last bytes of a
//! sized one) only once the stored blob matched its digest and, for a diff, the
//! decompressed bytes their diff ID. A blob that fails either way ends its answer short,
//! which the engine counts as a failed download and retries.
//!
//! HTTP is hyper's. containerd's resolver tries HTTPS first on a loopback registry and
//! falls back to HTTP only when the server answers in HTTP (an EOF is final), so a TLS
//! `ClientHello` is answered with a plain `HTTP/1.1 400`. One greedy local client cannot
//! take the relay down: a request head has a deadline, connections are capped, and the
//! accept loop outlives its errors (EMFILE included).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use cudaimg_oci::digest::{Digest, Hasher};
use cudaimg_oci::manifest::{
    Descriptor, ImageConfig, ImageManifest, DOCKER_CONFIG, DOCKER_LAYER_PLAIN, DOCKER_MANIFEST,
    OCI_INDEX, OCI_LAYER_PLAIN, OCI_MANIFEST,
};
use cudaimg_store::Store;
use cudaimg_transfer::ChosenImage;

use crate::arrivals::Arrivals;

/// The relay's repository names start so; a random part follows (see [`start`]).
pub(crate) const REPOSITORY_PREFIX: &str = "cudaimg-load-";

/// Body pieces, and the read size of the decompressor.
const PIECE: usize = 256 * 1024;
/// How long a client may take to send a request head (and to send its first byte).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. An engine opens a handful; the rest wait in the backlog
/// or, past it, are closed.
const MAX_CONNECTIONS: usize = 64;
/// The first byte of a TLS record carrying a handshake (a `ClientHello`).
const TLS_HANDSHAKE: u8 = 0x16;

/// What the relay serves: see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Gzip layers decompressed, under their diff IDs (the graphdriver store).
    Diffs,
    /// Upstream's bytes, index included (containerd's content store).
    Upstream,
}

impl Serve {
    pub fn as_str(self) -> &'static str {
        match self {
            Serve::Diffs => "diffs",
            Serve::Upstream => "upstream",
        }
    }
}

/// How one blob the engine may ask for is served.
#[derive(Clone)]
enum Served {
    /// The stored blob as it is (config, compressed layers, plain or zstd layers).
    AsStored(Descriptor),
    /// A gzip layer, decompressed, checked against its diff ID.
    Decompressed { blob: Descriptor, diff_id: Digest },
}

/// One manifest the relay answers with.
struct Document {
    bytes: Bytes,
    media_type: String,
    digest: Digest,
}

/// What the relay serves, once known: manifests by tag or digest, blobs by digest.
struct Image {
    /// Under the tag: the index if there is one, else the manifest.
    top: Arc<Document>,
    manifests: HashMap<Digest, Arc<Document>>,
    blobs: HashMap<Digest, Served>,
}

/// The running relay: its address, and the switch that stops it.
pub(crate) struct Relay {
    pub(crate) addr: SocketAddr,
    /// Answers ended short because a blob failed a check (the engine asks again).
    pub(crate) ended_short: Arc<AtomicU64>,
    /// `cudaimg-load-<128 random bits>`: only the engine is told it.
    pub(crate) repository: String,
    /// The digest the engine gets under the tag (index or manifest); `None` until known
    /// (the diffs' manifest needs the config first).
    pub(crate) top_digest: Arc<std::sync::OnceLock<Digest>>,
    stop: Arc<AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Stops serving and stops every answer still waiting for a blob.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.accept.abort();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What every connection shares.
struct Shared {
    store: Store,
    repository: String,
    arrivals: Arc<Arrivals>,
    chosen: ChosenImage,
    tag: String,
    serve: Serve,
    image: tokio::sync::OnceCell<Result<Arc<Image>, String>>,
    top_digest: Arc<std::sync::OnceLock<Digest>>,
    stop: Arc<AtomicBool>,
    /// Body bytes handed to the engine.
    sent: Arc<AtomicU64>,
    ended_short: Arc<AtomicU64>,
}

/// Binds 127.0.0.1 on a free port and serves `chosen` as `cudaimg-load-<random>:TAG`.
/// Any local user can reach the port while it runs: the random repository name keeps
/// what is served (a private image's layers, perhaps) to the engine it was given to.
pub(crate) fn start(
    store: Store,
    arrivals: Arc<Arrivals>,
    chosen: ChosenImage,
    tag: String,
    serve: Serve,
    sent: Arc<AtomicU64>,
) -> std::io::Result<Relay> {
    let mut secret = [0u8; 16];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| std::io::Error::other("no random bytes from the system"))?;
    let repository = format!("{REPOSITORY_PREFIX}{}", hex::encode(secret));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let ended_short = Arc::new(AtomicU64::new(0));
    let top_digest = Arc::new(std::sync::OnceLock::new());
    let shared = Arc::new(Shared {
        ended_short: ended_short.clone(),
        store,
        repository: repository.clone(),
        arrivals,
        chosen,
        tag,
        serve,
        image: tokio::sync::OnceCell::new(),
        top_digest: top_digest.clone(),
        stop: stop.clone(),
        sent,
    });
    let accept = tokio::spawn(accept_loop(listener, shared));
    Ok(Relay {
        addr,
        ended_short,
        repository,
        top_digest,
        stop,
        accept,
    })
}

/// Accepts until stopped. An accept error (EMFILE when descriptors run out, a reset
/// before accept) is waited out, never the end of the relay; connections past the cap
/// are closed at once.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            connection(tcp, shared).await;
            drop(slot);
        });
    }
}

/// Serves one connection: a TLS `ClientHello` gets a plain `400` (so containerd falls back
/// to HTTP), anything else is HTTP/1.1 through hyper.
async fn connection(mut tcp: TcpStream, shared: Arc<Shared>) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HEAD_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] == TLS_HANDSHAKE {
        let _ = tcp
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 50\r\n\
                  Connection: close\r\n\r\nthis registry speaks plain HTTP on 127.0.0.1 only\n\n",
            )
            .await;
        let _ = tcp.shutdown().await;
        return;
    }
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, &req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// A registry error answer (`{"errors": [{code, message}]}`).
fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::to_vec(&serde_json::json!({
        "errors": [{"code": code, "message": message}]
    }))
    .unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Builds an answer; a header value that cannot be one (never, for ours) is left out.
fn answer(status: StatusCode, headers: &[(&str, &str)], body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// Answers one request.
async fn respond(shared: &Arc<Shared>, req: &Request<Incoming>) -> Response<Body> {
    let head_only = req.method() == Method::HEAD;
    if !(head_only || req.method() == Method::GET) {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this relay is read-only",
        );
    }
    let path = req.uri().path();
    if path == "/v2/" || path == "/v2" {
        return answer(
            StatusCode::OK,
            &[("content-type", "application/json")],
            if head_only { empty() } else { full("{}") },
        );
    }
    let prefix = format!("/v2/{}/", shared.repository);
    let Some(rest) = path.strip_prefix(&prefix) else {
        return error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "this relay serves one repository",
        );
    };
    let image = match shared.image.get_or_init(|| prepare(shared.clone())).await {
        Ok(image) => image.clone(),
        Err(why) => return error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", why),
    };
    if let Some(reference) = rest.strip_prefix("manifests/") {
        let doc = if reference == shared.tag {
            Some(image.top.clone())
        } else {
            Digest::parse(reference)
                .ok()
                .and_then(|d| image.manifests.get(&d).cloned())
        };
        let Some(doc) = doc else {
            return error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "no such manifest",
            );
        };
        let len = doc.bytes.len().to_string();
        let headers = [
            ("content-type", doc.media_type.as_str()),
            ("docker-content-digest", doc.digest.as_str()),
            ("content-length", len.as_str()),
        ];
        let body = if head_only {
            empty()
        } else {
            full(doc.bytes.clone())
        };
        return answer(StatusCode::OK, &headers, body);
    }
    let Some(served) = rest
        .strip_prefix("blobs/")
        .and_then(|d| Digest::parse(d).ok())
        .and_then(|d| image.blobs.get(&d).cloned())
    else {
        return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "no such blob");
    };
    let from = match &served {
        Served::AsStored(d) => resumed_from(req, d.size),
        Served::Decompressed { .. } => None,
    };
    blob(shared, served, head_only, from)
}

/// Where a `Range: bytes=N-` (or `bytes=N-LAST`, to the blob's last byte) asks a stored
/// blob of `size` bytes to resume: containerd's fetcher resumes a cut blob so, and its
/// content store appends what it gets. Any other range (one that ends early, several) is
/// answered with the whole blob, as HTTP allows: its last bytes may go out only once the
/// whole blob has matched its digest.
fn resumed_from(req: &Request<Incoming>, size: u64) -> Option<u64> {
    let spec = req
        .headers()
        .get(hyper::header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let to_the_end = end.trim().is_empty() || end.trim().parse::<u64>().ok() == size.checked_sub(1);
    (to_the_end && start > 0 && start < size).then_some(start)
}

/// What the relay serves. The diffs' manifest needs the config (for the diff IDs), so it
/// waits until that is stored; upstream's is known at once.
async fn prepare(shared: Arc<Shared>) -> Result<Arc<Image>, String> {
    let chosen = &shared.chosen;
    let image = match shared.serve {
        Serve::Upstream => upstream(chosen),
        Serve::Diffs => {
            let config = chosen.image.manifest.config.clone();
            let (store, arrivals) = (shared.store.clone(), shared.arrivals.clone());
            let bytes = tokio::task::spawn_blocking(move || {
                arrivals.wait(&store, &config)?;
                let mut bytes = Vec::new();
                // Verified as it is read: the last bytes come only with a matching digest.
                store
                    .open_blob(&config.digest, config.size)?
                    .read_to_end(&mut bytes)?;
                Ok::<_, cudaimg_store::StoreError>(bytes)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            let parsed: ImageConfig = serde_json::from_slice(&bytes)
                .map_err(|e| format!("the image config is not JSON: {e}"))?;
            diffs(&chosen.image.manifest, &parsed.rootfs.diff_ids)
        }
    };
    let _ = shared.top_digest.set(image.top.digest.clone());
    Ok(Arc::new(image))
}

/// Upstream's documents and blobs, byte-exact: the index (if the image was chosen from
/// one) under the tag, the platform manifest by its digest.
fn upstream(chosen: &ChosenImage) -> Image {
    let a = &chosen.image;
    let manifest = Arc::new(Document {
        bytes: Bytes::from(a.manifest_bytes.clone()),
        media_type: a.media_type.clone(),
        digest: a.digest.clone(),
    });
    let mut manifests = HashMap::from([(manifest.digest.clone(), manifest.clone())]);
    let top = match &chosen.index {
        Some(index) => {
            let doc = Arc::new(Document {
                bytes: Bytes::from(index.bytes.clone()),
                media_type: index
                    .media_type
                    .clone()
                    .unwrap_or_else(|| OCI_INDEX.to_owned()),
                digest: index.digest.clone(),
            });
            manifests.insert(doc.digest.clone(), doc.clone());
            doc
        }
        None => manifest,
    };
    let blobs = std::iter::once(&a.manifest.config)
        .chain(&a.manifest.layers)
        .map(|d| (d.digest.clone(), Served::AsStored(d.clone())))
        .collect();
    Image {
        top,
        manifests,
        blobs,
    }
}

/// The manifest the graphdriver store is given, and what each of its blobs is.
fn diffs(manifest: &ImageManifest, diff_ids: &[String]) -> Image {
    let docker = manifest.config.media_type == DOCKER_CONFIG;
    let (manifest_type, plain) = if docker {
        (DOCKER_MANIFEST, DOCKER_LAYER_PLAIN)
    } else {
        (OCI_MANIFEST, OCI_LAYER_PLAIN)
    };
    let mut blobs = HashMap::new();
    blobs.insert(
        manifest.config.digest.clone(),
        Served::AsStored(manifest.config.clone()),
    );
    let descriptor = |media_type: &str, digest: &Digest, size: u64| serde_json::json!({"mediaType": media_type, "digest": digest.as_str(), "size": size});
    // Only with a diff ID per layer can a layer be served as its diff.
    let diff_ids: Vec<Option<Digest>> = if diff_ids.len() == manifest.layers.len() {
        diff_ids.iter().map(|d| Digest::parse(d).ok()).collect()
    } else {
        vec![None; manifest.layers.len()]
    };
    let mut layers = Vec::new();
    for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
        let gzip = layer.media_type.ends_with("tar.gzip") || layer.media_type.ends_with("tar+gzip");
        match diff_id {
            Some(diff_id) if gzip => {
                // The size is the compressed one: the plain size is unknown until the end,
                // and this store checks the digest, not this.
                layers.push(descriptor(plain, &diff_id, layer.size));
                blobs.insert(
                    diff_id.clone(),
                    Served::Decompressed {
                        blob: layer.clone(),
                        diff_id,
                    },
                );
            }
            _ => {
                layers.push(descriptor(&layer.media_type, &layer.digest, layer.size));
                blobs.insert(layer.digest.clone(), Served::AsStored(layer.clone()));
            }
        }
    }
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": descriptor(&manifest.config.media_type, &manifest.config.digest, manifest.config.size),
        "layers": layers,
    }))
    .unwrap_or_default();
    let top = Arc::new(Document {
        digest: Digest::of(&bytes),
        bytes: Bytes::from(bytes),
        media_type: manifest_type.to_owned(),
    });
    Image {
        manifests: HashMap::from([(top.digest.clone(), top.clone())]),
        top,
        blobs,
    }
}

/// One blob's answer: a stored one with its length, a decompressed one chunked. The body
/// is produced on a blocking thread (the store follower waits, the decompressor computes);
/// if the producer fails a check, the body ends in an error, and hyper closes the
/// connection without the body's end.
/// `from`: a stored blob's answer resumes there (`206`).
fn blob(
    shared: &Arc<Shared>,
    served: Served,
    head_only: bool,
    from: Option<u64>,
) -> Response<Body> {
    let (digest, length) = match &served {
        Served::AsStored(d) => (d.digest.clone(), Some(d.size)),
        Served::Decompressed { diff_id, .. } => (diff_id.clone(), None),
    };
    let skip = from.unwrap_or(0);
    let len = length.map(|l| (l - skip).to_string());
    let range = length.map(|l| format!("bytes {skip}-{}/{l}", l.saturating_sub(1)));
    let mut headers = vec![
        ("content-type", "application/octet-stream"),
        ("docker-content-digest", digest.as_str()),
    ];
    match &len {
        Some(len) => headers.push(("content-length", len.as_str())),
        None if head_only => headers.push(("transfer-encoding", "chunked")),
        None => {}
    }
    let status = match (&range, from) {
        (Some(range), Some(_)) => {
            headers.push(("content-range", range.as_str()));
            StatusCode::PARTIAL_CONTENT
        }
        _ => StatusCode::OK,
    };
    if head_only {
        return answer(status, &headers, empty());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let (store, stop) = (shared.store.clone(), shared.stop.clone());
    let producer = tokio::task::spawn_blocking(move || produce(&store, &served, skip, &stop, &tx));
    let (sent, ended_short) = (shared.sent.clone(), shared.ended_short.clone());
    let pieces = futures_util::stream::unfold((rx, Some(producer)), move |(mut rx, producer)| {
        let (sent, ended_short) = (sent.clone(), ended_short.clone());
        async move {
            if let Some(piece) = rx.recv().await {
                sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
                return Some((Ok(Frame::data(Bytes::from(piece))), (rx, producer)));
            }
            // The producer dropped its sender: it is done, and says how.
            let producer = producer?;
            if matches!(producer.await, Ok(Ok(()))) {
                return None;
            }
            ended_short.fetch_add(1, Ordering::Relaxed);
            let failed = std::io::Error::other("a blob failed its check");
            Some((Err(failed), (rx, None)))
        }
    });
    answer(
        status,
        &headers,
        BodyExt::boxed_unsync(StreamBody::new(pieces.boxed())),
    )
}

/// Sends the blob's pieces, a stored one's from byte `skip` (the bytes before it are
/// read, so the whole blob is still checked, but not sent); `Ok` once every piece went out
/// and the checks passed (the answer then ends).
fn produce(
    store: &Store,
    served: &Served,
    skip: u64,
    stop: &Arc<AtomicBool>,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> std::io::Result<()> {
    match served {
        // The follower checks the blob's digest itself, before its last bytes.
        Served::AsStored(d) => {
            let mut follower = store.follow_blob(&d.digest, d.size, stop.clone());
            std::io::copy(&mut (&mut follower).take(skip), &mut std::io::sink())?;
            pump(&mut follower, tx, None)
        }
        Served::Decompressed { blob, diff_id } => {
            let follower = store.follow_blob(&blob.digest, blob.size, stop.clone());
            let mut gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::with_capacity(
                1 << 20,
                follower,
            ));
            let mut diff = Hasher::new();
            pump(&mut gz, tx, Some(&mut diff))?;
            // Whatever follows the gzip stream still counts for the blob's digest.
            std::io::copy(&mut gz.into_inner(), &mut std::io::sink())?;
            let (actual, len) = diff.finish();
            if &actual != diff_id {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "layer {} decompresses to {actual} ({len} bytes), not its diff ID {diff_id}",
                        blob.digest
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// Copies `from` into pieces on `tx`, through `hasher` if given.
fn pump(
    from: &mut impl Read,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
    mut hasher: Option<&mut Hasher>,
) -> std::io::Result<()> {
    loop {
        let mut piece = Vec::with_capacity(PIECE);
        if from.by_ref().take(PIECE as u64).read_to_end(&mut piece)? == 0 {
            return Ok(());
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&piece);
        }
        tx.blocking_send(piece)
            .map_err(|_| std::io::Error::other("the engine stopped reading"))?;
    }
}

#[cfg(test)]
mod tests;
