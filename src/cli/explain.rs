//! `cudaimg explain TAG_OR_REF`: what an `nvidia/cuda` tag means (version, flavor, cuDNN,
//! OS, contents), the driver it needs, and whether it is past end of life. Offline: the
//! store is read (never created) when it holds the image, for the image's own word.

use serde::Serialize;

use crate::error::Error;
use cudaimg_config::Config;
use cudaimg_cuda::driver::{self, minor_compat_driver};
use cudaimg_cuda::image::ImageEnv;
use cudaimg_cuda::{eol, tag, CudaTag};
use cudaimg_oci::reference::ImageRef;
use cudaimg_store::StoreError;

use super::{emit, emit_json, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A tag (`12.4.1-cudnn-runtime-ubuntu22.04`) or a reference (`nvidia/cuda:TAG`,
    /// `docker.io/nvidia/cuda:TAG`, a mirror-prefixed one)
    #[arg(value_name = "TAG_OR_REF", required_unless_present = "sources")]
    input: Option<String>,
    /// Print each compiled table's date and sources (the CUDA tables and the torch table),
    /// and what wins over them
    #[arg(long, conflicts_with = "input")]
    sources: bool,
}

/// One compiled table: its date and sources.
#[derive(Debug, Serialize)]
struct TableSources {
    table: &'static str,
    file: &'static str,
    date: String,
    sources: std::collections::BTreeMap<String, String>,
    overridden_by: &'static str,
}

fn sources(ctx: &Ctx) {
    let cuda = cudaimg_cuda::data::tables();
    let torch = cudaimg_build::table::table();
    let arch = cudaimg_build::arch::table();
    let tables = [
        TableSources {
            table: "CUDA: minimum drivers, newest patch of each minor, OS families",
            file: "crates/cudaimg-cuda/data/cuda.toml",
            date: cuda.date.clone(),
            sources: cuda.sources.clone(),
            overridden_by: "a stored image's CUDA_VERSION and NVIDIA_REQUIRE_CUDA; the \
                            registry's tag list (`tags`, `sync`)",
        },
        TableSources {
            table: "torch: CUDA wheel variants and Python per torch minor",
            file: "crates/cudaimg-build/data/torch.toml",
            date: torch.date.clone(),
            sources: torch.sources.clone(),
            overridden_by: "the package index `build` installs from (--pip-index-url, \
                            --wheelhouse, or download.pytorch.org/whl/torch/)",
        },
        TableSources {
            table: "GPU architectures: the compute capabilities each torch wheel variant has \
                    kernels for (the toolkits' are the `arch_*` sources of the CUDA table)",
            file: "crates/cudaimg-build/data/wheel-arch.toml",
            date: arch.date.clone(),
            sources: arch.sources.clone(),
            overridden_by: "nothing yet: wheels do not list their architectures where cudaimg \
                            reads them; a refresh is a change of this file",
        },
    ];
    for t in &tables {
        if ctx.json {
            emit_json(t);
            continue;
        }
        emit(&format!("{} ({}), dated {}", t.table, t.file, t.date));
        for (k, v) in &t.sources {
            emit(&format!("  {k}: {v}"));
        }
        emit(&format!("  wins over it: {}", t.overridden_by));
    }
}

/// A tag and, when a reference was given (or implied), the canonical name it stands for.
pub(crate) struct Subject {
    pub tag: CudaTag,
    /// `docker.io/nvidia/cuda:TAG` for a bare tag.
    pub name: String,
}

/// Reads a bare tag or a reference to a CUDA image. A bare tag (no `/`, `:` or `@`) is
/// taken as `docker.io/nvidia/cuda:TAG`; a reference must name a `…/cuda` repository
/// (NVIDIA's, a mirror's, or a private copy) and a tag.
pub(crate) fn subject(config: &Config, input: &str) -> Result<Subject, Error> {
    if !input.contains(['/', ':', '@']) {
        let tag = CudaTag::parse(input)?;
        return Ok(Subject {
            name: format!("docker.io/nvidia/cuda:{input}"),
            tag,
        });
    }
    let image: ImageRef = config.canonicalize(input)?.image;
    if image.repository.rsplit('/').next() != Some("cuda") {
        return Err(Error::Usage(format!(
            "`{input}` names the repository `{}`: cudaimg explains nvidia/cuda tags only",
            image.repository
        )));
    }
    // `host:port/name` has a colon but no tag: look at the last path segment only.
    let has_tag = input
        .rsplit('/')
        .next()
        .is_some_and(|last| last.split('@').next().unwrap_or_default().contains(':'));
    let Some(tag) = image.tag.clone().filter(|_| has_tag) else {
        return Err(Error::Usage(format!(
            "`{input}` has no tag: the tag is what says which CUDA image it is (`nvidia/cuda:12.4.1-runtime-ubuntu22.04`)"
        )));
    };
    let tag = CudaTag::parse(&tag)?;
    Ok(Subject {
        tag,
        name: image.without_digest().to_string(),
    })
}

#[derive(Debug, Serialize)]
pub(crate) struct Explanation {
    pub tag: String,
    pub reference: String,
    pub cuda_version: String,
    pub flavor: cudaimg_cuda::Flavor,
    pub cudnn: cudaimg_cuda::Cudnn,
    pub cudnn_major: Option<u8>,
    pub tensorrt: bool,
    pub os: Option<String>,
    pub os_name: Option<String>,
    pub rc: bool,
    /// What cudaimg's tables do not know about the tag (also among `notes`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
    pub contains: Vec<String>,
    pub nvcc: bool,
    /// The CUDA minor the driver must support: the stored image's `NVIDIA_REQUIRE_CUDA`
    /// (`cuda>=X.Y`) when the store holds the image, else the tag's.
    pub driver_cuda: String,
    /// Where `driver_cuda` comes from: `image` or `tag`.
    pub driver_cuda_from: &'static str,
    /// The driver for full compatibility with `driver_cuda`.
    pub min_driver: Option<String>,
    /// The oldest driver that runs it with minor-version compatibility (CUDA 11 and later).
    pub minor_compat_driver: Option<String>,
    pub driver_source: String,
    /// The stored image's driver-branch alternatives (forward compatibility on the brands
    /// they name), as its `NVIDIA_REQUIRE_CUDA` writes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub driver_branches: Vec<String>,
    pub eol: Option<bool>,
    pub eol_reasons: Vec<String>,
    pub eol_as_of: &'static str,
    pub eol_source: &'static str,
    /// The stored image's own facts, when the store holds it.
    pub image: Option<StoredFacts>,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct StoredFacts {
    pub name: String,
    pub digest: String,
    pub platform: String,
    #[serde(flatten)]
    pub env: ImageEnv,
}

/// Everything explain knows about `s`; `stored` is the image's entry in the store, if any.
pub(crate) fn explain(s: &Subject, stored: Option<StoredFacts>) -> Explanation {
    let t = &s.tag;
    let v = t.version;
    let image_eol = stored.as_ref().is_some_and(|i| i.env.end_of_life);
    let support = eol::support(v, image_eol);
    let mut notes = t.notes();
    if let Some(i) = &stored {
        if let Some(cv) = i.env.cuda_version.as_deref() {
            if cv != v.to_string() && !cv.starts_with(&format!("{v}.")) {
                notes.push(format!(
                    "the stored image says CUDA_VERSION={cv}, not the tag's {v}"
                ));
            }
        } else {
            notes.push(
                "the stored image has no CUDA_VERSION: it may not be an NVIDIA CUDA image".into(),
            );
        }
    }
    // The image's own requirement is what the container runtime checks: it beats the tag.
    let requirement = stored.as_ref().and_then(|i| i.env.requirement());
    let (need, need_from) = match requirement.as_ref().and_then(driver::Requirement::cuda) {
        Some(c) => (c.minor_only(), "image"),
        None => (v.minor_only(), "tag"),
    };
    if need_from == "image" && need != v.minor_only() {
        notes.push(format!(
            "the stored image's NVIDIA_REQUIRE_CUDA asks the driver for CUDA {need}, not the \
             tag's {}: the driver minimum follows the image",
            v.minor_only()
        ));
    }
    let min = driver::min_driver(need);
    let driver_source = match (need_from, &min) {
        ("image", Some(_)) => format!(
            "the stored image's NVIDIA_REQUIRE_CUDA (cuda>={need}), with the driver for \
             CUDA {need} from: {}",
            driver::SOURCE
        ),
        ("image", None) => format!(
            "the stored image's NVIDIA_REQUIRE_CUDA (cuda>={need}): a driver whose CUDA \
             version (nvidia-smi's `CUDA Version`) is {need} or newer"
        ),
        _ => driver::SOURCE.to_owned(),
    };
    if min.is_none() {
        notes.push(if need_from == "image" {
            format!(
                "the stored image needs a driver that supports CUDA {need} (nvidia-smi shows \
                 `CUDA Version: {need}` or newer); which driver version that is, the driver \
                 table does not say (newest known: {})",
                driver::newest_known()
            )
        } else {
            format!(
                "CUDA {need} is not in the driver table (newest known: {}): the minimum driver \
                 is unknown until the image is pulled (its NVIDIA_REQUIRE_CUDA says)",
                driver::newest_known()
            )
        });
    }
    Explanation {
        tag: t.tag.clone(),
        reference: s.name.clone(),
        cuda_version: v.to_string(),
        flavor: t.flavor,
        cudnn: t.cudnn,
        cudnn_major: t.cudnn.major(),
        tensorrt: t.tensorrt,
        os: t.os.clone(),
        os_name: t.os.as_deref().and_then(tag::os_name),
        rc: t.rc,
        unknown: t.unknown.clone(),
        contains: t.contents(),
        nvcc: t.has_nvcc(),
        driver_cuda: need.to_string(),
        driver_cuda_from: need_from,
        min_driver: min.map(|d| d.to_string()),
        minor_compat_driver: minor_compat_driver(need).map(|d| d.to_string()),
        driver_source,
        driver_branches: requirement
            .as_ref()
            .map(driver::Requirement::branch_alternatives)
            .unwrap_or_default(),
        eol: support.eol,
        eol_reasons: support.reasons,
        eol_as_of: support.as_of,
        eol_source: eol::SOURCE,
        image: stored,
        notes,
    }
}

/// The stored image named `name`, if the store exists and holds it. Only reads.
pub(crate) fn stored_facts(ctx: &Ctx, name: &str) -> Result<Option<StoredFacts>, Error> {
    let store = match ctx.existing_store() {
        Ok(s) => s,
        Err(Error::Store(StoreError::Missing(_))) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(image) = store.image(name, None)? else {
        return Ok(None);
    };
    Ok(Some(StoredFacts {
        name: image.name.clone(),
        digest: image
            .index_digest
            .as_ref()
            .unwrap_or(&image.digest)
            .to_string(),
        platform: image.platform().to_string(),
        env: ImageEnv::from_env(&image.config.config.env.clone().unwrap_or_default()),
    }))
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let Some(input) = args.input.as_deref().filter(|_| !args.sources) else {
        sources(ctx);
        return Ok(());
    };
    let config = ctx.config()?;
    let subject = subject(config, input)?;
    let stored = stored_facts(ctx, &subject.name)?;
    let e = explain(&subject, stored);
    if ctx.json {
        emit_json(&e);
    } else {
        print(&e, ctx.columns);
    }
    Ok(())
}

/// The human form, each line fitted to `columns` (long notes wrap under their label).
fn print(e: &Explanation, columns: Option<usize>) {
    let emit = |line: &str| {
        for l in super::width::fit_line(line, columns) {
            emit(&l);
        }
    };
    emit(&e.reference);
    emit(&format!("  CUDA:        {}", e.cuda_version));
    emit(&format!(
        "  flavor:      {}{}",
        if e.tensorrt { "tensorrt-" } else { "" },
        e.flavor
    ));
    emit(&format!(
        "  cuDNN:       {}",
        match e.cudnn_major {
            Some(n) => format!("cuDNN {n} (`{}`)", e.cudnn),
            None => "none".into(),
        }
    ));
    emit(&format!(
        "  OS:          {}",
        match (&e.os, &e.os_name) {
            (Some(os), Some(name)) => format!("{os} ({name})"),
            (Some(os), None) => os.clone(),
            _ => "not in the tag".into(),
        }
    ));
    for (i, c) in e.contains.iter().enumerate() {
        emit(&format!(
            "  {}{c}",
            if i == 0 {
                "contains:    "
            } else {
                "             "
            }
        ));
    }
    let minor = &e.driver_cuda;
    let from = if e.driver_cuda_from == "image" {
        ", the image's NVIDIA_REQUIRE_CUDA"
    } else {
        ""
    };
    match &e.min_driver {
        Some(d) => emit(&format!(
            "  min driver:  {d} (full compatibility with CUDA {minor}{from})"
        )),
        None if e.driver_cuda_from == "image" => emit(&format!(
            "  min driver:  one for CUDA {minor} (the image's NVIDIA_REQUIRE_CUDA; no row in the \
             driver table)"
        )),
        None => emit("  min driver:  unknown (not in the table)"),
    }
    if let Some(m) = e
        .minor_compat_driver
        .as_ref()
        .filter(|m| Some(*m) != e.min_driver.as_ref())
    {
        emit(&format!(
            "               {m} with minor-version compatibility (no PTX JIT of newer code)"
        ));
    }
    for b in &e.driver_branches {
        emit(&format!("               or {b} (forward compatibility)"));
    }
    let eol = match e.eol {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    emit(&format!("  end of life: {eol} (as of {})", e.eol_as_of));
    for r in &e.eol_reasons {
        emit(&format!("               {r}"));
    }
    if let Some(i) = &e.image {
        emit(&format!("  stored:      {} ({})", i.digest, i.platform));
        if let Some(r) = &i.env.require_cuda {
            emit(&format!("               NVIDIA_REQUIRE_CUDA={r}"));
        }
    }
    for n in &e.notes {
        emit(&format!("  note: {n}"));
    }
}
