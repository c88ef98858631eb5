//! Handing a stored image to the Docker Engine: a docker-archive is written from the store
//! while it streams into the Engine API (no temporary copy), then the Engine's image ID is
//! checked against the upstream config digest.

use cudaimg_docker::{DockerEngine, DockerError};
use cudaimg_store::StoreError;

/// What `hand_over` did.
#[derive(Debug, serde::Serialize)]
pub struct Loaded {
    /// The name Docker shows, if the image has a tag.
    pub name: Option<String>,
    /// Docker's image ID: the config digest, as upstream built it.
    pub image_id: String,
    pub engine: String,
    pub api_version: String,
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
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let (s, img, tag) = (store.clone(), image.clone(), repo_tag.clone());
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter::new(tx.clone());
        let res = crate::archive::write(
            &s,
            &img,
            tag.as_deref(),
            crate::archive::Format::DockerArchive,
            &mut out,
        )
        .and_then(|()| out.finish().map_err(StoreError::from));
        if let Err(e) = &res {
            // Fails the request body, so the engine does not load half an image.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
        res
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let loaded = engine.load(body).await;
    match writer.await {
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => return Err(StoreError::Io(std::io::Error::other(e)).into()),
        Ok(Ok(())) => {}
    }
    loaded?;
    let expected = image.manifest.config.digest.to_string();
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
    })
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

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
