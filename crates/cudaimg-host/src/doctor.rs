//! `doctor`'s judgement: from what the probes found (driver, toolkit, Docker, mirrors) and
//! what an image needs, a list of findings, each `ok`, `warn` or `fail` with the fix. The
//! fixes are the seed tutorial's FAQ: no GPU visible, toolkit missing, driver too old,
//! `nvcc` missing in a runtime image, slow pulls.
//!
//! `fail` means something the user asked for cannot work as things are: a driver present
//! but too old for the image, an image the NVIDIA runtime will refuse, a GPU that containers
//! cannot reach, a driver that does not answer, a broken `daemon.json`, a registry none of
//! whose endpoints answers. A machine without a GPU is not a failure (`warn`): cudaimg pulls,
//! stores and exports images there.
//!
//! No I/O here: the probes live in [`crate::probe`], the network checks in the CLI.

use serde::Serialize;

mod arch;

use crate::probe::{Cdi, DaemonJson, DriverProbe};
use cudaimg_cuda::driver::{self, brand_of, Compatibility, HostFacts, RequireOutcome, Requirement};
use cudaimg_cuda::image::ImageEnv;
use cudaimg_cuda::{eol, CudaTag, CudaVersion, Flavor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was checked: `driver`, `gpu-arch`, `image`, `docker`, `nvidia-runtime`, `mirrors`.
    pub check: &'static str,
    pub status: Status,
    pub message: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn finding(check: &'static str, status: Status, message: String, fix: Option<String>) -> Finding {
    Finding {
        check,
        status,
        message,
        fix,
    }
}

/// The image `doctor REF` checks: from the store (its environment) or from its tag alone.
#[derive(Debug, Clone)]
pub struct ImageSubject {
    pub name: String,
    pub tag: Option<CudaTag>,
    /// The image's own environment; `None` when only the tag is known.
    pub env: Option<ImageEnv>,
    /// Where the environment was read.
    pub source: ImageSource,
    /// Its labels (`build`'s torch, CUDA and Python versions), where it was read.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Where `doctor REF` found the image it checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    /// The store.
    Store,
    /// The Docker Engine only (built by `cudaimg build`, or loaded, and never stored).
    Engine,
    /// Neither: what its nvidia/cuda tag says.
    Tag,
}

impl ImageSource {
    /// Where the requirement was read, as a finding says it.
    fn describe(self) -> &'static str {
        match self {
            ImageSource::Store => "the stored image",
            ImageSource::Engine => "the image in the Docker Engine",
            ImageSource::Tag => {
                "its tag (not in the store; `cudaimg pull` it for the image's own requirements)"
            }
        }
    }
}

impl ImageSubject {
    /// The torch `build` installed (its labels): the version and the wheel variant.
    fn torch(&self) -> Option<(String, String)> {
        let get = |k: &str| self.labels.get(k).filter(|v| !v.is_empty()).cloned();
        Some((
            get("io.cudaimg.torch.version")?,
            get("io.cudaimg.torch.variant")?,
        ))
    }

    fn version(&self) -> Option<CudaVersion> {
        self.env
            .as_ref()
            .and_then(ImageEnv::version)
            .or(self.tag.as_ref().map(|t| t.version))
    }

    /// The image's `NVIDIA_REQUIRE_CUDA`. For a tag alone there is none to read: NVIDIA's
    /// real values carry driver-branch alternatives a bare `cuda>=X.Y` would miss, so none is
    /// made up (pulling the image gives its own).
    fn requirement(&self) -> Option<Requirement> {
        self.env.as_ref().and_then(ImageEnv::requirement)
    }
}

/// Docker as probed.
#[derive(Debug, Clone)]
pub enum DockerState {
    Up {
        host: String,
        api_version: String,
        /// From `GET /info`; `None` if that failed.
        runtimes: Option<(Vec<String>, Option<String>)>,
    },
    Down {
        message: String,
        fix: String,
    },
}

/// One registry endpoint's answer to `GET /v2/`.
#[derive(Debug, Clone)]
pub struct EndpointPing {
    pub registry: String,
    pub url: String,
    pub official: bool,
    /// The HTTP status, or why there was none.
    pub result: Result<u16, String>,
    pub millis: u64,
}

