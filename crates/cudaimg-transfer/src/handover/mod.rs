//! Handing a stored image to the Docker Engine: a docker-archive is written from the store
//! while it streams into the Engine API (no temporary copy), then the Engine's image ID is
//! checked against the upstream config digest.
//!
//! `pull --load` does not wait for the pull to end ([`Streaming`]): once the image manifest
//! is chosen, the archive starts into the Engine, and each blob (config, then layers in
//! order) goes in as soon as the pull has stored it, verified, while later ones download.
//! Every byte sent is read back from the store through its verifying reader, exactly as
//! `load` would; a pull that fails ends the archive short, so the Engine loads nothing.
//!
//! With an Engine on this host, `pull --load` goes the faster way of [`relay`]: the Engine
//! pulls from cudaimg on 127.0.0.1 and imports each layer while later ones download. If
//! that fails, the archive route above runs after the pull.

mod relay;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use cudaimg_docker::{DockerEngine, DockerError};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::Descriptor;
use cudaimg_store::{Store, StoreError};

use crate::archive::ArchiveImage;

/// What `hand_over` did.
#[derive(Debug, serde::Serialize)]
pub struct Loaded {
    /// The name Docker shows, if the image has a tag.
    pub name: Option<String>,
    /// Docker's image ID: the config digest, as upstream built it.
    pub image_id: String,
    pub engine: String,
    pub api_version: String,
    /// `pull --load`: bytes the Engine had taken before the pull ended (the overlap of
    /// download and import).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_while_pulling: Option<u64>,
    /// How the image went in: `relay` (the Engine pulled it from cudaimg on 127.0.0.1) or
    /// `archive` (a streamed `docker load`).
    pub route: &'static str,
    /// Why the relay was not used after all, when it was tried and failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_failed: Option<String>,
    /// Layer answers the relay ended short because the bytes failed a check (a source sent
    /// bad ones): the Engine dropped them and asked again.
    #[serde(skip_serializing_if = "is_zero")]
    pub answers_ended_short: u64,
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why an image could not be handed to Docker.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the Docker Engine at `{host}` holds `{name}` as {got} after loading, not {expected}")]
    Mismatch {
        host: String,
        name: String,
        expected: String,
        got: String,
    },
}

impl LoadError {
    pub fn hint(&self) -> Option<String> {
        match self {
            LoadError::Docker(e) => Some(e.hint()),
            LoadError::Store(e) => e.hint(),
            LoadError::Mismatch { .. } => {
                Some("another process may have retagged it meanwhile; load again".into())
            }
        }
    }
}

/// Streams a stored image into the engine as a docker-archive, under `repo_tag`, and checks
/// that the engine then holds it with the upstream config digest as its ID. The archive is
/// produced while it is sent: no temporary copy of the image is written.
pub async fn hand_over(
    engine: &DockerEngine,
    store: &cudaimg_store::Store,
    image: &cudaimg_store::StoredImage,
    repo_tag: Option<String>,
) -> Result<Loaded, LoadError> {
    let api_version = engine.ping().await?;
    load_stored(engine, store, image.into(), repo_tag, api_version).await
}

/// [`hand_over`] of an image whose blobs are all stored.
async fn load_stored(
    engine: &DockerEngine,
    store: &Store,
    image: ArchiveImage,
    repo_tag: Option<String>,
    api_version: String,
) -> Result<Loaded, LoadError> {
    let expected = image.manifest.config.digest.to_string();
    let (writer, loading) = start(
        engine,
        store,
        image,
        repo_tag.clone(),
        Arc::new(|_: &Descriptor| Ok(())),
        Arc::default(),
    );
    let loaded = loading.await;
    finish(engine, writer, loaded, expected, repo_tag, api_version).await
}

/// The thread writing the archive.
type Writer = tokio::task::JoinHandle<Result<(), StoreError>>;
/// The `images/load` request it feeds.
type Loading = futures_util::future::BoxFuture<'static, Result<Vec<String>, DockerError>>;

/// What a blob-by-blob archive waits on: `Fn(blob) -> Ok` once it is stored.
type Arrived = Arc<dyn Fn(&Descriptor) -> Result<(), StoreError> + Send + Sync>;

