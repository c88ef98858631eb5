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
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = crate::cli::known_platform)]
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
    let mut removed = 0;
    for name in &names {
        removed += store.untag(name, want.as_ref())?;
    }
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
