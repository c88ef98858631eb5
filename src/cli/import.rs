//! `cudaimg import DIR [--to HOST[:PORT][/PREFIX]]`: a bundle (written by `cudaimg sync
//! --to DIR`) into a registry, through the push path, or into the local store. A file
//! instead of a directory is an image archive (`docker save`, oci-archive), which goes into
//! the store ([`super::import_archive`]). The work is
//! in cudaimg-sync's `bundle::import`; this prints the outcome of each image, the parts to
//! send again, and the images to retry, and ends non-zero when anything failed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{exit, Error};
use cudaimg_sync::bundle::import::{parse_target, ImportOptions, ImportReport, Target};
use cudaimg_sync::bundle::{import, Bundle};

use cudaimg_oci::text::shown;

use super::push::SendArgs;
use super::{emit, emit_json, human_bytes, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The bundle directory (`bundle.json` and its `part-*.tar` files), or an image archive
    /// (`docker save`, `skopeo copy … oci-archive:`, `cudaimg export`) to store
    #[arg(value_name = "DIR|ARCHIVE")]
    dir: PathBuf,
    /// An archive's images go under this name [default: the names it records]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Push into this registry: `docker.io/nvidia/cuda:T` goes to `HOST/PREFIX/nvidia/cuda:T`
    /// [default: import into the local store]
    #[arg(long, value_name = "HOST[:PORT][/PREFIX]")]
    to: Option<String>,
    #[command(flatten)]
    send: SendArgs,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<(), Error> {
    if fs_err::metadata(&args.dir).is_ok_and(|m| !m.is_dir()) {
        if args.to.is_some() {
            return Err(Error::Usage(format!(
                "`{}` is an archive: it goes into the store, not `--to` a registry\nhint: \
                 `cudaimg import {0}`, then `cudaimg push NAME HOST/REPO:TAG`",
                args.dir.display()
            )));
        }
        return super::import_archive::run(ctx, &args.dir, args.name.clone()).await;
    }
    if args.name.is_some() {
        return Err(Error::Usage(
            "`--name` is for an archive; a bundle's images keep their own names".into(),
        ));
    }
    let bundle =
        Bundle::open(&args.dir).map_err(cudaimg_sync::bundle::import::ImportError::from)?;
    let started = Instant::now();
    let store = ctx.store()?;
    let target = match &args.to {
        Some(to) => {
            let (host, prefix) = parse_target(to);
            if host.is_empty() {
                return Err(Error::Usage(format!(
                    "`--to {to}` names no registry host\nhint: write `--to registry.example:5000/mirror`"
                )));
            }
            Target::Registry {
                config: ctx.config()?,
                http: ctx.session.http()?,
                host,
                prefix,
            }
        }
        None => Target::Store,
    };
    let options = ImportOptions {
        push: args.send.options(),
    };
    let reporter: Arc<dyn cudaimg_oci::progress::Reporter> = Arc::from(ctx.reporter());
    let report = import(&bundle, store, &target, &options, reporter.clone()).await;
    drop(reporter);
    let report = report?;
    print(ctx, &report, started.elapsed().as_secs_f64());
    if report.ok() {
        return Ok(());
    }
    let failed = report.failed().count();
    Err(Error::Failed {
        what: format!(
            "{failed} of {} images failed, {} of {} parts cannot be used",
            report.images.len(),
            report.bad_parts.len(),
            report.parts_checked
        ),
        code: exit::FAILURE,
    })
}

fn print(ctx: &Ctx, r: &ImportReport, secs: f64) {
    for p in &r.bad_parts {
        note!(
            "error: part {} cannot be used: {}\nhint: send it again: {}",
            shown(&p.file),
            shown(&p.reason),
            shown(&p.path.display().to_string())
        );
    }
    for i in r.failed() {
        note!(
            "error: {} -> {}: {}",
            shown(&i.name),
            shown(&i.destination),
            shown(i.error.as_deref().unwrap_or("failed"))
        );
        if let Some(h) = &i.hint {
            note!("hint: {h}");
        }
    }
    if ctx.json {
        // A failed import fails the run: its report and error object make one document.
        if r.ok() {
            emit_json(r);
        } else {
            super::hold_json(r);
        }
        return;
    }
    for i in r.images.iter().filter(|i| i.status == "imported") {
        emit(&format!("{} -> {}", shown(&i.name), shown(&i.destination)));
        emit(&format!("  digest:   {}", i.digest));
        if let Some(u) = &i.upstream {
            emit(&format!(
                "  upstream: {} (not every platform was carried: the tag names {} instead)",
                u.digest, u.carried_as
            ));
        }
        emit(&format!(
            "  blobs:    {} written, {} mounted, {} already there; {} sent",
            i.blobs_sent,
            i.blobs_mounted,
            i.blobs_present,
            human_bytes(i.bytes)
        ));
    }
    let failed: Vec<String> = r.failed().map(|i| shown(&i.name).to_string()).collect();
    emit(&format!(
        "imported {} of {} images into {} in {secs:.1}s",
        r.images.len() - failed.len(),
        r.images.len(),
        r.target
    ));
    if !failed.is_empty() || !r.bad_parts.is_empty() {
        emit("to retry (after sending the parts named above again, if any):");
        for f in failed {
            emit(&format!("  {f}"));
        }
        emit(&format!(
            "run `cudaimg import {}{}` again: what is done already is skipped",
            r.bundle.display(),
            if r.target == "store" {
                String::new()
            } else {
                format!(" --to {}", r.target)
            }
        ));
    }
}
