//! The local store: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`),
//! the only code that writes image data to disk.
//!
//! Contracts:
//! - A file under `blobs/sha256/` always holds exactly the bytes its name hashes to. Blobs are
//!   written to `ingest/`, hashed while they stream, checked against the expected digest and
//!   size, and only then renamed into place (same filesystem, so the rename is atomic).
//! - `index.json` is replaced by rename, under an exclusive lock on `.lock`, so concurrent
//!   cudaimg processes never lose each other's entries.
//! - fsync policy: each blob is fsynced before its rename, and the blob directory is fsynced
//!   before `index.json` is replaced (which is fsynced too, then its directory). A crash can
//!   lose the last blobs or the last index update, but `index.json` never names a blob that
//!   is not durably on disk, and no blob file is ever partial.
//! - Confinement ([`confine`]): nothing is opened, created, renamed or removed by following
//!   a symbolic link, so what a store contains can never aim a write outside it.
//! - Trust: blobs are checked (digest and size) before the rename into `blobs/`, and again
//!   as they leave the store ([`read`]); `verify` re-hashes everything.
//!
//! The API other crates use: names ([`Store::name`], [`Store::tag`], [`Store::untag`],
//! [`Store::list`]), images ([`Store::image`], [`Store::read_manifest`]), blobs in
//! ([`Store::blob_writer`], [`BlobWriter::ranged`] for parallel fills, [`Store::put_bytes`])
//! and out ([`Store::open_blob`]), the closure of a name ([`Store::closure`]), whole
//! multi-platform images ([`Store::name_all_platforms`], [`Store::image_set`], see `sets.rs`),
//! import of an OCI image layout ([`Store::import_layout`]), `gc` and [`Store::fsck`]. Nothing outside
//! this crate builds a path inside the store or touches `index.json` entries. Small state files
//! that are hints, not image data (mirror health), live under `state/` ([`Store::read_state`]).
//!
//! Other tools read the layout directly: `skopeo inspect oci:STORE:docker.io/nvidia/cuda:TAG`.

mod blob;
mod closure;
mod confine;
mod follow;
mod gc;
mod image;
mod import;
mod index;
mod locations;
mod names;
mod read;
mod sets;
mod state;
mod verify;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use blob::{BlobWriter, CommitError, RangedWriter, WriteError};
pub use closure::{BlobRole, Reached};
pub(crate) use confine::StoreDir;
pub use follow::BlobFollower;
pub use gc::{GcGuard, GcReport};
pub use image::StoredImage;
pub use import::{ImportError, ImportReport, ImportedImage, NameFn, Naming, RecordedName};
pub(crate) use index::IndexFile;
pub use locations::BlobLocations;
pub use names::{ListedImage, NamedImage};
pub use read::{BlobMismatch, VerifiedReader};
pub use sets::{filtered_index, NamedSet, StoredChild, StoredManifest, StoredSet};
pub use verify::{Affected, VerifyReport};

use cudaimg_oci::digest::Digest;

