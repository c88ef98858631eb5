//! `pull`: resolve a reference to one platform's manifest, fetch what the store lacks, and
//! name the result in `index.json` under its canonical reference, through the steps in
//! [`crate::steps`]; what it reports, and what can go wrong.

use serde::Serialize;

use crate::archive::ArchiveImage;
use crate::error::PullError;
use crate::resolve::ResolvedBy;
use crate::session::Session;
use crate::steps::{stored_name, PullTarget};
use cudaimg_mirrors::sources::SourceReport;
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::ImageManifest;
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::Reporter;
use cudaimg_oci::reference::ImageRef;

/// What a pull did, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct PullReport {
    /// The reference as the user wrote it.
    pub reference: String,
    /// The canonical reference the image is stored under.
    #[serde(serialize_with = "as_text")]
    pub canonical: ImageRef,
    /// Digest of the platform manifest.
    pub digest: Digest,
    /// Digest of the manifest list or index it was chosen from, if any.
    pub index_digest: Option<Digest>,
    /// The image's platform, as `os/arch[/variant]`.
    #[serde(serialize_with = "as_text")]
    pub platform: Platform,
    /// Where the manifest came from.
    pub manifest_source: String,
    /// Who decided the digest: the official registry, mirrors (official out of reach), the
    /// reference's own digest, or the lockfile.
    pub resolved_by: ResolvedBy,
    pub layers: Vec<LayerReport>,
    /// Bytes of config and layers in the image.
    pub total_bytes: u64,
    /// Bytes received from the network, including any discarded after a failed check.
    pub bytes_downloaded: u64,
    pub warnings: Vec<String>,
    /// What each source did: bytes served, blobs completed, failures and why.
    pub sources: Vec<SourceReport>,
}

#[derive(Debug, Serialize)]
pub struct LayerReport {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// The URL the layer came from; `None` when it was already in the store.
    pub source: Option<String>,
    pub cached: bool,
}

/// A value in `--json` as the text it displays as (`nvidia/cuda:12.4.1-…`, `linux/amd64`).
pub(crate) fn as_text<S: serde::Serializer, T: std::fmt::Display>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Session {
    /// Pulls `target` for `platform` into the store: resolve, select, plan, fetch, commit.
    pub async fn pull(
        &self,
        target: &PullTarget<'_>,
        platform: &Platform,
        reporter: &dyn Reporter,
    ) -> Result<PullReport, PullError> {
        self.pull_streaming(target, platform, reporter, None).await
    }

    /// [`Session::pull`], and with `sink` (`pull --load`) the image goes on while it
    /// downloads: the sink is told the image once its manifest is chosen, and each blob as
    /// soon as it is stored.
    pub async fn pull_streaming(
        &self,
        target: &PullTarget<'_>,
        platform: &Platform,
        reporter: &dyn Reporter,
        sink: Option<&dyn ImageSink>,
    ) -> Result<PullReport, PullError> {
        let image = &target.name.image;
        // Until the index names what this pull stores, `gc` must not run.
        let _gc_guard = self.hold_against_gc().await?;
        let sources = self.sources(target.name)?;
        let resolved = self.resolve(&sources, image, target.pin, reporter).await?;
        let (resolved_by, manifest_source) = (resolved.by, resolved.source.clone());
        let selected = self
            .select(&sources, image, resolved, platform, target.pin, reporter)
            .await?;
        let plan = self.plan(image, &selected.image)?;
        let img = &selected.image;
        let shown_platform = selected.platform.as_ref().unwrap_or(platform);
        reporter.resolved(
            &image.to_string(),
            &selected.manifest.digest,
            shown_platform,
            img.content_size(),
            plan.to_fetch,
        );
        reporter.planned(plan.blobs.len());
        for d in plan.blobs.iter().filter(|d| !plan.missing.contains(d)) {
            reporter.blob_cached(&d.digest, d.size);
        }
        let tee;
        let reporter: &dyn Reporter = match sink {
            Some(s) => {
                let name = stored_name(target);
                s.chosen(ChosenImage {
                    image: ArchiveImage {
                        name: name.to_string(),
                        media_type: img.media_type.clone(),
                        digest: selected.manifest.digest.clone(),
                        manifest_bytes: selected.manifest.bytes.clone(),
                        manifest: img.clone(),
                    },
                    name,
                    index: selected.index.as_ref().map(|i| UpstreamIndex {
                        media_type: i.media_type.clone(),
                        digest: i.digest.clone(),
                        bytes: i.bytes.clone(),
                    }),
                    platform: shown_platform.clone(),
                });
                tee = Tee {
                    inner: reporter,
                    sink: s,
                };
                &tee
            }
            None => reporter,
        };
        let downloaded = self.fetch(&sources, image, &plan, reporter).await?;
        let committed = self
            .commit(target, &selected, platform, {
                let mut w = sources.warnings();
                w.extend(plan.repaired.iter().cloned());
                w
            })
            .await?;
        Ok(PullReport {
            reference: target.input.to_owned(),
            canonical: committed.name,
            digest: selected.manifest.digest.clone(),
            index_digest: selected.index.map(|i| i.digest),
            platform: committed.platform,
            manifest_source: manifest_source.label().to_owned(),
            resolved_by,
            layers: layer_reports(img, &downloaded.from),
            total_bytes: img.content_size(),
            bytes_downloaded: downloaded.received,
            warnings: committed.warnings,
            sources: sources.report(),
        })
    }
}

