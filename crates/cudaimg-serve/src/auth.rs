//! Access for a LAN: who may read the store, decided before a request is routed.
//!
//! Two modes, both from an htpasswd file ([`crate::htpasswd`]):
//! - [`Mode::Basic`]: every request carries `Authorization: Basic`; without it, or with a
//!   wrong one, the answer is a 401 with `WWW-Authenticate: Basic realm="cudaimg"`, which is
//!   what distribution's htpasswd auth answers and what Docker, containerd and skopeo log in to.
//! - [`Mode::Token`]: the Docker token flow. A request without `Authorization: Bearer` gets a
//!   401 with `WWW-Authenticate: Bearer realm="<this server>/token",service="cudaimg",scope=…`;
//!   the client asks `GET /token` here with its Basic credentials and gets a token valid for
//!   [`TOKEN_LIFE`], signed with HMAC-SHA256 under a key drawn at start (so a restart ends
//!   every token; clients fetch a new one on the next 401). The token names its user, whose
//!   name must still be in the file; every user may read every repository (the store is one
//!   site's, read-only), so a token is not bound to a scope.
//!
//! Password checks are bcrypt, slow on purpose: they run off the async threads, at most one
//! per core at a time, and a login once verified is remembered by a SHA-256 of
//! user and password (so Basic clients, which send credentials with every blob request, pay
//! for bcrypt once). Failed logins are counted per client address (an IPv6 client by its
//! /64): after [`FAILURES_ALLOWED`] within [`FAILURE_WINDOW`], that address gets 429 with
//! `Retry-After`, right password or not, until the window ends. A login in progress counts
//! as failed until it succeeds, so parallel guesses cannot outrun the count.
//!
//! Credentials never reach a log: requests hold them as [`crate::http::Secret`], and a failed
//! login is logged with the client address and the user name only if the file has that user.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, digest, hmac};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

use crate::htpasswd::Htpasswd;
use crate::http::Request;
use crate::{error, json_response, route, Log, Response};

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `Authorization: Basic` on every request.
    Basic,
    /// Bearer tokens from this server's own `/token`.
    Token,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Basic => "basic",
            Mode::Token => "token",
        }
    }
}

/// Who may read: the users of an htpasswd file, and how they log in.
#[derive(Debug, Clone)]
pub struct Access {
    pub users: Htpasswd,
    pub mode: Mode,
}

/// How long a token from `/token` is accepted.
pub const TOKEN_LIFE: Duration = Duration::from_secs(300);
/// Failed logins one client address may make within [`FAILURE_WINDOW`].
pub const FAILURES_ALLOWED: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The `service` of the Bearer challenge, and the Basic realm.
pub const SERVICE: &str = "cudaimg";
/// Addresses whose failures are remembered at once; past it, expired ones are dropped first.
const MAX_TRACKED: usize = 65_536;

/// What to do with a request.
pub(crate) enum Verdict {
    /// Serve it, for this user.
    Pass(String),
    /// Answer this instead (a challenge, a refusal, a token), for this user if one logged in.
    Answer(Option<String>, Response),
}

enum Login {
    Ok(String),
    Missing,
    Wrong,
    Limited(Duration),
}

struct Failures {
    count: u32,
    since: Instant,
}

pub(crate) struct Gate {
    users: Arc<Htpasswd>,
    mode: Mode,
    scheme: &'static str,
    /// The realm's host when a request names none usable: the listening address.
    own_host: String,
    key: hmac::Key,
    /// User to SHA-256 of user and password, of the last login bcrypt verified.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    checks: tokio::sync::Semaphore,
    log: Log,
}

