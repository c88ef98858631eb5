//! Uploads fixtures into a registry byte-exactly, with plain blocking HTTP (not with the code
//! under test, so a bug in cudaimg cannot hide itself in its own test data).
//!
//! Blobs go up by monolithic upload (`POST .../blobs/uploads/`, then `PUT <location>&digest=`),
//! skipped when `HEAD` says the registry has them; platform manifests are PUT by digest, the
//! index (or a single-platform manifest) by tag, each with its own media type as Content-Type.
//! The registry's `Docker-Content-Digest` is checked against ours, so what it stored is what the
//! fixture holds.
//!
//! Scenarios: push another [`Fixture`] with the same tag later ("the tag moved"); push without
//! tag ([`Pusher::push_untagged`], a mirror lacking the tag); push single platforms or blobs; delete
//! manifests or blobs afterwards (the registry runs with deletes enabled).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::fixtures::{BlobRef, Document, Fixture, PlatformImage};
use super::registry::TestRegistry;

/// A blocking registry client for setting up test data.
pub struct Pusher {
    client: Client,
    base: String,
    basic: Option<(String, String)>,
    /// Bearer tokens by scope, for registries with token auth.
    tokens: Mutex<HashMap<String, String>>,
    /// Set once the registry asked for Bearer tokens: from then on the credentials go only to
    /// the token realm, never to the registry itself.
    bearer: AtomicBool,
}

impl Pusher {
    /// Pushes to `registry`, with the Basic credentials it was started with, if any.
    pub fn new(registry: &TestRegistry) -> Self {
        let pusher = Self::to_url(&registry.url());
        match registry.basic_auth() {
            Some((user, pass)) => pusher.with_basic_auth(user, pass),
            None => pusher,
        }
    }

    /// Pushes to a registry at `url` (`http://127.0.0.1:PORT`), anonymously.
    pub fn to_url(url: &str) -> Self {
        Pusher {
            client: http_client(),
            base: url.trim_end_matches('/').to_string(),
            basic: None,
            tokens: Mutex::new(HashMap::new()),
            bearer: AtomicBool::new(false),
        }
    }

    /// Sends these credentials: as Basic to the registry itself, or only to the token realm once
    /// the registry has asked for a Bearer token.
    pub fn with_basic_auth(mut self, user: &str, pass: &str) -> Self {
        self.basic = Some((user.to_string(), pass.to_string()));
        self
    }

    /// Pushes everything and tags the top document (index, or the single manifest) as
    /// `fixture.repo:fixture.tag`. Pushing another fixture with the same repo and tag moves it.
    pub fn push(&self, fixture: &Fixture) {
        self.push_as(fixture, &fixture.repo, &fixture.tag);
    }

    /// Like [`Pusher::push`] under another repository and tag.
    pub fn push_as(&self, fixture: &Fixture, repo: &str, tag: &str) {
        self.push_untagged(fixture, repo);
        self.push_manifest(repo, tag, fixture.top());
    }

    /// Pushes all blobs and platform manifests, and the index, by digest only: the content is
    /// there but no tag names it.
    pub fn push_untagged(&self, fixture: &Fixture, repo: &str) {
        for blob in fixture.blobs() {
            self.push_blob(repo, blob);
        }
        for platform in &fixture.platforms {
            self.push_manifest(repo, &platform.manifest.digest, &platform.manifest);
        }
        if let Some(index) = &fixture.index {
            self.push_manifest(repo, &index.digest, index);
        }
    }

    /// One platform's config, layers and manifest (by digest).
    pub fn push_platform(&self, repo: &str, platform: &PlatformImage) {
        self.push_blob(
            repo,
            BlobRef::Bytes {
                digest: &platform.config.digest,
                bytes: &platform.config.bytes,
            },
        );
        for layer in &platform.layers {
            self.push_blob(
                repo,
                BlobRef::File {
                    digest: &layer.digest,
                    size: layer.size,
                    path: &layer.path,
                },
            );
        }
        self.push_manifest(repo, &platform.manifest.digest, &platform.manifest);
    }

