//! What the transfer engine's steps can fail with: [`FetchError`], moving bytes between a
//! source and the store as the fallback loop sees it (a source's failure: retry it, or ask
//! the next one; or the store's, which no other source could fix: give up; the protocol
//! error never carries a store error, this type carries both); [`SessionError`], setting
//! up a session's parts; and [`PullError`], what resolving, selecting and fetching an image
//! ends with, for every command built on those steps.

use std::time::Duration;

use cudaimg_config::ConfigError;
use cudaimg_mirrors::fallback::FallbackError;
use cudaimg_mirrors::sources::Classify;
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::ManifestError;
use cudaimg_oci::reference::ImageRef;
use cudaimg_registry::{Next, RegistryError};
use cudaimg_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for FetchError {
    fn next(&self) -> Next {
        match self {
            FetchError::Registry(e) => e.next(),
            FetchError::Store(_) => Next::GiveUp,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Registry(e) => e.retry_after(),
            FetchError::Store(_) => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            FetchError::Registry(e) => e.kind(),
            FetchError::Store(_) => "store",
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(self, FetchError::Registry(e) if e.is_not_found())
    }

    fn host_down(&self) -> bool {
        matches!(self, FetchError::Registry(e) if Classify::host_down(e))
    }
}

/// What setting up a session's parts can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot set up the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot resolve `{reference}`")]
    Resolve {
        reference: String,
        #[source]
        source: FallbackError,
    },
    #[error("`{reference}` has no image for platform `{platform}`; it offers: {available}")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("`{reference}`: {source}")]
    Unusable {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("cannot download a blob of `{reference}`")]
    Blob {
        reference: String,
        #[source]
        source: FallbackError<FetchError>,
    },
    #[error("the official registry {official} has no tag `{reference}`{}", mirror_lines(.held_by, .mirror_errors))]
    NotUpstream {
        reference: String,
        official: String,
        /// Mirrors that still answer the tag, and with what.
        held_by: Vec<(String, Digest)>,
        /// Mirrors that failed to answer, and why.
        mirror_errors: Vec<(String, String)>,
    },
    #[error("the official registry refused to say what `{reference}` is")]
    Refused {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("the official registry could not confirm the digest of `{reference}`, and `--require-upstream` is set")]
    UpstreamRequired {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("the official registry is out of reach and the mirrors disagree on `{reference}`: {}", list(.answers))]
    MirrorsDisagree {
        reference: String,
        answers: Vec<(String, Digest)>,
    },
    #[error(
        "`{reference}` is locked without platform `{platform}`; locked platforms: {available}"
    )]
    LockedPlatformMissing {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("the lockfile is inconsistent for `{reference}` on {platform}: its index names {indexed}, the lockfile {locked}")]
    LockInconsistent {
        reference: String,
        platform: String,
        indexed: Digest,
        locked: Digest,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Session(#[from] SessionError),
}

fn mirror_lines(held_by: &[(String, Digest)], errors: &[(String, String)]) -> String {
    let mut s = String::new();
    for (m, d) in held_by {
        s.push_str(&format!("\n  - mirror {m} still serves it as {d}"));
    }
    for (m, e) in errors {
        s.push_str(&format!("\n  - mirror {m}: {e}"));
    }
    s
}

fn list(answers: &[(String, Digest)]) -> String {
    answers
        .iter()
        .map(|(m, d)| format!("{m} says {d}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PullError {
    pub fn is_not_found(&self) -> bool {
        match self {
            PullError::Resolve { source, .. } => source.is_not_found(),
            PullError::NotUpstream { .. } => true,
            _ => false,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            PullError::Resolve { source, .. } if source.is_not_found() => Some(
                "check the repository and tag; NVIDIA deletes end-of-life CUDA tags from \
                 Docker Hub and NGC about six months after their end of life"
                    .into(),
            ),
            PullError::Resolve { .. } | PullError::Blob { .. } => Some(
                "every source listed above failed: check the network, and the mirrors \
                 configured for this registry in mirrors.toml"
                    .into(),
            ),
            PullError::NoPlatform { .. } => Some("choose one with `--platform OS/ARCH`".into()),
            PullError::Store(e) => e.hint(),
            PullError::Unusable { .. } => None,
            PullError::Session(_) => None,
            PullError::NotUpstream { held_by, reference, .. } => Some(match held_by.first() {
                Some((mirror, d)) => format!(
                    "the tag is gone upstream (NVIDIA deletes end-of-life tags), but mirror {mirror} still serves it as {d}; \
                     to keep using that image, pull it by digest: `cudaimg pull {}@{d}`",
                    reference.split_once(':').map_or(reference.as_str(), |(n, _)| n)
                ),
                None => "check the repository and tag; NVIDIA deletes end-of-life CUDA tags from Docker Hub and NGC about six months after their end of life".into(),
            }),
            PullError::Refused { .. } => Some(
                "the repository may not exist (Docker Hub answers unknown repositories this way), \
                 or it needs credentials: `docker login HOST`"
                    .into(),
            ),
            PullError::UpstreamRequired { .. } => Some(
                "reach the official registry, or pull a digest you trust: by `name@sha256:…` or from a lockfile with `--locked`".into(),
            ),
            PullError::MirrorsDisagree { .. } => Some(
                "without the official registry there is no telling which is current: pull by digest, or with `--locked`".into(),
            ),
            PullError::LockedPlatformMissing { .. } | PullError::LockInconsistent { .. } => Some(
                "lock the image again with `cudaimg lock REF` and commit the lockfile".into(),
            ),
        }
    }

    /// No source could say what `reference` is (its manifest or digest).
    pub(crate) fn giving_up(reference: &ImageRef, e: FallbackError) -> Self {
        PullError::Resolve {
            reference: reference.to_string(),
            source: e,
        }
    }

    /// A blob of `reference` could not be stored: no source had it, or the store failed.
    pub(crate) fn blob_failed(reference: &ImageRef, e: FallbackError<FetchError>) -> Self {
        match e {
            FallbackError::GiveUp(FetchError::Store(s)) => PullError::Store(s),
            other => PullError::Blob {
                reference: reference.to_string(),
                source: other,
            },
        }
    }
}
