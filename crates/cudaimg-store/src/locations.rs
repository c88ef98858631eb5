//! Where each blob was last seen in a registry: `blob-locations.json` at the store root,
//! `{"sha256:…": ["registry.example:5000/base/cuda", …]}`, written after a successful pull
//! or push. `push` and `copy` use it for cross-repository mounts: a destination that holds
//! the blob in another repository links it (`POST ?mount=&from=`) instead of receiving it.
//!
//! It is a hint, never trusted for content: a mount is the registry's own copy of a blob by
//! digest, and a stale entry only costs one refused mount. So a damaged or missing file
//! reads as empty rather than failing a command. It is written like `index.json` (temp file,
//! fsync, rename, under the store lock; a link at its name is replaced, never followed) and
//! bounded: a few repositories per blob, the most recent first, and a cap on blobs.

use std::collections::BTreeMap;
use std::io::Read;

use super::{Store, StoreError};
use cudaimg_oci::digest::Digest;

const FILE: &str = "blob-locations.json";
/// Repositories kept per blob, most recent first.
const PER_BLOB: usize = 8;
/// Blobs kept; past this the file is reset, as a hint may be.
const MAX_BLOBS: usize = 100_000;
/// A file larger than this is not ours (8 repos x ~100 bytes x `MAX_BLOBS` fits).
const MAX_BYTES: u64 = 128 << 20;

/// Blob digest to `registry/repository` names, most recent first.
pub type BlobLocations = BTreeMap<String, Vec<String>>;

impl Store {
    /// The record, or an empty one when there is none or it cannot be read.
    pub fn blob_locations(&self) -> BlobLocations {
        self.read_locations().unwrap_or_default()
    }

    /// Where `digest` was seen (`registry/repository`), most recent first.
    pub fn locations_of(&self, digest: &Digest) -> Vec<String> {
        self.blob_locations()
            .remove(digest.as_str())
            .unwrap_or_default()
    }

    /// Records that every blob in `digests` is in repository `repo` of `registry`.
    pub fn record_locations(
        &self,
        registry: &str,
        repo: &str,
        digests: &[Digest],
    ) -> Result<(), StoreError> {
        if digests.is_empty() {
            return Ok(());
        }
        let at = format!("{registry}/{repo}");
        let _lock = match self.lock() {
            Ok(lock) => lock,
            // A hint only, and a read-only store keeps the hints it has.
            Err(e) if e.is_read_only() => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut all = self.read_locations().unwrap_or_default();
        if all.len() > MAX_BLOBS {
            all.clear();
        }
        for d in digests {
            let list = all.entry(d.to_string()).or_default();
            list.retain(|l| *l != at);
            list.insert(0, at.clone());
            list.truncate(PER_BLOB);
        }
        let bytes =
            serde_json::to_vec(&all).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        self.write_atomic(FILE, &bytes)
    }

    fn read_locations(&self) -> Option<BlobLocations> {
        let mut f = self.root_dir().ok()?.open_read(FILE).ok()?;
        let mut text = Vec::new();
        f.by_ref().take(MAX_BYTES).read_to_end(&mut text).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn records_most_recent_first_and_survives_damage() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&tmp.path().join("s")).unwrap_or_else(|e| panic!("{e}"));
        let d = Digest::of(b"layer");
        assert!(store.locations_of(&d).is_empty());
        store
            .record_locations("r:5000", "a/one", std::slice::from_ref(&d))
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .record_locations("r:5000", "b/two", std::slice::from_ref(&d))
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .record_locations("r:5000", "a/one", std::slice::from_ref(&d))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.locations_of(&d), vec!["r:5000/a/one", "r:5000/b/two"]);

        // Damage reads as empty, and the next record replaces it.
        std::fs::write(tmp.path().join("s").join(FILE), b"{not json")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(store.locations_of(&d).is_empty());
        store
            .record_locations("r:5000", "c/three", std::slice::from_ref(&d))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.locations_of(&d), vec!["r:5000/c/three"]);
    }

    #[test]
    fn a_link_at_its_name_is_replaced_not_followed() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&tmp.path().join("s")).unwrap_or_else(|e| panic!("{e}"));
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&outside, tmp.path().join("s").join(FILE))
            .unwrap_or_else(|e| panic!("{e}"));
        // Not read through the link either.
        assert!(store.blob_locations().is_empty());
        store
            .record_locations("r", "x", &[Digest::of(b"1")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&outside).unwrap_or_default(), b"keep");
        let st = std::fs::symlink_metadata(tmp.path().join("s").join(FILE))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(st.is_file());
    }
}
