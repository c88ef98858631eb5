//! `cudaimg copy SRC DEST`: registry to registry, through the mirrors, with no copy on disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use cudaimg_oci::platform::Platform;
use cudaimg_transfer::{CopyTarget, PlatformChoice, DEFAULT_STALL_SECS};

use super::push::SendArgs;
use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to copy, resolved through mirrors.toml as `pull` does, e.g. `nvidia/cuda:12.4.1-runtime-ubuntu22.04`
    #[arg(value_name = "SRC")]
    source: String,
    /// Where to put it: a full reference, e.g. `registry.corp.example:5000/base/cuda:12.4.1`
    #[arg(value_name = "DEST")]
    destination: String,
    /// Platform to copy from a multi-platform image [default: the host's]
    #[arg(
        long,
        value_name = "OS/ARCH[/VARIANT]",
        value_parser = crate::cli::known_platform,
        conflicts_with = "all_platforms"
    )]
    platform: Option<String>,
    /// Copy every platform and the index, byte-exact (the digest at DEST is the index's)
    #[arg(long)]
    all_platforms: bool,
    /// Seconds without a byte before a download is resumed from another source
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_STALL_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    stall_timeout: u64,
    /// Fail instead of trusting mirrors for a tag's digest when the official registry is out of reach
    #[arg(long)]
    require_upstream: bool,
    #[command(flatten)]
    send: SendArgs,
}

impl Args {
    /// What the session takes from the arguments: the stall timeout (for manifest requests
    /// as for blobs) and `--require-upstream`.
    pub(crate) fn transfer(&self) -> (Duration, bool) {
        (
            Duration::from_secs(self.stall_timeout),
            self.require_upstream,
        )
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let name = config.canonicalize(&args.source)?;
    let platform = if args.all_platforms {
        PlatformChoice::All
    } else {
        PlatformChoice::One(match &args.platform {
            Some(p) => p.parse()?,
            None => Platform::host(),
        })
    };
    let session = &ctx.session;
    let dest = super::push::destination(config, &args.destination, session.http()?)?;
    let target = CopyTarget {
        input: &args.source,
        name: &name,
        platform,
    };
    let started = Instant::now();
    let reporter: Arc<dyn cudaimg_oci::progress::Reporter> = Arc::from(ctx.reporter());
    let report = session
        .copy(&target, &dest, &args.send.options(), reporter.clone())
        .await;
    drop(reporter);
    super::push::print(ctx, &report?, started.elapsed().as_secs_f64());
    Ok(())
}
