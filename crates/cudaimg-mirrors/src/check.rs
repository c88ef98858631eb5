//! Measuring the configured endpoints of each registry: does it answer `GET /v2/` and how
//! fast; does it name the same digest for a known tag as the official registry (a stale
//! mirror does not); how fast does it serve one blob of that image, and are the bytes right.
//! Then a ranking: answering before dead, right bytes before wrong, fresh before stale, then
//! by throughput and latency.
//!
//! Blobs are downloaded one endpoint after the other, so the measurements do not compete
//! for the same link. Figures are single samples: they rank, they are not benchmarks.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use crate::sources::{chain, Role};
use cudaimg_config::{Config, Endpoint};
use cudaimg_oci::digest::{Digest, Hasher};
use cudaimg_oci::manifest::{self, Descriptor, Manifest};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::reference::ImageRef;
use cudaimg_registry::{HttpClients, RegistryClient, RegistryError};

/// A blob download gets this long in all.
const BLOB_TIMEOUT: Duration = Duration::from_secs(120);

/// What to measure with.
pub struct Options {
    /// The known tag: its registry's endpoints get the staleness and blob checks.
    pub tag: ImageRef,
    /// The blob measured is the image's largest layer up to this size, else its config.
    pub max_blob_bytes: u64,
    pub platform: Platform,
}

