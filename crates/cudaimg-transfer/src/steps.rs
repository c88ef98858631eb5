//! The steps of a pull, each a function from one typed value to the next, so that `lock`
//! (resolve only) and `copy` (resolve and select, then its own upload) reuse them instead
//! of copying them:
//!
//! 1. [`Session::resolve`]: which digest the reference names now, and its manifest;
//! 2. [`Session::select`]: the platform's image manifest, from a list or index;
//! 3. [`Session::plan`]: the blobs the image needs, and which the store lacks;
//! 4. [`Session::fetch`]: those blobs into the store, verified, through the sources;
//! 5. [`Session::commit`]: the manifests, then the image's name in `index.json`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::blob::{BlobJob, Fetched};
use crate::error::{FetchError, PullError};
use crate::resolve::{manifest_by_digest, resolve_tag, ResolvedBy};
use crate::session::Session;
use cudaimg_config::lockfile::Pin;
use cudaimg_config::Canonical;
use cudaimg_mirrors::fallback::FallbackError;
use cudaimg_mirrors::order::Spread;
use cudaimg_mirrors::sources::{Source, SourceSet};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{
    self, Descriptor, ImageConfig, ImageManifest, Index, IndexEntry, Manifest, ManifestError,
};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::Reporter;
use cudaimg_oci::reference::ImageRef;
use cudaimg_registry::FetchedManifest;
use cudaimg_store::{NamedImage, Store, StoreError};

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

/// Step 1: what the reference names now.
pub struct Resolved {
    /// The digest of the top manifest (a platform manifest, a list or an index).
    pub digest: Digest,
    /// Who decided the digest.
    pub by: ResolvedBy,
    /// The top manifest as fetched (verified against `digest`), and parsed.
    pub manifest: FetchedManifest,
    pub parsed: Manifest,
    /// The source the manifest came from.
    pub source: Arc<Source>,
}

/// Step 2: one platform's image manifest.
pub struct Selected {
    /// The list or index it was chosen from, if any.
    pub index: Option<FetchedManifest>,
    pub manifest: FetchedManifest,
    pub image: ImageManifest,
    /// The platform the index names for it; a single-platform image's is in its config.
    pub platform: Option<Platform>,
}

/// Step 3: the blobs of an image, config first, each digest once.
pub struct Plan {
    pub blobs: Vec<Descriptor>,
    /// Those the store lacks.
    pub missing: Vec<Descriptor>,
    /// Bytes of `missing`.
    pub to_fetch: u64,
    /// Stored blobs that failed their check (`verify_existing`) and were removed, as
    /// warnings.
    pub repaired: Vec<String>,
}

/// Step 4: what the downloads did.
pub struct Downloaded {
    /// Each blob downloaded, and the URL it came from (`None`: another process stored it).
    pub from: Vec<(Digest, Option<String>)>,
    /// Bytes received from the network, including any discarded after a failed check.
    pub received: u64,
}

/// Step 5: the name the image is stored under, and its platform.
pub struct Committed {
    pub name: ImageRef,
    pub platform: Platform,
    pub warnings: Vec<String>,
}

impl Session {
    /// Step 1: the lockfile's digest, the reference's, or the official registry's answer
    /// for its tag; then that manifest, by digest, from whichever source has it.
    pub async fn resolve(
        &self,
        sources: &SourceSet,
        image: &ImageRef,
        pin: Option<&Pin>,
        reporter: &dyn Reporter,
    ) -> Result<Resolved, PullError> {
        // Sources an earlier run found silent are asked last: say so before any wait.
        sources.announce(reporter);
        let (digest, by) = match (pin, &image.digest, &image.tag) {
            (Some(pin), _, _) => (pin.digest.clone(), ResolvedBy::Lock),
            (None, Some(d), _) => (d.clone(), ResolvedBy::Digest),
            (None, None, tag) => {
                let tag = tag.as_deref().unwrap_or("latest");
                let require_upstream = self.settings.require_upstream;
                resolve_tag(sources, image, tag, require_upstream, reporter).await?
            }
        };
        let repo = image.repository.as_str();
        let what = format!("manifest {digest} of `{image}`");
        let ((manifest, parsed), source) =
            manifest_by_digest(sources, repo, &digest, None, &what, reporter)
                .await
                .map_err(|e| PullError::giving_up(image, e))?;
        Ok(Resolved {
            digest,
            by,
            manifest,
            parsed,
            source,
        })
    }

