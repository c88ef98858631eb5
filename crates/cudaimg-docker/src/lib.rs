//! The Docker Engine API, just enough to hand images over and back: ping, load a streamed
//! archive, save one (streamed, for `build --push`), and look an image up; and, for
//! `doctor`, the container runtimes it knows. The Engine is found as the `docker` CLI finds
//! it: `DOCKER_HOST` (`unix://` or plain `tcp://`), else the current Docker context
//! (`DOCKER_CONTEXT`, else `currentContext` in `config.json`), else
//! `unix:///var/run/docker.sock`, else a rootless Engine's `$XDG_RUNTIME_DIR/docker.sock`.
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

/// What an engine records for one image.
#[derive(Debug, Clone)]
pub struct EngineImage {
    /// `sha256:` of the config (classic store) or of the manifest (containerd store).
    pub id: String,
    /// `name:tag` the image is known by.
    pub repo_tags: Vec<String>,
    /// `name@sha256:…` the engine resolves locally: recorded on `docker pull`; after
    /// `docker load`, none with the classic store.
    pub repo_digests: Vec<String>,
    /// Its configured environment (`NVIDIA_REQUIRE_CUDA`, `CUDA_VERSION`, …).
    pub env: Vec<String>,
    /// Its labels (the `build` templates' torch, CUDA and Python versions).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What an Engine says about itself: enough to choose how to hand it an image.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EngineInfo {
    /// Its version (`28.5.2`; Podman's own for Podman).
    pub version: String,
    /// The product (`Docker Engine - Community`, `Docker Desktop 4.x`), if it says.
    pub product: String,
    /// Podman's Docker-compatible API.
    pub podman: bool,
    /// `overlay2` (graphdriver store), `overlayfs` (containerd store), …
    pub storage_driver: String,
    /// `io.containerd.snapshotter.v1` when images live in containerd's store.
    pub driver_type: Option<String>,
    /// `Debian GNU/Linux 13 (forky)`, `Docker Desktop`, …
    pub operating_system: String,
    pub kernel_version: String,
    /// A rootless Engine runs in a network namespace of its own.
    pub rootless: bool,
}

impl EngineInfo {
    /// Images live in containerd's image store (Docker 29's default; opt-in in 27/28).
    pub fn containerd_store(&self) -> bool {
        self.driver_type.as_deref() == Some("io.containerd.snapshotter.v1")
    }

    /// Docker Desktop, or another Engine inside a VM (WSL2, linuxkit): its 127.0.0.1 is
    /// not this host's.
    pub fn in_vm(&self) -> bool {
        let os = self.operating_system.to_ascii_lowercase();
        let kernel = self.kernel_version.to_ascii_lowercase();
        os.contains("docker desktop")
            || self.product.to_ascii_lowercase().contains("docker desktop")
            || kernel.contains("linuxkit")
            || kernel.contains("microsoft")
            || kernel.contains("wsl")
    }
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
    #[error("the Docker context `{name}` cannot be read: {reason}")]
    Context { name: String, reason: String },
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
            DockerError::Unreachable { .. } => format!(
                "start the Docker daemon ({}), or point `DOCKER_HOST` (or `docker context use`) at a \
                 running one; the image stays in the cudaimg store, so `cudaimg load REF` can hand \
                 it over later, or `cudaimg export` can write a file for `docker load`",
                start_command()
            ),
            DockerError::Context { .. } => "`docker context ls` lists the contexts; `docker context use default` \
                 (or `DOCKER_HOST`) picks another"
                .into(),
            DockerError::Unsupported(_) => "use the engine's unix socket, e.g. `DOCKER_HOST=unix:///var/run/docker.sock`".into(),
            DockerError::Refused { .. } | DockerError::Api { .. } => {
                "check the daemon's log; `cudaimg verify` checks the stored image".into()
            }
        }
    }
}

