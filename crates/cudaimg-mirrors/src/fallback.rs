//! The one fallback loop: ask the sources of a registry for one item (a manifest, a blob, a
//! tag list, and next an upload) until one succeeds, every usable source has failed it, or
//! an error says nobody can help. Written once, in the spirit of uv's
//! `fetch_with_url_fallback`: the error decides what happens next ([`Classify::next`]), and
//! [`Fallback::failed`] is the only code that records a failure for an item (report,
//! backoff, exclusion, per-item counts).
//!
//! Rules, all here:
//! - a passing fault ([`Next::Retry`]: dead URL, 5xx, stall) puts the source into backoff for
//!   the whole run (every item), and counts against this item; after
//!   [`MAX_FAILURES_PER_ITEM`] the source is done for it. A `Retry-After` beyond [`MAX_WAIT`]
//!   ends it for the item at once;
//! - a fault that bytes arrived before (a cut worth resuming) does not count, up to
//!   [`MAX_RESUMES`] per item;
//! - [`Next::NextSource`] (not found, wrong bytes) excludes the source for this item only,
//!   with no backoff: other items may still come from it;
//! - [`Next::GiveUp`] (the local disk failed) ends the loop at once;
//! - a source that has not answered in this run gets [`FIRST_BYTE_WAIT`] to send a first
//!   byte while another could serve: a one-shot request is then hedged ([`Fallback::hedged`]:
//!   the next source is asked too, the first answer wins, the other request is dropped), and
//!   a blob moves on (it resumes from where it is); either way the silent source is asked
//!   last from then on, by this run and the next ([`crate::health`]), and the wait is said.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::{select, Either};

use cudaimg_oci::progress::Reporter;
use cudaimg_registry::{Next, RegistryError};

pub use crate::order::{Attempt, ItemState};
use crate::order::{Pick, Spread, SpreadLease};
pub use crate::sources::FIRST_BYTE_WAIT;
use crate::sources::{Classify, Source, SourceSet, MAX_FAILURES_PER_ITEM, MAX_WAIT};

/// Cuts and stalls after which bytes had arrived, per item, that do not count as failures:
/// enough to ride out a flaky link, bounded so a source that cuts every connection cannot
/// loop forever.
pub const MAX_RESUMES: u32 = 50;

/// How the fallback loop ended without a result.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError<E: Classify = RegistryError> {
    #[error("{}", describe(.what, .attempts))]
    Exhausted {
        what: String,
        attempts: Vec<Attempt<E>>,
    },
    #[error(transparent)]
    GiveUp(E),
}

impl<E: Classify> FallbackError<E> {
    /// The same outcome with each error converted (a protocol error into a transfer's).
    pub fn map<F: Classify>(self, f: impl Fn(E) -> F) -> FallbackError<F> {
        match self {
            FallbackError::Exhausted { what, attempts } => FallbackError::Exhausted {
                what,
                attempts: attempts
                    .into_iter()
                    .map(|a| Attempt {
                        source: a.source,
                        role: a.role,
                        error: f(a.error),
                    })
                    .collect(),
            },
            FallbackError::GiveUp(e) => FallbackError::GiveUp(f(e)),
        }
    }

    /// True when the registry itself (or every source) says the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        let FallbackError::Exhausted { attempts, .. } = self else {
            return false;
        };
        let official = attempts
            .iter()
            .rev()
            .find(|a| a.role == crate::sources::Role::Official);
        match official {
            Some(a) => a.error.is_not_found(),
            None => !attempts.is_empty() && attempts.iter().all(|a| a.error.is_not_found()),
        }
    }
}

fn describe<E: Classify>(what: &str, attempts: &[Attempt<E>]) -> String {
    let mut s = format!("could not fetch {what} from any source");
    let mut seen = HashSet::new();
    for a in attempts {
        let line = format!("\n  - {}: {}", a.source, crate::sources::chain(&a.error));
        if seen.insert(line.clone()) {
            s.push_str(&line);
        }
    }
    s
}