    /// Step 2: the image itself, or the manifest a list or index names for `platform`
    /// (which must be the one a lockfile pinned), fetched by digest.
    pub async fn select(
        &self,
        sources: &SourceSet,
        image: &ImageRef,
        resolved: Resolved,
        platform: &Platform,
        pin: Option<&Pin>,
        reporter: &dyn Reporter,
    ) -> Result<Selected, PullError> {
        let idx = match resolved.parsed {
            Manifest::Image(img) => {
                return Ok(Selected {
                    index: None,
                    manifest: resolved.manifest,
                    image: img,
                    platform: None,
                })
            }
            Manifest::Index(idx) => idx,
        };
        let entry = idx.select(platform).ok_or_else(|| PullError::NoPlatform {
            reference: image.to_string(),
            platform: platform.to_string(),
            available: idx.platforms().join(", "),
        })?;
        if let Some(pin) = pin.filter(|p| !p.platforms.is_empty()) {
            check_pin(image, pin, entry, &idx)?;
        }
        let (child, img) = self
            .select_child(
                sources,
                image,
                &entry.descriptor,
                &platform.to_string(),
                reporter,
            )
            .await?;
        Ok(Selected {
            index: Some(resolved.manifest),
            manifest: child,
            image: img,
            platform: entry.platform.clone(),
        })
    }

