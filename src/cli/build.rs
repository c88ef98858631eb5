//! `cudaimg build`: `PyTorch` on an `nvidia/cuda` base, checked, pinned and built.
//!
//! Each build (one, or every cell of `--matrix builds.toml`):
//! 1. is checked against the tables of [`cudaimg_build::compat`] from the base's tag alone,
//!    before any network traffic; an impossible combination is refused (exit 2) with the
//!    reason and the nearest valid ones;
//! 2. pulls the base through the mirrors (the pull path of `cudaimg pull`), which pins its
//!    digest, reads its `CUDA_VERSION` and the Pythons in its layers, and plans again;
//! 3. hands the base to the Docker Engine from the store (`DOCKER_HOST`), so the build needs
//!    no registry, and checks the engine holds it under the upstream config digest;
//! 4. runs `docker build` with the template (`dockerfiles/pytorch.Dockerfile`, compiled
//!    in): `BuildKit` (`DOCKER_BUILDKIT=1`) when the CLI can do it, the classic builder
//!    otherwise or with `--builder classic`; its output streams as progress lines.
//!    Credentials in `--pip-index-url` or `--apt-mirror` reach it only as `BuildKit` secrets
//!    (files in a private directory, removed after the build), never as build args, so no
//!    image, command line or plan holds them; the classic builder cannot mount secrets and
//!    is refused with them ([`cudaimg_build::urls`]).
//! 5. with `--push`, brings the result into the store (base layers kept as pulled, see
//!    [`cudaimg_handover::from_docker`]) and pushes it to its name's registry.
//!
//! Every cell is also checked against the GPUs it is for (`--gpu-arch`, else this host's,
//! read through `nvidia-smi`): the base's CUDA and the wheels' architectures
//! ([`cudaimg_build::arch`]). An asked architecture they cannot serve refuses the cell (exit
//! 2, naming the wheel variant and base that can); a detected one is a warning; `--dry-run`
//! prints the check.
//!
//! In a matrix, invalid cells are skipped with their reason and a failing cell does not stop
//! the rest; the summary lists every cell; the exit is 1 if any build failed.
//!
//! `--bake FILE` builds nothing: it plans every cell (pulling each base to pin its digest,
//! unless `--dry-run`) and writes the bake file with the template and an empty context
//! beside it, for `docker buildx bake` to run from any directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cudaimg_build::compat::Py;
use cudaimg_build::matrix::{self, Cell, Matrix};
use cudaimg_build::plan::{self, Base, Options, Plan};
use cudaimg_build::python::Finder;
use cudaimg_build::urls::{BuildUrl, UrlError};
use cudaimg_config::Config;
use cudaimg_cuda::arch::ComputeCap;
use cudaimg_cuda::image::ImageEnv;
use cudaimg_cuda::CudaTag;
use cudaimg_docker::DockerEngine;
use cudaimg_handover::{HandOver, LoadError, Via};
use cudaimg_oci::platform::Platform;
use cudaimg_store::Store;
use cudaimg_transfer::PullTarget;

use crate::error::{exit, Error};

mod index;
use index::read_index;

use super::{emit, emit_json, Ctx};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Builder {
    /// `BuildKit` when the docker CLI can run it, else the classic builder
    Auto,
    /// `BuildKit` (`DOCKER_BUILDKIT=1`), or fail
    Buildkit,
    /// The classic builder (`DOCKER_BUILDKIT=0`)
    Classic,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base, an nvidia/cuda image (`nvidia/cuda:12.4.1-runtime-ubuntu22.04`)
    #[arg(long, value_name = "REF", required_unless_present = "matrix")]
    base: Option<String>,
    /// torch version (`2.5.1`)
    #[arg(long, value_name = "V", required_unless_present = "matrix")]
    torch: Option<String>,
    /// Python minor version [default: the base's, else its OS's, within torch's range]
    #[arg(long, value_name = "V")]
    python: Option<String>,
    /// The wheel variant (`cu124`) [default: the newest of the base's CUDA major not newer than it]
    #[arg(long, value_name = "cuXYZ")]
    cuda_wheels: Option<String>,
    /// The result's repository (`team/torch`: the tag follows the naming scheme) or full name
    #[arg(long, value_name = "DEST")]
    tag: Option<String>,
    /// Install torch from the wheels in DIR only, no index (air-gapped)
    #[arg(long, value_name = "DIR", conflicts_with = "pip_index_url")]
    wheelhouse: Option<PathBuf>,
    /// The team's pip index [default: download.pytorch.org/whl/cuXYZ]
    #[arg(long, value_name = "URL")]
    pip_index_url: Option<String>,
    /// An apt mirror replacing the OS archive in the image (when Python comes from the OS)
    #[arg(long, value_name = "URL")]
    apt_mirror: Option<String>,
    /// More pip packages to install with torch (space-separated)
    #[arg(long, value_name = "PKGS")]
    extra_packages: Option<String>,
    /// Check and print the plan; pull nothing, build nothing
    #[arg(long)]
    dry_run: bool,
    /// The GPU architectures the image is for (`sm_90`, `9.0`; repeatable or a comma list): a
    /// cell whose base or wheels have no code for one is refused [default: the host's GPUs,
    /// where a mismatch is a warning]
    #[arg(long = "gpu-arch", value_name = "sm_XY", value_delimiter = ',')]
    gpu_arch: Vec<String>,
    /// Build every cell of a matrix file (builds.toml)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["base", "torch", "python", "cuda_wheels"])]
    matrix: Option<PathBuf>,
    /// Write the valid cells as a docker-bake file (HCL; JSON if FILE ends in .json), the
    /// template and an empty context beside it; build nothing
    #[arg(long, value_name = "FILE", conflicts_with = "push")]
    bake: Option<PathBuf>,
    /// Which builder runs the build
    #[arg(long, value_enum, default_value_t = Builder::Auto)]
    builder: Builder,
    /// `docker build --network` [default: `host` when the pip index is on loopback]
    #[arg(long, value_name = "MODE")]
    network: Option<String>,
    /// The docker CLI to run
    #[arg(long, value_name = "PATH", default_value = "docker")]
    docker: PathBuf,
    /// After the build, store the image and push it to the tag's registry (`--tag
    /// HOST[:PORT]/REPO`) through cudaimg's push path: the base's layers keep their upstream
    /// blobs and are mounted or skipped, only new layers are compressed and uploaded
    #[arg(long, conflicts_with = "dry_run")]
    push: bool,
    #[command(flatten)]
    send: super::push::SendArgs,
}