/// Everything the probes found.
pub struct Probes {
    pub driver: DriverProbe,
    pub toolkit: Vec<(String, std::path::PathBuf)>,
    pub daemon_json: DaemonJson,
    pub cdi: Cdi,
    pub docker: DockerState,
    /// `None`: no mirrors.toml was found.
    pub config_path: Option<std::path::PathBuf>,
    pub pings: Vec<EndpointPing>,
}

/// The findings, in the order they are printed.
pub fn findings(p: &Probes, image: Option<&ImageSubject>) -> Vec<Finding> {
    let mut out = Vec::new();
    driver_findings(p, &mut out);
    arch::findings(p, image, &mut out);
    if let Some(i) = image {
        if let Some(built) = built_with(&i.labels) {
            let text = format!("{}: {built}", i.name);
            out.push(finding("image", Status::Ok, text, None));
        }
        image_findings(p, i, &mut out);
    }
    docker_findings(p, &mut out);
    runtime_findings(p, &mut out);
    mirror_findings(p, &mut out);
    out
}

fn driver_findings(p: &Probes, out: &mut Vec<Finding>) {
    match &p.driver {
        DriverProbe::Smi {
            driver, gpus, path, ..
        } => {
            let names: Vec<&str> = gpus.iter().map(|g| g.name.as_str()).collect();
            out.push(finding(
                "driver",
                Status::Ok,
                format!(
                    "NVIDIA driver {driver} ({}), {} GPU{}: {}; it runs CUDA images up to {}",
                    path.display(),
                    gpus.len(),
                    if gpus.len() == 1 { "" } else { "s" },
                    names.join(", "),
                    driver::driver_cuda(driver)
                        .map_or_else(|| "(unknown)".to_owned(), |v| v.to_string())
                ),
                None,
            ));
        }
        DriverProbe::Proc { path, driver, smi } => {
            out.push(finding(
                "driver",
                Status::Ok,
                format!("NVIDIA driver {driver} (from {})", path.display()),
                None,
            ));
            out.push(finding(
                "driver",
                Status::Warn,
                format!("the driver is loaded but nvidia-smi was not found ({smi}): GPU names are unknown"),
                Some("install the driver's utilities (nvidia-utils), or point CUDAIMG_NVIDIA_SMI at nvidia-smi".into()),
            ));
        }
        DriverProbe::SmiFailed {
            path,
            message,
            proc_driver,
        } => {
            let module = proc_driver
                .as_ref()
                .map(|d| format!(" (the kernel module says {d})"))
                .unwrap_or_default();
            out.push(finding(
                "driver",
                Status::Fail,
                format!("{} failed: {message}{module}", path.display()),
                Some(
                    "\"Driver/library version mismatch\": reboot after a driver upgrade; \
                     \"couldn't communicate with the NVIDIA driver\": load the module \
                     (`sudo modprobe nvidia`) or reinstall the driver; no GPU listed: check that \
                     the GPU is attached (`lspci | grep -i nvidia`)"
                        .into(),
                ),
            ));
        }
        DriverProbe::Nothing { smi, proc_path } => {
            out.push(finding(
                "driver",
                Status::Warn,
                format!(
                    "no NVIDIA driver found ({smi}; no {}): no GPU here, or its driver is not \
                     installed. Containers will see no GPU (\"no CUDA-capable device is detected\")",
                    proc_path.display()
                ),
                Some(
                    "on a GPU machine, install NVIDIA's driver; without a GPU, cudaimg still \
                     pulls, stores and exports images, and containers run on the CPU"
                        .into(),
                ),
            ));
        }
    }
}

