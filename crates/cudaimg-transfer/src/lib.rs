//! The transfer engine: resolves an image through the sources and moves its blobs into the
//! store, verified, in typed steps (resolve, select, plan, fetch, commit) that `pull` and
//! `lock` share and `copy`, `push` and bundles will. Commands drive it through one
//! [`Session`] per run; it prints nothing and reports through
//! [`cudaimg_oci::progress::Reporter`].

pub mod archive;
pub mod archive_in;
mod blob;
mod body_limits;
mod copy;
mod error;
mod lock;
mod parallel;
mod pull;
mod pull_all;
mod push;
mod resolve;
mod spread;
mod steps;

pub use copy::{copy, CopySource, PlatformChoice};
pub use error::FetchError;
pub use lock::Locked;
pub use pull::{
    ChosenImage, ImageSink, LayerReport, PullError, PullReport, PullTarget, UpstreamIndex,
};
pub use pull_all::{PlatformReport, PullAllReport};
pub use push::{
    push, send as send_plan, BlobReport, ChannelReader, Destination, DestinationFigures,
    Doc as PushDoc, Plan as PushPlan, PushError, PushOptions, PushReport, StoreSource,
};
pub use resolve::ResolvedBy;
pub use steps::{Committed, Downloaded, Plan, Resolved, Selected};

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use cudaimg_config::{Canonical, Config, ConfigError};
use cudaimg_mirrors::health::STATE_FILE;
use cudaimg_mirrors::sources::{SourceMemory, SourceSet};
use cudaimg_registry::HttpClients;
use cudaimg_store::{Store, StoreError};

/// Default seconds without a byte before a transfer counts as stalled.
pub const DEFAULT_STALL_SECS: u64 = 30;

/// Default number of blobs in flight at once.
pub const DEFAULT_JOBS: u16 = 4;

/// What a run was asked for, resolved from the command line and the environment (the
/// binary's raw arguments become this once; nothing below it reads arguments).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--config`: the mirror configuration, or `None` for the default search.
    pub config_path: Option<PathBuf>,
    /// `--store`: the store's root, or `None` for the default location.
    pub store_path: Option<PathBuf>,
    /// Blobs downloaded concurrently.
    pub jobs: usize,
    /// A blob transfer that delivers no byte for this long is ended and resumed elsewhere.
    pub stall_timeout: Duration,
    /// Refuse a tag's digest that the official registry did not confirm.
    pub require_upstream: bool,
    /// Re-hash the blobs of an image that are stored already, and fetch again those that
    /// fail (otherwise a stored blob of the right size counts as present).
    pub verify_existing: bool,
    /// `--mirror [REGISTRY=]URL` flags, added before the file's mirrors.
    pub mirrors: Vec<String>,
    /// `--creds`: used for every endpoint but the configured mirrors.
    pub creds: Option<cudaimg_registry::Credential>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            config_path: None,
            store_path: None,
            jobs: usize::from(DEFAULT_JOBS),
            stall_timeout: Duration::from_secs(DEFAULT_STALL_SECS),
            require_upstream: false,
            verify_existing: false,
            mirrors: Vec::new(),
            creds: None,
        }
    }
}

/// What setting up a session's parts can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot set up the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One run's shared state, built once from [`Settings`]: the configuration, the HTTP
/// clients, what the run has learned about each source, and the store. Each part is set up
/// when a command first needs it, so a command that does not use the network builds no
/// client, and a command that only reads never creates a store.
pub struct Session {
    pub settings: Settings,
    config: OnceLock<Config>,
    http: OnceLock<HttpClients>,
    store: OnceLock<Store>,
    /// What the run has learned about each source, across references and commands' steps.
    pub memory: SourceMemory,
    /// The store the health record of the mirrors was read from (`None`: there was no
    /// store), written back there when the session ends.
    health_from: OnceLock<Option<Store>>,
}

