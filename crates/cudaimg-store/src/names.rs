//! Names in the store: what `index.json` lists, as typed operations. Only this crate reads
//! or writes index entries and their annotations; commands name, retag, untag and list
//! through [`Store::name`], [`Store::tag`], [`Store::untag`] and [`Store::list`].
//!
//! Convention (what `pull` writes and every reader expects): one entry per name and
//! platform, pointing at a single-platform manifest, with the manifest list it was chosen
//! from recorded by digest ([`INDEX_DIGEST_ANNOTATION`]). Naming the same name and platform
//! again replaces the entry; other platforms of the name stay.
//!
//! A whole multi-platform image (`pull --all-platforms`) adds one entry that names the index
//! itself, before the platform entries ([`crate::sets`]). That entry stands only while the
//! name is that whole index: naming one platform of the name from another index (or from
//! none), or removing one platform, removes it too, and the name falls back to the
//! per-platform convention above.

use std::collections::BTreeMap;

use serde_json::Map;

use super::closure::Reached;
use super::index::{IndexEntry, IndexPlatform, INDEX_DIGEST_ANNOTATION, REF_NAME};
use super::{Store, StoreError};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{self, Descriptor, ImageConfig, Manifest, MAX_MANIFEST_BYTES};
use cudaimg_oci::platform::Platform;

/// An image to name: its manifest, the platform it serves, and where it was chosen from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedImage {
    /// The manifest (usually single-platform) the name points at.
    pub manifest: Descriptor,
    /// The platform it serves; `None`: the one its config records (image manifests only).
    pub platform: Option<Platform>,
    /// The manifest list or index it was chosen from, stored as well.
    pub index_digest: Option<Digest>,
}

/// One entry of the store's list of names, as [`Store::list`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedImage {
    /// The name (`org.opencontainers.image.ref.name`); `None` for an entry without one,
    /// which another tool may have written.
    pub name: Option<String>,
    /// The digest as `index.json` records it (shown even when it is not a usable digest).
    pub digest: String,
    /// The manifest; `None` when the recorded digest is not a valid sha256 digest.
    pub manifest: Option<Descriptor>,
    pub platform: Option<Platform>,
    pub index_digest: Option<Digest>,
    /// The entry names a manifest list or index itself: a whole multi-platform image, whose
    /// platforms have entries of their own ([`crate::sets`]).
    pub is_index: bool,
}

impl From<&IndexEntry> for ListedImage {
    fn from(e: &IndexEntry) -> Self {
        ListedImage {
            name: e.ref_name().map(str::to_owned),
            digest: e.digest.clone(),
            manifest: e.digest().ok().map(|digest| Descriptor {
                media_type: e.media_type.clone(),
                digest,
                size: e.size,
            }),
            platform: e.platform.as_ref().map(IndexPlatform::to_platform),
            index_digest: e.index_digest().and_then(|d| Digest::parse(d).ok()),
            is_index: e.is_index(),
        }
    }
}

impl Store {
    /// Names `image` `name` (a canonical reference such as `docker.io/nvidia/cuda:TAG`),
    /// replacing the entry of the same name and platform. Refuses (`Corrupt`, nothing
    /// changed) unless everything the image reaches is stored: `index.json` never names
    /// an incomplete image.
    pub fn name(&self, name: &str, image: &NamedImage) -> Result<(), StoreError> {
        let platform = match &image.platform {
            Some(p) => Some(p.clone()),
            None => self.config_platform(&image.manifest)?,
        };
        self.check_complete(name, image)?;
        let mut annotations = BTreeMap::new();
        annotations.insert(REF_NAME.to_owned(), name.to_owned());
        if let Some(idx) = &image.index_digest {
            annotations.insert(INDEX_DIGEST_ANNOTATION.to_owned(), idx.to_string());
        }
        let entry = IndexEntry {
            media_type: image.manifest.media_type.clone(),
            digest: image.manifest.digest.to_string(),
            size: image.manifest.size,
            platform: platform.as_ref().map(IndexPlatform::from),
            annotations,
            other: Map::new(),
        };
        let from_index = image.index_digest.as_ref().map(ToString::to_string);
        let is_platform = !entry.is_index();
        self.update_index(|i| {
            if is_platform {
                // This platform now comes from another index (or none): the name no longer
                // is the whole image its index entry names.
                i.manifests.retain(|e| {
                    !(e.ref_name() == Some(name)
                        && e.is_index()
                        && from_index.as_deref() != Some(e.digest.as_str()))
                });
            }
            i.upsert(entry);
        })
    }

