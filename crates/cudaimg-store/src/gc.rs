//! Garbage: `gc` deletes blobs no entry reaches ([`Store::closure`]'s walk)
//! and stale partial downloads.
//!
//! Safety against a concurrent pull: a pull holds a shared lock on `.gc.lock` from its
//! first request to its index update, and `gc` takes it exclusively. So `gc` waits for
//! running pulls, and never deletes a blob that a pull has committed but not yet named.
//!
//! Confinement: directories are listed and entries removed through handles opened without
//! following links, so a `blobs/sha256` that someone swapped for a link to `/etc` is
//! refused instead of emptied; a link among the entries is removed itself, not its target.

use std::collections::BTreeSet;

use super::closure::WalkError;
use super::{Store, StoreError};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::Descriptor;

/// Held by a pull; keeps `gc` out until dropped.
pub struct GcGuard(#[allow(dead_code)] Option<std::fs::File>);

/// What `gc` removed (or would remove, with `dry_run`).
#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub partials_removed: usize,
    pub blobs_kept: usize,
    pub dry_run: bool,
}

impl Store {
    fn gc_lock_file(&self) -> Result<std::fs::File, StoreError> {
        self.root_dir()?.open_rw(".gc.lock")
    }

    /// Takes the shared side of the gc lock (waits while a `gc` runs).
    pub fn hold_against_gc(&self) -> Result<GcGuard, StoreError> {
        let f = match self.gc_lock_file() {
            Ok(f) => f,
            // No `gc` can delete from a store nobody can write: nothing to hold off.
            Err(e) if e.is_read_only() => return Ok(GcGuard(None)),
            Err(e) => return Err(e),
        };
        f.lock_shared()?;
        Ok(GcGuard(Some(f)))
    }

    /// Blobs that some index entry reaches (the union of every name's closure).
    fn referenced(&self) -> Result<BTreeSet<Digest>, StoreError> {
        let index = self.read_index()?;
        let mut keep = BTreeSet::new();
        let corrupt = |err: &dyn std::fmt::Display| StoreError::Corrupt(err.to_string());
        for e in &index.manifests {
            let manifest = Descriptor {
                media_type: e.media_type.clone(),
                digest: e.digest().map_err(|err| corrupt(&err))?,
                size: e.size,
            };
            let list = e
                .index_digest()
                .map(Digest::parse)
                .transpose()
                .map_err(|err| corrupt(&err))?;
            self.walk(&manifest, list.as_ref(), &mut |r| {
                keep.insert(r.digest.clone())
            })
            .map_err(|e| match e {
                WalkError::Unreadable {
                    source: s @ StoreError::Unsafe { .. },
                    ..
                } => s,
                WalkError::Unreadable { digest, .. } => StoreError::Corrupt(format!(
                    "manifest {digest} that index.json names cannot be read"
                )),
                WalkError::Unparsable { digest, source } => {
                    StoreError::Corrupt(format!("manifest {digest}: {source}"))
                }
            })?;
        }
        Ok(keep)
    }

    /// Deletes unreferenced blobs and partial downloads, waiting for running pulls first.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport, StoreError> {
        let gc_lock = self.gc_lock_file()?;
        gc_lock.lock()?;
        let _index = self.lock()?;
        // First: a `blobs/sha256` that is not a real directory is refused before anything.
        let blobs = self.blobs()?;
        let keep = self.referenced()?;
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        for (name, st) in blobs.entries()? {
            let referenced =
                Digest::parse(&format!("sha256:{name}")).is_ok_and(|d| keep.contains(&d));
            if referenced {
                report.blobs_kept += 1;
                continue;
            }
            report.blobs_removed += 1;
            report.bytes_freed += u64::try_from(st.st_size).unwrap_or(0);
            if !dry_run {
                blobs.remove(&name)?;
            }
        }
        let ingest = self.ingest()?;
        for (name, st) in ingest.entries()? {
            report.partials_removed += 1;
            report.bytes_freed += u64::try_from(st.st_size).unwrap_or(0);
            if !dry_run {
                ingest.remove(&name)?;
            }
        }
        Ok(report)
    }
}
