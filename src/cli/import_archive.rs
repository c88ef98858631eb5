//! `cudaimg import ARCHIVE [--name NAME]`: an image archive (`docker save`, skopeo's
//! `oci-archive:`/`docker-archive:`, `cudaimg export`) into the store, verified blob by blob
//! (cudaimg-transfer's `archive_in`), named as the archive records or as `--name` says.

use std::path::Path;

use crate::error::Error;
use cudaimg_transfer::archive_in::{import_archive, ArchiveKind};

use super::{emit, emit_json, human_bytes, Ctx};

#[derive(serde::Serialize)]
struct Report {
    archive: String,
    kind: ArchiveKind,
    images: Vec<Image>,
    blobs_written: usize,
    bytes_written: u64,
    blobs_present: usize,
    skipped: Vec<String>,
}

#[derive(serde::Serialize)]
struct Image {
    name: Option<String>,
    digest: String,
    platform: Option<String>,
}

pub async fn run(ctx: &Ctx, path: &Path, name: Option<String>) -> Result<(), Error> {
    let name = match name {
        Some(n) => Some(ctx.config()?.canonicalize(&n)?.image.to_string()),
        None => None,
    };
    let store = ctx.store()?;
    let imported = import_archive(store, path, name).await?;
    let r = &imported.report;
    let images: Vec<Image> = r
        .images
        .iter()
        .map(|i| Image {
            name: i.name.clone(),
            digest: i.manifest.digest.to_string(),
            platform: i.platform.as_ref().map(ToString::to_string),
        })
        .collect();
    if images.iter().all(|i| i.name.is_none()) {
        return Err(Error::Usage(format!(
            "`{}` records no image name its images could be stored under (their blobs are \
             stored, unnamed)\nhint: name them: `cudaimg import {0} --name REPO:TAG`",
            path.display()
        )));
    }
    if ctx.json {
        emit_json(&Report {
            archive: path.display().to_string(),
            kind: imported.kind,
            images,
            blobs_written: r.blobs_written,
            bytes_written: r.bytes_written,
            blobs_present: r.blobs_present,
            skipped: r.skipped.clone(),
        });
        return Ok(());
    }
    for i in &images {
        emit(&format!(
            "stored {} {}{}",
            i.name.as_deref().unwrap_or("(unnamed)"),
            i.digest,
            i.platform
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        ));
    }
    emit(&format!(
        "{} blobs written ({}), {} already stored",
        r.blobs_written,
        human_bytes(r.bytes_written),
        r.blobs_present
    ));
    for s in &r.skipped {
        note!("note: {s}");
    }
    Ok(())
}
