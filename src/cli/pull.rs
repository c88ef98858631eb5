//! `cudaimg pull REF...`

use std::time::{Duration, Instant};

use std::path::PathBuf;

use crate::error::Error;
use cudaimg_config::lockfile::{Lockfile, Pin, DEFAULT_LOCKFILE};
use cudaimg_config::Canonical;
use cudaimg_oci::platform::Platform;
use cudaimg_transfer::handover::Loaded;
use cudaimg_transfer::{
    PullAllReport, PullReport, PullTarget, ResolvedBy, DEFAULT_JOBS, DEFAULT_STALL_SECS,
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
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
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
    let config_note = match &config.path {
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
        if args.all_platforms {
            let pulled = pull_all(ctx, &target, reporter, &config_note).await;
            match pulled {
                Err(e) if targets.len() == 1 => return Err(e),
                Err(e) => {
                    super::report_error(&e);
                    first_error.get_or_insert(e);
                }
                Ok(()) => {}
            }
            continue;
        }
        // `--load`: the image streams into the Engine while it downloads.
        let streaming = super::load::streaming(args.load, ctx.store()?).await?;
        let report = session
            .pull_streaming(&target, &platform, reporter.as_ref(), streaming.as_ref())
            .await;
        drop(reporter);
        let streamed = super::load::streamed(streaming, &report).await;
        match report {
            Ok(report) => {
                let secs = started.elapsed().as_secs_f64();
                record_locations(ctx.store()?, &report);
                if !args.load {
                    print(ctx, &report, secs, None);
                    continue;
                }
                // Streamed; else (no image was chosen to stream) what the store holds.
                let loaded = if let Some(loaded) = streamed {
                    loaded.map_err(Error::from)
                } else {
                    let name = report.canonical.to_string();
                    super::load::load(ctx.store()?, &name, Some(&report.platform)).await
                };
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
    emit(&r.canonical.to_string());
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
    emit(&r.canonical.to_string());
    if let Some(i) = &r.index_digest {
        emit(&format!("  index:    {i}"));
    }
    emit(&format!("  digest from: {}", describe(r.resolved_by)));
    for p in &r.platforms {
        emit(&format!(
            "  {:<16}  {}  {:>10}  {} layers{}",
            p.platform.as_deref().unwrap_or("-"),
            p.digest,
            human_bytes(p.size),
            p.layers,
            if p.named {
                ""
            } else {
                "  (kept with the index, not listed)"
            }
        ));
    }
    emit(&format!(
        "  size:     {} ({} blobs already stored)",
        human_bytes(r.total_bytes),
        r.blobs_cached
    ));
    emit(&format!(
        "  fetched:  {} in {secs:.1}s, manifest from {}",
        human_bytes(r.bytes_downloaded),
        r.manifest_source
    ));
}

fn resolved_by(r: &PullReport) -> &'static str {
    describe(r.resolved_by)
}

fn describe(by: ResolvedBy) -> &'static str {
    match by {
        ResolvedBy::Official => "the official registry",
        ResolvedBy::Mirrors => "mirrors only (the official registry was out of reach)",
        ResolvedBy::Digest => "the reference",
        ResolvedBy::Lock => "the lockfile",
    }
}
