//! Handing an image to the engine that runs it: the Docker Engine in either image store,
//! Podman through its Docker-compatible API, and containerd itself. And, the other way,
//! an image the Docker Engine built, brought into the store ([`from_docker`]).
//!
//! One [`HandOver`] per image. It is an [`ImageSink`]: `pull --load` gives it to the pull,
//! which tells it the image once the manifest is chosen and each blob as it is stored, so
//! the engine takes the image while it downloads; `load` tells it an image that is stored
//! already ([`HandOver::load`]). [`HandOver::finish`] waits for the engine and checks that
//! it holds upstream's image under the official name, by each store's notion of an image
//! ID: the config digest in the graphdriver store and Podman, the manifest's or index's
//! digest in containerd's.
//!
//! The route (the [`relay`] the engine pulls from, or a streamed archive) is chosen from
//! what the engine says about itself ([`route`]). If the relay fails, the stored image goes
//! in as an archive, and the outcome says why.

mod archive_load;
mod arrivals;
pub mod from_docker;
mod relay;
pub mod route;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudaimg_containerd::{Containerd, ContainerdError};
use cudaimg_docker::{DockerEngine, DockerError, EngineInfo};
use cudaimg_oci::digest::Digest;
use cudaimg_store::{Store, StoreError, StoredImage};
use cudaimg_transfer::archive::ArchiveImage;
use cudaimg_transfer::{ChosenImage, ImageSink, UpstreamIndex};

use archive_load::Loading;
use arrivals::Arrivals;
pub use route::{Route, Serve, Via};

/// What a hand-over did, as `--json` prints it (`loaded`): also when it failed, with
/// `error` set.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Loaded {
    /// `docker`, `podman` or `containerd`.
    pub target: &'static str,
    /// The engine's address.
    pub engine: String,
    /// containerd's namespace (`k8s.io`, the kubelet's, by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub engine_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// Where the engine keeps images: `graphdriver`, `containerd` or `podman`.
    pub store: &'static str,
    /// `overlay2`, `overlayfs`, … as the engine names it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub storage_driver: String,
    /// `relay` (the engine pulled from cudaimg on 127.0.0.1) or `archive` (a streamed
    /// `docker load`); empty if the hand-over never started.
    pub route: &'static str,
    /// With the relay: what it served, `diffs` or `upstream` (see [`Serve`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_serves: Option<&'static str>,
    /// Why the relay was not tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_not_used: Option<String>,
    /// Why the relay was tried and failed (the archive went in instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_failed: Option<String>,
    /// The name the engine shows, if the image has a tag.
    pub name: Option<String>,
    /// The engine's image ID (empty when it failed).
    pub image_id: String,
    /// `name@digest` the engine resolves locally.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repo_digests: Vec<String>,
    /// `pull --load`: bytes the engine had taken before the pull ended (the overlap of
    /// download and import).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_while_pulling: Option<u64>,
    /// Blob answers the relay ended short because the bytes failed a check (a source sent
    /// bad ones): the engine dropped them and asked again.
    #[serde(skip_serializing_if = "is_zero")]
    pub answers_ended_short: u64,
    /// Why the hand-over failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why an image could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the {what} at `{host}` holds `{name}` as {got} after loading, not {expected}")]
    Mismatch {
        what: &'static str,
        host: String,
        name: String,
        expected: String,
        got: String,
    },
    #[error("the pull failed: {0}")]
    Pull(String),
}

impl LoadError {
    pub fn hint(&self) -> Option<String> {
        match self {
            LoadError::Docker(e) => Some(e.hint()),
            LoadError::Containerd(e) => e.hint(),
            LoadError::Store(e) => e.hint(),
            LoadError::Mismatch { .. } => {
                Some("another process may have retagged it meanwhile; load again".into())
            }
            LoadError::Pull(_) => None,
        }
    }

    /// The user named something that cannot be (a containerd namespace).
    pub fn is_usage(&self) -> bool {
        matches!(self, LoadError::Containerd(ContainerdError::Namespace(_)))
    }

    /// The stored image itself is damaged (so `verify` is the next step).
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            LoadError::Store(
                StoreError::Corrupt(_)
                    | StoreError::BlobCorrupt { .. }
                    | StoreError::MissingBlob { .. }
            )
        )
    }
}