impl Gate {
    /// The gate for a server listening on `local`; warns (to `log`) when passwords would
    /// cross the network in the clear.
    pub(crate) fn new(
        access: &Access,
        https: bool,
        local: SocketAddr,
        log: Log,
    ) -> Result<Gate, crate::ServeError> {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret)
            .map_err(|_| crate::ServeError::Random("the system's random source failed".into()))?;
        if !https && !local.ip().is_loopback() {
            log(&format!(
                "warning: passwords will cross the network in the clear: {local} is not a \
                 loopback address and serving is plain HTTP (`--tls-cert` and `--tls-key` \
                 serve HTTPS)"
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Ok(Gate {
            users: Arc::new(access.users.clone()),
            mode: access.mode,
            scheme: if https { "https" } else { "http" },
            own_host: local.to_string(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            verified: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            checks: tokio::sync::Semaphore::new(cores),
            log,
        })
    }

    /// Decides on `req` from `peer`.
    pub(crate) async fn admit(&self, req: &Request, peer: IpAddr) -> Verdict {
        let path = req.target.split('?').next().unwrap_or_default();
        match self.mode {
            Mode::Token if path == "/token" => self.token_endpoint(req, peer).await,
            Mode::Token => match bearer(req).and_then(|t| self.token_user(t)) {
                Some(user) => Verdict::Pass(user),
                None => Verdict::Answer(None, self.challenge(req)),
            },
            Mode::Basic => match self.basic_login(req, peer).await {
                Login::Ok(user) => Verdict::Pass(user),
                Login::Missing | Login::Wrong => Verdict::Answer(None, self.challenge(req)),
                Login::Limited(wait) => Verdict::Answer(None, too_many(wait)),
            },
        }
    }

    /// `GET /token`: Basic credentials in, a token out.
    async fn token_endpoint(&self, req: &Request, peer: IpAddr) -> Verdict {
        match self.basic_login(req, peer).await {
            Login::Ok(user) => {
                let token = self.token_for(&user);
                let body = serde_json::json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": TOKEN_LIFE.as_secs(),
                });
                let mut r = json_response(200, "application/json", body.to_string().into_bytes());
                r.head = r.head.header("Cache-Control", "no-store");
                Verdict::Answer(Some(user), r)
            }
            Login::Missing | Login::Wrong => Verdict::Answer(None, basic_challenge()),
            Login::Limited(wait) => Verdict::Answer(None, too_many(wait)),
        }
    }

    async fn basic_login(&self, req: &Request, peer: IpAddr) -> Login {
        let Some((user, password)) = basic_credentials(req) else {
            return Login::Missing;
        };
        let client = client_key(peer);
        if let Some(wait) = self.locked(client) {
            return Login::Limited(wait);
        }
        let print = fingerprint(&user, &password);
        let known = self
            .verified
            .lock()
            .ok()
            .and_then(|v| v.get(&user).copied());
        if known.is_some_and(|k| constant_time::verify_slices_are_equal(&k, &print).is_ok()) {
            return Login::Ok(user);
        }
        // Counted as failed until bcrypt says otherwise.
        self.count_failure(client, peer);
        let Ok(_permit) = self.checks.acquire().await else {
            return Login::Wrong;
        };
        let (users, u) = (Arc::clone(&self.users), user.clone());
        let ok = tokio::task::spawn_blocking(move || users.verify(&u, &password))
            .await
            .unwrap_or(false);
        if ok {
            self.forgive(client);
            if let Ok(mut v) = self.verified.lock() {
                v.insert(user.clone(), print);
            }
            return Login::Ok(user);
        }
        let who = if self.users.has(&user) {
            format!("as `{}`", cudaimg_oci::text::shown(&user))
        } else {
            "as a user the htpasswd file does not name".to_owned()
        };
        (self.log)(&format!("warning: failed login from {peer} {who}"));
        Login::Wrong
    }

    /// How long `client` must still wait, if it made too many failed logins.
    fn locked(&self, client: IpAddr) -> Option<Duration> {
        let map = self.failures.lock().ok()?;
        let f = map.get(&client)?;
        let left = FAILURE_WINDOW.checked_sub(f.since.elapsed())?;
        (f.count >= FAILURES_ALLOWED && !left.is_zero()).then_some(left)
    }

    fn count_failure(&self, client: IpAddr, peer: IpAddr) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= MAX_TRACKED {
            map.retain(|_, f| f.since.elapsed() < FAILURE_WINDOW);
            if map.len() >= MAX_TRACKED && !map.contains_key(&client) {
                return;
            }
        }
        let now = Instant::now();
        let f = map.entry(client).or_insert(Failures {
            count: 0,
            since: now,
        });
        if f.since.elapsed() >= FAILURE_WINDOW {
            *f = Failures {
                count: 0,
                since: now,
            };
        }
        f.count += 1;
        if f.count == FAILURES_ALLOWED {
            (self.log)(&format!(
                "warning: {FAILURES_ALLOWED} failed logins from {peer} within {}s: its logins \
                 are refused until the {}s are over",
                FAILURE_WINDOW.as_secs(),
                FAILURE_WINDOW.as_secs()
            ));
        }
    }

    /// Takes back the failure a successful login was counted as.
    fn forgive(&self, client: IpAddr) {
        if let Ok(mut map) = self.failures.lock() {
            if let Some(f) = map.get_mut(&client) {
                f.count = f.count.saturating_sub(1);
            }
        }
    }

    fn token_for(&self, user: &str) -> String {
        let exp = unix_now() + TOKEN_LIFE.as_secs();
        let claims = serde_json::json!({ "sub": user, "exp": exp }).to_string();
        let tag = hmac::sign(&self.key, claims.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(claims),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The user a token of ours names, if it is signed, unexpired, and the user still listed.
    fn token_user(&self, token: &str) -> Option<String> {
        let (claims, tag) = token.split_once('.')?;
        let claims = URL_SAFE_NO_PAD.decode(claims).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.key, &claims, &tag).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&claims).ok()?;
        let user = v["sub"].as_str()?;
        (v["exp"].as_u64()? > unix_now() && self.users.has(user)).then(|| user.to_owned())
    }

