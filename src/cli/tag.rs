//! `cudaimg tag SRC DST`: another name for a stored image, e.g. a team's
//! `registry.corp/base/cuda:12.4` for a pulled `nvidia/cuda` tag.

use crate::error::Error;

use super::{emit, emit_json, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A stored image
    source: String,
    /// The new name (a tag, not a digest)
    target: String,
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let source = config.canonicalize(&args.source)?.image.to_string();
    let target = config.canonicalize(&args.target)?.image;
    if target.digest.is_some() {
        return Err(Error::Usage(format!(
            "`{}` names a digest; a tag names an image, a digest is what it is",
            args.target
        )));
    }
    let target = target.to_string();
    let store = ctx.existing_store()?;
    let added = store.tag(&source, &target)?;
    if added == 0 {
        return Err(Error::NotInStore(source));
    }
    if ctx.json {
        emit_json(&serde_json::json!({"source": source, "target": target, "platforms": added}));
    } else {
        emit(&format!("tagged {source} as {target} ({added} platforms)"));
    }
    Ok(())
}