    /// Step 2 for one child of an index (`pull --all-platforms` takes every one): its image
    /// manifest by digest, checked against the index's descriptor. `which` names it in
    /// messages (a platform).
    pub async fn select_child(
        &self,
        sources: &SourceSet,
        image: &ImageRef,
        want: &Descriptor,
        which: &str,
        reporter: &dyn Reporter,
    ) -> Result<(FetchedManifest, ImageManifest), PullError> {
        let what = format!("{which} manifest of `{image}`");
        let repo = image.repository.as_str();
        let ((child, parsed), _) = manifest_by_digest(
            sources,
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
        Ok((child, img))
    }

    /// Step 3: the image's blobs, and which the store lacks. A hostile config size fails
    /// here, before any download: the config is read back as JSON.
    pub fn plan(&self, image: &ImageRef, img: &ImageManifest) -> Result<Plan, PullError> {
        if img.config.size > manifest::MAX_MANIFEST_BYTES {
            return Err(PullError::Unusable {
                reference: image.to_string(),
                source: ManifestError::BadDescriptor {
                    which: "config".into(),
                    reason: format!("{} bytes is too large for an image config", img.config.size),
                },
            });
        }
        let store = self.store()?;
        let mut seen = BTreeSet::new();
        let blobs: Vec<Descriptor> = std::iter::once(&img.config)
            .chain(&img.layers)
            .filter(|d| seen.insert(d.digest.clone()))
            .cloned()
            .collect();
        // A stored blob counts by its size (it was verified when stored); asked to, check
        // its content too, so that what fails is fetched again.
        let repaired = if self.settings.verify_existing {
            let check: Vec<(Digest, u64)> =
                blobs.iter().map(|d| (d.digest.clone(), d.size)).collect();
            drop_corrupt(store, &check)?
        } else {
            Vec::new()
        };
        let missing: Vec<Descriptor> = blobs
            .iter()
            .filter(|d| !store.has_blob(&d.digest, d.size))
            .cloned()
            .collect();
        // What remains: an interrupted download's bytes are resumed, not fetched again.
        let to_fetch = missing
            .iter()
            .map(|d| d.size - store.resumable_bytes(&d.digest, d.size))
            .sum();
        Ok(Plan {
            blobs,
            missing,
            to_fetch,
            repaired,
        })
    }

    /// Step 4: every missing blob into the store, `jobs` at a time.
    pub async fn fetch(
        &self,
        sources: &SourceSet,
        image: &ImageRef,
        plan: &Plan,
        reporter: &dyn Reporter,
    ) -> Result<Downloaded, PullError> {
        let repo = image.repository.as_str();
        let received = AtomicU64::new(0);
        let spread = Spread::default();
        let job = BlobJob {
            store: self.store()?,
            sources,
            repo,
            received: &received,
            stall: self.settings.stall_timeout,
            reporter,
            spread: &spread,
        };
        // The config first: it is small, and `pull --load`'s Engine needs it before any
        // layer. Then the largest first: spread over several mirrors, the links end together
        // (longest job first); over one, the order changes nothing but which blob ends last.
        let config = plan.blobs.first().map(|d| &d.digest);
        let mut order: Vec<&Descriptor> = plan.missing.iter().collect();
        order.sort_by_key(|d| (Some(&d.digest) != config, std::cmp::Reverse(d.size)));
        // The futures are made first, not by a closure inside the stream: a stream of
        // `map(closure over &Descriptor)` cannot be proven `Send` (a compiler limit on
        // higher-ranked lifetimes), and `serve --pull-through` runs this on spawned tasks.
        let jobs: Vec<_> = order
            .into_iter()
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
            .collect();
        let from: Vec<(Digest, Option<String>)> = stream::iter(jobs)
            .buffer_unordered(self.settings.jobs.max(1))
            .try_collect()
            .await
            .map_err(|e| PullError::blob_failed(image, e))?;
        Ok(Downloaded {
            from,
            received: received.load(Ordering::Relaxed),
        })
    }

    /// Step 5: the platform (a single-platform image's from its config) checked against
    /// the one asked for, then the manifests stored and the image named. Manifests last,
    /// so the index never names an image whose blobs are not all stored.
    pub async fn commit(
        &self,
        target: &PullTarget<'_>,
        selected: &Selected,
        platform: &Platform,
        mut warnings: Vec<String>,
    ) -> Result<Committed, PullError> {
        let image = &target.name.image;
        let store = self.store()?;
        let img = &selected.image;
        let platform_of_image = if let Some(p) = &selected.platform {
            p.clone()
        } else {
            let bytes = store.read_blob(&img.config.digest, manifest::MAX_MANIFEST_BYTES)?;
            let config: ImageConfig = serde_json::from_slice(&bytes).unwrap_or_default();
            Platform {
                os: config.os,
                architecture: config.architecture,
                variant: config.variant,
            }
        };
        let single = selected.index.is_none();
        if single && !platform.matches(&platform_of_image) {
            if target.platform_explicit {
                return Err(PullError::NoPlatform {
                    reference: image.to_string(),
                    platform: platform.to_string(),
                    available: platform_of_image.to_string(),
                });
            }
            warnings.push(format!(
                "`{image}` is a single-platform image for {platform_of_image}, not the requested {platform}"
            ));
        }
        let fetched = &selected.manifest;
        if self.settings.verify_existing {
            // The manifests are rewritten below; a corrupt stored copy must go first.
            let mut check = vec![(fetched.digest.clone(), fetched.bytes.len() as u64)];
            if let Some(idx) = &selected.index {
                check.push((idx.digest.clone(), idx.bytes.len() as u64));
            }
            warnings.extend(drop_corrupt(store, &check)?);
        }
        store.put_bytes(&fetched.digest, &fetched.bytes).await?;
        if let Some(idx) = &selected.index {
            store.put_bytes(&idx.digest, &idx.bytes).await?;
        }
        let name = stored_name(target);
        let named = NamedImage {
            manifest: Descriptor {
                media_type: img.media_type.clone(),
                digest: fetched.digest.clone(),
                size: fetched.bytes.len() as u64,
            },
            platform: Some(platform_of_image.clone()),
            index_digest: selected.index.as_ref().map(|i| i.digest.clone()),
        };
        store.name(&name.to_string(), &named)?;
        Ok(Committed {
            name,
            platform: platform_of_image,
            warnings,
        })
    }
}

/// The name a pull stores its image under: the reference, except that a locked pull is
/// named by its tag (the lock's digest is how it was fetched).
pub(crate) fn stored_name(target: &PullTarget<'_>) -> ImageRef {
    let image = &target.name.image;
    match target.pin {
        Some(_) if image.tag.is_some() => image.without_digest(),
        _ => image.clone(),
    }
}

/// Re-hashes the stored ones among `blobs` and removes those that fail, so they are fetched
/// again; says what it removed.
pub(crate) fn drop_corrupt(
    store: &Store,
    blobs: &[(Digest, u64)],
) -> Result<Vec<String>, StoreError> {
    let mut removed = Vec::new();
    for (digest, size) in blobs {
        if !store.has_blob(digest, *size) {
            continue;
        }
        if let Some(why) = store.check_blob(digest, *size)? {
            store.remove_blob(digest)?;
            removed.push(format!(
                "stored blob {digest} was corrupt (its content {why}); removed and fetched again"
            ));
        }
    }
    Ok(removed)
}

/// The platform manifest an index names must be the one the lockfile pinned.
pub(crate) fn check_pin(
    image: &ImageRef,
    pin: &Pin,
    entry: &IndexEntry,
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
