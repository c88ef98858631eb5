//! Answering `WWW-Authenticate` challenges: anonymous or credentialed Bearer tokens (the
//! flow Docker Hub, nvcr.io and ghcr.io use) and Basic auth.
//!
//! Tokens are cached per scope and dropped when the registry rejects them, so an expired
//! token costs one extra round trip, not a failed pull. Credentials are looked up lazily:
//! a registry that never challenges never causes a credential helper to run.

use std::collections::HashMap;
use std::sync::Mutex;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Client, StatusCode, Url};
use tokio::sync::OnceCell;

use super::credentials::{self, Credential};
use super::error::{redact_url, RegistryError};
use cudaimg_oci::text::shown;

pub(crate) struct Auth {
    /// `host[:port]` of the endpoint: whose credentials these are.
    host: String,
    endpoint_is_https: bool,
    creds: OnceCell<Result<Option<Credential>, String>>,
    headers: Mutex<HashMap<String, HeaderValue>>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

impl Auth {
    pub(crate) fn new(host: String, endpoint_is_https: bool) -> Self {
        Auth {
            host,
            endpoint_is_https,
            creds: OnceCell::new(),
            headers: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn cached(&self, scope: &str) -> Option<HeaderValue> {
        self.headers.lock().ok()?.get(scope).cloned()
    }

    async fn credentials(&self) -> Result<Option<Credential>, RegistryError> {
        let host = self.host.clone();
        let res = self
            .creds
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || credentials::lookup(&host))
                    .await
                    .unwrap_or_else(|_| Err("credential lookup was interrupted".to_owned()))
            })
            .await;
        res.clone().map_err(|reason| RegistryError::Credentials {
            host: self.host.clone(),
            reason,
        })
    }

    /// Uses `credential` instead of looking one up in docker's config.json (a caller that was
    /// given credentials explicitly). Has no effect once a lookup has been made.
    pub(crate) fn set_credential(&self, credential: Credential) {
        let _ = self.creds.set(Ok(Some(credential)));
    }

    /// Answers the challenge of a 401 for `url` and caches the resulting header for `scope`:
    /// one or more space-separated scopes (`repository:a:pull,push repository:b:pull`).
    pub(crate) async fn respond(
        &self,
        http: &Client,
        verified: &Client,
        challenge: Option<&str>,
        scope: &str,
        url: &Url,
    ) -> Result<HeaderValue, RegistryError> {
        if let Ok(mut h) = self.headers.lock() {
            h.remove(scope);
        }
        let denied = |reason: String| RegistryError::Denied {
            url: redact_url(url),
            reason,
        };
        let login_hint = format!("log in with `docker login {}`", self.host);
        let wanted = read_challenge(challenge).map_err(denied)?;
        let creds = self.credentials().await?;
        let header = if let Challenge::Bearer {
            realm,
            service,
            scope: asked,
        } = wanted
        {
            // The endpoint's client (perhaps `insecure`) only for its own host.
            let same_host = realm.host_str() == url.host_str()
                && realm.port_or_known_default() == url.port_or_known_default();
            let http = if same_host { http } else { verified };
            let token = self
                .fetch_token(
                    http,
                    &realm,
                    service,
                    requested_scopes(scope, asked.as_deref()),
                    creds.as_ref(),
                )
                .await?;
            bearer_header(&token)?
        } else {
            match creds {
                Some(Credential::Basic { username, password }) => {
                    sensitive(&http_auth::basic::encode_credentials(&username, &password))?
                }
                Some(Credential::IdentityToken(_)) => {
                    return Err(denied(format!(
                        "it wants Basic auth but docker's config.json holds only an identity token; {login_hint}"
                    )))
                }
                None => return Err(denied(format!("it requires credentials; {login_hint}"))),
            }
        };
        if let Ok(mut h) = self.headers.lock() {
            h.insert(scope.to_owned(), header.clone());
        }
        Ok(header)
    }

