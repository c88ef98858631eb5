//! `cudaimg doctor [REF]`: checks the machine for running CUDA containers (driver, GPUs,
//! NVIDIA Container Toolkit, Docker, mirrors) and, with REF, the image against the driver.
//! The image is read from the store, else from the Docker Engine (an image `cudaimg build`
//! made and never pushed: its `NVIDIA_REQUIRE_CUDA` and labels), else its nvidia/cuda tag.
//! Each finding is printed with its status and fix; exit 1 if any is `fail` (see
//! [`cudaimg_host::doctor`]), 0 otherwise, also on a machine without a GPU.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{exit, Error};
use cudaimg_config::Config;
use cudaimg_cuda::image::ImageEnv;
use cudaimg_cuda::CudaTag;
use cudaimg_docker::DockerEngine;
use cudaimg_host::doctor::{
    self, DockerState, EndpointPing, Finding, ImageSource, ImageSubject, Probes, Status,
};
use cudaimg_host::probe::{self as host, DriverProbe};
use cudaimg_mirrors::sources::chain;
use cudaimg_registry::{HttpClients, RegistryClient};
use cudaimg_store::StoreError;

use super::{emit, emit_json, Ctx};

/// How long an endpoint gets to answer `GET /v2/`.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An image to check against this host: from the store, else the Docker Engine, else from
    /// its nvidia/cuda tag
    #[arg(value_name = "REFERENCE")]
    reference: Option<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    image: Option<&'a str>,
    driver: &'a DriverProbe,
    findings: &'a [Finding],
    summary: Summary,
}

#[derive(Clone, Copy, Serialize)]
struct Summary {
    ok: usize,
    warn: usize,
    fail: usize,
}

pub async fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let image = match &args.reference {
        Some(r) => Some(image_subject(ctx, config, r).await?),
        None => None,
    };
    let (driver, pings, docker) = tokio::join!(
        host::probe_driver(),
        ping_all(config, ctx.session.http().ok()),
        probe_docker()
    );
    let probes = Probes {
        driver,
        toolkit: host::probe_toolkit(),
        daemon_json: host::probe_daemon_json(),
        cdi: host::probe_cdi(),
        docker,
        config_path: config.path.clone(),
        pings,
    };
    let findings = doctor::findings(&probes, image.as_ref());
    let count = |s: Status| findings.iter().filter(|f| f.status == s).count();
    let summary = Summary {
        ok: count(Status::Ok),
        warn: count(Status::Warn),
        fail: count(Status::Fail),
    };
    if ctx.json {
        let report = Report {
            image: image.as_ref().map(|i| i.name.as_str()),
            driver: &probes.driver,
            findings: &findings,
            summary,
        };
        // A failing run's findings and its error object make one document.
        if summary.fail > 0 {
            super::hold_json(&report);
        } else {
            emit_json(&report);
        }
    } else {
        // Findings and fixes wrap under themselves at the terminal's width: every word of
        // a fix stays readable, none is cut.
        for f in &findings {
            let lead = format!("{:4}  {:14}  ", f.status.as_str(), f.check);
            for line in super::width::hanging(&lead, &f.message, ctx.columns) {
                emit(&line);
            }
            if let Some(fix) = &f.fix {
                let lead = format!("{:4}  {:14}  fix: ", "", "");
                for line in super::width::hanging(&lead, fix, ctx.columns) {
                    emit(&line);
                }
            }
        }
        emit(&format!(
            "{} ok, {} warn, {} fail",
            summary.ok, summary.warn, summary.fail
        ));
    }
    if summary.fail > 0 {
        let mut failing: Vec<&str> = findings
            .iter()
            .filter(|f| f.status == Status::Fail)
            .map(|f| f.check)
            .collect();
        failing.dedup();
        return Err(Error::Failed {
            // The checks by name: true under `--json` too, where no table is "above".
            what: format!(
                "doctor found {}: {}",
                super::words::counted(summary.fail, "problem"),
                failing.join(", ")
            ),
            code: exit::FAILURE,
        });
    }
    Ok(())
}