/// Starts writing the archive (on a blocking thread) into an `images/load` request; returns
/// the writer and the request.
fn start(
    engine: &DockerEngine,
    store: &Store,
    image: ArchiveImage,
    repo_tag: Option<String>,
    arrived: Arrived,
    sent: Arc<AtomicU64>,
) -> (Writer, Loading) {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let s = store.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter::new(tx.clone());
        let res = crate::archive::write_as_stored(
            &s,
            &image,
            repo_tag.as_deref(),
            crate::archive::Format::DockerArchive,
            &mut out,
            &*arrived,
        )
        .and_then(|()| out.finish().map_err(StoreError::from));
        if let Err(e) = &res {
            // Fails the request body, so the engine does not load half an image.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
        res
    });
    let body = futures_util::stream::unfold(rx, move |mut rx| {
        let sent = sent.clone();
        async move {
            let item = rx.recv().await?;
            if let Ok(piece) = &item {
                sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
            }
            Some((item, rx))
        }
    });
    let engine = engine.clone();
    (writer, Box::pin(async move { engine.load(body).await }))
}

/// The end of a hand-over: the writer's outcome first (a store failure explains a refused
/// request), then the Engine's, then the image ID check.
async fn finish(
    engine: &DockerEngine,
    writer: tokio::task::JoinHandle<Result<(), StoreError>>,
    loaded: Result<Vec<String>, DockerError>,
    expected: String,
    repo_tag: Option<String>,
    api_version: String,
) -> Result<Loaded, LoadError> {
    match writer.await {
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(StoreError::Io(std::io::Error::other(e)).into()),
        Ok(Ok(())) => {}
    }
    loaded?;
    let lookup = repo_tag.clone().unwrap_or_else(|| expected.clone());
    let got = engine.image_id(&lookup).await?.unwrap_or_default();
    if got != expected {
        return Err(LoadError::Mismatch {
            host: engine.host().to_owned(),
            name: lookup,
            expected,
            got,
        });
    }
    Ok(Loaded {
        name: repo_tag,
        image_id: got,
        engine: engine.host().to_owned(),
        api_version,
        sent_while_pulling: None,
        route: "archive",
        relay_failed: None,
        answers_ended_short: 0,
    })
}

/// Which blobs the pull has stored so far, and whether it ended: the archive writer waits
/// here for each blob in turn.
#[derive(Default)]
struct Arrivals {
    state: Mutex<ArrivalState>,
    changed: Condvar,
}

#[derive(Default)]
struct ArrivalState {
    stored: HashSet<Digest>,
    ended: Ended,
}

/// Whether the pull is over, and how.
#[derive(Default)]
enum Ended {
    #[default]
    Running,
    /// Every blob is stored.
    Stored,
    Failed(String),
}

impl Arrivals {
    fn update(&self, f: impl FnOnce(&mut ArrivalState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
        self.changed.notify_all();
    }

    /// Blocks until `blob` is in the store, or the pull failed.
    fn wait(&self, store: &Store, blob: &Descriptor) -> Result<(), StoreError> {
        let gone = || StoreError::Io(std::io::Error::other("the pull was abandoned"));
        let mut s = self.state.lock().map_err(|_| gone())?;
        loop {
            if s.stored.contains(&blob.digest) {
                return Ok(());
            }
            match &s.ended {
                Ended::Failed(why) => {
                    return Err(StoreError::Io(std::io::Error::other(format!(
                        "the pull failed before {} was stored: {why}",
                        blob.digest
                    ))))
                }
                // Ended well: whatever was stored already is in the store.
                Ended::Stored => return Ok(()),
                Ended::Running if store.has_blob(&blob.digest, blob.size) => return Ok(()),
                Ended::Running => s = self.changed.wait(s).map_err(|_| gone())?,
            }
        }
    }
}

/// `pull --load` while the pull runs: the pull calls [`Streaming::begin`] once the image
/// manifest is chosen and [`Streaming::stored`] as each blob is stored; the command then
/// calls [`Streaming::finish`] with how the pull ended.
pub struct Streaming {
    engine: DockerEngine,
    store: Store,
    api_version: String,
    arrivals: Arc<Arrivals>,
    started: Mutex<Option<Started>>,
    /// Bytes the Engine has taken so far.
    sent: Arc<AtomicU64>,
    /// Whether to hand over through the [`relay`].
    via_relay: bool,
}

enum Started {
    Archive {
        expected: String,
        repo_tag: Option<String>,
        writer: tokio::task::JoinHandle<Result<(), StoreError>>,
        loading: tokio::task::JoinHandle<Result<Vec<String>, DockerError>>,
    },
    Relay {
        image: ArchiveImage,
        /// `REPO:TAG`, as Docker shows it.
        repo_tag: String,
        /// What the Engine pulls: `127.0.0.1:PORT/cudaimg-load-SECRET:TAG`.
        relay_name: String,
        relay: Box<relay::Relay>,
        pulling: tokio::task::JoinHandle<Result<(), DockerError>>,
    },
}

/// The route `CUDAIMG_LOAD_VIA` asks for, else the relay for an Engine that shares this
/// host's loopback.
fn relay_wanted(engine: &DockerEngine) -> bool {
    match std::env::var(cudaimg_static::EnvVars::CUDAIMG_LOAD_VIA).as_deref() {
        Ok("archive") => false,
        Ok("relay") => true,
        _ => engine.shares_loopback(),
    }
}

/// `REPO:TAG` split at the tag's colon (after the last `/`, so not a port's).
fn split_tag(repo_tag: &str) -> Option<(&str, &str)> {
    let (repo, tag) = repo_tag.rsplit_once(':')?;
    (!tag.contains('/')).then_some((repo, tag))
}

impl Streaming {
    /// Reaches the Engine first, so a pull with no Engine to load into fails before it
    /// downloads anything.
    pub async fn new(engine: DockerEngine, store: Store) -> Result<Self, LoadError> {
        let api_version = engine.ping().await?;
        Ok(Streaming {
            via_relay: relay_wanted(&engine),
            engine,
            store,
            api_version,
            arrivals: Arc::default(),
            started: Mutex::new(None),
            sent: Arc::default(),
        })
    }

