//! Whole multi-platform images: what `pull --all-platforms` stores, and what `push` and
//! `export --format oci-archive` send on.
//!
//! Layout of such a name in `index.json` ([`Store::name_all_platforms`]):
//! - first, one entry naming the manifest list or index itself (its media type, digest and
//!   size; no platform). Tools that read the layout by name (`skopeo … oci:STORE:NAME`, which
//!   takes the first entry of a name) see the whole image, byte-exact; the closure of the
//!   name (`gc`, `verify`, [`Store::closure`]) descends from it into every child;
//! - then one entry per platform the index offers, as a single-platform pull writes it
//!   (the platform's manifest, its platform, the index digest), so `images`, `inspect`,
//!   `load`, `export` and `run-config` find each platform as before.
//!
//! Children that get no entry of their own: those of platform `unknown/unknown` (build
//! attestations, which registries require to exist when the index is pushed again), those
//! without a platform, nested indexes, and a second child for a platform already named. They
//! are stored and kept all the same, reached through the index entry, and [`Store::image_set`]
//! lists them for `push`; `images` does not show them.
//!
//! The index entry stands only while the name is that whole index (see [`crate::names`]).
//!
//! A subset of a whole image ([`Store::index_subset`], for `sync` with `platforms`) is never
//! named as a whole image (the platforms are named one by one, as single-platform pulls name
//! them), since the store holds the index without the other children. Nor is upstream's
//! index sent as the subset's top: CNCF distribution 2.x refuses it (`MANIFEST_BLOB_UNKNOWN`, measured by
//! `sync_select::a_registry_refuses_an_index_without_its_children`) until every child it
//! names is there; distribution 3 accepts such "sparse indexes" only when its configuration
//! says so (`validation.manifests.indexes`, distribution#3536). So the subset's top is its
//! only child's manifest, or a filtered index of the chosen children, with upstream's index
//! kept beside it ([`StoredSet::upstream`]).

use std::collections::BTreeSet;

use serde_json::Map;

use super::index::{IndexEntry, IndexPlatform, INDEX_DIGEST_ANNOTATION, REF_NAME};
use super::{Store, StoreError};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{self, Descriptor, Manifest, MAX_MANIFEST_BYTES};
use cudaimg_oci::platform::Platform;

/// Indexes nested deeper than this are refused (real ones nest once, if at all).
const MAX_DEPTH: usize = 8;

/// A stored manifest (or index), byte-exact and verified against its descriptor.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub descriptor: Descriptor,
    pub bytes: Vec<u8>,
}

/// One manifest of a stored name, with what it needs sent before it.
#[derive(Debug, Clone)]
pub struct StoredChild {
    pub manifest: StoredManifest,
    /// The platform its index (or, for a name without one, its entry) records.
    pub platform: Option<Platform>,
    /// Config and layers, each digest once, config first; all stored (checked by size;
    /// [`Store::open_blob`] checks content as they are read). Empty for a nested index,
    /// whose own children come before it in [`StoredSet::children`].
    pub blobs: Vec<Descriptor>,
    /// Whether the name has an entry of its own for it (an `images` row). `false` for
    /// attestations and the other children listed in the module docs.
    pub named: bool,
}

/// Everything stored under a name, in the order a registry must receive it: for each child,
/// its blobs, then the child; then the index.
#[derive(Debug, Clone)]
pub struct StoredSet {
    pub name: String,
    /// The manifest list or index of a whole multi-platform image (`pull --all-platforms`),
    /// verified; `None` when the name holds platforms pulled one by one, whose `children`
    /// then are those platforms' manifests (a push sends one of them).
    pub index: Option<StoredManifest>,
    /// Every child manifest: in index order, a nested index after its own children.
    pub children: Vec<StoredChild>,
    /// For some platforms of a multi-platform image ([`Store::index_subset`]): upstream's
    /// index, stored, which `index` (a filtered index of the chosen children) or the only
    /// child stands in for.
    pub upstream: Option<Descriptor>,
}

/// What [`Store::name_all_platforms`] named.
#[derive(Debug, Clone)]
pub struct NamedSet {
    pub index: Descriptor,
    /// Every child of the index, in its order, with its platform and whether it got an
    /// entry of its own.
    pub children: Vec<(Descriptor, Option<Platform>, bool)>,
}

/// Whether a child of `platform` gets its own entry: not an attestation, not platformless.
fn nameable(platform: Option<&Platform>) -> bool {
    platform.is_some_and(|p| p.os != "unknown" && p.architecture != "unknown")
}

