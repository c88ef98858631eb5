//! `cudaimg run-config REF --scenario quick|workdir|compose [--gpus G]`: the `docker run`
//! line or `docker-compose.yml` for a stored image, pinned by digest (see
//! [`cudaimg_host::run_config`]).

use serde::Serialize;

use crate::error::Error;
use cudaimg_cuda::image::ImageEnv;
use cudaimg_cuda::{CudaTag, Flavor};
use cudaimg_host::run_config::{self, Gpus, Scenario, Spec};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::reference::ImageRef;

use super::{emit, emit_json, Ctx};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ScenarioArg {
    /// `docker run --rm -it --gpus all IMAGE nvidia-smi`: is the GPU visible?
    Quick,
    /// A named, restarting container with the current directory as /workspace
    Workdir,
    /// The same as a docker-compose.yml service with a GPU reservation
    Compose,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A stored image, e.g. `nvidia/cuda:12.4.1-runtime-ubuntu22.04`
    #[arg(value_name = "REFERENCE")]
    reference: String,
    #[arg(long, value_enum)]
    scenario: ScenarioArg,
    /// GPUs for the container: `all`, a count (`2`), or devices (`0,1`, `device=1`, a UUID)
    #[arg(long, default_value = "all", value_parser = parse_gpus)]
    gpus: Gpus,
    /// Container name [default: none for quick, `cuda-work` for workdir]
    #[arg(long, value_parser = parse_name)]
    name: Option<String>,
    /// Restart policy (workdir, compose): no, always, unless-stopped, on-failure[:N]
    #[arg(long, default_value = "unless-stopped", value_parser = parse_restart)]
    restart: String,
    /// Host directory mounted at /workspace [default: the current directory; `./work` for compose]
    #[arg(long, value_name = "DIR")]
    host_dir: Option<String>,
    /// Which platform, when several are stored [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = crate::cli::known_platform)]
    platform: Option<String>,
}

fn parse_gpus(s: &str) -> Result<Gpus, String> {
    s.parse().map_err(|e: run_config::GpusError| e.to_string())
}

fn parse_name(s: &str) -> Result<String, String> {
    if run_config::valid_name(s) {
        Ok(s.to_owned())
    } else {
        Err("a container name is letters, digits, `_`, `.` and `-`, starting with a letter or digit".into())
    }
}

fn parse_restart(s: &str) -> Result<String, String> {
    if run_config::valid_restart(s) {
        Ok(s.to_owned())
    } else {
        Err("one of `no`, `always`, `unless-stopped`, `on-failure`, `on-failure:N`".into())
    }
}

#[derive(Serialize)]
struct Output<'a> {
    /// What the printed line names: `name@digest`, or `name:tag` when Docker has the
    /// image by tag only (loaded, no digest recorded).
    image: &'a str,
    /// `digest` or `tag`.
    pinned_by: &'static str,
    /// The upstream digest (the list's, when there is one).
    digest: &'a str,
    /// The Engine's image ID, when the Engine has this image.
    docker_image_id: Option<&'a str>,
    scenario: &'static str,
    /// `docker-compose.yml` or `sh`.
    format: &'static str,
    content: &'a str,
}

pub async fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let name = config.canonicalize(&args.reference)?.image.without_digest();
    let want: Option<Platform> = args.platform.as_deref().map(str::parse).transpose()?;
    let canonical = name.to_string();
    let store = ctx.existing_store().map_err(|e| match e {
        Error::Store(cudaimg_store::StoreError::Missing(_)) => Error::NotInStore(canonical.clone()),
        e => e,
    })?;
    let image = store
        .image(&canonical, want.as_ref())?
        .ok_or_else(|| Error::NotInStore(canonical.clone()))?;
    // The manifest list's digest when there is one: what `docker pull` records, and the
    // same for every platform.
    let digest = image
        .index_digest
        .clone()
        .unwrap_or_else(|| image.digest.clone());
    let by_digest = ImageRef {
        digest: Some(digest.clone()),
        ..name.clone()
    }
    .docker_form();
    let pin = pin(&name, &image, &by_digest).await;
    let pinned = pin.image.clone();
    let tag = name.tag.as_deref().and_then(|t| CudaTag::parse(t).ok());
    let env = ImageEnv::from_env(&image.config.config.env.clone().unwrap_or_default());
    let nvcc = if env.cuda_version.is_some() {
        Some(env.nvcc)
    } else {
        tag.as_ref().map(CudaTag::has_nvcc)
    };
    let spec = Spec {
        image: pinned.clone(),
        gpus: args.gpus.clone(),
        name: args.name.clone(),
        restart: args.restart.clone(),
        host_dir: args.host_dir.as_deref().map(host_dir).transpose()?,
        nvcc,
        pin_note: pin.comment.clone(),
        devel_tag: tag
            .as_ref()
            .filter(|t| t.flavor != Flavor::Devel)
            .map(|t| t.with_flavor(Flavor::Devel)),
    };
    let (scenario, content, format) = match args.scenario {
        ScenarioArg::Quick => (
            "quick",
            run_config::docker_run(&spec, Scenario::Quick),
            "sh",
        ),
        ScenarioArg::Workdir => (
            "workdir",
            run_config::docker_run(&spec, Scenario::Workdir),
            "sh",
        ),
        ScenarioArg::Compose => ("compose", run_config::compose(&spec), "docker-compose.yml"),
    };
    if let Some(note) = &pin.note {
        note!("{note}");
    }
    if ctx.json {
        emit_json(&Output {
            image: &pinned,
            pinned_by: pin.by,
            digest: digest.as_str(),
            docker_image_id: pin.image_id.as_deref(),
            scenario,
            format,
            content: &content,
        });
    } else {
        emit(content.trim_end());
    }
    Ok(())
}

