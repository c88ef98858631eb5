//! One endpoint's distribution API: `GET /v2/<name>/manifests/<ref>`,
//! `GET /v2/<name>/blobs/<digest>` (with `Range` for resumption) and
//! `GET /v2/<name>/tags/list` (paginated), behind authentication; and `GET /v2/`, to see
//! whether the endpoint answers at all.
//!
//! Redirects (blob CDNs) are followed by reqwest, which drops `Authorization` whenever the
//! host, port or scheme changes; credentials never leave the endpoint they belong to. Only
//! `http` and `https` targets are followed; an endpoint marked insecure follows redirects
//! within its own origin only. Writes (`PUT`, `PATCH`, `POST`, `DELETE`) follow redirects
//! within the registry's origin only, whatever the endpoint: a manifest re-sent to another
//! host would be reported as pushed. A redirect that is not followed is reported with its
//! reason.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{
    HeaderValue, ACCEPT, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};

use super::auth::{Auth, AUTH_HEADER};
use super::error::{redact_url, RegistryError};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{self, ManifestError, MAX_MANIFEST_BYTES};

/// Redirects followed for one request, as reqwest's default policy allows.
const MAX_REDIRECTS: usize = 10;
const USER_AGENT: &str = concat!("cudaimg/", env!("CARGO_PKG_VERSION"));
/// Short: a dead mirror should cost seconds, not the 30 s that containerd spends per blob.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP clients shared by all endpoints: connection pools are per client, and TLS
/// verification can only be switched off per client.
#[derive(Clone)]
pub struct HttpClients {
    verified: Client,
    insecure: Client,
    /// For writes (`PUT`, `PATCH`, `POST`, `DELETE`): redirects are followed only within the
    /// origin of the request. reqwest's policy sees URLs, not methods, hence clients of their
    /// own; and a write sent elsewhere (a manifest `PUT` re-sent to another host by a 307)
    /// would report as pushed what the registry never received.
    writes_verified: Client,
    writes_insecure: Client,
    /// Manifests are small: a manifest request that takes longer than the stall timeout is
    /// stuck. Blob bodies have no total limit; the engine ends them when they stall.
    manifest_timeout: Duration,
    /// `--creds`: a credential given on the command line, and the hosts it must never go
    /// to (the configured mirrors: a secret for one's own registry is not a third party's).
    explicit: Option<std::sync::Arc<(crate::Credential, std::collections::HashSet<String>)>>,
}

impl HttpClients {
    /// The same clients, with `credential` used for every endpoint whose `host[:port]` is
    /// not in `never` (instead of docker's config.json).
    #[must_use]
    pub fn with_explicit_credential(
        &self,
        credential: crate::Credential,
        never: std::collections::HashSet<String>,
    ) -> Self {
        HttpClients {
            explicit: Some(std::sync::Arc::new((credential, never))),
            ..self.clone()
        }
    }

    /// The same clients (and connection pools) with another limit on manifest-sized
    /// requests: a health check wants its answer sooner than a pull.
    #[must_use]
    pub fn with_manifest_timeout(&self, manifest_timeout: Duration) -> Self {
        HttpClients {
            manifest_timeout,
            ..self.clone()
        }
    }

