//! Reading blobs out of the store, verified on the way: every byte that leaves the store
//! (`export`, `load`, and later `push` and `serve`) goes through a [`VerifiedReader`].
//!
//! A blob was verified when it was committed, but the disk, another tool or a person may
//! have changed it since, and `pull` trusts a stored blob by its size. So a reader hashes
//! and counts what it hands out, and holds back the blob's last bytes until the whole blob
//! has matched its digest and size: a corrupt blob never reaches a consumer complete.

use std::io::Read;
use std::path::PathBuf;

use super::{Store, StoreError};
use cudaimg_oci::digest::{Digest, Hasher};

/// Why a blob's bytes cannot be handed out.
#[derive(Debug, Clone, thiserror::Error)]
#[error("blob {digest} at `{}` {reason}", path.display())]
pub struct BlobMismatch {
    pub digest: Digest,
    pub path: PathBuf,
    pub reason: String,
}

/// A stored blob, read with its digest and size checked as it streams. The read that would
/// hand out the last byte fails instead when the blob is not what its name says.
pub struct VerifiedReader {
    file: std::fs::File,
    digest: Digest,
    size: u64,
    pos: u64,
    hasher: Hasher,
    path: PathBuf,
    failed: Option<BlobMismatch>,
}

impl VerifiedReader {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The expected size: what a consumer may announce (a tar header) before reading.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The mismatch this reader found, if any.
    pub fn mismatch(&self) -> Option<&BlobMismatch> {
        self.failed.as_ref()
    }

    fn fail(&mut self, reason: String) -> std::io::Error {
        let m = BlobMismatch {
            digest: self.digest.clone(),
            path: self.path.clone(),
            reason,
        };
        self.failed = Some(m.clone());
        std::io::Error::new(std::io::ErrorKind::InvalidData, m)
    }

    /// The opened file's metadata (its identity: device, inode, times, length).
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    /// The opened file itself, rewound, for a sender that reads it without hashing (one
    /// that checked this very file before).
    pub fn into_file(mut self) -> std::io::Result<std::fs::File> {
        std::io::Seek::rewind(&mut self.file)?;
        Ok(self.file)
    }

    /// [`VerifiedReader::check`], then the file that was hashed, rewound.
    pub fn into_checked_file(mut self) -> Result<std::fs::File, StoreError> {
        self.check_to_end()?;
        Ok(self.into_file()?)
    }

    /// Reads to the end, checking everything; `Err` names what is wrong.
    pub fn check(mut self) -> Result<(), StoreError> {
        self.check_to_end()
    }

    fn check_to_end(&mut self) -> Result<(), StoreError> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match self.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    return Err(match self.failed.take() {
                        Some(m) => StoreError::BlobCorrupt {
                            digest: m.digest,
                            image: None,
                            reason: m.reason,
                        },
                        None => e.into(),
                    })
                }
            }
        }
    }
}

