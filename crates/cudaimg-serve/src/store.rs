//! The one place `serve` touches the store: every read goes through `cudaimg-store`'s API
//! (`read_index`, `read_blob`, `open_blob_file`, `open_blob`), and nothing here builds a
//! path from a request: repositories and digests arrive parsed, and blobs are opened by
//! [`Digest`] through the store's confined handles.
//!
//! What the server sees is a [`Snapshot`]: for each repository, its tags, the manifests it
//! may serve (bytes held in memory, hashed when read) and the blobs those manifests name.
//! A snapshot is rebuilt when `index.json` changes (a `pull`, `tag`, `rm` beside the live
//! server), so a name appears or disappears without a restart; a request is answered from
//! one snapshot throughout.
//!
//! Multi-platform names: `pull` stores the manifest list or index it chose from (its digest
//! is the entry's `io.cudaimg.index.digest` annotation, and its bytes are a stored blob),
//! so a tag serves that index, byte for byte, like the registry it came from, and every
//! child manifest the store holds is served by digest. A child that was not pulled (another
//! platform) is a 404, and a client on that platform falls back to its next source. A name
//! stored without an index serves its platform manifest for the tag.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{self, Manifest, MAX_MANIFEST_BYTES, OCI_INDEX};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::reference::{ImageRef, DOCKER_HUB};
use cudaimg_store::{Store, StoreError, VerifiedReader};

/// A manifest the server may hand out.
#[derive(Debug)]
pub struct ServedManifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// One repository (`docker.io/nvidia/cuda`) as served.
#[derive(Debug, Default)]
pub struct Repo {
    /// Tag to the digest a GET by tag answers with.
    pub tags: BTreeMap<String, Digest>,
    pub manifests: HashMap<Digest, Arc<ServedManifest>>,
    /// Blob digests (configs, layers) and their sizes from the manifests above.
    pub blobs: HashMap<Digest, u64>,
}

/// Everything the store names, by repository (`registry/repository`).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub repos: BTreeMap<String, Repo>,
    /// Entries that could not be served, each said once when the snapshot was built.
    pub warnings: Vec<String>,
}

impl Snapshot {
    /// The repository names as a client asks for them: Docker Hub's without the host
    /// (`nvidia/cuda`, as a `registry-mirrors` client asks), others as `HOST/REPO`.
    pub fn catalog(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .repos
            .keys()
            .map(|k| {
                k.strip_prefix(&format!("{DOCKER_HUB}/"))
                    .map_or_else(|| k.clone(), str::to_owned)
            })
            .collect();
        names.sort();
        names
    }
}

/// Identifies a version of `index.json` cheaply (a `stat`), so the snapshot is rebuilt only
/// when it was replaced; every writer replaces it by rename, which changes the inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp((u64, u64, i64, i64, u64));

fn stamp(store: &Store) -> Option<Stamp> {
    store.index_version().map(Stamp)
}

/// The store behind the server.
pub struct StoreView {
    store: Store,
    log: crate::Log,
    cached: Mutex<Option<(Stamp, Arc<Snapshot>)>>,
    /// `--verify-reads`: blob files hashed whole already, by digest and file identity
    /// (device, inode, modification and change times, length: a blob rewritten in place
    /// changes them), so a range of one needs no second hash of the whole blob.
    verified: Mutex<HashSet<(Digest, FileId)>>,
}

/// A blob file's identity, as `stat` tells it.
type FileId = (u64, u64, i64, i64, u64);

/// Verified blob files remembered at most (a clear past it costs one hash each).
const VERIFIED_MAX: usize = 4096;