    pub fn new(stall_timeout: Duration) -> Result<Self, reqwest::Error> {
        let base = || {
            Client::builder()
                .user_agent(USER_AGENT)
                .connect_timeout(CONNECT_TIMEOUT)
        };
        Ok(HttpClients {
            // A redirect to another scheme (`file:`, `ftp:`) is stopped here rather than left
            // to reqwest, whose refusal would read as a broken transfer worth retrying.
            verified: base()
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    if !is_http(attempt.url()) {
                        attempt.stop()
                    } else if attempt.previous().len() >= MAX_REDIRECTS {
                        attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
                    } else {
                        attempt.follow()
                    }
                }))
                .build()?,
            // Verification is off for the endpoint's own host only: a redirect elsewhere is
            // not followed, and token realms on other hosts use the verified client.
            insecure: base()
                .danger_accept_invalid_certs(true)
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    let same = attempt
                        .previous()
                        .last()
                        .is_some_and(|prev| same_origin(prev, attempt.url()));
                    if same && attempt.previous().len() < MAX_REDIRECTS {
                        attempt.follow()
                    } else {
                        attempt.stop()
                    }
                }))
                .build()?,
            writes_verified: base().redirect(same_origin_only()).build()?,
            writes_insecure: base()
                .danger_accept_invalid_certs(true)
                .redirect(same_origin_only())
                .build()?,
            manifest_timeout: stall_timeout,
            explicit: None,
        })
    }
}

/// Follows a redirect only while it stays on the origin (scheme, host, port) of the first
/// request; anything else is stopped and its 3xx answer reaches the caller as an error.
fn same_origin_only() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt
            .previous()
            .first()
            .is_some_and(|first| same_origin(first, attempt.url()));
        if same && attempt.previous().len() < MAX_REDIRECTS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// A client for one endpoint.
pub struct RegistryClient {
    /// The URL the user wrote (without a trailing `/`), as reports and health memory name it.
    base: String,
    /// Where the API lives: `<origin>/v2`, or the path the URL gave up to its `v2` segment.
    api: String,
    /// A namespace the endpoint keeps the registry's repositories under (`mirror/`), or "".
    prefix: String,
    http: Client,
    /// [`HttpClients`]' client for writes, of the same TLS setting as `http`.
    writes: Client,
    /// For token realms on other hosts, which the endpoint's `insecure` does not cover.
    verified: Client,
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

/// Every tag of a repository, as one endpoint listed them.
#[derive(Debug, Clone)]
pub struct TagList {
    pub tags: Vec<String>,
    /// Pages read (1 when the registry does not paginate).
    pub pages: usize,
}

/// Bounds on a tag listing: a hostile or broken registry cannot make cudaimg loop or
/// buffer without end. Docker Hub's `nvidia/cuda` has a few thousand tags.
const MAX_TAG_PAGE_BYTES: u64 = 16 * 1024 * 1024;
const MAX_TAG_PAGES: usize = 10_000;
const MAX_TAGS: usize = 1_000_000;

/// What a paginated listing holds.
#[derive(Debug, Clone, Copy)]
enum Listed {
    Tags,
    Repositories,
}

impl Listed {
    fn noun(self) -> &'static str {
        match self {
            Listed::Tags => "tags",
            Listed::Repositories => "repositories",
        }
    }
    fn what(self) -> &'static str {
        match self {
            Listed::Tags => "tag list",
            Listed::Repositories => "catalog",
        }
    }
}

/// A blob response whose body starts at `offset` of the blob.
pub struct BlobResponse {
    pub response: Response,
    pub offset: u64,
    pub url: String,
}

impl RegistryClient {
    /// A client for the endpoint at `url` (scheme, host, optional path prefix). `insecure`
    /// skips TLS certificate checks; only the user's configuration ever sets it.
    pub fn new(url: &url::Url, insecure: bool, clients: &HttpClients) -> Self {
        let (http, writes) = if insecure {
            (clients.insecure.clone(), clients.writes_insecure.clone())
        } else {
            (clients.verified.clone(), clients.writes_verified.clone())
        };
        let (api, prefix) = api_and_prefix(url);
        let client = RegistryClient {
            base: url.as_str().trim_end_matches('/').to_owned(),
            api,
            prefix,
            http,
            writes,
            verified: clients.verified.clone(),
            manifest_timeout: clients.manifest_timeout,
            auth: Auth::new(authority(url), url.scheme() == "https"),
        };
        match &clients.explicit {
            Some(e) if !e.1.contains(&authority(url)) => client.with_credential(e.0.clone()),
            _ => client,
        }
    }

