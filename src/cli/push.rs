//! `cudaimg push SRC DEST`: a stored image to any registry, byte-exact (the digest at DEST is
//! the store's), resumable, with cross-repository mounts. Also the options and the printing
//! that `copy` shares.

use std::sync::Arc;
use std::time::Instant;

use crate::error::Error;
use cudaimg_oci::platform::Platform;
use cudaimg_oci::reference::ImageRef;
use cudaimg_transfer::{Destination, PushOptions, PushReport, DEFAULT_JOBS};

use super::{emit, emit_json, human_bytes, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A stored image, e.g. `nvidia/cuda:12.4.1-runtime-ubuntu22.04`
    #[arg(value_name = "SRC")]
    source: String,
    /// Where to push: a full reference, e.g. `registry.corp.example:5000/base/cuda:12.4.1`
    #[arg(value_name = "DEST")]
    destination: String,
    /// Which platform, when the store holds several single-platform entries for the name
    /// [default: a multi-arch entry, else the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = crate::cli::known_platform)]
    platform: Option<String>,
    #[command(flatten)]
    pub send: SendArgs,
}

/// Options of `push` and `copy`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Blobs to upload at once
    #[arg(short, long, default_value_t = DEFAULT_JOBS, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Largest request body: larger blobs go in chunks of this size (e.g. `50M` behind a
    /// proxy with a 100 MB body limit); a cut costs at most one chunk
    #[arg(long, value_name = "SIZE", default_value = "128M", value_parser = parse_size)]
    pub chunk_size: u64,
    /// A repository of the destination registry that may hold the image's blobs already;
    /// they are mounted from it instead of uploaded (repeatable)
    #[arg(long, value_name = "REPO")]
    pub mount_from: Vec<String>,
}

impl SendArgs {
    pub fn options(&self) -> PushOptions {
        PushOptions {
            jobs: usize::from(self.jobs),
            chunk_size: self.chunk_size,
            mount_from: self.mount_from.clone(),
            ..PushOptions::default()
        }
    }
}

/// `123`, `64K`, `32M`, `1G` (powers of 1024; a trailing `B`/`iB` is allowed).
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write e.g. `32M`, `512K` or `1G`"))?;
    let bytes = n
        .checked_mul(mult)
        .filter(|b| *b >= 1 << 10)
        .ok_or_else(|| format!("`{s}` is too small a size: at least 1K"))?;
    Ok(bytes)
}

/// The destination, as a full reference (`HOST/REPO[:TAG|@DIGEST]`).
pub fn destination(
    config: &cudaimg_config::Config,
    input: &str,
    http: &cudaimg_registry::HttpClients,
) -> Result<Destination, Error> {
    Ok(Destination::new(config, http, ImageRef::parse(input)?))
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let name = config.canonicalize(&args.source)?.image.to_string();
    let platform: Option<Platform> = args.platform.as_deref().map(str::parse).transpose()?;
    let dest = destination(config, &args.destination, ctx.session.http()?)?;
    let started = Instant::now();
    let reporter: Arc<dyn cudaimg_oci::progress::Reporter> = Arc::from(ctx.reporter());
    let report = cudaimg_transfer::push(
        ctx.store()?,
        &name,
        platform.as_ref(),
        &dest,
        &args.send.options(),
        reporter.clone(),
    )
    .await;
    drop(reporter);
    print(ctx, &report?, started.elapsed().as_secs_f64());
    Ok(())
}

/// Prints a push or copy report.
pub fn print(ctx: &Ctx, r: &PushReport, secs: f64) {
    for w in &r.warnings {
        note!("warning: {w}");
    }
    if ctx.json {
        emit_json(r);
        return;
    }
    let f = &r.destination_figures;
    emit(&r.destination);
    emit(&format!("  digest:   {}", r.digest));
    if !r.child_manifests.is_empty() {
        emit(&format!(
            "  platforms: {} ({} manifests and the index)",
            r.platforms.join(", "),
            r.child_manifests.len()
        ));
    }
    emit(&format!(
        "  blobs:    {} uploaded, {} mounted, {} already there ({} in all)",
        f.uploaded,
        f.mounted,
        f.skipped,
        human_bytes(r.total_bytes)
    ));
    emit(&format!(
        "  sent:     {} in {secs:.1}s",
        human_bytes(r.bytes_uploaded)
    ));
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32M"), Ok(32 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }
}
