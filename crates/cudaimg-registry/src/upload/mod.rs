//! Writing to one endpoint (OCI distribution 1.1 push): `HEAD` a blob, mount it from another
//! repository, upload it (one `PUT`, or `PATCH` chunks and a closing `PUT`), resume an upload
//! after a cut from the session's status, cancel it, and `PUT` manifests byte-exact.
//!
//! # How a caller drives it
//!
//! For each blob, [`RegistryClient::push_blob`] does the whole protocol: `HEAD` (skip what the
//! registry has), a mount from each repository in `mount_from` (the store's record of where the
//! blob was, other images of the run, `--mount-from`), then an upload. Its bytes come from a
//! [`BlobSource`], which can open the blob at any offset: a store file ([`FileSource`]), bytes
//! in memory ([`BytesSource`]), or, for `copy`, a source registry whose reader resumes its own
//! cuts with `Range`. Memory is a few 256 KiB pieces per blob, whatever its size. Run blobs
//! concurrently (`-j N`) on one client; then `PUT` child manifests and the index last, with
//! [`RegistryClient::put_manifest`].
//!
//! Inside `push_blob`: 429, 5xx and cuts back off ([`UploadOptions`]) and resume from the
//! session's `Range`; a lost session restarts that blob alone; bytes that do not hash to the
//! digest cancel the session (`DELETE`) and end in [`UploadError::SourceMismatch`] (fetch them
//! elsewhere). [`UploadError::next`] says what the caller does with a final failure. Callers
//! whose bytes cannot be reopened can drive a session by hand ([`RegistryClient::start_upload`],
//! [`RegistryClient::upload_chunk`], [`RegistryClient::upload_status`],
//! [`RegistryClient::finish_upload`], [`RegistryClient::cancel_upload`]).
//!
//! # Credentials
//!
//! Every request asks for `repository:<repo>:pull,push` (a mount also for
//! `repository:<from>:pull`). The bodyless requests (`HEAD`, `POST`) come first and answer the
//! challenge, so a body is only ever sent with credentials already in place; a 401 on a request
//! with a body renews them without sending the body again
//! ([`RegistryError::TokenRenewed`]), and the upload continues from the session's status.
//! Upload `Location`s are resolved against the endpoint and must stay on its origin: a session
//! on another host would get either this endpoint's credentials or the blob without them, and
//! neither is ours to decide, so it is refused ([`RegistryError::BadResponse`]). For the same
//! reason every write goes through the endpoint's client for writes, which follows a redirect
//! (a 307 or 308 re-sends the body) only within the registry's origin: one elsewhere is an
//! error, never a write that reports success for bytes the registry did not get.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Body, Response, StatusCode, Url};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio::sync::Mutex;

use crate::client::{check_status, header_str, same_origin, RegistryClient};
use crate::error::{redact_url, Next, RegistryError};
use cudaimg_oci::digest::{Digest, Hasher};
use cudaimg_oci::manifest::MAX_MANIFEST_BYTES;

/// Bodyless requests (HEAD, POST, GET status, DELETE) are small: longer means stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes read from a source per piece of a request body: each piece is a frame to send and
/// a lock, a hash update and a progress call, so pieces are not small; a few per blob in
/// flight are all the memory an upload holds.
const PIECE: usize = 256 * 1024;
const OCTET_STREAM: &str = "application/octet-stream";

/// An upload the registry opened: where the next bytes go, and how many it holds.
#[derive(Debug, Clone)]
pub struct UploadSession {
    repo: String,
    location: Url,
    offset: u64,
    min_chunk: Option<u64>,
}

impl UploadSession {
    pub fn repo(&self) -> &str {
        &self.repo
    }
    /// Bytes the registry holds: the next chunk starts here.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// The registry's `OCI-Chunk-Min-Length`, if it sent one.
    pub fn min_chunk_len(&self) -> Option<u64> {
        self.min_chunk
    }
    /// The session URL for messages (its query, where distribution keeps state, left out).
    pub fn label(&self) -> String {
        redact_url(&self.location)
    }
}

/// What a mount request did.
#[derive(Debug)]
pub enum Mount {
    /// The registry linked the blob from the other repository (201): nothing to send.
    Mounted,
    /// It could not, and opened a normal upload session instead (202): continue with it.
    Started(UploadSession),
}

