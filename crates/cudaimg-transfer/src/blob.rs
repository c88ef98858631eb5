//! Moving one blob into the store: from the first usable source, resuming with `Range`
//! after a cut or stall (from the same source or another), and starting over elsewhere when
//! the finished bytes do not hash to the digest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use cudaimg_oci::manifest::Descriptor;
use cudaimg_oci::progress::Reporter;
use cudaimg_registry::RegistryError;

use crate::FetchError;
use cudaimg_mirrors::sources::{FallbackError, ItemState, Pick, Source, SourceSet};
use cudaimg_store::{CommitError, Store, WriteError};

/// Cuts and stalls after which bytes had arrived, per blob, before giving up on it: enough to
/// ride out a flaky link, bounded so a source that cuts every connection cannot loop forever.
const MAX_RESUMES: u32 = 50;
/// Complete downloads that hashed wrong, per blob, before giving up on it.
const MAX_MISMATCHES: u32 = 3;

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
}

impl BlobJob<'_> {
    pub(super) async fn fetch(
        &self,
        desc: &Descriptor,
    ) -> Result<Fetched, FallbackError<FetchError>> {
        let what = format!("blob {}", desc.digest);
        let give_up = |e: cudaimg_store::StoreError| FallbackError::GiveUp(FetchError::Store(e));
        let Some(mut writer) = self
            .store
            .blob_writer(&desc.digest, desc.size)
            .await
            .map_err(give_up)?
        else {
            self.reporter.blob_cached(&desc.digest, desc.size);
            return Ok(Fetched::AlreadyStored);
        };
        let mut item = ItemState::default();
        // Sources whose bytes are in the partial file: the suspects if the digest is wrong.
        let mut contributors: Vec<Arc<Source>> = Vec::new();
        let mut resumes = 0u32;
        let mut mismatches = 0u32;
        let mut high_water = writer.written();
        // A large blob with several sources to ask: fill it from all of them at once.
        if desc.size - writer.written() >= super::parallel::PARALLEL_MIN {
            contributors = self
                .fill_parallel(desc, &mut writer, &mut item, &what)
                .await?;
            high_water = writer.written();
        }
        loop {
            if writer.written() == desc.size {
                match writer.commit().await {
                    Ok(()) => {
                        self.reporter.blob_finished(&desc.digest);
                        return Ok(match contributors.pop() {
                            Some(last) => {
                                self.sources.blob_done(&last);
                                Fetched::From(last)
                            }
                            // Everything came from an earlier run's partial file.
                            None => Fetched::AlreadyStored,
                        });
                    }
                    Err(CommitError::Mismatch { actual, .. }) => {
                        mismatches += 1;
                        if mismatches > MAX_MISMATCHES {
                            return Err(FallbackError::Exhausted {
                                what: format!("{what} (its content never matched its digest)"),
                                attempts: item.attempts,
                            });
                        }
                        let blamed = if writer.resumed() > 0 {
                            // Bytes from an earlier run are in there: nobody can be blamed.
                            &[][..]
                        } else {
                            &contributors[..]
                        };
                        self.discard_corrupt(desc, &actual, blamed, &mut item, &what)?;
                        // With no other source left, one more full try from the same ones:
                        // corruption on the way (a flaky proxy) need not repeat.
                        if mismatches < 2 && matches!(self.sources.pick(&item), Pick::None) {
                            for c in blamed {
                                item.readmit(c);
                            }
                        }
                        writer.reset().await.map_err(give_up)?;
                        contributors.clear();
                        high_water = 0;
                        continue;
                    }
                    Err(CommitError::Store(e)) => return Err(give_up(e)),
                }
            }
            let Some(source) = self.sources.next_source(&item).await else {
                return Err(FallbackError::Exhausted {
                    what,
                    attempts: item.attempts,
                });
            };
            let offset = writer.written();
            let request = source
                .client
                .blob(self.repo, &desc.digest, offset, desc.size);
            // Headers that never come are a stall too.
            let resp = match tokio::time::timeout(self.stall, request).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    self.sources.failed(
                        &source,
                        &mut item,
                        e.into(),
                        false,
                        &what,
                        self.reporter,
                    )?;
                    continue;
                }
                Err(_) => {
                    let e = RegistryError::Stalled {
                        url: source.client.blob_url(self.repo, &desc.digest),
                        secs: self.stall.as_secs(),
                    };
                    self.sources.failed(
                        &source,
                        &mut item,
                        e.into(),
                        false,
                        &what,
                        self.reporter,
                    )?;
                    continue;
                }
            };
            if resp.offset != offset {
                // The source ignored `Range`: its body starts at byte 0.
                writer.reset().await.map_err(give_up)?;
                contributors.clear();
            }
            if !contributors.iter().any(|c| c.index == source.index) {
                contributors.push(source.clone());
            }
            self.reporter
                .blob_started(&desc.digest, desc.size, resp.offset, source.label());
            let url = resp.url.clone();
            let mut body = resp.response.bytes_stream();
            let outcome = loop {
                match tokio::time::timeout(self.stall, body.next()).await {
                    Err(_) => {
                        break Err(RegistryError::Stalled {
                            url: url.clone(),
                            secs: self.stall.as_secs(),
                        })
                    }
                    Ok(None) if writer.written() < desc.size => {
                        break Err(RegistryError::Transfer {
                            url: url.clone(),
                            reason: format!(
                                "the body ended at byte {} of {}",
                                writer.written(),
                                desc.size
                            ),
                        })
                    }
                    Ok(None) => break Ok(()),
                    Ok(Some(Err(e))) => break Err(RegistryError::from_reqwest_at(&url, e)),
                    Ok(Some(Ok(chunk))) => {
                        let n = chunk.len() as u64;
                        self.received.fetch_add(n, Ordering::Relaxed);
                        source.add_bytes(n);
                        match writer.write(&chunk).await {
                            Ok(()) => self.reporter.blob_progress(&desc.digest, n),
                            Err(WriteError::TooLong { expected_size }) => {
                                // Counted before the reset: the blob's bytes so far (from
                                // this response and any resumed before it) and this chunk.
                                let at_least = writer.written() + n;
                                writer.reset().await.map_err(give_up)?;
                                contributors.clear();
                                break Err(RegistryError::TooLong {
                                    url: url.clone(),
                                    expected: expected_size,
                                    at_least,
                                });
                            }
                            Err(WriteError::Store(e)) => return Err(give_up(e)),
                        }
                    }
                }
            };
            // Progress is bytes beyond the furthest point any attempt reached: a source that
            // restarts the blob and cuts again makes none.
            let progressed = writer.written() > high_water;
            high_water = high_water.max(writer.written());
            if progressed {
                self.sources.succeeded(&source);
            }
            if let Err(e) = outcome {
                if progressed {
                    resumes += 1;
                }
                self.sources.failed(
                    &source,
                    &mut item,
                    e.into(),
                    progressed && resumes <= MAX_RESUMES,
                    &what,
                    self.reporter,
                )?;
            }
        }
    }

    /// Wrong bytes: every source that contributed is suspect for this blob, and named.
    fn discard_corrupt(
        &self,
        desc: &Descriptor,
        actual: &cudaimg_oci::digest::Digest,
        contributors: &[Arc<Source>],
        item: &mut ItemState<FetchError>,
        what: &str,
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
            self.sources.failed(
                c,
                item,
                RegistryError::DigestMismatch {
                    url: c.client.blob_url(self.repo, &desc.digest),
                    expected: desc.digest.clone(),
                    actual: actual.clone(),
                }
                .into(),
                false,
                what,
                self.reporter,
            )?;
        }
        Ok(())
    }
}