/// What one attempt against one source came to.
pub enum Outcome<T, E: Classify> {
    /// It worked: the source is recorded as having answered.
    Done(T),
    /// It worked, and another source than the one asked answered (a hedged request).
    DoneBy(T, Arc<Source>),
    /// It failed. `progressed`: bytes arrived before it did (a cut or stall worth resuming
    /// from where it stopped), which does not count against the item.
    Failed { error: E, progressed: bool },
    /// The attempt recorded what went wrong itself (through [`Fallback::failed`], say for
    /// every source whose bytes hashed wrong); pick a source again.
    Again,
    /// End the loop with this error: nothing another source could change.
    Stop(FallbackError<E>),
}

/// One try at the item against one source. The fallback loop calls it until it is done; it
/// may keep state between tries (a partial file that later tries resume).
pub trait Operation {
    type Output;
    type Error: Classify;
    /// Tries `source`. `fallback` is the item's bookkeeping, for an attempt that must blame
    /// other sources or look at which are usable.
    fn attempt(
        &mut self,
        source: Arc<Source>,
        fallback: &mut Fallback<'_, Self::Error>,
    ) -> impl std::future::Future<Output = Outcome<Self::Output, Self::Error>>;
}

/// One item's run through the sources: its bookkeeping, and the loop.
pub struct Fallback<'s, E> {
    sources: &'s SourceSet,
    item: ItemState<E>,
    what: String,
    reporter: &'s dyn Reporter,
    /// Asked first while it is usable for the item ([`Fallback::spread_over`]).
    preferred: Option<Arc<Source>>,
    /// Its bytes, counted against `preferred` until the item is done.
    lease: Option<SpreadLease<'s>>,
}

impl<'s, E: Classify> Fallback<'s, E> {
    /// An item described as `what` in reports and errors ("blob sha256:…").
    pub fn new(
        sources: &'s SourceSet,
        what: impl Into<String>,
        reporter: &'s dyn Reporter,
    ) -> Self {
        Fallback {
            sources,
            item: ItemState::default(),
            what: what.into(),
            reporter,
            preferred: None,
            lease: None,
        }
    }

    /// An item whose bookkeeping outlives one run of the loop (`copy` opens a blob's
    /// download again for each upload attempt): the loop starts from `item`'s exclusions,
    /// counts and attempts, and [`Fallback::take_item`] hands them back.
    pub fn resume(
        sources: &'s SourceSet,
        what: impl Into<String>,
        reporter: &'s dyn Reporter,
        item: ItemState<E>,
    ) -> Self {
        let mut fallback = Fallback::new(sources, what, reporter);
        fallback.item = item;
        fallback
    }

    /// The item's bookkeeping, for a later [`Fallback::resume`].
    pub fn take_item(&mut self) -> ItemState<E> {
        std::mem::take(&mut self.item)
    }

    /// Asks first, for the rest of this item (`bytes`), the usable mirror with the fewest
    /// bytes in flight ([`Spread`]), as long as it stays usable (not excluded, not backing
    /// off, not asked last while another could serve); otherwise the usual order. A pull
    /// spreads its blobs over healthy mirrors this way, one link each, without changing
    /// what a failure does. The bytes count against that mirror until the loop is dropped.
    pub fn spread_over(&mut self, spread: &'s Spread, bytes: u64) {
        if let Some((first, lease)) = spread.assign(&self.usable_now(), bytes) {
            self.preferred = Some(first);
            self.lease = Some(lease);
        }
    }

    pub fn sources(&self) -> &'s SourceSet {
        self.sources
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn item(&self) -> &ItemState<E> {
        &self.item
    }

    /// Lets an excluded source serve the item again.
    pub fn readmit(&mut self, source: &Source) {
        self.item.readmit(source);
    }

    /// No source is left for the item, now or after a backoff.
    pub fn none_left(&self) -> bool {
        matches!(self.sources.pick(&self.item), Pick::None)
    }

    /// Every source that could serve the item right now, in order.
    pub fn usable_now(&self) -> Vec<Arc<Source>> {
        self.sources.usable_now(&self.item)
    }

    /// The loop has nothing left to try: every attempt, under `what` (or another wording).
    pub fn exhausted(&mut self, what: Option<String>) -> FallbackError<E> {
        FallbackError::Exhausted {
            what: what.unwrap_or_else(|| self.what.clone()),
            attempts: std::mem::take(&mut self.item.attempts),
        }
    }

