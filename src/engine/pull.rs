//! `pull`: resolve a reference to one platform's manifest, fetch what the store lacks, and
//! name the result in `index.json` under its canonical reference.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;

use super::blob::{BlobJob, Fetched};
use super::Engine;
use crate::config::Canonical;
use crate::digest::Digest;
use crate::manifest::{self, Descriptor, ImageConfig, ImageManifest, Manifest, ManifestError};
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::reference::ImageRef;
use crate::registry::{FetchedManifest, RegistryError};
use crate::sources::{FallbackError, SourceReport, SourceSet};
use crate::store::{
    CommitError, IndexEntry, IndexPlatform, StoreError, INDEX_DIGEST_ANNOTATION, REF_NAME,
};

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
        source: FallbackError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PullError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, PullError::Resolve { source, .. } if source.is_not_found())
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
        }
    }

    fn giving_up(reference: &ImageRef, e: FallbackError, blob: bool) -> Self {
        match e {
            FallbackError::GiveUp(RegistryError::Store(s)) => PullError::Store(s),
            other if blob => PullError::Blob {
                reference: reference.to_string(),
                source: other,
            },
            other => PullError::Resolve {
                reference: reference.to_string(),
                source: other,
            },
        }
    }
}

impl From<CommitError> for PullError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Store(s) => PullError::Store(s),
            // Manifests are verified before they are stored, so this means a bug or a disk
            // that returns other bytes than it was given.
            other => PullError::Store(StoreError::Io(std::io::Error::other(other.to_string()))),
        }
    }
}

impl Engine {
    /// Pulls `name` for `platform` into the store. `input` is the reference as written.
    pub async fn pull(
        &self,
        input: &str,
        name: &Canonical,
        platform: &Platform,
        reporter: &dyn Reporter,
    ) -> Result<PullReport, PullError> {
        let image = &name.image;
        let repo = image.repository.as_str();
        let sources = SourceSet::new(
            &self.config,
            &image.registry,
            name.via_mirror.as_deref(),
            &self.http,
        );

        // The top-level manifest: by digest if pinned, else by tag.
        let reference = image.manifest_reference().to_owned();
        let (top, top_source) = sources
            .first_success(&format!("manifest of `{image}`"), reporter, |s| {
                let reference = reference.clone();
                async move { fetch_parsed(&s.client, repo, &reference, image.digest.as_ref()).await }
            })
            .await
            .map_err(|e| PullError::giving_up(image, e, false))?;
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
                let want = entry.descriptor.clone();
                let ((child, parsed), _) = sources
                    .first_success(
                        &format!("{platform} manifest of `{image}`"),
                        reporter,
                        |s| {
                            let want = want.clone();
                            async move {
                                let (m, parsed) = fetch_parsed(
                                    &s.client,
                                    repo,
                                    want.digest.as_str(),
                                    Some(&want.digest),
                                )
                                .await?;
                                if m.bytes.len() as u64 != want.size {
                                    return Err(RegistryError::SizeMismatch {
                                        url: m.url,
                                        expected: want.size,
                                        actual: m.bytes.len() as u64,
                                    });
                                }
                                Ok((m, parsed))
                            }
                        },
                    )
                    .await
                    .map_err(|e| PullError::giving_up(image, e, false))?;
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
                    Ok::<_, FallbackError>((d.digest.clone(), url))
                }
            })
            .buffer_unordered(self.jobs.max(1))
            .try_collect()
            .await
            .map_err(|e| PullError::giving_up(image, e, true))?;

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
        annotations.insert(REF_NAME.to_owned(), image.to_string());
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
            reference: input.to_owned(),
            canonical: image.to_string(),
            digest: fetched.digest.clone(),
            index_digest: index.map(|i| i.digest),
            platform: platform_of_image.to_string(),
            manifest_source: top_source.label().to_owned(),
            layers: layer_reports(&img, &fetched_from),
            total_bytes: img.content_size(),
            bytes_downloaded: received.load(Ordering::Relaxed),
            warnings,
            sources: sources.report(),
        })
    }
}

async fn fetch_parsed(
    client: &crate::registry::RegistryClient,
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
