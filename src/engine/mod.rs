//! The transfer engine: resolves an image through the sources and moves its blobs into the
//! store, verified. Commands (`pull` now; `sync` and `build` later) drive it; it prints
//! nothing and reports through [`crate::progress::Reporter`].

mod blob;
mod pull;

pub use pull::{LayerReport, PullError, PullReport};

use crate::config::Config;
use crate::registry::HttpClients;
use crate::store::Store;

/// Default number of blobs in flight at once.
pub const DEFAULT_JOBS: u16 = 4;

/// What every transfer needs: the mirror policy, the store, and shared HTTP clients.
pub struct Engine {
    pub config: Config,
    pub store: Store,
    pub http: HttpClients,
    /// Blobs downloaded concurrently.
    pub jobs: usize,
}

impl Engine {
    pub fn new(config: Config, store: Store) -> Result<Self, reqwest::Error> {
        Ok(Engine {
            config,
            store,
            http: HttpClients::new()?,
            jobs: usize::from(DEFAULT_JOBS),
        })
    }
}
