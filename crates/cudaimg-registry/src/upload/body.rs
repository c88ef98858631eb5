//! The pieces under [`super`]'s protocol: request bodies cut from a blob source while it is
//! hashed once, in order; retry pacing; and reading the registry's answers (`Range`,
//! `Docker-Content-Digest`).

use super::{
    check_status, header_str, io, redact_url, stream, Arc, AsyncRead, AsyncReadExt, BlobSource,
    Body, Digest, Hasher, Mutex, Next, RegistryError, Response, UploadError, UploadOptions, Url,
    PIECE, RANGE,
};

#[derive(Default)]
pub(super) struct Stats {
    pub(super) sent: u64,
    pub(super) resumes: u32,
    pub(super) restarts: u32,
}

/// Passing failures in a row, and the backoff between them.
pub(super) struct Retry<'a> {
    pub(super) options: &'a UploadOptions,
    pub(super) failures: u32,
}

impl Retry<'_> {
    /// Waits before another try, or hands the error back when it is not passing or too many
    /// came in a row. A renewed token needs no wait.
    pub(super) async fn after(&mut self, e: RegistryError) -> Result<(), RegistryError> {
        if e.next() != Next::Retry
            || matches!(e, RegistryError::UploadSessionLost { .. })
            || self.failures >= self.options.max_retries
        {
            return Err(e);
        }
        self.failures += 1;
        if !matches!(e, RegistryError::TokenRenewed { .. }) {
            let exp = self
                .options
                .backoff
                .saturating_mul(1 << (self.failures - 1).min(16));
            let wait = e.retry_after().unwrap_or(exp).min(self.options.max_backoff);
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

/// The reader a session's bodies are cut from, and the hash of every blob byte read, each
/// once, in order (a resumed chunk's re-sent bytes are not hashed again).
pub(super) struct Feed<R> {
    pub(super) reader: Option<R>,
    /// Blob offset of the reader.
    pub(super) pos: u64,
    /// `None` for a source that checks its own bytes ([`BlobSource::verifies`]).
    pub(super) hasher: Option<Hasher>,
    /// The blob's bytes read so far, each once: where the hash (if any) has got to.
    pub(super) read_to: u64,
    /// Bytes put into request bodies, re-sent ones included.
    pub(super) sent: u64,
    /// The source's failure, kept apart from the request's (reqwest only says "body error").
    pub(super) error: Option<io::Error>,
    pub(super) progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl<R: AsyncRead + Send + Unpin + 'static> Feed<R> {
    /// Puts the reader at `offset`, reopening the source if it is elsewhere.
    pub(super) async fn seek<S: BlobSource<Reader = R>>(
        feed: &Mutex<Self>,
        source: &S,
        offset: u64,
    ) -> io::Result<()> {
        let mut f = feed.lock().await;
        if f.reader.is_none() || f.pos != offset {
            f.reader = None;
            f.reader = Some(source.open(offset).await?);
            f.pos = offset;
        }
        Ok(())
    }
}

pub(super) fn feed_body<R: AsyncRead + Send + Unpin + 'static>(
    feed: Arc<Mutex<Feed<R>>>,
    len: u64,
) -> Body {
    let pieces = stream::unfold((feed, len), |(feed, left)| async move {
        if left == 0 {
            return None;
        }
        let mut f = feed.lock().await;
        let mut buf = vec![0u8; usize::try_from(left.min(PIECE as u64)).unwrap_or(PIECE)];
        let read = match f.reader.as_mut() {
            Some(r) => r.read(&mut buf).await,
            None => Err(io::Error::other("the source is not open")),
        };
        match read {
            Ok(n) if n > 0 => {
                buf.truncate(n);
                let (pos, hashed) = (f.pos, f.read_to);
                if hashed >= pos && hashed < pos + n as u64 {
                    // Less than `n`, which is a buffer length: the cast cannot truncate.
                    #[allow(clippy::cast_possible_truncation)]
                    let new = &buf[(hashed - pos) as usize..];
                    if let Some(h) = f.hasher.as_mut() {
                        h.update(new);
                    }
                    f.read_to = pos + n as u64;
                }
                f.pos += n as u64;
                f.sent += n as u64;
                if let Some(p) = &f.progress {
                    p(n as u64);
                }
                Some((Ok(buf), (feed.clone(), left - n as u64)))
            }
            other => {
                let e = other.err().unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the blob ended early")
                });
                let said = io::Error::new(e.kind(), e.to_string());
                f.error = Some(e);
                f.reader = None;
                Some((Err(said), (feed.clone(), 0)))
            }
        }
    });
    Body::wrap_stream(pieces)
}

