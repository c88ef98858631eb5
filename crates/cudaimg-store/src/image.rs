//! Reading a named image back out of the store: its entry, manifest and config, checked to
//! be whole before any command uses them.

use super::index::{IndexEntry, IndexPlatform};
use super::{Store, StoreError};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{self, ImageConfig, ImageManifest, Manifest, MAX_MANIFEST_BYTES};
use cudaimg_oci::platform::Platform;

/// A stored single-platform image.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// Its canonical name (`docker.io/nvidia/cuda:TAG`).
    pub name: String,
    /// The manifest's media type, as the entry records it.
    pub media_type: String,
    /// The manifest list or index it was chosen from, if any.
    pub index_digest: Option<Digest>,
    /// The platform the entry records, if any.
    entry_platform: Option<Platform>,
    pub digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub manifest: ImageManifest,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
}

impl StoredImage {
    /// The platform the entry records, else the config's.
    pub fn platform(&self) -> Platform {
        self.entry_platform.clone().unwrap_or_else(|| Platform {
            os: self.config.os.clone(),
            architecture: self.config.architecture.clone(),
            variant: self.config.variant.clone(),
        })
    }
}

impl Store {
    /// The image stored as `name` for `want` (else the host's platform, else the only one).
    /// `Ok(None)` when no entry has that name.
    pub fn image(
        &self,
        name: &str,
        want: Option<&Platform>,
    ) -> Result<Option<StoredImage>, StoreError> {
        let index = self.read_index()?;
        // A whole multi-platform image's index entry is not an image; its platforms are.
        let candidates: Vec<&IndexEntry> = index.find(name).filter(|e| !e.is_index()).collect();
        let Some(entry) = pick(&candidates, want) else {
            return Ok(None);
        };
        let corrupt = |what: String| StoreError::Corrupt(format!("{name}: {what}"));
        let digest = entry.digest().map_err(|e| corrupt(e.to_string()))?;
        // A blob the index names but that is gone: say which, and how to get it back.
        let missing = |what: &'static str, digest: &Digest| {
            let (name, digest) = (name.to_owned(), digest.clone());
            let platform = entry.platform.as_ref().map(|p| p.to_platform().to_string());
            move |e: StoreError| match e {
                StoreError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                    StoreError::MissingBlob {
                        name,
                        what,
                        digest,
                        platform,
                    }
                }
                e => e,
            }
        };
        let manifest_bytes = self
            .read_blob(&digest, MAX_MANIFEST_BYTES)
            .map_err(missing("manifest", &digest))?;
        if Digest::of(&manifest_bytes) != digest {
            return Err(corrupt(format!("manifest {digest} is corrupt")));
        }
        let Ok(Manifest::Image(manifest)) =
            manifest::parse(&manifest_bytes, Some(&entry.media_type))
        else {
            return Err(corrupt(format!(
                "manifest {digest} is not an image manifest"
            )));
        };
        let config_bytes = self
            .read_blob(&manifest.config.digest, MAX_MANIFEST_BYTES)
            .map_err(missing("config", &manifest.config.digest))?;
        if Digest::of(&config_bytes) != manifest.config.digest {
            return Err(corrupt(format!(
                "config {} is corrupt",
                manifest.config.digest
            )));
        }
        let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(|e| {
            corrupt(format!(
                "config {} is not JSON: {e}",
                manifest.config.digest
            ))
        })?;
        for l in &manifest.layers {
            if !self.has_blob(&l.digest, l.size) {
                return Err(corrupt(format!("layer {} is missing", l.digest)));
            }
        }
        // An unusable recorded digest is `verify`'s to report; the image is still whole.
        let index_digest = entry.index_digest().and_then(|d| Digest::parse(d).ok());
        Ok(Some(StoredImage {
            name: name.to_owned(),
            media_type: entry.media_type.clone(),
            index_digest,
            entry_platform: entry.platform.as_ref().map(IndexPlatform::to_platform),
            digest,
            manifest_bytes,
            manifest,
            config_bytes,
            config,
        }))
    }
}

/// The entry for the requested platform, else the host's, else the first.
fn pick<'a>(candidates: &[&'a IndexEntry], want: Option<&Platform>) -> Option<&'a IndexEntry> {
    let platform_of = |e: &IndexEntry| e.platform.as_ref().map(IndexPlatform::to_platform);
    if let Some(w) = want {
        return candidates
            .iter()
            .copied()
            .find(|e| platform_of(e).is_some_and(|p| w.matches(&p)));
    }
    let host = Platform::host();
    candidates
        .iter()
        .copied()
        .find(|e| platform_of(e).is_some_and(|p| host.matches(&p)))
        .or_else(|| candidates.first().copied())
}
