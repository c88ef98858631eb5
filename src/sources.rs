//! The mirror policy at run time: the ordered sources for one registry, and the single loop
//! that falls from one source to the next.
//!
//! Order: the mirror named in the reference (`mirror.example/nvidia/cuda`) first, then the
//! configured mirrors in file order, then the official endpoint. A source that refused the
//! connection is remembered as down for the rest of the run, so a dead mirror costs one
//! connect attempt, not one per blob.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::progress::Reporter;
use crate::registry::{HttpClients, Next, RegistryClient, RegistryError};

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
    down: AtomicBool,
}

impl Source {
    pub fn label(&self) -> &str {
        self.client.label()
    }
}

/// The sources of one registry, in the order they are asked.
pub struct SourceSet {
    sources: Vec<Arc<Source>>,
    notes: Mutex<Vec<(String, &'static str, String)>>,
}

/// One failed attempt, for the error that lists them all.
#[derive(Debug)]
pub struct Attempt {
    pub source: String,
    pub role: Role,
    pub error: RegistryError,
}

#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error("{}", describe(.what, .attempts))]
    Exhausted {
        what: String,
        attempts: Vec<Attempt>,
    },
    #[error(transparent)]
    GiveUp(RegistryError),
}

impl FallbackError {
    /// True when the registry itself (or every source) says the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        let FallbackError::Exhausted { attempts, .. } = self else {
            return false;
        };
        let official = attempts.iter().rev().find(|a| a.role == Role::Official);
        match official {
            Some(a) => a.error.is_not_found(),
            None => !attempts.is_empty() && attempts.iter().all(|a| a.error.is_not_found()),
        }
    }
}

fn describe(what: &str, attempts: &[Attempt]) -> String {
    let mut s = format!("could not fetch {what} from any source");
    for a in attempts {
        let _ = write!(s, "\n  - {}: {}", a.source, chain(&a.error));
    }
    s
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
    ) -> Self {
        let reg = config.registry(registry);
        let mut mirrors = reg.mirrors.clone();
        if let Some(host) = preferred {
            if let Some(pos) = mirrors.iter().position(|m| m.authority() == host) {
                let m = mirrors.remove(pos);
                mirrors.insert(0, m);
            }
        }
        let mut sources: Vec<Arc<Source>> = mirrors
            .iter()
            .map(|m| (m, Role::Mirror))
            .chain(std::iter::once((&reg.endpoint, Role::Official)))
            .map(|(e, role)| {
                Arc::new(Source {
                    client: RegistryClient::new(e, http),
                    role,
                    down: AtomicBool::new(false),
                })
            })
            .collect();
        sources.dedup_by(|a, b| a.label() == b.label());
        SourceSet {
            sources,
            notes: Mutex::new(Vec::new()),
        }
    }

    pub fn sources(&self) -> &[Arc<Source>] {
        &self.sources
    }

    /// What went wrong along the way though the operation succeeded, one note per source
    /// and kind of failure.
    pub fn notes(&self) -> Vec<String> {
        self.notes
            .lock()
            .map(|n| n.iter().map(|(_, _, line)| line.clone()).collect())
            .unwrap_or_default()
    }

    fn note(&self, source: &Source, error: &RegistryError) {
        let line = format!(
            "{} {} failed ({}): {}",
            match source.role {
                Role::Mirror => "mirror",
                Role::Official => "registry",
            },
            source.label(),
            error.kind(),
            chain(error)
        );
        if let Ok(mut n) = self.notes.lock() {
            if !n
                .iter()
                .any(|(s, k, _)| s == source.label() && *k == error.kind())
            {
                n.push((source.label().to_owned(), error.kind(), line));
            }
        }
    }

    /// Runs `op` against each source in order until one succeeds.
    pub async fn first_success<T, F, Fut>(
        &self,
        what: &str,
        reporter: &dyn Reporter,
        mut op: F,
    ) -> Result<(T, Arc<Source>), FallbackError>
    where
        F: FnMut(Arc<Source>) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let all_down = self.sources.iter().all(|s| s.down.load(Ordering::Relaxed));
        let mut attempts = Vec::new();
        for source in &self.sources {
            if !all_down && source.down.load(Ordering::Relaxed) {
                continue;
            }
            match op(source.clone()).await {
                Ok(v) => return Ok((v, source.clone())),
                Err(e) if e.next() == Next::GiveUp => return Err(FallbackError::GiveUp(e)),
                Err(e) => {
                    if e.source_is_down() {
                        source.down.store(true, Ordering::Relaxed);
                    }
                    reporter.source_failed(source.label(), what, &e);
                    self.note(source, &e);
                    attempts.push(Attempt {
                        source: source.label().to_owned(),
                        role: source.role,
                        error: e,
                    });
                }
            }
        }
        Err(FallbackError::Exhausted {
            what: what.to_owned(),
            attempts,
        })
    }
}