pub(super) fn reader_body<R: AsyncRead + Send + Unpin + 'static>(reader: R) -> Body {
    let pieces = stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        let mut buf = vec![0u8; PIECE];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), Some(reader)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Body::wrap_stream(pieces)
}

/// The whole blob was read: do its bytes hash to `digest`? A source that checks its own
/// bytes has failed its last read already if not; only the count is left to check.
pub(super) async fn verify<R>(
    feed: &Mutex<Feed<R>>,
    digest: &Digest,
    size: u64,
) -> Result<(), UploadError> {
    let f = feed.lock().await;
    let (actual, actual_size) = match &f.hasher {
        Some(h) => h.clone().finish(),
        None if f.read_to == size => return Ok(()),
        None => {
            return Err(UploadError::Source {
                digest: digest.clone(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("it gave {} of the blob's {size} bytes", f.read_to),
                ),
            })
        }
    };
    if actual_size == size && actual == *digest {
        return Ok(());
    }
    Err(UploadError::SourceMismatch {
        expected: digest.clone(),
        expected_size: size,
        actual,
        actual_size,
    })
}

pub(super) fn is_digest_invalid(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Status { status: 400, detail, .. } if detail.contains("DIGEST_INVALID"))
}

/// `Range: 0-END` as the count of bytes held. distribution says `0-0` for an empty session
/// too; the one-byte reading of it is never needed (a byte too few re-sends it, and the digest
/// check at the end catches any disagreement).
pub(super) fn range_end(resp: &Response, url: &Url) -> Result<u64, RegistryError> {
    let raw = header_str(resp, RANGE.as_str()).unwrap_or_default();
    let value = raw.trim().trim_start_matches("bytes=").trim();
    let parsed = value
        .split_once('-')
        .and_then(|(s, e)| Some((s.trim().parse::<u64>().ok()?, e.trim().parse::<u64>().ok()?)));
    match parsed {
        Some((0, 0)) => Ok(0),
        Some((0, end)) => Ok(end + 1),
        _ => Err(RegistryError::BadResponse {
            url: redact_url(url),
            reason: format!("its upload status has no usable Range (`{raw}`)"),
        }),
    }
}

/// A 201's `Docker-Content-Digest`, when sent, must be the digest we asked for.
pub(super) fn check_committed(
    resp: &Response,
    url: &Url,
    digest: &Digest,
) -> Result<(), RegistryError> {
    match header_str(resp, "docker-content-digest").map(|d| Digest::parse(d.trim())) {
        None => Ok(()),
        Some(Ok(d)) if d == *digest => Ok(()),
        Some(Ok(actual)) => Err(RegistryError::DigestMismatch {
            url: redact_url(url),
            expected: digest.clone(),
            actual,
        }),
        Some(Err(_)) => Err(RegistryError::BadResponse {
            url: redact_url(url),
            reason: "its Docker-Content-Digest is not a digest".into(),
        }),
    }
}

/// A status the upload did not expect, as a typed error.
pub(super) async fn unexpected(resp: Response, what: &'static str) -> RegistryError {
    let status = resp.status();
    let url = redact_url(resp.url());
    match check_status(resp, what).await {
        Err(e) => e,
        Ok(_) => RegistryError::BadResponse {
            url,
            reason: format!(
                "it answered HTTP {} where the upload protocol has none",
                status.as_u16()
            ),
        },
    }
}

/// An error on a session request: 404, or distribution's `BLOB_UPLOAD_INVALID` (its state no
/// longer matches what it stored, after a cut) and `BLOB_UPLOAD_UNKNOWN`, mean the session
/// is gone.
pub(super) async fn session_error(resp: Response) -> RegistryError {
    match unexpected(resp, "upload session").await {
        RegistryError::NotFound { url, detail, .. } => {
            RegistryError::UploadSessionLost { url, detail }
        }
        RegistryError::Status {
            url,
            status: 400,
            detail,
            ..
        } if detail.contains("BLOB_UPLOAD_INVALID") || detail.contains("BLOB_UPLOAD_UNKNOWN") => {
            RegistryError::UploadSessionLost { url, detail }
        }
        e => e,
    }
}
