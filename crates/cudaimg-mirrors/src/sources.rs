//! The mirror policy at run time: the ordered sources for one registry, what the run has
//! learned about each (backoff after failures, `Retry-After`). The loop that moves through
//! them is [`crate::fallback`].
//!
//! Order: the mirror named in the reference (`mirror.example/nvidia/cuda`) first, then the
//! configured mirrors in file order, then the official endpoint. Each request goes to the
//! first source that is not backing off and has not already proved unable to serve that item.
//! A failure puts the source into exponential backoff with jitter (a refused connection
//! longer, a 429 for its `Retry-After`), so a dead or throttling mirror is not asked first
//! again for every blob while others can serve; a success clears its backoff.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::fallback::ItemState;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudaimg_config::{Capabilities, Config};
use cudaimg_oci::progress::Reporter;
use cudaimg_registry::{HttpClients, Next, RegistryClient, RegistryError};

/// Backoff after a transient failure: `BASE * 2^(n-1)`, at most `CAP`, times a jitter in [0.5, 1].
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// A refused connection means the host is down, not busy: stay away longer.
const BACKOFF_BASE_DOWN: Duration = Duration::from_secs(5);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// The longest a pull waits for a source to come out of backoff; a `Retry-After` beyond it
/// makes the source unusable for the item instead.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Transient failures of one source for one item before that source is given up for it.
/// Failures after which bytes had arrived (a cut, a stall) count only when nothing arrived.
pub const MAX_FAILURES_PER_ITEM: u32 = 3;

/// Whether a source is a mirror or the registry itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Mirror,
    Official,
}

pub struct Source {
    pub client: RegistryClient,
    pub role: Role,
    pub index: usize,
    pub capabilities: Capabilities,
    /// Shared by every pull of the run: a mirror that failed for one reference is not asked
    /// first again for the next.
    backoff: Arc<Mutex<Backoff>>,
    /// This pull's own record of the source, for its report.
    health: Mutex<Health>,
    bytes: AtomicU64,
}

/// An error that says what the fallback loop does next: retry this source later, ask the
/// next one, or give up. The protocol's [`RegistryError`] is one; a transfer's own error
/// (the protocol's, or the store's that must stop the loop) is another. The loop in this
/// module is the only code that acts on it.
pub trait Classify: std::error::Error + Send + Sync + 'static {
    /// The one decision: retry, next source, or give up.
    fn next(&self) -> Next;
    /// How long the server asked us to stay away.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    /// A short label of the failure kind, for reports.
    fn kind(&self) -> &'static str;
    /// The source says the thing does not exist.
    fn is_not_found(&self) -> bool {
        false
    }
    /// The host refused the connection: it is down, not busy, so back off longer.
    fn host_down(&self) -> bool {
        false
    }
}

impl Classify for RegistryError {
    fn next(&self) -> Next {
        RegistryError::next(self)
    }
    fn retry_after(&self) -> Option<Duration> {
        RegistryError::retry_after(self)
    }
    fn kind(&self) -> &'static str {
        RegistryError::kind(self)
    }
    fn is_not_found(&self) -> bool {
        RegistryError::is_not_found(self)
    }
    fn host_down(&self) -> bool {
        matches!(self, RegistryError::Connect { .. })
    }
}

/// When a source may be asked again.
#[derive(Debug, Default)]
pub struct Backoff {
    consecutive_failures: u32,
    not_before: Option<Instant>,
}

/// Backoff state by endpoint URL, for the whole run (one per process).
#[derive(Debug, Default, Clone)]
pub struct SourceMemory(Arc<Mutex<HashMap<String, Arc<Mutex<Backoff>>>>>);

