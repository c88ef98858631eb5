//! `cudaimg serve`: the store as a read-only registry, until interrupted (Ctrl-C, SIGTERM).
//! Prints one line when it listens (`--json`: `{"addr":…,"store":…,"tls":…}`), so a script
//! or a test that asked for port 0 learns the port. With `--pull-through`, what the store
//! lacks is fetched through mirrors.toml (see `serve_upstream`).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use cudaimg_serve::auth::{Access, Mode};
use cudaimg_serve::htpasswd::Htpasswd;
use cudaimg_serve::through::PullThrough;
use cudaimg_serve::{Options, ServeError, Server, TlsFiles};
use cudaimg_transfer::Session;

use super::serve_upstream::SessionUpstream;

use super::{emit, emit_json, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0: any free port, printed when listening)
    #[arg(long, default_value = "127.0.0.1:5000", value_name = "IP:PORT")]
    addr: String,
    /// PEM certificate chain: serve HTTPS (blobs then go by a buffered copy, not sendfile)
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Hash every blob while sending it and abort the connection if it does not match
    /// (no sendfile) [default: trust the store, whose blobs were verified when written]
    #[arg(long)]
    verify_reads: bool,
    /// Most clients served at once; more wait to be accepted
    #[arg(long, default_value_t = 512, value_name = "N")]
    max_connections: usize,
    /// Most connections one client address may hold; more are closed at once, so one greedy
    /// client cannot starve the others
    #[arg(long, default_value_t = 64, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_connections_per_client: u64,
    /// Seconds a client may take to send a request, stay idle, or stall a download
    #[arg(long, default_value_t = 30, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    client_timeout: u64,
    /// Clients must log in as a user of this htpasswd file (bcrypt entries, as `htpasswd -B`
    /// writes) [default: no login; anyone who can connect reads the store]
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// How clients log in: `basic` (credentials on every request) or `token` (the Docker
    /// token flow: a short-lived token from this server's own `/token`)
    #[arg(long, value_enum, requires = "htpasswd", value_name = "MODE")]
    auth: Option<AuthMode>,
    /// Fetch what the store lacks through mirrors.toml, as `pull` does (mirrors first, the
    /// official registry the authority on tags), store it, and serve it while it arrives.
    /// Creates the store if there is none [default: serve only what is stored]
    #[arg(long)]
    pull_through: bool,
    /// With `--pull-through`: seconds a tag's answer from upstream is served before it is
    /// asked again; when upstream cannot answer, the stored digest is served, marked stale
    #[arg(long, default_value_t = 300, value_name = "SECS", requires = "pull_through",
          value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    tag_ttl: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AuthMode {
    Basic,
    Token,
}

pub async fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    // The users before the store: a bad htpasswd file is named even where no store is yet.
    let access = access(args)?;
    let auth = access.as_ref().map(|a| a.mode.name());
    let log: cudaimg_serve::Log = std::sync::Arc::new(|line: &str| note!("{line}"));
    let (store, pull_through, session) = if args.pull_through {
        // A session of its own: the server's tasks outlive any borrow of `ctx`. Its store
        // handle is the server's, so clients follow the downloads it writes.
        let session = std::sync::Arc::new(Session::new(ctx.session.settings.clone()));
        session.config()?;
        let store = session.store()?.clone();
        let upstream = SessionUpstream {
            session: session.clone(),
            log: log.clone(),
        };
        let through = PullThrough {
            upstream: std::sync::Arc::new(upstream),
            tag_ttl: Duration::from_secs(args.tag_ttl),
        };
        (store, Some(through), Some(session))
    } else {
        (ctx.existing_store()?, None, None)
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let opts = Options {
        verify_reads: args.verify_reads,
        max_connections: args.max_connections,
        max_per_client: usize::try_from(args.max_connections_per_client).unwrap_or(usize::MAX),
        client_timeout: Duration::from_secs(args.client_timeout),
        tls: tls.clone(),
        access,
        access_log: ctx.verbose,
        log,
        pull_through,
    };
    let root = store.root().to_owned();
    let server = Server::bind(&args.addr, store, opts).await?;
    let addr = server
        .local_addr()
        .map_err(|e| Error::Setup(format!("cannot read the listening address: {e}")))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if ctx.json {
        emit_json(&serde_json::json!({
            "addr": addr.to_string(),
            "url": format!("{scheme}://{addr}"),
            "store": root,
            "tls": tls.is_some(),
            "verify_reads": args.verify_reads,
            "auth": auth,
            "pull_through": args.pull_through,
        }));
    } else {
        let how = if args.pull_through {
            "pulling through mirrors.toml"
        } else {
            "read-only"
        };
        let login = auth.map_or(String::new(), |a| format!(", {a} auth"));
        emit(&format!(
            "serving {} {how} at {scheme}://{addr}{login} (Ctrl-C stops)",
            root.display()
        ));
    }
    server.run(stop_signal()).await;
    // What the pull-through learnt of the mirrors, for the next command (`main` saves only
    // its own session's).
    if let Some(session) = session {
        session.save_health();
    }
    Ok(())
}

/// The users and how they log in, from `--htpasswd` and `--auth`; `None`: no login.
fn access(args: &Args) -> Result<Option<Access>, Error> {
    let Some(file) = &args.htpasswd else {
        return Ok(None);
    };
    Ok(Some(Access {
        users: Htpasswd::load(file).map_err(ServeError::from)?,
        mode: match args.auth {
            Some(AuthMode::Token) => Mode::Token,
            Some(AuthMode::Basic) | None => Mode::Basic,
        },
    }))
}

/// Ctrl-C or SIGTERM (a service manager's stop).
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
