//! Reading a blob while this process is still downloading it: `pull --load` hands each
//! layer to the Docker Engine as it arrives instead of after the pull.
//!
//! Every [`BlobWriter`](super::BlobWriter) announces on the store's [`Board`] how far its
//! hashed prefix reaches (the bytes that are in the file, in order, and hashed), and when
//! it starts over. A [`BlobFollower`] reads that prefix from the same open file as it
//! grows, or the committed blob once it is stored.
//!
//! A follower trusts nothing it was told: it hashes every byte it hands out, and the read
//! that would end the blob fails instead unless the bytes match digest and size. So a
//! consumer that needs the end of the stream (a registry response's last chunk, an
//! archive's last block) never gets a wrong blob complete, even when the writer met a bad
//! source and started over under the follower's feet.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::Store;
use cudaimg_oci::digest::{Digest, Hasher};

/// How often a waiting follower looks again without being told: another process may
/// commit the blob, and the caller may have given up.
const RECHECK: Duration = Duration::from_millis(250);

/// What this process's blob writers have announced, by digest.
#[derive(Default)]
pub(crate) struct Board {
    entries: Mutex<HashMap<Digest, Entry>>,
    changed: Condvar,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board").finish_non_exhaustive()
    }
}

struct Entry {
    file: Arc<std::fs::File>,
    /// Bytes from the start that are in the file and hashed.
    prefix: u64,
    /// Counts the times the writer started over: what a follower read of an earlier
    /// generation is no longer the blob's.
    generation: u64,
}

impl Board {
    fn update(&self, f: impl FnOnce(&mut HashMap<Digest, Entry>)) {
        if let Ok(mut entries) = self.entries.lock() {
            f(&mut entries);
        }
        self.changed.notify_all();
    }

    /// A writer opened `digest`'s partial file, holding `prefix` hashed bytes already.
    pub(crate) fn open(&self, digest: &Digest, file: &Arc<std::fs::File>, prefix: u64) {
        self.update(|e| {
            e.insert(
                digest.clone(),
                Entry {
                    file: file.clone(),
                    prefix,
                    generation: 0,
                },
            );
        });
    }

    /// The hashed prefix now reaches `prefix`.
    pub(crate) fn advance(&self, digest: &Digest, prefix: u64) {
        self.update(|e| {
            if let Some(entry) = e.get_mut(digest) {
                entry.prefix = entry.prefix.max(prefix);
            }
        });
    }

    /// The writer threw its bytes away to start over.
    pub(crate) fn restart(&self, digest: &Digest) {
        self.update(|e| {
            if let Some(entry) = e.get_mut(digest) {
                entry.prefix = 0;
                entry.generation += 1;
            }
        });
    }

    /// The writer is gone: committed, or given up.
    pub(crate) fn close(&self, digest: &Digest) {
        self.update(|e| {
            e.remove(digest);
        });
    }
}

/// Where a follower reads from.
enum Source {
    /// A writer's file, of the writer's `generation`.
    Partial {
        file: Arc<std::fs::File>,
        generation: u64,
    },
    /// The committed blob (or a writer's file after its commit: the same inode).
    Whole(Arc<std::fs::File>),
}

/// The bytes of one blob in order, as this process stores them (see the module docs).
/// Blocking: meant for a blocking thread.
pub struct BlobFollower {
    store: Store,
    digest: Digest,
    size: u64,
    at: u64,
    hasher: Hasher,
    source: Option<Source>,
    cancelled: Arc<AtomicBool>,
}

impl Store {
    /// Follows blob `digest` of `size` bytes: whether it is stored already, being
    /// downloaded by this process, or not started yet. Setting `cancelled` makes a waiting
    /// read fail within a fraction of a second.
    pub fn follow_blob(
        &self,
        digest: &Digest,
        size: u64,
        cancelled: Arc<AtomicBool>,
    ) -> BlobFollower {
        BlobFollower {
            store: self.clone(),
            digest: digest.clone(),
            size,
            at: 0,
            hasher: Hasher::new(),
            source: None,
            cancelled,
        }
    }
}

fn failed(reason: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, reason)
}