const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_JSON: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the disk holding the store is full")]
    DiskFull(#[source] std::io::Error),
    #[error(transparent)]
    Io(std::io::Error),
    #[error("`{path}` is not a usable OCI image layout: {reason}")]
    NotALayout { path: PathBuf, reason: String },
    #[error("no store location: set `--store`, `CUDAIMG_STORE`, `XDG_DATA_HOME` or `HOME`")]
    NoLocation,
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    #[error("there is no store at `{}`", .0.display())]
    Missing(PathBuf),
    /// Something had to be written to a store that cannot be (a read-only mount, no write
    /// permission); reading it works.
    #[error("the store `{}` is read-only, and this needs to write to it", .0.display())]
    ReadOnly(PathBuf),
    /// Something in the store is not what cudaimg puts there (a link, a FIFO, a file where
    /// a directory belongs); nothing was read or written through it.
    #[error("`{}` is {found}, where the store keeps {expected}; cudaimg does not follow or write through it", path.display())]
    Unsafe {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    /// A stored blob is not what its name says; found while its bytes left the store.
    #[error("blob {digest}{} is corrupt in the store: its content {reason}", image_of(.image.as_ref()))]
    BlobCorrupt {
        digest: Digest,
        /// The image being read out, if any.
        image: Option<String>,
        reason: String,
    },
    /// A name in `index.json` whose manifest or config blob is gone.
    #[error("the store names `{name}` but its {what} blob {digest} is missing")]
    MissingBlob {
        name: String,
        what: &'static str,
        digest: Digest,
        /// The entry's platform, for the pull that fetches it again.
        platform: Option<String>,
    },
    /// A ranged write ([`RangedWriter::write_at`]) outside the part of a blob still to be
    /// written: a bug in the caller, refused before it could touch bytes already hashed.
    #[error("a ranged write of bytes {start}..{end} of blob {digest} lies outside {from}..{size}, the part still to be written")]
    OutOfRange {
        digest: Digest,
        start: u64,
        end: u64,
        /// The end of the hashed prefix.
        from: u64,
        size: u64,
    },
}

fn image_of(image: Option<&String>) -> String {
    image.map(|i| format!(" of `{i}`")).unwrap_or_default()
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull {
            StoreError::DiskFull(e)
        } else {
            StoreError::Io(e)
        }
    }
}

