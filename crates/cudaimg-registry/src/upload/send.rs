//! One blob into one registry, as typed steps: [`Present`] (`HEAD`), [`Mounting`] (mount
//! candidates, maybe a session), then an [`Upload`] that goes request by request
//! ([`Step::at`] says which: a monolithic `PUT`, a `PATCH` chunk, or the closing `PUT`),
//! and after a passing failure [`Upload::recover`]s from the session's status.
//!
//! Retry and backoff are [`Retry`]'s, not the mirrors crate's fallback loop
//! (`cudaimg_mirrors::fallback`): that loop chooses among the sources of a registry for an
//! item, while an upload has one destination and nothing to fall back to; what it needs is
//! the same passing-failure pacing, plus the session's own recovery (status, resume, lost
//! session, restart) that no source fallback has. The mirrors crate also sits above this one
//! in the crate stack, so it cannot be called from here; a `copy` whose *source* fails falls
//! back through that loop on its own side.

use super::{
    feed_body, is_digest_invalid, verify, Arc, BlobSource, Body, Digest, Feed, Hasher, Mount,
    Mutex, Next, RegistryClient, RegistryError, Retry, Stats, UploadError, UploadSession,
};

/// Step 1: does the repository have the blob already?
pub(super) struct Present(pub(super) bool);

/// Step 2: what the mount candidates gave.
pub(super) enum Mounting {
    /// Linked from this repository: nothing to send.
    Mounted(String),
    /// No candidate had it; the last one's session, if any, to upload into.
    Upload(Option<UploadSession>),
}

/// The next request of an upload, from where its session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The whole blob in the closing `PUT` (small blobs, from the start).
    Whole(u64),
    /// A `PATCH` of this many bytes at the session's offset.
    Chunk(u64),
    /// Everything is there: the closing `PUT` without bytes.
    Close,
}

/// The smallest first body of a session (see [`first_body`]).
const FIRST_BODY_MIN: u64 = 1024 * 1024;

/// The first body of a session: a sixteenth of the blob (at least 1 MiB), then `chunk`s.
/// Until a body has gone through, nothing says whether the path buffers bodies and drops
/// what a cut leaves (nginx does by default): a whole blob in one body would lose all that
/// was sent of it. A small first body bounds that loss to a sixteenth, and its cut teaches
/// the limit ([`super::BUFFERED_CHUNK`]) to every upload of the run. On a clean link it
/// costs one request, as the POST, PATCH and PUT that skopeo sends cost three.
fn first_body(size: u64, chunk: u64) -> u64 {
    (size / 16).max(FIRST_BODY_MIN).min(chunk)
}

impl Step {
    /// The step at `offset` of a `size`-byte blob sent in bodies of at most `chunk`.
    pub(super) fn at(offset: u64, size: u64, chunk: u64) -> Step {
        if offset >= size {
            Step::Close
        } else if offset == 0 && size <= chunk {
            Step::Whole(size)
        } else {
            Step::Chunk(chunk.min(size - offset))
        }
    }

    /// Whether a success of this step commits the blob.
    fn commits(self) -> bool {
        !matches!(self, Step::Chunk(_))
    }
}

impl RegistryClient {
    /// Step 1, retrying passing failures. A blob the registry says it has, with another
    /// size than `size`, is not the blob (a registry that lies, or a broken one): it is sent.
    pub(super) async fn present(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        retry: &mut Retry<'_>,
    ) -> Result<Present, UploadError> {
        loop {
            match self.blob_exists(repo, digest).await {
                Ok(found) => return Ok(Present(found == Some(size))),
                Err(e) => retry.after(e).await?,
            }
        }
    }