    /// How long a manifest request may take: the stall timeout (`--stall-timeout`).
    pub fn manifest_timeout(&self) -> Duration {
        self.manifest_timeout
    }

    /// The endpoint's base URL, as reports name the source.
    pub fn label(&self) -> &str {
        &self.base
    }

    pub fn manifest_url(&self, repo: &str, reference: &str) -> String {
        format!("{}/{}/manifests/{reference}", self.api, self.name(repo))
    }

    pub fn blob_url(&self, repo: &str, digest: &Digest) -> String {
        format!("{}/{}/blobs/{digest}", self.api, self.name(repo))
    }

    /// `repo` as this endpoint names it: under its namespace prefix, if it has one.
    pub(crate) fn name(&self, repo: &str) -> String {
        format!("{}{repo}", self.prefix)
    }

    /// The start of every API URL: `<origin>/v2`, or the path the endpoint's URL gave.
    pub(crate) fn api(&self) -> &str {
        &self.api
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
        if matches!(
            resp.status(),
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
        ) {
            return Ok(self.manifest(repo, reference, None).await?.digest);
        }
        let resp = check_status(resp, "manifest").await?;
        match header_str(&resp, "docker-content-digest").and_then(|d| Digest::parse(&d).ok()) {
            Some(d) => Ok(d),
            None => Ok(self.manifest(repo, reference, None).await?.digest),
        }
    }

    /// Lists every tag of `repo`: `GET /v2/<repo>/tags/list?n=<page_size>`, then each page
    /// the `Link: <…>; rel="next"` header names, until there is none. A registry that does
    /// not paginate (CNCF distribution 2.8 ignores `n`) answers everything at once.
    pub async fn tags(&self, repo: &str, page_size: u32) -> Result<TagList, RegistryError> {
        let name = self.name(repo);
        let first = self.url(&format!("{}/{name}/tags/list?n={page_size}", self.api))?;
        self.paged(
            &format!("repository:{name}:pull"),
            first,
            Listed::Tags,
            "repository",
        )
        .await
    }

    /// Lists every repository of the registry: `GET /v2/_catalog?n=<page_size>`, paginated
    /// as [`Self::tags`] is, with the `registry:catalog:*` scope a token server asks for.
    /// The names are in [`TagList::tags`]. Many public registries (Docker Hub) refuse it;
    /// CNCF distribution serves it.
    pub async fn catalog(&self, page_size: u32) -> Result<TagList, RegistryError> {
        let first = self.url(&format!("{}/_catalog?n={page_size}", self.api))?;
        let mut list = self
            .paged("registry:catalog:*", first, Listed::Repositories, "catalog")
            .await?;
        // Under a namespace prefix, the registry's repositories are those inside it.
        if !self.prefix.is_empty() {
            list.tags = list
                .tags
                .iter()
                .filter_map(|n| n.strip_prefix(&self.prefix).map(str::to_owned))
                .collect();
        }
        Ok(list)
    }

