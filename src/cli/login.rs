//! `cudaimg login HOST -u USER --password-stdin`: stores a registry credential where
//! `docker login` does (docker's `config.json`, or the credential helper it names), so
//! cudaimg, docker, skopeo and containerd's tools all find it. The password is read from
//! stdin only (never an argument: arguments show in `ps` and shell history) and never
//! printed. `--creds USER:PASS` is the one-run alternative (see `Cli::creds`).

use std::io::Read as _;

use crate::error::Error;
use cudaimg_registry::credentials::{self, Stored};

use super::{emit, emit_json, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The registry, as image references name it: `docker.io`, `nvcr.io`, `registry.corp.example:5000`
    #[arg(value_name = "HOST")]
    host: String,
    /// The user name
    #[arg(short, long, value_name = "USER")]
    username: String,
    /// Read the password (or token) from stdin
    #[arg(long)]
    password_stdin: bool,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    host: &'a str,
    username: &'a str,
    stored_in: String,
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let host = cudaimg_oci::reference::registry_host(&args.host).map_err(|why| {
        Error::Usage(format!(
            "`{}` is not a registry host ({why})\nhint: name it as image references do, with no \
             scheme or path: `docker.io`, `nvcr.io`, `registry.corp.example:5000`",
            cudaimg_oci::text::shown(&args.host)
        ))
    })?;
    if !args.password_stdin {
        return Err(Error::Usage(
            "the password is read from stdin only (an argument would show in `ps` and shell \
             history)\nhint: `printf '%s' \"$TOKEN\" | cudaimg login HOST -u USER --password-stdin`"
                .into(),
        ));
    }
    let mut password = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut password)
        .map_err(|e| Error::Setup(format!("cannot read the password from stdin: {e}")))?;
    // `echo` adds a newline; docker strips trailing ones the same way.
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() || args.username.is_empty() {
        return Err(Error::Usage(
            "an empty user name or password\nhint: `printf '%s' \"$TOKEN\" | cudaimg login HOST \
             -u USER --password-stdin`"
                .into(),
        ));
    }
    let stored = credentials::store(&host, &args.username, password)
        .map_err(|why| Error::Setup(format!("cannot store the credential for {host}: {why}")))?;
    let stored_in = match stored {
        Stored::File(p) => p.display().to_string(),
        Stored::Helper(h) => format!("docker-credential-{h}"),
    };
    if ctx.json {
        emit_json(&Report {
            host: &host,
            username: &args.username,
            stored_in,
        });
    } else {
        emit(&format!(
            "stored the credential of {} for {host} in {stored_in}",
            args.username
        ));
    }
    Ok(())
}
