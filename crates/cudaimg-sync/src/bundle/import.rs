//! `cudaimg import DIR [--to HOST[:PORT][/PREFIX]]`: a bundle into a registry or the local
//! store, reading nothing but the bundle (and the destination).
//!
//! The order, and why:
//! 1. Every part is checked (present, size, sha256) before any is used; the parts that
//!    cannot be used are named with the file to send again. Images that need none of them
//!    still go ahead.
//! 2. The blobs the bundle assumes the far side holds are looked for there (the image's
//!    destination repository, then the bundle's other destination repositories, which a
//!    mount can link from; or the store). If any is missing, nothing is pushed or written,
//!    and the error names them with the bundle or inventory that said they were there.
//! 3. Each image goes through the push path ([`cudaimg_transfer::send_plan`]: `HEAD` skips
//!    what is there, mounts, resumable chunked uploads, manifests byte-exact, children before
//!    the index), its blobs streamed from their byte ranges in the parts; or into the store
//!    through its verified, resumable writes, then named. A failing image is reported and
//!    the next one goes on. A second run skips what the first one finished.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::read::{Bundle, PartProblem, PartSource};
use crate::plan::{AssumedFrom, BlobKind, PlannedImage};
use cudaimg_config::Config;
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{self, Descriptor, ImageConfig, Manifest, MAX_MANIFEST_BYTES};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::Reporter;
use cudaimg_oci::reference::ImageRef;
use cudaimg_oci::text::shown;
use cudaimg_registry::{BlobSource, HttpClients, RegistryError, UploadError};
use cudaimg_store::{NamedImage, Store};
use cudaimg_transfer::{send_plan, Destination, PushDoc, PushError, PushOptions, PushPlan};

/// Where a bundle goes.
pub enum Target<'a> {
    /// The local store.
    Store,
    /// A registry: `HOST[:PORT]`, and a repository prefix (empty for none).
    Registry {
        config: &'a Config,
        http: &'a HttpClients,
        host: String,
        prefix: String,
    },
}

/// How an import sends.
#[derive(Clone, Default)]
pub struct ImportOptions {
    pub push: PushOptions,
}

/// What became of one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageOutcome {
    /// The name the bundle carries it under.
    pub name: String,
    /// Where it went: a reference in the registry, or the stored name.
    pub destination: String,
    /// What the destination names under the tag.
    pub digest: Digest,
    pub platforms: Vec<String>,
    /// When only some platforms were carried: upstream's index, and what stands in for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<crate::plan::Upstream>,
    /// `imported` or `failed`.
    pub status: &'static str,
    /// Blobs uploaded / mounted / already there (registry), or written / already stored.
    pub blobs_sent: usize,
    pub blobs_mounted: usize,
    pub blobs_present: usize,
    /// Blob bytes written to the destination.
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// A part that cannot be used, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct BadPart {
    pub file: String,
    pub path: PathBuf,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub bundle: PathBuf,
    /// The registry (`HOST[/PREFIX]`) or `store`.
    pub target: String,
    pub parts_checked: usize,
    /// Parts to send again.
    pub bad_parts: Vec<BadPart>,
    pub images: Vec<ImageOutcome>,
}

impl ImportReport {
    pub fn failed(&self) -> impl Iterator<Item = &ImageOutcome> {
        self.images.iter().filter(|i| i.status != "imported")
    }
    pub fn ok(&self) -> bool {
        self.bad_parts.is_empty() && self.failed().next().is_none()
    }
}

