//! `cudaimg images`: what the store holds, and how much the images share.
//!
//! A whole multi-platform image (`pull --all-platforms`) shows as one row: its index digest,
//! the platforms stored under it (`linux/amd64,linux/arm64`), every blob of every child;
//! attestations are counted in its manifests, not shown alone. Under `--json` the index and
//! each platform stay records of their own (`index`, `index_digest` tie them together).
//! The table fits the terminal (see `width`): names are shortened from the left, digests
//! to docker's 12 hex digits; piped with no `COLUMNS`, every value is whole.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Error;
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::Manifest;
use cudaimg_oci::text::shown;
use cudaimg_store::{Store, StoreError};

use super::width::{table, Column, Fit};
use super::{emit, emit_json, human_bytes, Ctx};

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    digest: String,
    platform: Option<String>,
    /// Config and layers, compressed, as stored.
    size: u64,
    /// Bytes of this image's blobs that other stored images use too.
    shared: u64,
    layers: usize,
    /// The entry's manifest or config is missing or unreadable (`cudaimg verify` says more).
    broken: bool,
    /// The manifest list or index this platform was chosen from, if any.
    index_digest: Option<String>,
    /// The row is a whole multi-platform image's index; then `manifests` counts its
    /// children (attestations included) and `size` covers every blob of every child.
    index: bool,
    manifests: Option<usize>,
}

pub fn run(ctx: &Ctx) -> Result<(), Error> {
    let store = match ctx.existing_store() {
        Ok(s) => s,
        Err(Error::Store(StoreError::Missing(p))) => {
            if ctx.json {
                emit_json(&Vec::<Row>::new());
            } else {
                note!("no store at {} yet: it holds no images", p.display());
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let rows = rows(&store)?;
    if ctx.json {
        emit_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        note!("the store at {} holds no images", store.root().display());
        return Ok(());
    }
    let columns = [
        Column::new("NAME", Fit::Left),
        Column::new("DIGEST", Fit::Digest),
        Column::new("PLATFORMS", Fit::Wrap),
        Column::right("SIZE"),
        Column::right("SHARED"),
        Column::new("LAYERS", Fit::Keep),
    ];
    let cells: Vec<Vec<String>> = shown_rows(&rows)
        .into_iter()
        .map(|(r, platforms)| {
            vec![
                // Names and platforms come from index.json, which any tool may have
                // written: escaped, so none hands control characters to the terminal.
                shown(&r.name).to_string(),
                shown(&r.digest).to_string(),
                shown(&platforms).to_string(),
                human_bytes(r.size),
                human_bytes(r.shared),
                match (r.broken, r.manifests) {
                    (true, _) => "BROKEN (see `cudaimg verify`)".to_owned(),
                    (false, Some(n)) => format!("{n} manifests"),
                    (false, None) => r.layers.to_string(),
                },
            ]
        })
        .collect();
    for line in table(&columns, &cells, ctx.columns) {
        emit(&line);
    }
    Ok(())
}

/// The rows a person reads: a whole multi-platform image is its index's row alone, with
/// the platforms stored under it listed (`linux/amd64,linux/arm64`), as one image it is;
/// every other entry is a row of its own platform.
fn shown_rows(rows: &[Row]) -> Vec<(&Row, String)> {
    let mut shown = Vec::new();
    for r in rows {
        if r.index {
            let mut platforms: Vec<&str> = rows
                .iter()
                .filter(|p| {
                    !p.index && p.name == r.name && p.index_digest.as_ref() == Some(&r.digest)
                })
                .filter_map(|p| p.platform.as_deref())
                .collect();
            platforms.dedup();
            let platforms = if platforms.is_empty() {
                "(index)".to_owned()
            } else {
                platforms.join(",")
            };
            shown.push((r, platforms));
            continue;
        }
        let under_index = rows
            .iter()
            .any(|i| i.index && i.name == r.name && r.index_digest.as_ref() == Some(&i.digest));
        if !under_index {
            shown.push((r, r.platform.clone().unwrap_or_else(|| "-".into())));
        }
    }
    shown
}

fn rows(store: &Store) -> Result<Vec<Row>, Error> {
    // Blobs of each entry; a blob used by two or more entries is shared.
    struct Entry {
        broken: bool,
        name: String,
        digest: String,
        platform: Option<String>,
        blobs: Vec<(Digest, u64)>,
        index_digest: Option<String>,
        /// For an index row: how many child manifests.
        manifests: Option<usize>,
    }
    let mut per_entry: Vec<Entry> = Vec::new();
    for e in store.list()? {
        let name = e.name.unwrap_or_else(|| "<unnamed>".to_owned());
        let platform = e.platform.as_ref().map(ToString::to_string);
        let (blobs, manifests) = if e.is_index {
            // Every blob of every child, each once; a set that cannot be read is broken.
            match store.image_set(&name) {
                Ok(Some(set)) => {
                    let mut seen = std::collections::BTreeSet::new();
                    let blobs = set
                        .children
                        .iter()
                        .flat_map(|c| &c.blobs)
                        .filter(|d| seen.insert(d.digest.clone()))
                        .map(|d| (d.digest.clone(), d.size))
                        .collect();
                    (blobs, Some(set.children.len()))
                }
                _ => (Vec::new(), Some(0)),
            }
        } else {
            let blobs = match e.manifest.map(|m| store.read_manifest(&m)) {
                Some(Ok(Manifest::Image(m))) => std::iter::once(&m.config)
                    .chain(&m.layers)
                    .map(|d| (d.digest.clone(), d.size))
                    .collect(),
                _ => Vec::new(),
            };
            (blobs, None)
        };
        let broken = blobs.is_empty() || !blobs.iter().all(|(d, s)| store.has_blob(d, *s));
        per_entry.push(Entry {
            broken,
            name,
            digest: e.digest,
            platform,
            blobs,
            index_digest: e.index_digest.map(|d| d.to_string()),
            manifests,
        });
    }
    // Sharing counts platform entries only: an index row repeats its platforms' blobs.
    let mut users: BTreeMap<&Digest, usize> = BTreeMap::new();
    // For index rows: which names use each blob.
    let mut names_using: BTreeMap<&Digest, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for e in per_entry.iter().filter(|e| e.manifests.is_none()) {
        for (d, _) in &e.blobs {
            names_using.entry(d).or_default().insert(e.name.as_str());
        }
        let mut unique: Vec<&Digest> = e.blobs.iter().map(|(d, _)| d).collect();
        unique.sort();
        unique.dedup();
        for d in unique {
            *users.entry(d).or_default() += 1;
        }
    }
    let mut rows: Vec<Row> = per_entry
        .iter()
        .map(|e| Row {
            name: e.name.clone(),
            digest: e.digest.clone(),
            platform: e.platform.clone(),
            size: e.blobs.iter().map(|(_, s)| s).sum(),
            shared: e
                .blobs
                .iter()
                .filter(|(d, _)| match e.manifests {
                    // An index shares what images of other names use.
                    Some(_) => names_using
                        .get(d)
                        .is_some_and(|n| n.iter().any(|n| *n != e.name)),
                    None => users.get(d).copied().unwrap_or(0) > 1,
                })
                .map(|(_, s)| s)
                .sum(),
            layers: e.blobs.len().saturating_sub(1),
            broken: e.broken,
            index_digest: e.index_digest.clone(),
            index: e.manifests.is_some(),
            manifests: e.manifests,
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.platform.cmp(&b.platform)));
    Ok(rows)
}
