//! `cudaimg mirrors check [--tag REF] [--emit daemon-json|containerd] [--out DIR]`: measures
//! and ranks each configured registry's endpoints, and can write them as Docker's or
//! containerd's configuration.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Error;
use cudaimg_mirrors::emit::{self, Emitted};
use cudaimg_mirrors::sources::Role;
use cudaimg_mirrors::{self as m, Options, RegistryCheck};
use cudaimg_oci::platform::Platform;

use super::{emit, emit_json, human_bytes, Ctx};

/// The known tag: small, and on Docker Hub and every mirror of it.
pub const DEFAULT_TAG: &str = "docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Measure every configured endpoint (reachable, latency, throughput, staleness) and rank them
    Check(CheckArgs),
    /// Write a starter mirrors.toml (at `--config`, else the user-wide file; `--here`: ./mirrors.toml) with the `--mirror` URLs given
    Init(super::mirrors_init::InitArgs),
    /// Add a mirror to the mirrors.toml in use (comments and layout kept)
    Add(super::mirrors_add::AddArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EmitFormat {
    /// Docker's `daemon.json` keys (`registry-mirrors`: Docker Hub only)
    DaemonJson,
    /// containerd's `hosts.toml`, one per registry
    Containerd,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The known tag whose digest and content the endpoints of its registry are checked with
    #[arg(long, value_name = "REFERENCE", default_value = DEFAULT_TAG)]
    tag: String,
    /// Platform of the image whose blob is measured [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = crate::cli::known_platform)]
    platform: Option<String>,
    /// The blob measured is the image's largest layer up to this many bytes, else its config
    #[arg(long, value_name = "BYTES", default_value_t = 8 * 1024 * 1024)]
    max_blob_bytes: u64,
    /// Print the ranked, usable mirrors as a daemon configuration instead of the report
    #[arg(long, value_enum, value_name = "FORMAT")]
    emit: Option<EmitFormat>,
    /// With `--emit`: write the file(s) under DIR (`DIR/daemon.json`, `DIR/<registry>/hosts.toml`)
    #[arg(long, value_name = "DIR", requires = "emit")]
    out: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report<'a> {
    tag: String,
    registries: &'a [RegistryCheck],
    #[serde(skip_serializing_if = "Option::is_none")]
    emitted: Option<&'a [Emitted]>,
}

pub async fn run(ctx: &Ctx, cmd: &Command) -> Result<(), Error> {
    let args = match cmd {
        Command::Check(args) => args,
        Command::Init(args) => return super::mirrors_init::run(ctx, args),
        Command::Add(args) => return super::mirrors_add::run(ctx, args),
    };
    let config = ctx.config()?;
    if config.path.is_none() && ctx.session.settings.mirrors.is_empty() {
        return Err(Error::Usage(
            "no mirrors.toml found (`--config`, CUDAIMG_CONFIG, ./mirrors.toml, \
             $XDG_CONFIG_HOME/cudaimg/mirrors.toml): there are no mirrors to check"
                .into(),
        ));
    }
    let tag = config.canonicalize(&args.tag)?.image;
    let platform = match &args.platform {
        Some(p) => p.parse()?,
        None => Platform::host(),
    };
    let http = ctx.session.http()?;
    let opts = Options {
        tag: tag.clone(),
        max_blob_bytes: args.max_blob_bytes,
        platform,
    };
    let checks = m::check(config, http, &opts).await;
    let emitted: Option<Vec<Emitted>> = args.emit.map(|f| match f {
        EmitFormat::DaemonJson => vec![emit::daemon_json(&checks)],
        EmitFormat::Containerd => emit::containerd(&checks),
    });
    if let (Some(files), Some(dir)) = (&emitted, &args.out) {
        for f in files {
            let rel = match args.emit {
                Some(EmitFormat::DaemonJson) => PathBuf::from("daemon.json"),
                _ => PathBuf::from(
                    f.path
                        .strip_prefix("/etc/containerd/certs.d/")
                        .unwrap_or(&f.path),
                ),
            };
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                fs_err::create_dir_all(parent).map_err(|e| Error::Setup(e.to_string()))?;
            }
            fs_err::write(&path, &f.content).map_err(|e| Error::Setup(e.to_string()))?;
            note!("wrote {} (for {})", path.display(), f.path);
        }
    }
    if let Some(files) = &emitted {
        for f in files {
            for o in &f.omitted {
                note!("left out of {}: {o}", f.path);
            }
        }
    }
    if ctx.json {
        emit_json(&Report {
            tag: tag.to_string(),
            registries: &checks,
            emitted: emitted.as_deref(),
        });
        return Ok(());
    }
    match (&emitted, &args.out) {
        (Some(files), None) => {
            for f in files {
                if files.len() > 1 || args.emit == Some(EmitFormat::Containerd) {
                    emit(&format!("# {}", f.path));
                }
                emit(f.content.trim_end());
            }
            if args.emit == Some(EmitFormat::DaemonJson) {
                note!(
                    "merge these keys into /etc/docker/daemon.json, then {}",
                    cudaimg_host::probe::restart_docker()
                );
            }
        }
        (Some(_), Some(_)) => {}
        (None, _) => print(&checks),
    }
    Ok(())
}

fn print(checks: &[RegistryCheck]) {
    for c in checks {
        let mut head = c.registry.clone();
        if let Some(t) = &c.tag {
            head.push_str(&format!(" (known tag {t}"));
            if let Some(d) = &c.official_digest {
                head.push_str(&format!(", official digest {d}"));
            }
            head.push(')');
        }
        emit(&head);
        if let Some(b) = &c.blob {
            emit(&format!(
                "  blob measured: {} ({})",
                b.digest,
                human_bytes(b.size)
            ));
        }
        for e in &c.endpoints {
            let role = match e.role {
                Role::Mirror => "mirror",
                Role::Official => "official",
            };
            let latency = e
                .latency_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"));
            let speed = match (&e.blob_bytes_per_sec, &e.blob_error) {
                (Some(bps), _) => format!("{}/s", human_bytes(*bps)),
                (None, Some(_)) => "failed".to_owned(),
                _ => "-".to_owned(),
            };
            emit(&format!(
                "  {:>2}. {:40} {:8} {:>8} {:>12}  {}",
                e.rank, e.url, role, latency, speed, e.tag_state
            ));
            if let Some(err) = &e.error {
                emit(&format!("      unreachable: {err}"));
            }
            if let Some(err) = &e.blob_error {
                emit(&format!("      blob: {err}"));
            }
        }
        for n in &c.notes {
            emit(&format!("  note: {n}"));
        }
    }
}
