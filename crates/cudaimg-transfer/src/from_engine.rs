//! An image the Docker Engine built, brought into the store (`build --push`), its base
//! layers kept as upstream compressed them.
//!
//! The engine hands the image out as `docker save` does (`GET /images/{name}/get`): the
//! legacy layout before Engine 25 (`<id>/layer.tar`, `<config hex>.json`, `manifest.json`),
//! an OCI layout with `manifest.json` from 25 on. Both carry uncompressed layers, listed in
//! order by `manifest.json`, which comes last in the tar. Each layer is matched to the
//! config's `rootfs.diff_ids` by the SHA-256 of its bytes; a layer whose diff ID is one of
//! the base's keeps the base's upstream blob and descriptor (no re-compression, same
//! digest), so a registry holding the base already has it. Only new layers are gzipped.
//!
//! Memory stays flat: the archive is read as it streams, never held. The store's
//! [`cudaimg_store::BlobWriter`] needs a blob's digest before its first byte, and a
//! compressed digest is known only at its end, so the archive is read three times: diff
//! IDs and the config; the new layers' compressed digests (bytes hashed and dropped); the
//! new layers again, into the store, where the writer checks every byte against the digest
//! of the second read (gzip is deterministic). Each read checks the layers' diff IDs again,
//! so an image retagged meanwhile is refused, never stored mixed.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use cudaimg_docker::{DockerEngine, DockerError};
use cudaimg_oci::digest::{Digest, Hasher};
use cudaimg_oci::manifest::{Descriptor, ImageConfig, OCI_MANIFEST};
use cudaimg_store::{NamedImage, Store, StoreError, StoredImage};

const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// `manifest.json` and the config are read up to this size (real ones are a few KB).
const MAX_JSON: u64 = 8 << 20;
const PIECE: usize = 1 << 20;

/// What [`import_built`] stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuiltImage {
    /// The name in the store.
    pub name: String,
    /// The new manifest's digest.
    pub digest: Digest,
    /// Layers kept as the base's upstream blobs.
    pub reused: Vec<Digest>,
    /// Layers compressed here: (blob digest, compressed size, diff ID).
    pub compressed: Vec<(Digest, u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum FromEngineError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the Docker Engine's archive of `{name}` is not usable: {reason}")]
    Archive { name: String, reason: String },
    #[error("cannot read the Docker Engine's archive of `{name}`")]
    Read {
        name: String,
        #[source]
        source: io::Error,
    },
}

impl FromEngineError {
    pub fn hint(&self) -> Option<String> {
        match self {
            FromEngineError::Docker(e) => Some(e.hint()),
            FromEngineError::Store(e) => e.hint(),
            FromEngineError::Archive { .. } | FromEngineError::Read { .. } => Some(
                "build again; if another process retags the image meanwhile, let it finish first"
                    .into(),
            ),
        }
    }
}

/// What the first read learns.
struct Layout {
    /// `manifest.json`'s layer paths, in order, links resolved.
    layers: Vec<String>,
    /// Each layer path's diff ID and size, as hashed.
    hashed: HashMap<String, (String, u64)>,
    config: Vec<u8>,
}

