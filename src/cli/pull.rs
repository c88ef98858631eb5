//! `cudaimg pull REF...`

use std::time::{Duration, Instant};

use std::path::PathBuf;

use crate::error::Error;
use cudaimg_config::lockfile::{Lockfile, Pin, DEFAULT_LOCKFILE};
use cudaimg_config::Canonical;
use cudaimg_handover::Loaded;
use cudaimg_oci::platform::Platform;
use cudaimg_transfer::{
    ImageSink, PullAllReport, PullReport, PullTarget, ResolvedBy, DEFAULT_JOBS, DEFAULT_STALL_SECS,
};

use super::{emit, emit_json, human_bytes, Ctx};

#[derive(Debug, clap::Args)]
// Command-line switches: each bool is one flag.
#[allow(clippy::struct_excessive_bools)]
pub struct Args {
    /// Images to pull, e.g. `nvidia/cuda:12.4.1-runtime-ubuntu22.04` or a mirror-prefixed
    /// name; with `--locked` and none given, every locked image
    #[arg(value_name = "REFERENCE", required_unless_present = "locked")]
    references: Vec<String>,
    /// Platform to pull from a multi-platform image [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = crate::cli::known_platform)]
    platform: Option<String>,
    /// Pull every platform of a multi-platform image, attestations included, and keep its
    /// manifest list or index byte-exact (for `push` and `export --format oci-archive`)
    #[arg(long, conflicts_with_all = ["platform", "load"])]
    all_platforms: bool,
    /// Blobs to download at once
    #[arg(short, long, default_value_t = DEFAULT_JOBS, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Seconds without a byte before a transfer is ended and resumed from another source
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_STALL_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    stall_timeout: u64,
    /// Pull exactly the digests in the lockfile, from any source; refuse unlocked references
    #[arg(long)]
    locked: bool,
    #[command(flatten)]
    lock: LockArgs,
    /// Fail instead of trusting mirrors for a tag's digest when the official registry is out of reach
    #[arg(long)]
    require_upstream: bool,
    /// Re-hash the image's blobs that are stored already and fetch again any that fail
    /// (otherwise a stored blob of the right size counts as present)
    #[arg(long)]
    verify_existing: bool,
    /// Also hand each image, while it downloads, to an engine under its official name:
    /// `docker` (the default: the Docker Engine or Podman at `DOCKER_HOST`), or
    /// `containerd[:NAMESPACE]` (namespace `k8s.io` by default)
    #[arg(long, value_name = "ENGINE", num_args = 0..=1, require_equals = true, default_missing_value = "docker")]
    load: Option<super::load::Target>,
    #[command(flatten)]
    engine: super::load::EngineArgs,
}

/// Options shared by `pull --locked` and `lock`.
#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// The lockfile
    #[arg(long, value_name = "PATH", default_value = DEFAULT_LOCKFILE)]
    pub lockfile: PathBuf,
}

impl Args {
    /// `--verify-existing`: re-hash stored blobs and fetch again those that fail.
    pub fn verify_existing(&self) -> bool {
        self.verify_existing
    }

