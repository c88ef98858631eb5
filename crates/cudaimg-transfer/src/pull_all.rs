//! `pull --all-platforms`: a whole multi-platform image into the store, byte-exact, so that
//! `push` can send it on with the same index digest.
//!
//! The same steps as a single-platform pull ([`crate::steps`]), with select, plan and commit
//! taken for every child of the index, attestations (`unknown/unknown`) included: resolve
//! once; fetch every child manifest by digest; plan each child's blobs, and fetch their
//! union once (a layer that two platforms share is downloaded once); then store the child
//! manifests, the index, and name it all at once ([`cudaimg_store::Store::name_all_platforms`]).
//! A reference that names a single-platform image stores that image as a plain pull would.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::error::PullError;
use crate::pull::as_text;
use crate::resolve::ResolvedBy;
use crate::session::Session;
use crate::steps::{check_pin, drop_corrupt, Plan, PullTarget};
use cudaimg_mirrors::sources::SourceReport;
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{Descriptor, ImageConfig, ImageManifest, Manifest, MAX_MANIFEST_BYTES};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::Reporter;
use cudaimg_oci::reference::ImageRef;
use cudaimg_registry::FetchedManifest;
use cudaimg_store::NamedImage;

/// What `pull --all-platforms` did, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct PullAllReport {
    /// The reference as the user wrote it.
    pub reference: String,
    /// The canonical reference the image is stored under.
    #[serde(serialize_with = "as_text")]
    pub canonical: ImageRef,
    /// Digest of the manifest list or index; `None` for a single-platform image.
    pub index_digest: Option<Digest>,
    /// Its media type (or the single manifest's).
    pub media_type: String,
    /// Every child manifest, in index order.
    pub platforms: Vec<PlatformReport>,
    /// Where the top manifest came from.
    pub manifest_source: String,
    pub resolved_by: ResolvedBy,
    /// Bytes of every distinct config and layer of every child.
    pub total_bytes: u64,
    /// Bytes received from the network, including any discarded after a failed check.
    pub bytes_downloaded: u64,
    /// Blobs that were already stored.
    pub blobs_cached: usize,
    /// Blobs downloaded.
    pub blobs_fetched: usize,
    pub warnings: Vec<String>,
    pub sources: Vec<SourceReport>,
}

/// One child of the index.
#[derive(Debug, Serialize)]
pub struct PlatformReport {
    /// `os/arch[/variant]` as the index records it (`unknown/unknown` for attestations);
    /// `None` when the index records none.
    pub platform: Option<String>,
    pub digest: Digest,
    pub media_type: String,
    /// Config and layers.
    pub size: u64,
    pub layers: usize,
    /// Whether it is named in the store on its own (`images` shows it; attestations are
    /// stored and kept, but not shown).
    pub named: bool,
}

/// A child manifest, fetched and parsed.
struct Child {
    manifest: FetchedManifest,
    image: ImageManifest,
}

impl Session {
    /// Pulls every platform of `target` (see the module docs).
    pub async fn pull_all(
        &self,
        target: &PullTarget<'_>,
        reporter: &dyn Reporter,
    ) -> Result<PullAllReport, PullError> {
        let image = &target.name.image;
        // Until the index names what this pull stores, `gc` must not run.
        let _gc_guard = self.hold_against_gc().await?;
        let sources = self.sources(target.name)?;
        let resolved = self.resolve(&sources, image, target.pin, reporter).await?;
        let (resolved_by, manifest_source) = (resolved.by, resolved.source.clone());
        let top = resolved.manifest;
        let (index, children) = match resolved.parsed {
            Manifest::Image(img) => (
                None,
                vec![Child {
                    manifest: top,
                    image: img,
                }],
            ),
            Manifest::Index(idx) => {
                let mut children = Vec::with_capacity(idx.manifests.len());
                for entry in &idx.manifests {
                    if let (Some(pin), Some(p)) = (target.pin, &entry.platform) {
                        // A lockfile pins the index by digest, so its children are fixed;
                        // a platform it also pins must agree (attestations it need not list).
                        if pin.platforms.contains_key(&p.to_string()) {
                            check_pin(image, pin, entry, &idx)?;
                        }
                    }
                    let which = entry
                        .platform
                        .as_ref()
                        .map_or_else(|| "platformless".to_owned(), ToString::to_string);
                    let (manifest, img) = self
                        .select_child(&sources, image, &entry.descriptor, &which, reporter)
                        .await?;
                    children.push(Child {
                        manifest,
                        image: img,
                    });
                }
                (Some(top), children)
            }
        };

        let plan = self.plan_all(image, &children)?;
        let shown = Platform {
            os: "all".into(),
            architecture: "platforms".into(),
            variant: None,
        };
        let top_digest = index
            .as_ref()
            .map_or(&children[0].manifest.digest, |i| &i.digest);
        let total: u64 = plan.blobs.iter().map(|d| d.size).sum();
        reporter.resolved(&image.to_string(), top_digest, &shown, total, plan.to_fetch);
        reporter.planned(plan.blobs.len());
        for d in plan.blobs.iter().filter(|d| !plan.missing.contains(d)) {
            reporter.blob_cached(&d.digest, d.size);
        }
        let downloaded = self.fetch(&sources, image, &plan, reporter).await?;

        let mut warnings = sources.warnings();
        warnings.extend(plan.repaired.iter().cloned());
        let (name, media_type, platforms) = self
            .commit_all(target, index.as_ref(), &children, &mut warnings)
            .await?;
        Ok(PullAllReport {
            reference: target.input.to_owned(),
            canonical: name,
            index_digest: index.map(|i| i.digest),
            media_type,
            platforms,
            manifest_source: manifest_source.label().to_owned(),
            resolved_by,
            total_bytes: total,
            bytes_downloaded: downloaded.received,
            blobs_cached: plan.blobs.len() - plan.missing.len(),
            blobs_fetched: downloaded.from.iter().filter(|(_, u)| u.is_some()).count(),
            warnings,
            sources: sources.report(),
        })
    }

