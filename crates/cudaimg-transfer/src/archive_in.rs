//! Reading an image archive into the store: what `docker save` writes (the legacy layout of
//! Engines before 25: `manifest.json`, `<config hex>.json`, `<id>/layer.tar`; the OCI
//! layout with `manifest.json` beside it from 25 on), `skopeo copy … oci-archive:` and
//! `docker-archive:`, and `cudaimg export`. The other half of [`crate::archive`].
//!
//! The archive is input, not trusted. It is unpacked into a scratch directory inside the
//! store's own `ingest/` (same file system, removed at the end), taking only directories and
//! regular files under relative paths; the legacy layout's links between duplicate layers
//! are followed only to files inside the archive. A legacy archive is then rewritten as an
//! OCI layout: each layer is hashed (its digest is its diff ID, as `docker save` writes
//! them uncompressed) and must match the config's `rootfs.diff_ids`, and a Docker manifest
//! naming the uncompressed layers is written. Both kinds then go through
//! [`Store::import_layout`], which streams every blob in against its digest and names the
//! images last, so nothing is named unless every blob checked out.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use cudaimg_oci::digest::{Digest, Hasher};
use cudaimg_oci::manifest::{Descriptor, DOCKER_CONFIG, DOCKER_LAYER_PLAIN, DOCKER_MANIFEST};
use cudaimg_oci::reference::ImageRef;
use cudaimg_store::{ImportError, ImportReport, Naming, RecordedName, Store};

/// `manifest.json` and configs are read up to this size (real ones are a few KB).
const MAX_JSON: u64 = 8 << 20;

/// Which kind of archive it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveKind {
    /// An OCI image layout (`oci-layout`, `index.json`): Docker 25+, skopeo, cudaimg.
    OciLayout,
    /// Docker's legacy `docker save` layout (`manifest.json` only).
    DockerLegacy,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("`{}` is not an image archive cudaimg can read: {reason}", path.display())]
    NotAnArchive { path: PathBuf, reason: String },
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Store(#[from] cudaimg_store::StoreError),
}

impl ArchiveError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ArchiveError::NotAnArchive { .. } | ArchiveError::Read { .. } => Some(
                "give a tar written by `docker save`, `skopeo copy … oci-archive:` or \
                 `docker-archive:`, or `cudaimg export`; nothing was named in the store"
                    .into(),
            ),
            ArchiveError::Import(e) => e.hint(),
            ArchiveError::Store(e) => e.hint(),
        }
    }
}

/// What [`import_archive`] did.
pub struct ArchiveImported {
    pub kind: ArchiveKind,
    pub report: ImportReport,
}

/// Imports the archive at `path` into `store`: every image under `name` when given, else
/// under the names the archive records (`RepoTags`, `io.containerd.image.name`, or a full
/// reference as `org.opencontainers.image.ref.name`), canonical as pulls name them.
pub async fn import_archive(
    store: &Store,
    path: &Path,
    name: Option<String>,
) -> Result<ArchiveImported, ArchiveError> {
    let ingest = store.root().join("ingest");
    fs_err::create_dir_all(&ingest).map_err(|source| ArchiveError::Read {
        path: ingest.clone(),
        source,
    })?;
    let scratch = tempfile::Builder::new()
        .prefix(".archive-")
        .tempdir_in(&ingest)
        .map_err(|source| ArchiveError::Read {
            path: ingest.clone(),
            source,
        })?;
    let dir = scratch.path().to_owned();
    let src = path.to_owned();
    let kind = tokio::task::spawn_blocking(move || unpack_as_layout(&src, &dir))
        .await
        .map_err(|e| ArchiveError::NotAnArchive {
            path: path.to_owned(),
            reason: format!("reading it stopped: {e}"),
        })??;
    let naming = match name {
        Some(n) => Naming::As(n),
        None => Naming::With(Box::new(recorded_name)),
    };
    let report = store.import_layout(scratch.path(), &naming).await?;
    Ok(ArchiveImported { kind, report })
}

