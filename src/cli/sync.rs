//! `cudaimg sync SPEC --plan [--have have.json] [--since OLD_BUNDLE]`: what a bundle for an
//! air-gapped site would carry (the selection fetched into the store, then its plan), and
//! `cudaimg inventory`: what the far side already holds, for `--have`.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Error;
use cudaimg_cuda::CudaTag;
use cudaimg_registry::RegistryClient;
use cudaimg_sync::inventory::Inventory;
use cudaimg_sync::plan::{AssumedFrom, Plan};
use cudaimg_sync::select::EntryReport;

use super::output::{FinishError, Output, OutputError};
use super::{emit, emit_json, human_bytes, Ctx};

#[derive(Debug, clap::Args)]
// What to do with the selection: one of these at least, each named when none is given.
#[command(group(clap::ArgGroup::new("action").required(true).multiple(true).args(["plan", "to"])))]
pub struct Args {
    /// The sync spec: `[[images]]` entries of references, CUDA selectors, or tag patterns
    #[arg(value_name = "SPEC")]
    spec: PathBuf,
    /// Print what would be carried (images, digests, platforms, blobs, bytes), and what the
    /// far side is assumed to hold
    #[arg(long)]
    plan: bool,
    /// Write the bundle into DIR: tar parts of whole blobs, each verifiable and importable
    /// alone, and `bundle.json` naming every part, image and blob (reproducible: the same
    /// selection gives the same bytes)
    #[arg(long, value_name = "DIR")]
    to: Option<PathBuf>,
    /// The largest part file (`4G`, `700M`); a blob larger than that travels in pieces, each
    /// with its own sha256 [default: one part]
    #[arg(long, value_name = "SIZE", value_parser = super::push::parse_size, requires = "to")]
    part_size: Option<u64>,
    /// Where parts are written before they are complete [default: the bundle directory]
    #[arg(long, value_name = "DIR", requires = "to")]
    tmpdir: Option<PathBuf>,
    /// Leave out the blobs an inventory of the far side lists (`cudaimg inventory -o FILE`
    /// there); may be given more than once
    #[arg(long, value_name = "FILE")]
    have: Vec<PathBuf>,
    /// Leave out the blobs an earlier bundle carried or assumed (its directory); may be given
    /// more than once
    #[arg(long, value_name = "DIR")]
    since: Vec<PathBuf>,
    /// Go on when an entry selects no tag (a warning, not an error)
    #[arg(long)]
    allow_empty: bool,
}

#[derive(Debug, clap::Args)]
pub struct InventoryArgs {
    /// List a registry's repositories (under PREFIX, when given), tags and blobs, through
    /// the registry API with docker's credentials; without it, the store (`--store`)
    #[arg(long, value_name = "HOST[/PREFIX]")]
    registry: Option<String>,
    /// Where to write the inventory (`-`: stdout)
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

#[derive(Debug, Serialize)]
struct PlanOutput<'a> {
    spec: String,
    entries: &'a [EntryReport],
    images: Vec<ImageLine<'a>>,
    /// Blobs carried (manifests included), each once.
    blobs: usize,
    bytes: u64,
    assumed_blobs: usize,
    assumed_bytes: u64,
    plan: &'a Plan,
    warnings: &'a [String],
    /// What cudaimg's tables lack about the CUDA tags selected (a newer release, a new OS
    /// family), reported as seen in the registry's tag list: `explain` calls them unknown.
    seen_in_registry: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ImageLine<'a> {
    name: &'a str,
    digest: String,
    platforms: &'a [String],
    /// When only some platforms are carried: upstream's index, and what stands in for it
    /// under the tag (`digest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<&'a cudaimg_sync::plan::Upstream>,
    /// Blobs the image needs, manifests included.
    blobs: usize,
    /// Of those, the ones this bundle carries, and their bytes.
    carried: usize,
    carried_bytes: u64,
}

impl Args {
    fn selecting(&self) -> cudaimg_sync::select::Selecting {
        cudaimg_sync::select::Selecting {
            // A plan alone reads manifests only: no layer is downloaded to print it.
            manifests_only: self.to.is_none(),
            allow_empty: self.allow_empty,
        }
    }
}

