//! Which source an item asks next, decided here and nowhere else: the sources' own order
//! ([`SourceSet`]: the mirror named in the reference, the configured mirrors, the official
//! endpoint), sources asked last (an earlier run's health record, or a wait in this run)
//! behind the others, backoff and per-item exclusions ([`ItemState`]), and for a large
//! transfer the mirror with the fewest bytes in flight first ([`Spread`]). The fallback loop
//! walks sources in this order; it does not reorder them.
//!
//! Spreading: each mirror is its own link, so a blob goes first to the usable mirror with
//! the fewest bytes still in flight (ties to the one asked first), and a pull fetches its
//! largest blobs first, so that the assignment balances the links (longest first). Only
//! the first choice of a blob is made that way: the loop still decides what a failure does,
//! and the official registry is never preferred over a mirror.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudaimg_oci::progress::Reporter;
use cudaimg_registry::RegistryError;

use crate::sources::{Role, Source, SourceSet, FIRST_BYTE_WAIT, MAX_WAIT};

/// Per-item bookkeeping: which sources are done for this item, and their failure counts.
pub struct ItemState<E = RegistryError> {
    excluded: HashSet<usize>,
    pub(crate) failures: BTreeMap<usize, u32>,
    pub(crate) resumes: u32,
    pub attempts: Vec<Attempt<E>>,
}

impl<E> Default for ItemState<E> {
    fn default() -> Self {
        ItemState {
            excluded: HashSet::new(),
            failures: BTreeMap::new(),
            resumes: 0,
            attempts: Vec::new(),
        }
    }
}

impl<E> ItemState<E> {
    pub fn exclude(&mut self, source: &Source) {
        self.excluded.insert(source.index);
    }

    /// Lets an excluded source serve the item again.
    pub fn readmit(&mut self, source: &Source) {
        self.excluded.remove(&source.index);
    }

    pub fn is_excluded(&self, source: &Source) -> bool {
        self.excluded.contains(&source.index)
    }
}

/// One failed attempt, for the error that lists them all.
#[derive(Debug)]
pub struct Attempt<E = RegistryError> {
    pub source: String,
    pub role: Role,
    pub error: E,
}

/// The next source to ask for an item.
pub enum Pick {
    Now(Arc<Source>),
    /// Every usable source is backing off; the earliest is free after this long.
    Wait(Duration),
    /// No source is left for this item.
    None,
}

impl SourceSet {
    /// The first source, in order, that is usable for this item now.
    /// Sources asked last (see [`Source::asked_last`]) come after every other.
    pub fn pick<E>(&self, item: &ItemState<E>) -> Pick {
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        let ordered = self.in_order();
        for s in ordered {
            if item.is_excluded(s) || !s.capabilities.pull {
                continue;
            }
            match s.not_before() {
                Some(t) if t > now => earliest = Some(earliest.map_or(t, |e| e.min(t))),
                _ => return Pick::Now(s.clone()),
            }
        }
        match earliest {
            Some(t) => Pick::Wait(t - now),
            None => Pick::None,
        }
    }

    /// The sources in the order they are asked: those asked last after the others.
    pub(crate) fn in_order(&self) -> Vec<&Arc<Source>> {
        let (mut first, last): (Vec<_>, Vec<_>) =
            self.sources().iter().partition(|s| !s.asked_last());
        first.extend(last);
        first
    }

    /// Every source that could serve the item right now, in order. Sources asked last are
    /// left out while another could serve: a slow mirror must not hold up a parallel fill.
    pub fn usable_now<E>(&self, item: &ItemState<E>) -> Vec<Arc<Source>> {
        let now = Instant::now();
        let usable: Vec<Arc<Source>> = self
            .in_order()
            .into_iter()
            .filter(|s| s.capabilities.pull && !item.is_excluded(s))
            .filter(|s| s.not_before().is_none_or(|t| t <= now))
            .cloned()
            .collect();
        if usable.iter().any(|s| !s.asked_last()) {
            usable.into_iter().filter(|s| !s.asked_last()).collect()
        } else {
            usable
        }
    }

