//! `pull`: resolve a reference to one platform's manifest, fetch what the store lacks, and
//! name the result in `index.json` under its canonical reference, through the steps in
//! [`super::steps`]; what it reports, and what can go wrong.

use std::sync::Arc;

use serde::Serialize;

use super::resolve::ResolvedBy;
use crate::archive::ArchiveImage;
use crate::{FetchError, Session, SessionError};
use cudaimg_config::lockfile::Pin;
use cudaimg_config::Canonical;
use cudaimg_mirrors::fallback::FallbackError;
use cudaimg_mirrors::sources::{Source, SourceReport, SourceSet};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{
    self, ImageManifest, Index, IndexEntry as ListEntry, Manifest, ManifestError,
};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::Reporter;
use cudaimg_oci::reference::ImageRef;
use cudaimg_registry::{FetchedManifest, RegistryError};
use cudaimg_store::StoreError;

/// What to pull: a canonical name, and, from a lockfile, the digests it must be.
pub struct PullTarget<'a> {
    /// The reference as the user wrote it.
    pub input: &'a str,
    pub name: &'a Canonical,
    pub pin: Option<&'a Pin>,
    /// The user asked for this platform: a single-platform image of another is an error
    /// (otherwise a warning, as with docker).
    pub platform_explicit: bool,
}

/// What a pull did, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct PullReport {
    /// The reference as the user wrote it.
    pub reference: String,
    /// The canonical reference the image is stored under.
    #[serde(serialize_with = "as_text")]
    pub canonical: ImageRef,
    /// Digest of the platform manifest.
    pub digest: Digest,
    /// Digest of the manifest list or index it was chosen from, if any.
    pub index_digest: Option<Digest>,
    /// The image's platform, as `os/arch[/variant]`.
    #[serde(serialize_with = "as_text")]
    pub platform: Platform,
    /// Where the manifest came from.
    pub manifest_source: String,
    /// Who decided the digest: the official registry, mirrors (official out of reach), the
    /// reference's own digest, or the lockfile.
    pub resolved_by: ResolvedBy,
    pub layers: Vec<LayerReport>,
    /// Bytes of config and layers in the image.
    pub total_bytes: u64,
    /// Bytes received from the network, including any discarded after a failed check.
    pub bytes_downloaded: u64,
    pub warnings: Vec<String>,
    /// What each source did: bytes served, blobs completed, failures and why.
    pub sources: Vec<SourceReport>,
}