/// The bytes of one blob, from any offset: a store file, memory, or a source registry.
pub trait BlobSource: Send + Sync {
    type Reader: AsyncRead + Send + Unpin + 'static;
    /// The blob from `offset` to its end. Called once per upload, and again after a cut, at
    /// the offset the registry holds.
    fn open(&self, offset: u64) -> impl Future<Output = io::Result<Self::Reader>> + Send;
    /// True when the reader checks the bytes against the digest itself, whatever the offset
    /// it was opened at, and fails the read that would hand out the blob's last byte when they
    /// do not match (the store's verifying reader). The upload then counts the bytes instead
    /// of hashing them a second time: on loopback, hashing is much of a push's CPU.
    fn verifies(&self) -> bool {
        false
    }
}

/// A blob in a file, unchecked (the upload hashes it).
#[derive(Debug, Clone)]
pub struct FileSource(pub PathBuf);

impl BlobSource for FileSource {
    type Reader = tokio::fs::File;
    async fn open(&self, offset: u64) -> io::Result<tokio::fs::File> {
        let mut file = tokio::fs::File::open(&self.0).await.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", self.0.display()))
        })?;
        file.seek(io::SeekFrom::Start(offset)).await?;
        Ok(file)
    }
}

/// A blob in memory (configs, small documents).
#[derive(Debug, Clone)]
pub struct BytesSource(pub Arc<[u8]>);

impl BlobSource for BytesSource {
    type Reader = io::Cursor<Arc<[u8]>>;
    async fn open(&self, offset: u64) -> io::Result<io::Cursor<Arc<[u8]>>> {
        let mut cursor = io::Cursor::new(self.0.clone());
        cursor.set_position(offset);
        Ok(cursor)
    }
}

/// How [`RegistryClient::push_blob`] sends and retries.
#[derive(Clone)]
pub struct UploadOptions {
    /// The largest request body: blobs up to this size go in one `PUT`, larger ones in
    /// `PATCH`es of this size (raised to the registry's `OCI-Chunk-Min-Length`). Lower it for
    /// proxies with a body limit; a cut costs at most one chunk.
    pub chunk_size: u64,
    /// Passing failures in a row (no progress in between) before giving up.
    pub max_retries: u32,
    /// Lost sessions per blob before giving up.
    pub max_restarts: u32,
    /// First backoff; it doubles per failure in a row up to `max_backoff`, which also caps a
    /// `Retry-After`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Called with each piece's length as it goes into a request body (re-sent bytes too).
    pub progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// The largest body the path to this registry is known to bear, shared by every upload
    /// made with clones of these options (so one blob's lesson serves the rest of the run).
    /// It starts at `u64::MAX`, or at what a caller remembers of the registry; it drops to
    /// [`BUFFERED_CHUNK`] when a cut body left the registry nothing, which is what a proxy
    /// that buffers request bodies (nginx's default) does: there, each cut costs the whole
    /// body in flight, so bodies must be small.
    pub body_cap: Arc<std::sync::atomic::AtomicU64>,
}

/// The body limit behind a proxy that buffers request bodies: a cut costs at most this,
/// while a 1.4 GB layer still goes in ~175 requests.
pub const BUFFERED_CHUNK: u64 = 8 * 1024 * 1024;

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            // Each chunk costs a round trip with the pipe idle, and the registry's per-request
            // work: a copy of the 1.5 GB bench image between loopback registries took 14-18 s
            // in 256 MiB chunks, 18-23 s in 32 MiB ones (alternating). A cut behind a proxy
            // that drops what it cut costs up to a chunk, so not larger.
            chunk_size: 128 * 1024 * 1024,
            max_retries: 6,
            max_restarts: 3,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            progress: None,
            body_cap: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
        }
    }
}

impl UploadOptions {
    /// The body limit learned so far (see [`UploadOptions::body_cap`]); `None` while none was.
    pub fn learned_cap(&self) -> Option<u64> {
        let cap = self.body_cap.load(std::sync::atomic::Ordering::Relaxed);
        (cap != u64::MAX).then_some(cap)
    }
}

