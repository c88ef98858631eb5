//! `pull --load` through the Engine's own pull: a registry on 127.0.0.1, for the one image
//! being pulled, that the Engine pulls from while cudaimg downloads.
//!
//! Why: `POST /images/load` unpacks nothing until the whole archive is in (Engine 20.10
//! untars it to a directory first), so every layer's import follows the download. The
//! Engine's pull instead imports each layer, in order, as soon as that layer has arrived,
//! while later ones download; and a layer served uncompressed spares the Engine the
//! decompression, which is most of its import time (measured with Engine 20.10: 7.3 s
//! for a 280 MB gzip layer, 3.0 s for the same layer as a plain tar).
//!
//! What the Engine is given: a manifest naming the same config (so the image ID, the
//! config digest, is upstream's) and, for each gzip layer, its uncompressed tar under its
//! diff ID, the digest the Engine checks it against. The layer streams from the store as
//! the pull writes it ([`cudaimg_store::BlobFollower`]), decompressed on the way. Other
//! layers (already plain, or zstd) are served as stored. Descriptor sizes of plain layers
//! are not known before they are decompressed; the Engine reads a blob to its end and
//! checks the digest, not the size (moby's `layerDescriptor.Download`).
//!
//! Verified on the way out: a response ends (the last chunk of a chunked body, the last
//! bytes of a sized one) only once the stored blob matched its digest and the
//! decompressed bytes their diff ID. A blob that fails either way ends its response short,
//! which the Engine counts as a failed download and retries.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use cudaimg_oci::digest::{Digest, Hasher};
use cudaimg_oci::manifest::{
    Descriptor, ImageConfig, ImageManifest, DOCKER_CONFIG, DOCKER_LAYER_PLAIN, DOCKER_MANIFEST,
    OCI_LAYER_PLAIN, OCI_MANIFEST,
};
use cudaimg_serve::http::{error_body, parse_head, Head, Parsed, MAX_HEAD};
use cudaimg_store::Store;

use super::Arrivals;

/// The relay's repository names start so; a random part follows (see [`start`]).
const REPOSITORY_PREFIX: &str = "cudaimg-load-";

/// Body pieces, and the read size of the decompressor.
const PIECE: usize = 256 * 1024;
/// How long the Engine may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// How one blob the Engine may ask for is served.
#[derive(Clone)]
enum Served {
    /// The stored blob as it is (config, plain or zstd layers).
    AsStored(Descriptor),
    /// A gzip layer, decompressed, checked against its diff ID.
    Decompressed { blob: Descriptor, diff_id: Digest },
}

/// What the relay serves, once the config is known.
struct Image {
    manifest: Vec<u8>,
    manifest_type: &'static str,
    manifest_digest: Digest,
    blobs: HashMap<Digest, Served>,
}

/// The running relay: its address, and the switch that stops it.
pub(super) struct Relay {
    pub(super) addr: SocketAddr,
    /// Answers ended short because a blob failed a check (the Engine asks again).
    pub(super) ended_short: Arc<AtomicU64>,
    /// `cudaimg-load-<128 random bits>`: only the Engine is told it.
    pub(super) repository: String,
    stop: Arc<AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Stops serving and stops every response still waiting for a blob.
    pub(super) fn stop(&self) {
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
    manifest: ImageManifest,
    tag: String,
    image: tokio::sync::OnceCell<Result<Arc<Image>, String>>,
    stop: Arc<AtomicBool>,
    /// Body bytes handed to the Engine.
    sent: Arc<AtomicU64>,
    ended_short: Arc<AtomicU64>,
}

/// Binds 127.0.0.1 on a free port and serves `manifest` as `cudaimg-load-<random>:TAG`.
/// Any local user can reach the port while the pull runs: the random repository name keeps
/// what is served (a private image's layers, perhaps) to the Engine it was given to.
pub(super) fn start(
    store: Store,
    arrivals: Arc<Arrivals>,
    manifest: ImageManifest,
    tag: String,
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
    let shared = Arc::new(Shared {
        ended_short: ended_short.clone(),
        store,
        repository: repository.clone(),
        arrivals,
        manifest,
        tag,
        image: tokio::sync::OnceCell::new(),
        stop: stop.clone(),
        sent,
    });
    let accept = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(connection(tcp, shared.clone()));
        }
    });
    Ok(Relay {
        addr,
        ended_short,
        repository,
        stop,
        accept,
    })
}