    /// Records a failure of `source` for this item: in the report, in the source's backoff
    /// when it is a passing one, and as an exclusion from the item when the source cannot
    /// serve it or has failed it too often. The only place that does; a [`Next::GiveUp`]
    /// error comes back as the loop's end.
    pub fn failed(
        &mut self,
        source: &Source,
        error: E,
        progressed: bool,
    ) -> Result<(), FallbackError<E>> {
        self.sources.failed(
            source,
            &mut self.item,
            error,
            progressed,
            &self.what,
            self.reporter,
        )
    }

    /// Waits for a source to offer itself for the item, or says none is left.
    async fn next_source(&self) -> Option<Arc<Source>> {
        if let Some(p) = &self.preferred {
            if let Some(s) = self.usable_now().into_iter().find(|s| s.index == p.index) {
                return Some(s);
            }
        }
        self.sources.next_source(&self.item).await
    }

    /// Asks `first` with `request`; when it has not answered within its first-byte wait
    /// ([`SourceSet::first_byte_wait`]), says so and asks the next usable source too. The
    /// first success wins and the other request is dropped (its connection closed). Every
    /// failure is recorded here; `Err(None)`: all asked failed (pick again), `Err(Some)`:
    /// the loop ends.
    pub async fn hedged<T, F, Fut>(
        &mut self,
        first: Arc<Source>,
        request: &mut F,
    ) -> Result<(T, Arc<Source>), Option<FallbackError<E>>>
    where
        F: FnMut(Arc<Source>) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let a = request(first.clone());
        futures_util::pin_mut!(a);
        let second = match self
            .sources
            .first_byte_wait(&first, &self.item, self.reporter)
        {
            None => None,
            Some(wait) => match tokio::time::timeout(wait, &mut a).await {
                Ok(r) => return self.settle(&first, r, started),
                Err(_) => self
                    .usable_now()
                    .into_iter()
                    .find(|s| s.index != first.index),
            },
        };
        let Some(second) = second else {
            let r = a.await;
            return self.settle(&first, r, started);
        };
        self.sources.waited_on(&first, Some(&second), self.reporter);
        let b = request(second.clone());
        futures_util::pin_mut!(b);
        let (done, r, other, rest) = match select(a, b).await {
            Either::Left((r, b)) => (&first, r, &second, Either::Left(b)),
            Either::Right((r, a)) => (&second, r, &first, Either::Right(a)),
        };
        match r {
            Ok(v) => {
                self.sources.answered_in(done, started.elapsed());
                Ok((v, done.clone()))
            }
            Err(e) => {
                self.failed(done, e, false).map_err(Some)?;
                let r = match rest {
                    Either::Left(b) => b.await,
                    Either::Right(a) => a.await,
                };
                self.settle(other, r, started)
            }
        }
    }

    /// The end of a request that ran alone: its result, or its failure recorded.
    fn settle<T>(
        &mut self,
        source: &Arc<Source>,
        r: Result<T, E>,
        started: Instant,
    ) -> Result<(T, Arc<Source>), Option<FallbackError<E>>> {
        match r {
            Ok(v) => {
                self.sources.answered_in(source, started.elapsed());
                Ok((v, source.clone()))
            }
            Err(e) => {
                self.failed(source, e, false).map_err(Some)?;
                Err(None)
            }
        }
    }

    /// The loop: runs `op` against the sources until it is done, returning its result and
    /// the source that produced it.
    pub async fn run<O: Operation<Error = E>>(
        &mut self,
        op: &mut O,
    ) -> Result<(O::Output, Arc<Source>), FallbackError<E>> {
        while let Some(source) = self.next_source().await {
            match op.attempt(source.clone(), self).await {
                Outcome::Done(v) => {
                    self.sources.succeeded(&source);
                    return Ok((v, source));
                }
                Outcome::DoneBy(v, by) => {
                    self.sources.succeeded(&by);
                    return Ok((v, by));
                }
                Outcome::Failed { error, progressed } => {
                    // Bytes arrived: the source answers, whatever cut it off.
                    if progressed {
                        self.sources.succeeded(&source);
                        self.item.resumes += 1;
                    }
                    let resumable = progressed && self.item.resumes <= MAX_RESUMES;
                    self.failed(&source, error, resumable)?;
                }
                Outcome::Again => {}
                Outcome::Stop(e) => return Err(e),
            }
        }
        Err(self.exhausted(None))
    }
}

