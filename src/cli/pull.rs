//! `cudaimg pull REF...`

use std::time::Instant;

use std::path::PathBuf;

use crate::error::Error;
use cudaimg_config::lockfile::{Lockfile, DEFAULT_LOCKFILE};
use cudaimg_oci::platform::Platform;
use cudaimg_transfer::handover::Loaded;
use cudaimg_transfer::{PullReport, PullTarget, ResolvedBy, DEFAULT_JOBS, DEFAULT_STALL_SECS};

use super::{emit, emit_json, human_bytes, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images to pull, e.g. `nvidia/cuda:12.4.1-runtime-ubuntu22.04` or a mirror-prefixed
    /// name; with `--locked` and none given, every locked image
    #[arg(value_name = "REFERENCE", required_unless_present = "locked")]
    references: Vec<String>,
    /// Platform to pull from a multi-platform image [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
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
    /// Then hand each image to the Docker Engine (`DOCKER_HOST`) under its official name
    #[arg(long)]
    load: bool,
}

/// Options shared by `pull --locked` and `lock`.
#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// The lockfile
    #[arg(long, value_name = "PATH", default_value = DEFAULT_LOCKFILE)]
    pub lockfile: PathBuf,
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
    // Every reference, and its lock entry, is checked before any network traffic.
    let mut targets = Vec::with_capacity(references.len());
    for r in &references {
        let name = config.canonicalize(r)?;
        let pin = match &lock {
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
    let mut engine = ctx.engine(
        config,
        usize::from(args.jobs),
        args.stall_timeout,
        args.require_upstream,
    )?;
    engine.verify_existing = args.verify_existing;
    let config_note = match &engine.config.path {
        Some(p) => format!("mirror configuration: {}", p.display()),
        None => "no mirrors.toml found: each registry is pulled from its own host".to_owned(),
    };
    let mut first_error = None;
    for (input, name, pin) in &targets {
        let started = Instant::now();
        let reporter = ctx.progress.reporter();
        let target = PullTarget {
            input,
            name,
            pin: pin.as_ref(),
            platform_explicit: args.platform.is_some(),
        };
        let report = engine.pull(&target, &platform, reporter.as_ref()).await;
        drop(reporter);
        match report {
            Ok(report) => {
                let secs = started.elapsed().as_secs_f64();
                record_locations(&engine.store, &report);
                if !args.load {
                    print(ctx, &report, secs, None);
                    continue;
                }
                let platform: Platform = report.platform.parse()?;
                let loaded =
                    super::load::load(&engine.store, &report.canonical, Some(&platform)).await;
                match loaded {
                    Ok(l) => print(ctx, &report, secs, Some(&l)),
                    Err(e) => {
                        print(ctx, &report, secs, None);
                        if targets.len() == 1 {
                            return Err(e);
                        }
                        super::report_error(&e);
                        first_error.get_or_insert(e);
                    }
                }
            }
            // The other references are still pulled; the first failure decides the exit.
            Err(e) if targets.len() > 1 => {
                if !e.is_not_found() {
                    note!("{config_note}");
                }
                let e = Error::from(e);
                super::report_error(&e);
                first_error.get_or_insert(e);
            }
            Err(e) => {
                if !e.is_not_found() {
                    note!("{config_note}");
                }
                return Err(e.into());
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

/// Notes in the store where the image's layers are, so `push` and `copy` can mount them
/// from there; a hint only, so failing to write it is a warning.
fn record_locations(store: &cudaimg_store::Store, r: &PullReport) {
    let Ok(name) = cudaimg_oci::reference::ImageRef::parse(&r.canonical) else {
        return;
    };
    let digests: Vec<_> = r.layers.iter().map(|l| l.digest.clone()).collect();
    if let Err(e) = store.record_locations(&name.registry, &name.repository, &digests) {
        note!("warning: could not record where the layers came from: {e}");
    }
}

fn print(ctx: &Ctx, r: &PullReport, secs: f64, loaded: Option<&Loaded>) {
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
                "source {}: {} in {} blobs, {} requests answered{}",
                s.url,
                human_bytes(s.bytes),
                s.blobs,
                s.requests,
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
            (Ok(mut v), Some(l)) => {
                v["loaded"] = serde_json::to_value(l).unwrap_or_default();
                emit_json(&v);
            }
            _ => emit_json(r),
        }
        return;
    }
    let cached = r.layers.iter().filter(|l| l.cached).count();
    emit(&r.canonical);
    emit(&format!("  digest:   {}", r.digest));
    if let Some(i) = &r.index_digest {
        emit(&format!("  index:    {i}"));
    }
    emit(&format!("  platform: {}", r.platform));
    emit(&format!("  digest from: {}", resolved_by(r)));
    emit(&format!(
        "  size:     {} in {} layers ({} already stored)",
        human_bytes(r.total_bytes),
        r.layers.len(),
        cached
    ));
    emit(&format!(
        "  fetched:  {} in {secs:.1}s, manifest from {}",
        human_bytes(r.bytes_downloaded),
        r.manifest_source
    ));
    if let Some(l) = loaded {
        super::load::print(l);
    }
}

fn resolved_by(r: &PullReport) -> &'static str {
    match r.resolved_by {
        ResolvedBy::Official => "the official registry",
        ResolvedBy::Mirrors => "mirrors only (the official registry was out of reach)",
        ResolvedBy::Digest => "the reference",
        ResolvedBy::Lock => "the lockfile",
    }
}
