//! The top-level error: every failure a command can end with, mapped once to an exit code
//! and a hint that tells the user what to do.

use crate::cli::output::OutputError;
use cudaimg_config::lockfile::LockError;
use cudaimg_config::ConfigError;
use cudaimg_cuda::TagError;
use cudaimg_mirrors::fallback::FallbackError;
use cudaimg_oci::platform::PlatformError;
use cudaimg_oci::reference::ReferenceError;
use cudaimg_store::StoreError;
use cudaimg_transfer::{PullError, SessionError};

/// Process exit codes, documented in README.md.
pub mod exit {
    /// Everything worked.
    pub const OK: u8 = 0;
    /// The operation failed: every source failed, a local I/O error, a full disk.
    pub const FAILURE: u8 = 1;
    /// The command line, a reference or the configuration file is wrong.
    pub const USAGE: u8 = 2;
    /// `verify` found a corrupt or missing blob or a broken reference.
    pub const CORRUPT: u8 = 3;
    /// The image does not exist: no source has it, or it is not in the store.
    pub const NOT_FOUND: u8 = 4;
    /// Ctrl-C (SIGINT) stopped the run; what was stored is kept (128 + SIGINT, as shells say).
    pub const INTERRUPTED: u8 = 130;
}

/// The word for an exit code in `--json`'s error objects.
pub fn kind_of(code: u8) -> &'static str {
    match code {
        exit::USAGE => "usage",
        exit::CORRUPT => "corrupt",
        exit::NOT_FOUND => "not_found",
        exit::INTERRUPTED => "interrupted",
        _ => "failure",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pull(PullError),
    #[error(transparent)]
    Push(#[from] cudaimg_transfer::PushError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Docker(#[from] cudaimg_handover::LoadError),
    #[error(transparent)]
    Tag(#[from] TagError),
    /// A registry request (a tag list) that no source could answer.
    #[error(transparent)]
    Sources(#[from] FallbackError),
    /// `build`: a torch x CUDA x Python combination that cannot work.
    #[error(transparent)]
    Refused(#[from] cudaimg_build::compat::Refusal),
    #[error(transparent)]
    Serve(#[from] cudaimg_serve::ServeError),
    /// `sync`: the spec, its selection, or what it leaves out.
    #[error(transparent)]
    Sync(#[from] cudaimg_sync::SyncError),
    /// `inventory --registry`: the registry could not be listed.
    #[error("cannot list the registry `{target}`")]
    Inventory {
        target: String,
        #[source]
        source: cudaimg_registry::RegistryError,
    },
    /// `import`: a bundle that cannot be read, or whose assumptions do not hold.
    #[error(transparent)]
    Import(#[from] cudaimg_sync::bundle::import::ImportError),
    /// `import ARCHIVE`: an image archive that cannot be read or stored.
    #[error(transparent)]
    Archive(#[from] cudaimg_transfer::archive_in::ArchiveError),
    /// `sync --to`: the bundle could not be written.
    #[error("cannot write the bundle")]
    Bundle(#[from] cudaimg_sync::bundle::BundleError),
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Usage(String),
    /// Several operations, at least one failed (each was reported already).
    #[error("{what}")]
    Failed { what: String, code: u8 },
    #[error("`{0}` is not in the store")]
    NotInStore(String),
    #[error("the store has problems: {0}")]
    Corrupt(String),
    /// A file or stream a command writes (`export -o`).
    #[error(transparent)]
    Output(#[from] OutputError),
    /// `lock` without `--trust-mirrors`, with the official registry out of reach.
    #[error("the official registry could not confirm the digest of `{reference}`, and `lock` pins only a digest it confirms")]
    LockUnconfirmed {
        reference: String,
        #[source]
        source: cudaimg_registry::RegistryError,
    },
    /// Another error with a better hint than its own (a "did you mean" from the tag list).
    #[error("{inner}")]
    WithHint { inner: Box<Error>, hint: String },
    /// `index.json`, the store's list of names, cannot be read as an OCI index.
    #[error("the store's `{}` cannot be read: {reason}", .path.display())]
    BrokenIndex {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl From<SessionError> for Error {
    /// A part of the session that could not be set up fails as it did on its own: a bad
    /// configuration is a usage error, a store error keeps its exit code.
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Config(e) => Error::Config(e),
            SessionError::Store(e) => Error::Store(e),
            SessionError::Http(e) => Error::Setup(format!("cannot set up the HTTP client: {e}")),
        }
    }
}

impl From<PullError> for Error {
    fn from(e: PullError) -> Self {
        match e {
            PullError::Session(e) => e.into(),
            e => Error::Pull(e),
        }
    }
}

impl Error {
    /// One word for the kind of failure, as `--json`'s error object says it: one per exit
    /// code, so a script can branch on either.
    pub fn kind(&self) -> &'static str {
        kind_of(self.exit_code())
    }

    /// The error as `--json` prints it: `{"kind", "message", "causes", "hint", "exit_code"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let shown = self.shown();
        let causes: Vec<String> =
            std::iter::successors(std::error::Error::source(shown), |e| e.source())
                .map(ToString::to_string)
                .collect();
        serde_json::json!({
            "kind": self.kind(),
            "message": shown.to_string(),
            "causes": causes,
            "hint": self.hint(),
            "exit_code": self.exit_code(),
        })
    }

    /// The error whose message and causes are shown: the wrapped one of a
    /// [`Error::WithHint`], which only brings its own hint.
    pub fn shown(&self) -> &Error {
        match self {
            Error::WithHint { inner, .. } => inner.shown(),
            e => e,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Reference(_) | Error::Platform(_) | Error::Config(_) | Error::Tag(_) => {
                exit::USAGE
            }
            Error::Sources(e) if e.is_not_found() => exit::NOT_FOUND,
            Error::Sources(_) => exit::FAILURE,
            Error::Lock(LockError::NotLocked { .. } | LockError::Invalid { .. }) => exit::USAGE,
            Error::Lock(_) => exit::FAILURE,
            Error::Docker(e) if e.is_corrupt() => exit::CORRUPT,
            Error::Docker(e) if e.is_usage() => exit::USAGE,
            Error::Docker(_) => exit::FAILURE,
            Error::Store(StoreError::Corrupt(_) | StoreError::BlobCorrupt { .. }) => exit::CORRUPT,
            Error::Store(StoreError::Missing(_)) => exit::NOT_FOUND,
            Error::Refused(_) => exit::USAGE,
            Error::Serve(
                cudaimg_serve::ServeError::Tls { .. } | cudaimg_serve::ServeError::Htpasswd(_),
            ) => exit::USAGE,
            Error::Serve(cudaimg_serve::ServeError::Store(
                StoreError::Corrupt(_) | StoreError::BlobCorrupt { .. },
            )) => exit::CORRUPT,
            Error::Serve(_) => exit::FAILURE,
            Error::Import(cudaimg_sync::bundle::import::ImportError::Bundle(
                cudaimg_sync::bundle::BundleError::NotABundle { .. },
            )) => exit::USAGE,
            Error::Import(cudaimg_sync::bundle::import::ImportError::Name { .. }) => exit::USAGE,
            Error::Import(_) => exit::FAILURE,
            Error::Archive(cudaimg_transfer::archive_in::ArchiveError::NotAnArchive { .. }) => {
                exit::USAGE
            }
            Error::Archive(_) => exit::FAILURE,
            Error::Bundle(cudaimg_sync::bundle::BundleError::PartSizeTooSmall { .. }) => {
                exit::USAGE
            }
            Error::Bundle(cudaimg_sync::bundle::BundleError::Store(
                StoreError::Corrupt(_) | StoreError::BlobCorrupt { .. },
            )) => exit::CORRUPT,
            Error::Bundle(_) => exit::FAILURE,
            Error::Setup(_) => exit::FAILURE,
            Error::Sync(e) if e.is_usage() => exit::USAGE,
            Error::Sync(e) if e.is_not_found() => exit::NOT_FOUND,
            Error::Sync(_) => exit::FAILURE,
            Error::Inventory { source, .. } if source.is_not_found() => exit::NOT_FOUND,
            Error::Inventory { .. } => exit::FAILURE,
            Error::Usage(_) => exit::USAGE,
            Error::Failed { code, .. } => *code,
            Error::WithHint { inner, .. } => inner.exit_code(),
            Error::LockUnconfirmed { .. } => exit::FAILURE,
            Error::NotInStore(_) => exit::NOT_FOUND,
            Error::Pull(e) if e.is_not_found() => exit::NOT_FOUND,
            Error::Corrupt(_) | Error::BrokenIndex { .. } => exit::CORRUPT,
            Error::Store(StoreError::MissingBlob { .. }) => exit::CORRUPT,
            // Not a failure: whoever read stdout has all it wanted (`| head`).
            Error::Output(OutputError::StdoutClosed) => exit::OK,
            Error::Output(e) if e.is_usage() => exit::USAGE,
            Error::Output(_) => exit::FAILURE,
            Error::Push(e) if e.is_not_found() => exit::NOT_FOUND,
            Error::Push(e) if e.is_corrupt() => exit::CORRUPT,
            Error::Store(_) | Error::Pull(_) | Error::Push(_) => exit::FAILURE,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Reference(e) => Some(e.hint()),
            Error::Config(e) => Some(e.hint()),
            Error::Lock(e) => Some(e.hint()),
            Error::Docker(e) => e.hint(),
            Error::Tag(e) => Some(e.hint()),
            Error::Sources(e) if e.is_not_found() => Some(
                "check the repository name; `cudaimg tags nvidia/cuda` lists NVIDIA's CUDA images"
                    .into(),
            ),
            Error::Sources(_) => Some(
                "`cudaimg mirrors check` measures every configured mirror; `cudaimg doctor` checks \
                 the whole setup"
                    .into(),
            ),
            Error::Refused(r) => Some(r.hint()),
            Error::WithHint { hint, .. } => Some(hint.clone()),
            Error::LockUnconfirmed { reference, .. } => Some(format!(
                "reach the official registry and lock again, or `cudaimg lock --trust-mirrors {reference}` \
                 to pin the digest the mirrors agree on (the lockfile is what CI trusts: check it)"
            )),
            Error::Setup(_) | Error::Usage(_) | Error::Failed { .. } => None,
            Error::Sync(e) => e.hint(),
            Error::Inventory { target, .. } => Some(format!(
                "the registry must serve the catalog (`/v2/_catalog`, as CNCF distribution \
                 does); for one behind a login, `docker login {}` first",
                target.split('/').next().unwrap_or(target)
            )),
            Error::Platform(_) => Some("for example `--platform linux/arm64`".into()),
            Error::Store(e) => e.hint(),
            Error::Serve(e) => e.hint(),
            Error::Import(e) => e.hint(),
            Error::Archive(e) => e.hint(),
            Error::Bundle(e) => e.hint(),
            Error::Pull(e) => e.hint(),
            Error::Push(e) => e.hint(),
            Error::NotInStore(r) => Some(format!(
                "`cudaimg images` lists what is stored; `cudaimg pull {r}` fetches it"
            )),
            Error::Output(e) => e.hint(),
            Error::BrokenIndex { path, .. } => Some(format!(
                "`index.json` only lists the stored names: move it aside \
                 (`mv {p} {p}.broken`) and pull the images again; blobs already in the store \
                 are not downloaded again, and `cudaimg verify` then checks them",
                p = path.display()
            )),
            Error::Corrupt(_) => Some(
                "`cudaimg verify --repair` deletes corrupt blobs; then pull the affected images \
                 again, which fetches whatever is missing"
                    .into(),
            ),
        }
    }
}