/// A one-shot request as an [`Operation`], hedged ([`Fallback::hedged`]).
struct EachSource<F>(F);

impl<T, E, F, Fut> Operation for EachSource<F>
where
    E: Classify,
    F: FnMut(Arc<Source>) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    type Output = T;
    type Error = E;

    async fn attempt(
        &mut self,
        source: Arc<Source>,
        fallback: &mut Fallback<'_, E>,
    ) -> Outcome<T, E> {
        match fallback.hedged(source, &mut self.0).await {
            Ok((v, by)) => Outcome::DoneBy(v, by),
            Err(None) => Outcome::Again,
            Err(Some(e)) => Outcome::Stop(e),
        }
    }
}

impl SourceSet {
    /// Records a failure of `source` for `item`: in the report, in the source's backoff when
    /// it is a passing one, and as an exclusion from the item when the source cannot serve
    /// it or has failed it too often. The one place that does, for [`Fallback`] and for a
    /// caller that drives attempts itself because they outlive one call (`copy` streams a
    /// blob from whichever source into one upload); a [`Next::GiveUp`] error comes back as
    /// the end.
    pub fn failed<E: Classify>(
        &self,
        source: &Source,
        item: &mut ItemState<E>,
        error: E,
        progressed: bool,
        what: &str,
        reporter: &dyn Reporter,
    ) -> Result<(), FallbackError<E>> {
        reporter.source_failed(source.label(), what, &error);
        let next = error.next();
        if next == Next::GiveUp {
            return Err(FallbackError::GiveUp(error));
        }
        let delay = self.record(source, &error);
        if delay.is_some_and(|d| d > MAX_WAIT) {
            item.exclude(source);
        }
        match next {
            Next::NextSource | Next::GiveUp => item.exclude(source),
            Next::Retry if !progressed => {
                let n = item.failures.entry(source.index).or_default();
                *n += 1;
                if *n >= MAX_FAILURES_PER_ITEM {
                    item.exclude(source);
                }
            }
            Next::Retry => {}
        }
        item.attempts.push(Attempt {
            source: source.label().to_owned(),
            role: source.role,
            error,
        });
        Ok(())
    }

    /// Runs `op` for the item `what` through the fallback loop.
    pub async fn with_fallback<O: Operation>(
        &self,
        what: &str,
        reporter: &dyn Reporter,
        op: &mut O,
    ) -> Result<(O::Output, Arc<Source>), FallbackError<O::Error>> {
        Fallback::new(self, what, reporter).run(op).await
    }

    /// Runs a one-shot request (a manifest, a tag list) against the sources until one
    /// succeeds.
    pub async fn first_success<T, E, F, Fut>(
        &self,
        what: &str,
        reporter: &dyn Reporter,
        op: F,
    ) -> Result<(T, Arc<Source>), FallbackError<E>>
    where
        E: Classify,
        F: FnMut(Arc<Source>) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.with_fallback(what, reporter, &mut EachSource(op))
            .await
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::Duration;

    use cudaimg_config::Config;
    use cudaimg_oci::progress::{Reporter, Silent};
    use cudaimg_registry::HttpClients;

    use super::*;
    use crate::sources::SourceMemory;

    /// A failure that classifies itself as the test says: no network behind it.
    #[derive(Debug)]
    enum Fake {
        /// A dead URL: retry later.
        Dead,
        /// Bytes that hashed wrong: ask the next source.
        HashMismatch,
        /// The disk is full: nobody can help.
        DiskFull,
    }

    impl std::fmt::Display for Fake {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl std::error::Error for Fake {}