impl StoreError {
    /// The file system or the permissions refuse writing (as opposed to a damaged store).
    pub fn is_read_only(&self) -> bool {
        matches!(self, StoreError::ReadOnly(_))
            || matches!(self, StoreError::Io(e) if matches!(
                e.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            ))
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            StoreError::DiskFull(_) => Some(
                "free some space, or point `--store` / `CUDAIMG_STORE` at a larger disk; \
                 nothing partial was committed, so the pull can simply be run again"
                    .into(),
            ),
            StoreError::NotALayout { .. } => {
                Some("point `--store` at an empty directory or at a store cudaimg created".into())
            }
            StoreError::Corrupt(_) => Some(
                "`cudaimg verify` lists every problem, and `cudaimg verify --repair` removes \
                 corrupt blobs so that the next pull fetches them again"
                    .into(),
            ),
            StoreError::Missing(_) => Some(
                "check `--store` / `CUDAIMG_STORE`; a store is created by the first `cudaimg pull`"
                    .into(),
            ),
            StoreError::ReadOnly(_) => Some(
                "reading commands (`images`, `inspect`, `load`, `export`) work on it; to add \
                 images, pull into a writable store (`--store DIR`) or remount it read-write"
                    .into(),
            ),
            StoreError::Unsafe { path, .. } => Some(format!(
                "cudaimg never creates links or special files in a store: someone who can write \
                 to it planted this. Check who can, then remove the entry itself \
                 (`rm {}`, which leaves a link's target alone) and run the command again; \
                 `cudaimg verify --repair` finds and removes such entries among blobs and \
                 partial downloads",
                path.display()
            )),
            StoreError::BlobCorrupt { image, .. } => Some(format!(
                "nothing complete was written. `cudaimg verify --repair` removes the corrupt \
                 blob; then `cudaimg pull {}` fetches it again (`cudaimg pull --verify-existing` \
                 does both)",
                image.as_deref().unwrap_or("IMAGE")
            )),
            StoreError::MissingBlob { name, platform, .. } => Some(format!(
                "`cudaimg verify` lists everything else that is missing; `cudaimg pull {}{name}` \
                 fetches it again",
                platform
                    .as_ref()
                    .map(|p| format!("--platform {p} "))
                    .unwrap_or_default()
            )),
            StoreError::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Some("choose a store you can write to with `--store`".into())
            }
            _ => None,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A store is a directory: `--store` naming a file (or anything else that exists and is
/// not one) is said as such, not as "File exists" from creating it or "no store yet".
fn not_a_file(root: &Path) -> Result<()> {
    match fs_err::metadata(root) {
        Ok(m) if !m.is_dir() => Err(StoreError::NotALayout {
            path: root.to_owned(),
            reason: "it is a file, not a directory: a store is a directory (an OCI image layout)"
                .into(),
        }),
        _ => Ok(()),
    }
}

/// An opened OCI image layout.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// How far this process's downloads have come, for readers that follow them.
    board: std::sync::Arc<follow::Board>,
}

/// Holds the store's exclusive lock until dropped.
pub struct StoreLock(#[allow(dead_code)] std::fs::File);

impl Store {
    /// Opens the layout at `root`, creating it if the directory is new or empty.
    pub fn open(root: &Path) -> Result<Self> {
        let store = Store {
            root: root.to_owned(),
            board: std::sync::Arc::default(),
        };
        not_a_file(root)?;
        fs_err::create_dir_all(root)?;
        // Two processes may open a new store at once: the first creates it under the lock,
        // the second then finds it whole.
        let _lock = match store.lock() {
            Ok(lock) => lock,
            // A whole store on a read-only mount: nothing to create, and reading works.
            Err(e) if e.is_read_only() => return Store::open_existing(root).map_err(|_| e),
            Err(e) => return Err(e),
        };
        let layout_exists = store.root_dir()?.stat(LAYOUT_FILE).is_ok();
        if layout_exists {
            store.check_layout()?;
        } else {
            // What an interrupted creation leaves is ours to finish; anything else is not.
            let stray = fs_err::read_dir(root)?
                .filter_map(std::result::Result::ok)
                .any(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    !matches!(
                        name.as_str(),
                        ".lock" | ".gc.lock" | "blobs" | "ingest" | "index.json"
                    ) && !name.starts_with("index.tmp-")
                        && !name.starts_with("oci-layout.tmp-")
                });
            if stray {
                return Err(StoreError::NotALayout {
                    path: root.to_owned(),
                    reason: "the directory is not empty and holds no `oci-layout` file".into(),
                });
            }
        }
        StoreDir::open(root, &["blobs", "sha256"], true)?;
        StoreDir::open(root, &["ingest"], true)?;
        if store.root_dir()?.stat("index.json").is_err() {
            store.write_index(&IndexFile::default())?;
        }
        if !layout_exists {
            // Last: a layout file means the store is complete.
            store.write_atomic(LAYOUT_FILE, LAYOUT_JSON.as_bytes())?;
        }
        Ok(store)
    }

    /// Opens an existing layout without creating or changing anything, for commands that
    /// only read (and may run on a read-only mount).
    pub fn open_existing(root: &Path) -> Result<Self> {
        let store = Store {
            root: root.to_owned(),
            board: std::sync::Arc::default(),
        };
        not_a_file(root)?;
        if fs_err::symlink_metadata(root.join(LAYOUT_FILE)).is_err() {
            return Err(StoreError::Missing(root.to_owned()));
        }
        store.check_layout()?;
        Ok(store)
    }

    fn check_layout(&self) -> Result<()> {
        let mut text = Vec::new();
        self.root_dir()?
            .open_read(LAYOUT_FILE)?
            .take(1 << 16)
            .read_to_end(&mut text)?;
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| StoreError::NotALayout {
                path: self.root.clone(),
                reason: format!("`oci-layout` is not JSON ({e})"),
            })?;
        let version = v["imageLayoutVersion"].as_str().unwrap_or("");
        if !version.starts_with("1.") {
            return Err(StoreError::NotALayout {
                path: self.root.clone(),
                reason: format!("unsupported imageLayoutVersion `{version}`"),
            });
        }
        Ok(())
    }