/// Serves requests on one connection until it closes or a response ends short.
async fn connection(mut tcp: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (req, len) = loop {
            match parse_head(&buf) {
                Ok(Parsed::Done(req, len)) => break (req, len),
                Ok(Parsed::Partial) => {}
                Err(_) => return,
            }
            let mut more = [0u8; 4096];
            match tokio::time::timeout(HEAD_TIMEOUT, tcp.read(&mut more)).await {
                Ok(Ok(n)) if n > 0 && buf.len() + n <= MAX_HEAD => {
                    buf.extend_from_slice(&more[..n]);
                }
                _ => return,
            }
        };
        buf.drain(..len);
        if req.has_body {
            let _ = tcp.write_all(&Head::new(405).finish(0, true)).await;
            return;
        }
        let head_only = req.method == "HEAD";
        if !(head_only || req.method == "GET") {
            let _ = tcp.write_all(&Head::new(405).finish(0, true)).await;
            return;
        }
        if respond(&mut tcp, &shared, &req.target, head_only)
            .await
            .is_err()
            || req.close
        {
            return;
        }
    }
}

/// A complete small answer.
async fn answer(
    tcp: &mut TcpStream,
    head: Head,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = head.finish(body.len() as u64, false);
    if !head_only {
        out.extend_from_slice(body);
    }
    tcp.write_all(&out).await
}

async fn not_found(tcp: &mut TcpStream, code: &str, what: &str) -> std::io::Result<()> {
    let body = error_body(code, what, "");
    answer(
        tcp,
        Head::new(404).header("Content-Type", "application/json"),
        &body,
        false,
    )
    .await
}

/// Answers one request; an `Err` closes the connection (a body that could not end).
async fn respond(
    tcp: &mut TcpStream,
    shared: &Arc<Shared>,
    target: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let path = target.split('?').next().unwrap_or_default();
    if path == "/v2/" || path == "/v2" {
        return answer(
            tcp,
            Head::new(200).header("Content-Type", "application/json"),
            b"{}",
            head_only,
        )
        .await;
    }
    let prefix = format!("/v2/{}/", shared.repository);
    let Some(rest) = path.strip_prefix(&prefix) else {
        return not_found(tcp, "NAME_UNKNOWN", "this relay serves one repository").await;
    };
    let image = match shared.image.get_or_init(|| prepare(shared.clone())).await {
        Ok(image) => image.clone(),
        Err(why) => {
            let body = error_body("UNKNOWN", why, "");
            return answer(
                tcp,
                Head::new(500).header("Content-Type", "application/json"),
                &body,
                head_only,
            )
            .await;
        }
    };
    if let Some(reference) = rest.strip_prefix("manifests/") {
        if reference != shared.tag && reference != image.manifest_digest.as_str() {
            return not_found(tcp, "MANIFEST_UNKNOWN", "no such manifest").await;
        }
        let head = Head::new(200)
            .header("Content-Type", image.manifest_type)
            .header("Docker-Content-Digest", image.manifest_digest.as_str());
        return answer(tcp, head, &image.manifest, head_only).await;
    }
    let Some(served) = rest
        .strip_prefix("blobs/")
        .and_then(|d| Digest::parse(d).ok())
        .and_then(|d| image.blobs.get(&d).cloned())
    else {
        return not_found(tcp, "BLOB_UNKNOWN", "no such blob").await;
    };
    send_blob(tcp, shared, served, head_only).await
}

