//! The mirror policy at run time: the ordered sources for one registry, what the run has
//! learned about each (backoff after failures, `Retry-After`). Which of them an item asks
//! next is `order`'s, and the loop that moves through them is `fallback`'s; both build on
//! this module, which uses neither.
//!
//! Order: the mirror named in the reference (`mirror.example/nvidia/cuda`) first, then the
//! configured mirrors in file order, then the official endpoint. Each request goes to the
//! first source that is not backing off and has not already proved unable to serve that item.
//! A failure puts the source into exponential backoff with jitter (a refused connection
//! longer, a 429 for its `Retry-After`), so a dead or throttling mirror is not asked first
//! again for every blob while others can serve; a success clears its backoff.
//!
//! Health across runs (the `health` module): a mirror that kept an earlier run waiting (marked
//! unhealthy, not yet expired) is moved behind every other source, official included, and
//! not asked to resolve tags; the run says so once. A source that keeps this run waiting past
//! the first-byte wait is marked slow: asked after every source that is not, for the rest of
//! the run, and recorded for the next runs.

use std::collections::{BTreeMap, HashMap, HashSet};

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudaimg_config::{Capabilities, Config};
use cudaimg_oci::progress::Reporter;
use cudaimg_registry::{HttpClients, Next, RegistryClient, RegistryError};

use crate::health::{now_secs, Book, Entry, Observed};

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

/// How long a source that has not answered yet in this run gets to send its first byte
/// before another is asked: long enough for a registry on another continent, short enough
/// that a mirror that accepts connections and says nothing costs little.
pub const FIRST_BYTE_WAIT: Duration = Duration::from_secs(2);

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
    /// An earlier run marked it unhealthy: asked after every other source.
    pub demoted: bool,
    /// It answered a ranged request with the whole blob in this run: it takes no part in
    /// parallel fills (whose every request is ranged), and serves blobs from byte 0.
    ignores_range: std::sync::atomic::AtomicBool,
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

/// When a source may be asked again, and what the run saw of it (for the next runs).
#[derive(Debug, Default)]
pub struct Backoff {
    consecutive_failures: u32,
    not_before: Option<Instant>,
    /// What this run saw, folded into the health record when it ends.
    seen: Observed,
    /// The run said why this source is asked last, or why it waited on it.
    announced: bool,
    /// Its last failure was a refused connection, and nothing succeeded since: it cannot
    /// serve anything now, so it does not count as another source that could.
    down: bool,
    /// The run said it waits for this source as the only one in reach.
    waited_for_alone: bool,
}

/// Backoff state by endpoint URL, for the whole run (one per process), and the health record
/// the earlier runs left (see [`crate::health`]).
#[derive(Debug, Default, Clone)]
pub struct SourceMemory {
    backoffs: Arc<Mutex<HashMap<String, Arc<Mutex<Backoff>>>>>,
    /// `None` until a store's record is loaded: a run without a store remembers nothing.
    book: Arc<Mutex<Option<Book>>>,
}

