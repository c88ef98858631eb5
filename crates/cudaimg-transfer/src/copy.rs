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
use cudaimg_oci::manifest::{Descriptor, Manifest, ManifestError};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::Reporter;
use cudaimg_registry::{
    BlobSource, HttpClients, Pushed, RegistryError, UploadError, UploadOptions,
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

impl RangeSource {
    /// Sends the blob from `pos` to its end into `tx`, resuming after cuts and stalls.
    // One loop over sources, each attempt streaming into the same channel: the attempt's
    // body (stall timer, byte accounting, cut detection) shares its state with the loop.
    #[allow(clippy::too_many_lines)]
    async fn download(self, mut pos: u64, tx: mpsc::Sender<std::io::Result<Bytes>>) {
        let what = format!("blob {}", self.digest);
        let give_up = |tx: mpsc::Sender<std::io::Result<Bytes>>| async move {
            let _ = tx
                .send(Err(std::io::Error::other(
                    "no source could deliver the blob",
                )))
                .await;
        };
        loop {
            let source = {
                let st = self.state.lock().await;
                self.sources.next_source(&st.item).await
            };
            let Some(source) = source else {
                let mut st = self.state.lock().await;
                let attempts = std::mem::take(&mut st.item.attempts);
                st.failed = Some(FallbackError::Exhausted {
                    what: what.clone(),
                    attempts,
                });
                return give_up(tx).await;
            };
            let url = source.client.blob_url(&self.repo, &self.digest);
            let request = source.client.blob(&self.repo, &self.digest, pos, self.size);
            let resp = match tokio::time::timeout(self.stall, request).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    if self.fail(&source, e, false, &what).await {
                        return give_up(tx).await;
                    }
                    continue;
                }
                Err(_) => {
                    let e = RegistryError::Stalled {
                        url,
                        secs: self.stall.as_secs(),
                    };
                    if self.fail(&source, e, false, &what).await {
                        return give_up(tx).await;
                    }
                    continue;
                }
            };
            // A source that ignored `Range` sends from byte 0: skip to where we are.
            let mut skip = pos - resp.offset;
            {
                let mut st = self.state.lock().await;
                if !st.contributors.iter().any(|c| c.index == source.index) {
                    st.contributors.push(source.clone());
                }
            }
            let start = pos;
            let url = resp.url.clone();
            let mut body = resp.response.bytes_stream();
            let outcome = loop {
                match tokio::time::timeout(self.stall, body.next()).await {
                    Err(_) => {
                        break Err(RegistryError::Stalled {
                            url: url.clone(),
                            secs: self.stall.as_secs(),
                        })
                    }
                    Ok(None) if pos < self.size => {
                        break Err(RegistryError::Transfer {
                            url: url.clone(),
                            reason: format!("the body ended at byte {pos} of {}", self.size),
                        })
                    }
                    Ok(None) => break Ok(()),
                    Ok(Some(Err(e))) => break Err(RegistryError::from_reqwest_at(&url, e)),
                    Ok(Some(Ok(mut chunk))) => {
                        let n = chunk.len() as u64;
                        source.add_bytes(n);
                        self.received.fetch_add(n, Ordering::Relaxed);
                        if skip > 0 {
                            let s = skip.min(n);
                            skip -= s;
                            chunk = chunk.slice(usize::try_from(s).unwrap_or(chunk.len())..);
                            if chunk.is_empty() {
                                continue;
                            }
                        }
                        let len = chunk.len() as u64;
                        if pos + len > self.size {
                            break Err(RegistryError::TooLong {
                                url: url.clone(),
                                expected: self.size,
                                at_least: pos + len,
                            });
                        }
                        pos += len;
                        if tx.send(Ok(chunk)).await.is_err() {
                            // The upload dropped this reader (it reopens elsewhere, or ended).
                            return;
                        }
                    }
                }
            };
            let progressed = pos > start;
            if progressed {
                self.sources.succeeded(&source);
            }
            match outcome {
                Ok(()) => return,
                Err(e) => {
                    if self.fail(&source, e, progressed, &what).await {
                        return give_up(tx).await;
                    }
                }
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

/// Copies `src` to `dest`.
// Resolve, select (one platform or all), plan, then stream every blob source-to-destination
// and send the manifests, in one function because the per-blob download tasks, the upload
// pool and the source report share the run's state; splitting it into the typed steps pull
// uses is the next refactor (noted in the closing note).
#[allow(clippy::too_many_lines)]
pub async fn copy(
    src: &CopySource<'_>,
    store: &Store,
    dest: &Destination,
    options: &PushOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<PushReport, PushError> {
    let image = &src.name.image;
    let repo = image.repository.as_str();
    let sources = Arc::new(SourceSet::new(
        src.config,
        &image.registry,
        src.name.via_mirror.as_deref(),
        src.http,
        src.memory,
    ));
    let top_digest = match (&image.digest, &image.tag) {
        (Some(d), _) => d.clone(),
        (None, tag) => {
            let tag = tag.as_deref().unwrap_or("latest");
            resolve_tag(
                &sources,
                image,
                tag,
                src.require_upstream,
                reporter.as_ref(),
            )
            .await?
            .0
        }
    };
    let what = format!("manifest {top_digest} of `{image}`");
    let ((top, parsed), _) =
        manifest_by_digest(&sources, repo, &top_digest, None, &what, reporter.as_ref())
            .await
            .map_err(|e| PullError::giving_up(image, e))?;
    let child = |entry: &cudaimg_oci::manifest::IndexEntry| {
        let sources = &sources;
        let reporter = reporter.clone();
        let desc = entry.descriptor.clone();
        let label = entry
            .platform
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        async move {
            let what = format!("{label} manifest of `{image}`");
            let ((m, parsed), _) = manifest_by_digest(
                sources,
                repo,
                &desc.digest,
                Some(desc.size),
                &what,
                reporter.as_ref(),
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
    };
    let plan = match (parsed, &src.platform) {
        (Manifest::Image(img), _) => Plan {
            blobs: blob_list([&img]),
            top: Doc {
                bytes: top.bytes,
                media_type: img.media_type.clone(),
                digest: top.digest,
            },
            children: Vec::new(),
            platforms: match &src.platform {
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
            let (m, img) = child(entry).await?;
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
                let (m, img) = child(entry).await?;
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
                    bytes: top.bytes,
                    media_type: idx.media_type.clone(),
                    digest: top.digest,
                },
                children,
                platforms: idx.platforms(),
            }
        }
    };

    // Within one registry, the source repository is the first place to mount from.
    let extra: Vec<String> = if sources
        .sources()
        .iter()
        .any(|s| s.client.label() == dest.client.label())
    {
        vec![repo.to_owned()]
    } else {
        Vec::new()
    };
    let received = Arc::new(AtomicU64::new(0));
    let upload = |desc: Descriptor, mounts: Vec<String>, opts: UploadOptions| {
        let state = Arc::new(Mutex::new(BlobState::default()));
        let blob = RangeSource {
            sources: sources.clone(),
            repo: Arc::from(repo),
            digest: desc.digest.clone(),
            size: desc.size,
            state: state.clone(),
            stall: src.stall,
            reporter: reporter.clone(),
            received: received.clone(),
        };
        let sources = sources.clone();
        let reporter = reporter.clone();
        async move {
            let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
            let what = format!("blob {}", desc.digest);
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
                                sources.blob_done(last);
                            }
                        }
                        return Ok(p);
                    }
                    Err(UploadError::SourceMismatch { actual, .. }) => {
                        mismatches += 1;
                        let mut st = state.lock().await;
                        let blamed = std::mem::take(&mut st.contributors);
                        let names: Vec<&str> = blamed.iter().map(|c| c.label()).collect();
                        sources.warn(format!(
                            "blob {} from {} hashed to {actual}: its upload was cancelled and \
                             the blob sent again from another source",
                            desc.digest,
                            names.join(", ")
                        ));
                        for c in &blamed {
                            let e = RegistryError::DigestMismatch {
                                url: c.client.blob_url(repo, &desc.digest),
                                expected: desc.digest.clone(),
                                actual: actual.clone(),
                            };
                            let failed =
                                sources.failed(c, &mut st.item, e, false, &what, reporter.as_ref());
                            if let Err(f) = failed {
                                return Err(source_failed(&desc, image, f));
                            }
                        }
                        if mismatches >= MAX_MISMATCHES {
                            let attempts = std::mem::take(&mut st.item.attempts);
                            let f = FallbackError::Exhausted {
                                what: format!("{what} (its content never matched its digest)"),
                                attempts,
                            };
                            return Err(source_failed(&desc, image, f));
                        }
                    }
                    Err(e @ UploadError::Source { .. }) => {
                        return Err(match state.lock().await.failed.take() {
                            Some(f) => source_failed(&desc, image, f),
                            None => PushError::Upload {
                                digest: desc.digest.clone(),
                                destination: dest.image.name(),
                                source: Box::new(e),
                            },
                        });
                    }
                    Err(e) => {
                        return Err(PushError::Upload {
                            digest: desc.digest.clone(),
                            destination: dest.image.name(),
                            source: Box::new(e),
                        })
                    }
                }
            }
        }
    };
    let mut report = send(
        store, src.input, &plan, dest, options, &extra, &reporter, upload,
    )
    .await?;
    let mut warnings = sources.warnings();
    warnings.append(&mut report.warnings);
    report.warnings = warnings;
    report.sources = sources.report();
    Ok(report)
}

fn source_failed(
    desc: &Descriptor,
    image: &cudaimg_oci::reference::ImageRef,
    f: FallbackError,
) -> PushError {
    PushError::Source {
        digest: desc.digest.clone(),
        reference: image.to_string(),
        source: Box::new(f),
    }
}
