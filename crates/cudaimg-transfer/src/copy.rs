//! `copy`: registry to registry, with no copy of the image on disk. The source reference is
//! resolved under pull's rules (the official registry says what a tag means, mirrors carry
//! the bytes); each blob streams from a source straight into the destination's upload,
//! hashed on the way by the upload.
//!
//! A blob's bytes come from a [`RangeSource`]: a task that downloads from the first usable
//! source and, when that source cuts or stalls, asks the same or the next one for the rest
//! with `Range`, so the destination's upload just continues. Bytes that do not hash to the
//! digest are never committed: the upload cancels its session (`DELETE`), the sources that
//! delivered them are dropped for that blob, and the blob is sent again from another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Mutex};

use crate::pull::manifest_by_digest;
use crate::push::{
    blob_list, send, ChannelReader, Destination, Doc, Plan, PushError, PushOptions, PushReport,
};
use crate::resolve::resolve_tag;
use crate::PullError;
use cudaimg_config::{Canonical, Config};
use cudaimg_mirrors::fallback::{FallbackError, ItemState};
use cudaimg_mirrors::sources::{Source, SourceMemory, SourceSet};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{Descriptor, ImageManifest, IndexEntry, Manifest, ManifestError};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::Reporter;
use cudaimg_oci::reference::ImageRef;
use cudaimg_registry::{
    BlobResponse, BlobSource, FetchedManifest, HttpClients, Pushed, RegistryError, UploadError,
    UploadOptions,
};
use cudaimg_store::Store;

/// Times a blob's bytes may hash wrong before the copy gives up on it.
const MAX_MISMATCHES: u32 = 3;

/// Which platforms `copy` takes from a multi-platform image.
#[derive(Debug, Clone)]
pub enum PlatformChoice {
    /// One platform's manifest, put under the destination's tag.
    One(Platform),
    /// Every child manifest, then the index, byte-exact.
    All,
}

/// What `copy` reads, and how.
pub struct CopySource<'a> {
    pub config: &'a Config,
    pub http: &'a HttpClients,
    pub memory: &'a SourceMemory,
    /// The source reference as the user wrote it, and canonical.
    pub input: &'a str,
    pub name: &'a Canonical,
    pub platform: PlatformChoice,
    pub require_upstream: bool,
    /// A download that delivers no byte for this long is resumed elsewhere.
    pub stall: Duration,
}

/// Per-blob state shared by the copy loop and its download tasks.
#[derive(Default)]
struct BlobState {
    item: ItemState,
    /// Sources whose bytes went into the current upload: the suspects if it hashes wrong.
    contributors: Vec<Arc<Source>>,
    /// Why the download gave up, when it did.
    failed: Option<FallbackError>,
}

/// A blob at the copy's sources, readable from any offset (module docs).
#[derive(Clone)]
struct RangeSource {
    sources: Arc<SourceSet>,
    repo: Arc<str>,
    digest: Digest,
    size: u64,
    state: Arc<Mutex<BlobState>>,
    stall: Duration,
    reporter: Arc<dyn Reporter>,
    received: Arc<AtomicU64>,
}

impl BlobSource for RangeSource {
    type Reader = ChannelReader;
    async fn open(&self, offset: u64) -> std::io::Result<ChannelReader> {
        let (tx, reader) = ChannelReader::channel();
        let this = self.clone();
        let task = tokio::spawn(async move { this.download(offset, tx).await });
        Ok(reader.abort_on_drop(task.abort_handle()))
    }
}

/// How one attempt at a source ended.
enum Relayed {
    /// The blob's end reached the upload.
    Done,
    /// The source failed; `pos` is where the next attempt starts.
    Failed(RegistryError),
    /// The upload dropped the reader (it reopens elsewhere, or ended): stop.
    Dropped,
}

impl RangeSource {
    /// Sends the blob from `pos` to its end into `tx`, resuming after cuts and stalls: the
    /// next source ([`Self::request`]), its body into the channel ([`Self::relay`]), its
    /// failure booked ([`Self::fail`]), until the end or no source is left.
    async fn download(self, mut pos: u64, tx: mpsc::Sender<std::io::Result<Bytes>>) {
        let what = format!("blob {}", self.digest);
        loop {
            let Some(source) = self.next_source(&what).await else {
                return give_up(tx).await;
            };
            let (outcome, progressed) = match self.request(&source, pos).await {
                Ok(resp) => {
                    let start = pos;
                    let outcome = self.relay(&source, resp, &mut pos, &tx).await;
                    (outcome, pos > start)
                }
                Err(e) => (Relayed::Failed(e), false),
            };
            if matches!(outcome, Relayed::Dropped) {
                return;
            }
            if progressed {
                self.sources.succeeded(&source);
            }
            match outcome {
                Relayed::Done | Relayed::Dropped => return,
                Relayed::Failed(e) => {
                    if self.fail(&source, e, progressed, &what).await {
                        return give_up(tx).await;
                    }
                }
            }
        }
    }