impl SourceMemory {
    fn backoff(&self, url: &str) -> Arc<Mutex<Backoff>> {
        match self.0.lock() {
            Ok(mut m) => m.entry(url.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }
}

#[derive(Default)]
struct Health {
    blobs: u64,
    requests_ok: u64,
    failures: BTreeMap<&'static str, (u64, String)>,
}

impl Source {
    pub fn label(&self) -> &str {
        self.client.label()
    }

    /// Counts body bytes this source delivered.
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
}

/// What one source did during a run, for `--json` and `-v`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceReport {
    pub url: String,
    pub role: Role,
    /// Body bytes received from it, discarded ones included.
    pub bytes: u64,
    /// Blobs it completed.
    pub blobs: u64,
    /// Requests it answered successfully.
    pub requests: u64,
    pub failures: Vec<FailureReport>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FailureReport {
    pub kind: &'static str,
    pub count: u64,
    /// The most recent error of this kind.
    pub last: String,
}

/// The sources of one registry, in the order they are asked.
pub struct SourceSet {
    sources: Vec<Arc<Source>>,
    warnings: Mutex<Vec<String>>,
}

/// The next source to ask for an item.
pub enum Pick {
    Now(Arc<Source>),
    /// Every usable source is backing off; the earliest is free after this long.
    Wait(Duration),
    /// No source is left for this item.
    None,
}

/// An error and its causes on one line, as `a: b: c`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            let _ = write!(s, ": {text}");
        }
        cur = c.source();
    }
    s
}

impl SourceSet {
    /// Sources for `registry`; `preferred` is a mirror host named in the reference.
    pub fn new(
        config: &Config,
        registry: &str,
        preferred: Option<&str>,
        http: &HttpClients,
        memory: &SourceMemory,
    ) -> Self {
        let reg = config.registry(registry);
        let mut mirrors = reg.mirrors.clone();
        if let Some(host) = preferred {
            if let Some(pos) = mirrors.iter().position(|m| m.authority() == host) {
                let m = mirrors.remove(pos);
                mirrors.insert(0, m);
            }
        }
        // A mirror listed twice, or the official endpoint listed as a mirror, is asked once,
        // in its first place; the official endpoint keeps its role.
        let mut seen = HashSet::new();
        seen.insert(reg.endpoint.url.clone());
        let endpoints: Vec<_> = mirrors
            .iter()
            .filter(|m| seen.insert(m.url.clone()))
            .map(|m| (m, Role::Mirror))
            .chain(std::iter::once((&reg.endpoint, Role::Official)))
            .collect();
        let sources = endpoints
            .into_iter()
            .enumerate()
            .map(|(index, (e, role))| {
                let client = RegistryClient::new(&e.url, e.insecure, http);
                Arc::new(Source {
                    backoff: memory.backoff(client.label()),
                    client,
                    role,
                    index,
                    capabilities: e.capabilities,
                    health: Mutex::new(Health::default()),
                    bytes: AtomicU64::new(0),
                })
            })
            .collect();
        SourceSet {
            sources,
            warnings: Mutex::new(Vec::new()),
        }
    }

    pub fn sources(&self) -> &[Arc<Source>] {
        &self.sources
    }

    /// The official endpoint: the authority on what a tag means.
    pub fn official(&self) -> Option<&Arc<Source>> {
        self.sources.iter().find(|s| s.role == Role::Official)
    }

    /// Mirrors that may be asked which digest a tag names, and are not backing off.
    pub fn resolving_mirrors(&self) -> impl Iterator<Item = &Arc<Source>> {
        let now = Instant::now();
        self.sources.iter().filter(move |s| {
            s.role == Role::Mirror
                && s.capabilities.resolve
                && s.backoff
                    .lock()
                    .ok()
                    .and_then(|b| b.not_before)
                    .is_none_or(|t| t <= now)
        })
    }

    /// Records a failure outside any item's bookkeeping (a tag lookup, asked of every
    /// source at once): in the report, and in the source's backoff when it is a passing one.
    pub fn note_failure<E: Classify>(
        &self,
        source: &Source,
        error: &E,
        reporter: &dyn Reporter,
        what: &str,
    ) {
        reporter.source_failed(source.label(), what, error);
        self.record(source, error);
    }

