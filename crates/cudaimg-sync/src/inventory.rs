//! Inventories (`cudaimg inventory -o have.json`): what the far side of a gap already holds,
//! written there and carried back, so that `sync --have` leaves it out of the next bundle.
//!
//! An inventory lists the configs and layers (digest and size) that the far side's images
//! reach, and its tagged manifests (name and digest). It is computed from the manifests, not
//! from the registry's storage: a blob counts as held when a manifest the registry serves
//! names it (a registry accepts a manifest only with its blobs present). Manifests are not
//! left out of a bundle on an inventory's word (they are small, and an import needs them to
//! name its images under its own prefix), so only configs and layers become
//! [`crate::plan::Exclusions`]; an earlier bundle (`--since`) excludes its manifests too.
//!
//! The file is small and stable: JSON, entries sorted, no time stamp; `format` names its
//! version, and a reader refuses other versions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{self, Manifest};
use cudaimg_registry::{RegistryClient, RegistryError};
use cudaimg_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::plan::{AssumedFrom, Exclusions};
use crate::SyncError;

/// The `format` of an inventory this version writes and reads.
pub const FORMAT: &str = "cudaimg-inventory/1";

/// Repositories or tags asked for per page.
const PAGE: u32 = 1000;

/// What a registry or store holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub format: String,
    /// What was listed: `registry HOST[/PREFIX]` or `store`.
    pub of: String,
    /// Configs and layers, sorted by digest.
    pub blobs: Vec<HeldBlob>,
    /// Tagged manifests (the index of a multi-platform image), sorted by name.
    pub manifests: Vec<HeldManifest>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeldBlob {
    pub digest: Digest,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeldManifest {
    /// `REPOSITORY:TAG` for a registry (under its prefix), the stored name for a store.
    pub name: String,
    pub digest: Digest,
}

impl Inventory {
    fn new(of: String, blobs: BTreeMap<Digest, u64>, manifests: BTreeSet<HeldManifest>) -> Self {
        Inventory {
            format: FORMAT.to_owned(),
            of,
            blobs: blobs
                .into_iter()
                .map(|(digest, size)| HeldBlob { digest, size })
                .collect(),
            manifests: manifests.into_iter().collect(),
        }
    }

    /// Every repository of `client`'s registry under `prefix` (all when `None`), every tag
    /// of each, and every manifest those tags reach, read through the registry client
    /// (credentials from docker's config, as `push` uses them). `of` labels the result.
    pub async fn of_registry(
        client: &RegistryClient,
        prefix: Option<&str>,
        of: String,
    ) -> Result<Inventory, RegistryError> {
        let mut repos = client.catalog(PAGE).await?.tags;
        if let Some(p) = prefix {
            let under = format!("{}/", p.trim_end_matches('/'));
            repos.retain(|r| r.starts_with(&under));
        }
        repos.sort();
        repos.dedup();
        let mut blobs = BTreeMap::new();
        let mut manifests = BTreeSet::new();
        // A manifest's content is its digest's: read once, whichever repository names it.
        let mut read: BTreeSet<Digest> = BTreeSet::new();
        for repo in &repos {
            let mut tags = client.tags(repo, PAGE).await?.tags;
            tags.sort();
            for tag in tags {
                let top = match client.manifest(repo, &tag, None).await {
                    Ok(m) => m,
                    // Deleted between the listing and now: it is not held.
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                };
                manifests.insert(HeldManifest {
                    name: format!("{repo}:{tag}"),
                    digest: top.digest.clone(),
                });
                let mut pending = vec![(top.digest.clone(), Some(top))];
                while let Some((digest, fetched)) = pending.pop() {
                    if !read.insert(digest.clone()) {
                        continue;
                    }
                    let fetched = match fetched {
                        Some(f) => f,
                        None => match client.manifest(repo, digest.as_str(), Some(&digest)).await {
                            Ok(m) => m,
                            // An index may name children the registry lacks (a sparse index):
                            // those are not held.
                            Err(e) if e.is_not_found() => continue,
                            Err(e) => return Err(e),
                        },
                    };
                    match manifest::parse(&fetched.bytes, fetched.media_type.as_deref()) {
                        Ok(Manifest::Index(idx)) => {
                            for c in idx.manifests {
                                pending.push((c.descriptor.digest, None));
                            }
                        }
                        Ok(Manifest::Image(img)) => {
                            for b in std::iter::once(&img.config).chain(&img.layers) {
                                blobs.insert(b.digest.clone(), b.size);
                            }
                        }
                        // Not an image (an artifact cudaimg does not read): nothing to list.
                        Err(_) => {}
                    }
                }
            }
        }
        Ok(Inventory::new(of, blobs, manifests))
    }

    /// Every name in `store` and what it reaches.
    pub fn of_store(store: &Store) -> Result<Inventory, StoreError> {
        let mut names: Vec<String> = store.list()?.into_iter().filter_map(|e| e.name).collect();
        names.sort();
        names.dedup();
        let mut blobs = BTreeMap::new();
        let mut manifests = BTreeSet::new();
        for name in names {
            let Some(set) = store.image_set(&name)? else {
                continue;
            };
            match &set.index {
                Some(i) => {
                    manifests.insert(HeldManifest {
                        name: name.clone(),
                        digest: i.descriptor.digest.clone(),
                    });
                }
                None => {
                    for c in &set.children {
                        manifests.insert(HeldManifest {
                            name: name.clone(),
                            digest: c.manifest.descriptor.digest.clone(),
                        });
                    }
                }
            }
            for c in &set.children {
                for b in &c.blobs {
                    blobs.insert(b.digest.clone(), b.size);
                }
            }
        }
        Ok(Inventory::new("store".to_owned(), blobs, manifests))
    }

    /// The inventory as written: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// The sha256 of a file's bytes, hex.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Adds to `exclude` the configs and layers the inventory file `path` lists (`--have`).
pub fn add_have(exclude: &mut Exclusions, path: &Path) -> Result<(), SyncError> {
    let bad = |reason: String| SyncError::Have {
        path: path.to_owned(),
        reason,
    };
    let bytes = cudaimg_static::regular::read_capped(path, crate::bundle::MAX_BUNDLE_JSON)
        .map_err(|e| bad(e.to_string()))?;
    let inv: Inventory = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("it is not a cudaimg inventory ({e})")))?;
    if inv.format != FORMAT {
        return Err(bad(format!(
            "its format is `{}`; this cudaimg reads `{FORMAT}`",
            cudaimg_oci::text::shown(&inv.format)
        )));
    }
    exclude.add(
        AssumedFrom::Inventory {
            sha256: sha256_hex(&bytes),
            of: inv.of,
        },
        inv.blobs.into_iter().map(|b| b.digest),
    );
    Ok(())
}