    impl Classify for Fake {
        fn next(&self) -> Next {
            match self {
                Fake::Dead => Next::Retry,
                Fake::HashMismatch => Next::NextSource,
                Fake::DiskFull => Next::GiveUp,
            }
        }
        fn kind(&self) -> &'static str {
            "fake"
        }
    }

    /// Two mirrors, then the official endpoint; nothing listens on them and nothing asks.
    fn sources(memory: &SourceMemory) -> SourceSet {
        let config = Config::parse(
            "[registries.\"r.test\"]\nendpoint = \"http://127.0.0.1:9\"\n\
             mirrors = [{ url = \"http://127.0.0.1:7\" }, { url = \"http://127.0.0.1:8\" }]\n",
            Path::new("mirrors.toml"),
        )
        .expect("config");
        let http = HttpClients::new(Duration::from_secs(5)).expect("clients");
        SourceSet::new(&config, "r.test", None, &http, memory)
    }

    /// Fails on the first mirror with `error`, succeeds elsewhere; records who was asked.
    async fn first_mirror_fails(
        set: &SourceSet,
        error: fn() -> Fake,
    ) -> (
        Result<(usize, Arc<Source>), FallbackError<Fake>>,
        Vec<usize>,
    ) {
        let asked = Mutex::new(Vec::new());
        let result = set
            .first_success("item", &Silent, |s| {
                asked.lock().expect("lock").push(s.index);
                async move {
                    if s.index == 0 {
                        Err(error())
                    } else {
                        Ok(s.index)
                    }
                }
            })
            .await;
        (result, asked.into_inner().expect("lock"))
    }

    #[tokio::test]
    async fn a_hash_mismatch_skips_the_source_for_the_item_only_a_dead_url_backs_it_off() {
        // Wrong bytes: the next source serves this item; the mirror is not backing off, so
        // the next item asks it first again.
        let memory = SourceMemory::default();
        let set = sources(&memory);
        let (result, asked) = first_mirror_fails(&set, || Fake::HashMismatch).await;
        assert_eq!(result.expect("served").0, 1);
        assert_eq!(asked, [0, 1]);
        assert!(matches!(set.pick(&ItemState::<Fake>::default()), Pick::Now(s) if s.index == 0));

        // A dead URL: the next source serves this item too, but the mirror backs off for the
        // whole run, so the next item does not ask it first.
        let memory = SourceMemory::default();
        let set = sources(&memory);
        let (result, asked) = first_mirror_fails(&set, || Fake::Dead).await;
        assert_eq!(result.expect("served").0, 1);
        assert_eq!(asked, [0, 1]);
        assert!(matches!(set.pick(&ItemState::<Fake>::default()), Pick::Now(s) if s.index == 1));
        // The report counts each failure once, whatever its kind.
        assert_eq!(set.report()[0].failures[0].count, 1);
    }

    #[tokio::test]
    async fn a_mismatch_everywhere_exhausts_without_retrying_any_source() {
        let memory = SourceMemory::default();
        let set = sources(&memory);
        let mut calls = 0;
        let result: Result<((), _), _> = set
            .first_success("item", &Silent, |_| {
                calls += 1;
                async { Err(Fake::HashMismatch) }
            })
            .await;
        let Err(FallbackError::Exhausted { attempts, .. }) = result else {
            panic!("expected every source to be tried once");
        };
        assert_eq!((calls, attempts.len()), (3, 3));
    }

    #[tokio::test]
    async fn give_up_stops_at_once() {
        let memory = SourceMemory::default();
        let set = sources(&memory);
        let mut calls = 0;
        let result: Result<((), _), _> = set
            .first_success("item", &Silent, |_| {
                calls += 1;
                async { Err(Fake::DiskFull) }
            })
            .await;
        assert!(matches!(result, Err(FallbackError::GiveUp(Fake::DiskFull))));
        assert_eq!(calls, 1, "no other source is asked after a give-up");
    }

    /// Records the notices a run shows.
    #[derive(Default)]
    struct Notices(Mutex<Vec<String>>);

    impl Reporter for Notices {
        fn notice(&self, line: &str) {
            self.0.lock().expect("lock").push(line.to_owned());
        }
    }

