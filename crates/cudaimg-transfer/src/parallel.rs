//! Filling one large blob from several sources at once: the missing part is cut into
//! ranges, every usable source fetches ranges in parallel (`Range: bytes=a-b`), each range
//! is written at its offset (through the store's [`RangedWriter`], which refuses a write
//! outside the part still to be written), and the contiguous prefix is hashed as it grows. The digest
//! still covers every byte in order, and memory stays at one 1 MiB buffer per source.
//!
//! Whatever this cannot finish (a source fails, or none is left) is left to the sequential
//! loop in [`super::blob`], which resumes from the hashed prefix. A source that ignores
//! `Range` (answers 200 with the whole blob, as a pull-through cache does for a blob it has
//! not cached yet) is not a failure: the fill stops at once (it would cost that source,
//! often the fastest, its share), and the sequential loop takes the blob from it, skipping
//! the prefix already held. Such a source takes no part in later fills of the run.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::join_all;
use futures_util::StreamExt;

use crate::blob::{BlobJob, PARALLEL_MIN};
use cudaimg_oci::manifest::Descriptor;
use cudaimg_registry::RegistryError;

use crate::error::FetchError;
use cudaimg_mirrors::fallback::{Fallback, FallbackError};
use cudaimg_mirrors::sources::Source;
use cudaimg_store::{BlobWriter, RangedWriter, StoreError};

const RANGE_BYTES: u64 = 16 << 20;
const MAX_SOURCES: usize = 4;
const PIECE: usize = 1 << 20;
/// How often an idle worker looks for a range handed back by a failing one.
const WAIT_FOR_REQUEUE: std::time::Duration = std::time::Duration::from_millis(20);

impl BlobJob<'_> {
    /// Fills as much of the blob as the usable sources deliver; returns those that did.
    pub(super) async fn fill_parallel(
        &self,
        desc: &Descriptor,
        writer: &mut BlobWriter,
        fallback: &mut Fallback<'_, FetchError>,
    ) -> Result<Vec<Arc<Source>>, FallbackError<FetchError>> {
        let give_up = |e: StoreError| FallbackError::GiveUp(FetchError::Store(e));
        let mut usable = fallback.usable_now();
        usable.retain(|s| !s.ignores_range());
        usable.truncate(MAX_SOURCES);
        if usable.len() < 2 || desc.size - writer.written() < PARALLEL_MIN {
            return Ok(Vec::new());
        }
        let ranged = writer.ranged().await.map_err(give_up)?;
        let from = writer.written();
        let _lease = self.spread.share(&usable, desc.size - from);
        let mut queue = VecDeque::new();
        let mut at = from;
        while at < desc.size {
            let end = (at + RANGE_BYTES).min(desc.size);
            queue.push_back((at, end));
            at = end;
        }
        let state = Fill {
            queue: Mutex::new((queue, 0)),
            done: Mutex::new(BTreeMap::new()),
            writer: tokio::sync::Mutex::new(writer),
            fallback: Mutex::new(fallback),
            helped: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        };
        self.reporter
            .blob_started(&desc.digest, desc.size, from, "several sources");
        let results = join_all(
            usable
                .iter()
                .map(|s| self.range_worker(s, desc, &state, &ranged)),
        )
        .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        let Fill { writer, helped, .. } = state;
        writer.into_inner().end_ranged().await.map_err(give_up)?;
        Ok(helped.into_inner().unwrap_or_default())
    }

    /// Takes ranges until none is left or its source fails.
    async fn range_worker(
        &self,
        source: &Arc<Source>,
        desc: &Descriptor,
        fill: &Fill<'_, '_>,
        ranged: &RangedWriter,
    ) -> Result<(), FallbackError<FetchError>> {
        loop {
            let (start, end) = match fill.take() {
                Take::Range(start, end) => (start, end),
                // Another worker is still fetching: its range may come back if it fails.
                Take::Wait => {
                    tokio::time::sleep(WAIT_FOR_REQUEUE).await;
                    continue;
                }
                Take::Done => return Ok(()),
            };
            // A source that has not answered in this run gets a short first-byte wait.
            let first_wait = fill
                .fallback
                .lock()
                .ok()
                .and_then(|f| f.sources().first_byte_wait(source, f.item(), self.reporter));
            let (reached, outcome) = self
                .fetch_range(source, desc, (start, end), ranged, first_wait, &fill.stop)
                .await;
            if reached > start {
                if let Ok(mut d) = fill.done.lock() {
                    d.insert(start, reached);
                }
                if let Ok(mut h) = fill.helped.lock() {
                    if !h.iter().any(|x| x.index == source.index) {
                        h.push(source.clone());
                    }
                }
                fill.advance()
                    .await
                    .map_err(|e| FallbackError::GiveUp(FetchError::Store(e)))?;
            }
            match outcome {
                Ok(()) => {
                    fill.finish(None);
                    self.sources.succeeded(source);
                }
                // The fill stopped (this source ignores `Range`, or another does): no
                // failure; the sequential loop goes on from the prefix.
                Err(None) => {
                    fill.finish((reached < end).then_some((reached, end)));
                    if source.ignores_range() {
                        self.sources.succeeded(source);
                    }
                    return Ok(());
                }
                Err(Some(e)) => {
                    fill.finish((reached < end).then_some((reached, end)));
                    let silent = matches!(e, FetchError::Registry(RegistryError::Stalled { .. }));
                    if silent && first_wait.is_some() && reached == start {
                        self.sources.waited_on(source, None, self.reporter);
                    }
                    let mut fallback = fill.fallback.lock().map_err(|_| poisoned())?;
                    fallback.failed(source, e, reached > start)?;
                    // This source is done here; the others, or the sequential loop, go on.
                    return Ok(());
                }
            }
        }
    }

    /// Fetches `start..end` into the file. Returns how far it got, and why it stopped early.
    async fn fetch_range(
        &self,
        source: &Source,
        desc: &Descriptor,
        (start, end): (u64, u64),
        ranged: &RangedWriter,
        first_wait: Option<std::time::Duration>,
        stop: &AtomicBool,
    ) -> (u64, Result<(), Option<FetchError>>) {
        let request = source
            .client
            .blob_range(self.repo, &desc.digest, start, end - 1, desc.size);
        let started = std::time::Instant::now();
        let resp = match tokio::time::timeout(first_wait.unwrap_or(self.stall), request).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return (start, Err(Some(e.into()))),
            Err(_) => {
                let url = source.client.blob_url(self.repo, &desc.digest);
                let secs = self.stall.as_secs();
                return (
                    start,
                    Err(Some(RegistryError::Stalled { url, secs }.into())),
                );
            }
        };
        if resp.response.status().as_u16() == 200 {
            // The whole blob for a range: stop the fill, and leave the blob to this source.
            source.set_ignores_range();
            stop.store(true, Ordering::Relaxed);
            return (start, Err(None));
        }
        let url = resp.url.clone();
        let mut body = resp.response.bytes_stream();
        let mut buf: Vec<u8> = Vec::with_capacity(PIECE);
        let mut pos = start;
        // The first chunk within what is left of the first-byte wait.
        let mut wait = first_wait.map_or(self.stall, |w| w.saturating_sub(started.elapsed()));
        let outcome: Result<(), FetchError> = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            let next = tokio::time::timeout(wait, body.next()).await;
            wait = self.stall;
            match next {
                Err(_) => {
                    break Err(RegistryError::Stalled {
                        url: url.clone(),
                        secs: self.stall.as_secs(),
                    }
                    .into())
                }
                Ok(None) if pos + buf.len() as u64 == end => break Ok(()),
                Ok(None) => {
                    break Err(RegistryError::Transfer {
                        url: url.clone(),
                        reason: format!(
                            "the range ended at byte {} of {start}-{end}",
                            pos + buf.len() as u64
                        ),
                    }
                    .into())
                }
                Ok(Some(Err(e))) => break Err(RegistryError::from_reqwest_at(&url, e).into()),
                Ok(Some(Ok(chunk))) => {
                    let n = chunk.len() as u64;
                    if pos + buf.len() as u64 + n > end {
                        break Err(RegistryError::BadRange {
                            url: url.clone(),
                            reason: format!("it sent more than bytes {start}-{end}"),
                        }
                        .into());
                    }
                    self.received.fetch_add(n, Ordering::Relaxed);
                    source.add_bytes(n);
                    self.reporter.blob_progress(&desc.digest, n);
                    buf.extend_from_slice(&chunk);
                    if buf.len() >= PIECE {
                        match ranged.write_at(pos, std::mem::take(&mut buf)).await {
                            Ok(w) => pos += w,
                            Err(e) => return (pos, Err(Some(FetchError::Store(e)))),
                        }
                        buf.reserve(PIECE);
                    }
                }
            }
        };
        // Bytes that arrived before a failure are as good as any: keep them.
        if !buf.is_empty() {
            match ranged.write_at(pos, buf).await {
                Ok(w) => pos += w,
                Err(e) => return (pos, Err(Some(FetchError::Store(e)))),
            }
        }
        match outcome {
            Ok(()) if pos < end => (pos, Err(None)),
            other => (pos, other.map_err(Some)),
        }
    }
}

