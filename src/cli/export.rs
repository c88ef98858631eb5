//! `cudaimg export REF -o FILE`: a stored image as a file for `docker load` or skopeo.

use std::io::Write;
use std::path::PathBuf;

use crate::error::Error;
use cudaimg_oci::reference::ImageRef;
use cudaimg_transfer::archive::{self, Format};

use super::{emit, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    image: super::ImageArgs,
    /// Where to write; `-` for stdout
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

/// The name Docker shows for a stored image: `nvidia/cuda:TAG`, none for digest-only names.
pub(crate) fn repo_tag(name: &str) -> Option<String> {
    ImageRef::parse(name)
        .ok()
        .filter(|r| r.tag.is_some())
        .map(|r| r.without_digest().docker_form())
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let (name, want) = args.image.resolve(config)?;
    let store = ctx.existing_store()?;
    let image = store
        .image(&name, want.as_ref())?
        .ok_or_else(|| Error::NotInStore(name.clone()))?;
    let tag = repo_tag(&name);
    let (format, output) = (Format::from(args.format), args.output.clone());
    tokio::task::spawn_blocking(move || -> Result<(), Error> {
        if output.as_os_str() == "-" {
            let out = std::io::stdout().lock();
            archive::write(
                &store,
                &image,
                tag.as_deref(),
                format,
                std::io::BufWriter::new(out),
            )?;
            return Ok(());
        }
        // Written beside the target and renamed: a failed export leaves no half file.
        let tmp = output.with_extension("cudaimg-partial");
        let file = fs_err::File::create(&tmp).map_err(cudaimg_store::StoreError::from)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let res = archive::write(&store, &image, tag.as_deref(), format, &mut out)
            .and_then(|()| out.flush().map_err(Into::into));
        if let Err(e) = res {
            let _ = fs_err::remove_file(&tmp);
            return Err(e.into());
        }
        fs_err::rename(&tmp, &output).map_err(cudaimg_store::StoreError::from)?;
        Ok(())
    })
    .await
    .map_err(|e| Error::Setup(format!("export was interrupted: {e}")))??;
    if args.output.as_os_str() != "-" {
        emit(&format!("exported {name} to {}", args.output.display()));
    }
    Ok(())
}