    /// Step 2: a mount from each candidate (not `repo` itself) in turn.
    pub(super) async fn mount_any(
        &self,
        repo: &str,
        digest: &Digest,
        mount_from: &[&str],
        retry: &mut Retry<'_>,
    ) -> Result<Mounting, UploadError> {
        let candidates: Vec<&str> = mount_from.iter().copied().filter(|f| *f != repo).collect();
        'sources: for (i, from) in candidates.iter().enumerate() {
            loop {
                match self.mount_blob(repo, digest, from).await {
                    Ok(Mount::Mounted) => return Ok(Mounting::Mounted((*from).to_owned())),
                    // Not there: the next candidate may have it, and a session costs a DELETE
                    // where an upload costs the blob. The last one's session is used.
                    Ok(Mount::Started(s)) if i + 1 < candidates.len() => {
                        let _ = self.cancel_upload(&s).await;
                        continue 'sources;
                    }
                    Ok(Mount::Started(s)) => return Ok(Mounting::Upload(Some(s))),
                    Err(e) if e.next() == Next::Retry => retry.after(e).await?,
                    // Not allowed to read `from`, or it is not there: upload instead.
                    Err(_) => continue 'sources,
                }
            }
        }
        Ok(Mounting::Upload(None))
    }

    /// A new session, retrying passing failures.
    pub(super) async fn open_session(
        &self,
        repo: &str,
        retry: &mut Retry<'_>,
    ) -> Result<UploadSession, UploadError> {
        loop {
            match self.start_upload(repo).await {
                Ok(s) => return Ok(s),
                Err(e) => retry.after(e).await?,
            }
        }
    }

    /// Step 3: the blob into `session` until it is committed, resuming after passing
    /// failures; on failure the session is cancelled.
    pub(super) async fn send_blob<S: BlobSource>(
        &self,
        session: UploadSession,
        digest: &Digest,
        size: u64,
        source: &S,
        retry: &mut Retry<'_>,
        stats: &mut Stats,
    ) -> Result<(), UploadError> {
        let mut upload = Upload::new(self, session, digest, size, source, retry.options);
        let result = upload.run(retry, stats).await;
        if result.is_err() {
            // Best effort: a session that is gone already answers 404, which is fine.
            let _ = self.cancel_upload(&upload.session).await;
        }
        result
    }
}

/// An upload in progress: its session, and the feed its bodies are cut from.
pub(super) struct Upload<'a, S: BlobSource> {
    client: &'a RegistryClient,
    session: UploadSession,
    digest: &'a Digest,
    size: u64,
    source: &'a S,
    /// Largest body: the caller's, raised to the registry's `OCI-Chunk-Min-Length`.
    chunk: u64,
    /// The run's learned limit (see [`super::UploadOptions::body_cap`]).
    cap: Arc<std::sync::atomic::AtomicU64>,
    /// Whether a body of this session has reached the registry yet.
    through: bool,
    feed: Arc<Mutex<Feed<S::Reader>>>,
}

impl<'a, S: BlobSource> Upload<'a, S> {
    fn new(
        client: &'a RegistryClient,
        session: UploadSession,
        digest: &'a Digest,
        size: u64,
        source: &'a S,
        options: &super::UploadOptions,
    ) -> Self {
        let chunk = options
            .chunk_size
            .max(session.min_chunk.unwrap_or(0))
            .max(1);
        let feed = Arc::new(Mutex::new(Feed::<S::Reader> {
            reader: None,
            pos: 0,
            hasher: (!source.verifies()).then(Hasher::new),
            read_to: 0,
            sent: 0,
            error: None,
            progress: options.progress.clone(),
        }));
        Upload {
            client,
            session,
            digest,
            size,
            source,
            chunk,
            cap: options.body_cap.clone(),
            through: false,
            feed,
        }
    }

    /// The largest body for the next request: the first one small (see [`first_body`]),
    /// then `chunk`, never above the learned cap nor below the registry's minimum.
    fn limit(&self) -> u64 {
        let cap = self.cap.load(std::sync::atomic::Ordering::Relaxed);
        let chunk = self.chunk.min(cap);
        let limit = if self.through {
            chunk
        } else {
            first_body(self.size, chunk)
        };
        limit.max(self.session.min_chunk.unwrap_or(0)).max(1)
    }

    /// Steps until the blob is committed, or a failure that is not passing.
    async fn run(&mut self, retry: &mut Retry<'_>, stats: &mut Stats) -> Result<(), UploadError> {
        let sent_before = stats.sent;
        loop {
            let step = Step::at(self.session.offset, self.size, self.limit());
            let before = self.session.offset;
            let sent_earlier = self.feed.lock().await.sent;
            let answer = self.send(step).await;
            let sent = self.feed.lock().await.sent;
            stats.sent = sent_before + sent;
            match answer? {
                Ok(()) if step.commits() => {
                    return verify(&self.feed, self.digest, self.size).await
                }
                Ok(()) if self.session.offset > before => {
                    retry.failures = 0;
                    self.through = true;
                }
                // Accepted, and the registry holds no more than before: a request that
                // made no progress is a failure, within the retry limit, or a registry
                // that answers every PATCH with `Range: 0-0` is sent the same chunk forever.
                Ok(()) => retry.after(self.no_progress(step)).await?,
                Err(e) => {
                    self.recover(e, retry, stats).await?;
                    self.learn(before, sent - sent_earlier);
                }
            }
        }
    }

    /// After a failed body and the status that followed: when the registry holds nothing
    /// more than before although a real part of the body went out, the path buffers bodies
    /// (a streaming one keeps what arrived), and the run's bodies get small.
    fn learn(&mut self, before: u64, sent_in_request: u64) {
        if self.session.offset == before && sent_in_request >= FIRST_BODY_MIN / 4 {
            self.cap
                .fetch_min(super::BUFFERED_CHUNK, std::sync::atomic::Ordering::Relaxed);
        } else if self.session.offset > before {
            self.through = true;
        }
    }

