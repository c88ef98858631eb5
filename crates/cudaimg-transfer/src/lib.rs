//! The transfer engine: resolves an image through the sources and moves its blobs into the
//! store, verified. Commands (`pull` now; `sync` and `build` later) drive it; it prints
//! nothing and reports through [`cudaimg_oci::progress::Reporter`].

pub mod archive;
mod blob;
mod copy;
mod error;
pub mod handover;
mod lock;
mod parallel;
mod pull;
mod push;
mod resolve;

pub use copy::{copy, CopySource, PlatformChoice};
pub use error::FetchError;
pub use lock::Locked;
pub use pull::{LayerReport, PullError, PullReport, PullTarget};
pub use push::{
    push, BlobReport, ChannelReader, Destination, DestinationFigures, PushError, PushOptions,
    PushReport, StoreSource,
};
pub use resolve::ResolvedBy;

use std::time::Duration;

use cudaimg_config::Config;
use cudaimg_mirrors::sources::SourceMemory;
use cudaimg_registry::HttpClients;
use cudaimg_store::Store;

/// Default seconds without a byte before a transfer counts as stalled.
pub const DEFAULT_STALL_SECS: u64 = 30;

/// Default number of blobs in flight at once.
pub const DEFAULT_JOBS: u16 = 4;

/// What every transfer needs: the mirror policy, the store, and shared HTTP clients.
pub struct Engine {
    pub config: Config,
    pub store: Store,
    pub http: HttpClients,
    /// Blobs downloaded concurrently.
    pub jobs: usize,
    /// A blob transfer that delivers no byte for this long is ended and resumed elsewhere.
    pub stall_timeout: Duration,
    /// Refuse a tag's digest that the official registry did not confirm.
    pub require_upstream: bool,
    /// Re-hash the blobs of an image that are stored already, and fetch again those that
    /// fail (otherwise a stored blob of the right size counts as present).
    pub verify_existing: bool,
    /// What the run has learned about each source, across references.
    pub memory: SourceMemory,
}

impl Engine {
    /// `jobs`: blobs in flight at once; `stall_timeout`: see [`Engine::stall_timeout`].
    pub fn new(
        config: Config,
        store: Store,
        jobs: usize,
        stall_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Engine {
            config,
            store,
            http: HttpClients::new(stall_timeout)?,
            jobs: jobs.max(1),
            stall_timeout,
            require_upstream: false,
            verify_existing: false,
            memory: SourceMemory::default(),
        })
    }
}