    /// Blobs at once, the stall timeout, and whether only the official registry may
    /// decide a tag's digest.
    pub fn transfer(&self) -> (usize, Duration, bool) {
        (
            usize::from(self.jobs),
            Duration::from_secs(self.stall_timeout),
            self.require_upstream,
        )
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<(), Error> {
    let platform: Platform = match &args.platform {
        Some(p) => p.parse()?,
        None => Platform::host(),
    };
    let config = ctx.config()?;
    let lock = if args.locked {
        Some(Lockfile::load(&args.lock.lockfile, false)?)
    } else {
        None
    };
    let references: Vec<String> = match (&lock, args.references.is_empty()) {
        (Some(l), true) => l.images.keys().cloned().collect(),
        _ => args.references.clone(),
    };
    let targets = targets(config, lock.as_ref(), &references)?;
    let session = &ctx.session;
    let config_note = config_note(config);
    let mut first_error = None;
    for (input, name, pin) in &targets {
        let started = Instant::now();
        let reporter = ctx.reporter();
        let target = PullTarget {
            input,
            name,
            pin: pin.as_ref(),
            platform_explicit: args.platform.is_some(),
        };
        if args.all_platforms {
            let pulled = pull_all(ctx, &target, reporter, &config_note).await;
            if let Err(e) = pulled {
                failed(ctx, input, e, None, targets.len(), &mut first_error)?;
            }
            continue;
        }
        // `--load`: the image streams into the engine while it downloads; the engine is
        // reached before anything is downloaded.
        let handover = match &args.load {
            Some(to) => match super::load::hand_over(to, &args.engine, ctx.store()?).await {
                Ok(h) => Some(h),
                Err((loaded, e)) => {
                    let e = engine_unreached(ctx, input, name, &platform, e.into());
                    failed(
                        ctx,
                        input,
                        e,
                        Some(&loaded),
                        targets.len(),
                        &mut first_error,
                    )?;
                    continue;
                }
            },
            None => None,
        };
        let sink = handover.as_ref().map(|h| h as &dyn ImageSink);
        let report = session
            .pull_streaming(&target, &platform, reporter.as_ref(), sink)
            .await;
        drop(reporter);
        let pulled = report.as_ref().map(|_| ()).map_err(ToString::to_string);
        let streamed = match &handover {
            Some(h) => h.finish(pulled).await,
            None => None,
        };
        match report {
            Ok(mut report) => {
                unconfigured_mirror(config, &mut report);
                let secs = started.elapsed().as_secs_f64();
                record_locations(ctx.store()?, &report);
                let Some(handover) = handover else {
                    print(ctx, &report, secs, None);
                    continue;
                };
                let (loaded, outcome) = loaded(ctx, handover, streamed, &report).await?;
                // A load that failed fails the run: alone, its report is the document the
                // run's error object goes into.
                let hold = outcome.is_err() && targets.len() == 1;
                print(ctx, &report, secs, Some((&loaded, hold)));
                if let Err(e) = outcome {
                    failed(ctx, input, e.into(), None, targets.len(), &mut first_error)?;
                }
            }
            // The other references are still pulled; the first failure decides the exit.
            Err(e) => {
                if !e.is_not_found() {
                    note!("{config_note}");
                }
                let e = with_suggestions(ctx, name, e).await;
                let loaded = streamed.as_ref().map(|(l, _)| l);
                failed(ctx, input, e, loaded, targets.len(), &mut first_error)?;
            }
        }
    }
    match first_error {
        Some(e) => Err(Error::Failed {
            what: "some references could not be pulled".into(),
            code: e.exit_code(),
        }),
        None => Ok(()),
    }
}

/// A reference that failed. The only one: the run's error, which the top-level handler
/// reports (under `--json` with the reference, and what became of `--load`, in its
/// document). One of several: reported now, as a JSON record too under `--json`, and kept,
/// the first deciding the exit, while the other references are still pulled.
fn failed(
    ctx: &Ctx,
    input: &str,
    e: Error,
    loaded: Option<&Loaded>,
    references: usize,
    first_error: &mut Option<Error>,
) -> Result<(), Error> {
    if references == 1 {
        if let (true, Some(loaded)) = (ctx.json, loaded) {
            super::hold_json(&serde_json::json!({ "reference": input, "loaded": loaded }));
        }
        return Err(e);
    }
    failed_json(ctx, input, &e, loaded);
    super::report_error(&e);
    first_error.get_or_insert(e);
    Ok(())
}

/// `--load` with no engine to reach: the engine is reached before any download, so the
/// engine's hint ("the image stays in the cudaimg store", true for `load`) is made true
/// for this pull: what the store holds of the image, where the store is, and what to run.
fn engine_unreached(
    ctx: &Ctx,
    input: &str,
    name: &Canonical,
    platform: &Platform,
    e: Error,
) -> Error {
    let Some(hint) = e.hint() else {
        return e;
    };
    let base = hint
        .split("; the image stays in the cudaimg store")
        .next()
        .unwrap_or(&hint)
        .to_owned();
    let store = ctx.existing_store().ok();
    let root = store.as_ref().map_or_else(
        || "the store".to_owned(),
        |s| s.root().display().to_string(),
    );
    let stored = store
        .as_ref()
        .and_then(|s| {
            s.image(&name.image.to_string(), Some(platform))
                .ok()
                .flatten()
        })
        .is_some();
    let then = if stored {
        format!(
            "; the image is in {root}: `cudaimg load {input}` hands it over once the engine runs"
        )
    } else {
        format!(
            "; nothing was downloaded (the engine is reached first): `cudaimg pull {input}` \
             without `--load` stores it in {root}, and `cudaimg load {input}` hands it over later"
        )
    };
    Error::WithHint {
        inner: Box::new(e),
        hint: format!("{base}{then}"),
    }
}

/// What `--load` did: streamed while the pull ran; else (no image was chosen to stream)
/// what the store holds.
async fn loaded(
    ctx: &Ctx,
    handover: cudaimg_handover::HandOver,
    streamed: Option<(Loaded, Result<(), cudaimg_handover::LoadError>)>,
    report: &PullReport,
) -> Result<(Loaded, Result<(), cudaimg_handover::LoadError>), Error> {
    if let Some(done) = streamed {
        return Ok(done);
    }
    let name = report.canonical.to_string();
    let image = ctx
        .store()?
        .image(&name, Some(&report.platform))?
        .ok_or(Error::NotInStore(name))?;
    Ok(handover.load(&image).await)
}

/// A "no such tag" with the nearest tags of the registry's list as its hint.
async fn with_suggestions(ctx: &Ctx, name: &Canonical, e: cudaimg_transfer::PullError) -> Error {
    if !e.is_not_found() {
        return e.into();
    }
    let hint = super::did_you_mean::not_found_hint(ctx, name).await;
    let e = Error::from(e);
    match hint {
        Some(hint) => Error::WithHint {
            inner: Box::new(e),
            hint,
        },
        None => e,
    }
}

/// Under `--json` with several references, a failed one gets a record too, so a reader of
/// stdout sees one document per reference: `{"reference", "error": {...}, "loaded"}`, the
/// error object as the run's own failure has it.
fn failed_json(ctx: &Ctx, input: &str, e: &Error, loaded: Option<&Loaded>) {
    if ctx.json {
        emit_json(&serde_json::json!({
            "reference": input,
            "error": e.to_json(),
            "loaded": loaded,
        }));
    }
}

/// A reference as written, its canonical name, and its lock entry.
type Target<'r> = (&'r String, Canonical, Option<Pin>);

/// Every reference canonical, with its lock entry: all checked before any network traffic.
fn targets<'r>(
    config: &cudaimg_config::Config,
    lock: Option<&Lockfile>,
    references: &'r [String],
) -> Result<Vec<Target<'r>>, Error> {
    let mut targets = Vec::with_capacity(references.len());
    for r in references {
        let name = config.canonicalize(r)?;
        if lock.is_none() {
            super::did_you_mean::precheck(r, &name)?;
        }
        let pin = match lock {
            Some(l) => {
                let pin = l.get(&name.image.lock_key())?.clone();
                if let Some(d) = name.image.digest.as_ref().filter(|d| **d != pin.digest) {
                    return Err(Error::Usage(format!(
                        "`{r}` names {d}, but the lockfile pins {}; drop the digest or lock it again",
                        pin.digest
                    )));
                }
                Some(pin)
            }
            None => None,
        };
        targets.push((r, name, pin));
    }
    Ok(targets)
}

