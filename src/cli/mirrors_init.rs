//! `cudaimg mirrors init [--force]`: writes a starter mirrors.toml (at `--config`, else
//! `./mirrors.toml`), with the `--mirror` flags given as its mirrors and commented
//! examples of the rest. An existing file is never overwritten without `--force`.

use std::io::Write as _;
use std::path::PathBuf;

use crate::error::Error;
use cudaimg_config::Config;

use super::{emit, emit_json, Ctx};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Replace an existing file
    #[arg(long)]
    force: bool,
}

#[derive(serde::Serialize)]
struct Written<'a> {
    path: &'a str,
    mirrors: usize,
}

pub fn run(ctx: &Ctx, args: &InitArgs) -> Result<(), Error> {
    let path = ctx
        .session
        .settings
        .config_path
        .clone()
        .unwrap_or_else(|| PathBuf::from("mirrors.toml"));
    // The flags, checked and grouped by registry exactly as a run would read them.
    let mut flags = Config::default();
    flags.add_mirror_flags(&ctx.session.settings.mirrors)?;
    let text = starter(&flags);
    // What is written must load: a starter that does not is a bug here, not the user's.
    Config::parse(&text, &path)?;
    let mut open = fs_err::OpenOptions::new();
    open.write(true);
    if args.force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let mut file = open.open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Usage(format!(
                "{} exists already; nothing was written\nhint: keep it, or replace it: \
                 `cudaimg mirrors init --force`",
                path.display()
            ))
        } else {
            Error::Setup(format!("cannot write {}: {e}", path.display()))
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::Setup(format!("cannot write {}: {e}", path.display())))?;
    let count = ctx.session.settings.mirrors.len();
    if ctx.json {
        emit_json(&Written {
            path: &path.display().to_string(),
            mirrors: count,
        });
    } else {
        emit(&format!(
            "wrote {} ({count} mirror{}); next: `cudaimg mirrors check` ranks them, `cudaimg pull \
             nvidia/cuda:TAG` uses them",
            path.display(),
            if count == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}

/// The file: Docker Hub always (with the flags' mirrors, else commented examples), and each
/// other registry a flag named.
fn starter(flags: &Config) -> String {
    let mut text = String::from(
        "# cudaimg's mirrors (written by `cudaimg mirrors init`; README, section \"mirrors.toml\").\n\
         # Per registry, as image references name it: its mirrors are tried in order; the\n\
         # official `endpoint` stays the authority on which digest a tag names, and is the\n\
         # last fallback. `capabilities = [\"pull\"]` limits a mirror to content by digest.\n",
    );
    let hub = flags.registry("docker.io");
    let mut registries: Vec<(String, cudaimg_config::RegistryConfig)> =
        vec![("docker.io".into(), hub)];
    for (host, reg) in flags.registries() {
        if host != "docker.io" {
            registries.push((host.to_owned(), reg.clone()));
        }
    }
    for (host, reg) in registries {
        text.push_str(&format!(
            "\n[registries.\"{host}\"]\nendpoint = \"{}\"\nmirrors = [\n",
            reg.endpoint.url.as_str().trim_end_matches('/')
        ));
        for m in &reg.mirrors {
            text.push_str(&format!(
                "  {{ url = \"{}\" }},\n",
                m.url.as_str().trim_end_matches('/')
            ));
        }
        if host == "docker.io" {
            text.push_str(
                "  # { url = \"https://mirror.gcr.io\" },\n  \
                 # { url = \"http://10.0.0.5:5000\" },  # a registry on your network, plain HTTP\n",
            );
        }
        text.push_str("]\n");
    }
    text
}