/// How a blob got to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The registry had it (`HEAD`).
    Skipped,
    /// Mounted from `from` in the same registry: no blob bytes sent.
    Mounted { from: String },
    Uploaded {
        /// Body bytes sent, re-sent ones included.
        bytes_sent: u64,
        /// Times the upload continued from the session's status after a failure.
        resumes: u32,
        /// Times the blob started over in a new session.
        restarts: u32,
    },
}

/// A failed [`RegistryClient::push_blob`].
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The destination failed; [`RegistryError::next`] applies.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The [`BlobSource`] failed; the session was cancelled. A caller whose own error is
    /// inside (`io::Error::other`) gets it back with `get_ref`/`downcast`.
    #[error("reading {digest} for the upload failed: {source}")]
    Source {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    /// The bytes read are not the blob: the session was cancelled, nothing was committed.
    #[error("the bytes read for {expected} ({expected_size} bytes) are {actual} ({actual_size} bytes); the upload was cancelled")]
    SourceMismatch {
        expected: Digest,
        expected_size: u64,
        actual: Digest,
        actual_size: u64,
    },
}

impl UploadError {
    /// The destination's errors decide as [`RegistryError::next`] does. A failed or lying
    /// source says [`Next::NextSource`]: other sources may have the right bytes (a caller
    /// reading its own store maps [`UploadError::Source`] to giving up).
    pub fn next(&self) -> Next {
        match self {
            UploadError::Registry(e) => e.next(),
            UploadError::Source { .. } | UploadError::SourceMismatch { .. } => Next::NextSource,
        }
    }
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UploadError::Registry(e) => e.retry_after(),
            _ => None,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            UploadError::Registry(e) => e.kind(),
            UploadError::Source { .. } => "source",
            UploadError::SourceMismatch { .. } => "digest-mismatch",
        }
    }
}

impl RegistryClient {
    fn push_scope(&self, repo: &str) -> String {
        format!("repository:{}:pull,push", self.name(repo))
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`: the blob's size if the repository has it.
    pub async fn blob_exists(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let url = self.url(&self.blob_url(repo, digest))?;
        let resp = self
            .send_scoped(&self.push_scope(repo), &url, |c| {
                c.head(url.clone()).timeout(REQUEST_TIMEOUT)
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check_status(resp, "blob").await?;
        // The header itself: for a HEAD, reqwest's content_length() is the (empty) body's.
        let size = header_str(&resp, CONTENT_LENGTH.as_str())
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| RegistryError::BadResponse {
                url: redact_url(&url),
                reason: "its HEAD of a blob has no Content-Length".into(),
            })?;
        Ok(Some(size))
    }

    /// `POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<from>`: links the blob from
    /// another repository of this registry, or opens an upload session when it cannot.
    pub async fn mount_blob(
        &self,
        repo: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<Mount, RegistryError> {
        let mut url = self.url(&format!(
            "{}/{}/blobs/uploads/",
            self.api(),
            self.name(repo)
        ))?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", &self.name(from));
        let scope = format!(
            "{} repository:{}:pull",
            self.push_scope(repo),
            self.name(from)
        );
        let resp = self
            .send_write_scoped(&scope, &url, |c| {
                c.post(url.clone())
                    .header(CONTENT_LENGTH, 0)
                    .timeout(REQUEST_TIMEOUT)
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => {
                check_committed(&resp, &url, digest)?;
                Ok(Mount::Mounted)
            }
            StatusCode::ACCEPTED => Ok(Mount::Started(self.session_from(repo, &url, &resp)?)),
            _ => Err(unexpected(resp, "repository").await),
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/`: opens an upload session.
    pub async fn start_upload(&self, repo: &str) -> Result<UploadSession, RegistryError> {
        let url = self.url(&format!(
            "{}/{}/blobs/uploads/",
            self.api(),
            self.name(repo)
        ))?;
        let resp = self
            .send_write_scoped(&self.push_scope(repo), &url, |c| {
                c.post(url.clone())
                    .header(CONTENT_LENGTH, 0)
                    .timeout(REQUEST_TIMEOUT)
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(unexpected(resp, "repository").await);
        }
        self.session_from(repo, &url, &resp)
    }

    /// `GET <location>`: how many bytes the registry holds (`Range: 0-N`); the session
    /// continues at the returned offset.
    pub async fn upload_status(&self, session: &mut UploadSession) -> Result<u64, RegistryError> {
        let url = session.location.clone();
        let resp = self
            .send_scoped(&self.push_scope(&session.repo), &url, |c| {
                c.get(url.clone()).timeout(REQUEST_TIMEOUT)
            })
            .await?;
        if !matches!(resp.status(), StatusCode::NO_CONTENT | StatusCode::OK) {
            return Err(session_error(resp).await);
        }
        let holds = range_end(&resp, &url)?;
        self.follow_location(session, &resp)?;
        session.offset = holds;
        Ok(holds)
    }

    /// `PATCH <location>` with the next `len` bytes (`Content-Range: START-END`), read from
    /// `body`. Sent once: after a failure ask [`Self::upload_status`] where to continue.
    pub async fn upload_chunk<R: AsyncRead + Send + Unpin + 'static>(
        &self,
        session: &mut UploadSession,
        body: R,
        len: u64,
    ) -> Result<(), RegistryError> {
        self.patch(session, reader_body(body.take(len)), len).await
    }

    /// `PUT <location>?digest=` closing the session, with the last `len` bytes from `body` if
    /// any (a monolithic upload sends them all here).
    pub async fn finish_upload<R: AsyncRead + Send + Unpin + 'static>(
        &self,
        session: &mut UploadSession,
        digest: &Digest,
        body: Option<(R, u64)>,
    ) -> Result<(), RegistryError> {
        match body {
            Some((r, len)) => {
                self.put(session, digest, reader_body(r.take(len)), len)
                    .await
            }
            None => self.put(session, digest, Body::from(Vec::new()), 0).await,
        }
    }

