//! `cudaimg verify`: exits 3 and names each problem when the store is not sound.

use crate::error::Error;
use cudaimg_store::StoreError;

use super::{emit, emit_json, human_bytes, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Delete corrupt blobs, so that pulling their images again fetches them anew
    #[arg(long)]
    repair: bool,
}

pub async fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let store = ctx.existing_store()?;
    let bar = ctx.progress.counter("verifying");
    let s = store.clone();
    let repair = args.repair;
    let report = tokio::task::spawn_blocking(move || s.fsck(repair, &|n| bar.inc(n)))
        .await
        .map_err(|e| Error::Setup(format!("verification was interrupted: {e}")))?
        .map_err(broken_index)?;
    if ctx.json {
        // Problems fail the run: the report and its error object make one document.
        if report.problems.is_empty() {
            emit_json(&report);
        } else {
            super::hold_json(&report);
        }
    } else {
        emit(&format!(
            "checked {} ({}) and {} in {}",
            super::words::counted(report.blobs, "blob"),
            human_bytes(report.bytes),
            super::words::counted(report.images, "image"),
            store.root().display()
        ));
        if report.partials > 0 {
            emit(&format!(
                "{} in ingest/ (not part of any image)",
                super::words::counted(report.partials, "partial download")
            ));
        }
    }
    if report.problems.is_empty() {
        return Ok(());
    }
    for p in &report.problems {
        note!("problem: {p}");
    }
    let corrupt = Error::Corrupt(format!(
        "{} problem{} found",
        report.problems.len(),
        if report.problems.len() == 1 { "" } else { "s" }
    ));
    if report.affected.is_empty() {
        return Err(corrupt);
    }
    // The pull that fetches each image again names its platform: a plain pull would fetch
    // the host's, and leave another platform's entry broken.
    let pulls: Vec<String> = report
        .affected
        .iter()
        .map(|a| match (&a.platform, a.all_platforms) {
            (_, true) => format!("`cudaimg pull --all-platforms {}`", a.name),
            (Some(p), false) => format!("`cudaimg pull --platform {p} {}`", a.name),
            (None, false) => format!("`cudaimg pull {}`", a.name),
        })
        .collect();
    let repair = if args.repair {
        ""
    } else {
        "`cudaimg verify --repair` deletes corrupt blobs; then "
    };
    Err(Error::WithHint {
        inner: Box::new(corrupt),
        hint: format!("{repair}{} fetches what is missing", pulls.join(", ")),
    })
}

/// An `index.json` that is not an OCI index is damage `verify` found (exit 3), with its own
/// fix, not a failure to run.
fn broken_index(e: StoreError) -> Error {
    match e {
        StoreError::NotALayout { path, reason }
            if path.file_name().is_some_and(|n| n == "index.json") =>
        {
            Error::BrokenIndex { path, reason }
        }
        e => e.into(),
    }
}