/// Notes in the store where the image's layers are, so `push` and `copy` can mount them
/// from there; a hint only, so failing to write it is a warning.
fn record_locations(store: &cudaimg_store::Store, r: &PullReport) {
    let name = &r.canonical;
    let digests: Vec<_> = r.layers.iter().map(|l| l.digest.clone()).collect();
    if let Err(e) = store.record_locations(&name.registry, &name.repository, &digests) {
        note!("warning: could not record where the layers came from: {e}");
    }
}

fn print(ctx: &Ctx, r: &PullReport, secs: f64, loaded: Option<(&Loaded, bool)>) {
    for w in &r.warnings {
        note!("warning: {w}");
    }
    if ctx.verbose {
        for s in &r.sources {
            let failures: Vec<String> = s
                .failures
                .iter()
                .map(|f| format!("{} x{}", f.kind, f.count))
                .collect();
            note!(
                "source {}: {} in {}, {} answered{}",
                s.url,
                human_bytes(s.bytes),
                super::words::count(s.blobs, "blob"),
                super::words::count(s.requests, "request"),
                if failures.is_empty() {
                    String::new()
                } else {
                    format!(", failures: {}", failures.join(", "))
                }
            );
        }
    }
    if ctx.json {
        match (serde_json::to_value(r), loaded) {
            (Ok(mut v), Some((l, hold))) => {
                v["loaded"] = serde_json::to_value(l).unwrap_or_default();
                if hold {
                    super::hold_json(&v);
                } else {
                    emit_json(&v);
                }
            }
            _ => emit_json(r),
        }
        return;
    }
    let cached = r.layers.iter().filter(|l| l.cached).count();
    // Fitted to the terminal: a digest goes under its label rather than wrap mid-digest.
    let emit = |line: &str| fit_emit(ctx, line);
    emit(&r.canonical.to_string());
    emit(&format!("  digest:   {}", r.digest));
    if let Some(i) = &r.index_digest {
        emit(&format!("  index:    {i}"));
    }
    emit(&format!("  platform: {}", r.platform));
    emit(&format!("  digest from: {}", resolved_by(ctx, r)));
    emit(&format!(
        "  size:     {} in {} ({} already stored)",
        human_bytes(r.total_bytes),
        super::words::counted(r.layers.len(), "layer"),
        cached
    ));
    emit(&format!(
        "  fetched:  {} in {secs:.1}s, manifest from {}",
        human_bytes(r.bytes_downloaded),
        r.manifest_source
    ));
    if let Some((l, _)) = loaded {
        super::load::print(l);
    }
}