/// What the printed line names the image by, and why.
struct Pin {
    image: String,
    by: &'static str,
    image_id: Option<String>,
    /// A comment line in the output (it travels with what users paste).
    comment: Option<String>,
    /// A note on stderr.
    note: Option<String>,
}

/// Asks the Engine (when one answers) what it records for the image, so that the printed
/// line resolves there without a registry. `docker pull` records `name@digest`
/// (`RepoDigests`), and then the digest pin resolves locally; `docker load` (which
/// `cudaimg load` and `pull --load` use) records only `name:tag` with the classic image
/// store, and a digest pin would send Docker to the registry. Then the line names
/// `name:tag`, and a comment holds the image ID and the upstream digest it was checked
/// against.
async fn pin(name: &ImageRef, image: &cudaimg_store::StoredImage, by_digest: &str) -> Pin {
    let digest_pin = |note: Option<String>| Pin {
        image: by_digest.to_owned(),
        by: "digest",
        image_id: None,
        comment: None,
        note,
    };
    let tagged = name.docker_form();
    let engine = match cudaimg_docker::DockerEngine::from_env() {
        Ok(engine) => engine,
        Err(e) => {
            return digest_pin(Some(format!(
                "note: pinned by digest; the Docker Engine was not asked ({e})"
            )))
        }
    };
    let Ok(found) = engine.image(&tagged).await else {
        return digest_pin(Some(format!(
            "note: pinned by digest; no Docker Engine answered at {}, so Docker will resolve \
             `{by_digest}` itself: after `cudaimg load`, which records no digest, it would pull it; \
             `{tagged}` names the loaded image",
            engine.host()
        )));
    };
    let config_id = image.manifest.config.digest.as_str();
    let manifest_id = image.digest.as_str();
    let Some(found) = found.filter(|f| f.id == config_id || f.id == manifest_id) else {
        return digest_pin(Some(format!(
            "note: the Docker Engine at {} does not have this image as `{tagged}`; `cudaimg load {tagged}` \
             hands it over, else Docker pulls `{by_digest}` (through its own mirrors)",
            engine.host()
        )));
    };
    let repo = ImageRef {
        tag: None,
        digest: None,
        ..name.clone()
    }
    .docker_form();
    let recorded = [image.index_digest.as_ref(), Some(&image.digest)]
        .into_iter()
        .flatten()
        .map(|d| format!("{repo}@{d}"))
        .find(|pinned| found.repo_digests.iter().any(|r| r == pinned));
    if let Some(recorded) = recorded {
        return Pin {
            image_id: Some(found.id),
            ..digest_pin(None)
        }
        .with_image(recorded);
    }
    Pin {
        image: tagged.clone(),
        by: "tag",
        comment: Some(format!(
            "{tagged} is Docker image {} here, verified as {by_digest}; loaded, so Docker records \
             no digest and a digest pin would go to the registry",
            found.id
        )),
        note: Some(format!(
            "note: pinned by tag: Docker has `{tagged}` as image {} (loaded; no repository digest \
             recorded), which is the stored {by_digest}",
            found.id
        )),
        image_id: Some(found.id),
    }
}

impl Pin {
    fn with_image(self, image: String) -> Pin {
        Pin { image, ..self }
    }
}

/// A `-v` source must be an absolute path (a bare word is a named volume to Docker) and
/// cannot hold `:` (the `-v` separator).
fn host_dir(dir: &str) -> Result<String, Error> {
    if dir.contains(':') {
        return Err(Error::Usage(format!(
            "`{dir}` holds `:`, which `docker run -v` reads as a separator; choose another directory"
        )));
    }
    let expanded = match dir.strip_prefix("~/") {
        Some(rest) => match std::env::var_os(cudaimg_static::EnvVars::HOME) {
            Some(home) => std::path::PathBuf::from(home).join(rest),
            None => std::path::PathBuf::from(dir),
        },
        None => std::path::PathBuf::from(dir),
    };
    let absolute = std::path::absolute(&expanded)
        .map_err(|e| Error::Usage(format!("cannot make `{dir}` absolute: {e}")))?;
    Ok(absolute.display().to_string())
}
