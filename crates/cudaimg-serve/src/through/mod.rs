//! `serve --pull-through`: what the store lacks is fetched through an [`Upstream`] (the
//! binary's adapter over the transfer engine: `mirrors.toml`, fallback, resume across
//! sources, health memory, the official registry as the authority on tags), stored, and
//! served while it arrives.
//!
//! Why here and not in `cudaimg-transfer`: the server depends only on the store; the
//! trait is the one seam, so the transfer engine stays a layer above it.
//!
//! - Tags are asked upstream when first requested and again once `tag_ttl` has passed
//!   since the last answer. When upstream cannot answer, the stored answer is served with a
//!   `Warning: 110` and an `X-Cudaimg-Stale` header, and a log line says so.
//! - Manifests by digest the store or this run holds need no upstream.
//! - A blob the store lacks is downloaded once, however many clients ask ([`InFlight`]);
//!   each client follows the download through the store's blob follower ([`stream`]), so
//!   it is sent bytes as they are stored and the last ones only once the digest matched.
//! - An image is named in `index.json` (its tag, its platform, the index it came from)
//!   once every blob it needs is stored, never before; it is then served from the store
//!   like any pulled image.

mod stream;

pub(crate) use stream::Stream;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{self, Manifest, OCI_INDEX};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::reference::ImageRef;
use cudaimg_store::{NamedImage, Store};

use crate::http::{parse_range, Head, RangeSpec, Request};
use crate::route::{ManifestRef, RepoName, Route};
use crate::store::{ServedManifest, Snapshot};
use crate::{error, json_response, Body, Log, Response};

/// A future the [`Upstream`] returns (boxed: the trait is used as an object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A manifest as upstream answered it, verified against its digest.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// Why upstream gave no answer.
#[derive(Debug, Clone)]
pub enum UpstreamError {
    /// The official registry (or, by digest, every source) says there is no such thing.
    NotFound(String),
    /// No source answered: the network, the mirrors and the official registry failed.
    Unreachable(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::NotFound(s) | UpstreamError::Unreachable(s) => f.write_str(s),
        }
    }
}

/// Where the server gets what the store lacks. `name` is the store's key for a repository
/// (`docker.io/nvidia/cuda`).
pub trait Upstream: Send + Sync {
    /// The manifest `reference` names now: a tag as the official registry answers it (or
    /// the mirrors, when it is out of reach), a digest from any source that has it.
    fn manifest<'a>(
        &'a self,
        name: &'a str,
        reference: &'a ManifestRef,
    ) -> BoxFuture<'a, Result<Fetched, UpstreamError>>;
    /// Downloads blob `digest` of `size` bytes into the server's store, verified; done once
    /// it is stored. Its progress must be visible to the store's blob followers (the same
    /// [`Store`] handle, or a clone of it).
    fn blob<'a>(
        &'a self,
        name: &'a str,
        digest: &'a Digest,
        size: u64,
    ) -> BoxFuture<'a, Result<(), UpstreamError>>;
}

/// `--pull-through` and its settings.
#[derive(Clone)]
pub struct PullThrough {
    pub upstream: Arc<dyn Upstream>,
    /// How long a tag's answer from upstream is served before it is asked again.
    pub tag_ttl: Duration,
}

/// A blob download in progress: the flags of the clients following it, set if it gives up
/// before its writer opened (a follower then stops waiting).
#[derive(Default)]
struct InFlight {
    followers: Mutex<Vec<Arc<AtomicBool>>>,
}

/// An image to name in `index.json` once its blobs are stored.
#[derive(Clone)]
struct Pending {
    tag: String,
    media_type: String,
    size: u64,
    index: Option<Digest>,
    platform: Option<Platform>,
}

/// A pending image and the blobs (digest, size) it waits for.
type Waiting = (Pending, Vec<(Digest, u64)>);

#[derive(Default)]
struct State {
    /// `(repo, tag)`: the digest upstream last answered, and when.
    tags: HashMap<(String, String), (Digest, Instant)>,
    /// `(repo, digest)`: manifests fetched by this run.
    manifests: HashMap<(String, Digest), Arc<ServedManifest>>,
    /// `(repo, blob)`: sizes from the manifests fetched by this run.
    blobs: HashMap<(String, Digest), u64>,
    /// `(repo, child digest)`: the tag and index a manifest was reached from.
    children: HashMap<(String, Digest), Pending>,
    /// `(repo, manifest digest)`: images waiting for their blobs.
    pending: HashMap<(String, Digest), Waiting>,
    in_flight: HashMap<Digest, Arc<InFlight>>,
}

