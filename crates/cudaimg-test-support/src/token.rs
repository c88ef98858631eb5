//! A Bearer token server for distribution's `auth: token:` (the Docker registry token flow).
//!
//! The registry answers `401` with `WWW-Authenticate: Bearer realm=...,service=...,scope=...`;
//! clients fetch a JWT from the realm (with Basic credentials if they have some) and retry with
//! `Authorization: Bearer <jwt>`. [`TokenServer`] is that realm: a thread on 127.0.0.1 issuing
//! ES256 JWTs whose `x5c` header carries a self-signed certificate, the same certificate the
//! registry trusts as its `rootcertbundle`. It records every request with the Authorization
//! header it got, so tests can check that credentials went to the realm and nowhere else.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use tempfile::TempDir;

use super::registry::{RegistryOptions, TestRegistry, TokenAuthConfig};

/// The `service` the registry names in its challenge and expects as the token audience.
pub const SERVICE: &str = "cudaimg-test-registry";
/// The token `iss` the registry expects.
pub const ISSUER: &str = "cudaimg-test-token-issuer";

/// One request the token server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    pub method: String,
    /// Path and query as received, e.g. `/token?scope=repository%3Anvidia%2Fcuda%3Apull&...`.
    pub path: String,
    /// The `Authorization` header, verbatim, if any.
    pub authorization: Option<String>,
    /// Decoded `scope` parameters.
    pub scopes: Vec<String>,
    /// Decoded `service` parameter.
    pub service: Option<String>,
    /// Status the server answered.
    pub status: u16,
}

/// A running token server, stopped when dropped.
pub struct TokenServer {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    dir: TempDir,
}

struct State {
    key: EcdsaKeyPair,
    /// Base64 (standard) DER of the certificate, for the `x5c` header.
    cert_b64: String,
    credentials: Option<(String, String)>,
    requests: Mutex<Vec<TokenRequest>>,
    serial: AtomicU64,
}

impl TokenServer {
    /// Issues tokens to anyone (anonymous pulls, as on public registries).
    pub fn start_anonymous() -> Self {
        Self::start_inner(None)
    }

    /// Issues tokens only to requests carrying Basic `user`/`pass`; others get 401.
    pub fn start(user: &str, pass: &str) -> Self {
        Self::start_inner(Some((user.to_string(), pass.to_string())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let cert_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
        let cert = rcgen::CertificateParams::new(vec![ISSUER.to_string()])
            .unwrap()
            .self_signed(&cert_key)
            .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("cudaimg-token-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("root.pem"), cert.pem()).unwrap();

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            key,
            cert_b64: STANDARD.encode(cert.der()),
            credentials,
            requests: Mutex::new(Vec::new()),
            serial: AtomicU64::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        // One request per connection, answered inline: tests are not load.
                        let _ = serve(&state, stream);
                    }
                }
            })
        };
        TokenServer {
            addr,
            state,
            stop,
            thread: Some(thread),
            dir,
        }
    }

    /// `http://127.0.0.1:PORT/token`
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }
    /// `127.0.0.1:PORT` of the token server (not the registry's).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
    /// PEM of the signing certificate (the registry's `rootcertbundle`).
    pub fn root_cert_path(&self) -> PathBuf {
        self.dir.path().join("root.pem")
    }
    /// The registry's `auth.token` section for this server.
    pub fn auth_config(&self) -> TokenAuthConfig {
        TokenAuthConfig {
            realm: self.realm(),
            service: SERVICE.to_string(),
            issuer: ISSUER.to_string(),
            root_cert_bundle: self.root_cert_path(),
        }
    }
    /// Requests received so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }
    /// Mints a token directly (no HTTP), e.g. `issue("alice", &["repository:nvidia/cuda:pull"])`.
    pub fn issue(&self, subject: &str, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        self.state.token(subject, &scopes)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl TestRegistry {
    /// A registry that wants Bearer tokens from `tokens` (distribution's `auth: token:`).
    pub fn start_with_token_auth(tokens: &TokenServer) -> Self {
        Self::start_with(RegistryOptions {
            token_auth: Some(tokens.auth_config()),
            ..Default::default()
        })
    }
}

impl State {
    /// A signed JWT granting every requested scope (`type:name:actions`).
    fn token(&self, subject: &str, scopes: &[String]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|scope| {
                // The name may hold ':' (host:port/repo is not allowed, but registry:catalog:* is).
                let (kind, rest) = scope.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.cert_b64]});
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 600,
            // Some slack for clock skew between this thread and the registry (same host anyway).
            "nbf": now - 60,
            "iat": now - 60,
            "jti": format!("jti-{}-{now}", self.serial.fetch_add(1, Ordering::SeqCst)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        // FIXED signing: JWS ES256 wants r||s (64 bytes), not ASN.1 DER.
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }

    /// Whether the Authorization header carries the expected Basic credentials.
    fn authorized(&self, authorization: Option<&str>) -> (bool, String) {
        let Some((user, pass)) = &self.credentials else {
            return (true, "anonymous".to_string());
        };
        let expected = format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")));
        (authorization == Some(expected.as_str()), user.clone())
    }
}

fn serve(state: &State, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Ok(()); // e.g. the wake-up connection of Drop
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    let url = url::Url::parse(&format!("http://token{path}")).unwrap();
    let scopes: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "scope")
        // Clients may also send several scopes space-separated in one parameter.
        .flat_map(|(_, v)| {
            v.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let service = url
        .query_pairs()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.into_owned());

    let (status, body) = if method != "GET" || url.path() != "/token" {
        (404, r#"{"errors":[{"code":"NOT_FOUND"}]}"#.to_string())
    } else {
        match state.authorized(authorization.as_deref()) {
            (true, subject) => {
                let token = state.token(&subject, &scopes);
                let body = serde_json::json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": 600,
                });
                (200, body.to_string())
            }
            (false, _) => (401, r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_string()),
        }
    };
    state.requests.lock().unwrap().push(TokenRequest {
        method,
        path,
        authorization,
        scopes,
        service,
        status,
    });
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let mut stream = reader.into_inner();
    let challenge = if status == 401 {
        "WWW-Authenticate: Basic realm=\"cudaimg-test-token\"\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{challenge}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
