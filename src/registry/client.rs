//! One endpoint's distribution API: `GET /v2/<name>/manifests/<ref>` and
//! `GET /v2/<name>/blobs/<digest>` (with `Range` for resumption), behind authentication.
//!
//! Redirects (blob CDNs) are followed by reqwest, which drops `Authorization` whenever the
//! host, port or scheme changes; credentials never leave the endpoint they belong to.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};

use super::auth::{Auth, AUTH_HEADER};
use super::error::{redact_url, RegistryError};
use crate::config::Endpoint;
use crate::digest::Digest;
use crate::manifest::{self, ManifestError, MAX_MANIFEST_BYTES};

const USER_AGENT: &str = concat!("cudaimg/", env!("CARGO_PKG_VERSION"));
/// Short: a dead mirror should cost seconds, not the 30 s that containerd spends per blob.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP clients shared by all endpoints: connection pools are per client, and TLS
/// verification can only be switched off per client.
#[derive(Clone)]
pub struct HttpClients {
    verified: Client,
    insecure: Client,
    /// Manifests are small: a manifest request that takes longer than the stall timeout is
    /// stuck. Blob bodies have no total limit; the engine ends them when they stall.
    manifest_timeout: Duration,
}

impl HttpClients {
    pub fn new(stall_timeout: Duration) -> Result<Self, reqwest::Error> {
        let base = || {
            Client::builder()
                .user_agent(USER_AGENT)
                .connect_timeout(CONNECT_TIMEOUT)
                .redirect(reqwest::redirect::Policy::limited(10))
        };
        Ok(HttpClients {
            verified: base().build()?,
            insecure: base().danger_accept_invalid_certs(true).build()?,
            manifest_timeout: stall_timeout,
        })
    }
}

/// A client for one endpoint.
pub struct RegistryClient {
    base: String,
    http: Client,
    manifest_timeout: Duration,
    auth: Auth,
}

/// A manifest as the registry sent it, verified against the digest asked for or announced.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: Option<String>,
    pub digest: Digest,
    pub url: String,
}

/// A blob response whose body starts at `offset` of the blob.
pub struct BlobResponse {
    pub response: Response,
    pub offset: u64,
    pub url: String,
}

impl RegistryClient {
    pub fn new(endpoint: &Endpoint, clients: &HttpClients) -> Self {
        let http = if endpoint.insecure {
            clients.insecure.clone()
        } else {
            clients.verified.clone()
        };
        RegistryClient {
            base: endpoint.url.as_str().trim_end_matches('/').to_owned(),
            http,
            manifest_timeout: clients.manifest_timeout,
            auth: Auth::new(endpoint.authority(), endpoint.url.scheme() == "https"),
        }
    }

    /// The endpoint's base URL, as reports name the source.
    pub fn label(&self) -> &str {
        &self.base
    }

    pub fn manifest_url(&self, repo: &str, reference: &str) -> String {
        format!("{}/v2/{repo}/manifests/{reference}", self.base)
    }

    pub fn blob_url(&self, repo: &str, digest: &Digest) -> String {
        format!("{}/v2/{repo}/blobs/{digest}", self.base)
    }