/// The served manifest: needs the config (for the diff IDs), so waits until it is stored.
async fn prepare(shared: Arc<Shared>) -> Result<Arc<Image>, String> {
    let config = shared.manifest.config.clone();
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
    let parsed: ImageConfig =
        serde_json::from_slice(&bytes).map_err(|e| format!("the image config is not JSON: {e}"))?;
    Ok(Arc::new(image(&shared.manifest, &parsed.rootfs.diff_ids)))
}

/// The manifest the Engine is given, and what each of its blobs is.
fn image(manifest: &ImageManifest, diff_ids: &[String]) -> Image {
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
                // and the Engine checks the digest, not this.
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
    Image {
        manifest_digest: Digest::of(&bytes),
        manifest: bytes,
        manifest_type,
        blobs,
    }
}

/// Streams one blob: a stored one with its length, a decompressed one chunked. The body is
/// produced on a blocking thread (the store follower waits, the decompressor computes).
async fn send_blob(
    tcp: &mut TcpStream,
    shared: &Arc<Shared>,
    served: Served,
    head_only: bool,
) -> std::io::Result<()> {
    let (digest, length) = match &served {
        Served::AsStored(d) => (d.digest.clone(), Some(d.size)),
        Served::Decompressed { diff_id, .. } => (diff_id.clone(), None),
    };
    let head = Head::new(200)
        .header("Content-Type", "application/octet-stream")
        .header("Docker-Content-Digest", digest.as_str());
    let mut out = match length {
        Some(len) => head.finish(len, false),
        None => head.finish_chunked(),
    };
    if head_only {
        return tcp.write_all(&out).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let (store, stop) = (shared.store.clone(), shared.stop.clone());
    let producer = tokio::task::spawn_blocking(move || produce(&store, &served, &stop, &tx));
    while let Some(piece) = rx.recv().await {
        shared.sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
        if length.is_some() {
            out.extend_from_slice(&piece);
        } else {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(&piece);
            out.extend_from_slice(b"\r\n");
        }
        tcp.write_all(&out).await?;
        out.clear();
    }
    // The producer dropped its sender: it is done, and says how.
    if !matches!(producer.await, Ok(Ok(()))) {
        shared.ended_short.fetch_add(1, Ordering::Relaxed);
        // Ends the body short: the Engine discards the download and asks again.
        let _ = tcp.shutdown().await;
        return Err(std::io::Error::other("a blob failed its check"));
    }
    if length.is_none() {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    tcp.write_all(&out).await
}

/// Sends the blob's pieces; `Ok` once every piece went out and the checks passed (the
/// caller then ends the body).
fn produce(
    store: &Store,
    served: &Served,
    stop: &Arc<AtomicBool>,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> std::io::Result<()> {
    match served {
        // The follower checks the blob's digest itself.
        Served::AsStored(d) => pump(
            &mut store.follow_blob(&d.digest, d.size, stop.clone()),
            tx,
            None,
        ),
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
            .map_err(|_| std::io::Error::other("the Engine stopped reading"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn desc(media_type: &str, n: u8, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: d(n),
            size,
        }
    }

    fn served_manifest(image: &Image) -> serde_json::Value {
        serde_json::from_slice(&image.manifest).unwrap_or_default()
    }

    #[test]
    fn only_the_engine_knows_the_repository_the_relay_serves() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&tmp.path().join("s")).unwrap_or_else(|e| panic!("{e}"));
        let manifest = ImageManifest {
            media_type: DOCKER_MANIFEST.into(),
            config: desc(DOCKER_CONFIG, 0, 10),
            layers: vec![],
        };
        rt.block_on(async {
            let relay = |m: &ImageManifest| {
                start(
                    store.clone(),
                    Arc::default(),
                    m.clone(),
                    "t".into(),
                    Arc::default(),
                )
                .unwrap_or_else(|e| panic!("{e}"))
            };
            let (a, b) = (relay(&manifest), relay(&manifest));
            for r in [&a, &b] {
                let secret = r
                    .repository
                    .strip_prefix(REPOSITORY_PREFIX)
                    .unwrap_or_default();
                assert_eq!(secret.len(), 32, "{}", r.repository);
                assert!(
                    secret.bytes().all(|c| c.is_ascii_hexdigit()),
                    "{}",
                    r.repository
                );
            }
            assert_ne!(a.repository, b.repository);
            let client = reqwest::Client::new();
            let get = |path: String| {
                let client = client.clone();
                let url = format!("http://{}{path}", a.addr);
                async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
            };
            assert_eq!(get("/v2/".into()).await.ok(), Some(200));
            for guess in ["cudaimg-load", b.repository.as_str(), "nvidia/cuda"] {
                let status = get(format!("/v2/{guess}/manifests/t")).await.ok();
                assert_eq!(status, Some(404), "{guess}");
            }
        });
    }

    #[test]
    fn gzip_layers_are_served_as_their_diffs_and_the_rest_as_stored() {
        let manifest = ImageManifest {
            media_type: DOCKER_MANIFEST.into(),
            config: desc(DOCKER_CONFIG, 0, 10),
            layers: vec![
                desc("application/vnd.docker.image.rootfs.diff.tar.gzip", 1, 100),
                desc(DOCKER_LAYER_PLAIN, 2, 200),
                desc("application/vnd.oci.image.layer.v1.tar+zstd", 3, 300),
            ],
        };
        let diff_ids: Vec<String> = [11, 2, 13].iter().map(|n| d(*n).to_string()).collect();
        let image = image(&manifest, &diff_ids);
        assert_eq!(image.manifest_type, DOCKER_MANIFEST);
        assert_eq!(image.manifest_digest, Digest::of(&image.manifest));
        let m = served_manifest(&image);
        assert_eq!(
            m["config"]["digest"],
            d(0).to_string(),
            "the image ID stays upstream's"
        );
        let layers = m["layers"].as_array().cloned().unwrap_or_default();
        let types: Vec<&str> = layers
            .iter()
            .filter_map(|l| l["mediaType"].as_str())
            .collect();
        assert_eq!(
            types,
            [
                DOCKER_LAYER_PLAIN,
                DOCKER_LAYER_PLAIN,
                "application/vnd.oci.image.layer.v1.tar+zstd"
            ]
        );
        let digests: Vec<&str> = layers.iter().filter_map(|l| l["digest"].as_str()).collect();
        assert_eq!(
            digests,
            [d(11).to_string(), d(2).to_string(), d(3).to_string()]
        );
        assert!(matches!(
            image.blobs.get(&d(11)),
            Some(Served::Decompressed { blob, diff_id }) if blob.digest == d(1) && *diff_id == d(11)
        ));
        assert!(matches!(image.blobs.get(&d(2)), Some(Served::AsStored(b)) if b.size == 200));
        assert!(matches!(image.blobs.get(&d(3)), Some(Served::AsStored(_))));
        assert!(matches!(image.blobs.get(&d(0)), Some(Served::AsStored(_))));
        assert!(
            !image.blobs.contains_key(&d(1)),
            "the gzip blob itself is not offered"
        );
    }

    #[test]
    fn oci_images_get_oci_types_and_a_config_without_a_diff_per_layer_serves_them_as_stored() {
        let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
        let manifest = ImageManifest {
            media_type: OCI_MANIFEST.into(),
            config: desc("application/vnd.oci.image.config.v1+json", 0, 10),
            layers: vec![desc(gz, 1, 100), desc(gz, 2, 200)],
        };
        let two: Vec<String> = [11, 12].iter().map(|n| d(*n).to_string()).collect();
        let image = image(&manifest, &two);
        assert_eq!(image.manifest_type, OCI_MANIFEST);
        let m = served_manifest(&image);
        assert_eq!(m["layers"][0]["mediaType"], OCI_LAYER_PLAIN);
        assert_eq!(m["layers"][1]["digest"], d(12).to_string());

        let image = super::image(&manifest, &two[..1]);
        let m = served_manifest(&image);
        assert_eq!(m["layers"][0]["mediaType"], gz);
        assert_eq!(m["layers"][0]["digest"], d(1).to_string());
        assert!(matches!(image.blobs.get(&d(2)), Some(Served::AsStored(_))));
    }
}