/// Percent-encodes a query value (image names carry `:` and `/`).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How to start the daemon on this host: `systemctl` only where systemd runs (it does when
/// `/run/systemd/system` exists, as `sd_booted` checks); a container or WSL without it
/// has `service` or a bare `dockerd`.
fn start_command() -> &'static str {
    if std::path::Path::new("/run/systemd/system").is_dir() {
        "`sudo systemctl start docker`"
    } else if std::path::Path::new("/etc/init.d/docker").exists() {
        "`sudo service docker start`"
    } else {
        "`sudo dockerd &`, or `dockerd-rootless.sh &` for a rootless one"
    }
}

/// The directory of Docker's `config.json`: `$DOCKER_CONFIG`, else `~/.docker`.
fn docker_config_dir() -> Option<PathBuf> {
    if let Some(dir) =
        std::env::var_os(cudaimg_static::EnvVars::DOCKER_CONFIG).filter(|d| !d.is_empty())
    {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os(cudaimg_static::EnvVars::HOME).map(|h| PathBuf::from(h).join(".docker"))
}

/// The Engine address of the current Docker context, as the `docker` CLI picks it:
/// `DOCKER_CONTEXT`, else `currentContext` in `config.json`; `default` (or none) means no
/// context. A context's metadata is `contexts/meta/<sha256 of its name>/meta.json`.
fn context_host() -> Result<Option<String>, DockerError> {
    let Some(dir) = docker_config_dir() else {
        return Ok(None);
    };
    let name = if let Some(name) = std::env::var(cudaimg_static::EnvVars::DOCKER_CONTEXT)
        .ok()
        .filter(|c| !c.is_empty())
    {
        name
    } else {
        let Ok(text) = cudaimg_static::regular::read_capped_to_string(
            &dir.join("config.json"),
            cudaimg_static::regular::MAX_TEXT_FILE,
        ) else {
            return Ok(None);
        };
        let config: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        match config.get("currentContext").and_then(|c| c.as_str()) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => return Ok(None),
        }
    };
    if name == "default" {
        return Ok(None);
    }
    let meta = dir
        .join("contexts/meta")
        .join(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            name.as_bytes(),
        )))
        .join("meta.json");
    let missing = |why: String| DockerError::Context {
        name: name.clone(),
        reason: why,
    };
    let text = cudaimg_static::regular::read_capped_to_string(
        &meta,
        cudaimg_static::regular::MAX_TEXT_FILE,
    )
    .map_err(|e| missing(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| missing(format!("{}: {e}", meta.display())))?;
    value
        .pointer("/Endpoints/docker/Host")
        .and_then(|h| h.as_str())
        .filter(|h| !h.is_empty())
        .map(|h| Some(h.to_owned()))
        .ok_or_else(|| {
            missing(format!(
                "{} names no `Endpoints.docker.Host`",
                meta.display()
            ))
        })
}

/// With no `DOCKER_HOST` and no context: the system socket, else a rootless Engine's
/// socket in `$XDG_RUNTIME_DIR` when only that exists.
fn default_endpoint() -> Endpoint {
    let system = PathBuf::from(DEFAULT_SOCKET);
    if !system.exists() {
        if let Some(run) =
            std::env::var_os(cudaimg_static::EnvVars::XDG_RUNTIME_DIR).filter(|d| !d.is_empty())
        {
            let rootless = PathBuf::from(run).join("docker.sock");
            if rootless.exists() {
                return Endpoint::Unix(rootless);
            }
        }
    }
    Endpoint::Unix(system)
}