/// A blob the bundle assumes the far side holds, and does not.
#[derive(Debug, Clone, Serialize)]
pub struct MissingAssumed {
    pub digest: Digest,
    pub kind: BlobKind,
    /// Where it was looked for (repositories, or the store).
    pub looked_in: Vec<String>,
    pub from: Option<AssumedFrom>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Bundle(#[from] super::BundleError),
    #[error("the bundle assumes the destination holds {} blob(s) it does not have; nothing was imported:{}", missing.len(), list_missing(missing))]
    AssumedMissing { missing: Vec<MissingAssumed> },
    #[error("cannot ask {destination} for blob {digest}")]
    Check {
        digest: Digest,
        destination: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error(
        "`{}` cannot be mapped under `{}`: {reason}",
        shown(name),
        shown(target)
    )]
    Name {
        name: String,
        target: String,
        reason: String,
    },
    /// bundle.json names an image by something that is not a canonical image reference.
    #[error("bundle.json names an image that cannot be imported: {reason}; nothing was imported")]
    BadName { reason: String },
    #[error(transparent)]
    Store(#[from] cudaimg_store::StoreError),
}

/// Every image name in the plan must be a canonical reference, as `cudaimg sync` writes
/// them (`docker.io/nvidia/cuda:TAG`): a name is stored and pushed as it is, so a path, a
/// `..` or a terminal escape from a tampered bundle.json must not get that far.
fn check_names(plan: &crate::plan::Plan) -> Result<(), ImportError> {
    for image in &plan.images {
        let r = ImageRef::parse(&image.name).map_err(|e| ImportError::BadName {
            reason: e.to_string(),
        })?;
        if r.to_string() != image.name || r.tag.is_none() {
            return Err(ImportError::BadName {
                reason: format!(
                    "`{}` is not a canonical reference with a tag (`{}`)",
                    shown(&image.name),
                    shown(&r.to_string())
                ),
            });
        }
    }
    Ok(())
}

fn describe(from: Option<&AssumedFrom>) -> String {
    match from {
        Some(AssumedFrom::Bundle { name, sha256 }) => {
            format!("the earlier bundle `{name}` (bundle.json sha256 {sha256})")
        }
        Some(AssumedFrom::Inventory { of, sha256 }) => {
            format!("the inventory of {of} (sha256 {sha256})")
        }
        None => "an unnamed source".into(),
    }
}

fn list_missing(missing: &[MissingAssumed]) -> String {
    let mut out = String::new();
    for m in missing {
        out.push_str(&format!(
            "\n  {} ({:?}), carried by {}; looked for in {}",
            m.digest,
            m.kind,
            describe(m.from.as_ref()),
            m.looked_in.join(", ")
        ));
    }
    out
}

impl ImportError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ImportError::AssumedMissing { missing } => {
                let sources: BTreeSet<String> =
                    missing.iter().map(|m| describe(m.from.as_ref())).collect();
                Some(format!(
                    "import {} first (or write this bundle again without `--since`/`--have`, \
                     or with an inventory taken from this destination now)",
                    sources.into_iter().collect::<Vec<_>>().join(" and ")
                ))
            }
            ImportError::Check { .. } => Some(
                "check that the destination is reachable and that the credentials in docker's \
                 config.json may push there (`docker login HOST`)"
                    .into(),
            ),
            ImportError::Name { .. } => Some("give `--to HOST[:PORT][/PREFIX]`".into()),
            ImportError::BadName { .. } => Some(
                "bundle.json was changed after `cudaimg sync` wrote it, or something else wrote \
                 it: write the bundle again with `cudaimg sync SPEC --to DIR`"
                    .into(),
            ),
            ImportError::Bundle(e) => e.hint(),
            ImportError::Store(e) => e.hint(),
        }
    }
}

/// Splits `--to HOST[:PORT][/PREFIX]`.
pub fn parse_target(to: &str) -> (String, String) {
    let to = to.trim_end_matches('/');
    match to.split_once('/') {
        Some((host, prefix)) => (host.to_owned(), prefix.trim_matches('/').to_owned()),
        None => (to.to_owned(), String::new()),
    }
}

/// `docker.io/nvidia/cuda:T` → `HOST/PREFIX/nvidia/cuda:T` (by digest when it has no tag).
pub fn destination_ref(name: &str, host: &str, prefix: &str) -> Result<ImageRef, ImportError> {
    let err = |reason: String| ImportError::Name {
        name: name.to_owned(),
        target: if prefix.is_empty() {
            host.to_owned()
        } else {
            format!("{host}/{prefix}")
        },
        reason,
    };
    let r = ImageRef::parse(name).map_err(|e| err(e.to_string()))?;
    let repo = if prefix.is_empty() {
        r.repository.clone()
    } else {
        format!("{prefix}/{}", r.repository)
    };
    let at = match (&r.tag, &r.digest) {
        (Some(t), _) => format!(":{t}"),
        (None, Some(d)) => format!("@{d}"),
        (None, None) => return Err(err("it has neither tag nor digest".into())),
    };
    ImageRef::parse(&format!("{host}/{repo}{at}")).map_err(|e| err(e.to_string()))
}

