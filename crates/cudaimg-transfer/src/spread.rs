//! Spreading a pull's blobs over its healthy mirrors: each mirror is its own link, so a
//! blob goes first to the usable mirror with the fewest bytes still in flight (ties to the
//! one asked first), and the pull fetches its largest blobs first, so that the assignment
//! balances the links (longest first). Only the first choice of a blob is made here: the
//! fallback loop still decides what a failure does, and the official registry is never
//! preferred over a mirror.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cudaimg_mirrors::sources::{Role, Source};

/// Bytes in flight per source (by index), for one pull.
#[derive(Default)]
pub(super) struct Spread {
    load: Mutex<BTreeMap<usize, u64>>,
}

/// Bytes counted against sources until dropped (the blob is done, or given up).
pub(super) struct Lease<'a> {
    spread: &'a Spread,
    shares: Vec<(usize, u64)>,
}

impl Drop for Lease<'_> {
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
    pub(super) fn assign<'a>(
        &'a self,
        usable: &[Arc<Source>],
        bytes: u64,
    ) -> Option<(Arc<Source>, Lease<'a>)> {
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
        let lease = Lease {
            spread: self,
            shares: vec![(chosen.index, bytes)],
        };
        Some((chosen, lease))
    }

    /// A blob filled from all of `sources` at once: an equal share counted on each.
    pub(super) fn share<'a>(&'a self, sources: &[Arc<Source>], bytes: u64) -> Lease<'a> {
        let each = bytes / (sources.len().max(1) as u64);
        let shares: Vec<(usize, u64)> = sources.iter().map(|s| (s.index, each)).collect();
        if let Ok(mut load) = self.load.lock() {
            for (index, b) in &shares {
                *load.entry(*index).or_default() += b;
            }
        }
        Lease {
            spread: self,
            shares,
        }
    }
}
