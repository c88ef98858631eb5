//! `cudaimg lock REF...`: resolve references and pin them in the lockfile.

use crate::error::Error;
use cudaimg_config::lockfile::Lockfile;

use super::pull::LockArgs;
use super::{emit, emit_json, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// References to lock, e.g. `nvidia/cuda:12.4.1-runtime-ubuntu22.04`
    #[arg(required = true, value_name = "REFERENCE")]
    references: Vec<String>,
    #[command(flatten)]
    lock: LockArgs,
    /// Accept a digest that only mirrors vouch for when the official registry is out of
    /// reach (by default `lock` requires the official registry: the lockfile is what CI trusts)
    #[arg(long)]
    pub trust_mirrors: bool,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let mut lockfile = Lockfile::load(&args.lock.lockfile, true)?;
    let names = args
        .references
        .iter()
        .map(|r| config.canonicalize(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::with_capacity(names.len());
    for name in &names {
        let reporter = ctx.reporter();
        let locked = match ctx.session.lock(name, reporter.as_ref()).await {
            Ok(locked) => locked,
            // `lock` requires the official registry unless `--trust-mirrors`: the error
            // names that, not the `pull --require-upstream` the user never gave.
            Err(cudaimg_transfer::PullError::UpstreamRequired { reference, source })
                if !args.trust_mirrors =>
            {
                return Err(Error::LockUnconfirmed { reference, source });
            }
            Err(e) => return Err(e.into()),
        };
        for w in &locked.warnings {
            note!("warning: {w}");
        }
        lockfile
            .images
            .insert(locked.reference.clone(), locked.pin.clone());
        results.push(locked);
    }
    // Written once, after every reference resolved: a failure changes nothing.
    lockfile.save()?;
    if ctx.json {
        emit_json(&results);
    } else {
        for r in &results {
            emit(&format!(
                "locked {} to {} ({}) in {}",
                r.reference,
                r.pin.digest,
                super::words::counted(r.pin.platforms.len(), "platform"),
                lockfile.path.display()
            ));
        }
    }
    Ok(())
}
