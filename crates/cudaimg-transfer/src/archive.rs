//! Writing a stored image as a tar archive that other tools load: `docker load`,
//! `skopeo … docker-archive:` and `oci-archive:`.
//!
//! The archive is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`); the
//! docker-archive format adds Docker's `manifest.json` beside it, as `docker save` itself
//! does since Docker 25, and Docker 20.10 reads through its `manifest.json`. Blobs go in as
//! stored: compressed layers, manifest and config byte-exact, so digests and diff IDs stay
//! upstream's (Docker decompresses layers on load). Blob files are streamed, never held in
//! memory, and headers carry no timestamps or owners, so the same image gives the same bytes.
//!
//! Every layer is read through [`cudaimg_store::VerifiedReader`] (manifest and config were
//! hashed when [`cudaimg_store::Store::image`] read them): a blob that no longer matches its
//! digest or size ends the archive short, before its last bytes and without the end-of-archive
//! blocks, so no consumer sees a complete-looking archive, and the error names the blob.

use std::cell::Cell;
use std::io::Write;
use std::rc::Rc;

use serde_json::json;

use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{Descriptor, ImageManifest, OCI_INDEX, REF_NAME};
use cudaimg_store::{Store, StoreError, StoredImage, StoredManifest, StoredSet};

/// What an archive of one image needs: its name, its manifest (bytes as stored, and
/// parsed). The config and layers are read from the store, each through a verifying reader.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// Its canonical name (`docker.io/nvidia/cuda:TAG`).
    pub name: String,
    pub media_type: String,
    pub digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub manifest: ImageManifest,
}

impl From<&StoredImage> for ArchiveImage {
    fn from(i: &StoredImage) -> Self {
        ArchiveImage {
            name: i.name.clone(),
            media_type: i.media_type.clone(),
            digest: i.digest.clone(),
            manifest_bytes: i.manifest_bytes.clone(),
            manifest: i.manifest.clone(),
        }
    }
}

/// Which archive to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `docker load` / `docker-archive:` (with the OCI layout inside, as Docker 25 writes)
    DockerArchive,
    /// `oci-archive:`: an OCI image layout in a tar
    OciArchive,
}

/// Writes `image` to `out` as `format`. `repo_tag` is the name Docker shows
/// (`nvidia/cuda:12.4.1-runtime-ubuntu22.04`), if the image has a tag.
pub fn write(
    store: &Store,
    image: &StoredImage,
    repo_tag: Option<&str>,
    format: Format,
    out: impl Write,
) -> Result<(), StoreError> {
    write_as_stored(store, &image.into(), repo_tag, format, out, &|_| Ok(()))
}