impl Store {
    /// Names the stored index `index` `name`, as a whole multi-platform image (see the
    /// module docs), replacing every entry `name` had. Refuses (`Corrupt`, nothing changed)
    /// unless the index and everything every child reaches is stored.
    pub fn name_all_platforms(
        &self,
        name: &str,
        index: &Descriptor,
    ) -> Result<NamedSet, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("{name}: {what}"));
        let Manifest::Index(idx) = self.read_manifest(index)? else {
            return Err(corrupt(format!(
                "{} is not a manifest list or index",
                index.digest
            )));
        };
        self.check_complete(
            name,
            &super::NamedImage {
                manifest: index.clone(),
                platform: None,
                index_digest: None,
            },
        )?;
        let mut entries = vec![IndexEntry {
            media_type: index.media_type.clone(),
            digest: index.digest.to_string(),
            size: index.size,
            platform: None,
            annotations: [(REF_NAME.to_owned(), name.to_owned())].into(),
            other: Map::new(),
        }];
        let mut named_platforms: Vec<Platform> = Vec::new();
        let mut children = Vec::new();
        for child in &idx.manifests {
            let d = &child.descriptor;
            let image_manifest =
                d.media_type != manifest::OCI_INDEX && d.media_type != manifest::DOCKER_LIST;
            let named = image_manifest
                && nameable(child.platform.as_ref())
                && child
                    .platform
                    .as_ref()
                    .is_some_and(|p| !named_platforms.contains(p));
            if let (true, Some(p)) = (named, &child.platform) {
                named_platforms.push(p.clone());
                entries.push(IndexEntry {
                    media_type: d.media_type.clone(),
                    digest: d.digest.to_string(),
                    size: d.size,
                    platform: Some(IndexPlatform::from(p)),
                    annotations: [
                        (REF_NAME.to_owned(), name.to_owned()),
                        (INDEX_DIGEST_ANNOTATION.to_owned(), index.digest.to_string()),
                    ]
                    .into(),
                    other: Map::new(),
                });
            }
            children.push((d.clone(), child.platform.clone(), named));
        }
        self.update_index(|i| {
            i.manifests.retain(|e| e.ref_name() != Some(name));
            i.manifests.extend(entries);
        })?;
        Ok(NamedSet {
            index: index.clone(),
            children,
        })
    }

    /// Everything stored as `name`, for `push` and `export` (see [`StoredSet`]): the index
    /// of a whole multi-platform image and every child, or the platforms of a name pulled one
    /// by one. Manifests are read verified; every blob must be stored. `Ok(None)`: no entry
    /// has that name.
    pub fn image_set(&self, name: &str) -> Result<Option<StoredSet>, StoreError> {
        let index = self.read_index()?;
        let entries: Vec<&IndexEntry> = index.find(name).collect();
        if entries.is_empty() {
            return Ok(None);
        }
        let corrupt = |what: String| StoreError::Corrupt(format!("{name}: {what}"));
        let descriptor = |e: &IndexEntry| -> Result<Descriptor, StoreError> {
            Ok(Descriptor {
                media_type: e.media_type.clone(),
                digest: e.digest().map_err(|err| corrupt(err.to_string()))?,
                size: e.size,
            })
        };
        let mut set = StoredSet {
            name: name.to_owned(),
            index: None,
            children: Vec::new(),
            upstream: None,
        };
        if let Some(top) = entries.iter().find(|e| e.is_index()) {
            let desc = descriptor(top)?;
            let named: BTreeSet<String> = entries
                .iter()
                .filter(|e| !e.is_index() && e.index_digest() == Some(top.digest.as_str()))
                .map(|e| e.digest.clone())
                .collect();
            let bytes = self.manifest_bytes(name, &desc, None)?;
            self.children_of(name, &desc, &bytes, &named, 0, &mut set.children)?;
            set.index = Some(StoredManifest {
                descriptor: desc,
                bytes,
            });
        } else {
            for e in entries {
                let desc = descriptor(e)?;
                let platform = e.platform.as_ref().map(IndexPlatform::to_platform);
                let bytes = self.manifest_bytes(name, &desc, platform.as_ref())?;
                let child = self.child(name, desc, bytes, platform, true)?;
                set.children.push(child);
            }
        }
        Ok(Some(set))
    }

    /// Appends the children of the index `bytes` (of `desc`), a nested index after its own.
    fn children_of(
        &self,
        name: &str,
        desc: &Descriptor,
        bytes: &[u8],
        named: &BTreeSet<String>,
        depth: usize,
        out: &mut Vec<StoredChild>,
    ) -> Result<(), StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("{name}: {what}"));
        let Manifest::Index(idx) = manifest::parse(bytes, Some(&desc.media_type))
            .map_err(|e| corrupt(format!("manifest {}: {e}", desc.digest)))?
        else {
            return Err(corrupt(format!("{} is not an index", desc.digest)));
        };
        for c in &idx.manifests {
            let d = c.descriptor.clone();
            let bytes = self.manifest_bytes(name, &d, c.platform.as_ref())?;
            let nested =
                d.media_type == manifest::OCI_INDEX || d.media_type == manifest::DOCKER_LIST;
            if nested {
                if depth >= MAX_DEPTH {
                    return Err(corrupt(format!("indexes nest deeper than {MAX_DEPTH}")));
                }
                self.children_of(name, &d, &bytes, named, depth + 1, out)?;
                out.push(StoredChild {
                    manifest: StoredManifest {
                        descriptor: d,
                        bytes,
                    },
                    platform: c.platform.clone(),
                    blobs: Vec::new(),
                    named: false,
                });
                continue;
            }
            let is_named = named.contains(d.digest.as_str());
            out.push(self.child(name, d, bytes, c.platform.clone(), is_named)?);
        }
        Ok(())
    }

    /// An image manifest of `name` with its blobs, each checked to be stored.
    fn child(
        &self,
        name: &str,
        descriptor: Descriptor,
        bytes: Vec<u8>,
        platform: Option<Platform>,
        named: bool,
    ) -> Result<StoredChild, StoreError> {
        let Manifest::Image(m) =
            manifest::parse(&bytes, Some(&descriptor.media_type)).map_err(|e| {
                StoreError::Corrupt(format!("{name}: manifest {}: {e}", descriptor.digest))
            })?
        else {
            return Err(StoreError::Corrupt(format!(
                "{name}: {} is not an image manifest",
                descriptor.digest
            )));
        };
        let mut seen = BTreeSet::new();
        let mut blobs = Vec::new();
        for (what, b) in
            std::iter::once(("config", &m.config)).chain(m.layers.iter().map(|l| ("layer", l)))
        {
            if !seen.insert(b.digest.clone()) {
                continue;
            }
            if !self.has_blob(&b.digest, b.size) {
                return Err(StoreError::MissingBlob {
                    name: name.to_owned(),
                    what,
                    digest: b.digest.clone(),
                    platform: platform.as_ref().map(ToString::to_string),
                });
            }
            blobs.push(b.clone());
        }
        Ok(StoredChild {
            manifest: StoredManifest { descriptor, bytes },
            platform,
            blobs,
            named,
        })
    }

    /// A manifest's bytes, verified; a missing one is named as such, with how to get it back.
    fn manifest_bytes(
        &self,
        name: &str,
        desc: &Descriptor,
        platform: Option<&Platform>,
    ) -> Result<Vec<u8>, StoreError> {
        self.read_verified(&desc.digest, Some(desc.size), MAX_MANIFEST_BYTES)
            .map_err(|e| match e {
                StoreError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                    StoreError::MissingBlob {
                        name: name.to_owned(),
                        what: "manifest",
                        digest: desc.digest.clone(),
                        platform: platform.map(ToString::to_string),
                    }
                }
                e => e,
            })
    }
}

