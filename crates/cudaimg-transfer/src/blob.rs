//! Moving one blob into the store: from the first usable source, resuming with `Range`
//! after a cut or stall (from the same source or another), and starting over elsewhere when
//! the finished bytes do not hash to the digest. The sources are walked by the one fallback
//! loop ([`cudaimg_mirrors::fallback`]); this module is one attempt ([`BlobOp`]) and what
//! to do with a finished file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use cudaimg_oci::manifest::Descriptor;
use cudaimg_oci::progress::Reporter;
use cudaimg_registry::RegistryError;

use crate::error::FetchError;
use cudaimg_mirrors::fallback::{Fallback, FallbackError, Operation, Outcome};
use cudaimg_mirrors::order::Spread;
use cudaimg_mirrors::sources::{Source, SourceSet};
use cudaimg_store::{BlobWriter, CommitError, Store, StoreError, WriteError};

/// Complete downloads that hashed wrong, per blob, before giving up on it.
const MAX_MISMATCHES: u32 = 3;

/// Blobs with at least this much left to fetch, and several sources to ask, are filled from
/// all of them at once (`parallel`); below it, one stream is as good.
pub(crate) const PARALLEL_MIN: u64 = 64 << 20;

/// How a blob reached the store.
pub(super) enum Fetched {
    /// Downloaded; the source that delivered the last bytes.
    From(Arc<Source>),
    /// Another process stored it while this one waited for the blob's lock.
    AlreadyStored,
}

pub(super) struct BlobJob<'a> {
    pub store: &'a Store,
    pub sources: &'a SourceSet,
    pub repo: &'a str,
    pub received: &'a AtomicU64,
    pub stall: Duration,
    pub reporter: &'a dyn Reporter,
    /// Which mirror each blob asks first.
    pub spread: &'a Spread,
}

fn give_up(e: StoreError) -> FallbackError<FetchError> {
    FallbackError::GiveUp(FetchError::Store(e))
}

impl BlobJob<'_> {
    pub(super) async fn fetch(
        &self,
        desc: &Descriptor,
    ) -> Result<Fetched, FallbackError<FetchError>> {
        let Some(writer) = self
            .store
            .blob_writer(&desc.digest, desc.size)
            .await
            .map_err(give_up)?
        else {
            self.reporter.blob_cached(&desc.digest, desc.size);
            return Ok(Fetched::AlreadyStored);
        };
        let mut fallback =
            Fallback::new(self.sources, format!("blob {}", desc.digest), self.reporter);
        let mut op = BlobOp {
            job: self,
            desc,
            high_water: writer.written(),
            writer,
            contributors: Vec::new(),
            mismatches: 0,
        };
        // A large blob with several sources to ask: fill it from all of them at once.
        if desc.size - op.writer.written() >= PARALLEL_MIN {
            op.contributors = self
                .fill_parallel(desc, &mut op.writer, &mut fallback)
                .await?;
            op.high_water = op.writer.written();
        }
        // Complete already (an earlier run's partial file, or the parallel fill): no source
        // needs asking unless its bytes turn out wrong.
        if op.writer.written() == desc.size {
            match op.finish(&mut fallback).await {
                Outcome::Done(fetched) | Outcome::DoneBy(fetched, _) => return Ok(fetched),
                Outcome::Stop(e) => return Err(e),
                Outcome::Again | Outcome::Failed { .. } => {}
            }
        }
        // The rest from one source: the least loaded healthy mirror first.
        fallback.spread_over(self.spread, desc.size - op.writer.written());
        fallback.run(&mut op).await.map(|(fetched, _)| fetched)
    }
}

/// One blob's download: the partial file, and who put bytes in it.
struct BlobOp<'j, 'a> {
    job: &'j BlobJob<'a>,
    desc: &'j Descriptor,
    writer: BlobWriter,
    /// Sources whose bytes are in the partial file: the suspects if the digest is wrong.
    contributors: Vec<Arc<Source>>,
    /// The furthest any attempt got: progress is bytes beyond it, so a source that restarts
    /// the blob and cuts again makes none.
    high_water: u64,
    mismatches: u32,
}

impl Operation for BlobOp<'_, '_> {
    type Output = Fetched;
    type Error = FetchError;