/// Brings `engine_name` (an image the engine holds) into `store` as `name`, reusing the
/// base's compressed blobs for its layers (see the module docs).
pub async fn import_built(
    engine: &DockerEngine,
    store: &Store,
    engine_name: &str,
    base: &StoredImage,
    name: &str,
) -> Result<BuiltImage, FromEngineError> {
    let archive_err = |reason: String| FromEngineError::Archive {
        name: engine_name.to_owned(),
        reason,
    };
    let image_id = engine
        .image_id(engine_name)
        .await?
        .ok_or_else(|| archive_err("the engine does not hold it".into()))?;
    let config_digest = Digest::parse(&image_id)
        .map_err(|e| archive_err(format!("its image ID `{image_id}`: {e}")))?;

    // 1. Diff IDs, the layer order and the config.
    let hex = config_digest.hex().to_owned();
    let layout = read_archive(engine, engine_name, move |tar| first_read(tar, &hex)).await?;
    let layout = layout.map_err(archive_err)?;
    if Digest::of(&layout.config) != config_digest {
        return Err(archive_err(format!(
            "its config does not hash to the image ID {config_digest}"
        )));
    }
    let (plan, new) = match_layers(&layout, base).map_err(archive_err)?;

    // 2. The new layers' compressed digests.
    let wanted = new.clone();
    let digests = read_archive(engine, engine_name, move |tar| {
        compress_new(tar, &wanted, None)
    })
    .await?
    .map_err(archive_err)?;

    // 3. The new layers into the store, each checked against its digest from step 2.
    // Each digest once: a second writer of the same blob would wait for the first.
    let mut writers = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (path, (digest, size)) in &digests {
        if !seen.insert(digest.clone()) {
            continue;
        }
        if let Some(writer) = store.blob_writer(digest, *size).await? {
            writers.insert(path.clone(), writer);
        }
    }
    let wanted: BTreeMap<String, String> = new
        .iter()
        .filter(|(p, _)| writers.contains_key(*p))
        .map(|(p, d)| (p.clone(), d.clone()))
        .collect();
    if !writers.is_empty() {
        let handle = tokio::runtime::Handle::current();
        read_archive(engine, engine_name, move |tar| {
            compress_new(tar, &wanted, Some((handle, writers)))
        })
        .await?
        .map_err(archive_err)?;
    }

    store.put_bytes(&config_digest, &layout.config).await?;
    let (manifest, reused, compressed) =
        manifest_for(base, &config_digest, &layout.config, plan, &digests, &new)
            .map_err(archive_err)?;
    let digest = Digest::of(&manifest);
    store.put_bytes(&digest, &manifest).await?;
    store.name(
        name,
        &NamedImage {
            manifest: Descriptor {
                media_type: base.manifest.media_type.clone(),
                digest: digest.clone(),
                size: manifest.len() as u64,
            },
            platform: None,
            index_digest: None,
        },
    )?;
    Ok(BuiltImage {
        name: name.to_owned(),
        digest,
        reused,
        compressed,
    })
}

/// Per layer, in order: the base's descriptor (same diff ID), or the archive path of a new
/// layer; and the new layers' paths with their diff IDs. Checks every layer's hash against
/// the config.
#[allow(clippy::type_complexity)]
fn match_layers(
    layout: &Layout,
    base: &StoredImage,
) -> Result<(Vec<Result<Descriptor, String>>, BTreeMap<String, String>), String> {
    let config: ImageConfig = serde_json::from_slice(&layout.config)
        .map_err(|e| format!("its config is not an image config: {e}"))?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != layout.layers.len() {
        return Err(format!(
            "its config lists {} layers, manifest.json {}",
            diff_ids.len(),
            layout.layers.len()
        ));
    }
    let base_layers: HashMap<&str, &Descriptor> = base
        .config
        .rootfs
        .diff_ids
        .iter()
        .map(String::as_str)
        .zip(&base.manifest.layers)
        .collect();
    // Per layer: the base's descriptor, or the path of a new one.
    let mut plan: Vec<Result<Descriptor, String>> = Vec::new();
    // New layer paths and their diff IDs, each path once.
    let mut new: BTreeMap<String, String> = BTreeMap::new();
    for (path, diff_id) in layout.layers.iter().zip(diff_ids) {
        let Some((hashed, _)) = layout.hashed.get(path) else {
            return Err(format!("manifest.json names `{path}`, not in it"));
        };
        if hashed != diff_id {
            return Err(format!(
                "`{path}` hashes to {hashed}, its config says {diff_id}"
            ));
        }
        if let Some(d) = base_layers.get(diff_id.as_str()) {
            plan.push(Ok((*d).clone()));
        } else {
            new.insert(path.clone(), diff_id.clone());
            plan.push(Err(path.clone()));
        }
    }
    Ok((plan, new))
}

/// The new image's manifest (media types those of the base's), and the layers reused and
/// compressed.
type ManifestParts = (Vec<u8>, Vec<Digest>, Vec<(Digest, u64, String)>);

