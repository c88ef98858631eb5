//! `cudaimg verify` ([`Store::fsck`]): re-hash every blob and check that every name in `index.json` resolves
//! to complete content (manifest, config, layers, and the index it was chosen from).
//!
//! Entries that are not regular files where blobs or partial downloads belong (links,
//! FIFOs, directories) are problems: cudaimg never makes them, and nothing reads or writes
//! through them. `--repair` removes a link or special file itself, never what it points to.

use std::collections::BTreeMap;
use std::io::Read;

use rustix::fs::FileType;

use super::closure::{BlobRole, Reached, WalkError};
use super::confine::{describe, file_type, StoreDir};
use super::index::IndexEntry;
use super::{Store, StoreError};
use cudaimg_oci::digest::{Digest, Hasher};
use cudaimg_oci::manifest::Descriptor;

/// What `verify` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub blobs: usize,
    pub bytes: u64,
    pub images: usize,
    /// Leftover partial downloads in `ingest/` (not a problem: a later pull resumes or `gc`
    /// removes them).
    pub partials: usize,
    pub problems: Vec<String>,
    /// Corrupt blobs deleted by `--repair`.
    pub repaired: Vec<String>,
    /// The stored images (name and platform) that a problem touches: what to pull again.
    pub affected: Vec<Affected>,
}

/// One stored image with a problem: the pull that fetches it again names this platform.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Affected {
    pub name: String,
    /// `os/arch[/variant]`, when the entry records one (a whole multi-platform image does not).
    pub platform: Option<String>,
    /// The entry names a whole multi-platform image (`pull --all-platforms`).
    pub all_platforms: bool,
}

