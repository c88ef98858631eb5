//! Writes a sync bundle of whole stored images, for `bench/sync.sh` until `cudaimg sync
//! --to DIR` is wired to the same code: the plan of the named images
//! (`cudaimg_sync::plan::Plan::from_sets`) and `cudaimg_sync::bundle::write`.
//!
//!     cargo run --release --example write_bundle -- --store STORE --to DIR [--part-size BYTES] NAME...
//!
//! Prints one JSON line: parts, bytes written, blob bytes carried.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;

use cudaimg_store::Store;
use cudaimg_sync::bundle::{self, WriteOptions};
use cudaimg_sync::plan::{Exclusions, Plan};

struct Quiet;
impl cudaimg_oci::progress::Reporter for Quiet {}

fn main() {
    let (mut store, mut to, mut part_size, mut names) = (None, None, None, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--store" => store = args.next().map(PathBuf::from),
            "--to" => to = args.next().map(PathBuf::from),
            "--part-size" => part_size = args.next().map(|s| s.parse::<u64>().unwrap()),
            _ => names.push(a),
        }
    }
    let store = Store::open(&store.expect("--store DIR")).unwrap();
    let sets: Vec<_> = names
        .iter()
        .map(|n| {
            store
                .image_set(n)
                .unwrap()
                .unwrap_or_else(|| panic!("{n} is not stored"))
        })
        .collect();
    let plan = Plan::from_sets(&sets, &Exclusions::default());
    let report = bundle::write(
        &store,
        &plan,
        &to.expect("--to DIR"),
        &WriteOptions {
            part_size,
            tmpdir: None,
        },
        &Quiet,
    )
    .unwrap();
    let line = serde_json::json!({
        "parts": report.parts.len(),
        "bytes_written": report.bytes_written,
        "blob_bytes": report.blob_bytes,
    });
    let _ = writeln!(std::io::stdout(), "{line}");
}
