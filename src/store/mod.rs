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
//!
//! Other tools read the layout directly: `skopeo inspect oci:STORE:docker.io/nvidia/cuda:TAG`.

mod blob;
mod gc;
mod image;
mod index;
pub mod verify;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use blob::{BlobWriter, CommitError, WriteError};
pub use gc::{GcGuard, GcReport};
pub use image::StoredImage;
pub use index::{IndexEntry, IndexFile, IndexPlatform, INDEX_DIGEST_ANNOTATION, REF_NAME};

use crate::digest::Digest;

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
    /// A name in `index.json` whose manifest or config blob is gone.
    #[error("the store names `{name}` but its {what} blob {digest} is missing")]
    MissingBlob {
        name: String,
        what: &'static str,
        digest: Digest,
        /// The entry's platform, for the pull that fetches it again.
        platform: Option<String>,
    },
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

/// An opened OCI image layout.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Holds the store's exclusive lock until dropped.
pub struct StoreLock(#[allow(dead_code)] std::fs::File);

impl Store {
    /// `$XDG_DATA_HOME/cudaimg`, or `~/.local/share/cudaimg`.
    pub fn default_root() -> Option<PathBuf> {
        crate::config::xdg_dir("XDG_DATA_HOME", ".local/share").map(|d| d.join("cudaimg"))
    }

    /// Opens the layout at `root`, creating it if the directory is new or empty.
    pub fn open(root: &Path) -> Result<Self> {
        let store = Store {
            root: root.to_owned(),
        };
        fs_err::create_dir_all(root)?;
        // Two processes may open a new store at once: the first creates it under the lock,
        // the second then finds it whole.
        let _lock = store.lock()?;
        let layout = root.join(LAYOUT_FILE);
        if layout.exists() {
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
        fs_err::create_dir_all(store.blobs_dir())?;
        fs_err::create_dir_all(store.ingest_dir())?;
        if !store.index_path().exists() {
            store.write_index(&IndexFile::default())?;
        }
        if !layout.exists() {
            // Last: a layout file means the store is complete.
            store.write_atomic(&layout, LAYOUT_JSON.as_bytes())?;
        }
        Ok(store)
    }

    /// Opens an existing layout without creating or changing anything, for commands that
    /// only read (and may run on a read-only mount).
    pub fn open_existing(root: &Path) -> Result<Self> {
        let store = Store {
            root: root.to_owned(),
        };
        if !root.join(LAYOUT_FILE).exists() {
            return Err(StoreError::Missing(root.to_owned()));
        }
        store.check_layout()?;
        Ok(store)
    }

    fn check_layout(&self) -> Result<()> {
        let text = fs_err::read_to_string(self.root.join(LAYOUT_FILE))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| StoreError::NotALayout {
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

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Whether the blob is stored with the expected size. Its content was verified when it
    /// was committed; `verify` re-checks it.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        fs_err::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Reads a small blob (a manifest or config), refusing anything over `limit` bytes.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let mut f = fs_err::File::open(self.blob_path(digest))?;
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
            other => disk(other.to_string()),
        })?;
        w.commit().await.map_err(|e| match e {
            CommitError::Store(s) => s,
            other => disk(other.to_string()),
        })
    }

    /// Opens the verified, resumable write of blob `digest` of `size` bytes, waiting while
    /// another process writes it. `None`: the blob is stored already.
    pub async fn blob_writer(&self, digest: &Digest, size: u64) -> Result<Option<BlobWriter>> {
        BlobWriter::open(self, digest.clone(), size).await
    }

    /// Takes the store's exclusive lock, waiting for other processes to release it.
    pub fn lock(&self) -> Result<StoreLock> {
        let f = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".lock"))?;
        let f = f.into_parts().0;
        f.lock()?;
        Ok(StoreLock(f))
    }

    pub fn read_index(&self) -> Result<IndexFile> {
        let text = fs_err::read(self.index_path())?;
        serde_json::from_slice(&text).map_err(|e| StoreError::NotALayout {
            path: self.index_path(),
            reason: format!("index.json is not a valid OCI index ({e})"),
        })
    }

    /// Read-modify-write of `index.json` under the store lock.
    pub fn update_index<T>(&self, f: impl FnOnce(&mut IndexFile) -> T) -> Result<T> {
        let _lock = self.lock()?;
        // Blobs the new entries name must be durable before the index names them.
        sync_dir(&self.blobs_dir())?;
        let mut index = self.read_index()?;
        let out = f(&mut index);
        self.write_index(&index)?;
        Ok(out)
    }

    fn write_index(&self, index: &IndexFile) -> Result<()> {
        let bytes =
            serde_json::to_vec(index).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        self.write_atomic(&self.index_path(), &bytes)
    }

    /// Writes a small file by temp file, fsync and rename, then fsyncs the directory.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut f = fs_err::File::create(&tmp)?;
        let res = f.write_all(bytes).and_then(|()| f.sync_all());
        if let Err(e) = res {
            let _ = fs_err::remove_file(&tmp);
            return Err(e.into());
        }
        fs_err::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(&self.root))
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs_err::File::open(dir)?.sync_all()?;
    Ok(())
}
