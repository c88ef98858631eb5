//! Verified blob writes: stream into `ingest/`, hash while writing, and rename into
//! `blobs/sha256/` only when digest and size match.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncWriteExt, BufWriter};

use super::{Store, StoreError};
use crate::digest::{Digest, Hasher};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Why a blob could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The bytes were not the expected ones: the source is at fault, the disk is not.
    #[error("content hashes to {actual} ({actual_size} bytes), expected {expected} ({expected_size} bytes)")]
    Mismatch {
        expected: Digest,
        expected_size: u64,
        actual: Digest,
        actual_size: u64,
    },
    /// More bytes arrived than the descriptor allows.
    #[error("more than the expected {expected_size} bytes arrived")]
    TooLong { expected_size: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<std::io::Error> for CommitError {
    fn from(e: std::io::Error) -> Self {
        CommitError::Store(e.into())
    }
}

/// A blob being written. Dropped without [`BlobWriter::commit`], it removes its temp file.
pub struct BlobWriter {
    file: Option<BufWriter<tokio::fs::File>>,
    tmp: PathBuf,
    dest: PathBuf,
    hasher: Hasher,
    expected: Digest,
    size: u64,
}

impl BlobWriter {
    pub(super) async fn create(
        store: &Store,
        expected: Digest,
        size: u64,
    ) -> Result<Self, StoreError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = store.ingest_dir().join(format!(
            "{}.{}.{n}.partial",
            expected.hex(),
            std::process::id()
        ));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_at(e, &tmp))?;
        Ok(BlobWriter {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            dest: store.blob_path(&expected),
            tmp,
            hasher: Hasher::new(),
            expected,
            size,
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), CommitError> {
        if self.hasher.len() + chunk.len() as u64 > self.size {
            return Err(CommitError::TooLong {
                expected_size: self.size,
            });
        }
        self.hasher.update(chunk);
        let file = self.file.as_mut().ok_or_else(closed)?;
        file.write_all(chunk)
            .await
            .map_err(|e| io_at(e, &self.tmp))?;
        Ok(())
    }

    /// Verifies digest and size, makes the bytes durable, and renames them into place.
    pub async fn commit(mut self) -> Result<(), CommitError> {
        let mut file = self.file.take().ok_or_else(closed)?;
        let (actual, actual_size) = std::mem::take(&mut self.hasher).finish();
        if actual != self.expected || actual_size != self.size {
            return Err(CommitError::Mismatch {
                expected: self.expected.clone(),
                expected_size: self.size,
                actual,
                actual_size,
            });
        }
        file.flush().await.map_err(|e| io_at(e, &self.tmp))?;
        file.get_ref()
            .sync_all()
            .await
            .map_err(|e| io_at(e, &self.tmp))?;
        drop(file);
        tokio::fs::rename(&self.tmp, &self.dest)
            .await
            .map_err(|e| io_at(e, &self.dest))?;
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Committed writers have renamed the file away; this only cleans up failures.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn closed() -> CommitError {
    CommitError::Store(StoreError::Io(std::io::Error::other(
        "blob writer already closed",
    )))
}

fn io_at(e: std::io::Error, path: &std::path::Path) -> StoreError {
    let kind = e.kind();
    StoreError::from(std::io::Error::new(
        kind,
        format!("{}: {e}", path.display()),
    ))
}