impl SourceMemory {
    fn backoff(&self, url: &str) -> Arc<Mutex<Backoff>> {
        match self.backoffs.lock() {
            Ok(mut m) => m.entry(url.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// Takes the health record earlier runs left (the state file's bytes; `None`: no file
    /// yet). From now on the run orders sources by it and will have observations to save.
    pub fn load_health(&self, bytes: Option<&[u8]>) {
        if let Ok(mut b) = self.book.lock() {
            *b = Some(bytes.map(Book::parse).unwrap_or_default());
        }
    }

    /// Whether a health record was loaded (and so should be saved).
    pub fn health_loaded(&self) -> bool {
        self.book.lock().is_ok_and(|b| b.is_some())
    }

    /// The record to write back: `current` (the file as it is now, which another run may
    /// have changed meanwhile) with this run's observations folded in. `None` when the run
    /// loaded no record or observed nothing.
    pub fn health_to_save(&self, current: Option<&[u8]>) -> Option<Vec<u8>> {
        if !self.health_loaded() {
            return None;
        }
        let mut book = current.map(Book::parse).unwrap_or_default();
        let now = now_secs();
        let mut any = false;
        for (url, b) in self.backoffs.lock().ok()?.iter() {
            let Ok(b) = b.lock() else { continue };
            if b.seen.slow || b.seen.answered || b.seen.failures > 0 {
                any = true;
                book.observe(url, b.seen, now);
            }
        }
        any.then(|| book.to_bytes())
    }

    /// The sources of `registry` (`preferred`: a mirror host named in the reference), in
    /// the order this memory says: mirrors an earlier run found unhealthy go last.
    pub fn sources(
        &self,
        config: &Config,
        registry: &str,
        preferred: Option<&str>,
        http: &HttpClients,
    ) -> SourceSet {
        SourceSet::new(config, registry, preferred, http, self)
    }

    /// The record's entry for `url` if it is marked unhealthy now.
    fn unhealthy(&self, url: &str) -> Option<Entry> {
        let book = self.book.lock().ok()?;
        book.as_ref()?.unhealthy(url, now_secs()).cloned()
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

    /// It answered a ranged request with the whole blob in this run.
    pub fn ignores_range(&self) -> bool {
        self.ignores_range.load(Ordering::Relaxed)
    }

    /// Records that it answered a ranged request with the whole blob.
    pub fn set_ignores_range(&self) {
        self.ignores_range.store(true, Ordering::Relaxed);
    }

    /// Asked last: an earlier run marked it unhealthy, or it kept this run waiting.
    pub fn asked_last(&self) -> bool {
        self.demoted || self.backoff.lock().is_ok_and(|b| b.seen.slow)
    }

    /// When its backoff ends, if it is backing off.
    pub(crate) fn not_before(&self) -> Option<Instant> {
        self.backoff.lock().ok().and_then(|b| b.not_before)
    }

    /// Its last failure was a refused connection, and nothing succeeded since.
    pub(crate) fn is_down(&self) -> bool {
        self.backoff.lock().is_ok_and(|b| b.down)
    }

    /// It answered a request in this run.
    pub fn answered(&self) -> bool {
        self.backoff.lock().is_ok_and(|b| b.seen.answered)
    }

    /// The role and URL, as messages name it ("mirror http://…").
    pub fn described(&self) -> String {
        match self.role {
            Role::Mirror => format!("mirror {}", self.label()),
            Role::Official => format!("the official registry {}", self.label()),
        }
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
    /// Why each demoted source is asked last, in source order.
    notices: Vec<String>,
}

/// Why a source is asked last, from the record an earlier run left.
fn demotion_notice(source: &Source, entry: &Entry) -> String {
    let left = entry.unhealthy_until.saturating_sub(now_secs());
    let times = if entry.timeouts > 1 {
        format!(" ({} runs in a row)", entry.timeouts)
    } else {
        String::new()
    };
    format!(
        "{} did not answer in time on a recent run{times}; asking it last for the next {} min",
        source.described(),
        left.div_ceil(60)
    )
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
    /// Sources for `registry`; `preferred` is a mirror host named in the reference. Private
    /// to the crate: sets come from [`SourceMemory::sources`], so every one orders by the
    /// run's memory and the health record.
    pub(crate) fn new(
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
        // Sources an earlier run found unhealthy go behind all others, in their order.
        let mut endpoints: Vec<_> = endpoints
            .into_iter()
            .map(|(e, role)| {
                let client = RegistryClient::new(&e.url, e.insecure, http);
                let unhealthy = memory.unhealthy(client.label());
                (e, role, client, unhealthy)
            })
            .collect();
        endpoints.sort_by_key(|(.., unhealthy)| unhealthy.is_some());
        let mut notices = Vec::new();
        let sources = endpoints
            .into_iter()
            .enumerate()
            .map(|(index, (e, role, client, unhealthy))| {
                let source = Source {
                    backoff: memory.backoff(client.label()),
                    client,
                    role,
                    index,
                    capabilities: e.capabilities,
                    health: Mutex::new(Health::default()),
                    bytes: AtomicU64::new(0),
                    demoted: unhealthy.is_some(),
                    ignores_range: std::sync::atomic::AtomicBool::new(false),
                };
                if let Some(entry) = unhealthy {
                    notices.push(demotion_notice(&source, &entry));
                }
                Arc::new(source)
            })
            .collect();
        SourceSet {
            sources,
            warnings: Mutex::new(Vec::new()),
            notices,
        }
    }

    /// Says, once per run and source, which sources are asked last because an earlier run
    /// found them unhealthy (as a progress line, and among the warnings).
    pub fn announce(&self, reporter: &dyn Reporter) {
        for (s, line) in self.sources.iter().filter(|s| s.demoted).zip(&self.notices) {
            let first = s.backoff.lock().is_ok_and(|mut b| {
                let first = !b.announced;
                b.announced = true;
                first
            });
            if first {
                reporter.notice(line);
                self.warn(line.clone());
            }
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
                && !s.asked_last()
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
        if let Ok(mut b) = source.backoff.lock() {
            b.seen.failures = b.seen.failures.saturating_add(1);
            b.down = error.host_down();
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

    /// `source` has not answered yet and is the only source in reach: it gets the whole
    /// stall timeout, and the run says once what it waits for (a cold mirror can take
    /// seconds to start an answer; without the line the pull would look hung).
    pub fn waiting_for_alone(&self, source: &Source, reporter: &dyn Reporter) {
        let first = source.backoff.lock().is_ok_and(|mut b| {
            let first = !b.waited_for_alone;
            b.waited_for_alone = true;
            first
        });
        if first {
            reporter.notice(&format!(
                "waiting up to {} s for {}: no other source is in reach",
                source.client.manifest_timeout().as_secs(),
                source.described()
            ));
        }
    }

    /// `source` kept a request waiting past the first-byte wait, and `next` is asked
    /// (`None`: nobody else). It is asked last for the rest of the run and by the runs after
    /// it, until the mark expires; the run says so once, as a progress line and a warning.
    pub fn waited_on(&self, source: &Source, next: Option<&Source>, reporter: &dyn Reporter) {
        let first = source.backoff.lock().is_ok_and(|mut b| {
            b.seen.slow = true;
            let first = !b.announced;
            b.announced = true;
            first
        });
        if first {
            let secs = FIRST_BYTE_WAIT.as_secs();
            let line = match next {
                Some(n) => format!(
                    "{} has not answered in {secs} s; asking {}",
                    source.described(),
                    n.described()
                ),
                None => format!("{} has not answered in {secs} s", source.described()),
            };
            reporter.notice(&line);
            self.warn(format!(
                "{line}; it is asked last by the next runs for {} min",
                crate::health::UNHEALTHY_FOR.as_secs() / 60
            ));
        }
    }

    /// Records how long a source took to answer a request it answered.
    pub fn answered_in(&self, source: &Source, took: Duration) {
        if let Ok(mut b) = source.backoff.lock() {
            b.seen.latency_ms = Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        }
    }

    /// Records a successful request.
    pub fn succeeded(&self, source: &Source) {
        Self::counted(source, true);
    }

    /// Records a tag resolved by a `HEAD`: a request served, counted in the report, but no
    /// proof that the source sends bodies. A mirror that answers `HEAD` and then stalls
    /// every `GET` still gets only the short first-byte wait.
    pub fn resolved_by_head(&self, source: &Source) {
        Self::counted(source, false);
    }

    fn counted(source: &Source, answered: bool) {
        if let Ok(mut b) = source.backoff.lock() {
            b.consecutive_failures = 0;
            b.not_before = None;
            b.down = false;
            b.seen.answered |= answered;
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