    /// Fetches a manifest by tag or digest. With `expected`, the bytes must hash to it; a
    /// `Docker-Content-Digest` header, when present, must agree with the bytes too.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<FetchedManifest, RegistryError> {
        let url = self.url(&self.manifest_url(repo, reference))?;
        let label = redact_url(&url);
        let resp = self
            .send(repo, &url, |c| {
                c.get(url.clone())
                    .header(ACCEPT, manifest::ACCEPT)
                    .timeout(self.manifest_timeout)
            })
            .await?;
        let resp = check_status(resp, "manifest").await?;
        let too_large = || RegistryError::BadManifest {
            url: label.clone(),
            source: ManifestError::TooLarge,
        };
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_MANIFEST_BYTES)
        {
            return Err(too_large());
        }
        let media_type = header_str(&resp, CONTENT_TYPE.as_str());
        let announced =
            header_str(&resp, "docker-content-digest").and_then(|d| Digest::parse(&d).ok());
        let mut bytes = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| RegistryError::from_reqwest(&url, e))?;
            if (bytes.len() + chunk.len()) as u64 > MAX_MANIFEST_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let digest = Digest::of(&bytes);
        for want in expected.into_iter().chain(announced.as_ref()) {
            if *want != digest {
                return Err(RegistryError::DigestMismatch {
                    url: label,
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
            url: label,
        })
    }

    /// Asks which digest `reference` (a tag) names, with a HEAD: cheap, and Docker Hub does
    /// not count it as a pull. Registries that omit `Docker-Content-Digest` on HEAD get a
    /// GET, and the digest of the bytes.
    pub async fn resolve(&self, repo: &str, reference: &str) -> Result<Digest, RegistryError> {
        let url = self.url(&self.manifest_url(repo, reference))?;
        let resp = self
            .send(repo, &url, |c| {
                c.head(url.clone())
                    .header(ACCEPT, manifest::ACCEPT)
                    .timeout(self.manifest_timeout)
            })
            .await?;
        let resp = check_status(resp, "manifest").await?;
        match header_str(&resp, "docker-content-digest").and_then(|d| Digest::parse(&d).ok()) {
            Some(d) => Ok(d),
            None => Ok(self.manifest(repo, reference, None).await?.digest),
        }
    }

    /// Starts a blob download at `offset` (0 for the whole blob).
    ///
    /// A server that ignores the `Range` header answers 200 with the whole blob; the
    /// returned `offset` is then 0 and the caller starts over.
    pub async fn blob(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobResponse, RegistryError> {
        let url = self.url(&self.blob_url(repo, digest))?;
        let resp = self
            .send(repo, &url, |c| {
                let r = c.get(url.clone());
                if offset > 0 {
                    r.header(RANGE, format!("bytes={offset}-"))
                } else {
                    r
                }
            })
            .await?;
        let resp = check_status(resp, "blob").await?;
        let offset = if resp.status() == StatusCode::PARTIAL_CONTENT {
            offset
        } else {
            0
        };
        Ok(BlobResponse {
            url: redact_url(&url),
            response: resp,
            offset,
        })
    }

    fn url(&self, s: &str) -> Result<Url, RegistryError> {
        Url::parse(s).map_err(|_| RegistryError::Status {
            url: s.to_owned(),
            status: 0,
            detail: " (not a valid URL)".into(),
            retry_after: None,
        })
    }

    /// Sends a request, answering one authentication challenge if the registry asks.
    async fn send(
        &self,
        repo: &str,
        url: &Url,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let scope = format!("repository:{repo}:pull");
        let mut authorization: Option<HeaderValue> = self.auth.cached(&scope);
        let mut answered = false;
        loop {
            let mut req = build(&self.http);
            if let Some(h) = &authorization {
                req = req.header(AUTH_HEADER, h.clone());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| RegistryError::from_reqwest(url, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || answered {
                return Ok(resp);
            }
            answered = true;
            let challenge = header_str(&resp, WWW_AUTHENTICATE.as_str());
            authorization = Some(
                self.auth
                    .respond(&self.http, challenge.as_deref(), &scope, url)
                    .await?,
            );
        }
    }
}

fn header_str(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Turns a non-success status into a typed error, with the registry's own error text.
async fn check_status(resp: Response, what: &'static str) -> Result<Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let url = redact_url(resp.url());
    let retry_after = header_str(&resp, RETRY_AFTER.as_str())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let detail = error_detail(resp).await;
    Err(match status {
        StatusCode::NOT_FOUND => RegistryError::NotFound { url, what, detail },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Denied {
            url,
            reason: format!("HTTP {}{detail}", status.as_u16()),
        },
        _ => RegistryError::Status {
            url,
            status: status.as_u16(),
            detail,
            retry_after,
        },
    })
}

/// `: CODE message` from a distribution error body, or nothing. Bodies that are not the
/// registry's JSON (proxies' HTML pages) are not echoed.
async fn error_detail(resp: Response) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        code: Option<String>,
        message: Option<String>,
    }
    let mut buf = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        buf.extend_from_slice(&chunk);
        if buf.len() > 8192 {
            return String::new();
        }
    }
    let Ok(body) = serde_json::from_slice::<Body>(&buf) else {
        return String::new();
    };
    body.errors
        .first()
        .map(|e| {
            let text = [e.code.as_deref(), e.message.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
            format!(": {text}")
        })
        .unwrap_or_default()
}