/// What the plan says of a digest: size and kind, carried or assumed.
struct BlobInfo {
    size: u64,
    kind: BlobKind,
    media_type: String,
    assumed: Option<usize>,
}

fn blob_infos(bundle: &Bundle) -> BTreeMap<Digest, BlobInfo> {
    let plan = &bundle.file.plan;
    let mut out = BTreeMap::new();
    for b in &plan.blobs {
        out.insert(
            b.digest.clone(),
            BlobInfo {
                size: b.size,
                kind: b.kind,
                media_type: b.media_type.clone(),
                assumed: None,
            },
        );
    }
    for a in &plan.assumed {
        out.insert(
            a.digest.clone(),
            BlobInfo {
                size: a.size,
                kind: a.kind,
                media_type: String::new(),
                assumed: Some(a.from),
            },
        );
    }
    out
}

fn is_manifest(kind: BlobKind) -> bool {
    matches!(kind, BlobKind::Index | BlobKind::Manifest)
}

/// Imports `bundle` into `target`. `Err` only when nothing was imported (an assumed blob
/// missing, a destination that cannot be asked); a failing image is in the report.
pub async fn import(
    bundle: &Bundle,
    store: &Store,
    target: &Target<'_>,
    options: &ImportOptions,
    reporter: Arc<dyn Reporter>,
) -> Result<ImportReport, ImportError> {
    check_names(&bundle.file.plan)?;
    let problems: Vec<PartProblem> = {
        let b = bundle.clone();
        tokio::task::spawn_blocking(move || b.check_parts(&|_| {}))
            .await
            .map_err(|e| super::BundleError::Io(io::Error::other(e)))?
    };
    let bad: BTreeSet<&str> = problems.iter().map(|p| p.file.as_str()).collect();
    let infos = blob_infos(bundle);
    let plan = &bundle.file.plan;
    let mut report = ImportReport {
        bundle: bundle.dir.clone(),
        target: match target {
            Target::Store => "store".into(),
            Target::Registry { host, prefix, .. } if prefix.is_empty() => host.clone(),
            Target::Registry { host, prefix, .. } => format!("{host}/{prefix}"),
        },
        parts_checked: bundle.file.parts.len(),
        bad_parts: problems
            .iter()
            .map(|p| BadPart {
                file: p.file.clone(),
                path: p.path.clone(),
                reason: p.reason.clone(),
            })
            .collect(),
        images: Vec::new(),
    };
    match target {
        Target::Store => {
            let _guard = store.hold_against_gc()?;
            check_assumed_in_store(bundle, store, &infos)?;
            for image in &plan.images {
                let outcome = to_store(bundle, store, image, &infos, &bad, &reporter).await;
                report.images.push(outcome);
            }
        }
        Target::Registry {
            config,
            http,
            host,
            prefix,
        } => {
            let mut dests = Vec::new();
            for image in &plan.images {
                let r = destination_ref(&image.name, host, prefix)?;
                dests.push(Destination::new(config, http, r));
            }
            let found = check_assumed_in_registry(bundle, &infos, &dests).await?;
            for (i, (image, dest)) in plan.images.iter().zip(&dests).enumerate() {
                let outcome = to_registry(
                    bundle,
                    store,
                    image,
                    dest,
                    &infos,
                    &bad,
                    found.get(&i).cloned().unwrap_or_default(),
                    options,
                    &reporter,
                )
                .await;
                report.images.push(outcome);
            }
        }
    }
    Ok(report)
}

fn check_assumed_in_store(
    bundle: &Bundle,
    store: &Store,
    infos: &BTreeMap<Digest, BlobInfo>,
) -> Result<(), ImportError> {
    let plan = &bundle.file.plan;
    let missing: Vec<MissingAssumed> = plan
        .assumed
        .iter()
        .filter(|a| !store.has_blob(&a.digest, a.size))
        .map(|a| MissingAssumed {
            digest: a.digest.clone(),
            kind: infos.get(&a.digest).map_or(a.kind, |i| i.kind),
            looked_in: vec![format!("the store at {}", store.root().display())],
            from: plan.assumed_from.get(a.from).cloned(),
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ImportError::AssumedMissing { missing })
    }
}