pub async fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let reporter = ctx.reporter();
    let prepared = cudaimg_sync::prepare(
        &ctx.session,
        &args.spec,
        &args.have,
        &args.since,
        args.selecting(),
        reporter.as_ref(),
    )
    .await;
    drop(reporter);
    let prepared = prepared?;
    let plan = prepared.plan();
    let warnings = &prepared.selection.warnings;
    let seen_in_registry = tell(warnings, &prepared.selection.entries);
    let carried: std::collections::BTreeMap<_, _> =
        plan.blobs.iter().map(|b| (&b.digest, b.size)).collect();
    let images: Vec<ImageLine> = plan
        .images
        .iter()
        .map(|i| {
            let mine: Vec<u64> = i
                .blobs
                .iter()
                .filter_map(|d| carried.get(d).copied())
                .collect();
            ImageLine {
                name: &i.name,
                digest: i.digest.to_string(),
                platforms: &i.platforms,
                upstream: i.upstream.as_ref(),
                blobs: i.blobs.len(),
                carried: mine.len(),
                carried_bytes: mine.iter().sum(),
            }
        })
        .collect();
    let out = PlanOutput {
        seen_in_registry,
        spec: args.spec.display().to_string(),
        entries: &prepared.selection.entries,
        images,
        blobs: plan.blobs.len(),
        bytes: plan.carried_bytes(),
        assumed_blobs: plan.assumed.len(),
        assumed_bytes: plan.assumed_bytes(),
        plan: &plan,
        warnings,
    };
    let Some(dir) = &args.to else {
        if ctx.json {
            emit_json(&out);
        } else {
            print(&out);
        }
        return Ok(());
    };
    if !ctx.json {
        print(&out);
    }
    let reporter = ctx.reporter();
    let written = cudaimg_sync::bundle::write(
        ctx.store()?,
        &plan,
        dir,
        &cudaimg_sync::bundle::WriteOptions {
            part_size: args.part_size,
            tmpdir: args.tmpdir.clone(),
        },
        reporter.as_ref(),
    );
    drop(reporter);
    let written = written?;
    if ctx.json {
        emit_json(&serde_json::json!({
            "plan": out,
            "bundle": {
                "dir": written.dir,
                "parts": written.parts,
                "bytes_written": written.bytes_written,
                "blob_bytes": written.blob_bytes,
            },
        }));
    } else {
        emit(&format!(
            "wrote {}: {} part{}, {} ({} bytes with bundle.json); carry the directory \
             across and run `cudaimg import {} --to HOST[/PREFIX]` there",
            written.dir.display(),
            written.parts.len(),
            if written.parts.len() == 1 { "" } else { "s" },
            human_bytes(written.bytes_written),
            written.bytes_written,
            written.dir.display(),
        ));
    }
    Ok(())
}

/// Notes the selection's warnings and what the tables lack about the tags it selected;
/// returns the latter for `--json`.
fn tell(warnings: &[String], entries: &[EntryReport]) -> Vec<String> {
    for w in warnings {
        note!("warning: {w}");
    }
    let seen = seen_in_registry(entries);
    for s in &seen {
        note!("{s}");
    }
    seen
}

/// The facts the tables lack about the CUDA tags the entries selected from tag lists, each
/// once, in the order first met.
fn seen_in_registry(entries: &[EntryReport]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let tags = entries
        .iter()
        .filter(|e| {
            e.repository
                .as_deref()
                .is_some_and(|r| r.ends_with("/cuda"))
        })
        .flat_map(|e| &e.selected)
        .filter_map(|r| r.rsplit_once(':').map(|(_, tag)| tag))
        .filter_map(|tag| CudaTag::parse(tag).ok());
    for fact in tags.flat_map(|t| t.seen_in_registry()) {
        if !out.contains(&fact) {
            out.push(fact);
        }
    }
    out
}