/// What `cudaimg build`'s labels say the image holds: torch, its wheels' CUDA, the base.
fn built_with(labels: &std::collections::BTreeMap<String, String>) -> Option<String> {
    let get = |k: &str| labels.get(k).filter(|v| !v.is_empty());
    let torch = get("io.cudaimg.torch.version")?;
    let mut text = format!("torch {torch}");
    if let Some(v) = get("io.cudaimg.torch.variant") {
        text.push_str(&format!(" ({v} wheels"));
        if let Some(c) = get("io.cudaimg.cuda.wheels") {
            text.push_str(&format!(", CUDA {c}"));
        }
        text.push(')');
    }
    if let Some(py) = get("io.cudaimg.python.version") {
        text.push_str(&format!(", Python {py}"));
    }
    if let Some(b) = get("org.opencontainers.image.base.name") {
        text.push_str(&format!(", on {b}"));
    }
    Some(text)
}

fn image_findings(p: &Probes, image: &ImageSubject, out: &mut Vec<Finding>) {
    let name = &image.name;
    if let Some(built) = built_with(&image.labels) {
        out.push(finding(
            "image",
            Status::Ok,
            format!("{name}: {built}"),
            None,
        ));
    }
    if let Some(env) = &image.env {
        if !env.is_cuda() {
            out.push(finding(
                "image",
                Status::Warn,
                format!("{name} has no CUDA_VERSION or NVIDIA_REQUIRE_CUDA: not a CUDA image, nothing to check against the driver"),
                None,
            ));
            return;
        }
    }
    let Some(version) = image.version() else {
        out.push(finding(
            "image",
            Status::Warn,
            format!("{name}: CUDA_VERSION cannot be read"),
            None,
        ));
        return;
    };
    let source = image.source.describe();
    match p.driver.driver() {
        None => out.push(finding(
            "image",
            Status::Warn,
            format!("{name} needs CUDA {version}; with no driver found it cannot be checked"),
            driver::min_driver(version).map(|d| format!("it needs driver {d} or newer")),
        )),
        Some(d) => {
            let brand = p.driver.gpus().first().and_then(|g| brand_of(&g.name));
            let requirement = image.requirement();
            let outcome = requirement
                .as_ref()
                .map(|r| r.check(&HostFacts { driver: d, brand }));
            out.push(driver_vs_image(
                name,
                version,
                d,
                outcome.as_ref(),
                requirement.as_ref(),
                source,
            ));
        }
    }
    let says_eol = image.env.as_ref().is_some_and(|e| e.end_of_life);
    let support = eol::support(version, says_eol);
    if support.eol == Some(true) {
        out.push(finding(
            "image",
            Status::Warn,
            format!(
                "{name} is past NVIDIA's end of life (cudaimg's tables as of {}): {}. NVIDIA \
                 deletes such tags about six months later; the store keeps its copy",
                support.as_of,
                support.reasons.join("; ")
            ),
            Some(format!(
                "move to a supported version: `cudaimg tags nvidia/cuda --cuda {}` lists what \
                 exists, `cudaimg tags nvidia/cuda` recommends one",
                version.major
            )),
        ));
    }
    let nvcc = match (&image.env, &image.tag) {
        (Some(env), _) if env.cuda_version.is_some() => Some(env.nvcc),
        (_, Some(t)) => Some(t.has_nvcc()),
        _ => None,
    };
    if nvcc == Some(false) {
        let devel = image
            .tag
            .as_ref()
            .filter(|t| t.flavor != Flavor::Devel)
            .map_or_else(
                || "the `devel` flavor of the same tag".into(),
                |t| format!("`{}`", t.with_flavor(Flavor::Devel)),
            );
        out.push(finding(
            "image",
            Status::Warn,
            format!(
                "{name} has no nvcc (a {} image): `nvcc: command not found` inside it is expected; \
                 it runs pre-built CUDA programs",
                image.tag.as_ref().map_or("runtime or base", |t| t.flavor.as_str())
            ),
            Some(format!("to compile CUDA code, use {devel}")),
        ));
    }
}