enum Take {
    Range(u64, u64),
    Wait,
    Done,
}

/// Shared state of one parallel fill.
struct Fill<'w, 'f> {
    /// Ranges to fetch, and how many are being fetched now.
    queue: Mutex<(VecDeque<(u64, u64)>, usize)>,
    /// Finished ranges beyond the hashed prefix: start -> end.
    done: Mutex<BTreeMap<u64, u64>>,
    writer: tokio::sync::Mutex<&'w mut BlobWriter>,
    fallback: Mutex<&'w mut Fallback<'f, FetchError>>,
    helped: Mutex<Vec<Arc<Source>>>,
    /// A source ignored `Range`: no more ranges are handed out, and those in flight end.
    stop: AtomicBool,
}

impl Fill<'_, '_> {
    /// The next range to fetch, or whether to wait for one a failing worker may hand back.
    fn take(&self) -> Take {
        let Ok(mut q) = self.queue.lock() else {
            return Take::Done;
        };
        if self.stop.load(Ordering::Relaxed) {
            return Take::Done;
        }
        match q.0.pop_front() {
            Some((start, end)) => {
                q.1 += 1;
                Take::Range(start, end)
            }
            None if q.1 > 0 => Take::Wait,
            None => Take::Done,
        }
    }

    /// A fetch ended; what it did not get goes back to the front of the queue.
    fn finish(&self, rest: Option<(u64, u64)>) {
        if let Ok(mut q) = self.queue.lock() {
            if let Some(r) = rest {
                q.0.push_front(r);
            }
            q.1 = q.1.saturating_sub(1);
        }
    }

    /// Hashes finished ranges that now continue the prefix.
    async fn advance(&self) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().await;
        loop {
            let at = writer.written();
            let next = self.done.lock().ok().and_then(|mut d| d.remove(&at));
            match next {
                Some(end) => writer.absorb(end).await?,
                None => return Ok(()),
            }
        }
    }
}

fn poisoned() -> FallbackError<FetchError> {
    FallbackError::GiveUp(FetchError::Store(StoreError::Io(std::io::Error::other(
        "a parallel fill's state was poisoned by a panic",
    ))))
}