/// The engine an image goes to.
enum Engine {
    /// The Docker Engine, or Podman's Docker-compatible API.
    Docker {
        engine: DockerEngine,
        info: EngineInfo,
    },
    /// containerd itself, in one namespace: it always pulls from the relay, which serves
    /// it upstream's bytes (its content store keeps them, as Spegel and the kubelet need).
    Containerd(Containerd),
}

/// One image on its way into an engine; see the module doc.
pub struct HandOver {
    engine: Engine,
    store: Store,
    via: Via,
    arrivals: Arc<Arrivals>,
    started: Mutex<Option<Started>>,
    /// Why the hand-over could not start, once the image was chosen.
    not_started: Mutex<Option<LoadError>>,
    /// Bytes the engine has taken so far.
    sent: Arc<AtomicU64>,
    /// The outcome so far (engine, store, route).
    report: Mutex<Loaded>,
}

/// The hand-over, once the image is known.
enum Started {
    Archive {
        chosen: ChosenImage,
        repo_tag: Option<String>,
        loading: Loading,
    },
    Relay {
        chosen: ChosenImage,
        /// `REPO:TAG`, as Docker shows it.
        repo_tag: String,
        /// What the engine pulls: `127.0.0.1:PORT/cudaimg-load-SECRET:TAG`.
        relay_name: String,
        relay: Box<relay::Relay>,
        pulling: tokio::task::JoinHandle<Result<(), LoadError>>,
    },
}

/// The index an image was chosen from, if the store holds it whole: with it, containerd's
/// store names the image by the index's digest, as after `docker pull`.
fn stored_index(store: &Store, digest: &Digest) -> Option<UpstreamIndex> {
    const MAX_INDEX: u64 = 4 << 20;
    let bytes = store.read_blob(digest, MAX_INDEX).ok()?;
    if Digest::of(&bytes) != *digest {
        return None;
    }
    let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("mediaType")
        .and_then(|m| m.as_str())
        .map(str::to_owned);
    Some(UpstreamIndex {
        media_type,
        digest: digest.clone(),
        bytes,
    })
}

/// `REPO:TAG` split at the tag's colon (after the last `/`, so not a port's).
fn split_tag(repo_tag: &str) -> Option<(&str, &str)> {
    let (repo, tag) = repo_tag.rsplit_once(':')?;
    (!tag.contains('/')).then_some((repo, tag))
}

impl HandOver {
    /// A hand-over to a Docker-API engine. Reaches it first (so a pull with no engine to
    /// load into fails before it downloads anything) and asks what it is.
    pub async fn docker(engine: DockerEngine, store: Store, via: Via) -> Result<Self, LoadError> {
        let api_version = engine.ping().await?;
        let info = engine.about().await?;
        let report = Loaded {
            target: if info.podman { "podman" } else { "docker" },
            engine: engine.host().to_owned(),
            engine_version: info.version.clone(),
            api_version,
            store: route::store_of(&info),
            storage_driver: info.storage_driver.clone(),
            ..Loaded::default()
        };
        Ok(HandOver {
            engine: Engine::Docker { engine, info },
            store,
            via,
            arrivals: Arc::default(),
            started: Mutex::new(None),
            not_started: Mutex::new(None),
            sent: Arc::default(),
            report: Mutex::new(report),
        })
    }

    /// A hand-over to containerd at `address`, into `namespace`. Reaches it first.
    pub async fn containerd(
        address: &std::path::Path,
        namespace: &str,
        store: Store,
    ) -> Result<Self, LoadError> {
        let client = Containerd::connect(address, namespace).await?;
        let version = client.version().await?;
        let report = Loaded {
            target: "containerd",
            engine: format!("unix://{}", address.display()),
            namespace: Some(namespace.to_owned()),
            engine_version: version,
            store: "containerd",
            ..Loaded::default()
        };
        Ok(HandOver {
            engine: Engine::Containerd(client),
            store,
            via: Via::Relay,
            arrivals: Arc::default(),
            started: Mutex::new(None),
            not_started: Mutex::new(None),
            sent: Arc::default(),
            report: Mutex::new(report),
        })
    }

