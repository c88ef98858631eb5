//! `cudaimg verify`: exits 3 and names each problem when the store is not sound.

use crate::error::Error;
use crate::store::verify::verify;

use super::{emit, emit_json, human_bytes, Ctx};

pub async fn run(ctx: &Ctx) -> Result<(), Error> {
    let store = ctx.store()?;
    let bar = ctx.progress.counter("verifying");
    let s = store.clone();
    let report = tokio::task::spawn_blocking(move || verify(&s, &|n| bar.inc(n)))
        .await
        .map_err(|e| Error::Corrupt(format!("verification was interrupted: {e}")))??;
    if ctx.json {
        emit_json(&report);
    } else {
        emit(&format!(
            "checked {} blobs ({}) and {} images in {}",
            report.blobs,
            human_bytes(report.bytes),
            report.images,
            store.root().display()
        ));
        if report.partials > 0 {
            emit(&format!(
                "{} partial downloads in ingest/ (not part of any image)",
                report.partials
            ));
        }
    }
    if report.problems.is_empty() {
        return Ok(());
    }
    for p in &report.problems {
        eprintln!("problem: {p}");
    }
    Err(Error::Corrupt(format!(
        "{} problems found",
        report.problems.len()
    )))
}