impl Store {
    /// The stored index `index` with only the children `chosen` (digests of its children,
    /// each stored with its blobs): the [`StoredSet`] of a subset of a multi-platform image
    /// (see the module docs). `chosen` that the index does not list are refused (`Corrupt`),
    /// as is a chosen child not stored. Children keep the index's order; each is `named` when
    /// it has a nameable platform.
    ///
    /// When `chosen` is every child, the set is the index whole. Otherwise a registry would
    /// refuse upstream's index, so the set stands in for it ([`StoredSet::upstream`]): one
    /// child alone is its own top (its manifest under the tag, as docker pushes a
    /// single-platform image); several are listed by a filtered index, upstream's JSON less
    /// the other children, which is stored here and whose digest is new.
    pub async fn index_subset(
        &self,
        name: &str,
        index: &Digest,
        chosen: &[Digest],
    ) -> Result<StoredSet, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("{name}: {what}"));
        let bytes = self.read_verified(index, None, MAX_MANIFEST_BYTES)?;
        let Manifest::Index(idx) =
            manifest::parse(&bytes, None).map_err(|e| corrupt(format!("manifest {index}: {e}")))?
        else {
            return Err(corrupt(format!("{index} is not a manifest list or index")));
        };
        for want in chosen {
            if !idx.manifests.iter().any(|c| &c.descriptor.digest == want) {
                return Err(corrupt(format!("the index {index} does not list {want}")));
            }
        }
        let upstream = Descriptor {
            media_type: idx.media_type.clone(),
            digest: index.clone(),
            size: bytes.len() as u64,
        };
        let mut children = Vec::new();
        let mut seen = BTreeSet::new();
        for c in &idx.manifests {
            let d = &c.descriptor;
            if !chosen.contains(&d.digest) || !seen.insert(d.digest.clone()) {
                continue;
            }
            let bytes = self.manifest_bytes(name, d, c.platform.as_ref())?;
            let named = nameable(c.platform.as_ref());
            children.push(self.child(name, d.clone(), bytes, c.platform.clone(), named)?);
        }
        let every = idx
            .manifests
            .iter()
            .all(|c| chosen.contains(&c.descriptor.digest));
        let (index, upstream) = match children.len() {
            _ if every => (
                Some(StoredManifest {
                    descriptor: upstream,
                    bytes,
                }),
                None,
            ),
            1 => (None, Some(upstream)),
            _ => {
                let filtered = filtered_index(&bytes, chosen)
                    .map_err(|e| corrupt(format!("manifest {index}: {e}")))?;
                let digest = Digest::of(&filtered);
                self.put_bytes(&digest, &filtered).await?;
                let descriptor = Descriptor {
                    media_type: idx.media_type.clone(),
                    digest,
                    size: filtered.len() as u64,
                };
                (
                    Some(StoredManifest {
                        descriptor,
                        bytes: filtered,
                    }),
                    Some(upstream),
                )
            }
        };
        Ok(StoredSet {
            name: name.to_owned(),
            index,
            children,
            upstream,
        })
    }
}

