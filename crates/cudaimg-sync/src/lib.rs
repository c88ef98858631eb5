//! Air-gapped sync (`sync`, `inventory`, `import`): carrying chosen images across a gap into
//! a registry or store on the far side, with as few bytes as possible.
//!
//! The flow, and the module that owns each step:
//! - [`spec`]: `sync.toml`, the images to carry (references, CUDA selectors in the tag
//!   grammar, tag regexes and version ranges, platforms), checked with line:column errors;
//! - [`select`]: the spec resolved against the registries' tag lists (the official registry
//!   is the authority, as for `pull`) and fetched into the store, whole or the chosen
//!   platforms of each index;
//! - [`inventory`]: what the far side holds (`cudaimg inventory`), and the exclusions that
//!   `--have` (an inventory) and `--since` (an earlier bundle) make of it;
//! - [`plan`]: what a bundle carries, whatever chose it: images (name, top digest,
//!   platforms), the blobs to carry (each once, shared layers counted once), and the blobs
//!   the far side is assumed to hold, with where that assumption comes from. `sync --plan`
//!   prints it; `bundle.json` records it;
//! - [`bundle`]: writing a plan's blobs into tar parts with `bundle.json`, and importing a
//!   bundle into a registry (through the push path) or the store.
//!
//! [`prepare`] runs the first three: spec file to selected [`StoredSet`]s and
//! [`Exclusions`], from which [`Plan::from_sets`] computes the plan.
//!
//! The crate sits above the store and below the binary: selection resolves tags through the
//! transfer layer, the bundle writer reads blobs out of the store verified, and import sends
//! them through the push path.

pub mod bundle;
pub mod inventory;
pub mod plan;
pub mod select;
pub mod spec;

use std::path::{Path, PathBuf};

use cudaimg_config::ConfigError;
use cudaimg_mirrors::fallback::FallbackError;
use cudaimg_oci::digest::Digest;
use cudaimg_oci::progress::Reporter;
use cudaimg_oci::reference::ReferenceError;
use cudaimg_store::{StoreError, StoredSet};
use cudaimg_transfer::{PullError, Session, SessionError};

use plan::{Exclusions, Plan};
use select::Selection;
use spec::{Spec, SpecError};

/// What a sync's selection can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Config(ConfigError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A selector's tag list that no source could give.
    #[error(transparent)]
    Tags(FallbackError),
    #[error("cannot fetch `{reference}`")]
    Pull {
        reference: String,
        #[source]
        source: Box<PullError>,
    },
    #[error("`{reference}` moved while its platforms were fetched: first {first}, then {then}")]
    Moved {
        reference: String,
        first: Digest,
        then: Digest,
    },
    #[error("`{0}` was fetched but is not in the store")]
    NotStored(String),
    #[error("{at}: the entry for `{repository}` selects none of its {tags} tags; {nearest}")]
    NothingSelected {
        at: String,
        repository: String,
        tags: usize,
        nearest: String,
    },
    #[error("cannot use the inventory `{}`: {reason}", .path.display())]
    Have { path: PathBuf, reason: String },
    #[error("cannot use the earlier bundle's `{}`: {reason}", .path.display())]
    Since { path: PathBuf, reason: String },
}

impl SyncError {
    /// The spec, an inventory or a bundle directory given is wrong (or missing), not the
    /// world.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            SyncError::Spec(_)
                | SyncError::Config(_)
                | SyncError::Reference(_)
                | SyncError::Have { .. }
                | SyncError::Since { .. }
                | SyncError::NothingSelected { .. }
        )
    }

    /// A selected image or repository does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            SyncError::Tags(e) => e.is_not_found(),
            SyncError::Pull { source, .. } => source.is_not_found(),
            _ => false,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            SyncError::Spec(e) => Some(e.hint()),
            SyncError::Config(e) => Some(e.hint()),
            SyncError::Reference(e) => Some(e.hint()),
            SyncError::Session(_) => None,
            SyncError::Store(e) => e.hint(),
            SyncError::Tags(e) if e.is_not_found() => Some(
                "check the repository in the sync spec; the official registry has no such \
                 repository"
                    .into(),
            ),
            SyncError::Tags(_) => Some(
                "every source failed: check the network and the mirrors configured for this \
                 registry in mirrors.toml (`cudaimg mirrors check`)"
                    .into(),
            ),
            SyncError::Pull { source, .. } => source.hint(),
            SyncError::Moved { .. } => {
                Some("the tag was pushed again meanwhile: run the sync again".into())
            }
            SyncError::NotStored(_) => {
                Some("`cudaimg verify` checks the store; then run the sync again".into())
            }
            SyncError::NothingSelected { .. } => Some(
                "correct the entry to one of the values above (`cudaimg explain TAG` reads a \
                 tag), or pass `--allow-empty` to carry what the other entries select"
                    .into(),
            ),
            SyncError::Have { .. } => {
                Some("give the file `cudaimg inventory -o have.json` wrote on the far side".into())
            }
            SyncError::Since { .. } => Some(
                "give the directory of an earlier bundle, as `sync --to DIR` wrote it (with its \
                 bundle.json)"
                    .into(),
            ),
        }
    }
}

/// What [`prepare`] found: the selection (images fetched, whole, into the store) and what
/// to leave out.
pub struct Prepared {
    pub spec: Spec,
    pub selection: Selection,
    pub exclude: Exclusions,
}

impl Prepared {
    /// The plan of carrying the selection, less the exclusions.
    pub fn plan(&self) -> Plan {
        Plan::from_sets(&self.sets(), &self.exclude)
    }

    pub fn sets(&self) -> Vec<StoredSet> {
        self.selection.sets()
    }
}

/// From a spec file to what a bundle carries: reads the exclusions first (`have`:
/// inventories, `since`: earlier bundle directories), so a wrong file fails before any
/// network work; then reads the spec, selects, and fetches into the session's store (or,
/// with `how.manifests_only`, reads the manifests only).
pub async fn prepare(
    session: &Session,
    spec_path: &Path,
    have: &[PathBuf],
    since: &[PathBuf],
    how: select::Selecting,
    reporter: &dyn Reporter,
) -> Result<Prepared, SyncError> {
    let spec = Spec::load(spec_path)?;
    let mut exclude = Exclusions::default();
    for h in have {
        inventory::add_have(&mut exclude, h)?;
    }
    for s in since {
        inventory::add_since(&mut exclude, s)?;
    }
    let selection = select::select(session, &spec, how, reporter).await?;
    Ok(Prepared {
        spec,
        selection,
        exclude,
    })
}