    /// How long `source` gets to send a first byte before the loop asks another source too
    /// (or instead, for a blob): [`FIRST_BYTE_WAIT`] while it has neither
    /// answered in this run nor kept it waiting already, and another source could serve the
    /// item; `None` (the request's own stall timeout only) otherwise. So each source costs
    /// the run at most one short wait, and a slow source that is all there is still gets
    /// the full stall timeout: the run says so once (see [`SourceSet::waiting_for_alone`]).
    pub fn first_byte_wait<E>(
        &self,
        source: &Source,
        item: &ItemState<E>,
        reporter: &dyn Reporter,
    ) -> Option<Duration> {
        if source.answered() || source.asked_last() {
            return None;
        }
        if self.another_could_serve(source, item) {
            return Some(FIRST_BYTE_WAIT);
        }
        self.waiting_for_alone(source, reporter);
        None
    }

    /// Whether a source other than `source` could serve the item now: usable, and not
    /// known to be down (its last answer a refused connection).
    fn another_could_serve<E>(&self, source: &Source, item: &ItemState<E>) -> bool {
        self.usable_now(item)
            .iter()
            .any(|s| s.index != source.index && !s.is_down())
    }

    /// Waits for a source to offer itself for `item`, or says none is left.
    pub async fn next_source<E>(&self, item: &ItemState<E>) -> Option<Arc<Source>> {
        loop {
            match self.pick(item) {
                Pick::Now(s) => return Some(s),
                Pick::Wait(d) if d <= MAX_WAIT => tokio::time::sleep(d).await,
                Pick::Wait(_) | Pick::None => return None,
            }
        }
    }
}

/// Bytes in flight per source (by index), for one pull.
#[derive(Default)]
pub struct Spread {
    load: Mutex<BTreeMap<usize, u64>>,
}

/// Bytes counted against sources until dropped (the blob is done, or given up).
pub struct SpreadLease<'a> {
    spread: &'a Spread,
    shares: Vec<(usize, u64)>,
}

impl Drop for SpreadLease<'_> {
    fn drop(&mut self) {
        if let Ok(mut load) = self.spread.load.lock() {
            for (index, bytes) in &self.shares {
                if let Some(l) = load.get_mut(index) {
                    *l = l.saturating_sub(*bytes);
                }
            }
        }
    }
}

impl Spread {
    /// Of `usable` (in the order they are asked), the mirror to ask first for `bytes`, when
    /// there is a choice of two or more; its lease counts them until dropped.
    pub fn assign<'a>(
        &'a self,
        usable: &[Arc<Source>],
        bytes: u64,
    ) -> Option<(Arc<Source>, SpreadLease<'a>)> {
        let mirrors: Vec<&Arc<Source>> = usable.iter().filter(|s| s.role == Role::Mirror).collect();
        if mirrors.len() < 2 {
            return None;
        }
        let mut load = self.load.lock().ok()?;
        // `min_by_key` keeps the first of equals: the order the sources are asked in.
        let chosen = (*mirrors
            .iter()
            .min_by_key(|s| load.get(&s.index).copied().unwrap_or(0))?)
        .clone();
        *load.entry(chosen.index).or_default() += bytes;
        let lease = SpreadLease {
            spread: self,
            shares: vec![(chosen.index, bytes)],
        };
        Some((chosen, lease))
    }

    /// A blob filled from all of `sources` at once: an equal share counted on each.
    pub fn share<'a>(&'a self, sources: &[Arc<Source>], bytes: u64) -> SpreadLease<'a> {
        let each = bytes / (sources.len().max(1) as u64);
        let shares: Vec<(usize, u64)> = sources.iter().map(|s| (s.index, each)).collect();
        if let Ok(mut load) = self.load.lock() {
            for (index, b) in &shares {
                *load.entry(*index).or_default() += b;
            }
        }
        SpreadLease {
            spread: self,
            shares,
        }
    }
}