    /// The 401 for a request without valid credentials, with the challenge of the mode.
    fn challenge(&self, req: &Request) -> Response {
        match self.mode {
            Mode::Basic => basic_challenge(),
            Mode::Token => {
                let host = req
                    .host
                    .as_deref()
                    .filter(|h| plausible_host(h))
                    .unwrap_or(&self.own_host);
                let mut value = format!(
                    "Bearer realm=\"{}://{host}/token\",service=\"{SERVICE}\"",
                    self.scheme
                );
                if let Some(scope) = scope(&req.target) {
                    value.push_str(&format!(",scope=\"{scope}\""));
                }
                if req.authorization.is_some() {
                    value.push_str(",error=\"invalid_token\"");
                }
                unauthorized(&value)
            }
        }
    }
}

fn basic_challenge() -> Response {
    unauthorized(&format!("Basic realm=\"{SERVICE}\""))
}

fn unauthorized(challenge: &str) -> Response {
    let mut r = error(401, "UNAUTHORIZED", "authentication required", "");
    r.head = r.head.header("WWW-Authenticate", challenge);
    r
}

fn too_many(wait: Duration) -> Response {
    let secs = wait.as_secs().max(1);
    let mut r = error(
        429,
        "TOOMANYREQUESTS",
        "too many failed logins from this address",
        &format!("try again in {secs}s"),
    );
    r.head = r.head.header("Retry-After", &secs.to_string());
    r
}

/// The scope a client needs for `target`: pull of its repository, or the catalog.
fn scope(target: &str) -> Option<String> {
    match route::parse(target).ok()? {
        route::Route::Manifest(n, _)
        | route::Route::Blob(n, _)
        | route::Route::Tags(n, _)
        | route::Route::Referrers(n, _) => Some(format!("repository:{}:pull", n.requested)),
        route::Route::Catalog(_) => Some("registry:catalog:*".into()),
        route::Route::Base => None,
    }
}

/// A `Host` that can go into the realm URL as it is: a name or address and a port.
fn plausible_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let value = &req.authorization.as_ref()?.0;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(rest.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn bearer(req: &Request) -> Option<&str> {
    let value = &req.authorization.as_ref()?.0;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
}

fn fingerprint(user: &str, password: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(user.as_bytes());
    ctx.update(b"\0");
    ctx.update(password.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Failures are counted per IPv4 address and per IPv6 /64 (one host's usual share).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(mode: Mode) -> Gate {
        let hash = bcrypt::hash("secret", 4).unwrap_or_default();
        let users = Htpasswd::parse(&format!("alice:{hash}\n"))
            .ok()
            .flatten()
            .expect("one user");
        let local: SocketAddr = "127.0.0.1:5000".parse().expect("an address");
        Gate::new(&Access { users, mode }, false, local, Arc::new(|_| {})).expect("a gate")
    }

    #[test]
    fn tokens_are_accepted_only_as_signed_and_unexpired() {
        let g = gate(Mode::Token);
        let t = g.token_for("alice");
        assert_eq!(g.token_user(&t).as_deref(), Some("alice"));
        // Another process's key, a changed claim, a user not in the file: refused.
        assert_eq!(gate(Mode::Token).token_user(&t), None);
        let (claims, tag) = t.split_once('.').unwrap_or_default();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","exp":99999999999}"#);
        assert_eq!(g.token_user(&format!("{forged}.{tag}")), None);
        assert_eq!(g.token_user(claims), None);
        assert_eq!(g.token_user(&g.token_for("mallory")), None);
        let expired = r#"{"sub":"alice","exp":1}"#;
        let tag = hmac::sign(&g.key, expired.as_bytes());
        let old = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(expired),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        );
        assert_eq!(g.token_user(&old), None);
    }

    #[test]
    fn failures_lock_an_address_and_its_ipv6_neighbours_only() {
        let g = gate(Mode::Basic);
        let a: IpAddr = "2001:db8::1".parse().expect("an address");
        let b: IpAddr = "2001:db8::2".parse().expect("an address");
        let c: IpAddr = "2001:db8:0:1::1".parse().expect("an address");
        for _ in 0..FAILURES_ALLOWED {
            assert!(g.locked(client_key(a)).is_none());
            g.count_failure(client_key(a), a);
        }
        assert!(g.locked(client_key(b)).is_some());
        assert!(g.locked(client_key(c)).is_none());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("an address");
        assert_eq!(
            client_key(mapped),
            "10.0.0.1".parse::<IpAddr>().ok().unwrap_or(mapped)
        );
    }

    #[test]
    fn realm_hosts_that_could_split_a_header_are_not_used() {
        assert!(plausible_host("site-registry.lan:5000"));
        assert!(plausible_host("[::1]:5000"));
        assert!(!plausible_host("evil\"x"));
        assert!(!plausible_host("a b"));
        assert!(!plausible_host(""));
    }
}
