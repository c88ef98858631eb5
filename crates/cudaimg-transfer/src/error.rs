//! What can go wrong moving bytes between a source and the store, as the fallback loop sees
//! it: a source's failure (retry it, or ask the next one), or the store's (nothing another
//! source could fix: give up). The protocol error never carries a store error; this type
//! carries both.

use std::time::Duration;

use cudaimg_mirrors::sources::Classify;
use cudaimg_registry::{Next, RegistryError};
use cudaimg_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for FetchError {
    fn next(&self) -> Next {
        match self {
            FetchError::Registry(e) => e.next(),
            FetchError::Store(_) => Next::GiveUp,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Registry(e) => e.retry_after(),
            FetchError::Store(_) => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            FetchError::Registry(e) => e.kind(),
            FetchError::Store(_) => "store",
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(self, FetchError::Registry(e) if e.is_not_found())
    }

    fn host_down(&self) -> bool {
        matches!(self, FetchError::Registry(e) if Classify::host_down(e))
    }
}
