//! Which blobs of the image being handed over the pull has stored so far, and whether it
//! ended: the archive writer and the relay's answers wait here for each blob they need.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};

use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::Descriptor;
use cudaimg_store::{Store, StoreError};

#[derive(Default)]
pub(crate) struct Arrivals {
    state: Mutex<ArrivalState>,
    changed: Condvar,
}

#[derive(Default)]
pub(crate) struct ArrivalState {
    stored: HashSet<Digest>,
    ended: Ended,
}

/// Whether the pull is over, and how.
#[derive(Default)]
enum Ended {
    #[default]
    Running,
    /// Every blob is stored.
    Stored,
    Failed(String),
}

impl Arrivals {
    fn update(&self, f: impl FnOnce(&mut ArrivalState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
        self.changed.notify_all();
    }

    /// The pull stored `digest`, verified.
    pub(crate) fn stored(&self, digest: &Digest) {
        self.update(|s| {
            s.stored.insert(digest.clone());
        });
    }

    /// The pull ended: `Ok` with every blob stored, `Err` with why it failed.
    pub(crate) fn ended(&self, how: Result<(), String>) {
        self.update(|s| {
            s.ended = match how {
                Ok(()) => Ended::Stored,
                Err(why) => Ended::Failed(why),
            }
        });
    }

    /// The command gave up (a drop without an end): waiters stop waiting.
    pub(crate) fn abandon(&self) {
        self.update(|s| {
            if matches!(s.ended, Ended::Running) {
                s.ended = Ended::Failed("the command ended".into());
            }
        });
    }

    /// Blocks until `blob` is in the store, or the pull failed.
    pub(crate) fn wait(&self, store: &Store, blob: &Descriptor) -> Result<(), StoreError> {
        let gone = || StoreError::Io(std::io::Error::other("the pull was abandoned"));
        let mut s = self.state.lock().map_err(|_| gone())?;
        loop {
            if s.stored.contains(&blob.digest) {
                return Ok(());
            }
            match &s.ended {
                Ended::Failed(why) => {
                    return Err(StoreError::Io(std::io::Error::other(format!(
                        "the pull failed before {} was stored: {why}",
                        blob.digest
                    ))))
                }
                // Ended well: whatever was stored already is in the store.
                Ended::Stored => return Ok(()),
                Ended::Running if store.has_blob(&blob.digest, blob.size) => return Ok(()),
                Ended::Running => s = self.changed.wait(s).map_err(|_| gone())?,
            }
        }
    }
}