    async fn fetch_token(
        &self,
        http: &Client,
        realm: &Url,
        service: Option<String>,
        scopes: Vec<String>,
        creds: Option<&Credential>,
    ) -> Result<String, RegistryError> {
        let realm_label = redact_url(realm);
        // Never downgrade: credentials for an https registry only go to an https realm.
        let creds = creds.filter(|_| realm.scheme() == "https" || !self.endpoint_is_https);
        // One `scope` parameter per scope, as the token spec has it; the OAuth2 form below
        // takes them space-separated in one.
        let mut query: Vec<(&str, String)> = scopes.iter().map(|s| ("scope", s.clone())).collect();
        if let Some(s) = &service {
            query.push(("service", s.clone()));
        }
        let req = match creds {
            Some(Credential::IdentityToken(refresh)) => {
                let mut form: Vec<(&str, String)> = vec![("scope", scopes.join(" "))];
                if let Some(s) = service {
                    form.push(("service", s));
                }
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", refresh.clone()));
                form.push(("client_id", "cudaimg".into()));
                http.post(realm.clone()).form(&form)
            }
            Some(Credential::Basic { username, password }) => http
                .get(realm.clone())
                .query(&query)
                .basic_auth(username, Some(password)),
            None => http.get(realm.clone()).query(&query),
        };
        let resp = req
            .timeout(std::time::Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| RegistryError::from_reqwest(realm, e))?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let reason = if creds.is_some() {
                    format!("the token service {realm_label} refused the credentials from docker's config.json for `{}`", self.host)
                } else {
                    format!("the token service {realm_label} refused anonymous access; log in with `docker login {}`", self.host)
                };
                return Err(RegistryError::Denied {
                    url: realm_label,
                    reason,
                });
            }
            s => {
                return Err(RegistryError::Status {
                    url: realm_label,
                    status: s.as_u16(),
                    detail: " from the token service".into(),
                    retry_after: None,
                })
            }
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| RegistryError::from_reqwest(realm, e))?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| RegistryError::Denied {
                url: realm_label.clone(),
                reason: "the token service answered without a JSON token".into(),
            })?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or(RegistryError::Denied {
                url: realm_label,
                reason: "the token service answered without a token".into(),
            })
    }
}

/// What a 401's `WWW-Authenticate` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// A token from `realm`, for `service` and `scope` when the registry names them.
    Bearer {
        realm: Url,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Reads a `WWW-Authenticate` header (registry input: anything may be in it). Bearer wins over
/// Basic; the error says why the challenge cannot be answered, with the header's words escaped.
pub fn read_challenge(header: Option<&str>) -> Result<Challenge, String> {
    let challenges = header
        .and_then(|c| http_auth::parse_challenges(c).ok())
        .unwrap_or_default();
    if let Some(bearer) = challenges
        .iter()
        .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))
    {
        let param = |name: &str| {
            bearer
                .params
                .iter()
                .find(|p| p.0.eq_ignore_ascii_case(name))
                .map(|p| p.1.to_unescaped())
        };
        let realm = param("realm").ok_or("its Bearer challenge names no realm")?;
        let url = Url::parse(&realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| format!("its token realm `{}` is not an http(s) URL", shown(&realm)))?;
        return Ok(Challenge::Bearer {
            realm: url,
            service: param("service"),
            scope: param("scope"),
        });
    }
    if challenges
        .iter()
        .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
    {
        return Ok(Challenge::Basic);
    }
    Err("it answered 401 without a Bearer or Basic challenge".into())
}

/// The scopes to ask a token for: ours (what the operation needs: a push needs `pull,push`,
/// a mount also `pull` on the source repository) and those the challenge names, each once.
/// The challenge's alone would not do: a registry names the scope of the request it refused,
/// and the token must also serve the session's later requests.
fn requested_scopes(ours: &str, challenge: Option<&str>) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for s in ours
        .split_whitespace()
        .chain(challenge.unwrap_or_default().split_whitespace())
    {
        if !scopes.iter().any(|have| have == s) {
            scopes.push(s.to_owned());
        }
    }
    scopes
}

fn bearer_header(token: &str) -> Result<HeaderValue, RegistryError> {
    sensitive(&format!("Bearer {token}"))
}

fn sensitive(value: &str) -> Result<HeaderValue, RegistryError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| RegistryError::Denied {
        url: String::new(),
        reason: "the credentials hold characters not allowed in an HTTP header".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// The header name, re-exported for the client.
pub(crate) const AUTH_HEADER: reqwest::header::HeaderName = AUTHORIZATION;