fn print(o: &PlanOutput) {
    for e in o.entries {
        if let (Some(repo), Some(source)) = (&e.repository, &e.source) {
            note!(
                "{}:{}: {repo}: {} of {} tags from {source}",
                o.spec,
                e.line,
                e.selected.len(),
                e.tags_listed
            );
        }
    }
    let width = o
        .images
        .iter()
        .map(|i| i.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    emit(&format!(
        "{:width$}  {:71}  {:5}  {:>10}  PLATFORMS",
        "IMAGE", "DIGEST", "BLOBS", "CARRIED"
    ));
    for i in &o.images {
        emit(&format!(
            "{:width$}  {:71}  {:5}  {:>10}  {}",
            i.name,
            i.digest,
            i.blobs,
            human_bytes(i.carried_bytes),
            if i.platforms.is_empty() {
                "-".to_owned()
            } else {
                i.platforms.join(",")
            }
        ));
        if let Some(u) = i.upstream {
            emit(&format!(
                "  upstream's index {} is kept beside it; the tag is carried as {} (a registry \
                 refuses an index naming manifests it lacks)",
                u.digest, u.carried_as
            ));
        }
    }
    emit(&format!(
        "carry: {} image{}, {} blob{}, {} ({} bytes; a blob shared by several images counted once)",
        o.images.len(),
        if o.images.len() == 1 { "" } else { "s" },
        o.blobs,
        if o.blobs == 1 { "" } else { "s" },
        human_bytes(o.bytes),
        o.bytes
    ));
    if o.plan.assumed.is_empty() {
        emit("assumed on the far side: nothing (no --have, no --since)");
        return;
    }
    emit(&format!(
        "assumed on the far side: {} blob{}, {} ({} bytes), not carried:",
        o.assumed_blobs,
        if o.assumed_blobs == 1 { "" } else { "s" },
        human_bytes(o.assumed_bytes),
        o.assumed_bytes
    ));
    for (at, from) in o.plan.assumed_from.iter().enumerate() {
        let (n, bytes) = o
            .plan
            .assumed
            .iter()
            .filter(|a| a.from == at)
            .fold((0, 0), |(n, b), a| (n + 1, b + a.size));
        let what = match from {
            AssumedFrom::Inventory { sha256, of } => {
                format!("the inventory of {of} (sha256 {sha256})")
            }
            AssumedFrom::Bundle { sha256, name } => {
                format!("the bundle {name} (bundle.json sha256 {sha256})")
            }
        };
        emit(&format!(
            "  {n} blob{} ({}) from {what}",
            if n == 1 { "" } else { "s" },
            human_bytes(bytes)
        ));
    }
}

pub async fn inventory(ctx: &Ctx, args: &InventoryArgs) -> Result<(), Error> {
    let inv = match &args.registry {
        None => {
            let store = ctx.existing_store()?;
            Inventory::of_store(&store)?
        }
        Some(target) => {
            let (host, prefix) = match target.split_once('/') {
                Some((h, p)) => (h, Some(p.trim_matches('/')).filter(|p| !p.is_empty())),
                None => (target.as_str(), None),
            };
            let host = cudaimg_oci::reference::registry_host(host).map_err(|why| {
                Error::Usage(format!(
                    "`--registry {}`: `{}` is not a registry host ({why}); write \
                     `HOST[:PORT][/PREFIX]`, e.g. `registry.local:5000/mirror`",
                    cudaimg_oci::text::shown(target),
                    cudaimg_oci::text::shown(host)
                ))
            })?;
            let endpoint = ctx.config()?.registry(&host).endpoint;
            let http = ctx.session.http()?;
            let client = RegistryClient::new(&endpoint.url, endpoint.insecure, http);
            let of = match prefix {
                Some(p) => format!("registry {host}/{p}"),
                None => format!("registry {host}"),
            };
            Inventory::of_registry(&client, prefix, of)
                .await
                .map_err(|source| Error::Inventory {
                    target: target.clone(),
                    source,
                })?
        }
    };
    let bytes = inv.to_bytes();
    // `-` writes to stdout through the same output (a closed pipe is handled there).
    let mut out = Output::create(&args.output, "have.json")?;
    let written = std::io::Write::write_all(&mut out, &bytes);
    out.finish(written).map_err(|e| match e {
        FinishError::Output(e) => Error::Output(e),
        FinishError::Producer(source) => Error::Output(OutputError::Io {
            path: args.output.clone(),
            source,
        }),
    })?;
    note!(
        "{}: {} blobs, {} manifests of {}",
        args.output.display(),
        inv.blobs.len(),
        inv.manifests.len(),
        inv.of
    );
    Ok(())
}