    /// The next usable source for this blob, or `None` (the failure kept for the copy).
    async fn next_source(&self, what: &str) -> Option<Arc<Source>> {
        let mut st = self.state.lock().await;
        if let Some(source) = self.sources.next_source(&st.item).await {
            return Some(source);
        }
        let attempts = std::mem::take(&mut st.item.attempts);
        st.failed = Some(FallbackError::Exhausted {
            what: what.to_owned(),
            attempts,
        });
        None
    }

    /// The blob from `pos` at `source`, within the stall time; the source is noted as a
    /// contributor to the upload (a suspect if its bytes hash wrong).
    async fn request(&self, source: &Arc<Source>, pos: u64) -> Result<BlobResponse, RegistryError> {
        let url = source.client.blob_url(&self.repo, &self.digest);
        let request = source.client.blob(&self.repo, &self.digest, pos, self.size);
        let resp = match tokio::time::timeout(self.stall, request).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(RegistryError::Stalled {
                    url,
                    secs: self.stall.as_secs(),
                })
            }
        };
        let mut st = self.state.lock().await;
        if !st.contributors.iter().any(|c| c.index == source.index) {
            st.contributors.push(source.clone());
        }
        Ok(resp)
    }

    /// A response's body into the upload's channel, from `pos` on (bytes before it, from a
    /// source that ignored `Range`, are skipped), advancing `pos`.
    async fn relay(
        &self,
        source: &Source,
        resp: BlobResponse,
        pos: &mut u64,
        tx: &mpsc::Sender<std::io::Result<Bytes>>,
    ) -> Relayed {
        let mut skip = *pos - resp.offset;
        let url = resp.url;
        let mut body = resp.response.bytes_stream();
        loop {
            let chunk = match tokio::time::timeout(self.stall, body.next()).await {
                Err(_) => {
                    return Relayed::Failed(RegistryError::Stalled {
                        url,
                        secs: self.stall.as_secs(),
                    })
                }
                Ok(None) if *pos < self.size => {
                    return Relayed::Failed(RegistryError::Transfer {
                        reason: format!("the body ended at byte {pos} of {}", self.size),
                        url,
                    })
                }
                Ok(None) => return Relayed::Done,
                Ok(Some(Err(e))) => {
                    return Relayed::Failed(RegistryError::from_reqwest_at(&url, e))
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            let n = chunk.len() as u64;
            source.add_bytes(n);
            self.received.fetch_add(n, Ordering::Relaxed);
            let s = skip.min(n);
            skip -= s;
            let chunk = chunk.slice(usize::try_from(s).unwrap_or(chunk.len())..);
            if chunk.is_empty() {
                continue;
            }
            let len = chunk.len() as u64;
            if *pos + len > self.size {
                return Relayed::Failed(RegistryError::TooLong {
                    url,
                    expected: self.size,
                    at_least: *pos + len,
                });
            }
            *pos += len;
            if tx.send(Ok(chunk)).await.is_err() {
                return Relayed::Dropped;
            }
        }
    }

    /// Books a source's failure for this blob; `true` when the blob cannot be had.
    async fn fail(&self, source: &Source, e: RegistryError, progressed: bool, what: &str) -> bool {
        let mut st = self.state.lock().await;
        let failed = self.sources.failed(
            source,
            &mut st.item,
            e,
            progressed,
            what,
            self.reporter.as_ref(),
        );
        match failed {
            Ok(()) => false,
            Err(f) => {
                st.failed = Some(f);
                true
            }
        }
    }
}

/// A copy in progress: the source reference's sources, and what the steps share.
struct CopyRun<'a> {
    src: &'a CopySource<'a>,
    image: &'a ImageRef,
    sources: Arc<SourceSet>,
    reporter: Arc<dyn Reporter>,
    received: Arc<AtomicU64>,
}

/// Step 1: the top manifest the source reference names now, fetched and parsed.
struct Top {
    fetched: FetchedManifest,
    parsed: Manifest,
}

