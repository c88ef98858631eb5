//! The plan: what a bundle carries, independent of how the images were chosen.
//!
//! A plan is computed from whole images in the store ([`Plan::from_sets`]), so the bytes it
//! names are the bytes that will be written: every manifest byte-exact, every blob with its
//! digest and size. Blobs shared by several images are carried once. Blobs the far side
//! already holds (an inventory from `--have`, or an earlier bundle from `--since`) are not
//! carried but listed in [`Plan::assumed`], each with what says the far side has it, so an
//! import can refuse a bundle whose assumptions do not hold and name the bundle that had them.
//!
//! Everything is sorted (images by name, blobs by digest) so that the same inputs give the
//! same plan, byte for byte, when serialized: bundles are reproducible.

use std::collections::{BTreeMap, BTreeSet};

use cudaimg_oci::digest::Digest;
use cudaimg_store::StoredSet;
use serde::{Deserialize, Serialize};

/// What a blob is to the images that reach it (the first role wins for a blob shared by roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// A manifest list or OCI index.
    Index,
    /// An image manifest.
    Manifest,
    Config,
    Layer,
}

/// One image a bundle carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedImage {
    /// The canonical reference with its tag, e.g. `docker.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04`.
    pub name: String,
    /// The digest a registry names after the image is pushed: the index of a multi-platform
    /// image, or the manifest of a single-platform one.
    pub digest: Digest,
    pub media_type: String,
    /// `os/arch[/variant]` of every platform carried, sorted.
    pub platforms: Vec<String>,
    /// Every blob the image needs (manifests included), in the order a registry must
    /// receive them: for each child its config and layers, then the child; the index last.
    pub blobs: Vec<Digest>,
    /// When only some platforms of upstream's index are carried: that index, and what
    /// stands in for it under the tag ([`PlannedImage::digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
}

/// Upstream's index of an image carried in part, and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The index the tag named upstream when the sync ran (the digest `pull` and the lock
    /// file show). Carried in the bundle (never left out by `--have`/`--since`: it is small)
    /// so that a store keeps it beside the platforms, but never sent to a registry, which
    /// would refuse an index naming manifests it lacks.
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub carried_as: CarriedAs,
}

/// What stands in for upstream's index under the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CarriedAs {
    /// One platform chosen: its own manifest.
    PlatformManifest,
    /// Several chosen: upstream's index less the other children; its digest is new.
    FilteredIndex,
}

impl std::fmt::Display for CarriedAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CarriedAs::PlatformManifest => "the platform's own manifest",
            CarriedAs::FilteredIndex => "a filtered index of the chosen platforms",
        })
    }
}

/// One blob, with what it is and how big.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedBlob {
    pub digest: Digest,
    pub size: u64,
    pub kind: BlobKind,
    /// The media type its parent names it with (a manifest's own type for manifests).
    pub media_type: String,
}

/// What says the far side already holds some blobs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AssumedFrom {
    /// An inventory the far side wrote (`cudaimg inventory`, passed as `--have`): the sha256
    /// of the inventory file and what it lists (a registry `HOST[/PREFIX]` or a store).
    Inventory { sha256: String, of: String },
    /// An earlier bundle (`--since DIR`): the sha256 of its `bundle.json`, and its directory's
    /// file name as the user called it (the name an import error shows).
    Bundle { sha256: String, name: String },
}

/// A blob the bundle needs but does not carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssumedBlob {
    pub digest: Digest,
    pub size: u64,
    pub kind: BlobKind,
    /// Index into [`Plan::assumed_from`].
    pub from: usize,
}

/// Blobs to leave out of a bundle, each with what says the far side has it.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    pub sources: Vec<AssumedFrom>,
    /// Digest → index into `sources` (the first source that lists it).
    pub blobs: BTreeMap<Digest, usize>,
}

impl Exclusions {
    /// Adds a source and the digests it lists; a digest already listed keeps its first source.
    pub fn add(&mut self, source: AssumedFrom, digests: impl IntoIterator<Item = Digest>) {
        let at = self.sources.len();
        self.sources.push(source);
        for d in digests {
            self.blobs.entry(d).or_insert(at);
        }
    }
}

/// What a bundle carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Sorted by name.
    pub images: Vec<PlannedImage>,
    /// The blobs to carry, each once, sorted by digest.
    pub blobs: Vec<PlannedBlob>,
    /// Blobs needed but left out, sorted by digest.
    pub assumed: Vec<AssumedBlob>,
    pub assumed_from: Vec<AssumedFrom>,
}

