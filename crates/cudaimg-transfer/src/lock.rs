//! `lock`: resolve a reference the way `pull` does and record the digests it names, for
//! every platform, without downloading any layer.

use crate::error::PullError;
use crate::resolve::ResolvedBy;
use crate::session::Session;
use cudaimg_config::lockfile::Pin;
use cudaimg_config::Canonical;
use cudaimg_oci::manifest::Manifest;
use cudaimg_oci::progress::Reporter;

/// A locked reference, with who vouched for it and what went wrong on the way.
#[derive(Debug, serde::Serialize)]
pub struct Locked {
    pub reference: String,
    #[serde(flatten)]
    pub pin: Pin,
    pub resolved_by: ResolvedBy,
    pub warnings: Vec<String>,
}

impl Session {
    /// Resolves `name` (step 1 of a pull) and pins what it names, every platform of it.
    pub async fn lock(
        &self,
        name: &Canonical,
        reporter: &dyn Reporter,
    ) -> Result<Locked, PullError> {
        let sources = self.sources(name)?;
        let resolved = self.resolve(&sources, &name.image, None, reporter).await?;
        let (media_type, platforms) = match resolved.parsed {
            Manifest::Image(m) => (m.media_type, std::collections::BTreeMap::default()),
            Manifest::Index(idx) => (
                idx.media_type,
                idx.manifests
                    .iter()
                    // buildx attestation manifests sit in indexes as `unknown/unknown`.
                    .filter_map(|e| {
                        e.platform
                            .as_ref()
                            .map(|p| (p.to_string(), e.descriptor.digest.clone()))
                    })
                    .filter(|(p, _)| p != "unknown/unknown")
                    .collect(),
            ),
        };
        Ok(Locked {
            reference: name.image.lock_key(),
            pin: Pin {
                digest: resolved.manifest.digest,
                media_type,
                platforms,
            },
            resolved_by: resolved.by,
            warnings: sources.warnings(),
        })
    }
}