fn manifest_for(
    base: &StoredImage,
    config_digest: &Digest,
    config: &[u8],
    plan: Vec<Result<Descriptor, String>>,
    digests: &Compressed,
    new: &BTreeMap<String, String>,
) -> Result<ManifestParts, String> {
    let oci = base.manifest.media_type == OCI_MANIFEST;
    let (layer_type, config_type) = if oci {
        (OCI_LAYER_GZIP, OCI_CONFIG)
    } else {
        (DOCKER_LAYER_GZIP, DOCKER_CONFIG)
    };
    let mut reused = Vec::new();
    let mut compressed = Vec::new();
    let layers: Vec<Descriptor> = plan
        .into_iter()
        .map(|p| match p {
            Ok(d) => {
                reused.push(d.digest.clone());
                d
            }
            Err(path) => {
                let (digest, size) = digests[&path].clone();
                compressed.push((digest.clone(), size, new[&path].clone()));
                Descriptor {
                    media_type: layer_type.to_owned(),
                    digest,
                    size,
                }
            }
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": base.manifest.media_type,
        "config": {
            "mediaType": config_type,
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type,
            "digest": l.digest.to_string(),
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| format!("cannot write its manifest: {e}"))?;
    Ok((bytes, reused, compressed))
}

/// Streams the engine's archive of `name` into `work` on a blocking thread, as a tar.
async fn read_archive<T: Send + 'static>(
    engine: &DockerEngine,
    name: &str,
    work: impl FnOnce(&mut tar::Archive<ChannelRead>) -> io::Result<T> + Send + 'static,
) -> Result<T, FromEngineError> {
    let mut body = Box::pin(engine.save(name).await?);
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let reader = tokio::task::spawn_blocking(move || {
        let mut tar = tar::Archive::new(ChannelRead {
            rx,
            buf: Bytes::new(),
        });
        work(&mut tar)
    });
    while let Some(chunk) = body.next().await {
        // The reader stopped (done, or failed): its result says which.
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx);
    reader
        .await
        .map_err(|e| FromEngineError::Read {
            name: name.to_owned(),
            source: io::Error::other(e),
        })?
        .map_err(|source| FromEngineError::Read {
            name: name.to_owned(),
            source,
        })
}

/// The archive's bytes, from the task that receives them.
struct ChannelRead {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    buf: Bytes,
}

impl Read for ChannelRead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = self.buf.len().min(out.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}

/// A tar entry's path, normalised (`./` stripped).
fn entry_path<R: Read>(e: &tar::Entry<'_, R>) -> io::Result<String> {
    let p = e.path()?.to_string_lossy().into_owned();
    Ok(p.trim_start_matches("./").to_owned())
}

/// The first read: every file hashed, `manifest.json` and the config kept. An `Err(String)`
/// inside is a problem with the archive's content.
fn first_read(
    tar: &mut tar::Archive<ChannelRead>,
    config_hex: &str,
) -> io::Result<Result<Layout, String>> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "Layers")]
        layers: Vec<String>,
    }
    let config_paths = [
        format!("{config_hex}.json"),
        format!("blobs/sha256/{config_hex}"),
    ];
    let mut hashed = HashMap::new();
    let mut links = HashMap::new();
    let mut manifest = None;
    let mut config = None;
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry_path(&entry)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            // The legacy layout links a layer that occurs twice to its first copy.
            if let Some(target) = entry.link_name()? {
                let target = target.to_string_lossy().into_owned();
                let resolved = if kind.is_symlink() {
                    resolve(&path, &target)
                } else {
                    target.trim_start_matches("./").to_owned()
                };
                links.insert(path, resolved);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if path == "manifest.json" || config_paths.contains(&path) {
            let mut bytes = Vec::new();
            (&mut entry).take(MAX_JSON + 1).read_to_end(&mut bytes)?;
            if bytes.len() as u64 > MAX_JSON {
                return Ok(Err(format!("`{path}` is larger than {MAX_JSON} bytes")));
            }
            if path == "manifest.json" {
                manifest = Some(bytes);
                continue;
            }
            hashed.insert(path, (Digest::of(&bytes).to_string(), bytes.len() as u64));
            config = Some(bytes);
            continue;
        }
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; PIECE];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let (digest, size) = hasher.finish();
        hashed.insert(path, (digest.to_string(), size));
    }
    let Some(manifest) = manifest else {
        return Ok(Err("it has no manifest.json".into()));
    };
    let Some(config) = config else {
        return Ok(Err(format!("it has no config {config_hex}")));
    };
    let entries: Vec<Entry> = match serde_json::from_slice(&manifest) {
        Ok(e) => e,
        Err(e) => {
            return Ok(Err(format!(
                "its manifest.json is not the expected JSON: {e}"
            )))
        }
    };
    let [entry] = entries.as_slice() else {
        return Ok(Err(format!(
            "its manifest.json lists {} images, not one",
            entries.len()
        )));
    };
    let mut layers = Vec::new();
    for l in &entry.layers {
        let mut p = l.trim_start_matches("./").to_owned();
        // Links to links are followed a few steps, never in a loop.
        for _ in 0..8 {
            match links.get(&p) {
                Some(t) => p.clone_from(t),
                None => break,
            }
        }
        layers.push(p);
    }
    Ok(Ok(Layout {
        layers,
        hashed,
        config,
    }))
}