/// Upstream's index JSON with only the entries `chosen` (each once, in upstream's order),
/// every other field as it was.
pub fn filtered_index(bytes: &[u8], chosen: &[Digest]) -> Result<Vec<u8>, serde_json::Error> {
    let mut doc: serde_json::Value = serde_json::from_slice(bytes)?;
    if let Some(list) = doc
        .get_mut("manifests")
        .and_then(serde_json::Value::as_array_mut)
    {
        let mut seen = BTreeSet::new();
        list.retain(|e| {
            e["digest"].as_str().is_some_and(|d| {
                chosen.iter().any(|c| c.as_str() == d) && seen.insert(d.to_owned())
            })
        });
    }
    serde_json::to_vec_pretty(&doc)
}

impl StoredSet {
    /// The digest of the index, or of the only child: what a registry names after a push
    /// of the whole name (`None`: several platforms pulled one by one, so choose one).
    pub fn top_digest(&self) -> Option<&Digest> {
        match (&self.index, self.children.as_slice()) {
            (Some(i), _) => Some(&i.descriptor.digest),
            (None, [only]) => Some(&only.manifest.descriptor.digest),
            (None, _) => None,
        }
    }
}

#[cfg(test)]
mod filtered_tests {
    use super::*;

    #[test]
    fn a_filtered_index_keeps_the_chosen_children_once_and_every_other_field() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let upstream = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_INDEX,
            "annotations": {"a": "b"},
            "manifests": [
                {"mediaType": manifest::OCI_MANIFEST, "digest": d('a'), "size": 1},
                {"mediaType": manifest::OCI_MANIFEST, "digest": d('b'), "size": 2},
                {"mediaType": manifest::OCI_MANIFEST, "digest": d('c'), "size": 3},
                {"mediaType": manifest::OCI_MANIFEST, "digest": d('a'), "size": 1},
            ],
        });
        let chosen: Vec<Digest> = [d('a'), d('c')]
            .iter()
            .filter_map(|s| Digest::parse(s).ok())
            .collect();
        let bytes = serde_json::to_vec(&upstream).unwrap_or_default();
        let out: serde_json::Value = filtered_index(&bytes, &chosen)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let kept: Vec<&str> = out["manifests"]
            .as_array()
            .map(|l| l.iter().filter_map(|e| e["digest"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(kept, [d('a'), d('c')]);
        assert_eq!(out["annotations"], upstream["annotations"]);
        assert_eq!(out["mediaType"], manifest::OCI_INDEX);
    }
}