/// The store name of what an entry records: a full reference, canonical; a bare tag names
/// nothing (there is no repository to put it under).
fn recorded_name(recorded: &RecordedName<'_>) -> Option<String> {
    recorded
        .image_name
        .into_iter()
        .chain(recorded.ref_name)
        .filter(|n| n.contains(':') || n.contains('/'))
        .find_map(|n| ImageRef::parse(n).ok())
        .filter(|r| r.tag.is_some() || r.digest.is_some())
        .map(|r| r.to_string())
}

fn not_archive(path: &Path, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::NotAnArchive {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Unpacks `archive` into `dir` (see the module docs) and leaves an OCI layout there.
fn unpack_as_layout(archive: &Path, dir: &Path) -> Result<ArchiveKind, ArchiveError> {
    let read_err = |source| ArchiveError::Read {
        path: archive.to_owned(),
        source,
    };
    // A FIFO, a device or a directory is refused before a byte is read from it (checked on
    // the opened descriptor, so nothing can be swapped in between).
    let file = cudaimg_static::regular::open_regular(archive).map_err(|e| match e {
        cudaimg_static::regular::FileError::Io(source) => read_err(source),
        other => not_archive(archive, other.to_string()),
    })?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    // Links of the legacy layout: archive path → the path it names, resolved later.
    let mut links: HashMap<PathBuf, PathBuf> = HashMap::new();
    // A header that does not parse is not a tar (or a truncated one): the user's mistake.
    let not_tar =
        |e: std::io::Error| not_archive(archive, format!("it is not a whole tar archive ({e})"));
    for entry in tar.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        let rel = entry.path().map_err(read_err)?.into_owned();
        let rel = confined(&rel).ok_or_else(|| {
            not_archive(
                archive,
                format!("it names `{}`, outside itself", rel.display()),
            )
        })?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        let to = dir.join(&rel);
        if kind.is_dir() {
            fs_err::create_dir_all(&to).map_err(read_err)?;
        } else if kind.is_file() {
            if let Some(parent) = to.parent() {
                fs_err::create_dir_all(parent).map_err(read_err)?;
            }
            // `create_new`: a name twice in the archive is not silently replaced.
            let mut out = fs_err::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&to)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        not_archive(archive, format!("it holds `{}` twice", rel.display()))
                    } else {
                        read_err(e)
                    }
                })?;
            std::io::copy(&mut entry, &mut out).map_err(read_err)?;
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(read_err)?
                .ok_or_else(|| not_archive(archive, format!("`{}` links nowhere", rel.display())))?
                .into_owned();
            // A symlink is relative to its directory; a hard link names an archive path.
            let base = if kind.is_symlink() {
                rel.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                PathBuf::new()
            };
            let resolved = confined(&base.join(&target)).ok_or_else(|| {
                not_archive(
                    archive,
                    format!(
                        "`{}` links outside it, to `{}`",
                        rel.display(),
                        target.display()
                    ),
                )
            })?;
            links.insert(rel, resolved);
        }
        // Devices and FIFOs are no part of an image archive: left out.
    }
    if dir.join("oci-layout").is_file() && dir.join("index.json").is_file() {
        return Ok(ArchiveKind::OciLayout);
    }
    if !dir.join("manifest.json").is_file() {
        return Err(not_archive(
            archive,
            "it has neither `index.json` and `oci-layout` (an OCI layout) nor `manifest.json` \
             (docker save)",
        ));
    }
    legacy_to_layout(archive, dir, &links)?;
    Ok(ArchiveKind::DockerLegacy)
}