/// Adds to `exclude` every blob an earlier bundle carried or assumed (`--since DIR`),
/// manifests included: once that bundle is imported the far side holds its images, names
/// and all, so an unchanged image costs nothing again. Read from its `bundle.json`:
/// `{"format": .., "plan": <Plan>, ..}`, of which only `plan.blobs[].digest` and
/// `plan.assumed[].digest` are read, so the rest of the format can grow.
pub fn add_since(exclude: &mut Exclusions, dir: &Path) -> Result<(), SyncError> {
    #[derive(Deserialize)]
    struct Bundle {
        plan: OldPlan,
    }
    #[derive(Deserialize)]
    struct OldPlan {
        #[serde(default)]
        blobs: Vec<OldBlob>,
        #[serde(default)]
        assumed: Vec<OldBlob>,
    }
    #[derive(Deserialize)]
    struct OldBlob {
        digest: Digest,
    }
    let file = dir.join("bundle.json");
    let bad = |reason: String| SyncError::Since {
        path: file.clone(),
        reason,
    };
    let bytes = cudaimg_static::regular::read_capped(&file, crate::bundle::MAX_BUNDLE_JSON)
        .map_err(|e| bad(e.to_string()))?;
    let bundle: Bundle = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("it is not a cudaimg bundle's bundle.json ({e})")))?;
    let name = dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let digests = bundle
        .plan
        .blobs
        .into_iter()
        .chain(bundle.plan.assumed)
        .map(|b| b.digest);
    exclude.add(
        AssumedFrom::Bundle {
            sha256: sha256_hex(&bytes),
            name,
        },
        digests,
    );
    Ok(())
}
