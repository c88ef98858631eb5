//! `lock`: resolve a reference the way `pull` does and record the digests it names, for
//! every platform, without downloading any layer.

use super::pull::{manifest_by_digest, PullError};
use super::resolve::ResolvedBy;
use super::Engine;
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

impl Engine {
    pub async fn lock(
        &self,
        name: &Canonical,
        reporter: &dyn Reporter,
    ) -> Result<Locked, PullError> {
        let image = &name.image;
        let repo = image.repository.as_str();
        let sources = self.sources(name);
        let (digest, resolved_by) = self.top_digest(&sources, image, None, reporter).await?;
        let what = format!("manifest {digest} of `{image}`");
        let ((fetched, parsed), _) =
            manifest_by_digest(&sources, repo, &digest, None, &what, reporter)
                .await
                .map_err(|e| PullError::giving_up(image, e))?;
        let (media_type, platforms) = match parsed {
            Manifest::Image(m) => (m.media_type, Default::default()),
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
            reference: image.lock_key(),
            pin: Pin {
                digest: fetched.digest,
                media_type,
                platforms,
            },
            resolved_by,
            warnings: sources.warnings(),
        })
    }
}