    /// The pages of a tag list or the catalog, from `first` on, bounded (see the limits).
    async fn paged(
        &self,
        scope: &str,
        first: Url,
        listed: Listed,
        what: &'static str,
    ) -> Result<TagList, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
            repositories: Option<Vec<String>>,
        }
        let mut next = Some(first);
        let mut seen = std::collections::HashSet::new();
        let mut list = TagList {
            tags: Vec::new(),
            pages: 0,
        };
        while let Some(url) = next.take() {
            let label = redact_url(&url);
            let bad = |reason: String| RegistryError::BadResponse {
                url: label.clone(),
                reason,
            };
            if !seen.insert(url.to_string()) {
                return Err(bad(
                    "its `Link` header leads back to a page already read".into()
                ));
            }
            if list.pages >= MAX_TAG_PAGES {
                return Err(bad(format!(
                    "it has more than {MAX_TAG_PAGES} pages of {}",
                    listed.noun()
                )));
            }
            let resp = self
                .send_scoped(scope, &url, |c| {
                    c.get(url.clone())
                        .header(ACCEPT, "application/json")
                        .timeout(self.manifest_timeout)
                })
                .await?;
            let resp = check_status(resp, what).await?;
            let link = header_str(&resp, "link");
            if resp
                .content_length()
                .is_some_and(|l| l > MAX_TAG_PAGE_BYTES)
            {
                return Err(bad(format!(
                    "a page is larger than {MAX_TAG_PAGE_BYTES} bytes"
                )));
            }
            let mut body = Vec::new();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| RegistryError::from_reqwest(&url, e))?;
                if (body.len() + chunk.len()) as u64 > MAX_TAG_PAGE_BYTES {
                    return Err(bad(format!(
                        "a page is larger than {MAX_TAG_PAGE_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            let page: Page = serde_json::from_slice(&body).map_err(|e| {
                bad(format!(
                    "the {} is not the distribution API's JSON ({e})",
                    listed.what()
                ))
            })?;
            list.pages += 1;
            let names = match listed {
                Listed::Tags => page.tags,
                Listed::Repositories => page.repositories,
            };
            // The distribution spec caps tags at 128 characters (and repository names at
            // 255); longer ones are not names, and dropping them bounds what a hostile
            // registry can make us hold.
            let max_len = match listed {
                Listed::Tags => 128,
                Listed::Repositories => 255,
            };
            list.tags.extend(
                names
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| t.len() <= max_len),
            );
            if list.tags.len() > MAX_TAGS {
                return Err(bad(format!(
                    "it lists more than {MAX_TAGS} {}",
                    listed.noun()
                )));
            }
            if let Some(href) = link.as_deref().and_then(next_link) {
                let target = url
                    .join(href)
                    .map_err(|_| bad(format!("its `Link` header `{href}` is not a URL")))?;
                // The next page is asked with this endpoint's credentials: never elsewhere.
                if !same_origin(&target, &url) {
                    return Err(bad(format!(
                        "its `Link` header points at another host ({})",
                        redact_url(&target)
                    )));
                }
                next = Some(target);
            }
        }
        Ok(list)
    }

    /// `GET /v2/` without credentials: the HTTP status the endpoint answers with (200, or
    /// 401 when it wants a login: both mean it speaks the registry API).
    pub async fn ping(&self) -> Result<u16, RegistryError> {
        let url = self.url(&format!("{}/", self.api))?;
        let resp = self
            .http
            .get(url.clone())
            .timeout(self.manifest_timeout)
            .send()
            .await
            .map_err(|e| RegistryError::from_reqwest(&url, e))?;
        Ok(resp.status().as_u16())
    }

    /// Starts a download of the `size`-byte blob at `offset` (0 for the whole blob).
    ///
    /// A server that ignores `Range` answers 200 with the whole blob; the returned `offset`
    /// is then 0, and the caller skips the bytes it holds as they stream. A body that cannot be the blob (a length or
    /// range that does not fit `size` and `offset`) is refused before a byte is read.
    pub async fn blob(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
        size: u64,
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
        let label = redact_url(resp.url());
        let bad = |reason: String| RegistryError::BadRange {
            url: label.clone(),
            reason,
        };
        let start = if resp.status() == StatusCode::PARTIAL_CONTENT {
            let range = header_str(&resp, CONTENT_RANGE.as_str()).unwrap_or_default();
            let (start, total) = parse_content_range(&range)
                .ok_or_else(|| bad(format!("its 206 has no usable Content-Range (`{range}`)")))?;
            if start != offset || total.is_some_and(|t| t != size) {
                return Err(bad(format!(
                    "it answered bytes {range} to a request for bytes {offset}- of {size}"
                )));
            }
            offset
        } else {
            0
        };
        if let Some(len) = resp.content_length() {
            if start + len != size {
                return Err(RegistryError::SizeMismatch {
                    url: label,
                    expected: size - start,
                    actual: len,
                });
            }
        }
        Ok(BlobResponse {
            url: redact_url(&url),
            response: resp,
            offset: start,
        })
    }

    /// Requests bytes `start..=end` of the `size`-byte blob, for parallel fills. An exact
    /// 206 is the range (`offset` = `start`). A 200 with the whole blob is a server that
    /// ignores `Range` (distribution as a pull-through cache does for a blob it has not
    /// cached): `offset` is 0, and the caller may use the body from byte 0 rather than drop
    /// the source. Anything else cannot be the blob.
    pub async fn blob_range(
        &self,
        repo: &str,
        digest: &Digest,
        start: u64,
        end: u64,
        size: u64,
    ) -> Result<BlobResponse, RegistryError> {
        let url = self.url(&self.blob_url(repo, digest))?;
        let resp = self
            .send(repo, &url, |c| {
                c.get(url.clone())
                    .header(RANGE, format!("bytes={start}-{end}"))
            })
            .await?;
        let resp = check_status(resp, "blob").await?;
        let label = redact_url(resp.url());
        if resp.status() == StatusCode::OK && resp.content_length().is_none_or(|l| l == size) {
            return Ok(BlobResponse {
                url: redact_url(&url),
                response: resp,
                offset: 0,
            });
        }
        let range = header_str(&resp, CONTENT_RANGE.as_str()).unwrap_or_default();
        let exact = resp.status() == StatusCode::PARTIAL_CONTENT
            && range.trim() == format!("bytes {start}-{end}/{size}")
            && resp.content_length().is_none_or(|l| l == end - start + 1);
        if !exact {
            let answered = if range.is_empty() {
                format!("HTTP {} without Content-Range", resp.status().as_u16())
            } else {
                format!("HTTP {} for bytes `{range}`", resp.status().as_u16())
            };
            return Err(RegistryError::BadRange {
                url: label,
                reason: format!("asked for bytes {start}-{end}, it answered {answered}"),
            });
        }
        Ok(BlobResponse {
            url: redact_url(&url),
            response: resp,
            offset: start,
        })
    }

    // A method, though it reads nothing of the client: URLs are built relative to it.
    #[allow(clippy::unused_self)]
    pub(crate) fn url(&self, s: &str) -> Result<Url, RegistryError> {
        Url::parse(s).map_err(|source| RegistryError::InvalidUrl {
            url: s.to_owned(),
            source,
        })
    }

    /// Sends a request, answering one authentication challenge if the registry asks.
    async fn send(
        &self,
        repo: &str,
        url: &Url,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        self.send_scoped(&format!("repository:{}:pull", self.name(repo)), url, build)
            .await
    }

    /// [`Self::send`] for the space-separated Bearer `scope`s the request needs (uploads need
    /// `pull,push`). `build` runs once more after a challenge: only for requests without a
    /// streamed body (see [`Self::send_body_once`]).
    pub(crate) async fn send_scoped(
        &self,
        scope: &str,
        url: &Url,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        self.send_with(&self.http, scope, url, build).await
    }

    /// [`Self::send_scoped`] for a write (`PUT`, `POST`, `DELETE`): a redirect is followed
    /// only within the request's origin.
    pub(crate) async fn send_write_scoped(
        &self,
        scope: &str,
        url: &Url,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let resp = self.send_with(&self.writes, scope, url, build).await?;
        if resp.status().is_redirection() {
            return Err(refused_write_redirect(&resp));
        }
        Ok(resp)
    }

    async fn send_with(
        &self,
        client: &Client,
        scope: &str,
        url: &Url,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let scope = scope.to_owned();
        let mut authorization: Option<HeaderValue> = self.auth.cached(&scope);
        let mut answered = false;
        loop {
            let mut req = build(client);
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
            // A host we were redirected to gets none of this endpoint's credentials.
            if !same_origin(resp.url(), url) {
                return Err(RegistryError::Denied {
                    url: redact_url(resp.url()),
                    reason: format!(
                        "it asked for credentials after a redirect from {}; they are not sent to another host",
                        redact_url(url)
                    ),
                });
            }
            answered = true;
            let challenge = header_str(&resp, WWW_AUTHENTICATE.as_str());
            authorization = Some(
                self.auth
                    .respond(
                        &self.http,
                        &self.verified,
                        challenge.as_deref(),
                        &scope,
                        url,
                    )
                    .await?,
            );
        }
    }

    /// Sends a request whose body is streamed, once. A body is never streamed twice into a
    /// challenge: on a 401 the credentials are renewed here (a bodyless token request) and
    /// [`RegistryError::TokenRenewed`] tells the caller to ask the upload's status and send
    /// the rest again with the fresh token.
    pub(crate) async fn send_body_once(
        &self,
        scope: &str,
        url: &Url,
        request: RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let request = match self.auth.cached(scope) {
            Some(h) => request.header(AUTH_HEADER, h),
            None => request,
        };
        let resp = request
            .send()
            .await
            .map_err(|e| RegistryError::from_reqwest(url, e))?;
        // Only writes stream a body.
        if resp.status().is_redirection() {
            return Err(refused_write_redirect(&resp));
        }
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = header_str(&resp, WWW_AUTHENTICATE.as_str());
        self.auth
            .respond(&self.http, &self.verified, challenge.as_deref(), scope, url)
            .await?;
        Err(RegistryError::TokenRenewed {
            url: redact_url(url),
        })
    }

    /// The endpoint's client for writes, whose redirects stay on the request's origin.
    pub(crate) fn writes(&self) -> &Client {
        &self.writes
    }

    /// Uses `credential` for this endpoint instead of looking one up in docker's config.json
    /// (a caller that was given credentials explicitly, or a test).
    pub fn with_credential(self, credential: crate::Credential) -> Self {
        self.auth.set_credential(credential);
        self
    }
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) as (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

/// The target of the `rel="next"` link of a `Link` header (RFC 8288), as written.
fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim();
            p.strip_prefix("rel=")
                .map(|v| v.trim_matches('"'))
                .is_some_and(|v| v.split_whitespace().any(|r| r.eq_ignore_ascii_case("next")))
        });
        is_next.then_some(target)
    })
}

