//! `pull`: resolve a reference to one platform's manifest, fetch what the store lacks, and
//! name the result in `index.json` under its canonical reference.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;

use super::blob::{BlobJob, Fetched};
use super::resolve::{resolve_tag, ResolvedBy};
use super::Engine;
use crate::FetchError;
use cudaimg_config::lockfile::Pin;
use cudaimg_config::Canonical;
use cudaimg_mirrors::fallback::FallbackError;
use cudaimg_mirrors::sources::{Source, SourceReport, SourceSet};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{
    self, Descriptor, ImageConfig, ImageManifest, Index, IndexEntry as ListEntry, Manifest,
    ManifestError,
};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::Reporter;
use cudaimg_oci::reference::ImageRef;
use cudaimg_registry::{FetchedManifest, RegistryError};
use cudaimg_store::{IndexEntry, IndexPlatform, StoreError, INDEX_DIGEST_ANNOTATION, REF_NAME};

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
    pub canonical: String,
    /// Digest of the platform manifest.
    pub digest: Digest,
    /// Digest of the manifest list or index it was chosen from, if any.
    pub index_digest: Option<Digest>,
    pub platform: String,
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

impl Engine {
    /// The sources for a canonical name, with this run's memory of each.
    pub(super) fn sources(&self, name: &Canonical) -> SourceSet {
        SourceSet::new(
            &self.config,
            &name.image.registry,
            name.via_mirror.as_deref(),
            &self.http,
            &self.memory,
        )
    }

    /// Which digest: the lockfile's, the reference's, or the official registry's answer.
    pub(super) async fn top_digest(
        &self,
        sources: &SourceSet,
        image: &ImageRef,
        pin: Option<&Pin>,
        reporter: &dyn Reporter,
    ) -> Result<(Digest, ResolvedBy), PullError> {
        Ok(match (pin, &image.digest, &image.tag) {
            (Some(pin), _, _) => (pin.digest.clone(), ResolvedBy::Lock),
            (None, Some(d), _) => (d.clone(), ResolvedBy::Digest),
            (None, None, tag) => {
                let tag = tag.as_deref().unwrap_or("latest");
                resolve_tag(sources, image, tag, self.require_upstream, reporter).await?
            }
        })
    }

