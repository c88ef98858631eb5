//! `cudaimg rm REF...`: remove names from the store. Blobs stay until `cudaimg gc`.

use crate::error::Error;
use cudaimg_oci::platform::Platform;

use super::{emit, emit_json, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stored images to remove
    #[arg(required = true, value_name = "REFERENCE")]
    references: Vec<String>,
    /// Remove only this platform's entry [default: every platform]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let want: Option<Platform> = args.platform.as_deref().map(str::parse).transpose()?;
    let names = args
        .references
        .iter()
        .map(|r| config.canonicalize(r).map(|c| c.image.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let store = ctx.existing_store()?;
    let removed = store.update_index(|idx| {
        let before = idx.manifests.len();
        idx.manifests.retain(|e| {
            let named = e.ref_name().is_some_and(|n| names.iter().any(|x| x == n));
            let platform_ok = match (&want, &e.platform) {
                (None, _) => true,
                (Some(w), Some(p)) => w.matches(&p.to_platform()),
                (Some(_), None) => false,
            };
            !(named && platform_ok)
        });
        before - idx.manifests.len()
    })?;
    if removed == 0 {
        return Err(Error::NotInStore(names.join(", ")));
    }
    if ctx.json {
        emit_json(&serde_json::json!({"removed": removed}));
    } else {
        emit(&format!(
            "removed {removed} entries; `cudaimg gc` frees the blobs no image uses"
        ));
    }
    Ok(())
}
