//! The closure of a name: every blob it reaches. For each entry, the manifest list it was
//! chosen from (recorded by digest only, and not descended into: a pull stores the list but
//! only its own platform's children), its manifest, and the manifest's config and layers; for
//! an entry that is itself an index, every child, recursively.
//!
//! One walk serves everything that needs it: `gc` (what to keep), `fsck` (what must be
//! there), naming (refused unless complete), and `export`, `push` and `sync` (what to send).
//! Manifests are read checked against their digest and size: a walk never follows a
//! pointer from bytes that are not what their name says.

use std::collections::BTreeSet;

use super::{Store, StoreError};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{self, Descriptor, Manifest, ManifestError, MAX_MANIFEST_BYTES};

/// Indexes nested deeper than this are not followed (real ones nest once, if at all).
const MAX_DEPTH: usize = 8;

/// What a reached blob is to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BlobRole {
    /// The manifest list or index a platform's manifest was chosen from.
    Index,
    /// An image manifest, or an index named directly, or an index's child.
    Manifest,
    Config,
    Layer,
}

impl std::fmt::Display for BlobRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobRole::Index => "manifest list",
            BlobRole::Manifest => "manifest",
            BlobRole::Config => "config",
            BlobRole::Layer => "layer",
        })
    }
}

/// One blob a name reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    pub role: BlobRole,
    pub digest: Digest,
    /// `None` for the manifest list an image was chosen from, which `index.json` records by
    /// digest only.
    pub size: Option<u64>,
}

/// Why a walk could not go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WalkError {
    #[error("manifest {digest} cannot be read: {source}")]
    Unreadable {
        digest: Digest,
        #[source]
        source: StoreError,
    },
    #[error("manifest {digest} cannot be parsed: {source}")]
    Unparsable {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
}

impl Store {
    /// Every blob stored as `name` reaches, over all its platforms, each once (first
    /// reached first). Blobs that are missing are listed too (only manifests must be
    /// readable, to be followed). `Ok(None)`: no entry has that name.
    pub fn closure(&self, name: &str) -> Result<Option<Vec<Reached>>, StoreError> {
        let index = self.read_index()?;
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut any = false;
        for entry in index.find(name) {
            any = true;
            let corrupt = |e: String| StoreError::Corrupt(format!("{name}: {e}"));
            let manifest = Descriptor {
                media_type: entry.media_type.clone(),
                digest: entry.digest().map_err(|e| corrupt(e.to_string()))?,
                size: entry.size,
            };
            let list = entry
                .index_digest()
                .map(Digest::parse)
                .transpose()
                .map_err(|e| corrupt(e.to_string()))?;
            self.walk(&manifest, list.as_ref(), &mut |r| {
                let new = seen.insert(r.digest.clone());
                if new {
                    out.push(r.clone());
                }
                new
            })
            .map_err(|e| match e {
                WalkError::Unreadable {
                    source: s @ StoreError::Unsafe { .. },
                    ..
                } => s,
                e => corrupt(e.to_string()),
            })?;
        }
        Ok(any.then_some(out))
    }

    /// Visits what `manifest` (chosen from `list`, if given) reaches. `visit` returns
    /// whether to follow a manifest's pointers; it is asked about every blob.
    pub(crate) fn walk(
        &self,
        manifest: &Descriptor,
        list: Option<&Digest>,
        visit: &mut dyn FnMut(&Reached) -> bool,
    ) -> Result<(), WalkError> {
        if let Some(d) = list {
            visit(&Reached {
                role: BlobRole::Index,
                digest: d.clone(),
                size: None,
            });
        }
        let top = Reached {
            role: BlobRole::Manifest,
            digest: manifest.digest.clone(),
            size: Some(manifest.size),
        };
        if visit(&top) {
            self.descend(manifest, 0, visit)?;
        }
        Ok(())
    }

    fn descend(
        &self,
        desc: &Descriptor,
        depth: usize,
        visit: &mut dyn FnMut(&Reached) -> bool,
    ) -> Result<(), WalkError> {
        let bytes = self
            .read_verified(&desc.digest, Some(desc.size), MAX_MANIFEST_BYTES)
            .map_err(|source| WalkError::Unreadable {
                digest: desc.digest.clone(),
                source,
            })?;
        let parsed = manifest::parse(&bytes, Some(&desc.media_type)).map_err(|source| {
            WalkError::Unparsable {
                digest: desc.digest.clone(),
                source,
            }
        })?;
        let reached = |role, d: &Descriptor| Reached {
            role,
            digest: d.digest.clone(),
            size: Some(d.size),
        };
        match parsed {
            Manifest::Image(m) => {
                visit(&reached(BlobRole::Config, &m.config));
                for l in &m.layers {
                    visit(&reached(BlobRole::Layer, l));
                }
            }
            Manifest::Index(i) => {
                for child in &i.manifests {
                    let c = &child.descriptor;
                    if visit(&reached(BlobRole::Manifest, c)) && depth < MAX_DEPTH {
                        self.descend(c, depth + 1, visit)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::names::NamedImage;

    #[test]
    fn the_closure_of_a_name_covers_every_platform_once() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&tmp.path().join("s")).unwrap_or_else(|e| panic!("{e}"));
        let shared = b"shared layer";
        let amd = crate::names::tests::put_image(&store, "amd64", shared);
        let arm = crate::names::tests::put_image(&store, "arm64", shared);
        for m in [&amd, &arm] {
            let image = NamedImage {
                manifest: m.clone(),
                platform: None,
                index_digest: None,
            };
            store
                .name("x/a:1", &image)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let closure = store
            .closure("x/a:1")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("x/a:1 has no closure"));
        let roles: Vec<BlobRole> = closure.iter().map(|r| r.role).collect();
        // Two manifests, two configs (they differ by architecture), one shared layer.
        assert_eq!(
            roles,
            [
                BlobRole::Manifest,
                BlobRole::Config,
                BlobRole::Layer,
                BlobRole::Manifest,
                BlobRole::Config
            ]
        );
        assert_eq!(closure[2].digest, Digest::of(shared));
        assert!(store
            .closure("x/none:1")
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());

        // A manifest that is not what its name says is not followed.
        let path = store.blob_path(&amd.digest);
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        bytes[0] = b' ';
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
        let err = store.closure("x/a:1").expect_err("a corrupt manifest");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }
}
