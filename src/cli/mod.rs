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
mod serve_upstream;
mod sync;
mod tag;
mod tags;
mod verify;
mod width;
mod words;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

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
    /// Mirror configuration file [default: ./mirrors.toml, then `$XDG_CONFIG_HOME/cudaimg/mirrors.toml`]
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
    /// The local OCI image layout [default: `$XDG_DATA_HOME/cudaimg`]
    #[arg(long, global = true, env = cudaimg_static::EnvVars::CUDAIMG_STORE, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Print machine-readable JSON on stdout; a failure is a JSON `error` object there too
    #[arg(long, global = true)]
    json: bool,
    /// Never shorten names, digests or text to fit the terminal (`COLUMNS`, else its width)
    #[arg(long, global = true)]
    no_trunc: bool,
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
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = crate::cli::known_platform)]
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

/// Operating systems and architectures images are built for (Go's `GOOS` and `GOARCH`,
/// which the OCI image spec uses), and the names `uname -m` gives that `Platform` maps.
const KNOWN_OS: &[&str] = &[
    "linux",
    "windows",
    "darwin",
    "freebsd",
    "netbsd",
    "openbsd",
    "solaris",
    "illumos",
    "aix",
    "android",
    "ios",
    "plan9",
    "dragonfly",
    "js",
    "wasip1",
];
const KNOWN_ARCH: &[&str] = &[
    "amd64", "arm64", "arm", "386", "ppc64le", "ppc64", "s390x", "riscv64", "mips64le", "mips64",
    "mipsle", "mips", "loong64", "wasm", "x86_64", "x86-64", "aarch64", "i386", "armhf", "armel",
];

/// `--platform`'s value checked when the command line is read: a typo (`linux/amd46`) is a
/// usage error (exit 2) with the nearest known name, not a platform no image has, found
/// only after the manifest was fetched.
pub(crate) fn known_platform(s: &str) -> Result<String, String> {
    let p: cudaimg_oci::platform::Platform = s.parse().map_err(|e| format!("{e}"))?;
    let mut parts = s.split('/');
    let (os, arch) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let nearest = |word: &str, known: &[&str]| {
        cudaimg_cuda::known::nearest(word, known.iter().copied(), 1)
            .first()
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default()
    };
    if !KNOWN_OS.contains(&os) {
        return Err(format!(
            "`{os}` is not an operating system images are built for{}",
            nearest(os, KNOWN_OS)
        ));
    }
    if !KNOWN_ARCH.contains(&arch) {
        return Err(format!(
            "`{arch}` is not an architecture images are built for{} (nvidia/cuda has \
             `linux/amd64` and `linux/arm64`)",
            nearest(arch, KNOWN_ARCH)
        ));
    }
    Ok(p.to_string())
}

/// What the commands share: how to print, and the run's one [`Session`] (configuration,
/// HTTP clients, source memory, store), built from the resolved [`Settings`].
pub(crate) struct Ctx {
    pub session: Session,
    pub json: bool,
    pub verbose: bool,
    pub progress: progress::Mode,
    /// The columns human output on stdout fits into; `None`: no limit (see `width`).
    pub columns: Option<usize>,
    /// What transfers have kept so far, for the line Ctrl-C prints.
    pub tally: Arc<progress::Tally>,
}