    /// Gives every platform stored as `source` the name `target` as well (entries of
    /// `target` for the same platforms are replaced). Returns how many entries were named.
    pub fn tag(&self, source: &str, target: &str) -> Result<usize, StoreError> {
        self.update_index(|idx| {
            let copies: Vec<_> = idx
                .find(source)
                .cloned()
                .map(|mut e| {
                    e.annotations.insert(REF_NAME.to_owned(), target.to_owned());
                    e
                })
                .collect();
            let n = copies.len();
            for e in copies {
                idx.upsert(e);
            }
            n
        })
    }

    /// Removes the entries named `name`: every platform's, or only those serving
    /// `platform` (an entry that records no platform serves none). Blobs stay until `gc`.
    /// Removing a platform of a whole multi-platform image removes its index entry too (the
    /// name is no longer the whole index; the other platforms stay, each as pulled alone).
    /// Returns how many platform entries were removed (an index entry alone counts as one).
    pub fn untag(&self, name: &str, platform: Option<&Platform>) -> Result<usize, StoreError> {
        self.update_index(|idx| {
            let serves = |e: &IndexEntry| match (platform, &e.platform) {
                (None, _) => true,
                (Some(w), Some(p)) => w.matches(&p.to_platform()),
                (Some(_), None) => false,
            };
            let (mut platforms, mut indexes) = (0, 0);
            idx.manifests.retain(|e| {
                let gone = e.ref_name() == Some(name) && serves(e);
                if gone {
                    *if e.is_index() {
                        &mut indexes
                    } else {
                        &mut platforms
                    } += 1;
                }
                !gone
            });
            if platforms > 0 {
                idx.manifests
                    .retain(|e| !(e.ref_name() == Some(name) && e.is_index()));
            }
            platforms.max(indexes.min(1))
        })
    }

    /// Every entry of `index.json`, in its order.
    pub fn list(&self) -> Result<Vec<ListedImage>, StoreError> {
        Ok(self
            .read_index()?
            .manifests
            .iter()
            .map(ListedImage::from)
            .collect())
    }

    /// Reads a stored manifest (or index), checked against its digest and size, and
    /// parses it.
    pub fn read_manifest(&self, desc: &Descriptor) -> Result<Manifest, StoreError> {
        let bytes = self.read_verified(&desc.digest, Some(desc.size), MAX_MANIFEST_BYTES)?;
        manifest::parse(&bytes, Some(&desc.media_type))
            .map_err(|e| StoreError::Corrupt(format!("manifest {}: {e}", desc.digest)))
    }

    /// Reads a small stored blob whole, checked against its digest (and `size`, if known).
    pub(crate) fn read_verified(
        &self,
        digest: &Digest,
        size: Option<u64>,
        limit: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let bytes = self.read_blob(digest, limit)?;
        let wrong_size = size.is_some_and(|s| s != bytes.len() as u64);
        if wrong_size || Digest::of(&bytes) != *digest {
            return Err(StoreError::BlobCorrupt {
                digest: digest.clone(),
                image: None,
                reason: format!("hashes to {} ({} bytes)", Digest::of(&bytes), bytes.len()),
            });
        }
        Ok(bytes)
    }

