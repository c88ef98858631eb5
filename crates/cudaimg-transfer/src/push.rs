//! `push`: a stored image to any registry, byte-exact. Also the half that `copy` shares: the
//! plan of what to send (blobs, then child manifests, then the top manifest), the blobs
//! sent `-j N` at once with cross-repository mounts, the manifests put with their own bytes
//! and media type, and the report.
//!
//! Blob bytes come from a [`cudaimg_registry::BlobSource`]. For `push` it is the store's
//! verifying reader ([`StoreSource`]): a stored blob that no longer matches its digest never
//! has its last bytes sent, so the upload is cancelled and the push names the blob. Memory
//! stays a few pieces per blob in flight whatever the blob's size: a reader hands its bytes
//! over through a small bounded channel ([`ChannelReader`]).
//!
//! Mount candidates for a blob, tried before any byte is sent: where the store's record says
//! it is in the destination registry ([`cudaimg_store::Store::locations_of`], written after
//! each pull and push), the source repository when `copy` stays within one registry, and
//! `--mount-from`. After a push, the record says the blobs are at the destination too.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::error::PullError;
use cudaimg_config::Config;
use cudaimg_mirrors::fallback::FallbackError;
use cudaimg_mirrors::sources::SourceReport;
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{self, Descriptor};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::Reporter;
use cudaimg_oci::reference::ImageRef;
use cudaimg_registry::{
    BlobSource, HttpClients, Pushed, RegistryClient, RegistryError, UploadError, UploadOptions,
};
use cudaimg_store::{BlobMismatch, Store, StoreError};

/// Pieces read from the store per channel message.
const STORE_PIECE: usize = 256 * 1024;
/// Messages in flight between a reader task and the upload.
const CHANNEL_DEPTH: usize = 8;

/// How `push` and `copy` send.
#[derive(Clone)]
pub struct PushOptions {
    /// Blobs at once (`-j`).
    pub jobs: usize,
    /// Largest request body (`--chunk-size`), see [`UploadOptions::chunk_size`].
    pub chunk_size: u64,
    /// Repositories of the destination registry to try mounts from (`--mount-from`).
    pub mount_from: Vec<String>,
    /// Retries and backoff; its `progress` is replaced per blob.
    pub upload: UploadOptions,
}

impl Default for PushOptions {
    fn default() -> Self {
        let upload = UploadOptions::default();
        PushOptions {
            jobs: crate::session::DEFAULT_JOBS.into(),
            chunk_size: upload.chunk_size,
            mount_from: Vec::new(),
            upload,
        }
    }
}

/// Where images go: a reference in a registry, and a client for its endpoint (from
/// mirrors.toml when configured there, with docker's credentials for its host).
pub struct Destination {
    pub image: ImageRef,
    pub client: RegistryClient,
}

impl Destination {
    pub fn new(config: &Config, http: &HttpClients, image: ImageRef) -> Self {
        let endpoint = config.registry(&image.registry).endpoint;
        Destination {
            client: RegistryClient::new(&endpoint.url, endpoint.insecure, http),
            image,
        }
    }
    fn repo(&self) -> &str {
        &self.image.repository
    }
}

/// One manifest to put, byte-exact.
#[derive(Debug, Clone)]
pub struct Doc {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// What one image is at the destination: blobs, child manifests (of an index), the top.
/// Built from the store here, from a source registry by `copy`, and from a bundle by
/// `import` (cudaimg-sync), which all send it with [`send`].
pub struct Plan {
    pub top: Doc,
    pub children: Vec<Doc>,
    /// Config and layers of every image, each digest once, largest first (the long
    /// uploads start early, so `-j` keeps every slot busy to the end).
    pub blobs: Vec<Descriptor>,
    pub platforms: Vec<String>,
}

impl Plan {
    fn total(&self) -> u64 {
        self.blobs.iter().map(|d| d.size).sum()
    }
}

/// Collects blobs, each digest once, largest first.
pub(crate) fn blob_list<'a>(
    images: impl IntoIterator<Item = &'a manifest::ImageManifest>,
) -> Vec<Descriptor> {
    let mut seen = BTreeSet::new();
    let mut blobs: Vec<Descriptor> = images
        .into_iter()
        .flat_map(|m| std::iter::once(&m.config).chain(&m.layers))
        .filter(|d| seen.insert(d.digest.clone()))
        .cloned()
        .collect();
    blobs.sort_by_key(|d| std::cmp::Reverse(d.size));
    blobs
}