/// `pull --all-platforms` of one target; prints its report.
async fn pull_all(
    ctx: &Ctx,
    target: &PullTarget<'_>,
    reporter: Box<dyn cudaimg_oci::progress::Reporter>,
    config_note: &str,
) -> Result<(), Error> {
    let started = Instant::now();
    let report = ctx.session.pull_all(target, reporter.as_ref()).await;
    // The bars end before the report is printed.
    drop(reporter);
    match report {
        Ok(r) => {
            print_all(ctx, &r, started.elapsed().as_secs_f64());
            Ok(())
        }
        Err(e) => {
            if !e.is_not_found() {
                note!("{config_note}");
            }
            Err(e.into())
        }
    }
}

/// What `pull --all-platforms` prints: the index, then one line per child.
fn print_all(ctx: &Ctx, r: &PullAllReport, secs: f64) {
    for w in &r.warnings {
        note!("warning: {w}");
    }
    if ctx.json {
        emit_json(r);
        return;
    }
    let emit = |line: &str| fit_emit(ctx, line);
    emit(&r.canonical.to_string());
    if let Some(i) = &r.index_digest {
        emit(&format!("  index:    {i}"));
    }
    emit(&format!("  digest from: {}", describe(r.resolved_by)));
    for p in &r.platforms {
        emit(&format!(
            "  {:<16}  {}  {:>10}  {}{}",
            p.platform.as_deref().unwrap_or("-"),
            p.digest,
            human_bytes(p.size),
            super::words::counted(p.layers, "layer"),
            if p.named {
                ""
            } else {
                "  (kept with the index, not listed)"
            }
        ));
    }
    emit(&format!(
        "  size:     {} ({} already stored)",
        human_bytes(r.total_bytes),
        super::words::counted(r.blobs_cached, "blob")
    ));
    emit(&format!(
        "  fetched:  {} in {secs:.1}s, manifest from {}",
        human_bytes(r.bytes_downloaded),
        r.manifest_source
    ));
}