// One finding per rule of how a driver meets an image (minimum, minor-version compatibility,
// NVIDIA_REQUIRE_CUDA, end of life), in the order doctor prints them; split, the rules would
// lose the shared context they read.
#[allow(clippy::too_many_lines)]
fn driver_vs_image(
    name: &str,
    version: CudaVersion,
    d: &cudaimg_cuda::DriverVersion,
    outcome: Option<&RequireOutcome>,
    requirement: Option<&Requirement>,
    source: &str,
) -> Finding {
    let compat = driver::compatibility(version, d);
    let full = driver::min_driver(version);
    let upgrade = |to: Option<&cudaimg_cuda::DriverVersion>| match to {
        Some(t) => format!("upgrade the driver to {t} or newer"),
        None => "upgrade the driver".to_owned(),
    };
    let older = driver::driver_cuda(d).map(|v| {
        format!(", or use an image this driver runs fully: `cudaimg tags nvidia/cuda --cuda {v}`")
    });
    let older = older.unwrap_or_default();
    let req_text = requirement.map(|r| r.text.clone()).unwrap_or_default();
    let refused = || {
        format!(
            "the NVIDIA container runtime will refuse to start it (\"unsatisfied condition: {}\")",
            requirement
                .and_then(Requirement::cuda)
                .map_or(req_text.clone(), |c| format!("cuda>={c}"))
        )
    };
    match (&compat, outcome) {
        (Compatibility::Full { min_driver }, None | Some(RequireOutcome::Met(_))) => finding(
            "image",
            Status::Ok,
            format!("driver {d} runs {name} (CUDA {version} needs {min_driver} or newer; from {source})"),
            None,
        ),
        (_, Some(RequireOutcome::Met(alt))) if alt.starts_with("cuda") => finding(
            "image",
            Status::Warn,
            format!(
                "driver {d} runs CUDA {version} with minor-version compatibility only (no PTX \
                 JIT of code newer than the driver); the image's requirement `{alt}` accepts it"
            ),
            Some(format!("{}{older}", upgrade(full.as_ref()))),
        ),
        (_, Some(RequireOutcome::Met(alt))) => finding(
            "image",
            Status::Warn,
            format!(
                "driver {d} is older than CUDA {version} needs ({}), but the image accepts it \
                 through `{alt}` (the driver-branch alternatives NVIDIA writes into the image)",
                full.as_ref().map_or("unknown".into(), ToString::to_string)
            ),
            Some(format!("{}{older}", upgrade(full.as_ref()))),
        ),
        (_, Some(RequireOutcome::DependsOnBrand(alts))) => finding(
            "image",
            Status::Warn,
            format!(
                "driver {d} is older than CUDA {version} needs; the image accepts it only for \
                 some GPU brands (`{}`), and the brand cannot be told from the GPU's name",
                alts.join("` or `")
            ),
            Some(format!("{}{older}", upgrade(full.as_ref()))),
        ),
        // Newer than cudaimg's driver table: what the requirement means cannot be told offline.
        (Compatibility::MinorVersion { min_driver: None, .. }, Some(RequireOutcome::NotMet)) => finding(
            "image",
            Status::Warn,
            format!(
                "CUDA {version} is newer than cudaimg's driver table: whether driver {d} meets \
                 the image's requirement `{req_text}` cannot be told offline"
            ),
            Some("compare with the CUDA version `nvidia-smi` reports; `-e NVIDIA_DISABLE_REQUIRE=1` skips the runtime's check".into()),
        ),
        (Compatibility::MinorVersion { minor_compat_driver, .. }, Some(RequireOutcome::NotMet)) => finding(
            "image",
            Status::Fail,
            format!(
                "driver {d} runs CUDA {version} only with minor-version compatibility (from \
                 {minor_compat_driver}; no PTX JIT of newer code), and {}",
                refused()
            ),
            Some(format!(
                "{}{older}; or run it anyway with `-e NVIDIA_DISABLE_REQUIRE=1`, accepting \
                 minor-version compatibility's limits",
                upgrade(full.as_ref())
            )),
        ),
        (Compatibility::MinorVersion { minor_compat_driver, .. }, None) => finding(
            "image",
            Status::Warn,
            format!(
                "driver {d} runs CUDA {version} with minor-version compatibility only (from \
                 {minor_compat_driver}): no PTX JIT of code newer than the driver"
            ),
            Some(format!("{}{older}", upgrade(full.as_ref()))),
        ),
        (Compatibility::TooOld { minor_compat_driver, .. }, _) => finding(
            "image",
            Status::Fail,
            format!(
                "driver {d} is too old for {name}: CUDA {version} needs {}{}{}",
                full.as_ref().map_or("a newer driver".into(), |f| format!("{f} or newer")),
                minor_compat_driver
                    .as_ref()
                    .filter(|m| Some(*m) != full.as_ref())
                    .map(|m| format!(" ({m} with minor-version compatibility)"))
                    .unwrap_or_default(),
                if matches!(outcome, Some(RequireOutcome::NotMet)) {
                    format!("; {}", refused())
                } else {
                    String::new()
                }
            ),
            Some(format!("{}{older}", upgrade(full.as_ref()))),
        ),
        (Compatibility::Full { .. }, Some(RequireOutcome::NotMet)) => finding(
            "image",
            Status::Warn,
            format!(
                "driver {d} meets CUDA {version}'s minimum, but the image's requirement `{req_text}` \
                 is not met as cudaimg reads it"
            ),
            Some("check the requirement against `nvidia-smi`'s CUDA version".into()),
        ),
        (Compatibility::Unknown, _) => finding(
            "image",
            Status::Warn,
            format!("CUDA {version} is not in cudaimg's driver table: cannot tell whether driver {d} runs it"),
            None,
        ),
    }
}