    /// One request: the registry's answer, inside the source's failure (which comes first:
    /// reqwest only says "body error" for it).
    async fn send(&mut self, step: Step) -> Result<Result<(), RegistryError>, UploadError> {
        let source_error = |e| UploadError::Source {
            digest: self.digest.clone(),
            source: e,
        };
        let answer = match step {
            Step::Close => {
                // Before the closing PUT: bytes that are not the blob are never committed.
                verify(&self.feed, self.digest, self.size).await?;
                let empty = Body::from(Vec::new());
                self.client
                    .put(&mut self.session, self.digest, empty, 0)
                    .await
            }
            Step::Whole(len) | Step::Chunk(len) => {
                Feed::seek(&self.feed, self.source, self.session.offset)
                    .await
                    .map_err(source_error)?;
                let body = feed_body(self.feed.clone(), len);
                if step == Step::Whole(len) {
                    // The registry checks a monolithic PUT against the digest itself.
                    self.client
                        .put(&mut self.session, self.digest, body, len)
                        .await
                } else {
                    self.client.patch(&mut self.session, body, len).await
                }
            }
        };
        if let Some(e) = self.feed.lock().await.error.take() {
            return Err(source_error(e));
        }
        Ok(answer)
    }

    /// After a failed request: a lost session or a refused digest end this session; a
    /// passing failure waits, then the session's status says where to go on.
    async fn recover(
        &mut self,
        e: RegistryError,
        retry: &mut Retry<'_>,
        stats: &mut Stats,
    ) -> Result<(), UploadError> {
        if matches!(e, RegistryError::UploadSessionLost { .. }) {
            return Err(e.into());
        }
        // The registry refused what we hashed: did the source lie?
        if is_digest_invalid(&e) {
            verify(&self.feed, self.digest, self.size).await?;
            return Err(self.lost(" (it refused the digest of the bytes sent)".into()));
        }
        retry.after(e).await?;
        stats.resumes += 1;
        loop {
            match self.client.upload_status(&mut self.session).await {
                Ok(_) => break,
                Err(e @ RegistryError::UploadSessionLost { .. }) => return Err(e.into()),
                Err(e) => retry.after(e).await?,
            }
        }
        let read = self.feed.lock().await.read_to;
        if self.session.offset > read {
            let claims = self.session.offset;
            return Err(self.lost(format!(
                " (it claims {claims} bytes where {read} were sent)"
            )));
        }
        Ok(())
    }

    fn no_progress(&self, step: Step) -> RegistryError {
        let (start, len) = match step {
            Step::Whole(len) | Step::Chunk(len) => (self.session.offset, len),
            Step::Close => (self.session.offset, 0),
        };
        RegistryError::Transfer {
            url: self.session.label(),
            reason: format!(
                "it accepted {len} bytes at {start} and holds no more than before \
                 ({start} bytes): no progress"
            ),
        }
    }

    fn lost(&self, detail: String) -> UploadError {
        RegistryError::UploadSessionLost {
            url: self.session.label(),
            detail,
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::Step;

    #[test]
    fn small_blobs_go_whole_large_ones_in_chunks_then_a_closing_put() {
        assert_eq!(Step::at(0, 10, 10), Step::Whole(10));
        assert_eq!(Step::at(0, 11, 10), Step::Chunk(10));
        assert_eq!(Step::at(10, 11, 10), Step::Chunk(1));
        assert_eq!(Step::at(11, 11, 10), Step::Close);
        // After a cut, a small blob resumes with a chunk, not a whole PUT from its offset.
        assert_eq!(Step::at(4, 10, 10), Step::Chunk(6));
        // An empty blob is only the closing PUT.
        assert_eq!(Step::at(0, 0, 10), Step::Close);
    }

    #[test]
    fn the_first_body_is_a_sixteenth_of_the_blob_from_1_mib_up_to_the_chunk() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(super::first_body(512 * 1024, 128 * MIB), MIB);
        assert_eq!(super::first_body(160 * MIB, 128 * MIB), 10 * MIB);
        assert_eq!(super::first_body(4096 * MIB, 128 * MIB), 128 * MIB);
        assert_eq!(super::first_body(4096 * MIB, 8 * MIB), 8 * MIB);
        // A blob under the first body goes whole, in one PUT, as before.
        assert_eq!(
            Step::at(0, 512 * 1024, super::first_body(512 * 1024, 128 * MIB)),
            Step::Whole(512 * 1024)
        );
    }
}
