//! The run's one [`Session`]: the settings it was asked for, and the parts every command
//! shares, each set up on first use (configuration, HTTP clients, the store, and what the run
//! learns about each source). Every command that reads from sources gets them here
//! ([`Session::sources`]), so each reads the mirrors' health record; the run writes it back
//! once, explicitly ([`Session::save_health`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::error::SessionError;
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

/// One run's shared state, built once from [`Settings`]: the configuration, the HTTP
/// clients, what the run has learned about each source, and the store. Each part is set up
/// when a command first needs it, so a command that does not use the network builds no
/// client, and a command that only reads never creates a store.
pub struct Session {
    pub settings: Settings,
    config: OnceLock<Config>,
    http: OnceLock<HttpClients>,
    store: OnceLock<Store>,
    /// What the run has learned about each source, and where its health record goes.
    health: HealthRecord,
}

/// The mirrors' health across runs, as one run holds it: what the run learned about each
/// source ([`SourceMemory`], shared by every command's sources), the store the record was
/// read from, and whether it was written back. Cheap to clone: a binary that may end the
/// process early (a closed stdout) keeps a clone to save it first.
#[derive(Clone, Default)]
pub struct HealthRecord {
    memory: SourceMemory,
    /// `None` until the record is read; then `Some(None)` when there was no store.
    from: Arc<OnceLock<Option<Store>>>,
    saved: Arc<AtomicBool>,
}

impl HealthRecord {
    /// Writes back what this run learned, merged into the record as it is now (another run
    /// may have written it meanwhile); once per run, later calls do nothing (a second fold
    /// would count the same timeout twice). Best effort: a store that cannot be written (a
    /// read-only mount) only means the next run learns it again.
    pub fn save(&self) {
        let Some(Some(store)) = self.from.get() else {
            return;
        };
        if self.saved.swap(true, Ordering::SeqCst) {
            return;
        }
        let current = store.read_state(STATE_FILE).ok().flatten();
        if let Some(bytes) = self.memory.health_to_save(current.as_deref()) {
            let _ = store.write_state(STATE_FILE, &bytes);
        }
    }
}

impl Session {
    pub fn new(settings: Settings) -> Self {
        Session {
            settings,
            config: OnceLock::new(),
            http: OnceLock::new(),
            store: OnceLock::new(),
            health: HealthRecord::default(),
        }
    }

    /// Reads, once, what earlier runs recorded about the mirrors' health, from the store if
    /// there is one (a command that reads never creates a store for it).
    fn load_health(&self) {
        self.health.from.get_or_init(|| {
            let store = self.existing_store().ok()?;
            // A damaged or planted file is only a lost hint: start from an empty record.
            let bytes = store.read_state(STATE_FILE).ok().flatten();
            self.health.memory.load_health(bytes.as_deref());
            Some(store)
        });
    }

    /// Writes back what this run learned about the mirrors' health (see
    /// [`HealthRecord::save`]). Called by the command's owner when the run's source work is
    /// done: explicitly, since a process that exits early runs no destructor.
    pub fn save_health(&self) {
        self.health.save();
    }

    /// The run's health record, for a caller that must save it on a path that never
    /// returns here (the binary, before it exits early).
    pub fn health_record(&self) -> HealthRecord {
        self.health.clone()
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
        Ok(self.health.memory.sources(
            self.config()?,
            &name.image.registry,
            name.via_mirror.as_deref(),
            self.http()?,
        ))
    }
}
