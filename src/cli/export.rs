//! `cudaimg export REF -o FILE`: a stored image as a file for `docker load` or skopeo.
//!
//! A whole multi-platform image (`pull --all-platforms`) goes into an `oci-archive` whole:
//! its index and every child, so `skopeo copy --all oci-archive:…` reads the same index
//! digest back. A docker-archive holds one platform (`--platform`, default the host's), and
//! `export` says so; `--platform` with `oci-archive` writes that one platform, as before.
//!
//! Where the archive goes (a file replaced atomically, a device or FIFO written through,
//! stdout whose reader may leave early) is [`super::output`]'s business.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Error;
use cudaimg_oci::reference::ImageRef;
use cudaimg_transfer::archive::{self, Format};

use super::output::{FinishError, Output};
use super::{emit, emit_json, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    image: super::ImageArgs,
    /// Where to write: a file (replaced only once the whole archive is written), a device or
    /// FIFO (written through), or `-` for stdout (then `--json` prints nothing)
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "docker-archive")]
    format: ArchiveFormat,
}

/// Which archive to write (the library's [`Format`], as a command-line choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ArchiveFormat {
    /// `docker load` / `docker-archive:` (with the OCI layout inside, as Docker 25 writes)
    DockerArchive,
    /// `oci-archive:`: an OCI image layout in a tar
    OciArchive,
}

impl From<ArchiveFormat> for Format {
    fn from(f: ArchiveFormat) -> Self {
        match f {
            ArchiveFormat::DockerArchive => Format::DockerArchive,
            ArchiveFormat::OciArchive => Format::OciArchive,
        }
    }
}

/// What `export --json` prints.
#[derive(Debug, Serialize)]
struct Exported {
    name: String,
    digest: String,
    platform: String,
    format: &'static str,
    output: PathBuf,
    bytes: u64,
}

/// The name Docker shows for a stored image: `nvidia/cuda:TAG`, none for digest-only names.
pub(crate) fn repo_tag(name: &str) -> Option<String> {
    ImageRef::parse(name)
        .ok()
        .filter(|r| r.tag.is_some())
        .map(|r| r.without_digest().docker_form())
}

/// A file name for the image, for a hint when `-o` names a directory:
/// `cuda-12.4.1-runtime-ubuntu22.04.tar`.
fn file_name(repo_tag: Option<&str>, format: Format) -> String {
    let stem = repo_tag
        .and_then(|t| t.rsplit('/').next())
        .map_or_else(|| "image".to_owned(), |t| t.replace(':', "-"));
    match format {
        Format::DockerArchive => format!("{stem}.tar"),
        Format::OciArchive => format!("{stem}.oci.tar"),
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let (name, want) = args.image.resolve(config)?;
    let store = ctx.existing_store()?;
    let whole = store
        .list()?
        .iter()
        .any(|e| e.is_index && e.name.as_deref() == Some(name.as_str()));
    if whole && want.is_none() && args.format == ArchiveFormat::OciArchive {
        return export_set(ctx, store, name, args).await;
    }
    let image = store
        .image(&name, want.as_ref())?
        .ok_or_else(|| Error::NotInStore(name.clone()))?;
    if whole && args.format == ArchiveFormat::DockerArchive {
        note!(
            "note: {name} is a multi-platform image; a docker-archive holds one platform, so this \
             one is {} (choose with `--platform`; `--format oci-archive` writes every platform)",
            image.platform()
        );
    }
    let tag = repo_tag(&name);
    // Refused here, before anything is written: a directory, a socket, a missing parent.
    let out = Output::create(&args.output, &file_name(tag.as_deref(), args.format.into()))?;
    let (format, info) = (
        Format::from(args.format),
        (image.digest.to_string(), image.platform()),
    );
    let bytes = write_archive(out, move |out| {
        archive::write(&store, &image, tag.as_deref(), format, out)
    })
    .await?;
    if args.output.as_os_str() == "-" {
        return Ok(());
    }
    if ctx.json {
        emit_json(&Exported {
            name,
            digest: info.0,
            platform: info.1.to_string(),
            format: match format {
                Format::DockerArchive => "docker-archive",
                Format::OciArchive => "oci-archive",
            },
            output: args.output,
            bytes,
        });
    } else {
        emit(&format!("exported {name} to {}", args.output.display()));
    }
    Ok(())
}

/// Writes an archive into `out` on a blocking thread (the writer reads blob files), then
/// commits `out` only if the whole archive was written; the bytes written.
async fn write_archive(
    mut out: Output,
    write: impl FnOnce(&mut Output) -> Result<(), cudaimg_store::StoreError> + Send + 'static,
) -> Result<u64, Error> {
    tokio::task::spawn_blocking(move || -> Result<u64, Error> {
        let written = write(&mut out);
        out.finish(written).map_err(|e| match e {
            FinishError::Output(e) => Error::from(e),
            FinishError::Producer(e) => Error::from(e),
        })
    })
    .await
    .map_err(|e| Error::Setup(format!("export was interrupted: {e}")))?
}

/// `export --format oci-archive` of a whole multi-platform image: the index and every child.
async fn export_set(
    ctx: &Ctx,
    store: cudaimg_store::Store,
    name: String,
    args: Args,
) -> Result<(), Error> {
    let set = store
        .image_set(&name)?
        .ok_or_else(|| Error::NotInStore(name.clone()))?;
    let tag = repo_tag(&name);
    let out = Output::create(&args.output, &file_name(tag.as_deref(), Format::OciArchive))?;
    let digest = set
        .top_digest()
        .map(ToString::to_string)
        .unwrap_or_default();
    let platforms: Vec<String> = set
        .children
        .iter()
        .filter_map(|c| c.platform.as_ref().map(ToString::to_string))
        .collect();
    let bytes = write_archive(out, move |out| {
        archive::write_set(&store, &set, tag.as_deref(), out)
    })
    .await?;
    if args.output.as_os_str() == "-" {
        return Ok(());
    }
    if ctx.json {
        emit_json(&serde_json::json!({
            "name": name,
            "digest": digest,
            "platform": "all",
            "platforms": platforms,
            "format": "oci-archive",
            "output": args.output,
            "bytes": bytes,
        }));
    } else {
        emit(&format!(
            "exported {name} ({}) to {}",
            platforms.join(", "),
            args.output.display()
        ));
    }
    Ok(())
}