    /// The image is chosen: start the archive into the Engine. Blobs already stored go
    /// in at once, the others as [`Streaming::stored`] announces them.
    pub(crate) fn begin(&self, image: ArchiveImage, repo_tag: Option<String>) {
        let started = match repo_tag {
            // The relay needs a tag to give the image (an untagged pull would be deleted
            // with the relay's name).
            Some(repo_tag) if self.via_relay && split_tag(&repo_tag).is_some() => {
                self.begin_relay(image, repo_tag)
            }
            repo_tag => self.begin_archive(image, repo_tag),
        };
        if let Ok(mut s) = self.started.lock() {
            *s = Some(started);
        }
    }

    fn begin_archive(&self, image: ArchiveImage, repo_tag: Option<String>) -> Started {
        let arrivals = self.arrivals.clone();
        let store = self.store.clone();
        let arrived: Arrived = Arc::new(move |blob: &Descriptor| arrivals.wait(&store, blob));
        let expected = image.manifest.config.digest.to_string();
        let (writer, loading) = start(
            &self.engine,
            &self.store,
            image,
            repo_tag.clone(),
            arrived,
            self.sent.clone(),
        );
        Started::Archive {
            expected,
            repo_tag,
            writer,
            loading: tokio::spawn(loading),
        }
    }

    fn begin_relay(&self, image: ArchiveImage, repo_tag: String) -> Started {
        let tag = split_tag(&repo_tag)
            .map(|(_, t)| t.to_owned())
            .unwrap_or_default();
        let Ok(relay) = relay::start(
            self.store.clone(),
            self.arrivals.clone(),
            image.manifest.clone(),
            tag.clone(),
            self.sent.clone(),
        ) else {
            // No loopback port: the archive route needs none.
            return self.begin_archive(image, Some(repo_tag));
        };
        let engine = self.engine.clone();
        let from = format!("{}/{}", relay.addr, relay.repository);
        let relay_name = format!("{from}:{tag}");
        let pulling = tokio::spawn(async move { engine.pull(&from, &tag).await });
        Started::Relay {
            image,
            repo_tag,
            relay_name,
            relay: Box::new(relay),
            pulling,
        }
    }

    /// The pull stored `digest` (verified).
    pub(crate) fn stored(&self, digest: &Digest) {
        self.arrivals.update(|s| {
            s.stored.insert(digest.clone());
        });
    }

