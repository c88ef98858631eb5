//! `cudaimg login HOST [-u USER] [--password-stdin]` and `cudaimg logout HOST`: store and
//! remove a registry credential where `docker login` does (docker's `config.json`, or the
//! credential helper it names), so cudaimg, docker, skopeo and containerd's tools all find
//! it. The password comes from stdin (`--password-stdin`) or, on a terminal, a prompt that
//! does not echo; never an argument (arguments show in `ps` and shell history), and it is
//! never printed. `--creds USER:PASS` is the one-run alternative (see `Cli::creds`).

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};

use crate::error::Error;
use cudaimg_registry::credentials::{self, Erased, Stored};

use super::{emit, emit_json, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The registry, as image references name it: `docker.io`, `nvcr.io`, `registry.corp.example:5000`
    #[arg(value_name = "HOST")]
    host: String,
    /// The user name [default: asked on a terminal]
    #[arg(short, long, value_name = "USER")]
    username: Option<String>,
    /// Read the password (or token) from stdin [default: asked on a terminal, not echoed]
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The registry whose credential is removed, as image references name it
    #[arg(value_name = "HOST")]
    host: String,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    host: &'a str,
    username: &'a str,
    stored_in: String,
}

#[derive(serde::Serialize)]
struct LogoutReport<'a> {
    host: &'a str,
    /// False when there was no credential to remove.
    removed: bool,
    from: String,
}

const USAGE: &str =
    "`printf '%s' \"$TOKEN\" | cudaimg login HOST -u USER --password-stdin`, or run \
                     `cudaimg login HOST` on a terminal to be asked";

fn host_of(raw: &str) -> Result<String, Error> {
    cudaimg_oci::reference::registry_host(raw).map_err(|why| {
        Error::Usage(format!(
            "`{}` is not a registry host ({why})\nhint: name it as image references do, with no \
             scheme or path: `docker.io`, `nvcr.io`, `registry.corp.example:5000`",
            cudaimg_oci::text::shown(raw)
        ))
    })
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let host = host_of(&args.host)?;
    let terminal = std::io::stdin().is_terminal();
    let username = match &args.username {
        Some(u) => u.clone(),
        None if terminal && !args.password_stdin => ask(&format!("Username for {host}: "))?,
        None => {
            return Err(Error::Usage(format!(
                "no user name (`-u USER`)\nhint: {USAGE}"
            )))
        }
    };
    let password = if args.password_stdin {
        let mut password = String::new();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut password)
            .map_err(|e| Error::Setup(format!("cannot read the password from stdin: {e}")))?;
        // `echo` adds a newline; docker strips trailing ones the same way.
        password.trim_end_matches(['\n', '\r']).to_owned()
    } else if terminal {
        rpassword::prompt_password(format!("Password for {username}@{host}: "))
            .map_err(|e| Error::Setup(format!("cannot read the password: {e}")))?
    } else {
        return Err(Error::Usage(format!(
            "stdin is not a terminal, so the password cannot be asked for, and it is never an \
             argument (arguments show in `ps` and shell history)\nhint: {USAGE}"
        )));
    };
    if password.is_empty() || username.is_empty() {
        return Err(Error::Usage(format!(
            "an empty user name or password\nhint: {USAGE}"
        )));
    }
    if username.contains(':') || username.chars().any(char::is_control) {
        return Err(Error::Usage(format!(
            "the user name `{}` has a `:` or a control character: docker's config.json keeps \
             `user:password`, split at the first `:`, so it would read back as another user\n\
             hint: use the registry's token user name, or pass the credential for one run with \
             `--creds`",
            cudaimg_oci::text::shown(&username)
        )));
    }
    let stored = credentials::store(&host, &username, &password)
        .map_err(|why| Error::Setup(format!("cannot store the credential for {host}: {why}")))?;
    let stored_in = match stored {
        Stored::File(p) => p.display().to_string(),
        Stored::Helper(h) => format!("docker-credential-{h}"),
    };
    if ctx.json {
        emit_json(&Report {
            host: &host,
            username: &username,
            stored_in,
        });
    } else {
        emit(&format!(
            "stored the credential of {} for {host} in {stored_in}",
            cudaimg_oci::text::shown(&username)
        ));
    }
    Ok(())
}

/// One line from the terminal, after `prompt` on stderr.
fn ask(prompt: &str) -> Result<String, Error> {
    let mut err = std::io::stderr();
    let _ = err.write_all(prompt.as_bytes()).and_then(|()| err.flush());
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::Setup(format!("cannot read the user name: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

pub fn logout(ctx: &Ctx, args: &LogoutArgs) -> Result<(), Error> {
    let host = host_of(&args.host)?;
    let erased = credentials::erase(&host)
        .map_err(|why| Error::Setup(format!("cannot remove the credential for {host}: {why}")))?;
    let (removed, from) = match erased {
        Erased::File(p) => (true, p.display().to_string()),
        Erased::Helper(h) => (true, format!("docker-credential-{h}")),
        Erased::Nothing(p) => (false, p.display().to_string()),
    };
    if ctx.json {
        emit_json(&LogoutReport {
            host: &host,
            removed,
            from,
        });
    } else if removed {
        emit(&format!("removed the credential for {host} from {from}"));
    } else {
        emit(&format!(
            "no credential for {host} in {from}; nothing changed"
        ));
    }
    Ok(())
}