/// Copies `src` to `dest`: [`CopyRun::resolve`] the top manifest, [`CopyRun::plan`] what
/// to send (one platform or all), then [`send`] it, each blob through
/// [`CopyRun::copy_blob`].
pub async fn copy(
    src: &CopySource<'_>,
    store: &Store,
    dest: &Destination,
    options: &PushOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<PushReport, PushError> {
    let image = &src.name.image;
    let run = CopyRun {
        src,
        image,
        sources: Arc::new(SourceSet::new(
            src.config,
            &image.registry,
            src.name.via_mirror.as_deref(),
            src.http,
            src.memory,
        )),
        reporter,
        received: Arc::new(AtomicU64::new(0)),
    };
    let top = run.resolve().await?;
    let plan = run.plan(top).await?;
    let extra = run.extra_mounts(dest);
    let upload = |desc, mounts, opts| run.copy_blob(dest, desc, mounts, opts);
    let mut report = send(
        store,
        src.input,
        &plan,
        dest,
        options,
        &extra,
        &run.reporter,
        upload,
    )
    .await?;
    let mut warnings = run.sources.warnings();
    warnings.append(&mut report.warnings);
    report.warnings = warnings;
    report.sources = run.sources.report();
    Ok(report)
}

impl CopyRun<'_> {
    fn repo(&self) -> &str {
        self.image.repository.as_str()
    }

    /// Step 1: the digest the reference names (a pinned one, or the tag's under pull's
    /// rules), and its manifest from the sources.
    async fn resolve(&self) -> Result<Top, PushError> {
        let image = self.image;
        let digest = match (&image.digest, &image.tag) {
            (Some(d), _) => d.clone(),
            (None, tag) => {
                let tag = tag.as_deref().unwrap_or("latest");
                resolve_tag(
                    &self.sources,
                    image,
                    tag,
                    self.src.require_upstream,
                    self.reporter.as_ref(),
                )
                .await?
                .0
            }
        };
        let what = format!("manifest {digest} of `{image}`");
        let ((fetched, parsed), _) = manifest_by_digest(
            &self.sources,
            self.repo(),
            &digest,
            None,
            &what,
            self.reporter.as_ref(),
        )
        .await
        .map_err(|e| PullError::giving_up(image, e))?;
        Ok(Top { fetched, parsed })
    }

    /// A child manifest of an index: an image manifest (a nested index is refused).
    async fn child(
        &self,
        entry: &IndexEntry,
    ) -> Result<(FetchedManifest, ImageManifest), PullError> {
        let image = self.image;
        let label = entry
            .platform
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let what = format!("{label} manifest of `{image}`");
        let ((m, parsed), _) = manifest_by_digest(
            &self.sources,
            self.repo(),
            &entry.descriptor.digest,
            Some(entry.descriptor.size),
            &what,
            self.reporter.as_ref(),
        )
        .await
        .map_err(|e| PullError::giving_up(image, e))?;
        match parsed {
            Manifest::Image(img) => Ok((m, img)),
            Manifest::Index(_) => Err(PullError::Unusable {
                reference: image.to_string(),
                source: ManifestError::UnsupportedMediaType(
                    "an index nested inside an index".into(),
                ),
            }),
        }
    }

    /// Step 2: what the destination gets: a single-platform image as it is, one platform of
    /// an index, or the whole index with every child.
    async fn plan(&self, top: Top) -> Result<Plan, PushError> {
        let image = self.image;
        Ok(match (top.parsed, &self.src.platform) {
            (Manifest::Image(img), choice) => Plan {
                blobs: blob_list([&img]),
                top: Doc {
                    bytes: top.fetched.bytes,
                    media_type: img.media_type.clone(),
                    digest: top.fetched.digest,
                },
                children: Vec::new(),
                platforms: match choice {
                    PlatformChoice::One(p) => vec![p.to_string()],
                    PlatformChoice::All => Vec::new(),
                },
            },
            (Manifest::Index(idx), PlatformChoice::One(p)) => {
                let entry = idx.select(p).ok_or_else(|| PullError::NoPlatform {
                    reference: image.to_string(),
                    platform: p.to_string(),
                    available: idx.platforms().join(", "),
                })?;
                let (m, img) = self.child(entry).await?;
                Plan {
                    blobs: blob_list([&img]),
                    top: Doc {
                        bytes: m.bytes,
                        media_type: img.media_type.clone(),
                        digest: m.digest,
                    },
                    children: Vec::new(),
                    platforms: vec![entry
                        .platform
                        .as_ref()
                        .map_or_else(|| p.to_string(), ToString::to_string)],
                }
            }
            (Manifest::Index(idx), PlatformChoice::All) => {
                let mut children = Vec::new();
                let mut images = Vec::new();
                for entry in &idx.manifests {
                    let (m, img) = self.child(entry).await?;
                    children.push(Doc {
                        bytes: m.bytes,
                        media_type: img.media_type.clone(),
                        digest: m.digest,
                    });
                    images.push(img);
                }
                Plan {
                    blobs: blob_list(&images),
                    top: Doc {
                        bytes: top.fetched.bytes,
                        media_type: idx.media_type.clone(),
                        digest: top.fetched.digest,
                    },
                    children,
                    platforms: idx.platforms(),
                }
            }
        })
    }

    /// Within one registry, the source repository is the first place to mount from.
    fn extra_mounts(&self, dest: &Destination) -> Vec<String> {
        let same_registry = self
            .sources
            .sources()
            .iter()
            .any(|s| s.client.label() == dest.client.label());
        if same_registry {
            vec![self.repo().to_owned()]
        } else {
            Vec::new()
        }
    }

    /// Step 3, per blob: streams it from the sources into the destination's upload; bytes
    /// that hash wrong blame their sources ([`Self::blame`]) and the blob goes again.
    async fn copy_blob(
        &self,
        dest: &Destination,
        desc: Descriptor,
        mounts: Vec<String>,
        opts: UploadOptions,
    ) -> Result<Pushed, PushError> {
        let state = Arc::new(Mutex::new(BlobState::default()));
        let blob = RangeSource {
            sources: self.sources.clone(),
            repo: Arc::from(self.repo()),
            digest: desc.digest.clone(),
            size: desc.size,
            state: state.clone(),
            stall: self.src.stall,
            reporter: self.reporter.clone(),
            received: self.received.clone(),
        };
        let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
        let upload_failed = |e| PushError::Upload {
            digest: desc.digest.clone(),
            destination: dest.image.name(),
            source: Box::new(e),
        };
        let mut mismatches = 0u32;
        loop {
            let pushed = dest
                .client
                .push_blob(
                    &dest.image.repository,
                    &desc.digest,
                    desc.size,
                    &blob,
                    &mounts,
                    &opts,
                )
                .await;
            match pushed {
                Ok(p) => {
                    if matches!(p, Pushed::Uploaded { .. }) {
                        if let Some(last) = state.lock().await.contributors.last() {
                            self.sources.blob_done(last);
                        }
                    }
                    return Ok(p);
                }
                Err(UploadError::SourceMismatch { actual, .. }) => {
                    mismatches += 1;
                    self.blame(&state, &desc, &actual, mismatches).await?;
                }
                Err(e @ UploadError::Source { .. }) => {
                    return Err(match state.lock().await.failed.take() {
                        Some(f) => source_failed(&desc, self.image, f),
                        None => upload_failed(e),
                    });
                }
                Err(e) => return Err(upload_failed(e)),
            }
        }
    }

    /// Bytes of `desc` hashed to `actual`: the sources that delivered them fail for it, and
    /// after [`MAX_MISMATCHES`] the blob is given up.
    async fn blame(
        &self,
        state: &Mutex<BlobState>,
        desc: &Descriptor,
        actual: &Digest,
        mismatches: u32,
    ) -> Result<(), PushError> {
        let what = format!("blob {}", desc.digest);
        let mut st = state.lock().await;
        let blamed = std::mem::take(&mut st.contributors);
        let names: Vec<&str> = blamed.iter().map(|c| c.label()).collect();
        self.sources.warn(format!(
            "blob {} from {} hashed to {actual}: its upload was cancelled and the blob sent \
             again from another source",
            desc.digest,
            names.join(", ")
        ));
        for c in &blamed {
            let e = RegistryError::DigestMismatch {
                url: c.client.blob_url(self.repo(), &desc.digest),
                expected: desc.digest.clone(),
                actual: actual.clone(),
            };
            let failed =
                self.sources
                    .failed(c, &mut st.item, e, false, &what, self.reporter.as_ref());
            if let Err(f) = failed {
                return Err(source_failed(desc, self.image, f));
            }
        }
        if mismatches >= MAX_MISMATCHES {
            let attempts = std::mem::take(&mut st.item.attempts);
            let f = FallbackError::Exhausted {
                what: format!("{what} (its content never matched its digest)"),
                attempts,
            };
            return Err(source_failed(desc, self.image, f));
        }
        Ok(())
    }
}

/// Tells the upload that no source could deliver the blob (the reason is in the blob's state).
async fn give_up(tx: mpsc::Sender<std::io::Result<Bytes>>) {
    let _ = tx
        .send(Err(std::io::Error::other(
            "no source could deliver the blob",
        )))
        .await;
}

fn source_failed(desc: &Descriptor, image: &ImageRef, f: FallbackError) -> PushError {
    PushError::Source {
        digest: desc.digest.clone(),
        reference: image.to_string(),
        source: Box::new(f),
    }
}
