//! `cudaimg gc`: delete blobs no stored image uses, and partial downloads. Waits for running
//! pulls, so it is safe to run beside them.

use crate::error::Error;

use super::{emit, emit_json, human_bytes, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Say what would be removed, remove nothing
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let store = ctx.existing_store()?;
    let dry_run = args.dry_run;
    let report = tokio::task::spawn_blocking(move || store.gc(dry_run))
        .await
        .map_err(|e| Error::Setup(format!("gc was interrupted: {e}")))??;
    if ctx.json {
        emit_json(&report);
    } else {
        emit(&format!(
            "{} {} and {} ({}); kept {}",
            if dry_run { "would remove" } else { "removed" },
            super::words::counted(report.blobs_removed, "unused blob"),
            super::words::counted(report.partials_removed, "partial download"),
            human_bytes(report.bytes_freed),
            super::words::counted(report.blobs_kept, "blob")
        ));
    }
    Ok(())
}