/// A symbolic link's target, relative to the link's own directory, as an archive path.
fn resolve(link: &str, target: &str) -> String {
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for t in target.split('/') {
        match t {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            t => parts.push(t),
        }
    }
    parts.join("/")
}

/// New layer paths and their compressed digests and sizes.
type Compressed = HashMap<String, (Digest, u64)>;

type Writers = (
    tokio::runtime::Handle,
    HashMap<String, cudaimg_store::BlobWriter>,
);

/// Gzips the new layers (`wanted`: path → diff ID): their compressed digests and sizes, or,
/// with `into`, written into the store's blob writers and committed.
fn compress_new(
    tar: &mut tar::Archive<ChannelRead>,
    wanted: &BTreeMap<String, String>,
    mut into: Option<Writers>,
) -> io::Result<Result<Compressed, String>> {
    let mut out = HashMap::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry_path(&entry)?;
        let Some(diff_id) = wanted.get(&path) else {
            continue;
        };
        if !entry.header().entry_type().is_file() || out.contains_key(&path) {
            continue;
        }
        let writer = into
            .as_mut()
            .and_then(|(h, w)| w.remove(&path).map(|w| (h.clone(), w)));
        let mut gz = GzEncoder::new(
            Sink {
                hasher: Hasher::new(),
                writer,
            },
            Compression::default(),
        );
        let mut plain = Hasher::new();
        let mut buf = vec![0u8; PIECE];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            plain.update(&buf[..n]);
            gz.write_all(&buf[..n])?;
        }
        let (actual, _) = plain.finish();
        if actual.to_string() != *diff_id {
            return Ok(Err(format!(
                "`{path}` changed between reads: it hashes to {actual}, not {diff_id}; was the \
                 image retagged meanwhile?"
            )));
        }
        let sink = gz.finish()?;
        let (digest, size) = sink.hasher.finish();
        if let Some((handle, mut w)) = sink.writer {
            handle
                .block_on(w.commit())
                .map_err(|e| io::Error::other(format!("layer {digest}: {e}")))?;
        }
        out.insert(path, (digest, size));
    }
    if let Some(missing) = wanted.keys().find(|p| !out.contains_key(*p)) {
        return Ok(Err(format!("`{missing}` is missing from a later read")));
    }
    Ok(Ok(out))
}

/// Where compressed bytes go: hashed, and written into the store when a writer is given.
struct Sink {
    hasher: Hasher,
    writer: Option<(tokio::runtime::Handle, cudaimg_store::BlobWriter)>,
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.update(data);
        if let Some((handle, w)) = &mut self.writer {
            handle
                .block_on(w.write(data))
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn links_resolve_relative_to_their_directory() {
        assert_eq!(resolve("b/layer.tar", "../a/layer.tar"), "a/layer.tar");
        assert_eq!(resolve("b/layer.tar", "./x"), "b/x");
    }
}
