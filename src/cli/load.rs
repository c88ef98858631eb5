//! `cudaimg load REF`: hand a stored image to the Docker Engine under its official name.

use crate::error::Error;
use cudaimg_docker::DockerEngine;
use cudaimg_oci::platform::Platform;
use cudaimg_store::Store;
use cudaimg_transfer::handover::{self as docker, Loaded};

use super::export::repo_tag;
use super::{emit, emit_json, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    image: super::ImageArgs,
}

pub async fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let (name, want) = args.image.resolve(config)?;
    let store = ctx.existing_store()?;
    let loaded = load(&store, &name, want.as_ref()).await?;
    if ctx.json {
        emit_json(&loaded);
    } else {
        print(&loaded);
    }
    Ok(())
}

/// Loads `name` (for `platform`) from the store into the engine `DOCKER_HOST` names.
pub(crate) async fn load(
    store: &Store,
    name: &str,
    platform: Option<&Platform>,
) -> Result<Loaded, Error> {
    let image = store
        .image(name, platform)?
        .ok_or_else(|| Error::NotInStore(name.to_owned()))?;
    let engine = DockerEngine::from_env().map_err(docker::LoadError::from)?;
    Ok(docker::hand_over(&engine, store, &image, repo_tag(name)).await?)
}

/// With `load` (`pull --load`), a hand-over to the engine `DOCKER_HOST` names that runs
/// while the pull downloads; the Engine is reached before anything is downloaded.
pub(crate) async fn streaming(
    load: bool,
    store: &Store,
) -> Result<Option<docker::Streaming>, Error> {
    if !load {
        return Ok(None);
    }
    let engine = DockerEngine::from_env().map_err(docker::LoadError::from)?;
    Ok(Some(docker::Streaming::new(engine, store.clone()).await?))
}

/// Ends a streaming hand-over with how the pull went; `None` when there was none, or the
/// pull chose no image.
pub(crate) async fn streamed<T, E: std::fmt::Display>(
    streaming: Option<docker::Streaming>,
    pulled: &Result<T, E>,
) -> Option<Result<Loaded, docker::LoadError>> {
    let pulled = pulled.as_ref().map(|_| ()).map_err(ToString::to_string);
    streaming?.finish(pulled).await
}

pub(crate) fn print(l: &Loaded) {
    if let Some(why) = &l.relay_failed {
        note!(
            "warning: the Docker Engine could not pull the image from cudaimg's relay on \
             127.0.0.1 ({why}); it was loaded as an archive instead (`CUDAIMG_LOAD_VIA=archive` \
             goes that way at once)"
        );
    }
    emit(&format!(
        "loaded {} into the Docker Engine at {} (image ID {})",
        l.name.as_deref().unwrap_or("(untagged)"),
        l.engine,
        l.image_id
    ));
}