    /// Fetches the rest of the blob from `source`, from where the partial file ends.
    async fn attempt(
        &mut self,
        source: Arc<Source>,
        fallback: &mut Fallback<'_, FetchError>,
    ) -> Outcome<Fetched, FetchError> {
        let (job, desc) = (self.job, self.desc);
        let offset = self.writer.written();
        let request = source
            .client
            .blob(job.repo, &desc.digest, offset, desc.size);
        // A source that has not answered in this run gets a short first-byte wait while
        // another could serve; then the blob moves on and the source is asked last.
        let first_wait = fallback
            .sources()
            .first_byte_wait(&source, fallback.item(), job.reporter);
        let started = std::time::Instant::now();
        // Headers that never come are a stall too.
        let resp = match tokio::time::timeout(first_wait.unwrap_or(job.stall), request).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return failed(e, false),
            Err(_) => return self.silent(&source, first_wait, fallback),
        };
        let first_wait = first_wait.map(|w| w.saturating_sub(started.elapsed()));
        // A source that ignored `Range` sends the blob from byte 0: the bytes already held
        // (hashed) are skipped as they stream, and the rest continues the hash.
        let skip = offset - resp.offset;
        if skip > 0 {
            source.set_ignores_range();
        }
        if !self.contributors.iter().any(|c| c.index == source.index) {
            self.contributors.push(source.clone());
        }
        job.reporter
            .blob_started(&desc.digest, desc.size, offset, source.label());
        let outcome = match self.stream(&source, resp, first_wait, skip).await {
            Ok(outcome) => outcome,
            Err(e) => return Outcome::Stop(give_up(e)),
        };
        let progressed = self.writer.written() > self.high_water;
        self.high_water = self.high_water.max(self.writer.written());
        match outcome {
            Err(RegistryError::Stalled { .. }) if first_wait.is_some() && !progressed => {
                self.silent(&source, first_wait, fallback)
            }
            Err(e) => failed(e, progressed),
            Ok(()) => match self.finish(fallback).await {
                Outcome::Done(fetched) => Outcome::Done(fetched),
                other => {
                    // The source answered in full, whatever its bytes hash to.
                    if progressed {
                        fallback.sources().succeeded(&source);
                    }
                    other
                }
            },
        }
    }
}

impl BlobOp<'_, '_> {
    /// `source` sent nothing within its wait: say so, mark it (asked last from now on), and
    /// fail the attempt as a stall, so the loop asks the next source.
    fn silent(
        &self,
        source: &Source,
        first_wait: Option<Duration>,
        fallback: &Fallback<'_, FetchError>,
    ) -> Outcome<Fetched, FetchError> {
        let url = source.client.blob_url(self.job.repo, &self.desc.digest);
        if first_wait.is_none() {
            let secs = self.job.stall.as_secs();
            return failed(RegistryError::Stalled { url, secs }, false);
        }
        let next = fallback
            .usable_now()
            .into_iter()
            .find(|s| s.index != source.index);
        fallback
            .sources()
            .waited_on(source, next.as_deref(), self.job.reporter);
        let secs = cudaimg_mirrors::fallback::FIRST_BYTE_WAIT.as_secs();
        failed(RegistryError::Stalled { url, secs }, false)
    }
}

fn failed(e: RegistryError, progressed: bool) -> Outcome<Fetched, FetchError> {
    Outcome::Failed {
        error: e.into(),
        progressed,
    }
}

