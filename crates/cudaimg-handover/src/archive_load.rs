//! The archive route: a docker-archive written from the store while it streams into the
//! Engine's `POST /images/load` (no temporary copy). With `pull --load`, each blob goes in
//! as soon as the pull has stored it; every byte is read back through the store's
//! verifying reader, and a pull that fails ends the archive short, so the Engine loads
//! nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudaimg_docker::{DockerEngine, DockerError};
use cudaimg_oci::manifest::Descriptor;
use cudaimg_store::{Store, StoreError};
use cudaimg_transfer::archive::ArchiveImage;

use crate::arrivals::Arrivals;

/// The thread writing the archive, and the `images/load` request it feeds.
pub(crate) struct Loading {
    pub(crate) writer: tokio::task::JoinHandle<Result<(), StoreError>>,
    pub(crate) request: tokio::task::JoinHandle<Result<Vec<String>, DockerError>>,
}

impl Loading {
    /// Starts writing the archive of `image` (on a blocking thread) into an `images/load`
    /// request; each blob is read once `arrivals` has it.
    pub(crate) fn start(
        engine: &DockerEngine,
        store: &Store,
        image: ArchiveImage,
        repo_tag: Option<String>,
        arrivals: Arc<Arrivals>,
        sent: Arc<AtomicU64>,
    ) -> Loading {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
        let s = store.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let arrived = |blob: &Descriptor| arrivals.wait(&s, blob);
            let mut out = ChannelWriter::new(tx.clone());
            let res = cudaimg_transfer::archive::write_as_stored(
                &s,
                &image,
                repo_tag.as_deref(),
                cudaimg_transfer::archive::Format::DockerArchive,
                &mut out,
                &arrived,
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
        Loading {
            writer,
            request: tokio::spawn(async move { engine.load(body).await }),
        }
    }

    /// Waits for both: the writer's outcome first (a store failure explains a refused
    /// request), then the Engine's.
    pub(crate) async fn end(self) -> Result<(), crate::LoadError> {
        let loaded = self.request.await;
        match self.writer.await {
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(StoreError::Io(std::io::Error::other(e)).into()),
            Ok(Ok(())) => {}
        }
        match loaded {
            Ok(r) => r.map(drop).map_err(Into::into),
            Err(e) => Err(StoreError::Io(std::io::Error::other(e)).into()),
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