impl BlobFollower {
    /// How far the bytes may be read now, opening the source on first sight.
    fn available(&mut self) -> Result<Option<u64>, std::io::Error> {
        let board = &self.store.board;
        let entries = board
            .entries
            .lock()
            .map_err(|_| std::io::Error::other("a blob writer panicked"))?;
        match (entries.get(&self.digest), &self.source) {
            (Some(entry), None) => {
                self.source = Some(Source::Partial {
                    file: entry.file.clone(),
                    generation: entry.generation,
                });
                Ok(Some(entry.prefix))
            }
            (Some(entry), Some(Source::Partial { generation, .. })) => {
                if entry.generation != *generation {
                    return Err(failed(format!(
                        "blob {} was started over after a bad download while it was being read",
                        self.digest
                    )));
                }
                Ok(Some(entry.prefix))
            }
            (_, Some(Source::Whole(_))) => Ok(Some(self.size)),
            (None, source) => {
                drop(entries);
                if !self.store.has_blob(&self.digest, self.size) {
                    return match source {
                        // Given up by its writer, not stored: nothing more will come.
                        Some(Source::Partial { .. }) => Err(failed(format!(
                            "the download of blob {} stopped before it was stored",
                            self.digest
                        ))),
                        _ => Ok(None),
                    };
                }
                // Committed: a writer's file is now the blob itself (renamed); otherwise
                // open the blob. The hash at the end checks either way.
                let whole = match self.source.take() {
                    Some(Source::Partial { file, .. }) => file,
                    _ => Arc::new(
                        self.store
                            .blobs()
                            .and_then(|b| b.open_read(self.digest.hex()))
                            .map_err(std::io::Error::other)?,
                    ),
                };
                self.source = Some(Source::Whole(whole));
                Ok(Some(self.size))
            }
        }
    }

    /// Waits for a change on the board (or the recheck period).
    fn wait(&self) -> Result<(), std::io::Error> {
        if self.cancelled.load(Ordering::Acquire) {
            // Not `Interrupted`: readers retry that.
            return Err(std::io::Error::other(format!(
                "stopped waiting for blob {}",
                self.digest
            )));
        }
        let board = &self.store.board;
        let entries = board
            .entries
            .lock()
            .map_err(|_| std::io::Error::other("a blob writer panicked"))?;
        let _ = board.changed.wait_timeout(entries, RECHECK);
        Ok(())
    }

    fn file(&self) -> Option<&Arc<std::fs::File>> {
        match self.source.as_ref()? {
            Source::Partial { file, .. } | Source::Whole(file) => Some(file),
        }
    }

    /// The end of the blob: its bytes must match.
    fn check(&self) -> Result<(), std::io::Error> {
        let (actual, len) = self.hasher.clone().finish();
        if actual != self.digest || len != self.size {
            return Err(failed(format!(
                "blob {} read back as {actual} ({len} bytes): not the blob",
                self.digest
            )));
        }
        Ok(())
    }
}

impl Read for BlobFollower {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.at >= self.size {
            self.check()?;
            return Ok(0);
        }
        loop {
            let avail = self.available()?.unwrap_or(0).min(self.size);
            if avail > self.at {
                let Some(file) = self.file() else {
                    return Err(std::io::Error::other("no file to follow"));
                };
                let want = usize::try_from(avail - self.at)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let n = std::os::unix::fs::FileExt::read_at(&**file, &mut buf[..want], self.at)?;
                if n == 0 {
                    return Err(failed(format!(
                        "blob {} ended at {} bytes, before its announced length",
                        self.digest, self.at
                    )));
                }
                self.hasher.update(&buf[..n]);
                self.at += n as u64;
                if self.at == self.size {
                    // Holds back the end: the last bytes go out only with the proof.
                    self.check()?;
                }
                return Ok(n);
            }
            self.wait()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobWriter, CommitError, StoreError};