fn is_http(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https")
}

/// Why a redirect answer reached us instead of being followed, for the error's detail: the
/// policies above stop at a scheme other than http(s), and, for an endpoint marked insecure,
/// at another origin.
fn refused_redirect(from: &Url, location: Option<&str>) -> String {
    let Some(to) = location.and_then(|l| from.join(l).ok()) else {
        return " (a redirect without a usable `Location`)".to_owned();
    };
    if !is_http(&to) {
        return format!(
            " (a redirect to a `{}:` URL, not followed: only http and https are)",
            to.scheme()
        );
    }
    let origin = format!(
        "{}://{}{}",
        to.scheme(),
        to.host_str().unwrap_or(""),
        to.port().map(|p| format!(":{p}")).unwrap_or_default()
    );
    if same_origin(from, &to) {
        return format!(" (more than {MAX_REDIRECTS} redirects)");
    }
    format!(
        " (a redirect to another origin, `{origin}`, not followed for an endpoint marked \
         insecure: its certificate checks are off for its own origin only)"
    )
}

/// A write answered with a redirect that the writes' policy did not follow: one to another
/// origin (never followed), or one within it that could not be (a streamed body is sent once).
fn refused_write_redirect(resp: &Response) -> RegistryError {
    let from = resp.url();
    let location = header_str(resp, LOCATION.as_str());
    let status = resp.status().as_u16();
    let reason = match location.as_deref().and_then(|l| from.join(l).ok()) {
        Some(to) if is_http(&to) && !same_origin(from, &to) => format!(
            "it redirected a write (HTTP {status}) to another origin, `{}://{}{}`: writes go \
             to the registry's own origin only, so it was not followed and nothing was written \
             there",
            to.scheme(),
            to.host_str().unwrap_or(""),
            to.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Some(to) if is_http(&to) => format!(
            "it redirected a write (HTTP {status}) within its origin, which was not followed \
             (more than {MAX_REDIRECTS} redirects, or an upload body that cannot be sent twice)"
        ),
        _ => format!(
            "it redirected a write (HTTP {status}){}",
            refused_redirect(from, location.as_deref())
        ),
    };
    RegistryError::BadResponse {
        url: redact_url(from),
        reason,
    }
}

pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

pub(crate) fn header_str(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Turns a non-success status into a typed error, with the registry's own error text.
pub(crate) async fn check_status(
    resp: Response,
    what: &'static str,
) -> Result<Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let url = redact_url(resp.url());
    let (resp_url, location) = (resp.url().clone(), header_str(&resp, LOCATION.as_str()));
    // Clamped: the value is the server's to choose, and past an hour it means "not today".
    let retry_after = header_str(&resp, RETRY_AFTER.as_str())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    let detail = tokio::time::timeout(Duration::from_secs(5), error_detail(resp))
        .await
        .unwrap_or_default();
    let detail = if status.is_redirection() {
        refused_redirect(&resp_url, location.as_deref())
    } else {
        detail
    };
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

/// `host[:port]` of an endpoint URL: the key credentials are stored under.
/// Splits an endpoint URL into where its API lives and the namespace it keeps repositories
/// under. The path's segments up to and including a `v2` segment are the API's own path
/// (`https://art.example/artifactory/api/docker/hub/v2`, or containerd's `override_path`
/// form `http://site/v2/mirror`); what follows it, or the whole path when it has no `v2`,
/// is a namespace (`http://site/mirror`, as `import --to site/mirror` and Harbor's proxy
/// projects lay repositories out). Docker's `registry-mirrors` cannot say either.
pub fn api_and_prefix(url: &url::Url) -> (String, String) {
    let origin = url.origin().ascii_serialization();
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let (api, namespace) = match segments.iter().rposition(|s| *s == "v2") {
        Some(at) => (&segments[..=at], &segments[at + 1..]),
        None => (&[][..], &segments[..]),
    };
    let api = if api.is_empty() {
        format!("{origin}/v2")
    } else {
        format!("{origin}/{}", api.join("/"))
    };
    let mut prefix = namespace.join("/");
    if !prefix.is_empty() {
        prefix.push('/');
    }
    (api, prefix)
}

fn authority(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_path_is_a_namespace_or_the_api_root() {
        let split = |u: &str| api_and_prefix(&url::Url::parse(u).expect("a URL"));
        let s = |a: &str, p: &str| (a.to_owned(), p.to_owned());
        assert_eq!(split("https://m.example"), s("https://m.example/v2", ""));
        assert_eq!(split("http://h:5000/"), s("http://h:5000/v2", ""));
        assert_eq!(
            split("http://h:5000/mirror"),
            s("http://h:5000/v2", "mirror/")
        );
        assert_eq!(split("http://h/a/b/"), s("http://h/v2", "a/b/"));
        assert_eq!(split("http://h/v2/mirror"), s("http://h/v2", "mirror/"));
        assert_eq!(
            split("https://h/api/docker/hub/v2"),
            s("https://h/api/docker/hub/v2", "")
        );
        assert_eq!(split("https://h/v2/"), s("https://h/v2", ""));
    }

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(r#"</v2/nvidia/cuda/tags/list?last=12.4.1&n=100>; rel="next""#),
            Some("/v2/nvidia/cuda/tags/list?last=12.4.1&n=100")
        );
        assert_eq!(
            next_link(r#"<https://a/x?p=1>; rel="prev", <https://a/x?p=3>; rel=next"#),
            Some("https://a/x?p=3")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }
}