/// The pull-through side of a server.
pub(crate) struct Through {
    upstream: Arc<dyn Upstream>,
    ttl: Duration,
    store: Store,
    log: Log,
    state: Mutex<State>,
}

/// A manifest answer, with the stale headers when upstream was not heard.
fn manifest_response(digest: &Digest, m: &ServedManifest, stale: Option<&str>) -> Response {
    let mut r = json_response(200, &m.media_type, m.bytes.clone());
    r.head = r
        .head
        .header("Docker-Content-Digest", digest.as_str())
        .header("ETag", &format!("\"{digest}\""));
    if let Some(why) = stale {
        r.head = r
            .head
            .header("Warning", "110 cudaimg \"Response is Stale\"")
            .header("X-Cudaimg-Stale", why);
    }
    r
}

fn upstream_failed(e: &UpstreamError, what: &str) -> Response {
    match e {
        UpstreamError::NotFound(why) => error(404, "MANIFEST_UNKNOWN", "manifest unknown", why),
        UpstreamError::Unreachable(why) => error(
            502,
            "UNKNOWN",
            &format!("{what} is not stored and upstream could not be reached"),
            why,
        ),
    }
}

impl Through {
    pub(crate) fn new(opts: &PullThrough, store: Store, log: Log) -> Through {
        Through {
            upstream: Arc::clone(&opts.upstream),
            ttl: opts.tag_ttl,
            store,
            log,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it left plain maps behind: still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers `route` if pull-through has to; `None` leaves it to the store's answer.
    pub(crate) async fn respond(
        self: &Arc<Self>,
        snap: &Snapshot,
        route: &Route,
        req: &Request,
    ) -> Option<Response> {
        match route {
            Route::Manifest(name, ManifestRef::Tag(tag)) => Some(self.tag(snap, name, tag).await),
            Route::Manifest(name, ManifestRef::Digest(d)) => {
                let stored = snap
                    .repos
                    .get(&name.key)
                    .is_some_and(|r| r.manifests.contains_key(d));
                if stored {
                    return None;
                }
                Some(self.by_digest(name, d).await)
            }
            Route::Blob(name, d) => {
                let stored = snap
                    .repos
                    .get(&name.key)
                    .is_some_and(|r| r.blobs.contains_key(d) || r.manifests.contains_key(d));
                if stored {
                    return None;
                }
                let size = self
                    .state()
                    .blobs
                    .get(&(name.key.clone(), d.clone()))
                    .copied()?;
                Some(self.blob(name, d, size, req))
            }
            _ => None,
        }
    }

    /// A tag: this run's answer while fresh, else upstream's; the stored one, marked
    /// stale, when upstream cannot answer.
    async fn tag(self: &Arc<Self>, snap: &Snapshot, name: &RepoName, tag: &str) -> Response {
        let key = (name.key.clone(), tag.to_owned());
        let fresh = self
            .state()
            .tags
            .get(&key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(d, _)| d.clone());
        if let Some(d) = fresh {
            if let Some(m) = self.known(snap, &name.key, &d) {
                return manifest_response(&d, &m, None);
            }
        }
        let reference = ManifestRef::Tag(tag.to_owned());
        match self.upstream.manifest(&name.key, &reference).await {
            Ok(f) => {
                // Unchanged since it was stored: nothing to learn or name again.
                let stored = snap
                    .repos
                    .get(&name.key)
                    .filter(|r| r.tags.get(tag) == Some(&f.digest))
                    .and_then(|r| r.manifests.get(&f.digest).cloned());
                let m = match stored {
                    Some(m) => m,
                    None => self.learn(name, &f, Some(tag)).await,
                };
                self.state()
                    .tags
                    .insert(key, (f.digest.clone(), Instant::now()));
                manifest_response(&f.digest, &m, None)
            }
            Err(e) => {
                let stored = self
                    .state()
                    .tags
                    .get(&key)
                    .map(|(d, _)| d.clone())
                    .or_else(|| {
                        snap.repos
                            .get(&name.key)
                            .and_then(|r| r.tags.get(tag).cloned())
                    });
                let Some((d, m)) =
                    stored.and_then(|d| self.known(snap, &name.key, &d).map(|m| (d, m)))
                else {
                    return upstream_failed(&e, &format!("`{}:{tag}`", name.requested));
                };
                (self.log)(&format!(
                    "warning: `{}:{tag}` served from the store as {d}, possibly stale: \
                     upstream did not answer ({e})",
                    name.key
                ));
                manifest_response(&d, &m, Some(&format!("upstream did not answer: {e}")))
            }
        }
    }

    /// A manifest by digest the store lacks: this run's copy, or upstream's.
    async fn by_digest(self: &Arc<Self>, name: &RepoName, d: &Digest) -> Response {
        if let Some(m) = self.state().manifests.get(&(name.key.clone(), d.clone())) {
            return manifest_response(d, m, None);
        }
        let reference = ManifestRef::Digest(d.clone());
        match self.upstream.manifest(&name.key, &reference).await {
            Ok(f) if &f.digest == d && Digest::of(&f.bytes) == *d => {
                let m = self.learn(name, &f, None).await;
                manifest_response(d, &m, None)
            }
            Ok(f) => error(
                502,
                "UNKNOWN",
                "upstream answered with another manifest",
                f.digest.as_str(),
            ),
            Err(e) => upstream_failed(&e, &format!("manifest {d}")),
        }
    }

    /// A manifest from the store's snapshot or this run's memory.
    fn known(&self, snap: &Snapshot, key: &str, d: &Digest) -> Option<Arc<ServedManifest>> {
        snap.repos
            .get(key)
            .and_then(|r| r.manifests.get(d).cloned())
            .or_else(|| {
                self.state()
                    .manifests
                    .get(&(key.to_owned(), d.clone()))
                    .cloned()
            })
    }

    /// Remembers a manifest upstream answered, stores its bytes, and notes what it names:
    /// an index's children (to be named under `tag` when pulled), an image's blobs.
    async fn learn(
        self: &Arc<Self>,
        name: &RepoName,
        f: &Fetched,
        tag: Option<&str>,
    ) -> Arc<ServedManifest> {
        let parsed = manifest::parse(&f.bytes, f.media_type.as_deref()).ok();
        let media_type = match &parsed {
            Some(Manifest::Image(m)) if !m.media_type.is_empty() => m.media_type.clone(),
            Some(Manifest::Index(i)) if !i.media_type.is_empty() => i.media_type.clone(),
            _ => f.media_type.clone().unwrap_or_else(|| OCI_INDEX.to_owned()),
        };
        let served = Arc::new(ServedManifest {
            media_type: media_type.clone(),
            bytes: f.bytes.clone(),
        });
        // Stored now, so that the image can be named once its blobs are; a failure only
        // means it is not named (and is fetched again after a restart).
        if let Err(e) = self.store.put_bytes(&f.digest, &f.bytes).await {
            (self.log)(&format!("warning: cannot store manifest {}: {e}", f.digest));
        }
        let key = name.key.clone();
        let mut st = self.state();
        st.manifests
            .insert((key.clone(), f.digest.clone()), Arc::clone(&served));
        match parsed {
            Some(Manifest::Index(i)) => {
                for child in &i.manifests {
                    if let Some(tag) = tag {
                        st.children.insert(
                            (key.clone(), child.descriptor.digest.clone()),
                            Pending {
                                tag: tag.to_owned(),
                                media_type: child.descriptor.media_type.clone(),
                                size: child.descriptor.size,
                                index: Some(f.digest.clone()),
                                platform: child.platform.clone(),
                            },
                        );
                    }
                }
            }
            Some(Manifest::Image(m)) => {
                let blobs: Vec<(Digest, u64)> = std::iter::once(&m.config)
                    .chain(&m.layers)
                    .map(|d| (d.digest.clone(), d.size))
                    .collect();
                for (d, size) in &blobs {
                    st.blobs.insert((key.clone(), d.clone()), *size);
                }
                let pending = match tag {
                    Some(tag) => Some(Pending {
                        tag: tag.to_owned(),
                        media_type: media_type.clone(),
                        size: f.bytes.len() as u64,
                        index: None,
                        platform: None,
                    }),
                    None => st.children.get(&(key.clone(), f.digest.clone())).cloned(),
                };
                if let Some(p) = pending {
                    st.pending.insert((key, f.digest.clone()), (p, blobs));
                }
            }
            None => {}
        }
        drop(st);
        self.name_complete();
        served
    }

    /// Names in `index.json` every pending image whose blobs are all stored.
    fn name_complete(self: &Arc<Self>) {
        let done: Vec<((String, Digest), Pending)> = {
            let mut st = self.state();
            let ready: Vec<(String, Digest)> = st
                .pending
                .iter()
                .filter(|(_, (_, blobs))| blobs.iter().all(|(d, s)| self.store.has_blob(d, *s)))
                .map(|(k, _)| k.clone())
                .collect();
            ready
                .into_iter()
                .filter_map(|k| st.pending.remove(&k).map(|(p, _)| (k, p)))
                .collect()
        };
        for ((key, digest), p) in done {
            let Ok(name) = ImageRef::parse(&format!("{key}:{}", p.tag)) else {
                continue;
            };
            let named = NamedImage {
                manifest: cudaimg_oci::manifest::Descriptor {
                    media_type: p.media_type,
                    digest: digest.clone(),
                    size: p.size,
                },
                platform: p.platform,
                index_digest: p.index,
            };
            let this = Arc::clone(self);
            tokio::task::spawn_blocking(move || match this.store.name(&name.to_string(), &named) {
                Ok(()) => (this.log)(&format!("stored `{name}` as {digest}")),
                Err(e) => (this.log)(&format!("warning: cannot name `{name}`: {e}")),
            });
        }
    }

    /// A blob the store lacks (or has, but not yet under a name): its file if stored,
    /// else the download, joined or started, followed as it arrives.
    fn blob(self: &Arc<Self>, name: &RepoName, d: &Digest, size: u64, req: &Request) -> Response {
        let (status, start, len) = match parse_range(req.range.as_deref(), size) {
            // Only a range to the end (a resumed download) is cut: a shorter one would end
            // before the digest is checked, so it gets the whole blob, as HTTP allows.
            RangeSpec::Part(s, e) if e + 1 == size => (206, s, size - s),
            _ => (200, 0, size),
        };
        let mut head = Head::new(status)
            .header("Content-Type", "application/octet-stream")
            .header("Docker-Content-Digest", d.as_str())
            .header("ETag", &format!("\"{d}\""))
            .header("Accept-Ranges", "bytes");
        if status == 206 {
            head = head.header(
                "Content-Range",
                &format!("bytes {start}-{}/{size}", size - 1),
            );
        }
        let body = if req.method == "HEAD" {
            Body::Bytes(Vec::new())
        } else if self.store.has_blob(d, size) {
            match self.store.open_blob_file(d, size) {
                Ok(f) => Body::File(crate::store::BlobFile::Plain(f), start),
                Err(e) => {
                    (self.log)(&format!("error: {e}"));
                    return error(500, "UNKNOWN", "the blob cannot be read", d.as_str());
                }
            }
        } else {
            let stop = self.fetch(&name.key, d, size);
            Body::Stream(stream::follow(&self.store, d, size, start, stop))
        };
        Response {
            status,
            head,
            length: len,
            body,
        }
    }

    /// Joins the download of `d`, or starts it; returns the flag that stops this client's
    /// follower (set if the download gives up, or by the client's end).
    fn fetch(self: &Arc<Self>, key: &str, d: &Digest, size: u64) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        let mut st = self.state();
        if let Some(f) = st.in_flight.get(d) {
            if let Ok(mut v) = f.followers.lock() {
                v.push(Arc::clone(&flag));
            }
            return flag;
        }
        let flight = Arc::new(InFlight::default());
        if let Ok(mut v) = flight.followers.lock() {
            v.push(Arc::clone(&flag));
        }
        st.in_flight.insert(d.clone(), Arc::clone(&flight));
        drop(st);
        let (this, key, d) = (Arc::clone(self), key.to_owned(), d.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let res = this.upstream.blob(&key, &d, size).await;
            this.state().in_flight.remove(&d);
            match res {
                Ok(()) => {
                    (this.log)(&format!(
                        "fetched blob {d} ({size} bytes) in {:.1} s",
                        started.elapsed().as_secs_f64()
                    ));
                    this.name_complete();
                }
                Err(e) => {
                    (this.log)(&format!("error: blob {d} of `{key}`: {e}"));
                    if let Ok(v) = flight.followers.lock() {
                        for f in v.iter() {
                            f.store(true, Ordering::Release);
                        }
                    }
                }
            }
        });
        flag
    }
}