    /// A runtime, and a new store in a directory that lives as long as the guard.
    fn setup() -> (tokio::runtime::Runtime, tempfile::TempDir, Store) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&tmp.path().join("s")).unwrap_or_else(|e| panic!("{e}"));
        (rt, tmp, store)
    }

    fn blob(len: u32, seed: u32) -> (Vec<u8>, Digest) {
        let data: Vec<u8> = (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect();
        let digest = Digest::of(&data);
        (data, digest)
    }

    fn commit_error(e: CommitError) -> StoreError {
        match e {
            CommitError::Store(s) => s,
            other @ CommitError::Mismatch { .. } => StoreError::Corrupt(other.to_string()),
        }
    }

    fn writer(
        rt: &tokio::runtime::Runtime,
        store: &Store,
        digest: &Digest,
        size: u64,
    ) -> BlobWriter {
        rt.block_on(store.blob_writer(digest, size))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("stored already"))
    }

    /// Reads a follower to its end on a thread; its bytes, or its error.
    fn read_all(mut f: BlobFollower) -> std::thread::JoinHandle<std::io::Result<Vec<u8>>> {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            f.read_to_end(&mut out).map(|_| out)
        })
    }

    #[test]
    fn a_follower_reads_a_blob_as_it_is_written_and_ends_only_once_it_matches() {
        let (rt, _tmp, store) = setup();
        let (data, digest) = blob(5 << 20, 1);
        let size = data.len() as u64;
        // Started before the writer exists: it waits for one.
        let reader = read_all(store.follow_blob(&digest, size, Arc::default()));
        let mut w = writer(&rt, &store, &digest, size);
        let mut seen = Vec::new();
        for piece in data.chunks(1 << 20) {
            rt.block_on(w.write(piece))
                .unwrap_or_else(|e| panic!("{e}"));
            std::thread::sleep(Duration::from_millis(20));
            if let Ok(entries) = store.board.entries.lock() {
                seen.push(entries.get(&digest).map_or(0, |e| e.prefix));
            }
        }
        assert!(
            seen.iter().any(|p| *p > 0 && *p < size),
            "the prefix was never announced part-way: {seen:?}"
        );
        rt.block_on(w.commit())
            .map_err(commit_error)
            .unwrap_or_else(|e| panic!("{e}"));
        drop(w);
        let got = reader.join().unwrap_or_else(|_| panic!("reader panicked"));
        assert_eq!(got.unwrap_or_else(|e| panic!("{e}")), data);
        // A stored blob is followed from the store.
        let again = read_all(store.follow_blob(&digest, size, Arc::default()));
        let got = again.join().unwrap_or_else(|_| panic!("reader panicked"));
        assert_eq!(got.unwrap_or_else(|e| panic!("{e}")), data);
    }

    #[test]
    fn a_follower_fails_when_the_writer_starts_over_gives_up_or_the_bytes_are_wrong() {
        let (rt, _tmp, store) = setup();
        let (data, digest) = blob(3 << 20, 2);
        let (wrong, _) = blob(3 << 20, 3);
        let size = data.len() as u64;

        // Wrong bytes, whole: the read that would end the blob fails.
        let mut w = writer(&rt, &store, &digest, size);
        let reader = read_all(store.follow_blob(&digest, size, Arc::default()));
        rt.block_on(w.write(&wrong))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(rt.block_on(w.commit()).is_err(), "wrong bytes committed");
        let err = reader.join().unwrap_or_else(|_| panic!("reader panicked"));
        let err = err
            .err()
            .unwrap_or_else(|| panic!("a wrong blob was read to its end"));
        assert!(err.to_string().contains("not the blob"), "{err}");

        // Started over: a follower of the first bytes fails, a new one reads the blob.
        rt.block_on(w.reset()).unwrap_or_else(|e| panic!("{e}"));
        let reader = read_all(store.follow_blob(&digest, size, Arc::default()));
        // Two pieces: the first is announced once the second goes to be written.
        rt.block_on(w.write(&data[..2 << 20]))
            .unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_millis(300));
        rt.block_on(w.reset()).unwrap_or_else(|e| panic!("{e}"));
        let err = reader.join().unwrap_or_else(|_| panic!("reader panicked"));
        let err = err.err().unwrap_or_else(|| panic!("read across a restart"));
        assert!(err.to_string().contains("started over"), "{err}");
        let reader = read_all(store.follow_blob(&digest, size, Arc::default()));
        rt.block_on(w.write(&data))
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(w.commit())
            .map_err(commit_error)
            .unwrap_or_else(|e| panic!("{e}"));
        drop(w);
        let got = reader.join().unwrap_or_else(|_| panic!("reader panicked"));
        assert_eq!(got.unwrap_or_else(|e| panic!("{e}")), data);

        // Given up before the end: the follower stops; so does one told to stop waiting.
        let (other, other_digest) = blob(2 << 20, 4);
        let mut w = writer(&rt, &store, &other_digest, other.len() as u64);
        let reader = read_all(store.follow_blob(&other_digest, other.len() as u64, Arc::default()));
        rt.block_on(w.write(&other[..1 << 20]))
            .unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_millis(300));
        drop(w);
        let err = reader.join().unwrap_or_else(|_| panic!("reader panicked"));
        assert!(err.is_err(), "read past a writer that gave up");
        let stop = Arc::new(AtomicBool::new(false));
        let reader = read_all(store.follow_blob(&other_digest, other.len() as u64, stop.clone()));
        stop.store(true, Ordering::Release);
        let err = reader.join().unwrap_or_else(|_| panic!("reader panicked"));
        let err = err
            .err()
            .unwrap_or_else(|| panic!("a stopped follower read"));
        assert!(err.to_string().contains("stopped waiting"), "{err}");
    }
}