    /// The pull ended (`Err`: why it failed, which ends the archive short); waits for the
    /// Engine and checks what it loaded. `None`: the pull never chose an image.
    pub async fn finish(self, pulled: Result<(), String>) -> Option<Result<Loaded, LoadError>> {
        self.arrivals.update(|s| {
            s.ended = match &pulled {
                Ok(()) => Ended::Stored,
                Err(why) => Ended::Failed(why.clone()),
            }
        });
        let started = self.started.lock().ok()?.take()?;
        let loaded = match started {
            Started::Archive {
                expected,
                repo_tag,
                writer,
                loading,
            } => {
                let sent_while_pulling = self.sent.load(Ordering::Relaxed);
                let loaded = match loading.await {
                    Ok(r) => r,
                    Err(e) => return Some(Err(StoreError::Io(std::io::Error::other(e)).into())),
                };
                finish(
                    &self.engine,
                    writer,
                    loaded,
                    expected,
                    repo_tag,
                    self.api_version.clone(),
                )
                .await
                .map(|l| Loaded {
                    sent_while_pulling: Some(sent_while_pulling),
                    ..l
                })
            }
            Started::Relay {
                image,
                repo_tag,
                relay_name,
                relay,
                pulling,
            } => {
                let sent_while_pulling = self.sent.load(Ordering::Relaxed);
                if let Err(why) = pulled {
                    relay.stop();
                    pulling.abort();
                    // The Engine may have finished before the pull failed (storing the index,
                    // say): the relay's name must not stay behind.
                    let _ = self.engine.untag(&relay_name).await;
                    return Some(Err(StoreError::Io(std::io::Error::other(format!(
                        "the pull failed: {why}"
                    )))
                    .into()));
                }
                let engine_pull = pulling.await.unwrap_or_else(|e| {
                    Err(DockerError::Refused {
                        host: self.engine.host().to_owned(),
                        message: e.to_string(),
                    })
                });
                let ended_short = relay.ended_short.load(Ordering::Relaxed);
                drop(relay);
                match engine_pull {
                    Ok(()) => self
                        .name_relayed(&image, &repo_tag, &relay_name)
                        .await
                        .map(|l| Loaded {
                            sent_while_pulling: Some(sent_while_pulling),
                            answers_ended_short: ended_short,
                            ..l
                        }),
                    Err(e) => {
                        let _ = self.engine.untag(&relay_name).await;
                        // The image is stored whole now: the archive goes in at once.
                        load_stored(
                            &self.engine,
                            &self.store,
                            image,
                            Some(repo_tag),
                            self.api_version.clone(),
                        )
                        .await
                        .map(|l| Loaded {
                            relay_failed: Some(e.to_string()),
                            ..l
                        })
                    }
                }
            }
        };
        Some(loaded)
    }

    /// After the Engine pulled from the relay: gives the image its name, takes the relay's
    /// away, and checks the image ID.
    async fn name_relayed(
        &self,
        image: &ArchiveImage,
        repo_tag: &str,
        relay_name: &str,
    ) -> Result<Loaded, LoadError> {
        let (repo, tag) = split_tag(repo_tag).unwrap_or((repo_tag, "latest"));
        let tagged = self.engine.tag(relay_name, repo, tag).await;
        // Whatever happened, the relay's name must not stay behind.
        let untagged = self.engine.untag(relay_name).await;
        tagged?;
        untagged?;
        let expected = image.manifest.config.digest.to_string();
        let got = self.engine.image_id(repo_tag).await?.unwrap_or_default();
        if got != expected {
            return Err(LoadError::Mismatch {
                host: self.engine.host().to_owned(),
                name: repo_tag.to_owned(),
                expected,
                got,
            });
        }
        Ok(Loaded {
            name: Some(repo_tag.to_owned()),
            image_id: got,
            engine: self.engine.host().to_owned(),
            api_version: self.api_version.clone(),
            sent_while_pulling: None,
            route: "relay",
            relay_failed: None,
            answers_ended_short: 0,
        })
    }
}

impl Drop for Streaming {
    /// A command that gives up without [`Streaming::finish`] must not leave the writer
    /// waiting for blobs that will never come, nor the Engine pulling from a relay.
    fn drop(&mut self) {
        self.arrivals.update(|s| {
            if matches!(s.ended, Ended::Running) {
                s.ended = Ended::Failed("the command ended".into());
            }
        });
        if let Ok(mut started) = self.started.lock() {
            if let Some(Started::Relay { pulling, .. }) = started.take() {
                pulling.abort();
            }
        }
    }
}

/// A blocking writer feeding an async body in 256 KiB pieces, bounded by the channel.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

const PIECE: usize = 256 * 1024;

impl ChannelWriter {
    fn new(tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(PIECE),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx.blocking_send(Ok(piece)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the Docker Engine stopped reading",
            )
        })
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIECE {
            self.send()?;
        }
        Ok(n)
    }

    /// Sends what is buffered (the archive flushes before it waits for a blob).
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
