//! `lock`: resolve a reference the way `pull` does and record the digests it names, for
//! every platform, without downloading any layer.

use super::pull::{fetch_parsed, PullError};
use super::resolve::{resolve_tag, ResolvedBy};
use super::Engine;
use crate::config::Canonical;
use crate::lockfile::Pin;
use crate::manifest::Manifest;
use crate::progress::Reporter;
use crate::sources::SourceSet;

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
        let sources = SourceSet::new(
            &self.config,
            &image.registry,
            name.via_mirror.as_deref(),
            &self.http,
            &self.memory,
        );
        let (digest, resolved_by) = match (&image.digest, &image.tag) {
            (Some(d), _) => (d.clone(), ResolvedBy::Digest),
            (None, tag) => {
                let tag = tag.as_deref().unwrap_or("latest");
                resolve_tag(&sources, image, tag, self.require_upstream, reporter).await?
            }
        };
        let ((fetched, parsed), _) = sources
            .first_success(&format!("manifest {digest} of `{image}`"), reporter, |s| {
                let digest = digest.clone();
                async move { fetch_parsed(&s.client, repo, digest.as_str(), Some(&digest)).await }
            })
            .await
            .map_err(|source| PullError::Resolve {
                reference: image.to_string(),
                source,
            })?;
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
