//! A blob's answer while it downloads: a blocking thread reads the store's
//! [`BlobFollower`](cudaimg_store::BlobFollower) and hands pieces to the connection. The
//! follower hashes what it reads and fails the read that would end a wrong blob, so the
//! client never receives a complete body that is not the blob: its answer ends short, and
//! it retries.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use cudaimg_oci::digest::Digest;
use cudaimg_store::Store;

const PIECE: usize = 256 * 1024;

/// Pieces of one blob from `start`, as they are stored; an `Err` ends the answer short.
pub(crate) struct Stream {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    /// Stops the follower when the answer is dropped (the client went away).
    stop: Arc<AtomicBool>,
}

impl Stream {
    pub(crate) async fn next(&mut self) -> Option<std::io::Result<Vec<u8>>> {
        self.rx.recv().await
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Follows blob `digest` of `size` bytes from byte `start`. The bytes before `start` are
/// read and hashed but not sent, so a resumed answer is checked whole too.
pub(crate) fn follow(
    store: &Store,
    digest: &Digest,
    size: u64,
    start: u64,
    stop: Arc<AtomicBool>,
) -> Stream {
    let (tx, rx) = mpsc::channel(4);
    let mut follower = store.follow_blob(digest, size, Arc::clone(&stop));
    tokio::task::spawn_blocking(move || {
        let skipped = std::io::copy(&mut (&mut follower).take(start), &mut std::io::sink());
        if let Err(e) = skipped {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        loop {
            let mut piece = Vec::with_capacity(PIECE);
            match (&mut follower).take(PIECE as u64).read_to_end(&mut piece) {
                Ok(0) => return,
                Ok(_) => {
                    if tx.blocking_send(Ok(piece)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Stream { rx, stop }
}