/// Looks for every assumed blob each image needs: in its own destination repository, else
/// in the bundle's other destination repositories (which a mount links from). Returns, per
/// image, the repositories to mount from and the assumed manifests' bytes.
async fn check_assumed_in_registry(
    bundle: &Bundle,
    infos: &BTreeMap<Digest, BlobInfo>,
    dests: &[Destination],
) -> Result<BTreeMap<usize, Found>, ImportError> {
    let plan = &bundle.file.plan;
    let repos: Vec<&str> = dests.iter().map(|d| d.image.repository.as_str()).collect();
    let mut out: BTreeMap<usize, Found> = BTreeMap::new();
    let mut missing: BTreeMap<Digest, MissingAssumed> = BTreeMap::new();
    for (i, image) in plan.images.iter().enumerate() {
        let dest = &dests[i];
        for d in &image.blobs {
            let Some(info) = infos.get(d).filter(|info| info.assumed.is_some()) else {
                continue;
            };
            let mut order = vec![dest.image.repository.as_str()];
            for r in &repos {
                if !order.contains(r) {
                    order.push(r);
                }
            }
            let mut hit = None;
            for repo in &order {
                let there = if is_manifest(info.kind) {
                    match dest.client.manifest(repo, d.as_str(), Some(d)).await {
                        Ok(m) => {
                            let f = out.entry(i).or_default();
                            f.manifests.insert(d.clone(), (m.bytes, m.media_type));
                            true
                        }
                        Err(e) if e.is_not_found() => false,
                        Err(e) => return Err(check_error(d, dest, e)),
                    }
                } else {
                    // Only at its size: a registry that answers every HEAD with 200 and
                    // another length does not hold it (push compares the same way).
                    match dest.client.blob_exists(repo, d).await {
                        Ok(found) => found == Some(info.size),
                        Err(e) => return Err(check_error(d, dest, e)),
                    }
                };
                if there {
                    hit = Some(*repo);
                    break;
                }
            }
            match hit {
                Some(repo) if repo != dest.image.repository => {
                    let f = out.entry(i).or_default();
                    if !f.mount_from.iter().any(|r| r == repo) {
                        f.mount_from.push(repo.to_owned());
                    }
                }
                Some(_) => {}
                None => {
                    let from = info.assumed.and_then(|a| plan.assumed_from.get(a)).cloned();
                    missing.entry(d.clone()).or_insert_with(|| MissingAssumed {
                        digest: d.clone(),
                        kind: info.kind,
                        looked_in: order
                            .iter()
                            .map(|r| format!("{}/{r}", dest.image.registry))
                            .collect(),
                        from,
                    });
                }
            }
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(ImportError::AssumedMissing {
            missing: missing.into_values().collect(),
        })
    }
}

fn check_error(d: &Digest, dest: &Destination, e: RegistryError) -> ImportError {
    ImportError::Check {
        digest: d.clone(),
        destination: dest.image.name(),
        source: Box::new(e),
    }
}

/// What the destination already holds of one image's assumed blobs.
#[derive(Debug, Clone, Default)]
struct Found {
    mount_from: Vec<String>,
    /// Assumed manifests, fetched (verified) from the destination: bytes, media type.
    manifests: BTreeMap<Digest, (Vec<u8>, Option<String>)>,
}

fn outcome(image: &PlannedImage, destination: String) -> ImageOutcome {
    ImageOutcome {
        name: image.name.clone(),
        destination,
        digest: image.digest.clone(),
        // Filled in from the verified manifests once imported; bundle.json's are claims.
        platforms: Vec::new(),
        upstream: image.upstream.clone(),
        status: "failed",
        blobs_sent: 0,
        blobs_mounted: 0,
        blobs_present: 0,
        bytes: 0,
        error: None,
        hint: None,
    }
}

/// The first carried blob of `image` that lies in a part that cannot be used.
fn needs_bad_part(
    bundle: &Bundle,
    image: &PlannedImage,
    bad: &BTreeSet<&str>,
) -> Option<(Digest, String)> {
    image.blobs.iter().find_map(|d| {
        bundle.location(d).and_then(|loc| {
            loc.pieces
                .iter()
                .find(|p| bad.contains(p.part.as_str()))
                .map(|p| (d.clone(), p.part.clone()))
        })
    })
}

fn fail(mut o: ImageOutcome, error: String, hint: Option<String>) -> ImageOutcome {
    o.error = Some(error);
    o.hint = hint;
    o
}

fn bad_part_failure(o: ImageOutcome, bundle: &Bundle, digest: &Digest, part: &str) -> ImageOutcome {
    fail(
        o,
        format!("its blob {digest} lies in {part}, which cannot be used"),
        Some(format!(
            "send {} again, then run the import again: what is done already is skipped",
            bundle.part_path(part).display()
        )),
    )
}

/// A source for a blob the bundle does not carry (assumed): only reached when the mount
/// that was expected to link it failed.
struct Absent(Digest);

impl BlobSource for Absent {
    type Reader = tokio::io::Empty;
    async fn open(&self, _offset: u64) -> io::Result<tokio::io::Empty> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "blob {} is not in the bundle (it is assumed at the destination), and it \
                 could not be mounted there",
                self.0
            ),
        ))
    }
}

