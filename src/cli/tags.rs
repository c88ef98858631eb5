//! `cudaimg tags REPOSITORY [--cuda V] [--flavor F] [--cudnn] [--os OS]`: the registry's
//! tags, filtered, newest first, and one recommended with the reasons. The official
//! registry's list is asked first (a mirror's list lags it, and the recommendation and
//! `doctor`'s end-of-life fix are computed from it); the mirrors answer only when it does not.

use serde::Serialize;

use crate::error::Error;
use cudaimg_cuda::choose::{self, Filter, Recommendation, VersionFilter};
use cudaimg_cuda::{eol, tag, CudaTag, Flavor};
use cudaimg_mirrors::sources::Role;
use cudaimg_oci::progress::Silent;

use super::width::{fit_line, hanging, shorten_left, table, Column, Fit};
use super::{emit, emit_json, Ctx};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FlavorArg {
    Base,
    Runtime,
    Devel,
}

impl From<FlavorArg> for Flavor {
    fn from(f: FlavorArg) -> Self {
        match f {
            FlavorArg::Base => Flavor::Base,
            FlavorArg::Runtime => Flavor::Runtime,
            FlavorArg::Devel => Flavor::Devel,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A repository, e.g. `nvidia/cuda`, `nvcr.io/nvidia/cuda` or a mirror-prefixed one
    #[arg(value_name = "REPOSITORY")]
    repository: String,
    /// Only this CUDA version: `12`, `12.4` or `12.4.1`
    #[arg(long, value_name = "VERSION")]
    cuda: Option<String>,
    /// Only this flavor
    #[arg(long, value_enum)]
    flavor: Option<FlavorArg>,
    /// Only tags with cuDNN
    #[arg(long)]
    cudnn: bool,
    /// Only this OS, e.g. `ubuntu22.04`, `ubi9`
    #[arg(long, value_name = "OS")]
    os: Option<String>,
    /// Also list the tags that are not nvidia/cuda tags (skipped and counted otherwise)
    #[arg(long)]
    all: bool,
    /// Tags asked for per page (`?n=`); a registry may send fewer
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    page_size: u32,
}

#[derive(Debug, Serialize)]
struct Listing {
    repository: String,
    /// The source that answered.
    source: String,
    source_role: Role,
    pages: usize,
    /// Tags the registry listed.
    total: usize,
    tags: Vec<Listed>,
    /// Tags that are not nvidia/cuda tags: counted, listed under `--all`.
    skipped: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    unparsed: Option<Vec<String>>,
    recommended: Option<Recommendation>,
    eol_as_of: &'static str,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Listed {
    tag: String,
    cuda_version: String,
    flavor: Flavor,
    cudnn: cudaimg_cuda::Cudnn,
    tensorrt: bool,
    os: Option<String>,
    rc: bool,
    eol: Option<bool>,
    /// What cudaimg's tables do not know about the tag.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unknown: Vec<String>,
}

// The command end to end: list through the sources, filter, order, recommend, print both
// forms; the steps share the filtered list and its warnings.
#[allow(clippy::too_many_lines)]
pub async fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let last = args.repository.rsplit('/').next().unwrap_or_default();
    if last.contains([':', '@']) {
        return Err(Error::Usage(format!(
            "`{}` names a tag or digest: give the repository only (`nvidia/cuda`), and filter \
             with `--cuda`, `--flavor`, `--cudnn`, `--os`",
            args.repository
        )));
    }
    let filter = Filter {
        cuda: match &args.cuda {
            Some(v) => Some(VersionFilter::parse(v).ok_or_else(|| {
                Error::Usage(format!(
                    "`--cuda {v}` is not a version: write `12`, `12.4` or `12.4.1`"
                ))
            })?),
            None => None,
        },
        flavor: args.flavor.map(Flavor::from),
        cudnn: args.cudnn,
        os: match &args.os {
            Some(os) if !tag::is_os(os) => {
                return Err(Error::Usage(format!(
                    "`--os {}` is not an OS: write it as in the tags, a family and its version, \
                     e.g. `ubuntu22.04`, `ubi9`, `rockylinux9`",
                    cudaimg_oci::text::shown(os)
                )))
            }
            other => other.clone(),
        },
    };
    // An OS NVIDIA added after cudaimg's tables is still filtered on: the registry decides.
    let os_warning = filter
        .os
        .as_deref()
        .filter(|os| !tag::os_known(os))
        .map(|os| {
            format!(
                "`--os {os}` is not in cudaimg's table (as of {}); filtering on it anyway",
                eol::AS_OF
            )
        });
    let name = config.canonicalize(&args.repository)?;
    let repository = name.image.name();
    let set = ctx.session.sources(&name)?;
    let what = format!("the tag list of {repository}");
    let listed = set
        .tag_list(&name.image.repository, args.page_size, &what, &Silent)
        .await;
    let mut warnings = set.warnings();
    warnings.extend(os_warning);
    // A failure names every source tried and why: no warnings on top.
    let listed = listed?;
    warnings.extend(listed.mirror_warning(&what));
    let (list, source) = (listed.list, listed.source);
    let mut parsed = Vec::new();
    let mut unparsed = Vec::new();
    for t in &list.tags {
        match CudaTag::parse(t) {
            Ok(p) => parsed.push(p),
            Err(_) => unparsed.push(t.clone()),
        }
    }
    unparsed.sort();
    let mut matched: Vec<CudaTag> = parsed.into_iter().filter(|t| filter.matches(t)).collect();
    choose::sort(&mut matched);
    let recommended = choose::recommend(&matched, &filter);
    let listing = Listing {
        repository,
        source: source.label().to_owned(),
        source_role: source.role,
        pages: list.pages,
        total: list.tags.len(),
        tags: matched
            .iter()
            .map(|t| Listed {
                tag: t.tag.clone(),
                cuda_version: t.version.to_string(),
                flavor: t.flavor,
                cudnn: t.cudnn,
                tensorrt: t.tensorrt,
                os: t.os.clone(),
                rc: t.rc,
                eol: eol::support(t.version, false).eol,
                unknown: t.seen_in_registry(),
            })
            .collect(),
        skipped: unparsed.len(),
        unparsed: args.all.then_some(unparsed),
        recommended,
        eol_as_of: eol::AS_OF,
        warnings,
    };
    for w in &listing.warnings {
        note!("warning: {w}");
    }
    if ctx.json {
        emit_json(&listing);
    } else {
        print(ctx, &listing);
    }
    Ok(())
}

fn print(ctx: &Ctx, l: &Listing) {
    note!(
        "{}: {} from {} ({}); {} match",
        l.repository,
        super::words::counted(l.total, "tag"),
        l.source,
        super::words::counted(l.pages, "page"),
        l.tags.len()
    );
    if !l.tags.is_empty() {
        let columns = [
            Column::new("TAG", Fit::Left),
            Column::new("CUDA", Fit::Keep),
            Column::new("FLAVOR", Fit::Keep),
            Column::new("CUDNN", Fit::Keep),
            Column::new("OS", Fit::Keep),
            Column::new("EOL", Fit::Keep),
        ];
        let rows: Vec<Vec<String>> = l
            .tags
            .iter()
            .map(|t| {
                vec![
                    t.tag.clone(),
                    t.cuda_version.clone(),
                    format!("{}{}", if t.tensorrt { "tensorrt-" } else { "" }, t.flavor),
                    if t.cudnn.is_some() {
                        t.cudnn.to_string()
                    } else {
                        "-".into()
                    },
                    t.os.as_deref().unwrap_or("-").to_owned(),
                    match t.eol {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "?",
                    }
                    .to_owned(),
                ]
            })
            .collect();
        for line in table(&columns, &rows, ctx.columns) {
            emit(&line);
        }
    }
    let mut unknown: Vec<&String> = l.tags.iter().flat_map(|t| &t.unknown).collect();
    unknown.sort();
    unknown.dedup();
    for u in unknown {
        note!("note: {u}");
    }
    if let Some(u) = &l.unparsed {
        for t in u {
            // Registry data: control characters would reach the terminal.
            let tag = cudaimg_oci::text::shown(t).to_string();
            let tag = match ctx.columns {
                Some(c) => shorten_left(&tag, c.saturating_sub(26)),
                None => tag,
            };
            emit(&format!("{tag}  (not an nvidia/cuda tag)"));
        }
    } else if l.skipped > 0 {
        note!(
            "{} tag{} that {} not nvidia/cuda tags skipped (`--all` lists them)",
            l.skipped,
            if l.skipped == 1 { "" } else { "s" },
            if l.skipped == 1 { "is" } else { "are" }
        );
    }
    if let Some(r) = &l.recommended {
        for line in fit_line(
            &format!("recommended: {}:{}", l.repository, r.tag),
            ctx.columns,
        ) {
            emit(&line);
        }
        for why in &r.reasons {
            for line in hanging("  ", why, ctx.columns) {
                emit(&line);
            }
        }
    } else {
        note!("no tag matches the filters");
    }
}