    /// Whether `HEAD /v2/<repo>/blobs/<digest>` answers 200.
    pub fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let response = self.send(repo, |c| c.head(&url));
        match response.status() {
            StatusCode::OK => true,
            StatusCode::NOT_FOUND => false,
            other => panic!("HEAD {url}: unexpected {other}"),
        }
    }

    /// Monolithic upload of one blob, unless the registry has it already.
    pub fn push_blob(&self, repo: &str, blob: BlobRef<'_>) {
        if self.blob_exists(repo, blob.digest()) {
            return;
        }
        let start = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let response = self.send(repo, |c| c.post(&start));
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "POST {start}: {}",
            body_text(response)
        );
        let location = response
            .headers()
            .get(LOCATION)
            .expect("upload start answers a Location")
            .to_str()
            .unwrap()
            .to_string();
        // Location may be relative; the digest joins its query (distribution puts state there).
        let location = url::Url::parse(&self.base)
            .unwrap()
            .join(&location)
            .unwrap();
        let separator = if location.query().is_some() { '&' } else { '?' };
        let put = format!("{location}{separator}digest={}", blob.digest());
        let response = self.send(repo, |c| {
            let request = c.put(&put).header(CONTENT_TYPE, "application/octet-stream");
            match blob {
                BlobRef::Bytes { bytes, .. } => request.body(bytes.to_vec()),
                // Streamed from the file, with its length: fine for GB-sized bench layers.
                BlobRef::File { path, .. } => request.body(File::open(path).unwrap()),
            }
        });
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "PUT blob {} ({} bytes): {}",
            blob.digest(),
            blob.size(),
            body_text(response)
        );
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the document's exact bytes; `reference` is
    /// a tag or the document's digest.
    pub fn push_manifest(&self, repo: &str, reference: &str, doc: &Document) {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let response = self.send(repo, |c| {
            c.put(&url)
                .header(CONTENT_TYPE, &doc.media_type)
                .body(doc.bytes.clone())
        });
        let status = response.status();
        let stored = response
            .headers()
            .get("Docker-Content-Digest")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            status,
            StatusCode::CREATED,
            "PUT {url} ({}): {}",
            doc.media_type,
            body_text(response)
        );
        assert_eq!(
            stored.as_deref(),
            Some(doc.digest.as_str()),
            "registry stored other bytes for {url}"
        );
    }

    /// Deletes a manifest by digest (its tags go with it).
    pub fn delete_manifest(&self, repo: &str, digest: &str) {
        let url = format!("{}/v2/{repo}/manifests/{digest}", self.base);
        let response = self.send(repo, |c| c.delete(&url));
        assert_eq!(response.status(), StatusCode::ACCEPTED, "DELETE {url}");
    }

    /// Unlinks a blob from the repository: GETs of it then answer 404.
    pub fn delete_blob(&self, repo: &str, digest: &str) {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let response = self.send(repo, |c| c.delete(&url));
        assert_eq!(response.status(), StatusCode::ACCEPTED, "DELETE {url}");
    }

    /// Sends a request with our credentials; on a Bearer challenge fetches a token for
    /// `repository:<repo>:pull,push,delete` and sends it again (`build` runs once per attempt,
    /// so file bodies are reopened).
    fn send(&self, repo: &str, build: impl Fn(&Client) -> RequestBuilder) -> Response {
        let scope = format!("repository:{repo}:pull,push,delete");
        let mut request = build(&self.client);
        if let Some(token) = self.tokens.lock().unwrap().get(&scope) {
            request = request.bearer_auth(token);
        } else if let (Some((user, pass)), false) = (&self.basic, self.bearer.load(SeqCst)) {
            request = request.basic_auth(user, Some(pass));
        }
        let response = request.send().unwrap();
        if response.status() != StatusCode::UNAUTHORIZED {
            return response;
        }
        let Some(challenge) = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_bearer_challenge)
        else {
            return response; // Basic refused: let the caller's assertion report it
        };
        self.bearer.store(true, SeqCst);
        let token = self.fetch_token(&challenge, &scope);
        self.tokens.lock().unwrap().insert(scope, token.clone());
        build(&self.client).bearer_auth(token).send().unwrap()
    }

    fn fetch_token(&self, challenge: &HashMap<String, String>, scope: &str) -> String {
        let realm = challenge
            .get("realm")
            .expect("Bearer challenge has a realm");
        let mut request = self.client.get(realm).query(&[("scope", scope)]);
        if let Some(service) = challenge.get("service") {
            request = request.query(&[("service", service)]);
        }
        if let Some((user, pass)) = &self.basic {
            request = request.basic_auth(user, Some(pass));
        }
        let response = request.send().unwrap();
        assert!(
            response.status().is_success(),
            "token from {realm}: {}",
            response.status()
        );
        let body: serde_json::Value = response.json().unwrap();
        body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .expect("token response has a token")
            .to_string()
    }
}

/// A blocking client for tests: no system proxy (the test hosts are all on loopback).
pub fn http_client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn body_text(response: Response) -> String {
    let status = response.status();
    format!("{status} {}", response.text().unwrap_or_default())
}

/// Parses `Bearer realm="...",service="...",scope="a,b"` (quote-aware: scopes hold commas).
/// Returns `None` for other schemes.
pub fn parse_bearer_challenge(header: &str) -> Option<HashMap<String, String>> {
    let (scheme, params) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.insert(key.trim().to_ascii_lowercase(), value.to_string());
        rest = after.trim_start_matches([',', ' ']);
    }
    Some(out)
}
