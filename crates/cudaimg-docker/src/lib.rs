//! The Docker Engine API, just enough to hand images over and back: ping, load a streamed
//! archive, save one (streamed, for `build --push`), and look an image up; and, for
//! `doctor`, the container runtimes it knows. `DOCKER_HOST` is honoured (`unix://` or plain
//! `tcp://`); the default is `unix:///var/run/docker.sock`.
//! Works with Engine 20.10 and newer (unversioned API paths).

use std::path::PathBuf;

use futures_util::{Stream, StreamExt};
use reqwest::{Body, Client, StatusCode};

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Where the engine is.
#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

/// A Docker Engine to load images into. Cloning shares its connection pool.
#[derive(Clone)]
pub struct DockerEngine {
    client: Client,
    base: String,
    host: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("no Docker Engine answers at `{host}`: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("`DOCKER_HOST={0}` is not supported: cudaimg talks to `unix://PATH` or plain `tcp://HOST:PORT`")]
    Unsupported(String),
    #[error("the Docker Engine at `{host}` refused the image: {message}")]
    Refused { host: String, message: String },
    #[error("the Docker Engine at `{host}` answered HTTP {status}: {message}")]
    Api {
        host: String,
        status: u16,
        message: String,
    },
}

impl DockerError {
    pub fn hint(&self) -> String {
        match self {
            DockerError::Unreachable { .. } => "start the Docker daemon (`sudo systemctl start docker`), \
                 or point `DOCKER_HOST` at a running one; the image stays in the cudaimg store, \
                 so `cudaimg load REF` can hand it over later, or `cudaimg export` can write a file for `docker load`"
                .into(),
            DockerError::Unsupported(_) => "use the engine's unix socket, e.g. `DOCKER_HOST=unix:///var/run/docker.sock`".into(),
            DockerError::Refused { .. } | DockerError::Api { .. } => {
                "check the daemon's log; `cudaimg verify` checks the stored image".into()
            }
        }
    }
}

impl DockerEngine {
    /// The engine named by `DOCKER_HOST`, or the default socket.
    pub fn from_env() -> Result<Self, DockerError> {
        let raw = std::env::var(cudaimg_static::EnvVars::DOCKER_HOST)
            .ok()
            .filter(|h| !h.is_empty());
        let endpoint = match raw.as_deref() {
            None => Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET)),
            Some(h) => {
                if let Some(path) = h.strip_prefix("unix://") {
                    Endpoint::Unix(PathBuf::from(path))
                } else if let Some(addr) = h.strip_prefix("tcp://") {
                    Endpoint::Tcp(addr.trim_end_matches('/').to_owned())
                } else {
                    return Err(DockerError::Unsupported(h.to_owned()));
                }
            }
        };
        let unsupported = |_| DockerError::Unsupported(raw.clone().unwrap_or_default());
        let (client, base, host) = match endpoint {
            Endpoint::Unix(path) => (
                Client::builder()
                    .unix_socket(path.clone())
                    .build()
                    .map_err(unsupported)?,
                "http://docker".to_owned(),
                format!("unix://{}", path.display()),
            ),
            Endpoint::Tcp(addr) => (
                Client::builder().build().map_err(unsupported)?,
                format!("http://{addr}"),
                format!("tcp://{addr}"),
            ),
        };
        Ok(DockerEngine { client, base, host })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn unreachable(&self, e: &reqwest::Error) -> DockerError {
        let mut cur: &(dyn std::error::Error + 'static) = e;
        while let Some(next) = cur.source() {
            cur = next;
        }
        DockerError::Unreachable {
            host: self.host.clone(),
            reason: cur.to_string(),
        }
    }

    /// Checks the engine answers; returns its API version.
    pub async fn ping(&self) -> Result<String, DockerError> {
        let resp = self
            .client
            .get(format!("{}/_ping", self.base))
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let version = resp
            .headers()
            .get("api-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_owned();
        if !resp.status().is_success() {
            return Err(self.api_error(resp).await);
        }
        Ok(version)
    }

    /// Streams a docker-archive into `POST /images/load`; returns what the engine reports
    /// loading (`Loaded image: …` lines).
    pub async fn load<S>(&self, archive: S) -> Result<Vec<String>, DockerError>
    where
        S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    {
        let resp = self
            .client
            .post(format!("{}/images/load?quiet=1", self.base))
            .header("content-type", "application/x-tar")
            .body(Body::wrap_stream(archive))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(self.api_error(resp).await);
        }
        // A JSON message stream: `{"stream": "..."}` lines, or `{"errorDetail": ...}`.
        let mut loaded = Vec::new();
        let mut buf = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk.map_err(|e| self.unreachable(&e))?);
        }
        for value in serde_json::Deserializer::from_slice(&buf).into_iter::<serde_json::Value>() {
            let Ok(v) = value else { break };
            if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
                return Err(DockerError::Refused {
                    host: self.host.clone(),
                    message: err.trim().to_owned(),
                });
            }
            if let Some(line) = v.get("stream").and_then(|s| s.as_str()) {
                let line = line.trim();
                if !line.is_empty() {
                    loaded.push(line.to_owned());
                }
            }
        }
        Ok(loaded)
    }

    /// Streams `GET /images/{name}/get` (`docker save`): a tar, OCI layout plus
    /// `manifest.json` from Engine 25, the legacy layout (`<id>/layer.tar`, `<config>.json`,
    /// `manifest.json`) before. The body is handed over as it arrives, never gathered.
    pub async fn save(
        &self,
        name: &str,
    ) -> Result<impl Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static, DockerError>
    {
        let resp = self
            .client
            .get(format!("{}/images/{name}/get", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(self.api_error(resp).await);
        }
        Ok(resp
            .bytes_stream()
            .map(|c| c.map_err(std::io::Error::other)))
    }

    /// The engine's image ID for `name` (`sha256:` of its config), if it has that image.
    pub async fn image_id(&self, name: &str) -> Result<Option<String>, DockerError> {
        let resp = self
            .client
            .get(format!("{}/images/{name}/json", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.api_error(resp).await);
        }
        let v: serde_json::Value = resp.json().await.map_err(|e| self.unreachable(&e))?;
        Ok(v.get("Id").and_then(|i| i.as_str()).map(str::to_owned))
    }

    /// The container runtimes the engine knows (`runc`, `nvidia`, …) and its default, from
    /// `GET /info`: what `--runtime=nvidia` and compose's `runtime: nvidia` can use.
    pub async fn runtimes(&self) -> Result<(Vec<String>, Option<String>), DockerError> {
        #[derive(serde::Deserialize)]
        struct Info {
            #[serde(rename = "Runtimes", default)]
            runtimes: std::collections::BTreeMap<String, serde_json::Value>,
            #[serde(rename = "DefaultRuntime")]
            default_runtime: Option<String>,
        }
        let resp = self
            .client
            .get(format!("{}/info", self.base))
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(self.api_error(resp).await);
        }
        let info: Info = resp.json().await.map_err(|e| DockerError::Api {
            host: self.host.clone(),
            status: 200,
            message: format!("`/info` is not the JSON expected: {e}"),
        })?;
        Ok((info.runtimes.into_keys().collect(), info.default_runtime))
    }

    async fn api_error(&self, resp: reqwest::Response) -> DockerError {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(200).collect());
        DockerError::Api {
            host: self.host.clone(),
            status,
            message,
        }
    }
}