/// A line of the report, fitted to the terminal's width (see `width::fit_line`).
fn fit_emit(ctx: &Ctx, line: &str) {
    for l in super::width::fit_line(line, ctx.columns) {
        emit(&l);
    }
}

/// Where the digest came from. A registry with no mirrors.toml entry is the official one
/// only for its own names: said as "the registry the reference names", never as "the
/// official registry" (which a reader takes for Docker Hub or NGC).
fn resolved_by(ctx: &Ctx, r: &PullReport) -> String {
    let registry = r.canonical.registry.as_str();
    let configured = ctx
        .config()
        .is_ok_and(|c| c.registries().any(|(host, _)| host == registry));
    if r.resolved_by == ResolvedBy::Official && !configured && !is_public(registry) {
        return format!(
            "{registry} itself, the registry the reference names (no mirrors.toml entry makes it \
             a mirror of another)"
        );
    }
    describe(r.resolved_by).to_owned()
}

/// Registries that are the origin of what they serve.
fn is_public(registry: &str) -> bool {
    matches!(
        registry,
        cudaimg_oci::reference::DOCKER_HUB
            | "nvcr.io"
            | "ghcr.io"
            | "quay.io"
            | "registry.k8s.io"
            | "public.ecr.aws"
    )
}

/// A name like `127.0.0.1:5302/nvidia/cuda` whose host no mirrors.toml entry maps is
/// stored (and loaded) under that host: cudaimg cannot know the host mirrors Docker Hub.
/// When the path is one of Docker Hub's (`nvidia/…`, `library/…`), the warning says so and
/// how to have it stored as `docker.io/…`.
fn unconfigured_mirror(config: &cudaimg_config::Config, r: &mut PullReport) {
    let registry = r.canonical.registry.clone();
    if is_public(&registry) || config.registries().any(|(host, _)| host == registry) {
        return;
    }
    let repo = &r.canonical.repository;
    if !(repo.starts_with("nvidia/") || repo.starts_with("library/")) {
        return;
    }
    let tag = r
        .canonical
        .tag
        .as_deref()
        .map(|t| format!(":{t}"))
        .unwrap_or_default();
    r.warnings.push(format!(
        "`{registry}` is not a mirror in mirrors.toml, so this is stored (and loaded) as \
         `{registry}/{repo}`, not `docker.io/{repo}`; if it mirrors Docker Hub, add it \
         (`[registries.\"docker.io\"]` with `mirrors = [\"http://{registry}\"]`, or https) and pull \
         `{repo}{tag}`: the digest is then checked against Docker Hub when it answers"
    ));
}

fn describe(by: ResolvedBy) -> &'static str {
    match by {
        ResolvedBy::Official => "the official registry",
        ResolvedBy::Mirrors => "mirrors only (the official registry was out of reach)",
        ResolvedBy::Digest => "the reference",
        ResolvedBy::Lock => "the lockfile",
    }
}

/// The line that says which mirror configuration a pull uses, or where none was found.
fn config_note(config: &cudaimg_config::Config) -> String {
    if let Some(p) = &config.path {
        format!("mirror configuration: {}", p.display())
    } else {
        let looked: Vec<String> = cudaimg_config::searched_locations()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "no mirrors.toml found (looked for {}): each registry is pulled from its own \
                 host; `cudaimg mirrors init --mirror URL` sets up mirrors for every directory",
            looked.join(", ")
        )
    }
}