impl Session {
    pub fn new(settings: Settings) -> Self {
        Session {
            settings,
            config: OnceLock::new(),
            http: OnceLock::new(),
            store: OnceLock::new(),
            memory: SourceMemory::default(),
            health_from: OnceLock::new(),
        }
    }

    /// Reads, once, what earlier runs recorded about the mirrors' health, from the store if
    /// there is one (a command that reads never creates a store for it).
    fn load_health(&self) {
        self.health_from.get_or_init(|| {
            let store = self.existing_store().ok()?;
            // A damaged or planted file is only a lost hint: start from an empty record.
            let bytes = store.read_state(STATE_FILE).ok().flatten();
            self.memory.load_health(bytes.as_deref());
            Some(store)
        });
    }

    /// The mirror configuration, read on first use.
    pub fn config(&self) -> Result<&Config, ConfigError> {
        if let Some(c) = self.config.get() {
            return Ok(c);
        }
        let mut loaded = Config::load(self.settings.config_path.as_deref())?;
        loaded.add_mirror_flags(&self.settings.mirrors)?;
        Ok(self.config.get_or_init(|| loaded))
    }

    /// The HTTP clients every request of the run shares (one connection pool).
    pub fn http(&self) -> Result<&HttpClients, SessionError> {
        if let Some(h) = self.http.get() {
            return Ok(h);
        }
        let mut built =
            HttpClients::new(self.settings.stall_timeout).map_err(SessionError::Http)?;
        if let Some(creds) = &self.settings.creds {
            let mirrors = self
                .config()?
                .registries()
                .flat_map(|(_, r)| r.mirrors.iter().map(cudaimg_config::Endpoint::authority))
                .collect();
            built = built.with_explicit_credential(creds.clone(), mirrors);
        }
        Ok(self.http.get_or_init(|| built))
    }

    fn store_root(&self) -> Result<PathBuf, StoreError> {
        match &self.settings.store_path {
            Some(p) => Ok(p.clone()),
            None => cudaimg_config::default_store_root().ok_or(StoreError::NoLocation),
        }
    }

    /// The store, created if it does not exist yet (for commands that write).
    pub fn store(&self) -> Result<&Store, StoreError> {
        if let Some(s) = self.store.get() {
            return Ok(s);
        }
        let opened = Store::open(&self.store_root()?)?;
        Ok(self.store.get_or_init(|| opened))
    }

    /// Holds off `gc` until the guard is dropped: a pull takes it before its first blob, so
    /// nothing it stores is collected before the index names it. Taking the lock blocks, so
    /// it is taken off the async threads.
    pub async fn hold_against_gc(&self) -> Result<cudaimg_store::GcGuard, StoreError> {
        let store = self.store()?.clone();
        tokio::task::spawn_blocking(move || store.hold_against_gc())
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// The store as it is (for commands that only read): never created or changed.
    pub fn existing_store(&self) -> Result<Store, StoreError> {
        if let Some(s) = self.store.get() {
            return Ok(s.clone());
        }
        Store::open_existing(&self.store_root()?)
    }

    /// The sources for a canonical name, with this run's memory of each.
    pub fn sources(&self, name: &Canonical) -> Result<SourceSet, SessionError> {
        self.load_health();
        Ok(SourceSet::new(
            self.config()?,
            &name.image.registry,
            name.via_mirror.as_deref(),
            self.http()?,
            &self.memory,
        ))
    }
}

impl Drop for Session {
    /// Writes back what this run learned about the mirrors' health, merged into the record
    /// as it is now (another run may have written it meanwhile). Best effort: a store that
    /// cannot be written (a read-only mount) only means the next run learns it again.
    fn drop(&mut self) {
        let Some(Some(store)) = self.health_from.get() else {
            return;
        };
        let current = store.read_state(STATE_FILE).ok().flatten();
        if let Some(bytes) = self.memory.health_to_save(current.as_deref()) {
            let _ = store.write_state(STATE_FILE, &bytes);
        }
    }
}