// The image's manifests and blobs gathered, then one send: splitting it would only pass
// the same nine things around.
#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
async fn to_registry(
    bundle: &Bundle,
    store: &Store,
    image: &PlannedImage,
    dest: &Destination,
    infos: &BTreeMap<Digest, BlobInfo>,
    bad: &BTreeSet<&str>,
    found: Found,
    options: &ImportOptions,
    reporter: &Arc<dyn Reporter>,
) -> ImageOutcome {
    let o = outcome(image, dest.image.to_string());
    if let Some((d, part)) = needs_bad_part(bundle, image, bad) {
        return bad_part_failure(o, bundle, &d, &part);
    }
    let mut docs = Vec::new();
    let mut blobs = Vec::new();
    for d in &image.blobs {
        let Some(info) = infos.get(d) else {
            return fail(o, format!("blob {d} is not in the bundle's plan"), None);
        };
        if !is_manifest(info.kind) {
            blobs.push(Descriptor {
                media_type: info.media_type.clone(),
                digest: d.clone(),
                size: info.size,
            });
            continue;
        }
        let (bytes, served_as) = if let Some((b, mt)) = found.manifests.get(d) {
            (b.clone(), mt.clone())
        } else {
            match bundle.read_small(d, MAX_MANIFEST_BYTES) {
                Ok(b) => (b, None),
                Err(e) => return fail(o, format!("cannot read manifest {d}: {e}"), None),
            }
        };
        // What a manifest is comes from its verified bytes (and, for one fetched from the
        // destination, the type it was served as), never from bundle.json: a manifest PUT
        // as another type is stored broken.
        let media_type = match manifest::parse(&bytes, served_as.as_deref()) {
            Ok(Manifest::Index(i)) => i.media_type,
            Ok(Manifest::Image(m)) => m.media_type,
            Err(e) => {
                return fail(
                    o,
                    format!("blob {d}, a manifest in bundle.json's plan, is not one: {e}"),
                    Some("write the bundle again with `cudaimg sync SPEC --to DIR`".into()),
                )
            }
        };
        docs.push(PushDoc {
            bytes,
            media_type,
            digest: d.clone(),
        });
    }
    let Some(top_at) = docs.iter().position(|doc| doc.digest == image.digest) else {
        return fail(
            o,
            format!("the image's manifest {} is not in the bundle", image.digest),
            None,
        );
    };
    let top = docs.remove(top_at);
    let platforms = platforms_of(bundle, &top.bytes);
    blobs.sort_by_key(|b| std::cmp::Reverse(b.size));
    let plan = PushPlan {
        top,
        children: docs,
        blobs,
        platforms: platforms.clone(),
    };
    let upload = |desc: Descriptor, mounts: Vec<String>, opts: cudaimg_registry::UploadOptions| {
        let source = bundle.source(&desc.digest);
        async move {
            let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
            let repo = dest.image.repository.as_str();
            let res = match &source {
                Some(s) => {
                    dest.client
                        .push_blob(repo, &desc.digest, desc.size, s, &mounts, &opts)
                        .await
                }
                None => {
                    dest.client
                        .push_blob(
                            repo,
                            &desc.digest,
                            desc.size,
                            &Absent(desc.digest.clone()),
                            &mounts,
                            &opts,
                        )
                        .await
                }
            };
            res.map_err(|e| PushError::Upload {
                digest: desc.digest.clone(),
                destination: dest.image.name(),
                source: Box::new(e),
            })
        }
    };
    match send_plan(
        store,
        &image.name,
        &plan,
        dest,
        &options.push,
        &found.mount_from,
        reporter,
        upload,
    )
    .await
    {
        Ok(r) => {
            let f = &r.destination_figures;
            ImageOutcome {
                status: "imported",
                platforms,
                blobs_sent: f.uploaded,
                blobs_mounted: f.mounted,
                blobs_present: f.skipped,
                bytes: r.bytes_uploaded,
                ..o
            }
        }
        Err(e) => {
            let mut error = e.to_string();
            let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(c) = cause {
                error.push_str(&format!(": {c}"));
                cause = c.source();
            }
            let hint = match &e {
                PushError::Upload { source, .. }
                    if matches!(**source, UploadError::SourceMismatch { .. }) =>
                {
                    Some("the bundle's bytes do not match their digest: send the bundle's parts again".into())
                }
                _ => e.hint(),
            };
            fail(o, error, hint)
        }
    }
}

