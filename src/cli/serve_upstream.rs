//! `serve --pull-through`'s upstream: the transfer engine's [`Session`] behind the
//! server's [`Upstream`] trait, so a request the store cannot answer is resolved exactly
//! as `pull` resolves it: `mirrors.toml`'s mirrors first, the official registry the
//! authority on tags, health memory, fallback, and blobs resumed across sources.
//!
//! The adapter lives in the binary, not in `cudaimg-serve`: the server depends on the
//! store only, and the transfer engine is a layer above it.

use std::sync::Arc;

use cudaimg_config::Canonical;
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::Descriptor;
use cudaimg_oci::progress::Reporter;
use cudaimg_oci::reference::ImageRef;
use cudaimg_serve::route::ManifestRef;
use cudaimg_serve::through::{BoxFuture, Fetched, Upstream, UpstreamError};
use cudaimg_serve::Log;
use cudaimg_transfer::{Plan, PullError, Session};

/// The session every upstream request of the server shares (one connection pool, one
/// memory of each source's health).
pub struct SessionUpstream {
    pub session: Arc<Session>,
    pub log: Log,
}

/// Sources' failures and notices, as the server's log lines.
struct Logged(Log);

impl Reporter for Logged {
    fn notice(&self, line: &str) {
        (self.0)(line);
    }

    fn source_failed(&self, source: &str, what: &str, error: &(dyn std::error::Error + 'static)) {
        (self.0)(&format!(
            "warning: {source} failed for {what}: {}; trying the next source",
            cudaimg_mirrors::sources::chain(error)
        ));
    }
}

fn unreachable(e: &(dyn std::error::Error + 'static)) -> UpstreamError {
    UpstreamError::Unreachable(cudaimg_mirrors::sources::chain(e))
}

fn pull_error(e: &PullError) -> UpstreamError {
    if e.is_not_found() {
        UpstreamError::NotFound(cudaimg_mirrors::sources::chain(e))
    } else {
        unreachable(e)
    }
}

impl SessionUpstream {
    fn canonical(name: &str, reference: Option<&ManifestRef>) -> Result<Canonical, UpstreamError> {
        let text = match reference {
            Some(ManifestRef::Tag(t)) => format!("{name}:{t}"),
            Some(ManifestRef::Digest(d)) => format!("{name}@{d}"),
            None => name.to_owned(),
        };
        let image = ImageRef::parse(&text)
            .map_err(|e| UpstreamError::NotFound(format!("`{text}`: {e}")))?;
        Ok(Canonical {
            image,
            via_mirror: None,
        })
    }

    fn say_warnings(&self, warnings: Vec<String>) {
        for w in warnings {
            (self.log)(&format!("warning: {w}"));
        }
    }

    async fn resolve(&self, name: &str, reference: &ManifestRef) -> Result<Fetched, UpstreamError> {
        let canonical = Self::canonical(name, Some(reference))?;
        let sources = self
            .session
            .sources(&canonical)
            .map_err(|e| unreachable(&e))?;
        let reporter = Logged(Arc::clone(&self.log));
        let resolved = self
            .session
            .resolve(&sources, &canonical.image, None, &reporter)
            .await;
        self.say_warnings(sources.warnings());
        let resolved = resolved.map_err(|e| pull_error(&e))?;
        Ok(Fetched {
            digest: resolved.digest,
            media_type: resolved.manifest.media_type,
            bytes: resolved.manifest.bytes,
        })
    }

    async fn fetch(&self, name: &str, digest: &Digest, size: u64) -> Result<(), UpstreamError> {
        let canonical = Self::canonical(name, None)?;
        // Until the image is named, `gc` must not take what this stores.
        let _gc_guard = self
            .session
            .hold_against_gc()
            .await
            .map_err(|e| unreachable(&e))?;
        let sources = self
            .session
            .sources(&canonical)
            .map_err(|e| unreachable(&e))?;
        let blob = Descriptor {
            media_type: "application/octet-stream".into(),
            digest: digest.clone(),
            size,
        };
        let plan = Plan {
            blobs: vec![blob.clone()],
            missing: vec![blob],
            to_fetch: size,
            repaired: Vec::new(),
        };
        let reporter = Logged(Arc::clone(&self.log));
        let done = self
            .session
            .fetch(&sources, &canonical.image, &plan, &reporter)
            .await;
        self.say_warnings(sources.warnings());
        done.map(|_| ()).map_err(|e| pull_error(&e))
    }
}

impl Upstream for SessionUpstream {
    fn manifest<'a>(
        &'a self,
        name: &'a str,
        reference: &'a ManifestRef,
    ) -> BoxFuture<'a, Result<Fetched, UpstreamError>> {
        Box::pin(self.resolve(name, reference))
    }

    fn blob<'a>(
        &'a self,
        name: &'a str,
        digest: &'a Digest,
        size: u64,
    ) -> BoxFuture<'a, Result<(), UpstreamError>> {
        Box::pin(self.fetch(name, digest, size))
    }
}