impl Read for VerifiedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(m) = &self.failed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                m.clone(),
            ));
        }
        if self.pos == self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.size - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(self.fail(format!(
                "is {} bytes, {} were expected",
                self.pos, self.size
            )));
        }
        self.hasher.update(&buf[..n]);
        if self.pos + n as u64 == self.size {
            // The last bytes: they go out only if the whole blob is right.
            let mut probe = [0u8; 1];
            if self.file.read(&mut probe)? != 0 {
                let len = self.file.metadata().map_or(0, |m| m.len());
                return Err(self.fail(format!("is {len} bytes, {} were expected", self.size)));
            }
            let (actual, _) = self.hasher.clone().finish();
            if actual != self.digest {
                return Err(self.fail(format!("hashes to {actual}")));
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Store {
    /// Opens blob `digest`, `size` bytes long, as a reader that verifies both as it streams.
    /// The blob must be a regular file: a link in its place is refused, never followed.
    pub fn open_blob(&self, digest: &Digest, size: u64) -> Result<VerifiedReader, StoreError> {
        let blobs = self.blobs()?;
        let file = blobs.open_read(digest.hex())?;
        Ok(VerifiedReader {
            file,
            digest: digest.clone(),
            size,
            pos: 0,
            hasher: Hasher::new(),
            path: blobs.join(digest.hex()),
            failed: None,
        })
    }

    /// Opens blob `digest` as a plain file, for senders that hand the file to the kernel
    /// (`sendfile`) and so cannot hash what passes: `serve` without `--verify-reads`. It
    /// is confined like [`Store::open_blob`] (a link or special file is refused) and its
    /// size must be `size`. Its content is trusted as verified when it was committed: blob
    /// files appear only by rename after their digest matched, so one that exists is whole.
    pub fn open_blob_file(&self, digest: &Digest, size: u64) -> Result<std::fs::File, StoreError> {
        let file = self.blobs()?.open_read(digest.hex())?;
        let len = file.metadata()?.len();
        if len != size {
            return Err(StoreError::BlobCorrupt {
                digest: digest.clone(),
                image: None,
                reason: format!("is {len} bytes, {size} were expected"),
            });
        }
        Ok(file)
    }

    /// Re-hashes a stored blob. `Ok(Some(why))` when it is stored but wrong (or not a
    /// regular file); `Ok(None)` when it is right.
    pub fn check_blob(&self, digest: &Digest, size: u64) -> Result<Option<String>, StoreError> {
        let res = self.open_blob(digest, size).and_then(VerifiedReader::check);
        match res {
            Ok(()) => Ok(None),
            Err(StoreError::BlobCorrupt { reason, .. }) => Ok(Some(reason)),
            Err(StoreError::Unsafe { found, .. }) => Ok(Some(format!("is {found}"))),
            Err(e) => Err(e),
        }
    }

    /// Removes a stored blob (a link in its place is removed itself, not its target).
    pub fn remove_blob(&self, digest: &Digest) -> Result<(), StoreError> {
        self.blobs()?.remove(digest.hex())
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn store_with(bytes: &[u8]) -> (tempfile::TempDir, Store, Digest) {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&tmp.path().join("s")).unwrap_or_else(|e| panic!("{e}"));
        let digest = Digest::of(bytes);
        std::fs::write(store.blob_path(&digest), bytes).unwrap_or_else(|e| panic!("{e}"));
        (tmp, store, digest)
    }

    #[test]
    fn a_good_blob_reads_whole() {
        let data = vec![7u8; 3 << 20];
        let (_t, store, digest) = store_with(&data);
        let mut out = Vec::new();
        let mut r = store
            .open_blob(&digest, data.len() as u64)
            .unwrap_or_else(|e| panic!("{e}"));
        r.read_to_end(&mut out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, data);
    }

    #[test]
    fn a_flipped_blob_never_hands_out_its_last_bytes() {
        let data: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
        let (_t, store, digest) = store_with(&data);
        let mut flipped = data.clone();
        flipped[100] ^= 1;
        std::fs::write(store.blob_path(&digest), &flipped).unwrap_or_else(|e| panic!("{e}"));
        let mut r = store
            .open_blob(&digest, data.len() as u64)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        let err = r
            .read_to_end(&mut out)
            .expect_err("a corrupt blob must fail");
        assert!(out.len() < data.len(), "the whole blob was handed out");
        assert!(err.to_string().contains(digest.as_str()), "{err}");
        assert!(r.mismatch().is_some());
        assert!(store
            .check_blob(&digest, data.len() as u64)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_some());

        // Longer and shorter than the descriptor says: refused as well.
        std::fs::write(store.blob_path(&digest), [&data[..], b"x"].concat())
            .unwrap_or_else(|e| panic!("{e}"));
        let why = store.check_blob(&digest, data.len() as u64);
        assert!(
            matches!(&why, Ok(Some(w)) if w.contains("bytes")),
            "{why:?}"
        );
        std::fs::write(store.blob_path(&digest), &data[1..]).unwrap_or_else(|e| panic!("{e}"));
        let why = store.check_blob(&digest, data.len() as u64);
        assert!(
            matches!(&why, Ok(Some(w)) if w.contains("bytes")),
            "{why:?}"
        );
    }

    #[test]
    fn a_linked_blob_is_not_followed() {
        let data = b"hello".to_vec();
        let (t, store, digest) = store_with(&data);
        let outside = t.path().join("outside");
        std::fs::rename(store.blob_path(&digest), &outside).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&outside, store.blob_path(&digest))
            .unwrap_or_else(|e| panic!("{e}"));
        let res = store.open_blob(&digest, 5);
        assert!(matches!(res, Err(StoreError::Unsafe { .. })));
        store.remove_blob(&digest).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&outside).unwrap_or_default(), data);
    }
}
