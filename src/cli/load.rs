//! `cudaimg load REF`: hand a stored image to an engine under its official name; and the
//! engine options `pull --load` shares.

use std::path::PathBuf;

use crate::error::Error;
use cudaimg_docker::DockerEngine;
use cudaimg_handover::{HandOver, LoadError, Loaded, Via};
use cudaimg_oci::platform::Platform;
use cudaimg_store::Store;

use super::{emit, emit_json, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    image: super::ImageArgs,
    /// The engine: `docker` (the Docker Engine or Podman at `DOCKER_HOST`), or
    /// `containerd[:NAMESPACE]` (namespace `k8s.io`, the kubelet's, by default)
    #[arg(long, value_name = "ENGINE", default_value = "docker")]
    to: Target,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Which engine an image goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Docker,
    Containerd { namespace: String },
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "docker" || s == "podman" => Ok(Target::Docker),
            None if s == "containerd" => Ok(Target::Containerd {
                namespace: cudaimg_containerd::DEFAULT_NAMESPACE.into(),
            }),
            // containerd checks the name itself, and says what it takes.
            Some(("containerd", ns)) if !ns.is_empty() => Ok(Target::Containerd {
                namespace: ns.into(),
            }),
            _ => Err(format!(
                "`{s}` is not an engine: use `docker` (the Docker Engine or Podman at \
                 `DOCKER_HOST`), `containerd` or `containerd:NAMESPACE`"
            )),
        }
    }
}

/// How to reach the engines: shared by `load` and `pull --load`.
#[derive(Debug, clap::Args)]
pub(crate) struct EngineArgs {
    /// containerd's socket, for `containerd` engines
    #[arg(long, value_name = "PATH", env = cudaimg_static::EnvVars::CONTAINERD_ADDRESS, default_value = cudaimg_containerd::DEFAULT_ADDRESS)]
    containerd_address: PathBuf,
    /// How the image goes into a Docker-API engine: `relay` (it pulls from cudaimg on
    /// 127.0.0.1), `archive` (a streamed `docker load`), or `auto`: the relay where the
    /// engine can reach this host's loopback
    #[arg(long = "load-via", value_name = "ROUTE", env = cudaimg_static::EnvVars::CUDAIMG_LOAD_VIA, default_value = "auto")]
    via: Via,
}

pub async fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let (name, want) = args.image.resolve(config)?;
    let store = ctx.existing_store()?;
    let loaded = load(&store, &name, want.as_ref(), &args.to, &args.engine).await?;
    finish(ctx, loaded)
}

/// Prints what a hand-over did (under `--json`, the `loaded` object, failure included)
/// and returns its error.
fn finish(ctx: &Ctx, done: (Loaded, Result<(), LoadError>)) -> Result<(), Error> {
    let (loaded, outcome) = done;
    if ctx.json {
        let doc = serde_json::json!({ "loaded": loaded });
        // A failed load is the run's error: one document with its error object.
        if outcome.is_err() {
            super::hold_json(&doc);
        } else {
            emit_json(&doc);
        }
    } else if outcome.is_ok() {
        print(&loaded);
    }
    Ok(outcome?)
}

/// Loads `name` (for `platform`) from the store into the engine.
pub(crate) async fn load(
    store: &Store,
    name: &str,
    platform: Option<&Platform>,
    to: &Target,
    engine: &EngineArgs,
) -> Result<(Loaded, Result<(), LoadError>), Error> {
    let image = store
        .image(name, platform)?
        .ok_or_else(|| Error::NotInStore(name.to_owned()))?;
    Ok(match hand_over(to, engine, store).await {
        Ok(h) => h.load(&image).await,
        Err((loaded, e)) => (loaded, Err(e)),
    })
}

/// Reaches the engine; a failure comes with the outcome `--json` prints.
pub(crate) async fn hand_over(
    to: &Target,
    engine: &EngineArgs,
    store: &Store,
) -> Result<HandOver, (Loaded, LoadError)> {
    let failed = |target: &'static str, engine: String, e: LoadError| {
        let loaded = Loaded {
            target,
            engine,
            error: Some(e.to_string()),
            ..Loaded::default()
        };
        (loaded, e)
    };
    match to {
        Target::Docker => {
            let docker =
                DockerEngine::from_env().map_err(|e| failed("docker", String::new(), e.into()))?;
            let host = docker.host().to_owned();
            HandOver::docker(docker, store.clone(), engine.via)
                .await
                .map_err(|e| failed("docker", host, e))
        }
        Target::Containerd { namespace } => {
            HandOver::containerd(&engine.containerd_address, namespace, store.clone())
                .await
                .map_err(|e| {
                    let address = format!("unix://{}", engine.containerd_address.display());
                    failed("containerd", address, e)
                })
        }
    }
}

pub(crate) fn print(l: &Loaded) {
    if let Some(why) = &l.relay_failed {
        note!(
            "warning: the engine could not pull the image from cudaimg's relay on 127.0.0.1 \
             ({why}); it was loaded as an archive instead (`--load-via archive` goes that way \
             at once)"
        );
    }
    let what = match l.target {
        "containerd" => "containerd",
        "podman" => "Podman",
        _ => "the Docker Engine",
    };
    emit(&format!(
        "loaded {} into {what} at {} ({} store, by {}; image ID {})",
        l.name.as_deref().unwrap_or("(untagged)"),
        l.engine,
        l.store,
        l.route,
        l.image_id
    ));
}
