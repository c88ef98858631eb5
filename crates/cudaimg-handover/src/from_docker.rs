//! An image the Docker Engine built, brought into the store (`build --push`), its base
//! layers kept as upstream compressed them.
//!
//! The engine hands the image out as `docker save` does (`GET /images/{name}/get`): the
//! legacy layout before Engine 25 (`<id>/layer.tar`, `<config hex>.json`, `manifest.json`),
//! an OCI layout (`blobs/sha256/<hex>`, `index.json`, `oci-layout`) with the same
//! `manifest.json` from 25 on. Both carry uncompressed layers, listed in order by
//! `manifest.json`. Each layer is matched to the config's `rootfs.diff_ids` by the SHA-256
//! of its bytes; a layer whose diff ID is one of the base's keeps the base's upstream blob
//! and descriptor (no re-compression, same digest), so a registry holding the base already
//! has it. Only new layers are gzipped.
//!
//! The archive is read once, as it streams ([`import_archive`]). Which file is a layer, and
//! which layer is new, is known only at its end (`manifest.json` comes last in the legacy
//! layout, and a layer's diff ID is its hash), so every file that may be a new layer is
//! hashed while it is copied into a nameless scratch file in the store's `ingest/`
//! ([`Store::scratch`]); one that turns out to be the base's is dropped at once. (In the OCI
//! layout a layer's path names its diff ID, so the base's are only hashed.) Nothing enters
//! `blobs/` until the whole archive has checked out: the config hashes to the image ID,
//! `manifest.json` names it, and every layer hashes to its diff ID. Then each new layer is
//! gzipped from its scratch file twice, once for its compressed digest and once into the
//! store's writer, which needs that digest before the first byte and checks every byte
//! against it (gzip is deterministic). Memory stays flat; disk holds the new layers once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Seek, Write};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use cudaimg_docker::{DockerEngine, DockerError};
use cudaimg_oci::digest::{Digest, Hasher};
use cudaimg_oci::manifest::{
    Descriptor, ImageConfig, DOCKER_CONFIG, DOCKER_LAYER_GZIP, OCI_CONFIG, OCI_LAYER_GZIP,
    OCI_MANIFEST,
};
use cudaimg_store::{NamedImage, Store, StoreError, StoredImage};

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
                "nothing was stored; build again, and if another process retags or removes \
                 the image meanwhile, let it finish first"
                    .into(),
            ),
        }
    }
}

/// What the one read learns.
struct Layout {
    /// `manifest.json`'s layer paths, in order, links resolved.
    layers: Vec<String>,
    /// Each file's diff ID and size, as hashed.
    hashed: HashMap<String, (String, u64)>,
    /// The files that may be new layers, copied (rewound) into scratch files.
    spooled: HashMap<String, std::fs::File>,
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
    let archive = engine.save(engine_name).await?;
    import_archive(archive, store, engine_name, &config_digest, base, name).await
}

/// Stores the image in `archive` (a `docker save` tar of either layout, as a byte stream)
/// whose config is `config_digest`, as `name`; reads the archive once. A problem with the
/// archive is an [`FromEngineError::Archive`] naming it, and nothing is stored.
pub async fn import_archive<S>(
    archive: S,
    store: &Store,
    engine_name: &str,
    config_digest: &Digest,
    base: &StoredImage,
    name: &str,
) -> Result<BuiltImage, FromEngineError>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let archive_err = |reason: String| FromEngineError::Archive {
        name: engine_name.to_owned(),
        reason,
    };
    let hex = config_digest.hex().to_owned();
    let base_ids: HashSet<String> = base.config.rootfs.diff_ids.iter().cloned().collect();
    let scratch_store = store.clone();
    let layout = read_archive(archive, engine_name, move |tar| {
        one_read(tar, &hex, &base_ids, &scratch_store)
    })
    .await?
    .map_err(archive_err)?;
    if Digest::of(&layout.config) != *config_digest {
        return Err(archive_err(format!(
            "its config does not hash to the image ID {config_digest}"
        )));
    }
    let (plan, new) = match_layers(&layout, base).map_err(archive_err)?;

    // The whole archive checked out: only now does anything go into the store.
    let mut spooled = layout.spooled;
    let mut digests: Compressed = HashMap::new();
    for (path, diff_id) in &new {
        let spool = spooled
            .remove(path)
            .ok_or_else(|| archive_err(format!("`{path}` was not kept while it streamed")))?;
        let (digest, size) = compress_into(store, spool, path, diff_id).await?;
        digests.insert(path.clone(), (digest, size));
    }
    drop(spooled);

    store.put_bytes(config_digest, &layout.config).await?;
    let (manifest, reused, compressed) =
        manifest_for(base, config_digest, &layout.config, plan, &digests, &new)
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