impl DockerEngine {
    /// The engine `DOCKER_HOST` names, else the current context's, else the default socket
    /// (or a rootless one).
    pub fn from_env() -> Result<Self, DockerError> {
        let raw = match std::env::var(cudaimg_static::EnvVars::DOCKER_HOST)
            .ok()
            .filter(|h| !h.is_empty())
        {
            Some(host) => Some(host),
            None => context_host()?,
        };
        let endpoint = match raw.as_deref() {
            None => default_endpoint(),
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
            .call(
                self.client
                    .post(format!("{}/images/load?quiet=1", self.base))
                    .header("content-type", "application/x-tar")
                    .body(Body::wrap_stream(archive)),
            )
            .await?;
        let mut loaded = Vec::new();
        for v in self.messages(resp).await? {
            if let Some(line) = v.get("stream").and_then(|s| s.as_str()) {
                let line = line.trim();
                if !line.is_empty() {
                    loaded.push(line.to_owned());
                }
            }
        }
        Ok(loaded)
    }

    /// Reads a JSON message stream to its end (`{"stream": …}`, `{"status": …}` lines); a
    /// `{"error": …}` message is the operation's failure.
    async fn messages(
        &self,
        resp: reqwest::Response,
    ) -> Result<Vec<serde_json::Value>, DockerError> {
        let mut buf = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk.map_err(|e| self.unreachable(&e))?);
        }
        let mut out = Vec::new();
        for value in serde_json::Deserializer::from_slice(&buf).into_iter::<serde_json::Value>() {
            let Ok(v) = value else { break };
            if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
                return Err(DockerError::Refused {
                    host: self.host.clone(),
                    message: err.trim().to_owned(),
                });
            }
            out.push(v);
        }
        Ok(out)
    }

    /// Sends `req`; an answer that is not a success is the Engine's error.
    async fn call(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, DockerError> {
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(self.api_error(resp).await);
        }
        Ok(resp)
    }

    /// `BASE/PATH?QUERY`, the query's values encoded.
    fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let pairs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        format!("{}/{path}?{}", self.base, pairs.join("&"))
    }

    /// `docker pull --platform PLATFORM NAME:TAG` (`POST /images/create`), to the end of its
    /// progress stream.
    pub async fn pull(&self, name: &str, tag: &str, platform: &str) -> Result<(), DockerError> {
        let url = self.url(
            "images/create",
            &[("fromImage", name), ("tag", tag), ("platform", platform)],
        );
        let resp = self.call(self.client.post(url)).await?;
        self.messages(resp).await.map(drop)
    }

    /// `docker tag SOURCE REPO:TAG`.
    pub async fn tag(&self, source: &str, repo: &str, tag: &str) -> Result<(), DockerError> {
        let url = self.url(
            &format!("images/{source}/tag"),
            &[("repo", repo), ("tag", tag)],
        );
        self.call(self.client.post(url)).await.map(drop)
    }

    /// Removes the name `name` only (`docker rmi` of a name the image has others besides:
    /// the image stays; `noprune`, so nothing else goes either).
    pub async fn untag(&self, name: &str) -> Result<(), DockerError> {
        let url = self.url(&format!("images/{name}"), &[("noprune", "1")]);
        self.call(self.client.delete(url)).await.map(drop)
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
            .call(self.client.get(format!("{}/images/{name}/get", self.base)))
            .await?;
        Ok(resp
            .bytes_stream()
            .map(|c| c.map_err(std::io::Error::other)))
    }

    /// The engine's image ID for `name` (`sha256:` of its config), if it has that image.
    pub async fn image_id(&self, name: &str) -> Result<Option<String>, DockerError> {
        Ok(self.image(name).await?.map(|i| i.id))
    }

    /// The image the engine holds as `name` (`GET /images/{name}/json`): its ID, environment
    /// and labels; `None` if it has no such image. This is how `doctor` checks an image that
    /// was built or loaded but never stored.
    pub async fn image(&self, name: &str) -> Result<Option<EngineImage>, DockerError> {
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(rename = "Env", default)]
            env: Option<Vec<String>>,
            #[serde(rename = "Labels", default)]
            labels: Option<std::collections::BTreeMap<String, String>>,
        }
        #[derive(serde::Deserialize)]
        struct Inspect {
            #[serde(rename = "Id")]
            id: String,
            #[serde(rename = "Config", default)]
            config: Option<Config>,
            #[serde(rename = "RepoTags", default)]
            repo_tags: Option<Vec<String>>,
            #[serde(rename = "RepoDigests", default)]
            repo_digests: Option<Vec<String>>,
        }
        let resp = self
            .client
            .get(format!("{}/images/{name}/json", self.base))
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.api_error(resp).await);
        }
        let v: Inspect = resp.json().await.map_err(|e| DockerError::Api {
            host: self.host.clone(),
            status: 200,
            message: format!("`/images/{name}/json` is not the JSON expected: {e}"),
        })?;
        let config = v.config.unwrap_or(Config {
            env: None,
            labels: None,
        });
        Ok(Some(EngineImage {
            id: v.id,
            repo_tags: v.repo_tags.unwrap_or_default(),
            repo_digests: v.repo_digests.unwrap_or_default(),
            env: config.env.unwrap_or_default(),
            labels: config.labels.unwrap_or_default(),
        }))
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
            .call(
                self.client
                    .get(format!("{}/info", self.base))
                    .timeout(std::time::Duration::from_secs(10)),
            )
            .await?;
        let info: Info = resp.json().await.map_err(|e| DockerError::Api {
            host: self.host.clone(),
            status: 200,
            message: format!("`/info` is not the JSON expected: {e}"),
        })?;
        Ok((info.runtimes.into_keys().collect(), info.default_runtime))
    }

    /// What the Engine says about itself (`GET /version` and `GET /info`): which engine it
    /// is, its image store, and where it runs. The hand-over chooses its route from this.
    pub async fn about(&self) -> Result<EngineInfo, DockerError> {
        #[derive(serde::Deserialize, Default)]
        struct Component {
            #[serde(rename = "Name", default)]
            name: String,
        }
        #[derive(serde::Deserialize, Default)]
        struct PlatformName {
            #[serde(rename = "Name", default)]
            name: String,
        }
        #[derive(serde::Deserialize)]
        struct VersionAnswer {
            #[serde(rename = "Version", default)]
            version: String,
            #[serde(rename = "Components", default)]
            components: Option<Vec<Component>>,
            #[serde(rename = "Platform", default)]
            platform: Option<PlatformName>,
        }
        #[derive(serde::Deserialize)]
        struct Info {
            #[serde(rename = "Driver", default)]
            driver: String,
            #[serde(rename = "DriverStatus", default)]
            driver_status: Option<Vec<Vec<String>>>,
            #[serde(rename = "OperatingSystem", default)]
            operating_system: String,
            #[serde(rename = "SecurityOptions", default)]
            security_options: Option<Vec<String>>,
            #[serde(rename = "KernelVersion", default)]
            kernel_version: String,
        }
        let get = |path: &str| {
            self.client
                .get(format!("{}/{path}", self.base))
                .timeout(std::time::Duration::from_secs(10))
        };
        let bad = |path: &str, e: reqwest::Error| DockerError::Api {
            host: self.host.clone(),
            status: 200,
            message: format!("`/{path}` is not the JSON expected: {e}"),
        };
        let version: VersionAnswer = self
            .call(get("version"))
            .await?
            .json()
            .await
            .map_err(|e| bad("version", e))?;
        let info: Info = self
            .call(get("info"))
            .await?
            .json()
            .await
            .map_err(|e| bad("info", e))?;
        let driver_type = info
            .driver_status
            .unwrap_or_default()
            .into_iter()
            .find(|kv| kv.first().is_some_and(|k| k == "driver-type"))
            .and_then(|kv| kv.into_iter().nth(1));
        let podman = version
            .components
            .unwrap_or_default()
            .iter()
            .any(|c| c.name.contains("Podman"));
        Ok(EngineInfo {
            version: version.version,
            product: version.platform.unwrap_or_default().name,
            podman,
            storage_driver: info.driver,
            driver_type,
            operating_system: info.operating_system,
            kernel_version: info.kernel_version,
            rootless: info
                .security_options
                .unwrap_or_default()
                .iter()
                .any(|o| o.split(',').any(|kv| kv == "name=rootless")),
        })
    }

    /// Whether the Engine is reached through this host's loopback or a local socket (so an
    /// Engine on this host); a `tcp://` address elsewhere is another machine.
    pub fn is_local(&self) -> bool {
        match self.host.strip_prefix("tcp://") {
            None => true,
            Some(addr) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
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