/// The image to check: the stored one (its own environment), else the Docker Engine's,
/// else what its nvidia/cuda tag says; a reference that is none of these is an error.
async fn image_subject(ctx: &Ctx, config: &Config, input: &str) -> Result<ImageSubject, Error> {
    let bare = !input.contains(['/', ':', '@']);
    let name = if bare {
        format!("docker.io/nvidia/cuda:{input}")
    } else {
        config.canonicalize(input)?.image.to_string()
    };
    let stored = match ctx.existing_store() {
        Ok(store) => store.image(&name, None)?,
        Err(Error::Store(StoreError::Missing(_))) => None,
        Err(e) => return Err(e),
    };
    // The tag of the name, for a stored or an Engine's image alike.
    let tag_of_name = || {
        cudaimg_oci::reference::ImageRef::parse(&name)
            .ok()
            .and_then(|r| r.tag)
            .and_then(|t| CudaTag::parse(&t).ok())
    };
    if let Some(image) = stored {
        let tag = tag_of_name();
        return Ok(ImageSubject {
            name,
            tag,
            env: Some(ImageEnv::from_env(
                &image.config.config.env.clone().unwrap_or_default(),
            )),
            source: ImageSource::Store,
            labels: image.config.config.labels.clone().unwrap_or_default(),
        });
    }
    if let Some(engine) = engine_image(input, &name).await {
        let tag = tag_of_name();
        return Ok(ImageSubject {
            name,
            tag,
            env: Some(ImageEnv::from_env(&engine.env)),
            source: ImageSource::Engine,
            labels: engine.labels,
        });
    }
    match super::explain::subject(config, input) {
        Ok(s) => Ok(ImageSubject {
            name: s.name,
            tag: Some(s.tag),
            env: None,
            source: ImageSource::Tag,
            labels: std::collections::BTreeMap::new(),
        }),
        // A bare tag that is not stored: what is wrong with it is the useful answer.
        Err(e @ Error::Tag(_)) if bare => Err(e),
        // Neither stored nor an nvidia/cuda tag: nothing to check it against.
        Err(Error::Tag(_) | Error::Usage(_)) => Err(Error::NotInStore(name)),
        Err(e) => Err(e),
    }
}

/// The image as the Docker Engine holds it, under the name typed or the canonical one
/// (`docker build -t team/torch` is `docker.io/team/torch` to cudaimg). No engine, or no
/// such image there, is `None`: the engine is one more place to look, not a requirement.
async fn engine_image(input: &str, canonical: &str) -> Option<cudaimg_docker::EngineImage> {
    let engine = DockerEngine::from_env().ok()?;
    for name in [input, canonical] {
        // A bare tag (`12.4.1-base-ubuntu22.04`) is no engine name.
        if !name.contains([':', '@', '/']) {
            continue;
        }
        if let Ok(Some(image)) = engine.image(name).await {
            return Some(image);
        }
    }
    None
}

async fn probe_docker() -> DockerState {
    let engine = match DockerEngine::from_env() {
        Ok(e) => e,
        Err(e) => {
            return DockerState::Down {
                fix: e.hint(),
                message: e.to_string(),
            }
        }
    };
    match engine.ping().await {
        Ok(api_version) => DockerState::Up {
            host: engine.host().to_owned(),
            api_version,
            runtimes: engine.runtimes().await.ok(),
        },
        Err(e) => DockerState::Down {
            fix: e.hint(),
            message: e.to_string(),
        },
    }
}

/// `GET /v2/` of every configured endpoint, all at once.
async fn ping_all(config: &Config, http: Option<&HttpClients>) -> Vec<EndpointPing> {
    let Some(http) = http.map(|h| h.with_manifest_timeout(PING_TIMEOUT)) else {
        return Vec::new();
    };
    let mut jobs = Vec::new();
    for (registry, reg) in config.registries() {
        let endpoints = reg
            .mirrors
            .iter()
            .map(|m| (m, false))
            .chain(std::iter::once((&reg.endpoint, true)));
        for (endpoint, official) in endpoints {
            let client = RegistryClient::new(&endpoint.url, endpoint.insecure, &http);
            let registry = registry.to_owned();
            jobs.push(async move {
                let started = Instant::now();
                let result = client.ping().await.map_err(|e| chain(&e));
                EndpointPing {
                    registry,
                    url: client.label().to_owned(),
                    official,
                    result,
                    millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                }
            });
        }
    }
    futures_util::future::join_all(jobs).await
}