/// The [`Upstream`] of a set carried in part; its index joins the blobs carried (not the
/// image's push order: only a store takes it) and is never left out.
fn upstream_of(
    set: &StoredSet,
    all: &mut BTreeMap<Digest, PlannedBlob>,
    keep: &mut BTreeSet<Digest>,
) -> Option<Upstream> {
    let u = set.upstream.as_ref()?;
    all.entry(u.digest.clone()).or_insert_with(|| PlannedBlob {
        digest: u.digest.clone(),
        size: u.size,
        kind: BlobKind::Index,
        media_type: u.media_type.clone(),
    });
    keep.insert(u.digest.clone());
    Some(Upstream {
        digest: u.digest.clone(),
        size: u.size,
        media_type: u.media_type.clone(),
        carried_as: if set.index.is_some() {
            CarriedAs::FilteredIndex
        } else {
            CarriedAs::PlatformManifest
        },
    })
}

impl Plan {
    /// The plan for carrying `sets` (whole images read from the store, see
    /// [`cudaimg_store::Store::image_set`]), leaving out what `exclude` lists.
    ///
    /// `name_of` gives the name an image is carried under (usually the set's own name).
    /// A set of several platforms pulled one by one (no index) is carried as its first child.
    pub fn from_sets(sets: &[StoredSet], exclude: &Exclusions) -> Plan {
        let mut images = Vec::new();
        let mut all: BTreeMap<Digest, PlannedBlob> = BTreeMap::new();
        // Upstream indexes: always carried.
        let mut keep: BTreeSet<Digest> = BTreeSet::new();
        for set in sets {
            let mut order: Vec<Digest> = Vec::new();
            let mut seen = BTreeSet::new();
            let mut add = |all: &mut BTreeMap<Digest, PlannedBlob>,
                           d: &cudaimg_oci::manifest::Descriptor,
                           kind: BlobKind| {
                all.entry(d.digest.clone()).or_insert_with(|| PlannedBlob {
                    digest: d.digest.clone(),
                    size: d.size,
                    kind,
                    media_type: d.media_type.clone(),
                });
                if seen.insert(d.digest.clone()) {
                    order.push(d.digest.clone());
                }
            };
            let children: &[cudaimg_store::StoredChild] = match &set.index {
                Some(_) => &set.children,
                None => set.children.get(..1).unwrap_or_default(),
            };
            let mut platforms = BTreeSet::new();
            for child in children {
                for (i, b) in child.blobs.iter().enumerate() {
                    add(
                        &mut all,
                        b,
                        if i == 0 {
                            BlobKind::Config
                        } else {
                            BlobKind::Layer
                        },
                    );
                }
                let kind = if child.blobs.is_empty() {
                    BlobKind::Index
                } else {
                    BlobKind::Manifest
                };
                add(&mut all, &child.manifest.descriptor, kind);
                if let Some(p) = child.platform.as_ref().filter(|_| child.named) {
                    platforms.insert(p.to_string());
                }
            }
            let top = match (&set.index, children.first()) {
                (Some(i), _) => Some(&i.descriptor),
                (None, Some(c)) => Some(&c.manifest.descriptor),
                (None, None) => None,
            };
            let Some(top) = top.cloned() else { continue };
            if let Some(i) = &set.index {
                add(&mut all, &i.descriptor, BlobKind::Index);
            }
            let upstream = upstream_of(set, &mut all, &mut keep);
            images.push(PlannedImage {
                name: set.name.clone(),
                digest: top.digest,
                media_type: top.media_type,
                platforms: platforms.into_iter().collect(),
                blobs: order,
                upstream,
            });
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        let mut plan = Plan {
            images,
            ..Plan::default()
        };
        let mut used_sources = BTreeMap::new();
        for (digest, blob) in all {
            match exclude
                .blobs
                .get(&digest)
                .filter(|_| !keep.contains(&digest))
            {
                Some(&src) => {
                    let next = used_sources.len();
                    let from = *used_sources.entry(src).or_insert(next);
                    plan.assumed.push(AssumedBlob {
                        digest,
                        size: blob.size,
                        kind: blob.kind,
                        from,
                    });
                }
                None => plan.blobs.push(blob),
            }
        }
        let mut from: Vec<(usize, usize)> = used_sources.into_iter().collect();
        from.sort_by_key(|&(_, at)| at);
        plan.assumed_from = from
            .into_iter()
            .map(|(src, _)| exclude.sources[src].clone())
            .collect();
        plan
    }

    /// Bytes of the blobs carried (shared blobs counted once).
    pub fn carried_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }

    /// Bytes of the blobs assumed on the far side.
    pub fn assumed_bytes(&self) -> u64 {
        self.assumed.iter().map(|b| b.size).sum()
    }
}