    /// The store's location, for messages (access goes through the store's methods).
    /// Which version of `index.json` is there now, cheaply (a `stat`, no read): every writer
    /// replaces it by rename, so a new version has a new inode. For readers that cache what
    /// the index says (`serve`); `None` when there is no index yet.
    pub fn index_version(&self) -> Option<(u64, u64, i64, i64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = fs_err::symlink_metadata(self.index_path()).ok()?;
        Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store root, as a handle for confined access.
    pub(crate) fn root_dir(&self) -> Result<StoreDir> {
        StoreDir::open(&self.root, &[], false)
    }

    /// `blobs/sha256`, refused if it or `blobs` is a link or not a directory.
    pub(crate) fn blobs(&self) -> Result<StoreDir> {
        StoreDir::open(&self.root, &["blobs", "sha256"], false)
    }

    /// `ingest`, refused if it is a link or not a directory.
    pub(crate) fn ingest(&self) -> Result<StoreDir> {
        StoreDir::open(&self.root, &["ingest"], false)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// Where blob `digest` lives (for messages and tests; access goes through [`StoreDir`]).
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    /// Whether the blob is stored, as a regular file, with the expected size. Its content
    /// was verified when it was committed; `verify`, `pull --verify-existing` and every
    /// read-out ([`Store::open_blob`]) re-check it.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        self.blobs()
            .and_then(|d| Ok(d.stat(digest.hex())?))
            .is_ok_and(|st| {
                confine::file_type(&st) == rustix::fs::FileType::RegularFile
                    && u64::try_from(st.st_size).ok() == Some(size)
            })
    }

    /// Bytes of `digest` an earlier, interrupted download left that a resume keeps: the
    /// partial file's length, or the contiguous prefix its sidecar records after a
    /// parallel fill; 0 when there is none or it cannot be right (longer than the blob).
    /// For "N MiB to fetch", which counts what remains.
    pub fn resumable_bytes(&self, digest: &Digest, size: u64) -> u64 {
        let Ok(ingest) = self.ingest() else {
            return 0;
        };
        let len = ingest
            .stat(&format!("{}.partial", digest.hex()))
            .ok()
            .filter(|st| confine::file_type(st) == rustix::fs::FileType::RegularFile)
            .and_then(|st| u64::try_from(st.st_size).ok())
            .unwrap_or(0);
        let prefix = ingest
            .open_read(&format!("{}.prefix", digest.hex()))
            .ok()
            .and_then(|f| {
                let mut text = String::new();
                f.take(64).read_to_string(&mut text).ok()?;
                text.trim().parse::<u64>().ok()
            });
        let kept = prefix.map_or(len, |p| p.min(len));
        if kept > size {
            0
        } else {
            kept
        }
    }

    /// Whether a regular file is stored for `digest`, whatever its size (for the manifest
    /// list an entry records by digest only).
    pub(crate) fn has_blob_file(&self, digest: &Digest) -> bool {
        self.blobs()
            .and_then(|d| Ok(d.stat(digest.hex())?))
            .is_ok_and(|st| confine::file_type(&st) == rustix::fs::FileType::RegularFile)
    }

    /// Re-hashes every blob and checks that every name resolves to complete content (see
    /// [`verify`]). `on_blob` is called with each blob's size after it is hashed. With
    /// `repair`, corrupt blobs (and links or special files among blobs and partial
    /// downloads) are removed, so that the next pull fetches them again.
    pub fn fsck(&self, repair: bool, on_blob: &dyn Fn(u64)) -> Result<VerifyReport> {
        verify::verify(self, repair, on_blob)
    }

    /// Reads a small blob (a manifest or config), refusing anything over `limit` bytes. Not
    /// checked against its digest: [`Store::read_manifest`] and [`Store::image`] check.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let mut f = self.blobs()?.open_read(digest.hex())?;
        let mut buf = Vec::new();
        f.by_ref().take(limit + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > limit {
            return Err(StoreError::NotALayout {
                path: self.blob_path(digest),
                reason: format!("blob is larger than {limit} bytes"),
            });
        }
        Ok(buf)
    }

    /// Stores bytes already in memory (manifests), verified like any streamed blob.
    pub async fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        if self.has_blob(digest, bytes.len() as u64) {
            return Ok(());
        }
        let Some(mut w) = self.blob_writer(digest, bytes.len() as u64).await? else {
            return Ok(());
        };
        w.reset().await?;
        // Callers verified these bytes against `digest`; a failure here is the disk's.
        let disk = |e: String| StoreError::Io(std::io::Error::other(e));
        w.write(bytes).await.map_err(|e| match e {
            WriteError::Store(s) => s,
            other @ WriteError::TooLong { .. } => disk(other.to_string()),
        })?;
        w.commit().await.map_err(|e| match e {
            CommitError::Store(s) => s,
            other @ CommitError::Mismatch { .. } => disk(other.to_string()),
        })
    }

