//! How the engine reports what it is doing. Libraries call a [`Reporter`]; only the CLI
//! decides whether that becomes progress bars, plain lines, or nothing.

use crate::digest::Digest;
use crate::platform::Platform;

/// Receives progress events. Every method has a no-op default, so a reporter implements
/// only what it shows. Calls arrive from several tasks at once.
pub trait Reporter: Send + Sync {
    /// The image is resolved: `total` bytes of config and layers, `to_fetch` of them missing.
    fn resolved(
        &self,
        _name: &str,
        _digest: &Digest,
        _platform: &Platform,
        _total: u64,
        _to_fetch: u64,
    ) {
    }
    /// The image's blobs (config and layers, of every platform pulled): how many, stored
    /// or not. Said once, right after [`Reporter::resolved`], so that a reader can tell how
    /// much of the image an interrupted run left in the store.
    fn planned(&self, _blobs: usize) {}
    /// A blob is already in the store.
    fn blob_cached(&self, _digest: &Digest, _size: u64) {}
    /// A download attempt starts at `offset` (0 unless resumed) from `source`.
    fn blob_started(&self, _digest: &Digest, _size: u64, _offset: u64, _source: &str) {}
    /// `bytes` more bytes of the blob arrived.
    fn blob_progress(&self, _digest: &Digest, _bytes: u64) {}
    /// The blob is verified and committed.
    fn blob_finished(&self, _digest: &Digest) {}
    /// A source failed for `what`; the engine moves on to the next one.
    /// A push or copy begins: `blobs` blobs of `total` bytes go to `destination`.
    fn push_planned(&self, _name: &str, _destination: &str, _blobs: usize, _total: u64) {}
    /// A blob's upload to the destination begins (it may still be skipped or mounted).
    fn upload_started(&self, _digest: &Digest, _size: u64) {}
    /// `bytes` more of the blob went into a request body (re-sent bytes too).
    fn upload_progress(&self, _digest: &Digest, _bytes: u64) {}
    /// The blob is at the destination: `how` is `skipped`, `mounted` or `uploaded`.
    fn upload_finished(&self, _digest: &Digest, _size: u64, _how: &str) {}
    /// A manifest was put at the destination under `reference`.
    fn manifest_pushed(&self, _reference: &str, _digest: &Digest) {}
    /// A line on why the run waits or changed the order of its sources ("mirror X has not
    /// answered in 2 s; asking the official registry"), shown as it happens.
    fn notice(&self, _line: &str) {}
    fn source_failed(
        &self,
        _source: &str,
        _what: &str,
        _error: &(dyn std::error::Error + 'static),
    ) {
    }
}

/// Reports nothing.
pub struct Silent;

impl Reporter for Silent {}
