//! `cudaimg pull REF...`

use std::time::Instant;

use crate::engine::{Engine, PullReport, DEFAULT_JOBS, DEFAULT_STALL_SECS};
use crate::error::Error;
use crate::platform::Platform;

use super::{emit, emit_json, human_bytes, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images to pull, e.g. `nvidia/cuda:12.4.1-runtime-ubuntu22.04` or a mirror-prefixed name
    #[arg(required = true, value_name = "REFERENCE")]
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
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<(), Error> {
    let platform: Platform = match &args.platform {
        Some(p) => p.parse()?,
        None => Platform::host(),
    };
    let config = ctx.config()?;
    // Every reference is checked before any network traffic.
    let names = args
        .references
        .iter()
        .map(|r| config.canonicalize(r))
        .collect::<Result<Vec<_>, _>>()?;
    let store = ctx.store()?;
    let jobs = usize::from(args.jobs);
    let stall = std::time::Duration::from_secs(args.stall_timeout);
    let engine = Engine::new(config, store, jobs, stall).map_err(|e| {
        crate::store::StoreError::Io(std::io::Error::other(format!("cannot set up HTTP: {e}")))
    })?;
    let config_note = match &engine.config.path {
        Some(p) => format!("mirror configuration: {}", p.display()),
        None => "no mirrors.toml found: each registry is pulled from its own host".to_owned(),
    };
    for (input, name) in args.references.iter().zip(&names) {
        let started = Instant::now();
        let reporter = ctx.progress.reporter();
        let report = engine.pull(input, name, &platform, reporter.as_ref()).await;
        drop(reporter);
        let report = report.inspect_err(|e| {
            if !e.is_not_found() {
                eprintln!("{config_note}");
            }
        })?;
        print(ctx, &report, started.elapsed().as_secs_f64());
    }
    Ok(())
}

fn print(ctx: &Ctx, r: &PullReport, secs: f64) {
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if ctx.verbose {
        for s in &r.sources {
            let failures: Vec<String> = s
                .failures
                .iter()
                .map(|f| format!("{} x{}", f.kind, f.count))
                .collect();
            eprintln!(
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
        emit_json(r);
        return;
    }
    let cached = r.layers.iter().filter(|l| l.cached).count();
    emit(&r.canonical);
    emit(&format!("  digest:   {}", r.digest));
    if let Some(i) = &r.index_digest {
        emit(&format!("  index:    {i}"));
    }
    emit(&format!("  platform: {}", r.platform));
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
}