/// What happened to one cell.
#[derive(Debug, serde::Serialize)]
struct Outcome {
    cell: String,
    status: &'static str,
    image: Option<String>,
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<Plan>,
}

// The matrix loop: for each cell, check, pull the base, plan, build, and record the
// outcome, where a failing cell is reported and the loop goes on; the steps share the
// cell's state and the summary. Each step is its own function; the loop stays whole.
#[allow(clippy::too_many_lines)]
pub async fn run(ctx: &Ctx, args: Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let (cells, mut opts, matrix_mode) = if let Some(path) = &args.matrix {
        let m = Matrix::load(path).map_err(|e| Error::Usage(format!("{e}\nhint: {}", e.hint())))?;
        let opts = Options {
            tag: args.tag.clone().or(m.repository.clone()),
            extra_packages: args
                .extra_packages
                .clone()
                .unwrap_or(m.extra_packages.clone()),
            pip_index_url: pip_index(args.pip_index_url.as_ref().or(m.pip_index_url.as_ref()))?,
            apt_mirror: apt_mirror(args.apt_mirror.as_ref().or(m.apt_mirror.as_ref()))?,
            wheelhouse: args.wheelhouse.is_some(),
            ..Options::default()
        };
        (m.cells(), opts, true)
    } else {
        let cell = Cell {
            base: args.base.clone().unwrap_or_default(),
            torch: args.torch.clone().unwrap_or_default(),
            python: args.python.clone(),
            variant: args.cuda_wheels.clone(),
        };
        let opts = Options {
            tag: args.tag.clone(),
            extra_packages: args.extra_packages.clone().unwrap_or_default(),
            pip_index_url: pip_index(args.pip_index_url.as_ref())?,
            apt_mirror: apt_mirror(args.apt_mirror.as_ref())?,
            wheelhouse: args.wheelhouse.is_some(),
            ..Options::default()
        };
        (vec![cell], opts, false)
    };
    if let Some(w) = &args.wheelhouse {
        if !w.is_dir() {
            return Err(Error::Usage(format!(
                "the wheelhouse `{}` is not a directory",
                w.display()
            )));
        }
    }
    if let Some(tag) = &opts.tag {
        check_tag(tag)?;
    }
    opts.extra_packages = opts.extra_packages.trim().to_owned();
    opts.pytorch_index = std::env::var(cudaimg_static::EnvVars::CUDAIMG_PYTORCH_INDEX)
        .ok()
        .filter(|v| !v.is_empty());
    opts.index = read_index(args.wheelhouse.as_deref(), &opts).await;
    let gpus = gpu_targets(&args.gpu_arch).await?;

    let mut outcomes = Vec::new();
    let mut plans = Vec::new();
    // `--bake` writes the file for `docker buildx bake` to build: nothing is built here.
    let builder = if args.dry_run || args.bake.is_some() {
        None
    } else {
        let b = choose_builder(&args)?;
        if b == Builder::Classic {
            refuse_credentials_without_secrets(&args, &opts)?;
        }
        Some(b)
    };
    for cell in &cells {
        let label = cell.to_string();
        // 1. From the tag alone, before any network traffic.
        let (name, tag) = match base_tag(config, &cell.base) {
            Ok(x) => x,
            Err(e) if matrix_mode => {
                outcomes.push(skipped(&label, e.to_string()));
                continue;
            }
            Err(e) => return Err(e),
        };
        let guess: Vec<Py> = cell
            .python
            .as_deref()
            .and_then(Py::parse)
            .into_iter()
            .collect();
        let pre = Base {
            name: name.clone(),
            digest: None,
            cuda: tag.version,
            requires_cuda: None,
            tag: tag.clone(),
            pythons: guess,
        };
        match plan_cell(&pre, cell, &opts) {
            Err(r) if matrix_mode => {
                outcomes.push(skipped(&label, format!("{r}; {}", r.hint())));
                continue;
            }
            Err(r) => return Err(Error::Refused(r)),
            // Refused for an asked architecture before any network traffic too.
            Ok(p) => match check_gpus(&p, &gpus) {
                Err(e) if matrix_mode => {
                    outcomes.push(skipped(&label, e.to_string()));
                    continue;
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            },
        }
        // 2. The base: from the store (dry run) or pulled through the mirrors.
        // A dry run never creates or changes a store.
        let store_only = args.dry_run;
        let store = if store_only {
            match ctx.existing_store() {
                Ok(s) => Some(s),
                Err(Error::Store(cudaimg_store::StoreError::Missing(_))) => None,
                Err(e) => return Err(e),
            }
        } else {
            Some(ctx.store()?.clone())
        };
        let base = if store_only {
            let stored = match &store {
                Some(s) => stored_base(s, &name, &tag)?,
                None => None,
            };
            stored.unwrap_or(Base {
                pythons: Vec::new(),
                ..pre
            })
        } else {
            match pull_base(ctx, config, &cell.base, &name, &tag).await {
                Ok(b) => b,
                Err(e) if matrix_mode => {
                    super::report_error(&e);
                    outcomes.push(failed(&label, None, e.to_string()));
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        let mut plan = match plan_cell(&base, cell, &opts) {
            Ok(p) => p,
            Err(r) if matrix_mode => {
                outcomes.push(skipped(&label, format!("{r}; {}", r.hint())));
                continue;
            }
            Err(r) => return Err(Error::Refused(r)),
        };
        plan.gpu_arch = match check_gpus(&plan, &gpus) {
            Ok(lines) => lines,
            Err(e) if matrix_mode => {
                outcomes.push(skipped(&label, e.to_string()));
                continue;
            }
            Err(e) => return Err(e),
        };
        print_plan(
            ctx,
            &plan,
            args.dry_run && base.digest.is_none(),
            &network(&args, &opts),
        );
        plans.push(plan.clone());
        let Some(builder) = builder else {
            outcomes.push(Outcome {
                cell: label,
                status: "planned",
                image: Some(plan.image.clone()),
                reason: None,
                plan: Some(plan),
            });
            continue;
        };
        // 3 and 4.
        let Some(store) = &store else { continue };
        match build(ctx, &args, &opts, builder, store, &plan).await {
            Ok(()) => outcomes.push(Outcome {
                cell: label,
                status: "built",
                image: Some(plan.image.clone()),
                reason: None,
                plan: Some(plan),
            }),
            Err(e) if matrix_mode => {
                super::report_error(&e);
                outcomes.push(failed(&label, Some(plan.image.clone()), e.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(path) = &args.bake {
        let written = write_bake(path, &plans, args.wheelhouse.as_deref())?;
        note!(
            "wrote {} with {} target(s), and beside it {}; nothing was built: `docker buildx \
             bake -f {}` builds them",
            path.display(),
            plans.len(),
            written.join(", "),
            path.display()
        );
        if plans.iter().any(|p| !p.secrets.is_empty()) {
            note!(
                "note: the bake file reads the credentials from the environment when bake runs: \
                 export {}=THE_INDEX_URL_WITH_CREDENTIALS and {}='machine … login … password …' \
                 (never written to the file)",
                BAKE_ENV_PIP,
                BAKE_ENV_APT
            );
        }
    }
    summary(ctx, &outcomes, matrix_mode);
    let failures = outcomes.iter().filter(|o| o.status == "failed").count();
    if failures > 0 {
        return Err(Error::Failed {
            what: format!("{failures} of {} build(s) failed", outcomes.len()),
            code: exit::FAILURE,
        });
    }
    Ok(())
}

/// A GPU a build is for: asked with `--gpu-arch`, or found on this host.
struct GpuTarget {
    cap: ComputeCap,
    /// `--gpu-arch sm_70`, or `GPU 0 (Tesla V100-SXM2-16GB)`.
    what: String,
    asked: bool,
}

/// `--gpu-arch`'s architectures, else the host's GPUs (none without `nvidia-smi`).
async fn gpu_targets(asked: &[String]) -> Result<Vec<GpuTarget>, Error> {
    let mut out: Vec<GpuTarget> = Vec::new();
    for a in asked.iter().map(|a| a.trim()) {
        let cap = ComputeCap::parse(a).ok_or_else(|| {
            Error::Usage(format!(
                "`--gpu-arch {}` is not a GPU architecture\nhint: write a compute capability \
                 as `sm_90` or `9.0` (`nvidia-smi --query-gpu=compute_cap --format=csv` prints \
                 it)",
                cudaimg_oci::text::shown(a)
            ))
        })?;
        if !out.iter().any(|t| t.cap == cap) {
            out.push(GpuTarget {
                cap,
                what: format!("--gpu-arch {}", cap.sm()),
                asked: true,
            });
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    let probe = cudaimg_host::probe::probe_driver().await;
    for (i, g) in probe.gpus().iter().enumerate() {
        let Some(cap) = g.compute_cap else { continue };
        if out.iter().any(|t| t.cap == cap) {
            continue;
        }
        out.push(GpuTarget {
            cap,
            what: format!(
                "GPU {} ({}) of this host",
                g.index.unwrap_or(u32::try_from(i).unwrap_or(u32::MAX)),
                g.name
            ),
            asked: false,
        });
    }
    Ok(out)
}

/// Each GPU against the plan's base and wheels: the lines `--dry-run` prints; an asked
/// architecture they cannot serve refuses the cell (exit 2), a detected one warns.
fn check_gpus(plan: &Plan, gpus: &[GpuTarget]) -> Result<Vec<String>, Error> {
    let Some(base) = cudaimg_cuda::CudaVersion::parse(&plan.base_cuda) else {
        return Ok(Vec::new());
    };
    let mut lines = Vec::new();
    for g in gpus {
        match cudaimg_build::arch::check_cell(
            base,
            &plan.checked.torch,
            &plan.checked.variant,
            g.cap,
        ) {
            Ok(line) => lines.push(format!("{line} ({})", g.what)),
            Err(m) if g.asked => {
                return Err(Error::Usage(format!(
                    "{} cannot run on {} ({}): {}\nhint: {}",
                    plan.image,
                    g.cap.sm(),
                    g.what,
                    m.message,
                    m.hint
                )))
            }
            Err(m) => {
                note!(
                    "warning: {} will not run on {}: {}; for it: {} (`--gpu-arch` makes this \
                     a refusal)",
                    plan.image,
                    g.what,
                    m.message,
                    m.hint
                );
                lines.push(format!(
                    "{} ({}): will not run: {}",
                    g.cap.describe(),
                    g.what,
                    m.message
                ));
            }
        }
    }
    Ok(lines)
}

fn url_error(e: &UrlError) -> Error {
    Error::Usage(format!("{e}\nhint: {}", e.hint))
}

fn pip_index(input: Option<&String>) -> Result<Option<BuildUrl>, Error> {
    input
        .map(|u| BuildUrl::pip_index(u).map_err(|e| url_error(&e)))
        .transpose()
}

fn apt_mirror(input: Option<&String>) -> Result<Option<BuildUrl>, Error> {
    input
        .map(|u| BuildUrl::apt_mirror(u).map_err(|e| url_error(&e)))
        .transpose()
}

/// `--tag` (or the matrix's `repository`) must be a reference `docker build -t` takes: a
/// repository, or a repository with its tag; a digest names content, not a build's result.
fn check_tag(tag: &str) -> Result<(), Error> {
    let r = cudaimg_oci::reference::ImageRef::parse(tag)?;
    if r.digest.is_some() {
        return Err(Error::Usage(format!(
            "`--tag {}` names a digest: a build's result is named by a tag, and its digest is \
             known only once it is built\nhint: give a repository (`team/torch`) or a \
             repository and tag (`team/torch:dev`)",
            cudaimg_oci::text::shown(tag)
        )));
    }
    Ok(())
}

/// The classic builder cannot mount `BuildKit` secrets, and any other way of handing it the
/// credentials would write them into the image: refused, naming the builders that can.
fn refuse_credentials_without_secrets(args: &Args, opts: &Options) -> Result<(), Error> {
    let pip = opts
        .pip_index_url
        .as_ref()
        .filter(|u| u.has_credentials() && args.wheelhouse.is_none());
    let apt = opts.apt_mirror.as_ref().filter(|u| u.has_credentials());
    let Some((flag, url)) = pip
        .map(|u| ("--pip-index-url", u))
        .or(apt.map(|u| ("--apt-mirror", u)))
    else {
        return Ok(());
    };
    Err(Error::Usage(format!(
        "{flag} {} carries credentials, which reach a build only as BuildKit secrets, and the \
         classic builder cannot mount them (as a build arg they would be in the image's history)\n\
         hint: build with BuildKit: `--builder buildkit` with Debian's 20.10 CLI \
         (`--docker /usr/bin/docker`) or a CLI with the buildx plugin; or give the URL without \
         credentials",
        url.shown
    )))
}

fn skipped(cell: &str, reason: String) -> Outcome {
    Outcome {
        cell: cell.to_owned(),
        status: "skipped",
        image: None,
        reason: Some(reason),
        plan: None,
    }
}

fn failed(cell: &str, image: Option<String>, reason: String) -> Outcome {
    Outcome {
        cell: cell.to_owned(),
        status: "failed",
        image,
        reason: Some(reason),
        plan: None,
    }
}

fn plan_cell(
    base: &Base,
    cell: &Cell,
    opts: &Options,
) -> Result<Plan, cudaimg_build::compat::Refusal> {
    plan::plan(
        base,
        &cell.torch,
        cell.python.as_deref(),
        cell.variant.as_deref(),
        opts,
    )
}

/// The canonical name and its parsed nvidia/cuda tag.
fn base_tag(config: &Config, input: &str) -> Result<(String, CudaTag), Error> {
    let name = config.canonicalize(input)?.image;
    let Some(tag) = name.tag.clone() else {
        return Err(Error::Usage(format!(
            "the base `{input}` names no tag: cudaimg reads the CUDA version and flavor from \
             the nvidia/cuda tag, then pins the digest itself (e.g. \
             `nvidia/cuda:12.4.1-runtime-ubuntu22.04`)"
        )));
    };
    Ok((name.to_string(), CudaTag::parse(&tag)?))
}

/// The base as the store holds it (dry run), if it does.
fn stored_base(store: &Store, name: &str, tag: &CudaTag) -> Result<Option<Base>, Error> {
    let Some(image) = store.image(name, Some(&Platform::host()))? else {
        return Ok(None);
    };
    Ok(Some(describe(store, name, tag, &image)?))
}

fn describe(
    store: &Store,
    name: &str,
    tag: &CudaTag,
    image: &cudaimg_store::StoredImage,
) -> Result<Base, Error> {
    let env = ImageEnv::from_env(&image.config.config.env.clone().unwrap_or_default());
    let mut finder = Finder::default();
    for layer in &image.manifest.layers {
        let reader = store.open_blob(&layer.digest, layer.size)?;
        let gzip = layer.media_type.ends_with("gzip");
        finder.layer(reader, gzip).map_err(|e| {
            Error::Setup(format!(
                "cannot read layer {} of `{name}`: {e}",
                layer.digest
            ))
        })?;
    }
    Ok(Base {
        name: name.to_owned(),
        digest: Some(image.digest.to_string()),
        cuda: env.version().unwrap_or(tag.version),
        requires_cuda: env.requirement().and_then(|r| r.cuda()),
        tag: tag.clone(),
        pythons: finder.found(),
    })
}

async fn pull_base(
    ctx: &Ctx,
    config: &Config,
    input: &str,
    name: &str,
    tag: &CudaTag,
) -> Result<Base, Error> {
    let canonical = config.canonicalize(input)?;
    let platform = Platform::host();
    let reporter = ctx.reporter();
    let report = ctx
        .session
        .pull(
            &PullTarget {
                input,
                name: &canonical,
                pin: None,
                platform_explicit: false,
            },
            &platform,
            reporter.as_ref(),
        )
        .await;
    drop(reporter);
    let report = report?;
    for w in &report.warnings {
        note!("warning: {w}");
    }
    note!("base {} pinned at {}", report.canonical, report.digest);
    let store = ctx.store()?;
    let image = store
        .image(&report.canonical.to_string(), Some(&report.platform))?
        .ok_or_else(|| Error::NotInStore(name.to_owned()))?;
    describe(store, name, tag, &image)
}

fn print_plan(ctx: &Ctx, p: &Plan, unpinned: bool, network: &Network) {
    if ctx.json {
        return;
    }
    emit(&format!("plan {}", p.image));
    emit(&format!(
        "  base:     {}{}",
        p.base,
        p.base_digest
            .as_deref()
            .map_or_else(String::new, |d| format!("@{d}"))
    ));
    if unpinned {
        emit("  (not pulled yet: a build pulls the base, pins its digest and looks for Python in it)");
    }
    emit(&format!(
        "  torch:    {} {} (CUDA {}), {}",
        p.checked.torch, p.checked.variant, p.checked.wheels_cuda, p.checked.source
    ));
    emit(&format!(
        "  python:   {} from {}",
        p.checked.python, p.checked.python_source
    ));
    emit(&format!("  driver:   {}", p.driver.text));
    for a in &p.gpu_arch {
        emit(&format!("  gpu-arch: {a}"));
    }
    emit(&format!("  network:  {}", network.why));
    for c in &p.credentials {
        emit(&format!("  secret:   {c}"));
    }
    for (k, v) in &p.build_args {
        emit(&format!("  --build-arg {k}={v}"));
    }
    for w in &p.checked.warnings {
        note!("warning: {w}");
    }
}

/// `BuildKit` or classic, and why.
fn choose_builder(args: &Args) -> Result<Builder, Error> {
    match args.builder {
        Builder::Classic => return Ok(Builder::Classic),
        Builder::Auto | Builder::Buildkit => {}
    }
    // Docker CLIs before 23 run BuildKit themselves with DOCKER_BUILDKIT=1 (Debian's 20.10);
    // later ones need the buildx plugin for it.
    let version = Command::new(&args.docker)
        .args(["version", "--format", "{{.Client.Version}}"])
        .env_remove("DOCKER_BUILDKIT")
        .output()
        .map_err(|e| {
            Error::Setup(format!(
                "cannot run the docker CLI `{}`: {e}",
                args.docker.display()
            ))
        })?;
    let major: u32 = String::from_utf8_lossy(&version.stdout)
        .trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let buildx = major >= 23
        && Command::new(&args.docker)
            .args(["buildx", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
    if (1..23).contains(&major) || buildx {
        return Ok(Builder::Buildkit);
    }
    let why = format!(
        "the docker CLI `{}` ({}) has no BuildKit: from version 23 it needs the buildx plugin",
        args.docker.display(),
        String::from_utf8_lossy(&version.stdout).trim()
    );
    if args.builder == Builder::Buildkit {
        return Err(Error::Usage(format!(
            "{why}\nhint: install docker-buildx, or point `--docker` at a 20.10 CLI \
             (Debian's /usr/bin/docker), or use `--builder classic`"
        )));
    }
    note!("note: {why}; using the classic builder");
    Ok(Builder::Classic)
}

/// `docker build --network`, and why, as the plan prints it.
struct Network {
    mode: Option<String>,
    why: String,
}

/// Whether `url`'s host is this machine: it resolves, and every address it resolves to is
/// loopback. How the name is spelled decides nothing (`localhost.attacker.example` is a
/// remote host like any other), and a name that does not resolve is not loopback.
fn on_loopback(url: &BuildUrl) -> bool {
    use std::net::ToSocketAddrs;
    let Some((host, port)) = url.host_port() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// `--network` as given, else `host` when an index or mirror the build reaches is on this
/// machine's loopback (the build's own network could not reach it), else the engine's
/// default. A remote host never gets the host's network.
fn network(args: &Args, opts: &Options) -> Network {
    if let Some(n) = &args.network {
        return Network {
            mode: Some(n.clone()),
            why: format!("{n} (--network)"),
        };
    }
    let pip = opts
        .pip_index_url
        .as_ref()
        .filter(|_| args.wheelhouse.is_none())
        .map(|u| ("the pip index", u));
    let apt = opts.apt_mirror.as_ref().map(|u| ("the apt mirror", u));
    for (what, url) in pip.into_iter().chain(apt) {
        if on_loopback(url) {
            let host = url.host_port().map(|(h, _)| h).unwrap_or_default();
            return Network {
                mode: Some("host".to_owned()),
                why: format!("host ({what}'s host {host} resolves only to loopback)"),
            };
        }
    }
    Network {
        mode: None,
        why: "the engine's default (no index or mirror on loopback)".to_owned(),
    }
}

/// The `docker build` command of `plan`, its template, context and secret files written
/// into `work`. It is printed as run: it holds no secret, only the files' names.
fn docker_build(
    args: &Args,
    opts: &Options,
    builder: Builder,
    plan: &Plan,
    work: &WorkDir,
) -> Result<Command, Error> {
    let dockerfile = work.0.join("pytorch.Dockerfile");
    let template = match builder {
        Builder::Classic => cudaimg_build::classic_template(),
        _ => cudaimg_build::TEMPLATE.to_owned(),
    };
    fs_err::write(&dockerfile, template).map_err(|e| Error::Setup(e.to_string()))?;
    let context = if let Some(w) = &args.wheelhouse {
        w.clone()
    } else {
        let empty = work.0.join("context");
        fs_err::create_dir(&empty).map_err(|e| Error::Setup(e.to_string()))?;
        empty
    };
    let mut cmd = Command::new(&args.docker);
    cmd.arg("build")
        .arg("-f")
        .arg(&dockerfile)
        .arg("-t")
        .arg(&plan.image);
    if let Some(n) = &network(args, opts).mode {
        cmd.arg("--network").arg(n);
    }
    match builder {
        Builder::Classic => {
            cmd.env("DOCKER_BUILDKIT", "0");
        }
        _ => {
            cmd.env("DOCKER_BUILDKIT", "1").arg("--progress=plain");
        }
    }
    // The secret's content is in a file named on the command line, never on it.
    for secret in &plan.secrets {
        let file = work.0.join(secret.id);
        write_private(&file, &secret.value)?;
        cmd.arg("--secret")
            .arg(format!("id={},src={}", secret.id, file.display()));
    }
    for (k, v) in &plan.build_args {
        cmd.arg("--build-arg").arg(format!("{k}={v}"));
    }
    cmd.arg(&context);
    note!(
        "running {}",
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| cudaimg_oci::text::shown(&a.to_string_lossy()).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(cmd)
}

async fn build(
    ctx: &Ctx,
    args: &Args,
    opts: &Options,
    builder: Builder,
    store: &Store,
    plan: &Plan,
) -> Result<(), Error> {
    // 3. The base into the engine, from the store.
    let image = store
        .image(&plan.base, Some(&Platform::host()))?
        .ok_or_else(|| Error::NotInStore(plan.base.clone()))?;
    let docker = DockerEngine::from_env().map_err(LoadError::from)?;
    let (loaded, outcome) = HandOver::docker(docker.clone(), store.clone(), Via::Auto)
        .await?
        .load(&image)
        .await;
    outcome?;
    // An untagged base is known to the engine by its ID.
    let local = loaded
        .name
        .clone()
        .unwrap_or_else(|| loaded.image_id.clone());
    note!(
        "base handed to the Docker Engine at {} as {local} (image ID {})",
        loaded.engine,
        loaded.image_id
    );
    let plan = plan.clone().with_local_base(&local);

    // 4. docker build, template, context and secrets on disk, in a directory only this
    // user can read, removed when the build ends.
    let work = WorkDir::new()?;
    let cmd = docker_build(args, opts, builder, &plan, &work)?;
    note!(
        "building {} with {} on {}",
        plan.image,
        if builder == Builder::Classic {
            "the classic builder"
        } else {
            "BuildKit"
        },
        loaded.engine
    );
    let tail = run_streaming(ctx, cmd).await?;
    drop(work);
    if let Some(code) = tail.0 {
        return Err(Error::Failed {
            what: format!(
                "docker build of {} failed (exit {code}); its last lines:\n{}",
                plan.image,
                tail.1.join("\n")
            ),
            code: exit::FAILURE,
        });
    }
    let id = docker
        .image_id(&plan.image)
        .await
        .map_err(LoadError::from)?;
    if !ctx.json {
        emit(&format!(
            "built {} (image ID {})",
            plan.image,
            id.unwrap_or_else(|| "unknown".into())
        ));
    }
    if args.push {
        push(ctx, args, &docker, store, &image, &plan.image).await?;
    }
    Ok(())
}

/// `--push`: the built image from the engine into the store (base layers as upstream
/// compressed them, see [`cudaimg_handover::from_docker`]), then pushed to its own name's
/// registry, base layers mounted from the base's repository there when it holds them.
async fn push(
    ctx: &Ctx,
    args: &Args,
    docker: &DockerEngine,
    store: &Store,
    base: &cudaimg_store::StoredImage,
    image: &str,
) -> Result<(), Error> {
    let config = ctx.config()?;
    let canonical = config.canonicalize(image)?.image;
    let name = canonical.to_string();
    let from_engine = |e: cudaimg_handover::from_docker::FromEngineError| {
        use cudaimg_handover::from_docker::FromEngineError as E;
        match e {
            E::Store(e) => Error::Store(e),
            E::Docker(e) => LoadError::from(e).into(),
            e => {
                let hint = e
                    .hint()
                    .map_or_else(String::new, |h| format!("\nhint: {h}"));
                Error::Failed {
                    what: format!("{e}{hint}"),
                    code: exit::FAILURE,
                }
            }
        }
    };
    let built = cudaimg_handover::from_docker::import_built(docker, store, image, base, &name)
        .await
        .map_err(from_engine)?;
    note!(
        "stored {name} as {}: {} base layer(s) kept as pulled, {} new layer(s) compressed",
        built.digest,
        built.reused.len(),
        built.compressed.len()
    );
    let dest = super::push::destination(config, &name, ctx.session.http()?)?;
    let mut options = args.send.options();
    // The base's repository at the destination (`nvidia/cuda`), where a team keeps its
    // bases: its layers mount from there instead of uploading.
    if let Ok(base_ref) = cudaimg_oci::reference::ImageRef::parse(&base.name) {
        if !options.mount_from.contains(&base_ref.repository) {
            options.mount_from.push(base_ref.repository);
        }
    }
    let started = std::time::Instant::now();
    let reporter: std::sync::Arc<dyn cudaimg_oci::progress::Reporter> =
        std::sync::Arc::from(ctx.reporter());
    let report =
        cudaimg_transfer::push(store, &name, None, &dest, &options, reporter.clone()).await;
    drop(reporter);
    super::push::print(ctx, &report?, started.elapsed().as_secs_f64());
    Ok(())
}

/// The build's scratch directory (template, empty context, secret files): mode 0700, and
/// removed on drop, so no secret file outlives the build, whatever way it ends.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<WorkDir, Error> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "cudaimg-build-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs_err::create_dir(&dir).map_err(|e| Error::Setup(e.to_string()))?;
        let work = WorkDir(dir);
        fs_err::set_permissions(&work.0, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::Setup(e.to_string()))?;
        Ok(work)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs_err::remove_dir_all(&self.0);
    }
}

/// A file only this user can read (a secret's content for `docker build --secret`).
fn write_private(path: &Path, content: &str) -> Result<(), Error> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    use std::io::Write;
    let mut f = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Setup(e.to_string()))?;
    f.write_all(content.as_bytes())
        .map_err(|e| Error::Setup(e.to_string()))
}

/// Runs docker, each output line a progress line on stderr (unless `-q`); returns the exit
/// code if it failed, and the last lines.
async fn run_streaming(ctx: &Ctx, mut cmd: Command) -> Result<(Option<i32>, Vec<String>), Error> {
    let quiet = matches!(ctx.progress, super::progress::Mode::Quiet);
    let what = cmd.get_program().to_string_lossy().into_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Setup(format!("cannot run {what}: {e}")))?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            }));
        }
        drop(tx);
        let mut tail = std::collections::VecDeque::new();
        for line in rx {
            if !quiet {
                note!("  | {}", cudaimg_oci::text::shown(&line));
            }
            tail.push_back(line);
            if tail.len() > 25 {
                tail.pop_front();
            }
        }
        for r in readers {
            let _ = r.join();
        }
        let status = child
            .wait()
            .map_err(|e| Error::Setup(format!("{what}: {e}")))?;
        Ok((
            (!status.success()).then(|| status.code().unwrap_or(-1)),
            tail.into_iter().collect(),
        ))
    })
    .await
    .map_err(|e| Error::Setup(e.to_string()))?
}

/// The environment variables a bake file reads its secrets from (never their values).
const BAKE_ENV_PIP: &str = "CUDAIMG_PIP_INDEX_URL";
const BAKE_ENV_APT: &str = "CUDAIMG_APT_AUTH";

/// `--bake FILE`: the bake file, and beside it what it needs (the template, an empty
/// context unless `--wheelhouse`), so it works outside the source checkout. `docker buildx
/// bake` resolves a target's paths against the directory it runs in, not the file's, so
/// the file names them under a variable, `CUDAIMG_BAKE_DIR`, whose default is the file's
/// directory: bake runs from anywhere, and a moved directory sets the variable. Returns
/// what was written beside the file.
fn write_bake(
    path: &Path,
    plans: &[Plan],
    wheelhouse: Option<&Path>,
) -> Result<Vec<String>, Error> {
    let setup = |e: std::io::Error| Error::Setup(e.to_string());
    let json = path.extension().is_some_and(|e| e == "json");
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs_err::create_dir_all(parent).map_err(setup)?;
    let dir = fs_err::canonicalize(parent).map_err(setup)?;
    let dir_text = dir.to_str().ok_or_else(|| {
        Error::Usage(format!(
            "the bake file's directory `{}` is not UTF-8, which a bake file cannot name",
            dir.display()
        ))
    })?;
    let mut written = Vec::new();
    let template = dir.join(matrix::BAKE_TEMPLATE);
    write_atomic(&template, cudaimg_build::TEMPLATE)?;
    written.push(matrix::BAKE_TEMPLATE.to_owned());
    let context = if let Some(w) = wheelhouse {
        let w = fs_err::canonicalize(w).map_err(setup)?;
        matrix::BakeContext::Absolute(w.display().to_string())
    } else {
        fs_err::create_dir_all(dir.join(matrix::BAKE_CONTEXT)).map_err(setup)?;
        written.push(format!("{}/ (empty)", matrix::BAKE_CONTEXT));
        matrix::BakeContext::BesideFile
    };
    let text = matrix::bake(
        plans,
        &matrix::BakeLayout {
            dir: dir_text,
            context,
            pip_env: BAKE_ENV_PIP,
            apt_env: BAKE_ENV_APT,
        },
        json,
    );
    write_atomic(path, &text)?;
    Ok(written)
}

fn write_atomic(path: &Path, text: &str) -> Result<(), Error> {
    let partial = path.with_extension("partial");
    fs_err::write(&partial, text).map_err(|e| Error::Setup(e.to_string()))?;
    fs_err::rename(&partial, path).map_err(|e| Error::Setup(e.to_string()))?;
    Ok(())
}

fn summary(ctx: &Ctx, outcomes: &[Outcome], matrix_mode: bool) {
    if ctx.json {
        for o in outcomes {
            emit_json(o);
        }
        return;
    }
    if !matrix_mode {
        return;
    }
    emit("summary:");
    for o in outcomes {
        let mut line = format!("  {:8} {}", o.status, o.cell);
        if let Some(i) = &o.image {
            line.push_str(&format!(" -> {i}"));
        }
        if let Some(r) = &o.reason {
            line.push_str(&format!(": {r}"));
        }
        emit(&line);
    }
    let count = |s: &str| outcomes.iter().filter(|o| o.status == s).count();
    emit(&format!(
        "  {} built, {} planned, {} skipped, {} failed",
        count("built"),
        count("planned"),
        count("skipped"),
        count("failed")
    ));
}