fn file_id(m: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (
        m.dev(),
        m.ino(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
        m.ctime_nsec() + m.ctime() * 1_000_000_000,
        m.len(),
    )
}

/// How a blob leaves the store.
pub enum BlobFile {
    /// The file, trusted as verified at commit (`sendfile` or a buffered copy).
    Plain(std::fs::File),
    /// A reader that hashes as it goes and fails before the last byte on a mismatch.
    Verified(Box<VerifiedReader>),
}

impl StoreView {
    pub fn new(store: Store, log: crate::Log) -> Self {
        StoreView {
            store,
            log,
            cached: Mutex::new(None),
            verified: Mutex::new(HashSet::new()),
        }
    }

    pub fn root(&self) -> &std::path::Path {
        self.store.root()
    }

    /// The current snapshot, rebuilt if `index.json` changed. Blocking (reads files): call
    /// it from a blocking task.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, StoreError> {
        let now = stamp(&self.store);
        if let Ok(guard) = self.cached.lock() {
            if let (Some(now), Some((s, snap))) = (&now, guard.as_ref()) {
                if s == now {
                    return Ok(Arc::clone(snap));
                }
            }
        }
        let snap = Arc::new(build(&self.store)?);
        for w in &snap.warnings {
            (self.log)(&format!("warning: {w}"));
        }
        if let (Some(now), Ok(mut guard)) = (now, self.cached.lock()) {
            *guard = Some((now, Arc::clone(&snap)));
        }
        Ok(snap)
    }

    /// Opens blob `digest` of `size` bytes; `Ok(None)` when it is gone (a `gc` since the
    /// snapshot). With `verify`, a whole blob is read through the store's hashing reader;
    /// for a `part` (a `Range`), the file is hashed whole first, once per file identity,
    /// and then sent as it is: a 1-byte range of a large blob costs one hash, not one per
    /// request. Blocking.
    pub fn open_blob(
        &self,
        digest: &Digest,
        size: u64,
        verify: bool,
        part: bool,
    ) -> Result<Option<BlobFile>, StoreError> {
        let res = match (verify, part) {
            (true, false) => self
                .store
                .open_blob(digest, size)
                .map(|r| BlobFile::Verified(Box::new(r))),
            (true, true) => self.open_checked(digest, size),
            (false, _) => self.store.open_blob_file(digest, size).map(BlobFile::Plain),
        };
        match res {
            Ok(f) => Ok(Some(f)),
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The blob file, hashed whole unless this very file was already; the file sent is
    /// the one hashed (or remembered), opened once.
    fn open_checked(&self, digest: &Digest, size: u64) -> Result<BlobFile, StoreError> {
        let reader = self.store.open_blob(digest, size)?;
        let id = (digest.clone(), file_id(&reader.metadata()?));
        if self.verified.lock().is_ok_and(|v| v.contains(&id)) {
            return Ok(BlobFile::Plain(reader.into_file()?));
        }
        let file = reader.into_checked_file()?;
        if let Ok(mut v) = self.verified.lock() {
            if v.len() >= VERIFIED_MAX {
                v.clear();
            }
            v.insert(id);
        }
        Ok(BlobFile::Plain(file))
    }
}

/// A stored manifest's bytes, checked against their digest.
fn read_manifest(store: &Store, digest: &Digest) -> Result<Vec<u8>, String> {
    let bytes = store
        .read_blob(digest, MAX_MANIFEST_BYTES)
        .map_err(|e| e.to_string())?;
    if Digest::of(&bytes) != *digest {
        return Err(format!(
            "manifest {digest} is corrupt in the store (`cudaimg verify --repair`)"
        ));
    }
    Ok(bytes)
}

fn build(store: &Store) -> Result<Snapshot, StoreError> {
    // (repo, tag) -> candidates: (manifest digest, platform, index digest if stored).
    type Candidate = (Digest, Option<Platform>, Option<Digest>);
    let listed = store.list()?;
    let mut snap = Snapshot::default();
    let mut tagged: BTreeMap<(String, String), Vec<Candidate>> = BTreeMap::new();
    for entry in &listed {
        let Some(name) = entry.name.as_deref() else {
            continue;
        };
        let Ok(r) = ImageRef::parse(name) else {
            snap.warnings.push(format!(
                "index.json names `{}`, which is not a reference; not served",
                cudaimg_oci::text::shown(name)
            ));
            continue;
        };
        let key = r.name();
        let Some(manifest) = &entry.manifest else {
            continue;
        };
        let digest = manifest.digest.clone();
        let repo = snap.repos.entry(key.clone()).or_default();
        if let Err(why) = add_manifest(store, repo, &digest, Some(&manifest.media_type)) {
            snap.warnings.push(format!("`{name}`: {why}; not served"));
            continue;
        }
        let mut served_index = None;
        if let Some(idx) = entry.index_digest.clone() {
            // Stored by every pull from a list; absent from a store another tool wrote.
            if add_manifest(store, repo, &idx, None).is_ok() {
                served_index = Some(idx);
            }
        }
        if let Some(tag) = &r.tag {
            tagged.entry((key, tag.clone())).or_default().push((
                digest,
                entry.platform.clone(),
                served_index,
            ));
        }
    }
    let host = Platform::host();
    for ((key, tag), candidates) in tagged {
        // The index the newest pull chose from; else the host's platform; else the first.
        let chosen = candidates
            .iter()
            .rev()
            .find_map(|c| c.2.clone())
            .or_else(|| {
                candidates
                    .iter()
                    .find(|c| c.1.as_ref().is_some_and(|p| host.matches(p)))
                    .map(|c| c.0.clone())
            })
            .or_else(|| candidates.first().map(|c| c.0.clone()));
        if let (Some(d), Some(repo)) = (chosen, snap.repos.get_mut(&key)) {
            repo.tags.insert(tag, d);
        }
    }
    snap.repos.retain(|_, r| !r.manifests.is_empty());
    Ok(snap)
}

/// Adds manifest `digest` (and, for an index, every child the store holds) to `repo`.
fn add_manifest(
    store: &Store,
    repo: &mut Repo,
    digest: &Digest,
    media_type: Option<&str>,
) -> Result<(), String> {
    if repo.manifests.contains_key(digest) {
        return Ok(());
    }
    let bytes = read_manifest(store, digest)?;
    let parsed = manifest::parse(&bytes, media_type).map_err(|e| e.to_string())?;
    let media_type = match &parsed {
        Manifest::Image(m) => m.media_type.clone(),
        Manifest::Index(i) => i.media_type.clone(),
    };
    repo.manifests.insert(
        digest.clone(),
        Arc::new(ServedManifest {
            media_type: if media_type.is_empty() {
                OCI_INDEX.to_owned()
            } else {
                media_type
            },
            bytes,
        }),
    );
    match parsed {
        Manifest::Image(m) => {
            repo.blobs.insert(m.config.digest.clone(), m.config.size);
            for l in &m.layers {
                repo.blobs.insert(l.digest.clone(), l.size);
            }
        }
        Manifest::Index(i) => {
            for child in &i.manifests {
                let d = &child.descriptor;
                // Only the platforms that were pulled are here; the rest are 404s.
                if store.has_blob(&d.digest, d.size) {
                    let _ = add_manifest(store, repo, &d.digest, Some(&d.media_type));
                }
            }
        }
    }
    Ok(())
}