    /// Pulls `target` for `platform` into the store.
    pub async fn pull(
        &self,
        target: &PullTarget<'_>,
        platform: &Platform,
        reporter: &dyn Reporter,
    ) -> Result<PullReport, PullError> {
        let name = target.name;
        let image = &name.image;
        let repo = image.repository.as_str();
        // Until the index names what this pull stores, `gc` must not run.
        let store = self.store.clone();
        let _gc_guard = tokio::task::spawn_blocking(move || store.hold_against_gc())
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        let sources = self.sources(name);
        let (top_digest, resolved_by) = self
            .top_digest(&sources, image, target.pin, reporter)
            .await?;
        // Everything else by digest, from whichever source has it.
        let what = format!("manifest {top_digest} of `{image}`");
        let (top, top_source) =
            manifest_by_digest(&sources, repo, &top_digest, None, &what, reporter)
                .await
                .map_err(|e| PullError::giving_up(image, e))?;
        let (top_fetched, top_parsed) = top;

        // A list or index: pick the platform's manifest and fetch it by digest.
        let (index, fetched, img, chosen) = match top_parsed {
            Manifest::Image(img) => (None, top_fetched, img, None),
            Manifest::Index(idx) => {
                let entry = idx.select(platform).ok_or_else(|| PullError::NoPlatform {
                    reference: image.to_string(),
                    platform: platform.to_string(),
                    available: idx.platforms().join(", "),
                })?;
                if let Some(pin) = target.pin.filter(|p| !p.platforms.is_empty()) {
                    check_pin(image, pin, entry, &idx)?;
                }
                let want = entry.descriptor.clone();
                let what = format!("{platform} manifest of `{image}`");
                let ((child, parsed), _) = manifest_by_digest(
                    &sources,
                    repo,
                    &want.digest,
                    Some(want.size),
                    &what,
                    reporter,
                )
                .await
                .map_err(|e| PullError::giving_up(image, e))?;
                let Manifest::Image(img) = parsed else {
                    return Err(PullError::Unusable {
                        reference: image.to_string(),
                        source: ManifestError::UnsupportedMediaType(
                            "an index nested inside an index".into(),
                        ),
                    });
                };
                (Some(top_fetched), child, img, entry.platform.clone())
            }
        };

        // The config is read back as JSON; a hostile size must fail before any download.
        if img.config.size > manifest::MAX_MANIFEST_BYTES {
            return Err(PullError::Unusable {
                reference: image.to_string(),
                source: ManifestError::BadDescriptor {
                    which: "config".into(),
                    reason: format!("{} bytes is too large for an image config", img.config.size),
                },
            });
        }
        // Blobs: config first, then layers; each digest once.
        let mut seen = BTreeSet::new();
        let blobs: Vec<Descriptor> = std::iter::once(&img.config)
            .chain(&img.layers)
            .filter(|d| seen.insert(d.digest.clone()))
            .cloned()
            .collect();
        let missing: Vec<&Descriptor> = blobs
            .iter()
            .filter(|d| !self.store.has_blob(&d.digest, d.size))
            .collect();
        let to_fetch = missing.iter().map(|d| d.size).sum();
        let shown_platform = chosen.clone().unwrap_or_else(|| platform.clone());
        reporter.resolved(
            &image.to_string(),
            &fetched.digest,
            &shown_platform,
            img.content_size(),
            to_fetch,
        );
        for d in blobs.iter().filter(|d| !missing.contains(d)) {
            reporter.blob_cached(&d.digest, d.size);
        }

        let received = AtomicU64::new(0);
        let job = BlobJob {
            store: &self.store,
            sources: &sources,
            repo,
            received: &received,
            stall: self.stall_timeout,
            reporter,
        };
        let fetched_from: Vec<(Digest, Option<String>)> = stream::iter(missing)
            .map(|d| {
                let job = &job;
                async move {
                    let url = match job.fetch(d).await? {
                        Fetched::From(source) => Some(source.client.blob_url(repo, &d.digest)),
                        Fetched::AlreadyStored => None,
                    };
                    Ok::<_, FallbackError<FetchError>>((d.digest.clone(), url))
                }
            })
            .buffer_unordered(self.jobs.max(1))
            .try_collect()
            .await
            .map_err(|e| PullError::blob_failed(image, e))?;

        // The config tells the platform of a single-platform image, and whether it matches.
        let config_bytes = self
            .store
            .read_blob(&img.config.digest, manifest::MAX_MANIFEST_BYTES)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes).unwrap_or_default();
        let mut warnings = sources.warnings();
        let platform_of_image = chosen.unwrap_or_else(|| Platform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
        });
        if index.is_none() && !platform.matches(&platform_of_image) && target.platform_explicit {
            return Err(PullError::NoPlatform {
                reference: image.to_string(),
                platform: platform.to_string(),
                available: platform_of_image.to_string(),
            });
        }
        if index.is_none() && !platform.matches(&platform_of_image) {
            warnings.push(format!(
                "`{image}` is a single-platform image for {platform_of_image}, not the requested {platform}"
            ));
        }

        // Manifests last, so the index never names an image whose blobs are not all stored.
        self.store
            .put_bytes(&fetched.digest, &fetched.bytes)
            .await?;
        if let Some(idx) = &index {
            self.store.put_bytes(&idx.digest, &idx.bytes).await?;
        }
        let mut annotations = std::collections::BTreeMap::new();
        // A locked pull is named by its tag: the lock's digest is how it was fetched.
        let stored_name = match target.pin {
            Some(_) if image.tag.is_some() => image.without_digest(),
            _ => image.clone(),
        };
        annotations.insert(REF_NAME.to_owned(), stored_name.to_string());
        if let Some(idx) = &index {
            annotations.insert(INDEX_DIGEST_ANNOTATION.to_owned(), idx.digest.to_string());
        }
        let entry = IndexEntry {
            media_type: img.media_type.clone(),
            digest: fetched.digest.to_string(),
            size: fetched.bytes.len() as u64,
            platform: Some(IndexPlatform::from(&platform_of_image)),
            annotations,
            other: Default::default(),
        };
        self.store.update_index(|i| i.upsert(entry))?;

        Ok(PullReport {
            reference: target.input.to_owned(),
            canonical: stored_name.to_string(),
            digest: fetched.digest.clone(),
            index_digest: index.map(|i| i.digest),
            platform: platform_of_image.to_string(),
            manifest_source: top_source.label().to_owned(),
            resolved_by,
            layers: layer_reports(&img, &fetched_from),
            total_bytes: img.content_size(),
            bytes_downloaded: received.load(Ordering::Relaxed),
            warnings,
            sources: sources.report(),
        })
    }
}

/// The platform manifest an index names must be the one the lockfile pinned.
fn check_pin(image: &ImageRef, pin: &Pin, entry: &ListEntry, idx: &Index) -> Result<(), PullError> {
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