    /// The platform an image manifest's config records; `None` for an index.
    fn config_platform(&self, desc: &Descriptor) -> Result<Option<Platform>, StoreError> {
        let Manifest::Image(m) = self.read_manifest(desc)? else {
            return Ok(None);
        };
        let bytes =
            self.read_verified(&m.config.digest, Some(m.config.size), MAX_MANIFEST_BYTES)?;
        let config: ImageConfig = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Corrupt(format!("config {} is not JSON: {e}", m.config.digest))
        })?;
        Ok(Some(Platform {
            os: config.os,
            architecture: config.architecture,
            variant: config.variant,
        }))
    }

    /// Whether every blob `image` reaches is stored.
    pub(crate) fn check_complete(&self, name: &str, image: &NamedImage) -> Result<(), StoreError> {
        let incomplete = |what: String| StoreError::Corrupt(format!("{name}: {what}"));
        let mut missing = None;
        self.walk(
            &image.manifest,
            image.index_digest.as_ref(),
            &mut |r: &Reached| {
                let stored = match r.size {
                    Some(size) => self.has_blob(&r.digest, size),
                    None => self.has_blob_file(&r.digest),
                };
                if !stored && missing.is_none() {
                    missing = Some(format!("{} {} is not stored", r.role, r.digest));
                }
                stored
            },
        )
        .map_err(|e| incomplete(e.to_string()))?;
        match missing {
            Some(what) => Err(incomplete(format!("{what}, so the image cannot be named"))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
pub(crate) mod tests {
    use super::*;
    use crate::closure::BlobRole;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
            .block_on(f)
    }

    /// Stores a one-layer image for `arch`; returns its manifest's descriptor.
    pub(crate) fn put_image(store: &Store, arch: &str, layer: &[u8]) -> Descriptor {
        let layer_d = Digest::of(layer);
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
        );
        let config_d = Digest::of(config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_d}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_d}","size":{}}}]}}"#,
            manifest::OCI_MANIFEST,
            config.len(),
            layer.len()
        );
        let manifest_d = Digest::of(manifest.as_bytes());
        block_on(async {
            store.put_bytes(&layer_d, layer).await?;
            store.put_bytes(&config_d, config.as_bytes()).await?;
            store.put_bytes(&manifest_d, manifest.as_bytes()).await
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Descriptor {
            media_type: manifest::OCI_MANIFEST.into(),
            digest: manifest_d,
            size: manifest.len() as u64,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&tmp.path().join("s")).unwrap_or_else(|e| panic!("{e}"));
        (tmp, store)
    }

    fn platform(arch: &str) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }

    #[test]
    fn name_tag_untag_and_list_keep_one_entry_per_name_and_platform() {
        let (_t, store) = store();
        let amd = put_image(&store, "amd64", b"amd layer");
        let arm = put_image(&store, "arm64", b"arm layer");
        let named = |m: &Descriptor| NamedImage {
            manifest: m.clone(),
            platform: None,
            index_digest: None,
        };
        store
            .name("x/a:1", &named(&amd))
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .name("x/a:1", &named(&arm))
            .unwrap_or_else(|e| panic!("{e}"));
        // The same name and platform again replaces, not adds.
        store
            .name("x/a:1", &named(&amd))
            .unwrap_or_else(|e| panic!("{e}"));
        let listed = store.list().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(
            listed
                .iter()
                .map(|l| l.platform.clone())
                .collect::<Vec<_>>(),
            [Some(platform("arm64")), Some(platform("amd64"))],
            "the platform comes from the config when not given"
        );
        assert_eq!(listed[1].manifest.as_ref(), Some(&amd));

        assert_eq!(store.tag("x/a:1", "y/b:2").unwrap_or(0), 2);
        assert_eq!(store.tag("missing", "y/b:3").unwrap_or(9), 0);
        assert_eq!(
            store.untag("y/b:2", Some(&platform("arm64"))).unwrap_or(0),
            1
        );
        let names: Vec<_> = store
            .list()
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .filter_map(|l| l.name)
            .collect();
        assert_eq!(names, ["x/a:1", "x/a:1", "y/b:2"]);
        assert_eq!(store.untag("x/a:1", None).unwrap_or(0), 2);
        assert_eq!(store.untag("x/a:1", None).unwrap_or(9), 0);
    }

    #[test]
    fn an_image_whose_blobs_are_not_all_stored_is_not_named() {
        let (_t, store) = store();
        let amd = put_image(&store, "amd64", b"layer");
        store
            .remove_blob(&Digest::of(b"layer"))
            .unwrap_or_else(|e| panic!("{e}"));
        let image = NamedImage {
            manifest: amd,
            platform: Some(platform("amd64")),
            index_digest: None,
        };
        let err = store.name("x/a:1", &image).expect_err("a layer is missing");
        assert!(err.to_string().contains("layer"), "{err}");
        assert!(store.list().unwrap_or_else(|e| panic!("{e}")).is_empty());

        // A manifest list recorded by digest must be stored as well.
        put_image(&store, "amd64", b"layer");
        let image = NamedImage {
            index_digest: Some(Digest::of(b"no such index")),
            ..image
        };
        let err = store
            .name("x/a:1", &image)
            .expect_err("the index is missing");
        assert!(
            err.to_string().contains(&BlobRole::Index.to_string()),
            "{err}"
        );
    }
}
