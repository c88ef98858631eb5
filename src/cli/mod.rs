//! The command line: argument parsing, the per-command modules, output, and the one place
//! where errors become messages and exit codes.
//!
//! Only this layer prints. stdout carries results (tables, or one JSON document per result
//! under `--json`); stderr carries progress, warnings and errors.

/// `eprintln!` that cannot panic: with stderr closed (`cudaimg pull 2>&1 | head -1`) the
/// message is lost, not the run. (`eprintln!` panics when the write fails; the crate's lints
/// forbid it and `println!`.)
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod build;
mod copy;
mod did_you_mean;
mod doctor;
mod explain;
mod export;
mod gc;
mod images;
mod import;
mod import_archive;
mod inspect;
mod load;
mod lock;
mod login;
mod manifest;
mod mirrors;
mod mirrors_add;
mod mirrors_init;
pub mod output;
mod progress;
mod pull;
mod push;
mod rm;
mod run_config;
mod serve;
mod sync;
mod tag;
mod tags;
mod verify;
mod words;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::{exit, Error};
use cudaimg_config::Config;
use cudaimg_mirrors::sources::chain;
use cudaimg_store::Store;
use cudaimg_transfer::{Session, Settings};

/// Pull NVIDIA CUDA images through mirrors, verified, into a local OCI store.
#[derive(Debug, Parser)]
#[command(name = "cudaimg", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Mirror configuration file [default: ./mirrors.toml, then $`XDG_CONFIG_HOME/cudaimg/mirrors.toml`]
    #[arg(long, global = true, env = cudaimg_static::EnvVars::CUDAIMG_CONFIG, value_name = "PATH")]
    config: Option<PathBuf>,
    /// A mirror to try first, no file needed: `URL` mirrors Docker Hub, `HOST=URL` another
    /// registry (repeatable; before mirrors.toml's, with the same trust rules)
    #[arg(long = "mirror", global = true, value_name = "[HOST=]URL")]
    mirrors: Vec<String>,
    /// A registry credential for this run, sent to every endpoint but the configured mirrors
    /// (visible in `ps`: prefer `cudaimg login`, which stores it as docker does)
    #[arg(long, global = true, value_name = "USER:PASS")]
    creds: Option<String>,
    /// The local OCI image layout [default: $`XDG_DATA_HOME/cudaimg`]
    #[arg(long, global = true, env = cudaimg_static::EnvVars::CUDAIMG_STORE, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Print machine-readable JSON on stdout
    #[arg(long, global = true)]
    json: bool,
    /// Print no progress
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Print every step as a line, and every source failure
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pull images into the store, through the configured mirrors
    Pull(pull::Args),
    /// Push a stored image to a registry, byte-exact and resumable
    Push(push::Args),
    /// Copy an image from a registry (through the mirrors) to another, with no copy on disk
    Copy(copy::Args),
    /// Pin references to the digests they name now, in a lockfile (default ./cudaimg.lock)
    Lock(lock::Args),
    /// List the images in the store
    Images,
    /// Show the environment, labels and layers of a stored image
    Inspect(inspect::Args),
    /// Re-hash every blob and check every reference in the store
    Verify(verify::Args),
    /// Hand a stored image to the Docker Engine under its official name
    Load(load::Args),
    /// Give a stored image another name
    Tag(tag::Args),
    /// Write a stored image to a file: docker-archive (for `docker load`) or oci-archive
    Export(export::Args),
    /// Remove names from the store (blobs stay until `gc`)
    Rm(rm::Args),
    /// Delete blobs no stored image uses, and partial downloads
    Gc(gc::Args),
    /// Explain an nvidia/cuda tag: version, flavor, cuDNN, OS, contents, driver, end of life
    Explain(explain::Args),
    /// List a repository's tags through the mirrors, filtered, newest first, and recommend one
    Tags(tags::Args),
    /// Check this host for CUDA containers (driver, GPUs, toolkit, Docker, mirrors), and an image against it
    Doctor(doctor::Args),
    /// Measure and rank the configured mirrors; emit them as Docker or containerd configuration
    #[command(subcommand)]
    Mirrors(mirrors::Command),
    /// Print the `docker run` line or docker-compose.yml for a stored image, pinned by digest
    RunConfig(run_config::Args),
    /// Build `PyTorch` on an nvidia/cuda base: checked torch x CUDA x Python, base pinned by digest
    Build(Box<build::Args>),
    /// Serve the store as a read-only registry (a mirror for Docker, containerd, skopeo)
    Serve(serve::Args),
    /// Select images for an air-gapped site from a sync spec (CUDA-aware), and plan the bundle
    Sync(sync::Args),
    /// List the blobs and manifests a registry or the store holds (for `sync --have`)
    Inventory(sync::InventoryArgs),
    /// Import a sync bundle into a registry (`--to`) or the store, verified and resumable
    Import(import::Args),
    /// Print the manifest a reference names now, byte-exact, resolved through the mirrors as `pull` does
    Manifest(manifest::Args),
    /// Print the digest a reference names now, resolved through the mirrors as `pull` does
    Digest(manifest::Args),
    /// Store a registry credential where `docker login` does (docker's config.json or its helper)
    Login(login::Args),
    /// Remove a registry credential where `docker logout` does
    Logout(login::LogoutArgs),
    /// Print a shell completion script: `cudaimg completions bash > /etc/bash_completion.d/cudaimg`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// A stored image, for the commands that read one (`inspect`, `load`, `export`).