fn docker_findings(p: &Probes, out: &mut Vec<Finding>) {
    match &p.docker {
        DockerState::Up {
            host, api_version, ..
        } => out.push(finding(
            "docker",
            Status::Ok,
            format!("Docker Engine at {host} answers (API {api_version})"),
            None,
        )),
        DockerState::Down { message, fix } => out.push(finding(
            "docker",
            Status::Warn,
            format!(
                "{message}: `docker run` and `cudaimg load` need it (pulls into the store do not)"
            ),
            Some(fix.clone()),
        )),
    }
}

fn runtime_findings(p: &Probes, out: &mut Vec<Finding>) {
    let gpu = matches!(p.driver, DriverProbe::Smi { .. } | DriverProbe::Proc { .. });
    let mut configured = Vec::new();
    if let DaemonJson::Read { path, runtimes, .. } = &p.daemon_json {
        if runtimes.iter().any(|r| r == "nvidia") {
            configured.push(format!("runtime `nvidia` in {}", path.display()));
        }
    }
    if let DockerState::Up {
        runtimes: Some((names, default)),
        ..
    } = &p.docker
    {
        if names.iter().any(|r| r == "nvidia") {
            configured.push(format!(
                "the Docker Engine knows the `nvidia` runtime{}",
                if default.as_deref() == Some("nvidia") {
                    " (its default)"
                } else {
                    ""
                }
            ));
        }
    }
    if !p.cdi.nvidia_specs.is_empty() {
        let specs: Vec<String> = p
            .cdi
            .nvidia_specs
            .iter()
            .map(|s| s.display().to_string())
            .collect();
        configured.push(format!("CDI specs {}", specs.join(", ")));
    }
    let install = format!(
        "install the NVIDIA Container Toolkit (package `nvidia-container-toolkit`), then \
         `sudo nvidia-ctk runtime configure --runtime=docker` and {}",
        crate::probe::restart_docker()
    );
    let install = install.as_str();
    match (&p.daemon_json, p.toolkit.is_empty()) {
        (DaemonJson::Invalid { path, error }, _) => out.push(finding(
            "nvidia-runtime",
            Status::Fail,
            format!("{} is not valid JSON ({error}): dockerd does not start with it", path.display()),
            Some("fix the file (`python3 -m json.tool` shows where), then restart Docker".into()),
        )),
        (DaemonJson::Unreadable { path, error }, _) => out.push(finding(
            "nvidia-runtime",
            Status::Warn,
            format!("cannot read {}: {error}", path.display()),
            Some("run doctor as a user who can read it, or point CUDAIMG_DOCKER_DAEMON_JSON at a copy".into()),
        )),
        _ => {}
    }
    if p.toolkit.is_empty() && configured.is_empty() {
        out.push(finding(
            "nvidia-runtime",
            if gpu { Status::Fail } else { Status::Warn },
            format!(
                "NVIDIA Container Toolkit not found (none of {} on PATH, no `nvidia` runtime, \
                 no CDI spec): containers cannot see {} GPU (`docker run --gpus all` fails with \
                 \"could not select device driver\")",
                crate::probe::TOOLKIT_BINARIES.join(", "),
                if gpu { "the" } else { "a" }
            ),
            Some(install.into()),
        ));
        return;
    }
    let bins: Vec<String> = p
        .toolkit
        .iter()
        .map(|(name, path)| format!("{name} ({})", path.display()))
        .collect();
    let mut message = String::from("NVIDIA Container Toolkit: ");
    if bins.is_empty() {
        message.push_str("no toolkit program on PATH");
    } else {
        message.push_str(&bins.join(", "));
    }
    if configured.is_empty() {
        message.push_str(
            "; but Docker has no `nvidia` runtime and there is no CDI spec: `--gpus` may work \
             through the toolkit's hook, compose's `runtime: nvidia` and `--runtime=nvidia` will not",
        );
        out.push(finding(
            "nvidia-runtime",
            Status::Warn,
            message,
            Some(format!(
                "`sudo nvidia-ctk runtime configure --runtime=docker`, then {}; for CDI, \
                 `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
                crate::probe::restart_docker()
            )),
        ));
    } else {
        message.push_str(&format!("; {}", configured.join("; ")));
        out.push(finding("nvidia-runtime", Status::Ok, message, None));
    }
}

