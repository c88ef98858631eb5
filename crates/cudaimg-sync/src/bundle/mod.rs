//! Bundles: a [`Plan`]'s blobs in plain tar parts, and `bundle.json`, which says what is
//! where. The far side needs nothing else ([`import`]).
//!
//! # Layout of a bundle directory
//!
//! - `bundle.json` ([`BundleFile`]): the plan (images with their names, digests and
//!   platforms; the blobs carried; the blobs assumed on the far side and what says so), every
//!   part with its size and sha256, and for every blob where its bytes lie (part, offset in
//!   the part file, length).
//! - `part-0001.tar`, … : plain ustar archives. The first entry, `cudaimg-part.json`
//!   ([`PartIndex`]), lists the part's entries with their offsets, sizes and sha256, so a
//!   part can be checked and read alone. Then whole blobs as `blobs/sha256/HEX`, and pieces
//!   of blobs larger than a part as `pieces/sha256/HEX/NNNNN`, each piece with its own
//!   sha256. A part never exceeds the part size: a blob is cut only when it cannot fit an
//!   empty part, and its pieces are joined (and the whole blob verified) on import.
//!
//! A blob in a part is a plain byte range of the file (after its 512-byte header), so an
//! import streams it straight from the part, and a resumed upload seeks to where the
//! registry stopped: nothing is extracted first.
//!
//! # Reproducible
//!
//! The same plan and blobs give byte-identical parts and `bundle.json`: blobs in digest
//! order, fixed part names, headers with mode 0644, uid/gid 0, no user names and mtime 0,
//! the part index padded to a size fixed by its number of entries (so offsets are known
//! before any byte is written), and nothing from the host or the clock.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use cudaimg_oci::digest::Digest;

pub mod import;
pub mod read;
pub mod write;

pub use import::{import, ImageOutcome, ImportOptions, ImportReport, Target};
pub use read::{Bundle, PartProblem};
pub use write::{write, WriteOptions, WriteReport};

/// `format` of `bundle.json`.
pub const FORMAT: &str = "cudaimg-bundle/v1";
/// `format` of a part's own index.
pub const PART_FORMAT: &str = "cudaimg-bundle-part/v1";
pub const BUNDLE_JSON: &str = "bundle.json";
/// The first entry of every part.
pub const PART_INDEX: &str = "cudaimg-part.json";
/// A tar header, and the unit entries are padded to.
pub(crate) const BLOCK: u64 = 512;
/// The smallest `--part-size`: an index, one header and some data must fit.
pub const MIN_PART_SIZE: u64 = 64 << 10;
/// `bundle.json` larger than this is refused unread (a plan of many thousands of blobs is
/// a few MB).
pub(crate) const MAX_BUNDLE_JSON: u64 = 256 << 20;

/// `bundle.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFile {
    pub format: String,
    /// The sha256 (hex) of the plan as serialized here: every part's index names it, so a
    /// part of another bundle is told apart.
    pub id: String,
    /// `--part-size`, when one was given.
    pub part_size: Option<u64>,
    pub plan: Plan,
    pub parts: Vec<PartRecord>,
    /// Where each carried blob lies, sorted by digest.
    pub blobs: Vec<BlobLocation>,
}

/// One part file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// The file name in the bundle directory.
    pub file: String,
    pub size: u64,
    /// Of the whole file, hex.
    pub sha256: String,
}

/// Where a blob's bytes lie: one piece for a whole blob, several for a cut one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobLocation {
    pub digest: Digest,
    pub size: u64,
    pub pieces: Vec<PieceLocation>,
}

/// A byte range of a part file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceLocation {
    pub part: String,
    /// Where the bytes start in the part file.
    pub offset: u64,
    pub size: u64,
    /// Where they start in the blob.
    pub start: u64,
    /// Of these bytes, hex (the blob's own digest for a whole blob).
    pub sha256: String,
}

/// The index at the head of every part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartIndex {
    pub format: String,
    /// [`BundleFile::id`].
    pub bundle: String,
    pub file: String,
    /// 1-based, of `of`.
    pub number: usize,
    pub of: usize,
    pub entries: Vec<PartEntry>,
}

/// One blob or piece in a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartEntry {
    /// The tar entry's name.
    pub path: String,
    pub digest: Digest,
    pub blob_size: u64,
    /// Where these bytes start in the blob (0 for a whole blob).
    pub start: u64,
    /// Where they start in the part file.
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
}

/// Why a bundle cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] cudaimg_store::StoreError),
    #[error("`{}` is not a cudaimg bundle: {reason}", path.display())]
    NotABundle { path: PathBuf, reason: String },
    #[error("blob {digest} changed in the store while the bundle was written ({reason})")]
    Changed { digest: Digest, reason: String },
    #[error("--part-size {size} is too small: a part needs at least {MIN_PART_SIZE} bytes")]
    PartSizeTooSmall { size: u64 },
}

impl BundleError {
    pub fn hint(&self) -> Option<String> {
        match self {
            BundleError::NotABundle { path, .. } => Some(format!(
                "a bundle directory holds `bundle.json` and its `part-*.tar` files, as \
                 `cudaimg sync --to DIR` wrote them; if `{}` was copied, copy `bundle.json` too",
                path.parent().unwrap_or(path).display()
            )),
            BundleError::Changed { .. } => Some("write the bundle again".into()),
            BundleError::PartSizeTooSmall { .. } => Some("use e.g. `--part-size 4G`".into()),
            BundleError::Store(e) => e.hint(),
            BundleError::Io(_) => None,
        }
    }
}

pub(crate) fn part_name(n: usize) -> String {
    format!("part-{n:04}.tar")
}

pub(crate) fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

/// The tar entry name of a blob, or of piece `n` of it.
pub(crate) fn entry_path(digest: &Digest, piece: Option<usize>) -> String {
    match piece {
        None => format!("blobs/sha256/{}", digest.hex()),
        Some(n) => format!("pieces/sha256/{}/{n:05}", digest.hex()),
    }
}