async fn to_store(
    bundle: &Bundle,
    store: &Store,
    image: &PlannedImage,
    infos: &BTreeMap<Digest, BlobInfo>,
    bad: &BTreeSet<&str>,
    reporter: &Arc<dyn Reporter>,
) -> ImageOutcome {
    let mut o = outcome(image, image.name.clone());
    if let Some((d, part)) = needs_bad_part(bundle, image, bad) {
        return bad_part_failure(o, bundle, &d, &part);
    }
    for d in &image.blobs {
        let Some(info) = infos.get(d) else {
            return fail(o, format!("blob {d} is not in the bundle's plan"), None);
        };
        if info.assumed.is_some() || store.has_blob(d, info.size) {
            o.blobs_present += 1;
            continue;
        }
        let Some(source) = bundle.source(d) else {
            return fail(o, format!("blob {d} is not in the bundle"), None);
        };
        match store_blob(store, d, info.size, &source, reporter).await {
            Ok(n) => {
                o.blobs_sent += 1;
                o.bytes += n;
            }
            Err(e) => {
                let hint = e.hint();
                return fail(o, e.to_string(), hint);
            }
        }
    }
    if let Some(u) = &image.upstream {
        if !store.has_blob(&u.digest, u.size) {
            let Some(source) = bundle.source(&u.digest) else {
                return fail(
                    o,
                    format!("upstream's index {} is not in the bundle", u.digest),
                    None,
                );
            };
            if let Err(e) = store_blob(store, &u.digest, u.size, &source, reporter).await {
                let hint = e.hint();
                return fail(o, e.to_string(), hint);
            }
        }
    }
    match name_in_store(store, image, infos) {
        Ok(()) => ImageOutcome {
            status: "imported",
            platforms: stored_platforms(store, &image.name),
            ..o
        },
        Err(e) => {
            let hint = e.hint();
            fail(o, e.to_string(), hint)
        }
    }
}