impl Ctx {
    /// The progress reporter of one transfer: the chosen display, counted for Ctrl-C.
    pub fn reporter(&self) -> Box<dyn cudaimg_oci::progress::Reporter> {
        self.progress.reporter(self.tally.clone())
    }

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
            Command::Copy(a) => {
                let (stall_timeout, require_upstream) = a.transfer();
                (defaults.jobs, stall_timeout, require_upstream)
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return parse_failed(&e),
    };
    let json = cli.json;
    if let Some(c) = &cli.creds {
        // The value is a secret: the message never echoes it.
        if !c
            .split_once(':')
            .is_some_and(|(u, p)| !u.is_empty() && !p.is_empty())
        {
            return failed(
                &Error::Usage(
                    "--creds must be `USER:PASS` (both non-empty)\nhint: or store the credential \
                     once: `printf '%s' \"$TOKEN\" | cudaimg login HOST -u USER --password-stdin`"
                        .into(),
                ),
                json,
            );
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
        columns: width::columns(cli.no_trunc),
        tally: Arc::default(),
    };
    // `emit` may end the process early (a closed stdout); it saves the record first.
    let _ = EARLY_EXIT_SAVES.set(ctx.session.health_record());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return failed(
                &Error::Setup(format!("cannot start the async runtime: {e}")),
                json,
            )
        }
    };
    // `serve` stops on Ctrl-C by itself, gracefully and with exit 0.
    let interruptible = !matches!(cli.command, Command::Serve(_));
    let result = runtime.block_on(async {
        let command = run(&ctx, cli.command);
        if !interruptible {
            return Some(command.await);
        }
        tokio::select! {
            r = command => Some(r),
            // The command is dropped here, its bars cleared; blobs and partial downloads
            // already written stay in the store for the next run.
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // What the run learned about the mirrors' health, written back on every way out of a
    // command: explicitly, since `process::exit` runs no destructor.
    ctx.session.save_health();
    let code = match result {
        None => interrupted(&ctx),
        Some(Ok(())) => {
            if let Some(held) = take_held() {
                emit_json(&held);
            }
            ExitCode::from(exit::OK)
        }
        // stdout's reader left (`| head`): it has what it wanted, so this is not an error.
        Some(Err(_)) if output::stdout_closed() => ExitCode::from(exit::OK),
        Some(Err(e)) => failed(&e, json),
    };
    // Blocking work still running (a blob being hashed) must not hold the exit.
    runtime.shutdown_background();
    code
}

async fn run(ctx: &Ctx, command: Command) -> Result<(), Error> {
    match command {
        Command::Pull(args) => pull::run(ctx, args).await,
        Command::Push(args) => push::run(ctx, args).await,
        Command::Copy(args) => copy::run(ctx, args).await,
        Command::Lock(args) => lock::run(ctx, args).await,
        Command::Images => images::run(ctx),
        Command::Inspect(args) => inspect::run(ctx, &args),
        Command::Verify(args) => verify::run(ctx, &args).await,
        Command::Load(args) => load::run(ctx, &args).await,
        Command::Tag(args) => tag::run(ctx, &args),
        Command::Export(args) => export::run(ctx, args).await,
        Command::Rm(args) => rm::run(ctx, &args),
        Command::Gc(args) => gc::run(ctx, &args).await,
        Command::Explain(args) => explain::run(ctx, &args),
        Command::Tags(args) => tags::run(ctx, &args).await,
        Command::Doctor(args) => doctor::run(ctx, &args).await,
        Command::Mirrors(cmd) => mirrors::run(ctx, &cmd).await,
        Command::RunConfig(args) => run_config::run(ctx, &args).await,
        Command::Build(args) => build::run(ctx, *args).await,
        Command::Serve(args) => serve::run(ctx, &args).await,
        Command::Sync(args) => sync::run(ctx, &args).await,
        Command::Inventory(args) => sync::inventory(ctx, &args).await,
        Command::Import(args) => import::run(ctx, args).await,
        Command::Manifest(args) => manifest::run(ctx, &args, manifest::Print::Manifest).await,
        Command::Digest(args) => manifest::run(ctx, &args, manifest::Print::Digest).await,
        Command::Login(args) => login::run(ctx, &args),
        Command::Logout(args) => login::logout(ctx, &args),
        // Answered before the runtime starts.
        Command::Completions { .. } => Ok(()),
    }
}

/// The run's failure, said once: the message, its causes and hint on stderr, and under
/// `--json` one `{"error": {...}}` object on stdout (added to the document the command left
/// with [`hold_json`], if any). Every command's failure ends here, so none can forget it.
fn failed(e: &Error, json: bool) -> ExitCode {
    report_error(e);
    if json {
        emit_error_json(e.to_json());
    }
    ExitCode::from(e.exit_code())
}

/// Ctrl-C: one line saying what the store kept and how to go on, and exit 130.
fn interrupted(ctx: &Ctx) -> ExitCode {
    let store = ctx
        .existing_store()
        .ok()
        .map(|s| s.root().display().to_string());
    let line = ctx.tally.interrupted(store.as_deref());
    note!("{}", cudaimg_oci::text::shown_lines(&line));
    if ctx.json {
        emit_error_json(serde_json::json!({
            "kind": crate::error::kind_of(exit::INTERRUPTED),
            "message": line,
            "causes": [],
            "hint": null,
            "exit_code": exit::INTERRUPTED,
        }));
    }
    ExitCode::from(exit::INTERRUPTED)
}

/// Whether `--json` is on the command line (before a `--`), for errors clap finds before
/// there is a [`Cli`] to ask.
fn json_asked() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// clap's own answer: help and version as clap prints them; a usage error as clap prints
/// it, exit 2, and under `--json` as the error object every other failure gets.
fn parse_failed(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if !e.use_stderr() {
        // `--help`, `--version`: not failures.
        return ExitCode::from(exit::OK);
    }
    if json_asked() {
        let text = e.render().to_string();
        let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
        let mut message = lines
            .next()
            .unwrap_or("the command line is wrong")
            .trim_start_matches("error: ")
            .to_owned();
        // The indented lines under it (the arguments missing) are part of the message.
        while let Some(l) = lines.next_if(|l| l.starts_with(' ')) {
            message = format!("{} {}", message.trim_end_matches(':'), l.trim());
        }
        // What clap adds after its message: a tip, the usage line.
        let rest: Vec<&str> = lines
            .map(str::trim)
            .filter(|l| !l.starts_with("For more information"))
            .collect();
        emit_error_json(serde_json::json!({
            "kind": crate::error::kind_of(exit::USAGE),
            "message": message,
            "causes": [],
            "hint": (!rest.is_empty()).then(|| rest.join("; ")),
            "exit_code": exit::USAGE,
        }));
    }
    ExitCode::from(exit::USAGE)
}

/// Under `--json`, a result a command printed only because it fails (doctor's findings,
/// verify's problems): kept until the run ends, and printed then as one document with the
/// run's `error` object in it, so that stdout holds one document that says both.
static HELD: Mutex<Option<serde_json::Value>> = Mutex::new(None);

/// Keeps `value` (a JSON object) as the document the run's error goes into; see [`HELD`].
/// A value that is not an object is printed at once.
pub(crate) fn hold_json(value: &impl serde::Serialize) {
    match serde_json::to_value(value) {
        Ok(v @ serde_json::Value::Object(_)) => {
            if let Ok(mut held) = HELD.lock() {
                if let Some(earlier) = held.replace(v) {
                    emit_json(&earlier);
                }
            }
        }
        Ok(v) => emit_json(&v),
        Err(e) => note!("error: cannot encode the result as JSON: {e}"),
    }
}

fn take_held() -> Option<serde_json::Value> {
    HELD.lock().ok().and_then(|mut h| h.take())
}

/// `{"error": error}`, added to the held document if there is one.
fn emit_error_json(error: serde_json::Value) {
    let mut doc = take_held().unwrap_or_else(|| serde_json::json!({}));
    doc["error"] = error;
    emit_json(&doc);
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

/// The run's mirror-health record, for `emit` to save before it ends the process early.
static EARLY_EXIT_SAVES: std::sync::OnceLock<cudaimg_transfer::HealthRecord> =
    std::sync::OnceLock::new();

/// Writes a result line to stdout. A closed pipe (`cudaimg images | head`) ends the
/// process quietly with exit 0, as ripgrep does, instead of panicking as `println!` would;
/// any other failure to write results (`> /dev/full`) ends it with exit 1.
pub(crate) fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if let Some(health) = EARLY_EXIT_SAVES.get() {
            health.save();
        }
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