fn hash_file(dir: &StoreDir, name: &str, buf: &mut [u8]) -> Result<(Digest, u64), StoreError> {
    let mut f = dir.open_read(name)?;
    let mut h = Hasher::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// Checks the whole store. `on_blob` is called with each blob's size after it is hashed.
/// With `repair`, corrupt blobs are deleted, so that the next pull fetches them again
/// (a pull trusts a stored blob of the right size, as every blob was verified when stored).
pub(crate) fn verify(
    store: &Store,
    repair: bool,
    on_blob: &dyn Fn(u64),
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    // The index first: blobs are only ever added while a pull runs, so every blob this
    // snapshot names is already there when the blobs are listed below.
    let index = store.read_index()?;
    let mut good: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut buf = vec![0u8; 1 << 20];
    let blobs = store.blobs()?;
    for (name, st) in blobs.entries()? {
        let Ok(expected) = Digest::parse(&format!("sha256:{name}")) else {
            report.problems.push(format!(
                "blobs/sha256/{name} is not named by a sha256 digest"
            ));
            continue;
        };
        let kind = file_type(&st);
        if kind != FileType::RegularFile {
            let what = format!(
                "blob {expected} cannot be read: `blobs/sha256/{name}` is {}, not a regular file",
                describe(kind)
            );
            // A directory may hold anything; links and special files are removed themselves.
            if repair && kind != FileType::Directory {
                blobs.remove(&name)?;
                report.repaired.push(expected.to_string());
                report.problems.push(format!(
                    "{what}; removed it (not its target), pull its image again"
                ));
            } else {
                report.problems.push(what);
            }
            continue;
        }
        let (actual, size) = match hash_file(&blobs, &name, &mut buf) {
            Ok(r) => r,
            Err(e) => {
                report
                    .problems
                    .push(format!("blob {expected} cannot be read: {e}"));
                continue;
            }
        };
        report.blobs += 1;
        report.bytes += size;
        on_blob(size);
        if actual == expected {
            good.insert(expected, size);
        } else if repair {
            blobs.remove(&name)?;
            report.repaired.push(expected.to_string());
            report.problems.push(format!(
                "blob {expected} was corrupt (its content hashes to {actual}); removed, pull its image again"
            ));
        } else {
            report.problems.push(format!(
                "blob {expected} is corrupt: its content hashes to {actual}"
            ));
        }
    }

    for entry in &index.manifests {
        report.images += 1;
        let before = report.problems.len();
        check_entry(store, entry, &good, &mut report.problems)?;
        if report.problems.len() > before {
            note_affected(entry, &mut report.affected);
        }
    }
    // A store other tools wrote may have no `ingest/`; one that is a link is a problem.
    let ingest = match store.ingest() {
        Ok(d) => Some(d),
        Err(e @ StoreError::Unsafe { .. }) => {
            report.problems.push(e.to_string());
            None
        }
        Err(_) => None,
    };
    if let Some(ingest) = ingest {
        for (name, st) in ingest.entries()? {
            let kind = file_type(&st);
            if kind == FileType::RegularFile {
                if name.ends_with(".partial") {
                    report.partials += 1;
                }
                continue;
            }
            let what = format!(
                "`ingest/{name}` is {}, not a partial download cudaimg wrote",
                describe(kind)
            );
            if repair && kind != FileType::Directory {
                ingest.remove(&name)?;
                report.repaired.push(format!("ingest/{name}"));
                report
                    .problems
                    .push(format!("{what}; removed it (not its target)"));
            } else {
                report.problems.push(what);
            }
        }
    }
    Ok(report)
}

/// Adds `entry`'s image (name and platform) to what a pull must fetch again.
fn note_affected(entry: &IndexEntry, affected: &mut Vec<Affected>) {
    let Some(name) = entry.ref_name() else {
        return;
    };
    let one = Affected {
        name: name.to_owned(),
        platform: entry.platform.as_ref().map(|p| p.to_platform().to_string()),
        all_platforms: entry.is_index(),
    };
    if !affected.contains(&one) {
        affected.push(one);
    }
}

/// Checks that everything `entry` reaches is among the `good` blobs (digest -> size).
fn check_entry(
    store: &Store,
    entry: &IndexEntry,
    good: &BTreeMap<Digest, u64>,
    problems: &mut Vec<String>,
) -> Result<(), StoreError> {
    // Several platforms share a name: the problem says which one it is.
    let image = match &entry.platform {
        Some(p) => format!(
            "{} ({})",
            entry.ref_name().unwrap_or("(unnamed entry)"),
            p.to_platform()
        ),
        None => entry.ref_name().unwrap_or("(unnamed entry)").to_owned(),
    };
    let digest = match entry.digest() {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("{image}: {e}"));
            return Ok(());
        }
    };
    let list = match entry.index_digest().map(Digest::parse).transpose() {
        Ok(l) => l,
        Err(e) => {
            problems.push(format!("{image}: {e}"));
            None
        }
    };
    let manifest = Descriptor {
        media_type: entry.media_type.clone(),
        digest,
        size: entry.size,
    };
    // Only good manifests are followed, so a walk never fails to read one.
    let res = store.walk(&manifest, list.as_ref(), &mut |r: &Reached| {
        let (d, what) = (&r.digest, r.role);
        match (good.get(d), r.size) {
            (Some(_), None) => true,
            (Some(s), Some(size)) if *s == size => true,
            (Some(s), Some(size)) => {
                problems.push(format!(
                    "{image}: {what} {d} is {s} bytes, the manifest says {size}"
                ));
                false
            }
            (None, _) if what == BlobRole::Index => {
                problems.push(format!("{image}: its {what} {d} is missing or corrupt"));
                false
            }
            (None, _) => {
                problems.push(format!("{image}: {what} {d} is missing or corrupt"));
                false
            }
        }
    });
    match res {
        Ok(()) => Ok(()),
        Err(e @ WalkError::Unparsable { .. }) => {
            problems.push(format!("{image}: {e}"));
            Ok(())
        }
        Err(WalkError::Unreadable { source, .. }) => Err(source),
    }
}