#[derive(Debug, Serialize)]
pub struct LayerReport {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// The URL the layer came from; `None` when it was already in the store.
    pub source: Option<String>,
    pub cached: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot resolve `{reference}`")]
    Resolve {
        reference: String,
        #[source]
        source: FallbackError,
    },
    #[error("`{reference}` has no image for platform `{platform}`; it offers: {available}")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("`{reference}`: {source}")]
    Unusable {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("cannot download a blob of `{reference}`")]
    Blob {
        reference: String,
        #[source]
        source: FallbackError<FetchError>,
    },
    #[error("the official registry {official} has no tag `{reference}`{}", mirror_lines(.held_by, .mirror_errors))]
    NotUpstream {
        reference: String,
        official: String,
        /// Mirrors that still answer the tag, and with what.
        held_by: Vec<(String, Digest)>,
        /// Mirrors that failed to answer, and why.
        mirror_errors: Vec<(String, String)>,
    },
    #[error("the official registry refused to say what `{reference}` is")]
    Refused {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("the official registry could not confirm the digest of `{reference}`, and `--require-upstream` is set")]
    UpstreamRequired {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("the official registry is out of reach and the mirrors disagree on `{reference}`: {}", list(.answers))]
    MirrorsDisagree {
        reference: String,
        answers: Vec<(String, Digest)>,
    },
    #[error(
        "`{reference}` is locked without platform `{platform}`; locked platforms: {available}"
    )]
    LockedPlatformMissing {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("the lockfile is inconsistent for `{reference}` on {platform}: its index names {indexed}, the lockfile {locked}")]
    LockInconsistent {
        reference: String,
        platform: String,
        indexed: Digest,
        locked: Digest,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// A value in `--json` as the text it displays as (`nvidia/cuda:12.4.1-…`, `linux/amd64`).
pub(crate) fn as_text<S: serde::Serializer, T: std::fmt::Display>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn mirror_lines(held_by: &[(String, Digest)], errors: &[(String, String)]) -> String {
    let mut s = String::new();
    for (m, d) in held_by {
        s.push_str(&format!("\n  - mirror {m} still serves it as {d}"));
    }
    for (m, e) in errors {
        s.push_str(&format!("\n  - mirror {m}: {e}"));
    }
    s
}

fn list(answers: &[(String, Digest)]) -> String {
    answers
        .iter()
        .map(|(m, d)| format!("{m} says {d}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PullError {
    pub fn is_not_found(&self) -> bool {
        match self {
            PullError::Resolve { source, .. } => source.is_not_found(),
            PullError::NotUpstream { .. } => true,
            _ => false,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            PullError::Resolve { source, .. } if source.is_not_found() => Some(
                "check the repository and tag; NVIDIA deletes end-of-life CUDA tags from \
                 Docker Hub and NGC about six months after their end of life"
                    .into(),
            ),
            PullError::Resolve { .. } | PullError::Blob { .. } => Some(
                "every source listed above failed: check the network, and the mirrors \
                 configured for this registry in mirrors.toml"
                    .into(),
            ),
            PullError::NoPlatform { .. } => Some("choose one with `--platform OS/ARCH`".into()),
            PullError::Store(e) => e.hint(),
            PullError::Unusable { .. } => None,
            PullError::Session(_) => None,
            PullError::NotUpstream { held_by, reference, .. } => Some(match held_by.first() {
                Some((mirror, d)) => format!(
                    "the tag is gone upstream (NVIDIA deletes end-of-life tags), but mirror {mirror} still serves it as {d}; \
                     to keep using that image, pull it by digest: `cudaimg pull {}@{d}`",
                    reference.split_once(':').map_or(reference.as_str(), |(n, _)| n)
                ),
                None => "check the repository and tag; NVIDIA deletes end-of-life CUDA tags from Docker Hub and NGC about six months after their end of life".into(),
            }),
            PullError::Refused { .. } => Some(
                "the repository may not exist (Docker Hub answers unknown repositories this way), \
                 or it needs credentials: `docker login HOST`"
                    .into(),
            ),
            PullError::UpstreamRequired { .. } => Some(
                "reach the official registry, or pull a digest you trust: by `name@sha256:…` or from a lockfile with `--locked`".into(),
            ),
            PullError::MirrorsDisagree { .. } => Some(
                "without the official registry there is no telling which is current: pull by digest, or with `--locked`".into(),
            ),
            PullError::LockedPlatformMissing { .. } | PullError::LockInconsistent { .. } => Some(
                "lock the image again with `cudaimg lock REF` and commit the lockfile".into(),
            ),
        }
    }

    /// No source could say what `reference` is (its manifest or digest).
    pub(super) fn giving_up(reference: &ImageRef, e: FallbackError) -> Self {
        PullError::Resolve {
            reference: reference.to_string(),
            source: e,
        }
    }

    /// A blob of `reference` could not be stored: no source had it, or the store failed.
    pub(super) fn blob_failed(reference: &ImageRef, e: FallbackError<FetchError>) -> Self {
        match e {
            FallbackError::GiveUp(FetchError::Store(s)) => PullError::Store(s),
            other => PullError::Blob {
                reference: reference.to_string(),
                source: other,
            },
        }
    }
}

impl Session {
    /// Pulls `target` for `platform` into the store: resolve, select, plan, fetch, commit.
    pub async fn pull(
        &self,
        target: &PullTarget<'_>,
        platform: &Platform,
        reporter: &dyn Reporter,
    ) -> Result<PullReport, PullError> {
        self.pull_streaming(target, platform, reporter, None).await
    }

    /// [`Session::pull`], and with `sink` (`pull --load`) the image goes on while it
    /// downloads: the sink is told the image once its manifest is chosen, and each blob as
    /// soon as it is stored.
    pub async fn pull_streaming(
        &self,
        target: &PullTarget<'_>,
        platform: &Platform,
        reporter: &dyn Reporter,
        sink: Option<&dyn ImageSink>,
    ) -> Result<PullReport, PullError> {
        let image = &target.name.image;
        // Until the index names what this pull stores, `gc` must not run.
        let _gc_guard = self.hold_against_gc().await?;
        let sources = self.sources(target.name)?;
        let resolved = self.resolve(&sources, image, target.pin, reporter).await?;
        let (resolved_by, manifest_source) = (resolved.by, resolved.source.clone());
        let selected = self
            .select(&sources, image, resolved, platform, target.pin, reporter)
            .await?;
        let plan = self.plan(image, &selected.image)?;
        let img = &selected.image;
        let shown_platform = selected.platform.as_ref().unwrap_or(platform);
        reporter.resolved(
            &image.to_string(),
            &selected.manifest.digest,
            shown_platform,
            img.content_size(),
            plan.to_fetch,
        );
        reporter.planned(plan.blobs.len());
        for d in plan.blobs.iter().filter(|d| !plan.missing.contains(d)) {
            reporter.blob_cached(&d.digest, d.size);
        }
        let tee;
        let reporter: &dyn Reporter = match sink {
            Some(s) => {
                let name = super::steps::stored_name(target);
                s.chosen(ChosenImage {
                    image: ArchiveImage {
                        name: name.to_string(),
                        media_type: img.media_type.clone(),
                        digest: selected.manifest.digest.clone(),
                        manifest_bytes: selected.manifest.bytes.clone(),
                        manifest: img.clone(),
                    },
                    name,
                    index: selected.index.as_ref().map(|i| UpstreamIndex {
                        media_type: i.media_type.clone(),
                        digest: i.digest.clone(),
                        bytes: i.bytes.clone(),
                    }),
                    platform: shown_platform.clone(),
                });
                tee = Tee {
                    inner: reporter,
                    sink: s,
                };
                &tee
            }
            None => reporter,
        };
        let downloaded = self.fetch(&sources, image, &plan, reporter).await?;
        let committed = self
            .commit(target, &selected, platform, {
                let mut w = sources.warnings();
                w.extend(plan.repaired.iter().cloned());
                w
            })
            .await?;
        Ok(PullReport {
            reference: target.input.to_owned(),
            canonical: committed.name,
            digest: selected.manifest.digest.clone(),
            index_digest: selected.index.map(|i| i.digest),
            platform: committed.platform,
            manifest_source: manifest_source.label().to_owned(),
            resolved_by,
            layers: layer_reports(img, &downloaded.from),
            total_bytes: img.content_size(),
            bytes_downloaded: downloaded.received,
            warnings: committed.warnings,
            sources: sources.report(),
        })
    }
}

/// Where a pulled image also goes while it downloads (`pull --load`: an engine). The
/// pull calls [`ImageSink::chosen`] once the image manifest is chosen, before any blob is
/// fetched, and [`ImageSink::stored`] for each blob as soon as it is in the store,
/// verified (those stored already included).
pub trait ImageSink: Send + Sync {
    fn chosen(&self, image: ChosenImage);
    fn stored(&self, digest: &Digest);
}

/// The image a pull chose, as an [`ImageSink`] is told it.
#[derive(Debug, Clone)]
pub struct ChosenImage {
    /// The platform manifest, as upstream serves it.
    pub image: ArchiveImage,
    /// The name it is stored under (canonical; a tag, a digest, or both).
    pub name: ImageRef,
    /// The list or index it was chosen from, byte-exact, if any.
    pub index: Option<UpstreamIndex>,
    /// The image's platform.
    pub platform: Platform,
}

/// A manifest list or index as upstream serves it.
#[derive(Debug, Clone)]
pub struct UpstreamIndex {
    pub media_type: Option<String>,
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

/// Passes every event on, and tells the sink which blobs are stored.
struct Tee<'a> {
    inner: &'a dyn Reporter,
    sink: &'a dyn ImageSink,
}

impl Reporter for Tee<'_> {
    fn resolved(
        &self,
        name: &str,
        digest: &Digest,
        platform: &Platform,
        total: u64,
        to_fetch: u64,
    ) {
        self.inner.resolved(name, digest, platform, total, to_fetch);
    }
    fn blob_cached(&self, digest: &Digest, size: u64) {
        self.sink.stored(digest);
        self.inner.blob_cached(digest, size);
    }
    fn blob_started(&self, digest: &Digest, size: u64, offset: u64, source: &str) {
        self.inner.blob_started(digest, size, offset, source);
    }
    fn blob_progress(&self, digest: &Digest, bytes: u64) {
        self.inner.blob_progress(digest, bytes);
    }
    fn blob_finished(&self, digest: &Digest) {
        self.sink.stored(digest);
        self.inner.blob_finished(digest);
    }
    fn notice(&self, line: &str) {
        self.inner.notice(line);
    }
    fn source_failed(&self, source: &str, what: &str, error: &(dyn std::error::Error + 'static)) {
        self.inner.source_failed(source, what, error);
    }
}

/// The platform manifest an index names must be the one the lockfile pinned.
pub(super) fn check_pin(
    image: &ImageRef,
    pin: &Pin,
    entry: &ListEntry,
    idx: &Index,
) -> Result<(), PullError> {
    let platform = entry
        .platform
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let locked = pin
        .platforms
        .get(&platform)
        .ok_or_else(|| PullError::LockedPlatformMissing {
            reference: image.without_digest().to_string(),
            platform: platform.clone(),
            available: pin.platforms.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
    if *locked != entry.descriptor.digest {
        return Err(PullError::LockInconsistent {
            reference: image.without_digest().to_string(),
            platform,
            indexed: entry.descriptor.digest.clone(),
            locked: locked.clone(),
        });
    }
    debug_assert!(idx.manifests.iter().any(|e| e.descriptor.digest == *locked));
    Ok(())
}

async fn fetch_parsed(
    client: &cudaimg_registry::RegistryClient,
    repo: &str,
    reference: &str,
    expected: Option<&Digest>,
) -> Result<(FetchedManifest, Manifest), RegistryError> {
    let m = client.manifest(repo, reference, expected).await?;
    let parsed = manifest::parse(&m.bytes, m.media_type.as_deref()).map_err(|source| {
        RegistryError::BadManifest {
            url: m.url.clone(),
            source,
        }
    })?;
    Ok((m, parsed))
}

/// A manifest by digest from the first source that has it, verified against the digest and,
/// when a descriptor gave it, the size.
pub(super) async fn manifest_by_digest(
    sources: &SourceSet,
    repo: &str,
    digest: &Digest,
    size: Option<u64>,
    what: &str,
    reporter: &dyn Reporter,
) -> Result<((FetchedManifest, Manifest), Arc<Source>), FallbackError> {
    sources
        .first_success(what, reporter, |s| async move {
            let (m, parsed) = fetch_parsed(&s.client, repo, digest.as_str(), Some(digest)).await?;
            match size {
                Some(want) if m.bytes.len() as u64 != want => Err(RegistryError::SizeMismatch {
                    url: m.url,
                    expected: want,
                    actual: m.bytes.len() as u64,
                }),
                _ => Ok((m, parsed)),
            }
        })
        .await
}

fn layer_reports(
    img: &ImageManifest,
    fetched_from: &[(Digest, Option<String>)],
) -> Vec<LayerReport> {
    img.layers
        .iter()
        .map(|l| {
            let source = fetched_from
                .iter()
                .find(|(d, _)| *d == l.digest)
                .and_then(|(_, url)| url.clone());
            LayerReport {
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
                cached: source.is_none(),
                source,
            }
        })
        .collect()
}