/// Gzips a new layer from its scratch file: once for the compressed digest, once into the
/// store's writer, which checks the bytes against it.
async fn compress_into(
    store: &Store,
    spool: std::fs::File,
    path: &str,
    diff_id: &str,
) -> Result<(Digest, u64), FromEngineError> {
    let handle = tokio::runtime::Handle::current();
    let store = store.clone();
    let want = diff_id.to_owned();
    let name = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let read_err = |source: io::Error| FromEngineError::Read {
            name: name.clone(),
            source,
        };
        let (digest, size) = gzip(&spool, &want, None).map_err(read_err)?;
        if let Some(writer) = handle.block_on(store.blob_writer(&digest, size))? {
            gzip(&spool, &want, Some((handle.clone(), writer))).map_err(read_err)?;
        }
        Ok((digest, size))
    })
    .await
    .map_err(|e| FromEngineError::Read {
        name: path.to_owned(),
        source: io::Error::other(e),
    })?
}

/// Gzips a scratch file from its start: the compressed digest and size; with a writer, the
/// compressed bytes go into it and it is committed. The plain bytes are hashed again: a
/// scratch file that no longer holds the layer it was checked as is an error.
fn gzip(
    file: &std::fs::File,
    diff_id: &str,
    writer: Option<(tokio::runtime::Handle, cudaimg_store::BlobWriter)>,
) -> io::Result<(Digest, u64)> {
    let mut file = file;
    file.seek(io::SeekFrom::Start(0))?;
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
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        plain.update(&buf[..n]);
        gz.write_all(&buf[..n])?;
    }
    let (actual, _) = plain.finish();
    if actual.to_string() != diff_id {
        return Err(io::Error::other(format!(
            "its scratch copy hashes to {actual} now, not {diff_id}"
        )));
    }
    let sink = gz.finish()?;
    let (digest, size) = sink.hasher.finish();
    if let Some((handle, mut w)) = sink.writer {
        handle
            .block_on(w.commit())
            .map_err(|e| io::Error::other(format!("layer {digest}: {e}")))?;
    }
    Ok((digest, size))
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

/// Streams `archive` into `work` on a blocking thread, as a tar.
async fn read_archive<S, T>(
    archive: S,
    name: &str,
    work: impl FnOnce(&mut tar::Archive<ChannelRead>) -> io::Result<T> + Send + 'static,
) -> Result<T, FromEngineError>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    T: Send + 'static,
{
    let mut body = Box::pin(archive);
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

/// The one read: every file hashed; `manifest.json` and the config kept; every file that
/// may be a new layer copied into a scratch file (see the module docs). An `Err(String)`
/// inside is a problem with the archive's content.
fn one_read(
    tar: &mut tar::Archive<ChannelRead>,
    config_hex: &str,
    base_ids: &HashSet<String>,
    store: &Store,
) -> io::Result<Result<Layout, String>> {
    let config_paths = [
        format!("{config_hex}.json"),
        format!("blobs/sha256/{config_hex}"),
    ];
    let mut hashed = HashMap::new();
    let mut spooled = HashMap::new();
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
        if hashed.contains_key(&path) || path == "manifest.json" && manifest.is_some() {
            return Ok(Err(format!("it holds `{path}` twice")));
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
        // In the OCI layout a path names its content's hash: a base layer is only hashed
        // (and checked against its diff ID below, as every layer is).
        let named_base = path
            .strip_prefix("blobs/sha256/")
            .is_some_and(|hex| base_ids.contains(&format!("sha256:{hex}")));
        let mut spool = if named_base {
            None
        } else {
            Some(store.scratch().map_err(io::Error::other)?)
        };
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; PIECE];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if let Some(f) = &mut spool {
                f.write_all(&buf[..n])?;
            }
        }
        let (digest, size) = hasher.finish();
        let digest = digest.to_string();
        // A base layer's bytes are the base's blob already: its copy is dropped now.
        if let Some(f) = spool.filter(|_| !base_ids.contains(&digest)) {
            spooled.insert(path.clone(), f);
        }
        hashed.insert(path, (digest, size));
    }
    let Some(manifest) = manifest else {
        return Ok(Err("it has no manifest.json".into()));
    };
    let layers = match layer_paths(&manifest, &config_paths, &links) {
        Ok(l) => l,
        Err(e) => return Ok(Err(e)),
    };
    let Some(config) = config else {
        return Ok(Err(format!("it has no config {config_hex}")));
    };
    Ok(Ok(Layout {
        layers,
        hashed,
        spooled,
        config,
    }))
}

/// `manifest.json`'s one image: its layer paths, in order, links resolved; its config must
/// be the image's.
fn layer_paths(
    manifest: &[u8],
    config_paths: &[String; 2],
    links: &HashMap<String, String>,
) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "Config")]
        config: String,
        #[serde(rename = "Layers")]
        layers: Vec<String>,
    }
    let entries: Vec<Entry> = serde_json::from_slice(manifest)
        .map_err(|e| format!("its manifest.json is not the expected JSON: {e}"))?;
    let [entry] = entries.as_slice() else {
        return Err(format!(
            "its manifest.json lists {} images, not one",
            entries.len()
        ));
    };
    let named = entry.config.trim_start_matches("./");
    if !config_paths.iter().any(|p| p == named) {
        return Err(format!(
            "its manifest.json names the config `{named}`, not the image's ({})",
            config_paths[0]
        ));
    }
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
    Ok(layers)
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
mod tests;