/// `path` without `.` and with `..` applied, if it stays inside; `None` if it leaves.
fn confined(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LegacyEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Reads a regular file of the unpacked archive, at most `cap` bytes of it.
fn read_capped(archive: &Path, file: &Path, cap: u64) -> Result<Vec<u8>, ArchiveError> {
    cudaimg_static::regular::read_capped(file, cap).map_err(|e| match e {
        cudaimg_static::regular::FileError::Io(source) => ArchiveError::Read {
            path: archive.to_owned(),
            source,
        },
        other => not_archive(archive, other.to_string()),
    })
}

/// Rewrites a legacy `docker save` layout in `dir` as an OCI layout (see the module docs).
fn legacy_to_layout(
    archive: &Path,
    dir: &Path,
    links: &HashMap<PathBuf, PathBuf>,
) -> Result<(), ArchiveError> {
    let io = |source| ArchiveError::Read {
        path: archive.to_owned(),
        source,
    };
    let entries: Vec<LegacyEntry> =
        serde_json::from_slice(&read_capped(archive, &dir.join("manifest.json"), MAX_JSON)?)
            .map_err(|e| not_archive(archive, format!("its `manifest.json`: {e}")))?;
    let blobs = dir.join("blobs/sha256");
    fs_err::create_dir_all(&blobs).map_err(io)?;
    // The path of a file in the archive, links followed (a few hops at most).
    let resolve = |raw: &str| -> Result<PathBuf, ArchiveError> {
        let mut rel = confined(Path::new(raw)).ok_or_else(|| {
            not_archive(
                archive,
                format!("`manifest.json` names `{raw}`, outside it"),
            )
        })?;
        for _ in 0..8 {
            match links.get(&rel) {
                Some(next) => rel = next.clone(),
                None => break,
            }
        }
        let path = dir.join(&rel);
        match fs_err::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            _ => Err(not_archive(
                archive,
                format!("`manifest.json` names `{raw}`, which it does not hold as a file"),
            )),
        }
    };
    let into_blobs = |file: &Path| into_blobs(archive, &blobs, file);
    let mut index = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let config_path = resolve(&entry.config)?;
        let config_bytes = read_capped(archive, &config_path, MAX_JSON)?;
        let config: cudaimg_oci::manifest::ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| not_archive(archive, format!("the config `{}`: {e}", entry.config)))?;
        let mut config_desc = into_blobs(&config_path)?;
        config_desc.media_type = DOCKER_CONFIG.into();
        let mut layers = Vec::new();
        for raw in &entry.layers {
            let mut d = into_blobs(&resolve(raw)?)?;
            d.media_type = DOCKER_LAYER_PLAIN.into();
            layers.push(d);
        }
        // `docker save` layers are uncompressed: each digest is its diff ID.
        let ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
        if ids != config.rootfs.diff_ids {
            return Err(not_archive(
                archive,
                format!(
                    "image {} (`{}`): its layers hash to {ids:?}, its config lists {:?}",
                    i + 1,
                    entry.config,
                    config.rootfs.diff_ids
                ),
            ));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor_json(&config_desc),
            "layers": layers.iter().map(descriptor_json).collect::<Vec<_>>(),
        });
        let bytes =
            serde_json::to_vec(&manifest).map_err(|e| not_archive(archive, e.to_string()))?;
        let digest = Digest::of(&bytes);
        fs_err::write(blobs.join(digest.hex()), &bytes).map_err(io)?;
        let tags = entry.repo_tags.clone().unwrap_or_default();
        // One index entry per tag (an image saved untagged is stored, not named).
        let names: Vec<Option<String>> = if tags.is_empty() {
            vec![None]
        } else {
            tags.into_iter().map(Some).collect()
        };
        for name in names {
            let mut e = serde_json::json!({
                "mediaType": DOCKER_MANIFEST,
                "digest": digest.to_string(),
                "size": bytes.len(),
            });
            if let Some(n) = name {
                e["annotations"] = serde_json::json!({ "io.containerd.image.name": n });
            }
            index.push(e);
        }
    }
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": index });
    fs_err::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).map_err(|e| not_archive(archive, e.to_string()))?,
    )
    .map_err(io)?;
    fs_err::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
    Ok(())
}

/// Links `file` as `blobs/<hex>` of its SHA-256 (hashing it), unless that is there already.
fn into_blobs(archive: &Path, blobs: &Path, file: &Path) -> Result<Descriptor, ArchiveError> {
    let io = |source| ArchiveError::Read {
        path: archive.to_owned(),
        source,
    };
    let mut hasher = Hasher::new();
    let mut f = fs_err::File::open(file).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let (digest, size) = hasher.finish();
    let to = blobs.join(digest.hex());
    if !to.exists() {
        fs_err::hard_link(file, &to).map_err(io)?;
    }
    Ok(Descriptor {
        media_type: String::new(),
        digest,
        size,
    })
}

/// A descriptor as a manifest writes it.
fn descriptor_json(d: &Descriptor) -> serde_json::Value {
    serde_json::json!({
        "mediaType": d.media_type,
        "size": d.size,
        "digest": d.digest.to_string(),
    })
}