    /// A scratch file in `ingest/` whose name is removed at once: it holds bytes whose digest
    /// is not known yet (a layer streaming out of `docker save`) and vanishes when dropped,
    /// or with the process, so a crash leaves nothing behind and nothing in `blobs/`.
    pub fn scratch(&self) -> Result<std::fs::File> {
        let ingest = self.ingest()?;
        let (file, name) = ingest.create_temp("scratch-")?;
        ingest.remove(&name)?;
        Ok(file)
    }

    /// Opens the verified, resumable write of blob `digest` of `size` bytes, waiting while
    /// another process writes it. `None`: the blob is stored already.
    pub async fn blob_writer(&self, digest: &Digest, size: u64) -> Result<Option<BlobWriter>> {
        BlobWriter::open(self, digest.clone(), size).await
    }

    /// Takes the store's exclusive lock, waiting for other processes to release it.
    pub fn lock(&self) -> Result<StoreLock> {
        let f = self.root_dir()?.open_rw(".lock")?;
        f.lock()?;
        Ok(StoreLock(f))
    }

    pub(crate) fn read_index(&self) -> Result<IndexFile> {
        let mut text = Vec::new();
        self.root_dir()?
            .open_read("index.json")?
            .read_to_end(&mut text)?;
        serde_json::from_slice(&text).map_err(|e| StoreError::NotALayout {
            path: self.index_path(),
            reason: format!("index.json is not a valid OCI index ({e})"),
        })
    }

    /// Read-modify-write of `index.json` under the store lock.
    /// On a read-only store, a change that changes nothing (an image pulled again) is no
    /// write at all; any other is [`StoreError::ReadOnly`].
    pub(crate) fn update_index<T>(&self, f: impl FnOnce(&mut IndexFile) -> T) -> Result<T> {
        let _lock = match self.lock() {
            Ok(lock) => lock,
            Err(e) if e.is_read_only() => {
                let mut index = self.read_index()?;
                let before = serde_json::to_vec(&index).ok();
                let out = f(&mut index);
                if before.is_some() && before == serde_json::to_vec(&index).ok() {
                    return Ok(out);
                }
                return Err(StoreError::ReadOnly(self.root.clone()));
            }
            Err(e) => return Err(e),
        };
        // Blobs the new entries name must be durable before the index names them.
        self.blobs()?.sync()?;
        let mut index = self.read_index()?;
        let out = f(&mut index);
        self.write_index(&index)?;
        Ok(out)
    }

    fn write_index(&self, index: &IndexFile) -> Result<()> {
        let bytes =
            serde_json::to_vec(index).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        self.write_atomic("index.json", &bytes)
    }

    /// Writes a small file at the store root (see [`replace_file`]).
    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        // `index.tmp-…`, `oci-layout.tmp-…`: names `open` knows as an interrupted creation's.
        let stem = name.split_once('.').map_or(name, |(s, _)| s);
        replace_file(&self.root_dir()?, stem, name, bytes)
    }
}

/// Replaces `name` in `dir` with `bytes`: a new temp file (`{stem}.tmp-…`, an unpredictable
/// name), fsync, rename over `name`, then fsync of the directory. A link at `name` is
/// replaced, never written through; the temp file never survives a failure.
pub(crate) fn replace_file(dir: &StoreDir, stem: &str, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let (mut f, tmp) = dir.create_temp(&format!("{stem}.tmp-"))?;
    if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
        let _ = dir.remove(&tmp);
        return Err(e.into());
    }
    if let Err(e) = dir.rename_to(&tmp, dir, name) {
        let _ = dir.remove(&tmp);
        return Err(e);
    }
    dir.sync()
}