/// Writes `image` to `out` as `format`, calling `arrived` before each blob (config, then
/// layers in order) and reading it from the store only once that returns: `pull --load`
/// writes the archive while the pull is still storing later layers, and `arrived` waits
/// for each one (an error ends the archive short, as a corrupt blob does).
pub fn write_as_stored(
    store: &Store,
    image: &ArchiveImage,
    repo_tag: Option<&str>,
    format: Format,
    out: impl Write,
    arrived: &dyn Fn(&Descriptor) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let closed = Rc::new(Cell::new(false));
    let mut tar = tar::Builder::new(Gate {
        inner: out,
        closed: closed.clone(),
    });
    tar.mode(tar::HeaderMode::Deterministic);
    let res = write_entries(store, image, repo_tag, format, &mut tar, arrived);
    if res.is_err() {
        // `tar::Builder` writes the end-of-archive blocks when dropped; after a failure
        // they would make a short archive look whole.
        closed.set(true);
        return res;
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

/// Passes writes through until closed; then refuses them.
struct Gate<W> {
    inner: W,
    closed: Rc<Cell<bool>>,
}

impl<W: Write> Write for Gate<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.closed.get() {
            return Err(std::io::Error::other("the archive was abandoned"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_entries<W: Write>(
    store: &Store,
    image: &ArchiveImage,
    repo_tag: Option<&str>,
    format: Format,
    tar: &mut tar::Builder<W>,
    arrived: &dyn Fn(&Descriptor) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let path = |d: &cudaimg_oci::digest::Digest| format!("blobs/sha256/{}", d.hex());

    add_bytes(tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut annotations = serde_json::Map::new();
    annotations.insert("io.containerd.image.name".into(), json!(image.name));
    if let Some(t) = repo_tag
        .and_then(|t| t.rsplit_once(':'))
        .map(|(_, tag)| tag)
    {
        annotations.insert(REF_NAME.into(), json!(t));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": image.media_type,
            "digest": image.digest,
            "size": image.manifest_bytes.len(),
            "annotations": annotations,
        }],
    });
    add_bytes(tar, "index.json", &to_vec(&index)?)?;
    if format == Format::DockerArchive {
        let manifest = json!([{
            "Config": path(&image.manifest.config.digest),
            "RepoTags": repo_tag.map(|t| vec![t]).unwrap_or_default(),
            "Layers": image.manifest.layers.iter().map(|l| path(&l.digest)).collect::<Vec<_>>(),
        }]);
        add_bytes(tar, "manifest.json", &to_vec(&manifest)?)?;
    }
    add_bytes(tar, "blobs/", &[])?;
    add_bytes(tar, &path(&image.digest), &image.manifest_bytes)?;
    let mut seen = std::collections::BTreeSet::new();
    for l in std::iter::once(&image.manifest.config).chain(&image.manifest.layers) {
        if !seen.insert(&l.digest) {
            continue;
        }
        // What is written so far goes out before waiting: the reader need not wait with it.
        tar.get_mut().flush()?;
        arrived(l)?;
        let mut blob = store.open_blob(&l.digest, l.size)?;
        let mut header = header(l.size);
        if let Err(e) = tar.append_data(&mut header, path(&l.digest), &mut blob) {
            return Err(match blob.mismatch() {
                Some(m) => StoreError::BlobCorrupt {
                    digest: m.digest.clone(),
                    image: Some(image.name.clone()),
                    reason: m.reason.clone(),
                },
                None => e.into(),
            });
        }
    }
    Ok(())
}

/// Writes a whole multi-platform image (`pull --all-platforms`) to `out` as an
/// `oci-archive`: `index.json` names the stored index itself (so `skopeo copy --all
/// oci-archive:…` reads the same index digest back), and `blobs/` holds the index, every
/// child manifest (attestations too) and every blob of every child, each once. A docker-archive
/// holds one platform: write that with [`write`].
pub fn write_set(
    store: &Store,
    set: &StoredSet,
    repo_tag: Option<&str>,
    out: impl Write,
) -> Result<(), StoreError> {
    let Some(index) = &set.index else {
        return Err(StoreError::Corrupt(format!(
            "{} is not stored as a whole multi-platform image",
            set.name
        )));
    };
    let closed = Rc::new(Cell::new(false));
    let mut tar = tar::Builder::new(Gate {
        inner: out,
        closed: closed.clone(),
    });
    tar.mode(tar::HeaderMode::Deterministic);
    let res = write_set_entries(store, set, index, repo_tag, &mut tar);
    if res.is_err() {
        // As in `write`: no end-of-archive blocks after a failure.
        closed.set(true);
        return res;
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

fn write_set_entries<W: Write>(
    store: &Store,
    set: &StoredSet,
    index: &StoredManifest,
    repo_tag: Option<&str>,
    tar: &mut tar::Builder<W>,
) -> Result<(), StoreError> {
    let path = |d: &cudaimg_oci::digest::Digest| format!("blobs/sha256/{}", d.hex());
    add_bytes(tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut annotations = serde_json::Map::new();
    annotations.insert("io.containerd.image.name".into(), json!(set.name));
    if let Some(t) = repo_tag
        .and_then(|t| t.rsplit_once(':'))
        .map(|(_, tag)| tag)
    {
        annotations.insert(REF_NAME.into(), json!(t));
    }
    let d = &index.descriptor;
    let layout_index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": d.media_type,
            "digest": d.digest,
            "size": d.size,
            "annotations": annotations,
        }],
    });
    add_bytes(tar, "index.json", &to_vec(&layout_index)?)?;
    add_bytes(tar, "blobs/", &[])?;
    let mut seen = std::collections::BTreeSet::new();
    seen.insert(d.digest.clone());
    add_bytes(tar, &path(&d.digest), &index.bytes)?;
    for child in &set.children {
        let m = &child.manifest;
        if seen.insert(m.descriptor.digest.clone()) {
            add_bytes(tar, &path(&m.descriptor.digest), &m.bytes)?;
        }
        for b in &child.blobs {
            if !seen.insert(b.digest.clone()) {
                continue;
            }
            let mut blob = store.open_blob(&b.digest, b.size)?;
            let mut header = header(b.size);
            if let Err(e) = tar.append_data(&mut header, path(&b.digest), &mut blob) {
                return Err(match blob.mismatch() {
                    Some(m) => StoreError::BlobCorrupt {
                        digest: m.digest.clone(),
                        image: Some(set.name.clone()),
                        reason: m.reason.clone(),
                    },
                    None => e.into(),
                });
            }
        }
    }
    Ok(())
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn add_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
) -> Result<(), StoreError> {
    if path.ends_with('/') {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_size(0);
        tar.append_data(&mut h, path, std::io::empty())?;
        return Ok(());
    }
    let mut h = header(bytes.len() as u64);
    tar.append_data(&mut h, path, bytes)?;
    Ok(())
}

fn to_vec(v: &serde_json::Value) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Io(std::io::Error::other(e)))
}