impl BlobOp<'_, '_> {
    /// Writes the body into the partial file. The outer error is the store's (the end);
    /// the inner one the source's.
    async fn stream(
        &mut self,
        source: &Source,
        resp: cudaimg_registry::BlobResponse,
        first_wait: Option<Duration>,
        mut skip: u64,
    ) -> Result<Result<(), RegistryError>, StoreError> {
        let (job, desc) = (self.job, self.desc);
        let url = resp.url.clone();
        let mut body = resp.response.bytes_stream();
        // The first chunk within what is left of the first-byte wait, the others within the
        // stall timeout.
        let mut wait = first_wait.unwrap_or(job.stall);
        loop {
            let next = tokio::time::timeout(wait, body.next()).await;
            wait = job.stall;
            let chunk = match next {
                Err(_) => {
                    let secs = job.stall.as_secs();
                    return Ok(Err(RegistryError::Stalled { url, secs }));
                }
                Ok(None) if self.writer.written() < desc.size => {
                    let reason = format!(
                        "the body ended at byte {} of {}",
                        self.writer.written(),
                        desc.size
                    );
                    return Ok(Err(RegistryError::Transfer { url, reason }));
                }
                Ok(None) => return Ok(Ok(())),
                Ok(Some(Err(e))) => return Ok(Err(RegistryError::from_reqwest_at(&url, e))),
                Ok(Some(Ok(chunk))) => chunk,
            };
            let n = chunk.len() as u64;
            job.received.fetch_add(n, Ordering::Relaxed);
            source.add_bytes(n);
            // Bytes of the prefix already held: received, not written again.
            let skipped = skip.min(n);
            skip -= skipped;
            let Some(chunk) = chunk.get(usize::try_from(skipped).unwrap_or(usize::MAX)..) else {
                continue;
            };
            if chunk.is_empty() {
                continue;
            }
            let n = chunk.len() as u64;
            match self.writer.write(chunk).await {
                Ok(()) => job.reporter.blob_progress(&desc.digest, n),
                Err(WriteError::TooLong { expected_size }) => {
                    // Counted before the reset: the blob's bytes so far (from this response
                    // and any resumed before it) and this chunk.
                    let at_least = self.writer.written() + n;
                    self.writer.reset().await?;
                    self.contributors.clear();
                    return Ok(Err(RegistryError::TooLong {
                        url,
                        expected: expected_size,
                        at_least,
                    }));
                }
                Err(WriteError::Store(e)) => return Err(e),
            }
        }
    }

    /// Commits the complete file. Wrong bytes are blamed on every source that contributed
    /// and thrown away, and the loop goes on ([`Outcome::Again`]) until the mismatches run
    /// past [`MAX_MISMATCHES`].
    async fn finish(
        &mut self,
        fallback: &mut Fallback<'_, FetchError>,
    ) -> Outcome<Fetched, FetchError> {
        let desc = self.desc;
        let actual = match self.writer.commit().await {
            Ok(()) => {
                self.job.reporter.blob_finished(&desc.digest);
                return Outcome::Done(match self.contributors.pop() {
                    Some(last) => {
                        fallback.sources().blob_done(&last);
                        Fetched::From(last)
                    }
                    // Everything came from an earlier run's partial file.
                    None => Fetched::AlreadyStored,
                });
            }
            Err(CommitError::Mismatch { actual, .. }) => actual,
            Err(CommitError::Store(e)) => return Outcome::Stop(give_up(e)),
        };
        self.mismatches += 1;
        if self.mismatches > MAX_MISMATCHES {
            let what = format!("{} (its content never matched its digest)", fallback.what());
            return Outcome::Stop(fallback.exhausted(Some(what)));
        }
        let blamed = if self.writer.resumed() > 0 {
            // Bytes from an earlier run are in there: nobody can be blamed.
            Vec::new()
        } else {
            std::mem::take(&mut self.contributors)
        };
        if let Err(e) = self.job.discard_corrupt(desc, &actual, &blamed, fallback) {
            return Outcome::Stop(e);
        }
        // With no other source left, one more full try from the same ones: corruption on
        // the way (a flaky proxy) need not repeat.
        if self.mismatches < 2 && fallback.none_left() {
            for c in &blamed {
                fallback.readmit(c);
            }
        }
        if let Err(e) = self.writer.reset().await {
            return Outcome::Stop(give_up(e));
        }
        self.contributors.clear();
        self.high_water = 0;
        Outcome::Again
    }
}

impl BlobJob<'_> {
    /// Wrong bytes: every source that contributed is suspect for this blob, and named.
    fn discard_corrupt(
        &self,
        desc: &Descriptor,
        actual: &cudaimg_oci::digest::Digest,
        contributors: &[Arc<Source>],
        fallback: &mut Fallback<'_, FetchError>,
    ) -> Result<(), FallbackError<FetchError>> {
        let names: Vec<&str> = contributors.iter().map(|c| c.label()).collect();
        let from = if names.is_empty() {
            "an earlier interrupted download".to_owned()
        } else {
            names.join(", ")
        };
        self.sources.warn(format!(
            "blob {} from {from} hashed to {actual}: the bytes were discarded and fetched again",
            desc.digest
        ));
        for c in contributors {
            let error = RegistryError::DigestMismatch {
                url: c.client.blob_url(self.repo, &desc.digest),
                expected: desc.digest.clone(),
                actual: actual.clone(),
            };
            fallback.failed(c, error.into(), false)?;
        }
        Ok(())
    }
}