/// What `push` or `copy` did, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct PushReport {
    /// The stored name (`push`) or the source reference (`copy`).
    pub source: String,
    /// The destination reference.
    pub destination: String,
    /// The digest at the destination: the index's for a multi-arch image, else the
    /// platform manifest's. It equals the source's.
    pub digest: Digest,
    pub media_type: String,
    pub platforms: Vec<String>,
    /// Child manifests put by digest before the top one (multi-arch).
    pub child_manifests: Vec<Digest>,
    pub blobs: Vec<BlobReport>,
    /// Bytes of config and layers in the image(s).
    pub total_bytes: u64,
    /// Blob bytes put into request bodies, re-sent ones included.
    pub bytes_uploaded: u64,
    pub destination_figures: DestinationFigures,
    pub warnings: Vec<String>,
    /// The largest request body at the end, when this run or an earlier one found that the
    /// path to the registry drops what a cut leaves of a body (a proxy that buffers them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_limit: Option<u64>,
    /// `copy`: what each source did, as `pull` reports it. Empty for `push`.
    pub sources: Vec<SourceReport>,
}

#[derive(Debug, Serialize)]
pub struct BlobReport {
    pub digest: Digest,
    pub size: u64,
    /// `skipped` (the destination had it), `mounted` or `uploaded`.
    pub status: &'static str,
    /// The repository a mount came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounted_from: Option<String>,
    /// Bytes sent for this blob, re-sent ones included.
    pub bytes: u64,
    pub resumes: u32,
    pub restarts: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct DestinationFigures {
    pub url: String,
    pub uploaded: usize,
    pub mounted: usize,
    pub skipped: usize,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("`{0}` is not in the store")]
    NotStored(String),
    #[error("`{destination}` names digest {named}, but the image is {actual}")]
    DigestMismatch {
        destination: String,
        named: Digest,
        actual: Digest,
    },
    #[error("cannot upload blob {digest} to {destination}")]
    Upload {
        digest: Digest,
        destination: String,
        #[source]
        source: Box<UploadError>,
    },
    #[error("cannot put manifest {digest} at {destination}")]
    Manifest {
        digest: Digest,
        destination: String,
        #[source]
        source: Box<RegistryError>,
    },
    /// A stored blob failed its check on the way out; nothing of it was committed.
    #[error("blob {digest} of `{image}` is corrupt in the store ({reason}); the push was stopped")]
    Corrupt {
        digest: Digest,
        image: String,
        reason: String,
    },
    #[error("cannot read blob {digest} from the store")]
    StoreRead {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    /// `copy`: no source delivered the blob's right bytes.
    #[error("cannot copy blob {digest} of `{reference}`")]
    Source {
        digest: Digest,
        reference: String,
        #[source]
        source: Box<FallbackError>,
    },
    #[error(transparent)]
    Resolve(#[from] PullError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PushError {
    pub fn is_not_found(&self) -> bool {
        match self {
            PushError::NotStored(_) => true,
            PushError::Resolve(e) => e.is_not_found(),
            _ => false,
        }
    }

    pub fn is_corrupt(&self) -> bool {
        matches!(self, PushError::Corrupt { .. })
            || matches!(
                self,
                PushError::Store(
                    StoreError::Corrupt(_)
                        | StoreError::BlobCorrupt { .. }
                        | StoreError::MissingBlob { .. }
                )
            )
    }

    pub fn hint(&self) -> Option<String> {
        let auth = |e: &RegistryError| {
            matches!(
                e,
                RegistryError::Denied { .. } | RegistryError::Credentials { .. }
            )
        };
        match self {
            PushError::NotStored(name) => Some(format!(
                "`cudaimg images` lists what is stored; `cudaimg pull {name}` fetches it"
            )),
            PushError::DigestMismatch { .. } => {
                Some("name the destination by tag, or by the image's own digest".into())
            }
            PushError::Upload {
                source: e,
                destination,
                ..
            } if matches!(**e, UploadError::Registry(ref r) if auth(r)) => Some(format!(
                "check the credentials for {}: `docker login {}` (cudaimg reads docker's \
                 config.json and credential helpers), and that they may push to this repository",
                host_of(destination),
                host_of(destination)
            )),
            PushError::Manifest {
                source: e,
                destination,
                ..
            } if auth(e) => Some(format!(
                "check the credentials for {}: `docker login {}` (cudaimg reads docker's \
                 config.json and credential helpers), and that they may push to this repository",
                host_of(destination),
                host_of(destination)
            )),
            PushError::Upload { .. } | PushError::Manifest { .. } => Some(
                "run the command again: blobs the destination already holds are skipped".into(),
            ),
            PushError::Corrupt { image, .. } => Some(format!(
                "nothing of that blob was committed at the destination. `cudaimg verify --repair` \
                 removes the corrupt blob; then `cudaimg pull {image}` fetches it again, and the \
                 push can be run again"
            )),
            PushError::StoreRead { .. } => Some("`cudaimg verify` checks the store".into()),
            PushError::Source { .. } => Some(
                "every source listed above failed: check the network, and the mirrors \
                 configured for this registry in mirrors.toml"
                    .into(),
            ),
            PushError::Resolve(e) => e.hint(),
            PushError::Store(e) => e.hint(),
        }
    }
}

fn host_of(destination: &str) -> &str {
    destination.split('/').next().unwrap_or(destination)
}

/// Bytes handed over from a task (a store read, a download) through a bounded channel.
/// Dropping it ends the task: its next send fails, or it is aborted.
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    buf: Bytes,
    /// A failure that came after bytes this read already handed out: the next read's.
    failed: Option<io::Error>,
    task: Option<tokio::task::AbortHandle>,
}

impl ChannelReader {
    pub(crate) fn channel() -> (mpsc::Sender<io::Result<Bytes>>, Self) {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        (
            tx,
            ChannelReader {
                rx,
                buf: Bytes::new(),
                failed: None,
                task: None,
            },
        )
    }
    pub(crate) fn abort_on_drop(mut self, task: tokio::task::AbortHandle) -> Self {
        self.task = Some(task);
        self
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl AsyncRead for ChannelReader {
    /// Fills `out` with as many of the pieces already waiting as fit: a network download
    /// arrives in pieces of a few KiB, and each read becomes one request-body frame (and
    /// one hash update), so fewer, larger ones cost less.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut wrote = false;
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(out.remaining());
                let piece = self.buf.split_to(n);
                out.put_slice(&piece);
                wrote |= n > 0;
            }
            if out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Err(e));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => self.buf = b,
                Poll::Ready(Some(Err(e))) if wrote => {
                    self.failed = Some(e);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The end (the upload asks for no more than the blob's size).
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending if wrote => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A stored blob, read through the store's verifying reader on a blocking thread. A resumed
/// upload opens it again and skips to the offset: the check covers the whole blob each time.
pub struct StoreSource {
    pub store: Store,
    pub digest: Digest,
    pub size: u64,
}

impl BlobSource for StoreSource {
    type Reader = ChannelReader;
    async fn open(&self, offset: u64) -> io::Result<ChannelReader> {
        let (tx, reader) = ChannelReader::channel();
        let (store, digest, size) = (self.store.clone(), self.digest.clone(), self.size);
        tokio::task::spawn_blocking(move || {
            let mut r = match store.open_blob(&digest, size) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(io::Error::other(e)));
                    return;
                }
            };
            let mut skip = offset;
            let mut buf = vec![0u8; STORE_PIECE];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                let s = usize::try_from(skip.min(n as u64)).unwrap_or(n);
                skip -= s as u64;
                if s == n {
                    continue;
                }
                if tx
                    .blocking_send(Ok(Bytes::copy_from_slice(&buf[s..n])))
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(reader)
    }
    /// The store's reader hashes the whole blob on every open, and fails before the last byte.
    fn verifies(&self) -> bool {
        true
    }
}

/// The plan for a stored name: a whole multi-platform image (`pull --all-platforms`: its
/// index and every child, byte-exact, from [`Store::image_set`]) when there is one and no
/// platform was asked for, else the single-platform image.
pub(crate) fn store_plan(
    store: &Store,
    name: &str,
    platform: Option<&Platform>,
) -> Result<Plan, PushError> {
    let set = match platform {
        None => store.image_set(name)?,
        Some(_) => None,
    };
    if let Some(cudaimg_store::StoredSet {
        index: Some(index),
        children,
        ..
    }) = set
    {
        let mut seen = BTreeSet::new();
        let mut blobs: Vec<Descriptor> = children
            .iter()
            .flat_map(|c| c.blobs.iter())
            .filter(|d| seen.insert(d.digest.clone()))
            .cloned()
            .collect();
        blobs.sort_by_key(|d| std::cmp::Reverse(d.size));
        let platforms = children
            .iter()
            .filter(|c| c.named)
            .filter_map(|c| c.platform.as_ref().map(ToString::to_string))
            .collect();
        // Children in index order, a nested index after its own children: each manifest
        // reaches the registry after everything it names.
        let children = children
            .into_iter()
            .map(|c| Doc {
                bytes: c.manifest.bytes,
                media_type: c.manifest.descriptor.media_type,
                digest: c.manifest.descriptor.digest,
            })
            .collect();
        return Ok(Plan {
            top: Doc {
                bytes: index.bytes,
                media_type: index.descriptor.media_type,
                digest: index.descriptor.digest,
            },
            children,
            blobs,
            platforms,
        });
    }
    let image = store
        .image(name, platform)?
        .ok_or_else(|| PushError::NotStored(name.to_owned()))?;
    Ok(Plan {
        blobs: blob_list([&image.manifest]),
        platforms: vec![image.platform().to_string()],
        top: Doc {
            bytes: image.manifest_bytes,
            media_type: image.manifest.media_type.clone(),
            digest: image.digest,
        },
        children: Vec::new(),
    })
}

/// Pushes the stored image `name` to `dest`.
pub async fn push(
    store: &Store,
    name: &str,
    platform: Option<&Platform>,
    dest: &Destination,
    options: &PushOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<PushReport, PushError> {
    let plan = {
        let (store, name, platform) = (store.clone(), name.to_owned(), platform.cloned());
        tokio::task::spawn_blocking(move || store_plan(&store, &name, platform.as_ref()))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(e)))??
    };
    let upload = |desc: Descriptor, mounts: Vec<String>, opts: UploadOptions| {
        let source = StoreSource {
            store: store.clone(),
            digest: desc.digest.clone(),
            size: desc.size,
        };
        async move {
            let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
            dest.client
                .push_blob(
                    dest.repo(),
                    &desc.digest,
                    desc.size,
                    &source,
                    &mounts,
                    &opts,
                )
                .await
                .map_err(|e| from_store_upload(e, dest, &desc.digest, name))
        }
    };
    send(store, name, &plan, dest, options, &[], &reporter, upload).await
}

/// An upload failure from a store source: a blob that failed its check is named as corrupt.
fn from_store_upload(e: UploadError, dest: &Destination, digest: &Digest, name: &str) -> PushError {
    match e {
        UploadError::Source { digest, source } => {
            let mismatch = source
                .get_ref()
                .and_then(|i| i.downcast_ref::<BlobMismatch>())
                .map(|m| m.reason.clone());
            let store_error = source
                .get_ref()
                .and_then(|i| i.downcast_ref::<StoreError>())
                .map(|s| match s {
                    StoreError::BlobCorrupt { reason, .. } => Some(reason.clone()),
                    _ => None,
                });
            match (mismatch, store_error) {
                (Some(reason), _) | (None, Some(Some(reason))) => PushError::Corrupt {
                    digest,
                    image: name.to_owned(),
                    reason,
                },
                _ => PushError::StoreRead { digest, source },
            }
        }
        // The store reader checks its bytes before they leave, so a mismatch the upload saw
        // is the store's too.
        UploadError::SourceMismatch { actual, .. } => PushError::Corrupt {
            digest: digest.clone(),
            image: name.to_owned(),
            reason: format!("hashes to {actual}"),
        },
        e @ UploadError::Registry(_) => PushError::Upload {
            digest: digest.clone(),
            destination: dest.image.name(),
            source: Box::new(e),
        },
    }
}

/// Where `digest` may be mounted from in the destination registry: the store's record,
/// `extra` (the copy's source repository), `--mount-from`.
fn mount_candidates(
    store: &Store,
    dest: &Destination,
    digest: &Digest,
    extra: &[String],
    options: &PushOptions,
) -> Vec<String> {
    let prefix = format!("{}/", dest.image.registry);
    let mut out: Vec<String> = Vec::new();
    let recorded = store.locations_of(digest);
    let from_record = recorded.iter().filter_map(|l| l.strip_prefix(&prefix));
    let given = options
        .mount_from
        .iter()
        .map(|r| r.strip_prefix(&prefix).unwrap_or(r));
    for repo in from_record
        .chain(extra.iter().map(String::as_str))
        .chain(given)
    {
        if repo != dest.repo() && !out.iter().any(|o| o == repo) {
            out.push(repo.to_owned());
        }
    }
    out
}

/// Sends a plan: blobs (`upload` does one), then child manifests, then the top; records
/// where the blobs are now.
// Blobs through a bounded pool, then manifests in order, then the location record: the
// three phases share the report being built.
#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
pub async fn send<F, Fut>(
    store: &Store,
    source_name: &str,
    plan: &Plan,
    dest: &Destination,
    options: &PushOptions,
    extra_mounts: &[String],
    reporter: &Arc<dyn Reporter>,
    upload: F,
) -> Result<PushReport, PushError>
where
    F: Fn(Descriptor, Vec<String>, UploadOptions) -> Fut,
    Fut: Future<Output = Result<Pushed, PushError>>,
{
    if let Some(named) = dest
        .image
        .digest
        .as_ref()
        .filter(|d| **d != plan.top.digest)
    {
        return Err(PushError::DigestMismatch {
            destination: dest.image.to_string(),
            named: named.clone(),
            actual: plan.top.digest.clone(),
        });
    }
    reporter.push_planned(
        source_name,
        &dest.image.to_string(),
        plan.blobs.len(),
        plan.total(),
    );
    let sent_total = Arc::new(AtomicU64::new(0));
    let upload = &upload;
    let registry = &dest.image.registry;
    crate::body_limits::apply(store, registry, &options.upload);
    let known_limit = options.upload.learned_cap();
    let results: Result<Vec<BlobReport>, PushError> = stream::iter(plan.blobs.iter().cloned())
        .map(|desc| {
            let mounts = mount_candidates(store, dest, &desc.digest, extra_mounts, options);
            let mut opts = options.upload.clone();
            opts.chunk_size = options.chunk_size;
            let (r, d, total) = (reporter.clone(), desc.digest.clone(), sent_total.clone());
            opts.progress = Some(Arc::new(move |n| {
                total.fetch_add(n, Ordering::Relaxed);
                r.upload_progress(&d, n);
            }));
            let reporter = reporter.clone();
            async move {
                reporter.upload_started(&desc.digest, desc.size);
                let pushed = upload(desc.clone(), mounts, opts).await?;
                let mut report = BlobReport {
                    digest: desc.digest.clone(),
                    size: desc.size,
                    status: "skipped",
                    mounted_from: None,
                    bytes: 0,
                    resumes: 0,
                    restarts: 0,
                };
                match pushed {
                    Pushed::Skipped => {}
                    Pushed::Mounted { from } => {
                        report.status = "mounted";
                        report.mounted_from = Some(from);
                    }
                    Pushed::Uploaded {
                        bytes_sent,
                        resumes,
                        restarts,
                    } => {
                        report.status = "uploaded";
                        report.bytes = bytes_sent;
                        report.resumes = resumes;
                        report.restarts = restarts;
                    }
                }
                reporter.upload_finished(&desc.digest, desc.size, report.status);
                Ok::<_, PushError>(report)
            }
        })
        .buffer_unordered(options.jobs.max(1))
        .try_collect()
        .await;
    // Learned even from a push that failed: the next one starts with small bodies there.
    crate::body_limits::remember(store, registry, &options.upload);
    let results = results?;
    let mut warnings = Vec::new();
    if let Some(limit) = options
        .upload
        .learned_cap()
        .filter(|_| known_limit.is_none())
    {
        warnings.push(format!(
            "{registry} kept nothing of a cut request body (a proxy in front buffers bodies, \
             as nginx does by default): bodies went in {} MiB from then on, and later pushes \
             there start so (set `proxy_request_buffering off` on the proxy to lift it)",
            limit >> 20
        ));
    }

    // Children by digest, then the top by the destination's tag (or digest).
    let manifest_err = |digest: &Digest| {
        let digest = digest.clone();
        move |source| PushError::Manifest {
            digest,
            destination: dest.image.name(),
            source: Box::new(source),
        }
    };
    for child in &plan.children {
        dest.client
            .put_manifest(
                dest.repo(),
                child.digest.as_str(),
                &child.bytes,
                &child.media_type,
            )
            .await
            .map_err(manifest_err(&child.digest))?;
        reporter.manifest_pushed(&dest.image.name(), &child.digest);
    }
    let reference = match &dest.image.tag {
        Some(tag) if dest.image.digest.is_none() => tag.clone(),
        _ => plan.top.digest.to_string(),
    };
    dest.client
        .put_manifest(
            dest.repo(),
            &reference,
            &plan.top.bytes,
            &plan.top.media_type,
        )
        .await
        .map_err(manifest_err(&plan.top.digest))?;
    reporter.manifest_pushed(&dest.image.to_string(), &plan.top.digest);

    // A hint for later mounts; failing to write it costs nothing but a future upload.
    let digests: Vec<Digest> = plan.blobs.iter().map(|d| d.digest.clone()).collect();
    let (s, reg, repo) = (
        store.clone(),
        dest.image.registry.clone(),
        dest.image.repository.clone(),
    );
    let recorded =
        tokio::task::spawn_blocking(move || s.record_locations(&reg, &repo, &digests)).await;
    if let Ok(Err(e)) = recorded {
        warnings.push(format!(
            "could not record where the blobs were pushed (later pushes may upload instead of mounting): {e}"
        ));
    }

    let mut figures = DestinationFigures {
        url: dest.client.label().to_owned(),
        bytes: sent_total.load(Ordering::Relaxed),
        ..Default::default()
    };
    for b in &results {
        match b.status {
            "uploaded" => figures.uploaded += 1,
            "mounted" => figures.mounted += 1,
            _ => figures.skipped += 1,
        }
    }
    // The report lists blobs in the plan's order, not the order they finished in.
    let mut blobs = results;
    let order: Vec<&Digest> = plan.blobs.iter().map(|d| &d.digest).collect();
    blobs.sort_by_key(|b| order.iter().position(|d| **d == b.digest));
    Ok(PushReport {
        source: source_name.to_owned(),
        destination: dest.image.to_string(),
        digest: plan.top.digest.clone(),
        media_type: plan.top.media_type.clone(),
        platforms: plan.platforms.clone(),
        child_manifests: plan.children.iter().map(|c| c.digest.clone()).collect(),
        total_bytes: plan.total(),
        bytes_uploaded: blobs.iter().map(|b| b.bytes).sum(),
        blobs,
        destination_figures: figures,
        warnings,
        body_limit: options.upload.learned_cap(),
        sources: Vec::new(),
    })
}