    /// Step 5 for every child: the child manifests, then the index, then the names (see
    /// [`cudaimg_store::Store::name_all_platforms`]). Returns the name, the top manifest's
    /// media type, and a report per child.
    async fn commit_all(
        &self,
        target: &PullTarget<'_>,
        index: Option<&FetchedManifest>,
        children: &[Child],
        warnings: &mut Vec<String>,
    ) -> Result<(ImageRef, String, Vec<PlatformReport>), PullError> {
        let image = &target.name.image;
        let store = self.store()?;
        if self.settings.verify_existing {
            let mut check: Vec<(Digest, u64)> = children
                .iter()
                .map(|c| (c.manifest.digest.clone(), c.manifest.bytes.len() as u64))
                .collect();
            if let Some(i) = &index {
                check.push((i.digest.clone(), i.bytes.len() as u64));
            }
            warnings.extend(drop_corrupt(store, &check)?);
        }
        for c in children {
            store
                .put_bytes(&c.manifest.digest, &c.manifest.bytes)
                .await?;
        }
        // A locked pull is named by its tag: the lock's digest is how it was fetched.
        let name = match target.pin {
            Some(_) if image.tag.is_some() => image.without_digest(),
            _ => image.clone(),
        };
        let mut platforms = Vec::with_capacity(children.len());
        let media_type;
        if let Some(i) = &index {
            store.put_bytes(&i.digest, &i.bytes).await?;
            let parsed_type = cudaimg_oci::manifest::parse(&i.bytes, i.media_type.as_deref())
                .ok()
                .and_then(|m| match m {
                    Manifest::Index(x) => Some(x.media_type),
                    Manifest::Image(_) => None,
                })
                .unwrap_or_else(|| cudaimg_oci::manifest::OCI_INDEX.to_owned());
            let desc = Descriptor {
                media_type: parsed_type.clone(),
                digest: i.digest.clone(),
                size: i.bytes.len() as u64,
            };
            let named = store.name_all_platforms(&name.to_string(), &desc)?;
            for (c, (_, platform, named)) in children.iter().zip(&named.children) {
                platforms.push(report(c, platform.as_ref(), *named));
            }
            media_type = parsed_type;
        } else {
            let c = &children[0];
            let bytes = store.read_blob(&c.image.config.digest, MAX_MANIFEST_BYTES)?;
            let config: ImageConfig = serde_json::from_slice(&bytes).unwrap_or_default();
            let platform = Platform {
                os: config.os,
                architecture: config.architecture,
                variant: config.variant,
            };
            let desc = Descriptor {
                media_type: c.image.media_type.clone(),
                digest: c.manifest.digest.clone(),
                size: c.manifest.bytes.len() as u64,
            };
            store.name(
                &name.to_string(),
                &NamedImage {
                    manifest: desc,
                    platform: Some(platform.clone()),
                    index_digest: None,
                },
            )?;
            warnings.push(format!(
                "`{image}` is a single-platform image ({platform}); stored as a plain pull would"
            ));
            platforms.push(report(c, Some(&platform), true));
            media_type = c.image.media_type.clone();
        }
        Ok((name, media_type, platforms))
    }

    /// Step 3 for every child: the union of their plans, each blob once.
    fn plan_all(&self, image: &ImageRef, children: &[Child]) -> Result<Plan, PullError> {
        let mut all = Plan {
            blobs: Vec::new(),
            missing: Vec::new(),
            to_fetch: 0,
            repaired: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        for c in children {
            let plan = self.plan(image, &c.image)?;
            all.repaired.extend(plan.repaired);
            for d in plan.blobs {
                if !seen.insert(d.digest.clone()) {
                    continue;
                }
                if plan.missing.contains(&d) {
                    all.to_fetch += d.size - self.store()?.resumable_bytes(&d.digest, d.size);
                    all.missing.push(d.clone());
                }
                all.blobs.push(d);
            }
        }
        Ok(all)
    }
}

fn report(c: &Child, platform: Option<&Platform>, named: bool) -> PlatformReport {
    PlatformReport {
        platform: platform.map(ToString::to_string),
        digest: c.manifest.digest.clone(),
        media_type: c.image.media_type.clone(),
        size: c.image.content_size(),
        layers: c.image.layers.len(),
        named,
    }
}