    #[tokio::test]
    async fn a_silent_source_is_hedged_once_then_asked_last_and_remembered() {
        let memory = SourceMemory::default();
        memory.load_health(None);
        let set = sources(&memory);
        let notices = Notices::default();
        // The first mirror never answers; the others do at once.
        let ask = |s: Arc<Source>| async move {
            if s.index == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, Fake>(s.index)
        };
        let started = std::time::Instant::now();
        let (v, by) = set
            .first_success("item", &notices, ask)
            .await
            .expect("served");
        let took = started.elapsed();
        assert_eq!((v, by.index), (1, 1));
        assert!(
            took >= FIRST_BYTE_WAIT && took < FIRST_BYTE_WAIT * 2,
            "{took:?}"
        );
        let lines = notices.0.lock().expect("lock").clone();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("has not answered in 2 s; asking mirror http://127.0.0.1:8"),
            "{lines:?}"
        );
        // The next item does not wait on it: it is asked last.
        let started = std::time::Instant::now();
        let (v, _) = set
            .first_success("item", &notices, ask)
            .await
            .expect("served");
        assert_eq!(v, 1);
        assert!(started.elapsed() < FIRST_BYTE_WAIT, "waited again");
        assert!(matches!(set.pick(&ItemState::<Fake>::default()), Pick::Now(s) if s.index == 1));

        // The next run, with the record this one leaves: the silent mirror comes last, and
        // the run says so once.
        let saved = memory.health_to_save(None).expect("observations to save");
        let next = SourceMemory::default();
        next.load_health(Some(&saved));
        let set = sources(&next);
        let order: Vec<_> = set.sources().iter().map(|s| s.label().to_owned()).collect();
        assert_eq!(
            order,
            [
                "http://127.0.0.1:8",
                "http://127.0.0.1:9",
                "http://127.0.0.1:7"
            ]
        );
        let notices = Notices::default();
        set.announce(&notices);
        set.announce(&notices);
        let lines = notices.0.lock().expect("lock").clone();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("mirror http://127.0.0.1:7 did not answer in time"));
        assert!(set
            .resolving_mirrors()
            .all(|s| s.label() != "http://127.0.0.1:7"));
    }

    /// Resumable cuts: an operation that makes progress and is cut again and again is not
    /// excluded after `MAX_FAILURES_PER_ITEM`, as one that makes none is.
    struct Cuts {
        left: u32,
        progressed: bool,
        calls: u32,
    }

    impl Operation for Cuts {
        type Output = u32;
        type Error = Fake;
        async fn attempt(
            &mut self,
            _: Arc<Source>,
            _: &mut Fallback<'_, Fake>,
        ) -> Outcome<u32, Fake> {
            self.calls += 1;
            if self.left == 0 {
                return Outcome::Done(self.calls);
            }
            self.left -= 1;
            Outcome::Failed {
                error: Fake::Dead,
                progressed: self.progressed,
            }
        }
    }

    #[tokio::test]
    async fn progressed_cuts_do_not_count_against_the_item() {
        let memory = SourceMemory::default();
        let set = sources(&memory);
        // Four cuts in a row, each after progress: no source is excluded, the fifth try
        // finishes.
        let mut cuts = Cuts {
            left: 4,
            progressed: true,
            calls: 0,
        };
        let mut fallback = Fallback::new(&set, "item", &Silent);
        let (calls, _) = fallback.run(&mut cuts).await.expect("finished");
        assert_eq!(calls, 5);
        assert!(set
            .sources()
            .iter()
            .all(|s| !fallback.item().is_excluded(s)));

        // Without progress, a source is done for the item after its third dead answer.
        let memory = SourceMemory::default();
        let set = sources(&memory);
        let mut cuts = Cuts {
            left: u32::MAX,
            progressed: false,
            calls: 0,
        };
        let result = Fallback::new(&set, "item", &Silent).run(&mut cuts).await;
        let Err(FallbackError::Exhausted { attempts, .. }) = result else {
            panic!("expected the sources to run out");
        };
        assert_eq!(cuts.calls, 3 * MAX_FAILURES_PER_ITEM);
        assert_eq!(attempts.len(), 3 * MAX_FAILURES_PER_ITEM as usize);
    }
}