fn mirror_findings(p: &Probes, out: &mut Vec<Finding>) {
    if let DaemonJson::Read {
        registry_mirrors, ..
    } = &p.daemon_json
    {
        if !registry_mirrors.is_empty() {
            out.push(finding(
                "mirrors",
                Status::Ok,
                format!(
                    "Docker's own registry-mirrors (used by `docker pull`, not by cudaimg): {}",
                    registry_mirrors.join(", ")
                ),
                None,
            ));
        }
    }
    let Some(path) = &p.config_path else {
        out.push(finding(
            "mirrors",
            Status::Ok,
            "no mirrors.toml: each registry is pulled from its own host".into(),
            Some(
                "slow pulls? list mirrors in mirrors.toml (see README), then `cudaimg mirrors check` \
                 ranks them"
                    .into(),
            ),
        ));
        return;
    };
    if p.pings.is_empty() {
        out.push(finding(
            "mirrors",
            Status::Ok,
            format!("{} configures no registry", path.display()),
            None,
        ));
    }
    let mut registries: Vec<&str> = p.pings.iter().map(|e| e.registry.as_str()).collect();
    registries.dedup();
    for reg in registries {
        let eps: Vec<&EndpointPing> = p.pings.iter().filter(|e| e.registry == reg).collect();
        let mut answering = 0;
        for e in &eps {
            let role = if e.official { "registry" } else { "mirror" };
            match &e.result {
                Ok(status @ (200 | 401)) => {
                    answering += 1;
                    out.push(finding(
                        "mirrors",
                        Status::Ok,
                        format!(
                            "{reg}: {role} {} answers GET /v2/ (HTTP {status}{}) in {} ms",
                            e.url,
                            if *status == 401 { ", wants a login or token" } else { "" },
                            e.millis
                        ),
                        None,
                    ));
                }
                Ok(status) => out.push(finding(
                    "mirrors",
                    Status::Warn,
                    format!("{reg}: {role} {} answers GET /v2/ with HTTP {status}: not a registry API endpoint", e.url),
                    Some("check the URL in mirrors.toml (the registry's base URL, without /v2/)".into()),
                )),
                Err(why) => out.push(finding(
                    "mirrors",
                    Status::Warn,
                    format!("{reg}: {role} {} does not answer: {why}", e.url),
                    Some(format!(
                        "fix or remove it in {}; cudaimg backs off from a source once it fails, \
                         and `cudaimg mirrors check` ranks those that answer",
                        path.display()
                    )),
                )),
            }
        }
        if answering == 0 {
            out.push(finding(
                "mirrors",
                Status::Fail,
                format!(
                    "{reg}: none of its {} endpoints answers: pulls from {reg} cannot work",
                    eps.len()
                ),
                Some("check the network and the URLs in mirrors.toml".into()),
            ));
        }
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests;
