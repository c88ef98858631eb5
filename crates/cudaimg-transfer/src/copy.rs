//! `copy`: registry to registry, with no copy of the image on disk. The source reference is
//! resolved and its platform selected by pull's own steps ([`Session::resolve`],
//! [`Session::select`], [`Session::select_child`]) on the session's sources; each blob
//! streams from a source straight into the destination's upload, hashed on the way by the
//! upload.
//!
//! A blob's bytes come from a [`RangeSource`]: a task that walks the sources with the one
//! fallback loop ([`Fallback`]), and when a source cuts or stalls, asks the same or the next
//! one for the rest with `Range`, so the destination's upload just continues. Bytes that do not hash to the
//! digest are never committed: the upload cancels its session (`DELETE`), the sources that
//! delivered them are dropped for that blob, and the blob is sent again from another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::error::PullError;
use crate::push::{
    blob_list, send, ChannelReader, Destination, Doc, Plan, PushError, PushOptions, PushReport,
};
use crate::session::Session;
use crate::steps::Resolved;
use cudaimg_config::Canonical;
use cudaimg_mirrors::fallback::{Fallback, FallbackError, ItemState, Operation, Outcome};
use cudaimg_mirrors::sources::{Source, SourceSet};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{Descriptor, Manifest};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::Reporter;
use cudaimg_oci::reference::ImageRef;
use cudaimg_registry::{
    BlobResponse, BlobSource, Pushed, RegistryError, UploadError, UploadOptions,
};

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

/// What `copy` reads: the source reference as the user wrote it and canonical, and which
/// of its platforms. How (the stall timeout, `--require-upstream`, the sources) is the
/// session's.
pub struct CopyTarget<'a> {
    pub input: &'a str,
    pub name: &'a Canonical,
    pub platform: PlatformChoice,
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

/// The blob's state, locked for a moment (never across an await).
fn lock(state: &Mutex<BlobState>) -> MutexGuard<'_, BlobState> {
    // A panic while it was held cannot leave it half-written: each update is one assignment.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One try at the rest of the blob from one source, as the fallback loop runs it.
struct Relay<'a> {
    blob: &'a RangeSource,
    /// Where the next byte of the blob starts.
    pos: u64,
    tx: &'a mpsc::Sender<std::io::Result<Bytes>>,
}

impl Operation for Relay<'_> {
    type Output = ();
    type Error = RegistryError;

    async fn attempt(
        &mut self,
        source: Arc<Source>,
        _fallback: &mut Fallback<'_, RegistryError>,
    ) -> Outcome<(), RegistryError> {
        let start = self.pos;
        let resp = match self.blob.request(&source, self.pos).await {
            Ok(r) => r,
            Err(error) => {
                return Outcome::Failed {
                    error,
                    progressed: false,
                }
            }
        };
        match self.blob.relay(&source, resp, &mut self.pos, self.tx).await {
            // A dropped reader took bytes from this source first: it answered.
            Relayed::Done | Relayed::Dropped => Outcome::Done(()),
            Relayed::Failed(error) => Outcome::Failed {
                error,
                progressed: self.pos > start,
            },
        }
    }
}

/// The loop of one download, handing the blob's bookkeeping back to its state however the
/// download ends: done, given up, or dropped mid-way because the upload reopened it.
struct Resumed<'a> {
    fallback: Fallback<'a, RegistryError>,
    state: &'a Mutex<BlobState>,
}

impl Drop for Resumed<'_> {
    fn drop(&mut self) {
        lock(self.state).item = self.fallback.take_item();
    }
}

impl RangeSource {
    /// Sends the blob from `pos` to its end into `tx` through the fallback loop, resuming
    /// after cuts and stalls, until the end or no source is left (then the failure is kept
    /// for the copy, and the upload told).
    async fn download(self, pos: u64, tx: mpsc::Sender<std::io::Result<Bytes>>) {
        let what = format!("blob {}", self.digest);
        let item = std::mem::take(&mut lock(&self.state).item);
        let mut run = Resumed {
            fallback: Fallback::resume(&self.sources, what, self.reporter.as_ref(), item),
            state: &self.state,
        };
        let mut relay = Relay {
            blob: &self,
            pos,
            tx: &tx,
        };
        if let Err(failed) = run.fallback.run(&mut relay).await {
            lock(&self.state).failed = Some(failed);
            drop(run);
            give_up(tx).await;
        }
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
        let mut st = lock(&self.state);
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
}

/// A copy in progress: the session, the source reference's sources, and what the steps
/// share.
struct CopyRun<'a> {
    session: &'a Session,
    image: &'a ImageRef,
    platform: &'a PlatformChoice,
    sources: Arc<SourceSet>,
    reporter: Arc<dyn Reporter>,
    received: Arc<AtomicU64>,
}