    /// `DELETE <location>`: drops the session and what it holds (a session already gone is
    /// fine).
    pub async fn cancel_upload(&self, session: &UploadSession) -> Result<(), RegistryError> {
        let url = session.location.clone();
        let resp = self
            .send_write_scoped(&self.push_scope(&session.repo), &url, |c| {
                c.delete(url.clone()).timeout(REQUEST_TIMEOUT)
            })
            .await?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(session_error(resp).await)
    }

    /// `PUT /v2/<repo>/manifests/<reference>` (a tag or the digest) with exactly `bytes`, as
    /// `media_type`. Returns the digest, which the registry's `Docker-Content-Digest` must
    /// agree with: it stored these bytes, not a re-serialization.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let url = self.url(&self.manifest_url(repo, reference))?;
        let digest = Digest::of(bytes);
        let bad = |reason: String| RegistryError::BadResponse {
            url: redact_url(&url),
            reason,
        };
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "the manifest is {} bytes, more than registries accept ({MAX_MANIFEST_BYTES})",
                bytes.len()
            )));
        }
        if reference.contains(':') && reference != digest.as_str() {
            return Err(bad(format!(
                "the manifest PUT to digest {reference} holds bytes whose digest is {digest}"
            )));
        }
        // Small and in memory: sent again after a challenge, unlike blob bodies.
        let resp = self
            .send_write_scoped(&self.push_scope(repo), &url, |c| {
                c.put(url.clone())
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec())
                    .timeout(REQUEST_TIMEOUT)
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(unexpected(resp, "repository").await);
        }
        check_committed(&resp, &url, &digest)?;
        Ok(digest)
    }

    /// The whole protocol for one blob: skip, mount, or upload with resumption (module docs;
    /// the steps are in [`send`]).
    pub async fn push_blob<S: BlobSource>(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        source: &S,
        mount_from: &[&str],
        options: &UploadOptions,
    ) -> Result<Pushed, UploadError> {
        let mut retry = Retry {
            options,
            failures: 0,
        };
        if self.present(repo, digest, size, &mut retry).await?.0 {
            return Ok(Pushed::Skipped);
        }
        let mut session = match self.mount_any(repo, digest, mount_from, &mut retry).await? {
            Mounting::Mounted(from) => return Ok(Pushed::Mounted { from }),
            Mounting::Upload(session) => session,
        };
        let mut stats = Stats::default();
        loop {
            let session = match session.take() {
                Some(s) => s,
                None => self.open_session(repo, &mut retry).await?,
            };
            match self
                .send_blob(session, digest, size, source, &mut retry, &mut stats)
                .await
            {
                Ok(()) => {
                    return Ok(Pushed::Uploaded {
                        bytes_sent: stats.sent,
                        resumes: stats.resumes,
                        restarts: stats.restarts,
                    })
                }
                Err(UploadError::Registry(RegistryError::UploadSessionLost { .. }))
                    if stats.restarts < options.max_restarts =>
                {
                    stats.restarts += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One `PATCH` of `len` bytes at the session's offset.
    async fn patch(
        &self,
        session: &mut UploadSession,
        body: Body,
        len: u64,
    ) -> Result<(), RegistryError> {
        let start = session.offset;
        if len == 0 {
            return Ok(());
        }
        let url = session.location.clone();
        let request = self
            .writes()
            .patch(url.clone())
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(CONTENT_RANGE, format!("{start}-{}", start + len - 1))
            .header(CONTENT_LENGTH, len)
            .body(body);
        let resp = self
            .send_body_once(&self.push_scope(&session.repo), &url, request)
            .await?;
        if !matches!(resp.status(), StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
            return Err(session_error(resp).await);
        }
        let holds = match header_str(&resp, RANGE.as_str()) {
            Some(_) => range_end(&resp, &url)?,
            None => start + len,
        };
        if holds > start + len || holds < start {
            return Err(RegistryError::BadResponse {
                url: redact_url(&url),
                reason: format!(
                    "it holds {holds} bytes after a PATCH of bytes {start}-{}",
                    start + len - 1
                ),
            });
        }
        self.follow_location(session, &resp)?;
        session.offset = holds;
        Ok(())
    }

    /// The closing `PUT <location>?digest=` with the last `len` bytes (maybe none).
    async fn put(
        &self,
        session: &mut UploadSession,
        digest: &Digest,
        body: Body,
        len: u64,
    ) -> Result<(), RegistryError> {
        let mut url = session.location.clone();
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let request = self
            .writes()
            .put(url.clone())
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(CONTENT_LENGTH, len)
            .body(body);
        let resp = self
            .send_body_once(&self.push_scope(&session.repo), &url, request)
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(session_error(resp).await);
        }
        check_committed(&resp, &url, digest)?;
        session.offset += len;
        Ok(())
    }

    /// A session from a 202: its `Location` (resolved against the request, same origin only)
    /// and `OCI-Chunk-Min-Length`.
    fn session_from(
        &self,
        repo: &str,
        request: &Url,
        resp: &Response,
    ) -> Result<UploadSession, RegistryError> {
        let mut session = UploadSession {
            repo: repo.to_owned(),
            location: request.clone(),
            offset: 0,
            min_chunk: header_str(resp, "oci-chunk-min-length")
                .and_then(|v| v.trim().parse().ok())
                .filter(|n| *n > 0),
        };
        if header_str(resp, LOCATION.as_str()).is_none() {
            return Err(RegistryError::BadResponse {
                url: redact_url(request),
                reason: "it opened an upload without a Location".into(),
            });
        }
        self.follow_location(&mut session, resp)?;
        Ok(session)
    }

    /// Moves the session to the response's `Location`, if it has one on this endpoint.
    fn follow_location(
        &self,
        session: &mut UploadSession,
        resp: &Response,
    ) -> Result<(), RegistryError> {
        let Some(location) = header_str(resp, LOCATION.as_str()) else {
            return Ok(());
        };
        let bad = |reason: String| RegistryError::BadResponse {
            url: session.label(),
            reason,
        };
        let target = session
            .location
            .join(&location)
            .map_err(|_| bad("its upload Location is not a URL".into()))?;
        let endpoint = self.url(self.label())?;
        if !same_origin(&target, &endpoint) {
            return Err(bad(format!(
                "its upload Location points at another host ({}); neither this registry's \
                 credentials nor the blob are sent there",
                redact_url(&target)
            )));
        }
        session.location = target;
        Ok(())
    }
}

mod body;
use body::{
    check_committed, feed_body, is_digest_invalid, range_end, reader_body, session_error,
    unexpected, verify, Feed, Retry, Stats,
};
mod send;
use send::Mounting;
