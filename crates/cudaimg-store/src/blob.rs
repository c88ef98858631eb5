//! Verified, resumable blob writes.
//!
//! A download streams into `ingest/<hex>.partial`, hashed while written, and is renamed into
//! `blobs/sha256/<hex>` only when digest and size match. The partial file is also the
//! blob's cross-process lock (`flock`): two cudaimg processes that need the same blob take
//! turns, and the second finds it committed instead of downloading it again.
//!
//! A partial file outlives a failed or killed pull, so the next pull resumes it. Its bytes
//! are never trusted: the prefix is re-hashed on resume, and the final digest check covers
//! every byte, whichever run or source wrote it.
//!
//! Confinement: the partial file is opened `O_NOFOLLOW` through the `ingest` directory's
//! handle; a link or special file planted at its name is removed (the entry itself) and a
//! regular file created instead. Before and after the rename into `blobs/sha256/`, the name
//! is checked to be the very file this writer opened and hashed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::confine::{describe, file_type, same_file, StoreDir};
use super::{Store, StoreError};
use cudaimg_oci::digest::{Digest, Hasher};

/// Why a blob could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The bytes were not the expected ones: a source is at fault, the disk is not.
    #[error("content hashes to {actual} ({actual_size} bytes), expected {expected} ({expected_size} bytes)")]
    Mismatch {
        expected: Digest,
        expected_size: u64,
        actual: Digest,
        actual_size: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why bytes could not be added to a blob.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// More bytes arrived than the descriptor allows.
    #[error("more than the expected {expected_size} bytes arrived")]
    TooLong { expected_size: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A blob being written, holding the blob's lock until dropped.
///
/// Bytes are gathered into 1 MiB pieces; each piece is hashed and written on a blocking
/// thread while the next one arrives (double buffering), so on a multi-core machine the
/// network, the hash and the disk work at once. Pieces go to their offsets, so the file is
/// always exactly the hashed bytes once the last piece is flushed.
pub struct BlobWriter {
    file: Arc<std::fs::File>,
    /// The partial file's path, for messages.
    partial: PathBuf,
    dirs: Arc<Dirs>,
    /// `None` while a piece is being hashed and written.
    hasher: Option<Hasher>,
    pending: Option<PieceTask>,
    buf: Vec<u8>,
    /// Bytes accepted so far (written, in flight, or buffered).
    len: u64,
    expected: Digest,
    size: u64,
    /// Bytes that were already in the partial file when it was opened.
    resumed: u64,
    /// The hashed prefix, as [`RangedWriter`]s see it: they may write only past it.
    /// `u64::MAX` while no ranged fill is open.
    hashed: Arc<AtomicU64>,
    /// Where the hashed prefix is announced to followers ([`super::follow`]).
    board: Arc<super::follow::Board>,
}

/// Writes a blob's bytes at their offsets, for a parallel fill from several sources, while
/// the [`BlobWriter`] it came from hashes the contiguous prefix ([`BlobWriter::absorb`]).
/// Cheap to clone, one per worker. Every write is bounds-checked: it must lie within the blob
/// and past the hashed prefix, so bytes already hashed can never change under the hash.
#[derive(Clone)]
pub struct RangedWriter {
    file: Arc<std::fs::File>,
    partial: Arc<PathBuf>,
    digest: Digest,
    size: u64,
    hashed: Arc<AtomicU64>,
}

impl RangedWriter {
    /// Writes `data` at `pos` on a blocking thread (callers hand over 1 MiB pieces, so the
    /// network, the disk and the hash overlap). Returns the number of bytes written.
    pub async fn write_at(&self, pos: u64, data: Vec<u8>) -> Result<u64, StoreError> {
        let len = data.len() as u64;
        let from = self.hashed.load(Ordering::Acquire);
        let end = pos.saturating_add(len);
        if pos < from || end > self.size {
            return Err(StoreError::OutOfRange {
                digest: self.digest.clone(),
                start: pos,
                end,
                from: from.min(self.size),
                size: self.size,
            });
        }
        let (file, path) = (self.file.clone(), self.partial.clone());
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&data, pos).map_err(|e| io_at(&e, &path))
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        Ok(len)
    }
}

const PIECE: usize = 1 << 20;

/// A piece being hashed and written; gives back the hasher and the buffer for reuse.
type PieceTask = tokio::task::JoinHandle<Result<(Hasher, Vec<u8>), StoreError>>;

/// The directories a blob write works in, and its names there.
struct Dirs {
    ingest: StoreDir,
    blobs: StoreDir,
    /// `<hex>.partial` in `ingest`.
    partial: String,
    /// `<hex>` in `blobs/sha256`.
    hex: String,
}

impl Dirs {
    fn sidecar(&self) -> String {
        format!("{}.prefix", self.hex)
    }
}

impl BlobWriter {
    /// Opens the blob's partial file, waiting for any other process writing the same blob.
    /// `Ok(None)` means the blob is already stored (perhaps by that other process).
    pub(super) async fn open(
        store: &Store,
        expected: Digest,
        size: u64,
    ) -> Result<Option<Self>, StoreError> {
        let dirs = Arc::new(Dirs {
            ingest: store.ingest()?,
            blobs: store.blobs()?,
            partial: format!("{}.partial", expected.hex()),
            hex: expected.hex().to_owned(),
        });
        let partial = dirs.ingest.join(&dirs.partial);
        let board = store.board.clone();
        let store = store.clone();
        let d = dirs.clone();
        let opened = tokio::task::spawn_blocking(move || {
            lock_partial(&store, &d, &expected, size).map(|o| (o, expected))
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        let (Some((file, hasher)), expected) = opened else {
            return Ok(None);
        };
        let resumed = hasher.len();
        let file = Arc::new(file);
        board.open(&expected, &file, resumed);
        Ok(Some(BlobWriter {
            board,
            file,
            partial,
            dirs,
            hasher: Some(hasher),
            pending: None,
            buf: Vec::with_capacity(PIECE),
            len: resumed,
            expected,
            size,
            resumed,
            hashed: Arc::new(AtomicU64::new(u64::MAX)),
        }))
    }

    /// Bytes in the blob so far.
    pub fn written(&self) -> u64 {
        self.len
    }

    /// Bytes found from an earlier, interrupted download.
    pub fn resumed(&self) -> u64 {
        self.resumed
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), WriteError> {
        if self.len + chunk.len() as u64 > self.size {
            return Err(WriteError::TooLong {
                expected_size: self.size,
            });
        }
        self.buf.extend_from_slice(chunk);
        self.len += chunk.len() as u64;
        if self.buf.len() >= PIECE {
            self.send_piece().await?;
        }
        Ok(())
    }

    /// Waits for the piece in flight, if any, and takes the hasher back.
    async fn settle(&mut self) -> Result<Vec<u8>, StoreError> {
        let Some(task) = self.pending.take() else {
            return Ok(Vec::with_capacity(PIECE));
        };
        let (hasher, mut spare) = task
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        self.hasher = Some(hasher);
        // Everything accepted but the buffer is in the file and hashed.
        self.board
            .advance(&self.expected, self.len - self.buf.len() as u64);
        spare.clear();
        Ok(spare)
    }

    /// Hands the buffered bytes to a blocking thread to hash and write at their offset.
    async fn send_piece(&mut self) -> Result<(), StoreError> {
        let spare = self.settle().await?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, spare);
        let at = self.len - data.len() as u64;
        let mut hasher = self.hasher.take().ok_or_else(lost_hasher)?;
        let file = self.file.clone();
        let path = self.partial.clone();
        self.pending = Some(tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            hasher.update(&data);
            file.write_all_at(&data, at).map_err(|e| io_at(&e, &path))?;
            Ok((hasher, data))
        }));
        Ok(())
    }

    /// Everything accepted is hashed and in the file.
    async fn drain(&mut self) -> Result<(), StoreError> {
        self.send_piece().await?;
        let spare = self.settle().await?;
        self.buf = spare;
        Ok(())
    }

    /// Opens a ranged fill: a [`RangedWriter`] for writing ranges at their offsets past
    /// the current prefix, while this writer hashes the prefix as it grows
    /// ([`BlobWriter::absorb`]). End it with [`BlobWriter::end_ranged`].
    pub async fn ranged(&mut self) -> Result<RangedWriter, StoreError> {
        self.drain().await?;
        self.hashed.store(self.len, Ordering::Release);
        Ok(RangedWriter {
            file: self.file.clone(),
            partial: Arc::new(self.partial.clone()),
            digest: self.expected.clone(),
            size: self.size,
            hashed: self.hashed.clone(),
        })
    }

    /// Hashes bytes that ranged writes put in the file from the current end of the
    /// contiguous prefix up to `upto`, and records the new prefix in the sidecar so a crash
    /// never resumes across a hole.
    pub async fn absorb(&mut self, upto: u64) -> Result<(), StoreError> {
        self.drain().await?;
        let from = self.len;
        if upto <= from {
            return Ok(());
        }
        let file = self.file.clone();
        let mut hasher = self.hasher.take().ok_or_else(lost_hasher)?;
        let path = self.partial.clone();
        let hasher = tokio::task::spawn_blocking(move || -> Result<Hasher, StoreError> {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; PIECE];
            let mut at = from;
            while at < upto {
                let want = usize::try_from((upto - at).min(buf.len() as u64)).unwrap_or(buf.len());
                let n = file
                    .read_at(&mut buf[..want], at)
                    .map_err(|e| io_at(&e, &path))?;
                if n == 0 {
                    return Err(io_at(
                        &std::io::Error::other("the file ended before its ranges"),
                        &path,
                    ));
                }
                hasher.update(&buf[..n]);
                at += n as u64;
            }
            Ok(hasher)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        self.hasher = Some(hasher);
        self.len = upto;
        self.hashed.fetch_max(upto, Ordering::AcqRel);
        self.board.advance(&self.expected, upto);
        let dirs = self.dirs.clone();
        tokio::task::spawn_blocking(move || write_sidecar(&dirs, upto))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// After a ranged fill: cuts off whatever lies past the contiguous prefix (ranges that
    /// finished out of order), so sequential writing continues from the prefix.
    pub async fn end_ranged(&mut self) -> Result<(), StoreError> {
        // Ranged writers still held can write nothing more.
        self.hashed.store(u64::MAX, Ordering::Release);
        self.drain().await?;
        self.truncate(self.len).await?;
        let _ = self.dirs.ingest.remove(&self.dirs.sidecar());
        Ok(())
    }

    async fn truncate(&self, at: u64) -> Result<(), StoreError> {
        let file = self.file.clone();
        let path = self.partial.clone();
        tokio::task::spawn_blocking(move || file.set_len(at).map_err(|e| io_at(&e, &path)))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// Throws away what was written, to start the blob over.
    pub async fn reset(&mut self) -> Result<(), StoreError> {
        self.buf.clear();
        let spare = self.settle().await?;
        self.buf = spare;
        self.board.restart(&self.expected);
        self.truncate(0).await?;
        self.hasher = Some(Hasher::new());
        self.len = 0;
        self.resumed = 0;
        Ok(())
    }

    /// Verifies digest and size, makes the bytes durable, and renames them into place.
    /// On a mismatch the partial bytes stay, for the caller to [`BlobWriter::reset`].
    pub async fn commit(&mut self) -> Result<(), CommitError> {
        self.drain().await?;
        let hasher = self.hasher.clone().ok_or_else(lost_hasher)?;
        let (actual, actual_size) = hasher.finish();
        if actual != self.expected || actual_size != self.size {
            return Err(CommitError::Mismatch {
                expected: self.expected.clone(),
                expected_size: self.size,
                actual,
                actual_size,
            });
        }
        let file = self.file.clone();
        let (partial, dirs) = (self.partial.clone(), self.dirs.clone());
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            file.sync_all().map_err(|e| io_at(&e, &partial))?;
            // Only the file this writer opened and hashed goes into blobs/: not a link or
            // another file put at the partial's name meanwhile.
            let ours = |st: std::io::Result<rustix::fs::Stat>| {
                st.is_ok_and(|st| {
                    file_type(&st) == rustix::fs::FileType::RegularFile && same_file(&file, &st)
                })
            };
            if !ours(dirs.ingest.stat(&dirs.partial)) {
                return Err(replaced(&partial));
            }
            dirs.ingest
                .rename_to(&dirs.partial, &dirs.blobs, &dirs.hex)?;
            if !ours(dirs.blobs.stat(&dirs.hex)) {
                // Swapped between the check and the rename: take back what went in.
                let _ = dirs.blobs.remove(&dirs.hex);
                return Err(replaced(&partial));
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        Ok(())
    }
}

impl Drop for BlobWriter {
    /// Committed or given up: followers go on from the stored blob, or stop.
    fn drop(&mut self) {
        self.board.close(&self.expected);
    }
}

fn lost_hasher() -> StoreError {
    StoreError::Io(std::io::Error::other(
        "a blob write failed earlier; start it over",
    ))
}

/// Opens and locks the partial file, then re-hashes what it holds. Retries when the file it
/// locked is no longer the one at its name (another process committed it by rename
/// meanwhile), and replaces anything at that name that is not a regular file.
fn lock_partial(
    store: &Store,
    dirs: &Dirs,
    expected: &Digest,
    size: u64,
) -> Result<Option<(std::fs::File, Hasher)>, StoreError> {
    let path = dirs.ingest.join(&dirs.partial);
    let mut planted = 0;
    loop {
        let mut file = match dirs.ingest.open_rw(&dirs.partial) {
            Ok(f) => f,
            // A link, FIFO or device where a partial download belongs is not ours: its
            // bytes would go wherever it points. Remove the entry itself and start afresh.
            Err(StoreError::Unsafe { found, .. })
                if planted < 8 && found != describe(rustix::fs::FileType::Directory) =>
            {
                planted += 1;
                dirs.ingest.remove(&dirs.partial)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        file.lock().map_err(|e| io_at(&e, &path))?;
        if store.has_blob(expected, size) {
            // Committed by someone else; an empty partial we just created is litter.
            if file.metadata().is_ok_and(|m| m.len() == 0) && is_at_name(&file, dirs) {
                let _ = dirs.ingest.remove(&dirs.partial);
            }
            return Ok(None);
        }
        if !is_at_name(&file, dirs) {
            continue;
        }
        let mut len = file.metadata().map_err(|e| io_at(&e, &path))?.len();
        // A parallel fill writes ranges out of order; its sidecar says how long the
        // contiguous, written prefix is. Bytes past it may sit beside holes.
        let sidecar = dirs.sidecar();
        let prefix = dirs.ingest.open_read(&sidecar).ok().and_then(|f| {
            let mut text = String::new();
            f.take(64).read_to_string(&mut text).ok()?;
            text.trim().parse::<u64>().ok()
        });
        if let Some(prefix) = prefix {
            if prefix < len {
                file.set_len(prefix).map_err(|e| io_at(&e, &path))?;
                len = prefix;
            }
        }
        let _ = dirs.ingest.remove(&sidecar);
        let mut hasher = Hasher::new();
        if len > size {
            file.set_len(0).map_err(|e| io_at(&e, &path))?;
        } else if len > 0 {
            file.seek(SeekFrom::Start(0))
                .map_err(|e| io_at(&e, &path))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).map_err(|e| io_at(&e, &path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        return Ok(Some((file, hasher)));
    }
}

/// Records the contiguous prefix of a ranged fill, by new temp file and rename.
fn write_sidecar(dirs: &Dirs, upto: u64) -> Result<(), StoreError> {
    let (mut f, tmp) = dirs
        .ingest
        .create_temp(&format!("{}.prefix-tmp-", dirs.hex))?;
    let res = f.write_all(upto.to_string().as_bytes());
    let res = res
        .map_err(|e| io_at(&e, &dirs.ingest.join(&tmp)))
        .and_then(|()| dirs.ingest.rename_to(&tmp, &dirs.ingest, &dirs.sidecar()));
    if res.is_err() {
        let _ = dirs.ingest.remove(&tmp);
    }
    res
}

/// Whether `file` is still the regular file at the partial's name.
fn is_at_name(file: &std::fs::File, dirs: &Dirs) -> bool {
    dirs.ingest
        .stat(&dirs.partial)
        .is_ok_and(|st| file_type(&st) == rustix::fs::FileType::RegularFile && same_file(file, &st))
}

fn replaced(partial: &std::path::Path) -> StoreError {
    StoreError::Unsafe {
        path: partial.to_owned(),
        found: "no longer the file this pull wrote".into(),
        expected: "a partial download",
    }
}

fn io_at(e: &std::io::Error, path: &std::path::Path) -> StoreError {
    let kind = e.kind();
    StoreError::from(std::io::Error::new(
        kind,
        format!("{}: {e}", path.display()),
    ))
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn ranged_writes_stay_within_the_blob_and_past_the_hashed_prefix() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&tmp.path().join("s")).unwrap_or_else(|e| panic!("{e}"));
        let data: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 253) as u8).collect();
        let digest = Digest::of(&data);
        let size = data.len() as u64;
        let mib = 1usize << 20;
        rt.block_on(async {
            let mut w = store
                .blob_writer(&digest, size)
                .await?
                .ok_or_else(|| StoreError::Corrupt("stored already".into()))?;
            let ranged = w.ranged().await?;
            let out = ranged.write_at(size - 1, vec![0, 0]).await;
            assert!(matches!(out, Err(StoreError::OutOfRange { .. })), "{out:?}");
            // Out of order: the last two MiB first, then the first.
            ranged.write_at(2 << 20, data[2 * mib..].to_vec()).await?;
            ranged
                .write_at(1 << 20, data[mib..2 * mib].to_vec())
                .await?;
            ranged.write_at(0, data[..mib].to_vec()).await?;
            w.absorb(1 << 20).await?;
            // Hashed bytes can no longer change.
            let out = ranged.write_at(0, vec![1]).await;
            assert!(matches!(out, Err(StoreError::OutOfRange { .. })), "{out:?}");
            w.absorb(size).await?;
            w.end_ranged().await?;
            let out = ranged.write_at(size - 1, vec![1]).await;
            assert!(matches!(out, Err(StoreError::OutOfRange { .. })), "{out:?}");
            w.commit().await.map_err(|e| match e {
                CommitError::Store(s) => s,
                other @ CommitError::Mismatch { .. } => StoreError::Corrupt(other.to_string()),
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(store.check_blob(&digest, size).is_ok_and(|r| r.is_none()));
    }
}