impl Session {
    /// Copies `target` to `dest`: resolve the top manifest ([`Session::resolve`]),
    /// [`CopyRun::plan`] what to send (one platform or all), then [`send`] it, each blob
    /// through [`CopyRun::copy_blob`].
    pub async fn copy(
        &self,
        target: &CopyTarget<'_>,
        dest: &Destination,
        options: &PushOptions,
        reporter: Arc<dyn Reporter>,
    ) -> Result<PushReport, PushError> {
        let image = &target.name.image;
        // The store first: the health record is read from it (and written back), so a copy
        // into a new store still remembers the mirrors it found silent.
        let store = self.store()?;
        let run = CopyRun {
            session: self,
            image,
            platform: &target.platform,
            sources: Arc::new(self.sources(target.name).map_err(PullError::from)?),
            reporter,
            received: Arc::new(AtomicU64::new(0)),
        };
        let resolved = self
            .resolve(&run.sources, image, None, run.reporter.as_ref())
            .await?;
        let plan = run.plan(resolved).await?;
        let extra = run.extra_mounts(dest);
        let upload = |desc, mounts, opts| run.copy_blob(dest, desc, mounts, opts);
        let mut report = send(
            store,
            target.input,
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
}

impl CopyRun<'_> {
    fn repo(&self) -> &str {
        self.image.repository.as_str()
    }

    /// Step 2: what the destination gets: a single-platform image as it is, one platform of
    /// an index ([`Session::select`]), or the whole index with every child
    /// ([`Session::select_child`]).
    async fn plan(&self, resolved: Resolved) -> Result<Plan, PushError> {
        let (session, image) = (self.session, self.image);
        let reporter = self.reporter.as_ref();
        let idx = match (self.platform, resolved.parsed) {
            (PlatformChoice::One(p), parsed) => {
                let resolved = Resolved { parsed, ..resolved };
                let selected = session
                    .select(&self.sources, image, resolved, p, None, reporter)
                    .await?;
                let img = selected.image;
                return Ok(Plan {
                    blobs: blob_list([&img]),
                    top: Doc {
                        bytes: selected.manifest.bytes,
                        media_type: img.media_type.clone(),
                        digest: selected.manifest.digest,
                    },
                    children: Vec::new(),
                    platforms: vec![selected
                        .platform
                        .as_ref()
                        .map_or_else(|| p.to_string(), ToString::to_string)],
                });
            }
            (PlatformChoice::All, Manifest::Image(img)) => {
                return Ok(Plan {
                    blobs: blob_list([&img]),
                    top: Doc {
                        bytes: resolved.manifest.bytes,
                        media_type: img.media_type.clone(),
                        digest: resolved.manifest.digest,
                    },
                    children: Vec::new(),
                    platforms: Vec::new(),
                })
            }
            (PlatformChoice::All, Manifest::Index(idx)) => idx,
        };
        let mut children = Vec::new();
        let mut images = Vec::new();
        for entry in &idx.manifests {
            let which = entry
                .platform
                .as_ref()
                .map_or_else(|| "platformless".to_owned(), ToString::to_string);
            let (m, img) = session
                .select_child(&self.sources, image, &entry.descriptor, &which, reporter)
                .await?;
            children.push(Doc {
                bytes: m.bytes,
                media_type: img.media_type.clone(),
                digest: m.digest,
            });
            images.push(img);
        }
        Ok(Plan {
            blobs: blob_list(&images),
            top: Doc {
                bytes: resolved.manifest.bytes,
                media_type: idx.media_type.clone(),
                digest: resolved.manifest.digest,
            },
            children,
            platforms: idx.platforms(),
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
            stall: self.session.settings.stall_timeout,
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
                        if let Some(last) = lock(&state).contributors.last() {
                            self.sources.blob_done(last);
                        }
                    }
                    return Ok(p);
                }
                Err(UploadError::SourceMismatch { actual, .. }) => {
                    mismatches += 1;
                    self.blame(&state, &desc, &actual, mismatches)?;
                }
                Err(e @ UploadError::Source { .. }) => {
                    let failed = lock(&state).failed.take();
                    return Err(match failed {
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
    fn blame(
        &self,
        state: &Mutex<BlobState>,
        desc: &Descriptor,
        actual: &Digest,
        mismatches: u32,
    ) -> Result<(), PushError> {
        let what = format!("blob {}", desc.digest);
        let mut st = lock(state);
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
