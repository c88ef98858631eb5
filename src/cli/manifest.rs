//! `cudaimg manifest REF` and `cudaimg digest REF`: what a reference names now, resolved
//! exactly as `pull` resolves it (through the mirrors; the official registry the authority
//! on tags, mirrors' agreeing answer only when it is out of reach, with a warning;
//! `--require-upstream` refuses that), without downloading a layer. `manifest` prints the
//! manifest's bytes as served and verified against its digest, byte-exact (no newline
//! added), so `cudaimg manifest REF | sha256sum` is the digest; `digest` prints the digest.

use std::io::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::Error;
use cudaimg_oci::platform::Platform;

use super::{emit, emit_json, output, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A reference, e.g. `nvidia/cuda:12.4.1-base-ubuntu22.04` or `REPO@sha256:…`
    #[arg(value_name = "REFERENCE")]
    reference: String,
    /// The manifest of this platform, chosen from the list or index the reference names
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = crate::cli::known_platform)]
    platform: Option<String>,
    /// Refuse a tag's digest that the official registry did not confirm
    #[arg(long)]
    pub require_upstream: bool,
}

#[derive(Serialize)]
struct Answer<'a> {
    reference: String,
    digest: String,
    media_type: Option<&'a str>,
    resolved_by: cudaimg_transfer::ResolvedBy,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<String>,
    warnings: Vec<String>,
}

/// Which of the two commands.
#[derive(Clone, Copy)]
pub enum Print {
    Manifest,
    Digest,
}

pub async fn run(ctx: &Ctx, args: &Args, print: Print) -> Result<(), Error> {
    let config = ctx.config()?;
    let name = config.canonicalize(&args.reference)?;
    let platform: Option<Platform> = args.platform.as_deref().map(str::parse).transpose()?;
    let reporter = ctx.reporter();
    let sources = ctx.session.sources(&name)?;
    let resolved = ctx
        .session
        .resolve(&sources, &name.image, None, reporter.as_ref())
        .await?;
    let by = resolved.by;
    let manifest = match &platform {
        None => resolved.manifest,
        Some(p) => {
            ctx.session
                .select(&sources, &name.image, resolved, p, None, reporter.as_ref())
                .await?
                .manifest
        }
    };
    drop(reporter);
    let warnings = sources.warnings();
    for w in &warnings {
        note!("warning: {w}");
    }
    match print {
        Print::Manifest => raw(&manifest.bytes),
        Print::Digest if ctx.json => {
            emit_json(&Answer {
                reference: name.image.to_string(),
                digest: manifest.digest.to_string(),
                media_type: manifest.media_type.as_deref(),
                resolved_by: by,
                platform: platform.map(|p| p.to_string()),
                warnings,
            });
            Ok(())
        }
        Print::Digest => {
            emit(manifest.digest.as_str());
            Ok(())
        }
    }
}

/// The bytes on stdout as they are: no newline, no re-encoding.
fn raw(bytes: &[u8]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if output::note_stdout_error(&e) => Ok(()),
        Err(e) => Err(Error::Output(output::OutputError::Io {
            path: PathBuf::from("stdout"),
            source: e,
        })),
    }
}