/// One registry's endpoints, measured and ranked (best first).
#[derive(Debug, Clone, Serialize)]
pub struct RegistryCheck {
    pub registry: String,
    /// The known tag, when it belongs to this registry.
    pub tag: Option<String>,
    /// The digest the official registry names for the tag.
    pub official_digest: Option<String>,
    /// The blob every endpoint was asked for.
    pub blob: Option<BlobInfo>,
    pub endpoints: Vec<Measured>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlobInfo {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// One endpoint's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub rank: usize,
    pub url: String,
    pub role: Role,
    pub capabilities: Vec<&'static str>,
    pub insecure: bool,
    /// Answers `GET /v2/` with 200 or 401.
    pub reachable: bool,
    pub status: Option<u16>,
    pub latency_ms: Option<u64>,
    pub error: Option<String>,
    /// The digest it names for the tag (`None`: not asked, or no answer).
    pub digest: Option<String>,
    /// Same digest as the official registry (`None`: not known).
    pub fresh: Option<bool>,
    /// In words: `same as the official registry`, `stale: …`, `not asked (pull-only)`, …
    pub tag_state: String,
    pub blob_ms: Option<u64>,
    pub blob_bytes_per_sec: Option<u64>,
    pub blob_error: Option<String>,
    /// The endpoint as configured, for emitting daemon configurations.
    #[serde(skip)]
    pub endpoint: Endpoint,
}

impl Measured {
    /// Good enough to hand to a daemon: answers and serves the right bytes (staleness is
    /// judged by the emitters, which know the official digest).
    pub fn usable(&self) -> bool {
        self.reachable && self.blob_error.is_none()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Measures every configured registry's endpoints.
pub async fn check(config: &Config, http: &HttpClients, opts: &Options) -> Vec<RegistryCheck> {
    let mut out = Vec::new();
    for (registry, reg) in config.registries() {
        let endpoints: Vec<(Endpoint, Role)> = reg
            .mirrors
            .iter()
            .filter(|m| m.url != reg.endpoint.url)
            .map(|m| (m.clone(), Role::Mirror))
            .chain(std::iter::once((reg.endpoint.clone(), Role::Official)))
            .collect();
        let tag = (opts.tag.registry == registry).then_some(&opts.tag);
        out.push(check_registry(registry, endpoints, tag, http, opts).await);
    }
    out
}

async fn check_registry(
    registry: &str,
    endpoints: Vec<(Endpoint, Role)>,
    tag: Option<&ImageRef>,
    http: &HttpClients,
    opts: &Options,
) -> RegistryCheck {
    let clients: Vec<RegistryClient> = endpoints
        .iter()
        .map(|(e, _)| RegistryClient::new(&e.url, e.insecure, http))
        .collect();
    let pings = futures_util::future::join_all(clients.iter().map(|c| async move {
        let started = Instant::now();
        let r = c.ping().await;
        (r, millis(started.elapsed()))
    }))
    .await;
    let mut measured: Vec<Measured> = endpoints
        .iter()
        .zip(&pings)
        .map(|((e, role), (result, ms))| {
            let (reachable, status, error) = match result {
                Ok(s @ (200 | 401)) => (true, Some(*s), None),
                Ok(s) => (
                    false,
                    Some(*s),
                    Some(format!(
                        "GET /v2/ answers HTTP {s}: not a registry API endpoint"
                    )),
                ),
                Err(e) => (false, None, Some(chain(e))),
            };
            let mut caps = Vec::new();
            if *role == Role::Official || e.capabilities.pull {
                caps.push("pull");
            }
            if *role == Role::Official || e.capabilities.resolve {
                caps.push("resolve");
            }
            Measured {
                rank: 0,
                url: e.url.as_str().trim_end_matches('/').to_owned(),
                role: *role,
                capabilities: caps,
                insecure: e.insecure,
                reachable,
                status,
                latency_ms: reachable.then_some(*ms),
                error,
                digest: None,
                fresh: None,
                tag_state: "not checked (the known tag is of another registry)".into(),
                blob_ms: None,
                blob_bytes_per_sec: None,
                blob_error: None,
                endpoint: e.clone(),
            }
        })
        .collect();
    let mut result = RegistryCheck {
        registry: registry.to_owned(),
        tag: tag.map(ToString::to_string),
        official_digest: None,
        blob: None,
        endpoints: Vec::new(),
        notes: Vec::new(),
    };
    if let Some(tag) = tag {
        measure_tag(tag, &clients, &mut measured, &mut result, opts).await;
    }
    rank(&mut measured);
    result.endpoints = measured;
    result
}

// One endpoint's staleness and throughput on a known tag: resolve, compare with the
// official answer, then time one blob; the steps share the endpoint's partial result.
#[allow(clippy::too_many_lines)]
async fn measure_tag(
    tag: &ImageRef,
    clients: &[RegistryClient],
    measured: &mut [Measured],
    result: &mut RegistryCheck,
    opts: &Options,
) {
    let repo = &tag.repository;
    let reference = tag.manifest_reference();
    // Which digest each endpoint names for the tag (resolve-capable and reachable ones).
    let asked: Vec<bool> = measured
        .iter()
        .map(|m| m.reachable && m.capabilities.contains(&"resolve"))
        .collect();
    let answers =
        futures_util::future::join_all(clients.iter().zip(&asked).map(|(c, ask)| async move {
            if *ask {
                Some(c.resolve(repo, reference).await)
            } else {
                None
            }
        }))
        .await;
    let official = measured.iter().position(|m| m.role == Role::Official);
    let official_digest = match (tag.digest.clone(), official) {
        (Some(d), _) => Some(d),
        (None, Some(i)) => match &answers[i] {
            Some(Ok(d)) => Some(d.clone()),
            _ => None,
        },
        (None, None) => None,
    };
    result.official_digest = official_digest.as_ref().map(ToString::to_string);
    for (m, answer) in measured.iter_mut().zip(&answers) {
        m.tag_state = match answer {
            None if !m.reachable => "not asked (does not answer)".into(),
            None => "not asked (pull-only: content by digest, never tags)".into(),
            Some(Err(e)) if e.is_not_found() => {
                m.fresh = Some(false);
                "does not have the tag".into()
            }
            Some(Err(e)) => format!("no answer: {}", chain(e)),
            Some(Ok(d)) => {
                m.digest = Some(d.to_string());
                match &official_digest {
                    Some(o) if o == d => {
                        m.fresh = Some(true);
                        "same as the official registry".into()
                    }
                    Some(o) => {
                        m.fresh = Some(false);
                        format!("stale or differs: names {d}, the official registry {o}")
                    }
                    None => "official digest unknown: freshness cannot be told".into(),
                }
            }
        };
    }
    if official_digest.is_none() {
        result.notes.push(format!(
            "the official registry did not name a digest for {tag}: freshness is unknown"
        ));
    }
    // The digest whose content is measured: the official one, else the first a mirror named.
    let Some(digest) = official_digest.or_else(|| {
        answers
            .iter()
            .flatten()
            .find_map(|a| a.as_ref().ok().cloned())
    }) else {
        result
            .notes
            .push("no endpoint named a digest for the tag: no blob was measured".into());
        return;
    };
    let Some(blob) = pick_blob(clients, measured, repo, &digest, opts).await else {
        result.notes.push(format!(
            "no endpoint served the manifest {digest} for {}: no blob was measured",
            opts.platform
        ));
        return;
    };
    result.blob = Some(BlobInfo {
        digest: blob.digest.to_string(),
        size: blob.size,
        media_type: blob.media_type.clone(),
    });
    for (c, m) in clients.iter().zip(measured.iter_mut()) {
        if !m.reachable || !m.capabilities.contains(&"pull") {
            continue;
        }
        let started = Instant::now();
        match tokio::time::timeout(BLOB_TIMEOUT, fetch_blob(c, repo, &blob)).await {
            Ok(Ok(())) => {
                let secs = started.elapsed().as_secs_f64().max(1e-6);
                m.blob_ms = Some(millis(started.elapsed()));
                // A rate: positive and far below u64::MAX, so the float-to-int cast cannot wrap.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let rate = (blob.size as f64 / secs) as u64;
                m.blob_bytes_per_sec = Some(rate);
            }
            Ok(Err(e)) => m.blob_error = Some(chain(&e)),
            Err(_) => {
                m.blob_error = Some(format!(
                    "did not deliver the blob in {} s",
                    BLOB_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

/// The blob to measure: the platform's largest layer up to the size limit, else its config.
/// The manifests come from the first endpoint that serves them.
async fn pick_blob(
    clients: &[RegistryClient],
    measured: &[Measured],
    repo: &str,
    digest: &Digest,
    opts: &Options,
) -> Option<Descriptor> {
    for (c, m) in clients.iter().zip(measured) {
        if !m.reachable || !m.capabilities.contains(&"pull") {
            continue;
        }
        let Ok(top) = c.manifest(repo, digest.as_str(), Some(digest)).await else {
            continue;
        };
        let image = match manifest::parse(&top.bytes, top.media_type.as_deref()) {
            Ok(Manifest::Image(i)) => i,
            Ok(Manifest::Index(index)) => {
                let Some(entry) = index.select(&opts.platform).or(index.manifests.first()) else {
                    continue;
                };
                let d = &entry.descriptor.digest;
                let Ok(fetched) = c.manifest(repo, d.as_str(), Some(d)).await else {
                    continue;
                };
                match manifest::parse(&fetched.bytes, fetched.media_type.as_deref()) {
                    Ok(Manifest::Image(i)) => i,
                    _ => continue,
                }
            }
            Err(_) => continue,
        };
        let layer = image
            .layers
            .iter()
            .filter(|l| l.size <= opts.max_blob_bytes)
            .max_by_key(|l| l.size)
            .cloned();
        return Some(layer.unwrap_or(image.config));
    }
    None
}

/// Downloads the whole blob and checks its digest and size.
async fn fetch_blob(
    c: &RegistryClient,
    repo: &str,
    blob: &Descriptor,
) -> Result<(), RegistryError> {
    let resp = c.blob(repo, &blob.digest, 0, blob.size).await?;
    let url = resp.url.clone();
    let mut hasher = Hasher::new();
    let mut body = resp.response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| RegistryError::from_reqwest_at(&url, e))?;
        hasher.update(&chunk);
        if hasher.len() > blob.size {
            break;
        }
    }
    let (digest, size) = hasher.finish();
    if size != blob.size {
        return Err(RegistryError::SizeMismatch {
            url,
            expected: blob.size,
            actual: size,
        });
    }
    if digest != blob.digest {
        return Err(RegistryError::DigestMismatch {
            url,
            expected: blob.digest.clone(),
            actual: digest,
        });
    }
    Ok(())
}

/// Best first: answering, right bytes, not stale, faster, lower latency; ties keep the
/// configured order.
fn rank(measured: &mut [Measured]) {
    measured.sort_by_key(|m| {
        (
            !m.reachable,
            m.blob_error.is_some(),
            m.fresh == Some(false),
            std::cmp::Reverse(m.blob_bytes_per_sec.unwrap_or(0)),
            m.latency_ms.unwrap_or(u64::MAX),
        )
    });
    for (i, m) in measured.iter_mut().enumerate() {
        m.rank = i + 1;
    }
}