    /// The outcome so far: which engine, which store (for a failure before any start).
    pub fn report(&self) -> Loaded {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn note(&self, f: impl FnOnce(&mut Loaded)) {
        if let Ok(mut r) = self.report.lock() {
            f(&mut r);
        }
    }

    /// `load`: hands over an image that is stored whole.
    pub async fn load(self, image: &StoredImage) -> (Loaded, Result<(), LoadError>) {
        let name = cudaimg_oci::reference::ImageRef::parse(&image.name).ok();
        let chosen = ChosenImage {
            image: ArchiveImage::from(image),
            name: name.unwrap_or_else(|| cudaimg_oci::reference::ImageRef {
                registry: String::new(),
                repository: String::new(),
                tag: None,
                digest: Some(image.digest.clone()),
            }),
            index: image
                .index_digest
                .as_ref()
                .and_then(|d| stored_index(&self.store, d)),
            platform: image.platform(),
        };
        self.chosen(chosen);
        match self.finish(Ok(())).await {
            Some(done) => done,
            None => (
                self.report(),
                Err(LoadError::Pull("no image was chosen".into())),
            ),
        }
    }

    /// Starts the image into the engine by the route its answers call for.
    fn begin(&self, chosen: ChosenImage) -> Result<Started, LoadError> {
        let name = &chosen.name;
        let repo_tag = name
            .tag
            .is_some()
            .then(|| name.without_digest().docker_form());
        let (engine, info) = match &self.engine {
            Engine::Docker { engine, info } => (engine, info),
            Engine::Containerd(client) => return self.begin_containerd(client, chosen),
        };
        let tagged = repo_tag.as_deref().and_then(split_tag).is_some();
        Ok(
            match route::choose(info, engine.is_local(), tagged, self.via) {
                Route::Relay(serve) => {
                    match self.begin_relay(engine, &chosen, repo_tag.as_deref(), serve) {
                        Ok(started) => started,
                        Err(why) => {
                            self.note(|r| r.relay_failed = Some(why));
                            self.begin_archive(engine, chosen, repo_tag)
                        }
                    }
                }
                Route::Archive(why) => {
                    self.note(|r| r.relay_not_used = Some(why));
                    self.begin_archive(engine, chosen, repo_tag)
                }
            },
        )
    }

    /// containerd pulls from the relay, upstream's bytes, and stores the image under its
    /// canonical name (`docker.io/nvidia/cuda:TAG`, as the kubelet names what it pulls).
    fn begin_containerd(
        &self,
        client: &Containerd,
        chosen: ChosenImage,
    ) -> Result<Started, LoadError> {
        let tag = chosen.name.tag.clone().unwrap_or_else(|| "cudaimg".into());
        let relay = self
            .start_relay(&chosen, &tag, Serve::Upstream)
            .map_err(StoreError::from)?;
        let relay_name = format!("{}/{}:{tag}", relay.addr, relay.repository);
        let name = chosen.name.to_string();
        let (client, from, platform) =
            (client.clone(), relay_name.clone(), chosen.platform.clone());
        let pulling = tokio::spawn(async move {
            client
                .pull(&from, &name, &platform, true)
                .await
                .map_err(LoadError::from)
        });
        Ok(Started::Relay {
            repo_tag: chosen.name.to_string(),
            chosen,
            relay_name,
            relay: Box::new(relay),
            pulling,
        })
    }

    fn begin_archive(
        &self,
        engine: &DockerEngine,
        chosen: ChosenImage,
        repo_tag: Option<String>,
    ) -> Started {
        let loading = self.start_loading(engine, &chosen, repo_tag.as_deref());
        Started::Archive {
            chosen,
            repo_tag,
            loading,
        }
    }

    /// The archive route's `images/load`, its blobs read as the pull stores them.
    fn start_loading(
        &self,
        engine: &DockerEngine,
        chosen: &ChosenImage,
        repo_tag: Option<&str>,
    ) -> Loading {
        self.note(|r| r.route = "archive");
        Loading::start(
            engine,
            &self.store,
            chosen.image.clone(),
            repo_tag.map(str::to_owned),
            self.arrivals.clone(),
            self.sent.clone(),
        )
    }

    /// A relay serving `chosen` as `TAG`, and the route noted.
    fn start_relay(
        &self,
        chosen: &ChosenImage,
        tag: &str,
        serve: Serve,
    ) -> std::io::Result<relay::Relay> {
        let relay = relay::start(
            self.store.clone(),
            self.arrivals.clone(),
            chosen.clone(),
            tag.to_owned(),
            serve,
            self.sent.clone(),
        )?;
        self.note(|r| {
            r.route = "relay";
            r.relay_serves = Some(serve.as_str());
        });
        Ok(relay)
    }

    /// The engine pulls from a relay; `Err`: why no relay could start.
    fn begin_relay(
        &self,
        engine: &DockerEngine,
        chosen: &ChosenImage,
        repo_tag: Option<&str>,
        serve: Serve,
    ) -> Result<Started, String> {
        let Some((_, tag)) = repo_tag.and_then(split_tag) else {
            return Err("the image has no tag".into());
        };
        let tag = tag.to_owned();
        let relay = self
            .start_relay(chosen, &tag, serve)
            .map_err(|e| format!("no port on 127.0.0.1: {e}"))?;
        let engine = engine.clone();
        let from = format!("{}/{}", relay.addr, relay.repository);
        let relay_name = format!("{from}:{tag}");
        let platform = chosen.platform.to_string();
        let pulling = tokio::spawn(async move {
            engine
                .pull(&from, &tag, &platform)
                .await
                .map_err(LoadError::from)
        });
        Ok(Started::Relay {
            chosen: chosen.clone(),
            repo_tag: repo_tag.unwrap_or_default().to_owned(),
            relay_name,
            relay: Box::new(relay),
            pulling,
        })
    }

    /// The pull ended (`Err`: why it failed, which ends the hand-over short); waits for
    /// the engine and checks what it holds. `None`: the pull never chose an image.
    pub async fn finish(
        &self,
        pulled: Result<(), String>,
    ) -> Option<(Loaded, Result<(), LoadError>)> {
        self.arrivals.ended(pulled.clone());
        let Some(started) = self.started.lock().ok()?.take() else {
            // Nothing started: why not, if the hand-over could not; else the pull's failure
            // before it chose an image (a tag not found, say).
            let e = match (self.not_started.lock().ok()?.take(), pulled) {
                (Some(e), _) => e,
                (None, Err(why)) => LoadError::Pull(why),
                (None, Ok(())) => return None,
            };
            self.note(|r| r.error = Some(e.to_string()));
            return Some((self.report(), Err(e)));
        };
        let sent_while_pulling = self.sent.load(Ordering::Relaxed);
        let outcome = match started {
            Started::Archive {
                chosen,
                repo_tag,
                loading,
            } => match (loading.end().await, &self.engine) {
                (Ok(()), Engine::Docker { engine, info }) => {
                    self.check(engine, info, &chosen, repo_tag.as_deref(), None)
                        .await
                }
                // The archive route is the Docker API's; containerd never takes it.
                (Ok(()), Engine::Containerd(_)) => Ok(()),
                (Err(e), _) => Err(e),
            },
            Started::Relay {
                chosen,
                repo_tag,
                relay_name,
                relay,
                pulling,
            } => {
                self.finish_relay(chosen, repo_tag, relay_name, relay, pulling, pulled)
                    .await
            }
        };
        self.note(|r| {
            r.sent_while_pulling = Some(sent_while_pulling);
            if let Err(e) = &outcome {
                r.error = Some(e.to_string());
            }
        });
        Some((self.report(), outcome))
    }

    async fn finish_relay(
        &self,
        chosen: ChosenImage,
        repo_tag: String,
        relay_name: String,
        relay: Box<relay::Relay>,
        pulling: tokio::task::JoinHandle<Result<(), LoadError>>,
        pulled: Result<(), String>,
    ) -> Result<(), LoadError> {
        if let Err(why) = pulled {
            relay.stop();
            pulling.abort();
            // The engine may have finished before the pull failed (storing the index,
            // say): the relay's name must not stay behind.
            if let Engine::Docker { engine, .. } = &self.engine {
                let _ = engine.untag(&relay_name).await;
            }
            return Err(LoadError::Pull(why));
        }
        let engine_pull = pulling
            .await
            .unwrap_or_else(|e| Err(LoadError::Pull(format!("the engine's pull ended: {e}"))));
        let top = relay.top_digest.get().cloned();
        self.note(|r| r.answers_ended_short = relay.ended_short.load(Ordering::Relaxed));
        drop(relay);
        let (engine, info) = match &self.engine {
            Engine::Docker { engine, info } => (engine, info),
            Engine::Containerd(client) => {
                engine_pull?;
                return self.check_containerd(client, &chosen, top).await;
            }
        };
        match engine_pull {
            Ok(()) => {
                let (repo, tag) = split_tag(&repo_tag).unwrap_or((&repo_tag, "latest"));
                let tagged = engine.tag(&relay_name, repo, tag).await;
                // Whatever happened, the relay's name must not stay behind.
                let untagged = engine.untag(&relay_name).await;
                tagged?;
                untagged?;
                self.check(engine, info, &chosen, Some(&repo_tag), top)
                    .await
            }
            Err(e) => {
                let _ = engine.untag(&relay_name).await;
                self.note(|r| r.relay_failed = Some(e.to_string()));
                // The image is stored whole now: the archive goes in at once.
                self.start_loading(engine, &chosen, Some(&repo_tag))
                    .end()
                    .await?;
                self.check(engine, info, &chosen, Some(&repo_tag), None)
                    .await
            }
        }
    }

    /// Checks that a Docker-API engine holds the image under its name, by its store's
    /// notion of an image ID, and records what it holds. `served_top`: the digest the
    /// relay gave under the tag.
    async fn check(
        &self,
        engine: &DockerEngine,
        info: &EngineInfo,
        chosen: &ChosenImage,
        repo_tag: Option<&str>,
        served_top: Option<Digest>,
    ) -> Result<(), LoadError> {
        let config = chosen.image.manifest.config.digest.to_string();
        let manifest = chosen.image.digest.to_string();
        let expected: Vec<String> = if info.containerd_store() && !info.podman {
            // The image is named by what it was pulled or loaded as: the index the relay
            // served, else the platform manifest.
            served_top
                .map(|d| d.to_string())
                .into_iter()
                .chain([manifest])
                .collect()
        } else {
            vec![config.clone()]
        };
        let lookup = repo_tag.map_or(config, str::to_owned);
        let image = engine.image(&lookup).await?;
        let got = image.as_ref().map(|i| i.id.clone()).unwrap_or_default();
        if !expected.contains(&got) {
            return Err(LoadError::Mismatch {
                what: if info.podman {
                    "Podman"
                } else {
                    "Docker Engine"
                },
                host: engine.host().to_owned(),
                name: lookup,
                expected: expected.join(" or "),
                got: if got.is_empty() {
                    "nothing".into()
                } else {
                    got
                },
            });
        }
        self.note(|r| {
            r.name = repo_tag.map(str::to_owned);
            r.image_id = got;
            r.repo_digests = image.map(|i| i.repo_digests).unwrap_or_default();
        });
        Ok(())
    }

    /// Checks that containerd names the image by the digest the relay served under the
    /// tag (the index, else the manifest), as a pull from upstream would have.
    async fn check_containerd(
        &self,
        client: &Containerd,
        chosen: &ChosenImage,
        served_top: Option<Digest>,
    ) -> Result<(), LoadError> {
        let name = chosen.name.to_string();
        let expected = served_top.unwrap_or_else(|| chosen.image.digest.clone());
        let got = client
            .image(&name)
            .await?
            .map(|i| i.target_digest)
            .unwrap_or_default();
        if got != expected.as_str() {
            return Err(LoadError::Mismatch {
                what: "containerd",
                host: client.address().display().to_string(),
                name,
                expected: expected.to_string(),
                got: if got.is_empty() {
                    "nothing".into()
                } else {
                    got
                },
            });
        }
        let repo = chosen.name.without_digest();
        let repo = format!("{}/{}", repo.registry, repo.repository);
        self.note(|r| {
            r.repo_digests = vec![format!("{repo}@{got}")];
            r.name = Some(name);
            r.image_id = got;
        });
        Ok(())
    }
}

impl ImageSink for HandOver {
    fn chosen(&self, image: ChosenImage) {
        match self.begin(image) {
            Ok(started) => {
                if let Ok(mut s) = self.started.lock() {
                    *s = Some(started);
                }
            }
            Err(e) => {
                self.note(|r| r.error = Some(e.to_string()));
                if let Ok(mut s) = self.not_started.lock() {
                    *s = Some(e);
                }
            }
        }
    }

    fn stored(&self, digest: &Digest) {
        self.arrivals.stored(digest);
    }
}

impl Drop for HandOver {
    /// A command that gives up without [`HandOver::finish`] must not leave the writer
    /// waiting for blobs that will never come, nor the engine pulling from a relay.
    fn drop(&mut self) {
        self.arrivals.abandon();
        if let Ok(mut started) = self.started.lock() {
            if let Some(Started::Relay { pulling, .. }) = started.take() {
                pulling.abort();
            }
        }
    }
}