#[derive(Debug, clap::Args)]
pub(crate) struct ImageArgs {
    /// A stored image, e.g. `nvidia/cuda:12.4.1-runtime-ubuntu22.04`
    #[arg(value_name = "REFERENCE")]
    pub reference: String,
    /// Which platform, when the store holds several for this name [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

impl ImageArgs {
    /// The canonical name and the platform asked for.
    pub fn resolve(
        &self,
        config: &Config,
    ) -> Result<(String, Option<cudaimg_oci::platform::Platform>), Error> {
        let name = config.canonicalize(&self.reference)?.image.to_string();
        let want = self.platform.as_deref().map(str::parse).transpose()?;
        Ok((name, want))
    }
}

/// What the commands share: how to print, and the run's one [`Session`] (configuration,
/// HTTP clients, source memory, store), built from the resolved [`Settings`].
pub(crate) struct Ctx {
    pub session: Session,
    pub json: bool,
    pub verbose: bool,
    pub progress: progress::Mode,
}

impl Ctx {
    pub fn config(&self) -> Result<&Config, Error> {
        Ok(self.session.config()?)
    }

    /// The store, created if it does not exist yet (for commands that write).
    pub fn store(&self) -> Result<&Store, Error> {
        Ok(self.session.store()?)
    }

    /// The store as it is (for commands that only read): never created or changed.
    pub fn existing_store(&self) -> Result<Store, Error> {
        Ok(self.session.existing_store()?)
    }
}

impl Cli {
    /// The raw arguments resolved into the settings the session is built from: the global
    /// options, and the transfer options of the command that has them.
    fn settings(&self) -> Settings {
        let defaults = Settings::default();
        let (jobs, stall_timeout, require_upstream) = match &self.command {
            Command::Pull(a) => a.transfer(),
            // The lockfile is what CI trusts: only the official registry vouches, unless told.
            Command::Lock(a) => (1, defaults.stall_timeout, !a.trust_mirrors),
            Command::Manifest(a) | Command::Digest(a) => {
                (defaults.jobs, defaults.stall_timeout, a.require_upstream)
            }
            _ => (defaults.jobs, defaults.stall_timeout, false),
        };
        Settings {
            config_path: self.config.clone(),
            store_path: self.store.clone(),
            jobs,
            stall_timeout,
            require_upstream,
            verify_existing: matches!(&self.command, Command::Pull(a) if a.verify_existing()),
            mirrors: self.mirrors.clone(),
            creds: self.creds.as_deref().and_then(|c| {
                let (username, password) = c.split_once(':')?;
                Some(cudaimg_registry::Credential::Basic {
                    username: username.to_owned(),
                    password: password.to_owned(),
                })
            }),
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(c) = &cli.creds {
        // The value is a secret: the message never echoes it.
        if !c
            .split_once(':')
            .is_some_and(|(u, p)| !u.is_empty() && !p.is_empty())
        {
            report_error(&Error::Usage(
                "--creds must be `USER:PASS` (both non-empty)\nhint: or store the credential \
                 once: `printf '%s' \"$TOKEN\" | cudaimg login HOST -u USER --password-stdin`"
                    .into(),
            ));
            return ExitCode::from(exit::USAGE);
        }
    }
    if let Command::Completions { shell } = &cli.command {
        let mut out = Vec::new();
        clap_complete::generate(
            *shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "cudaimg",
            &mut out,
        );
        emit(String::from_utf8_lossy(&out).trim_end());
        return ExitCode::from(exit::OK);
    }
    let ctx = Ctx {
        session: Session::new(cli.settings()),
        json: cli.json,
        verbose: cli.verbose > 0,
        progress: progress::Mode::choose(cli.quiet, cli.verbose, std::io::stderr().is_terminal()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            note!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Pull(args) => pull::run(&ctx, args).await,
            Command::Push(args) => push::run(&ctx, args).await,
            Command::Copy(args) => copy::run(&ctx, args).await,
            Command::Lock(args) => lock::run(&ctx, args).await,
            Command::Images => images::run(&ctx),
            Command::Inspect(args) => inspect::run(&ctx, &args),
            Command::Verify(args) => verify::run(&ctx, &args).await,
            Command::Load(args) => load::run(&ctx, &args).await,
            Command::Tag(args) => tag::run(&ctx, &args),
            Command::Export(args) => export::run(&ctx, args).await,
            Command::Rm(args) => rm::run(&ctx, &args),
            Command::Gc(args) => gc::run(&ctx, &args).await,
            Command::Explain(args) => explain::run(&ctx, &args),
            Command::Tags(args) => tags::run(&ctx, &args).await,
            Command::Doctor(args) => doctor::run(&ctx, &args).await,
            Command::Mirrors(cmd) => mirrors::run(&ctx, &cmd).await,
            Command::RunConfig(args) => run_config::run(&ctx, &args).await,
            Command::Build(args) => build::run(&ctx, *args).await,
            Command::Serve(args) => serve::run(&ctx, &args).await,
            Command::Sync(args) => sync::run(&ctx, &args).await,
            Command::Inventory(args) => sync::inventory(&ctx, &args).await,
            Command::Import(args) => import::run(&ctx, args).await,
            Command::Manifest(args) => manifest::run(&ctx, &args, manifest::Print::Manifest).await,
            Command::Digest(args) => manifest::run(&ctx, &args, manifest::Print::Digest).await,
            Command::Login(args) => login::run(&ctx, &args),
            Command::Logout(args) => login::logout(&ctx, &args),
            // Answered before the runtime starts.
            Command::Completions { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        // stdout's reader left (`| head`): it has what it wanted, so this is not an error.
        Err(_) if output::stdout_closed() => ExitCode::from(exit::OK),
        Err(e) => {
            report_error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

pub(crate) fn report_error(e: &Error) {
    let shown = e.shown();
    let mut text = format!("error: {shown}");
    if let Some(cause) = std::error::Error::source(shown) {
        // `chain` walks the rest of the causes; multi-line causes (one line per source
        // tried) stay indented under it.
        text.push_str(&format!(
            "\n  caused by: {}",
            chain(cause).replace('\n', "\n  ")
        ));
    }
    if let Some(h) = e.hint() {
        text.push_str(&format!("\nhint: {h}"));
    }
    // Messages escape what they echo; this catches any that do not, so no control character
    // from a reference, a file or a registry reaches the terminal.
    note!("{}", cudaimg_oci::text::shown_lines(&text));
}

/// Writes a result line to stdout. A closed pipe (`cudaimg images | head`) ends the
/// process quietly with exit 0, as ripgrep does, instead of panicking as `println!` would;
/// any other failure to write results (`> /dev/full`) ends it with exit 1.
pub(crate) fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if output::note_stdout_error(&e) {
            std::process::exit(i32::from(exit::OK));
        }
        report_error(&Error::Output(output::OutputError::Io {
            path: PathBuf::from("stdout"),
            source: e,
        }));
        std::process::exit(i32::from(exit::FAILURE));
    }
}

/// Writes one JSON document to stdout.
pub(crate) fn emit_json(value: &impl serde::Serialize) {
    match serde_json::to_string(value) {
        Ok(s) => emit(&s),
        Err(e) => note!("error: cannot encode the result as JSON: {e}"),
    }
}

pub(crate) fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