/// Names an image whose blobs are all stored. What it is (index or manifest, its media type,
/// its platforms) is read from the stored, verified manifests and configs, never taken from
/// `bundle.json`: an index of a whole image is named whole; the platforms of an image carried
/// in part are named one by one with upstream's index beside them, as a pull of each names
/// them; a manifest is named with the platform its config records.
fn name_in_store(
    store: &Store,
    image: &PlannedImage,
    infos: &BTreeMap<Digest, BlobInfo>,
) -> Result<(), cudaimg_store::StoreError> {
    let corrupt =
        |what: String| cudaimg_store::StoreError::Corrupt(format!("{}: {what}", image.name));
    let size = infos
        .get(&image.digest)
        .map(|i| i.size)
        .ok_or_else(|| corrupt(format!("manifest {} is not in the plan", image.digest)))?;
    let bytes = store.read_blob(&image.digest, MAX_MANIFEST_BYTES)?;
    if Digest::of(&bytes) != image.digest || bytes.len() as u64 != size {
        return Err(corrupt(format!(
            "manifest {} does not match its digest",
            image.digest
        )));
    }
    let parsed = manifest::parse(&bytes, None)
        .map_err(|e| corrupt(format!("manifest {}: {e}", image.digest)))?;
    let media_type = match &parsed {
        Manifest::Index(i) => i.media_type.clone(),
        Manifest::Image(m) => m.media_type.clone(),
    };
    let desc = Descriptor {
        media_type,
        digest: image.digest.clone(),
        size,
    };
    let upstream = image.upstream.as_ref().map(|u| u.digest.clone());
    let children: Vec<Descriptor> = match (parsed, &upstream) {
        (Manifest::Index(_), None) => {
            return store.name_all_platforms(&image.name, &desc).map(|_| ());
        }
        (Manifest::Index(i), Some(_)) => i.manifests.into_iter().map(|c| c.descriptor).collect(),
        (Manifest::Image(_), _) => vec![desc],
    };
    if let Some(u) = &upstream {
        // Upstream's index must list what it is said to be the index of.
        let up = store.read_blob(u, MAX_MANIFEST_BYTES)?;
        let listed = match manifest::parse(&up, None) {
            Ok(Manifest::Index(i)) if Digest::of(&up) == *u => i.manifests,
            _ => {
                return Err(corrupt(format!(
                    "upstream's index {u} is not a stored index"
                )))
            }
        };
        if let Some(c) = children
            .iter()
            .find(|c| !listed.iter().any(|l| l.descriptor.digest == c.digest))
        {
            return Err(corrupt(format!(
                "upstream's index {u} does not list {}",
                c.digest
            )));
        }
    }
    for child in children {
        store.name(
            &image.name,
            &NamedImage {
                manifest: child,
                platform: None,
                index_digest: upstream.clone(),
            },
        )?;
    }
    Ok(())
}

/// The platforms of a manifest in the bundle, from its verified bytes: an index's entries,
/// or an image manifest's config (empty when the config is not carried).
fn platforms_of(bundle: &Bundle, bytes: &[u8]) -> Vec<String> {
    let mut out = match manifest::parse(bytes, None) {
        Ok(Manifest::Index(i)) => i.platforms(),
        Ok(Manifest::Image(m)) => bundle
            .read_small(&m.config.digest, MAX_MANIFEST_BYTES)
            .ok()
            .and_then(|c| serde_json::from_slice::<ImageConfig>(&c).ok())
            .map(|c| {
                vec![Platform {
                    os: c.os,
                    architecture: c.architecture,
                    variant: c.variant,
                }
                .to_string()]
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out.dedup();
    out
}

/// The platforms the store now names `name` with, as it read them from the stored configs.
fn stored_platforms(store: &Store, name: &str) -> Vec<String> {
    let mut out: Vec<String> = store
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.name.as_deref() == Some(name) && !e.is_index)
        .filter_map(|e| e.platform.map(|p| p.to_string()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Writes one blob into the store from its part(s), continuing a partial write; the store
/// commits it only if it matches its digest. Returns the bytes written.
async fn store_blob(
    store: &Store,
    digest: &Digest,
    size: u64,
    source: &PartSource,
    reporter: &Arc<dyn Reporter>,
) -> Result<u64, cudaimg_store::StoreError> {
    let Some(mut w) = store.blob_writer(digest, size).await? else {
        return Ok(0);
    };
    let from = w.written();
    reporter.blob_started(digest, size, from, "bundle");
    let mut r = source.open(from).await?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.write(&buf[..n]).await.map_err(|e| match e {
            cudaimg_store::WriteError::Store(s) => s,
            other @ cudaimg_store::WriteError::TooLong { .. } => {
                cudaimg_store::StoreError::Io(io::Error::other(other.to_string()))
            }
        })?;
        reporter.blob_progress(digest, n as u64);
    }
    w.commit().await.map_err(|e| match e {
        cudaimg_store::CommitError::Store(s) => s,
        other @ cudaimg_store::CommitError::Mismatch { .. } => {
            cudaimg_store::StoreError::BlobCorrupt {
                digest: digest.clone(),
                image: None,
                reason: format!("in the bundle: {other}"),
            }
        }
    })?;
    reporter.blob_finished(digest);
    Ok(size - from)
}