    /// The one record of a failure, for the report and the source's backoff (a passing
    /// fault only). Returns the backoff it set, if any.
    // A method of the set, though it reads only `source`: failures are recorded through the
    // set that owns the sources, as every caller holds it.
    #[allow(clippy::unused_self)]
    pub(crate) fn record<E: Classify>(&self, source: &Source, error: &E) -> Option<Duration> {
        if let Ok(mut h) = source.health.lock() {
            let entry = h.failures.entry(error.kind()).or_insert((0, String::new()));
            entry.0 += 1;
            entry.1 = chain(error);
        }
        if error.next() != Next::Retry {
            return None;
        }
        let mut b = source.backoff.lock().ok()?;
        b.consecutive_failures += 1;
        let delay = error
            .retry_after()
            .unwrap_or_else(|| backoff(error, b.consecutive_failures));
        b.not_before = Instant::now().checked_add(delay);
        Some(delay)
    }

    /// Warnings gathered so far: one line per source and kind of failure, plus any added.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.sources {
            if let Ok(h) = s.health.lock() {
                for (kind, (count, last)) in &h.failures {
                    let times = if *count == 1 {
                        String::new()
                    } else {
                        format!(" ({count} times)")
                    };
                    out.push(format!(
                        "{} {} failed ({kind}){times}: {last}",
                        match s.role {
                            Role::Mirror => "mirror",
                            Role::Official => "registry",
                        },
                        s.label()
                    ));
                }
            }
        }
        if let Ok(w) = self.warnings.lock() {
            out.extend(w.iter().cloned());
        }
        out
    }

    pub fn warn(&self, line: String) {
        if let Ok(mut w) = self.warnings.lock() {
            if !w.contains(&line) {
                w.push(line);
            }
        }
    }

    /// What each source did.
    pub fn report(&self) -> Vec<SourceReport> {
        self.sources
            .iter()
            .map(|s| {
                let h = s.health.lock().ok();
                SourceReport {
                    url: s.label().to_owned(),
                    role: s.role,
                    bytes: s.bytes.load(Ordering::Relaxed),
                    blobs: h.as_ref().map_or(0, |h| h.blobs),
                    requests: h.as_ref().map_or(0, |h| h.requests_ok),
                    failures: h
                        .map(|h| {
                            h.failures
                                .iter()
                                .map(|(kind, (count, last))| FailureReport {
                                    kind,
                                    count: *count,
                                    last: last.clone(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// The first source, in order, that is usable for this item now.
    pub fn pick<E>(&self, item: &ItemState<E>) -> Pick {
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        for s in &self.sources {
            if item.is_excluded(s) || !s.capabilities.pull {
                continue;
            }
            let not_before = s.backoff.lock().ok().and_then(|h| h.not_before);
            match not_before {
                Some(t) if t > now => earliest = Some(earliest.map_or(t, |e| e.min(t))),
                _ => return Pick::Now(s.clone()),
            }
        }
        match earliest {
            Some(t) => Pick::Wait(t - now),
            None => Pick::None,
        }
    }

    /// Every source that could serve the item right now, in order.
    pub fn usable_now<E>(&self, item: &ItemState<E>) -> Vec<Arc<Source>> {
        let now = Instant::now();
        self.sources
            .iter()
            .filter(|s| s.capabilities.pull && !item.is_excluded(s))
            .filter(|s| {
                s.backoff
                    .lock()
                    .ok()
                    .and_then(|h| h.not_before)
                    .is_none_or(|t| t <= now)
            })
            .cloned()
            .collect()
    }

    /// Records a successful request.
    pub fn succeeded(&self, source: &Source) {
        if let Ok(mut b) = source.backoff.lock() {
            b.consecutive_failures = 0;
            b.not_before = None;
        }
        if let Ok(mut h) = source.health.lock() {
            h.requests_ok += 1;
        }
    }

    /// Records a completed blob.
    pub fn blob_done(&self, source: &Source) {
        if let Ok(mut h) = source.health.lock() {
            h.blobs += 1;
        }
    }
}

fn backoff(error: &impl Classify, consecutive: u32) -> Duration {
    let base = if error.host_down() {
        BACKOFF_BASE_DOWN
    } else {
        BACKOFF_BASE
    };
    let exp = base.saturating_mul(1u32 << consecutive.saturating_sub(1).min(16));
    exp.min(BACKOFF_CAP).mul_f64(0.5 + fastrand::f64() / 2.0)
}