/// Where a pulled image also goes while it downloads (`pull --load`: an engine). The
/// pull calls [`ImageSink::chosen`] once the image manifest is chosen, before any blob is
/// fetched, and [`ImageSink::stored`] for each blob as soon as it is in the store,
/// verified (those stored already included).
pub trait ImageSink: Send + Sync {
    fn chosen(&self, image: ChosenImage);
    fn stored(&self, digest: &Digest);
}

/// The image a pull chose, as an [`ImageSink`] is told it.
#[derive(Debug, Clone)]
pub struct ChosenImage {
    /// The platform manifest, as upstream serves it.
    pub image: ArchiveImage,
    /// The name it is stored under (canonical; a tag, a digest, or both).
    pub name: ImageRef,
    /// The list or index it was chosen from, byte-exact, if any.
    pub index: Option<UpstreamIndex>,
    /// The image's platform.
    pub platform: Platform,
}

/// A manifest list or index as upstream serves it.
#[derive(Debug, Clone)]
pub struct UpstreamIndex {
    pub media_type: Option<String>,
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

/// Passes every event on, and tells the sink which blobs are stored.
struct Tee<'a> {
    inner: &'a dyn Reporter,
    sink: &'a dyn ImageSink,
}

impl Reporter for Tee<'_> {
    fn resolved(
        &self,
        name: &str,
        digest: &Digest,
        platform: &Platform,
        total: u64,
        to_fetch: u64,
    ) {
        self.inner.resolved(name, digest, platform, total, to_fetch);
    }
    fn blob_cached(&self, digest: &Digest, size: u64) {
        self.sink.stored(digest);
        self.inner.blob_cached(digest, size);
    }
    fn blob_started(&self, digest: &Digest, size: u64, offset: u64, source: &str) {
        self.inner.blob_started(digest, size, offset, source);
    }
    fn blob_progress(&self, digest: &Digest, bytes: u64) {
        self.inner.blob_progress(digest, bytes);
    }
    fn blob_finished(&self, digest: &Digest) {
        self.sink.stored(digest);
        self.inner.blob_finished(digest);
    }
    fn notice(&self, line: &str) {
        self.inner.notice(line);
    }
    fn source_failed(&self, source: &str, what: &str, error: &(dyn std::error::Error + 'static)) {
        self.inner.source_failed(source, what, error);
    }
}

fn layer_reports(
    img: &ImageManifest,
    fetched_from: &[(Digest, Option<String>)],
) -> Vec<LayerReport> {
    img.layers
        .iter()
        .map(|l| {
            let source = fetched_from
                .iter()
                .find(|(d, _)| *d == l.digest)
                .and_then(|(_, url)| url.clone());
            LayerReport {
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
                cached: source.is_none(),
                source,
            }
        })
        .collect()
}
