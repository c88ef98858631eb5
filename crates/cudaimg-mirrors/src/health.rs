//! Mirror health that outlives a run: per source URL, its recent timeouts and failures, how
//! fast it answered, and until when it counts as unhealthy. A mirror that kept a run waiting
//! (it accepted the connection and sent nothing within the first-byte wait, `FIRST_BYTE_WAIT`)
//! is asked last by the runs after it, until the mark expires ([`UNHEALTHY_FOR`]), so a silent
//! mirror costs one short wait once, not one on every run.
//!
//! This module is the record and its rules only (what it reads as, when a mark expires, how a
//! run's observations fold in); the bytes live in the store (`Store::read_state`), and the
//! transfer session carries them between the two, so neither crate depends on the other.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The state file's name in the store.
pub const STATE_FILE: &str = "mirror-health.json";
/// How long a mirror that made a run wait is asked last.
pub const UNHEALTHY_FOR: Duration = Duration::from_secs(15 * 60);
/// Entries not updated for this long are dropped, so the file stays small.
const FORGET_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

/// Seconds since the epoch, the file's clock.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the runs learned about one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Entry {
    /// Runs in a row in which it did not answer in time.
    pub timeouts: u32,
    /// Failures (any kind) recorded by the last run that used it.
    pub failures: u32,
    /// How long its last good first answer took.
    pub latency_ms: Option<u64>,
    /// Asked last until then (seconds since the epoch); 0: healthy.
    pub unhealthy_until: u64,
    /// When the entry last changed.
    pub updated: u64,
}

impl Entry {
    /// Still marked unhealthy at `now`.
    pub fn unhealthy_at(&self, now: u64) -> bool {
        self.unhealthy_until > now
    }
}

/// The whole record, by source URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Book {
    pub version: u32,
    pub sources: BTreeMap<String, Entry>,
}

/// What one run saw of one source, folded into the book when the run ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed {
    /// It kept a request waiting past the first-byte wait.
    pub slow: bool,
    /// It answered at least one request.
    pub answered: bool,
    pub failures: u32,
    pub latency_ms: Option<u64>,
}

impl Book {
    /// Reads the file's bytes; anything unreadable is an empty book (it is only a hint).
    pub fn parse(bytes: &[u8]) -> Book {
        serde_json::from_slice::<Book>(bytes)
            .ok()
            .filter(|b| b.version == 1)
            .unwrap_or_default()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.clone();
        b.version = 1;
        serde_json::to_vec_pretty(&b).unwrap_or_default()
    }

    /// The entry of a source, if it is marked unhealthy at `now`.
    pub fn unhealthy(&self, url: &str, now: u64) -> Option<&Entry> {
        self.sources.get(url).filter(|e| e.unhealthy_at(now))
    }

    /// Folds a run's observation of `url` in: a wait marks it unhealthy for
    /// [`UNHEALTHY_FOR`]; an answer without a wait clears the mark.
    pub fn observe(&mut self, url: &str, seen: Observed, now: u64) {
        if !seen.slow && !seen.answered && seen.failures == 0 {
            return;
        }
        let e = self.sources.entry(url.to_owned()).or_default();
        if seen.slow {
            e.timeouts = e.timeouts.saturating_add(1);
            e.unhealthy_until = now + UNHEALTHY_FOR.as_secs();
        } else if seen.answered {
            e.timeouts = 0;
            e.unhealthy_until = 0;
        }
        e.failures = seen.failures;
        if seen.latency_ms.is_some() {
            e.latency_ms = seen.latency_ms;
        }
        e.updated = now;
        let horizon = now.saturating_sub(FORGET_AFTER.as_secs());
        self.sources.retain(|_, e| e.updated >= horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_marks_a_mirror_until_expiry_and_an_answer_clears_it() {
        let mut book = Book::default();
        let url = "http://mirror.test";
        let slow = Observed {
            slow: true,
            ..Observed::default()
        };
        book.observe(url, slow, 1000);
        let book = Book::parse(&book.to_bytes());
        assert!(book.unhealthy(url, 1000).is_some());
        assert!(book
            .unhealthy(url, 1000 + UNHEALTHY_FOR.as_secs() - 1)
            .is_some());
        assert!(book
            .unhealthy(url, 1000 + UNHEALTHY_FOR.as_secs())
            .is_none());

        let mut book = book;
        book.observe(url, slow, 1001);
        assert_eq!(book.sources[url].timeouts, 2);
        let good = Observed {
            answered: true,
            latency_ms: Some(12),
            ..Observed::default()
        };
        book.observe(url, good, 1002);
        assert!(book.unhealthy(url, 1002).is_none());
        assert_eq!(
            (book.sources[url].timeouts, book.sources[url].latency_ms),
            (0, Some(12))
        );
        // A source the run never asked is not recorded; old entries are forgotten.
        book.observe("http://other.test", Observed::default(), 1003);
        assert!(!book.sources.contains_key("http://other.test"));
        book.observe(
            "http://other.test",
            good,
            1003 + FORGET_AFTER.as_secs() + 10,
        );
        assert!(!book.sources.contains_key(url));
    }

    #[test]
    fn a_damaged_file_reads_as_empty() {
        assert_eq!(Book::parse(b"{not json"), Book::default());
        assert_eq!(
            Book::parse(b"{\"version\":7,\"sources\":{}}"),
            Book::default()
        );
    }
}
