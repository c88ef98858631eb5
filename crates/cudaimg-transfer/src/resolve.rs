//! Which digest a tag names, and a manifest by digest from whichever source has it. The
//! official registry is the authority on tags: a HEAD there decides.
//! Mirrors that may resolve are asked too, and one that answers with another digest is
//! reported as stale. When the official registry is out of reach (the common case behind a
//! blocked link), the mirrors' answer is used if they agree, with a warning that it is only
//! mirror-asserted; `--require-upstream` refuses that.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join_all, select, Either};

use crate::error::PullError;
use cudaimg_mirrors::fallback::{Attempt, FallbackError};
use cudaimg_mirrors::sources::{Source, SourceSet};
use cudaimg_mirrors::tag_list::out_of_reach;
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{self, Manifest};
use cudaimg_oci::progress::Reporter;
use cudaimg_oci::reference::ImageRef;
use cudaimg_registry::{FetchedManifest, RegistryError};

/// How long a mirror's answer to a tag lookup is waited for once the official registry
/// said it has no such tag, so a silent mirror costs that pull at most this much.
const MIRROR_RESOLVE_BUDGET: Duration = Duration::from_secs(3);
/// How long mirrors still get once the official registry has answered.
const MIRROR_GRACE: Duration = Duration::from_millis(300);

/// Who decided which digest the image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolvedBy {
    /// The official registry answered the tag.
    Official,
    /// The official registry was out of reach; mirrors that agree answered.
    Mirrors,
    /// The reference named a digest.
    Digest,
    /// `cudaimg.lock` named the digest.
    Lock,
}

pub(crate) async fn resolve_tag(
    sources: &SourceSet,
    image: &ImageRef,
    tag: &str,
    require_upstream: bool,
    reporter: &dyn Reporter,
) -> Result<(Digest, ResolvedBy), PullError> {
    let repo = image.repository.as_str();
    let what = format!("tag of `{image}`");
    let mirrors: Vec<_> = sources.resolving_mirrors().cloned().collect();
    // Every source set ends with the official endpoint; this guards the invariant.
    let official = sources
        .official()
        .cloned()
        .ok_or_else(|| PullError::Resolve {
            reference: image.to_string(),
            source: FallbackError::Exhausted {
                what: what.clone(),
                attempts: Vec::new(),
            },
        })?;
    let asked = Asked {
        sources,
        official: &official,
        mirrors: &mirrors,
        wait_alone: !require_upstream,
        reporter,
    };
    let (from_official, from_mirrors) = asked.ask(repo, tag).await;
    let mut answers: Vec<(String, Digest)> = Vec::new();
    let mut attempts: Vec<Attempt> = Vec::new();
    for (m, r) in mirrors.iter().zip(from_mirrors) {
        match r {
            // Still thinking after the grace: neither stale nor failed.
            None => {}
            Some(Ok(d)) => {
                // An answer is a request the source served: it counts in the report.
                sources.resolved_by_head(m);
                answers.push((m.label().to_owned(), d));
            }
            Some(Err(e)) => {
                sources.note_failure(m, &e, reporter, &what);
                attempts.push(Attempt {
                    source: m.label().to_owned(),
                    role: m.role,
                    error: e,
                });
            }
        }
    }
    let official_failed = |e: &RegistryError| sources.note_failure(&official, e, reporter, &what);
    let e = match from_official {
        Ok(digest) => {
            sources.resolved_by_head(&official);
            for (mirror, d) in &answers {
                if *d != digest {
                    sources.warn(format!(
                        "mirror {mirror} is stale or differs for `{image}`: it serves {d}, \
                         the official registry {digest}; {digest} was pulled"
                    ));
                }
            }
            return Ok((digest, ResolvedBy::Official));
        }
        Err(e) => {
            official_failed(&e);
            e
        }
    };
    if e.is_not_found() {
        return Err(PullError::NotUpstream {
            reference: image.to_string(),
            official: official.label().to_owned(),
            held_by: answers,
            mirror_errors: attempts
                .iter()
                .map(|a| (a.source.clone(), cudaimg_mirrors::sources::chain(&a.error)))
                .collect(),
        });
    }
    if let RegistryError::Denied { .. } = e {
        // A refusal is an answer, not an outage: Docker Hub refuses unknown repositories
        // this way. Mirrors do not get to overrule it.
        return Err(PullError::Refused {
            reference: image.to_string(),
            source: e,
        });
    }
    if require_upstream {
        return Err(PullError::UpstreamRequired {
            reference: image.to_string(),
            source: e,
        });
    }
    let unreachable = OutOfReach {
        official: &official,
        error: e,
        what,
        attempts,
    };
    mirrors_decide(sources, image, answers, unreachable)
}

/// The official registry's failure, and the mirrors' failures before it.
struct OutOfReach<'a> {
    official: &'a Source,
    error: RegistryError,
    what: String,
    attempts: Vec<Attempt>,
}

/// With the official registry out of reach, mirrors that agree decide, with a warning.
fn mirrors_decide(
    sources: &SourceSet,
    image: &ImageRef,
    answers: Vec<(String, Digest)>,
    failed: OutOfReach<'_>,
) -> Result<(Digest, ResolvedBy), PullError> {
    let OutOfReach {
        official,
        error: e,
        what,
        mut attempts,
    } = failed;
    let Some((_, first)) = answers.first() else {
        attempts.push(Attempt {
            source: official.label().to_owned(),
            role: official.role,
            error: e,
        });
        return Err(PullError::Resolve {
            reference: image.to_string(),
            source: FallbackError::Exhausted { what, attempts },
        });
    };
    if answers.iter().any(|(_, d)| d != first) {
        return Err(PullError::MirrorsDisagree {
            reference: image.to_string(),
            answers,
        });
    }
    let names: Vec<&str> = answers.iter().map(|(m, _)| m.as_str()).collect();
    sources.warn(format!(
        "the official registry {} is out of reach ({}): `{image}` was resolved to {first} \
         by {} only. That digest is mirror-asserted, not confirmed upstream; \
         `--require-upstream` refuses this, and `cudaimg lock` pins a digest you trust",
        official.label(),
        cudaimg_mirrors::sources::chain(&e),
        if names.len() == 1 {
            format!("mirror {}", names[0])
        } else {
            format!("mirrors {} (they agree)", names.join(", "))
        },
    ));
    Ok((first.clone(), ResolvedBy::Mirrors))
}

type Answer = Result<Digest, RegistryError>;

/// Who is asked which digest a tag names.
struct Asked<'a> {
    sources: &'a SourceSet,
    official: &'a Source,
    mirrors: &'a [Arc<Source>],
    /// Mirrors may decide when the official registry is out of reach (no
    /// `--require-upstream`): then they are all there is, and get the stall timeout.
    wait_alone: bool,
    reporter: &'a dyn Reporter,
}

impl Asked<'_> {
    /// Asks the official registry and the mirrors at once. Each mirror's answer lands in
    /// its slot as it comes. Once the official registry has answered, slow mirrors get only
    /// a short grace: staleness checks must not make every pull wait for a silent mirror.
    /// When it answered "no such tag", they get [`MIRROR_RESOLVE_BUDGET`] in all; when it is
    /// out of reach, the mirrors are the only sources in reach and get the whole stall
    /// timeout (their requests' own limit), said as it starts.
    async fn ask(&self, repo: &str, tag: &str) -> (Answer, Vec<Option<Answer>>) {
        let started = std::time::Instant::now();
        let slots: Vec<std::sync::Mutex<Option<Answer>>> = self
            .mirrors
            .iter()
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        let from_official = {
            let ask_mirrors =
                join_all(self.mirrors.iter().zip(&slots).map(|(m, slot)| async move {
                    let r = m.client.resolve(repo, tag).await;
                    if let Ok(mut s) = slot.lock() {
                        *s = Some(r);
                    }
                }));
            let ask_official = self.official.client.resolve(repo, tag);
            futures_util::pin_mut!(ask_mirrors, ask_official);
            let (from_official, mirrors_done) = match select(ask_official, &mut ask_mirrors).await {
                Either::Left((r, _)) => (r, false),
                Either::Right((_, official_left)) => (official_left.await, true),
            };
            if !mirrors_done {
                match &from_official {
                    Ok(_) => {
                        let _ = tokio::time::timeout(MIRROR_GRACE, &mut ask_mirrors).await;
                    }
                    Err(e) if self.wait_alone && out_of_reach(e) => {
                        for (m, slot) in self.mirrors.iter().zip(&slots) {
                            if slot.lock().is_ok_and(|s| s.is_none()) {
                                self.sources.waiting_for_alone(m, self.reporter);
                            }
                        }
                        ask_mirrors.await;
                    }
                    Err(_) => {
                        let left = MIRROR_RESOLVE_BUDGET.saturating_sub(started.elapsed());
                        let _ = tokio::time::timeout(left, &mut ask_mirrors).await;
                    }
                }
            }
            from_official
        };
        // With the official registry failed, a mirror still silent is a stalled one.
        let from_mirrors = self
            .mirrors
            .iter()
            .zip(slots)
            .map(|(m, s)| match s.into_inner().ok().flatten() {
                None if from_official.is_err() => Some(Err(RegistryError::Stalled {
                    url: m.client.manifest_url(repo, tag),
                    secs: MIRROR_RESOLVE_BUDGET.as_secs(),
                })),
                other => other,
            })
            .collect();
        (from_official, from_mirrors)
    }
}

async fn fetch_parsed(
    client: &cudaimg_registry::RegistryClient,
    repo: &str,
    reference: &str,
    expected: Option<&Digest>,
) -> Result<(FetchedManifest, Manifest), RegistryError> {
    let m = client.manifest(repo, reference, expected).await?;
    let parsed = manifest::parse(&m.bytes, m.media_type.as_deref()).map_err(|source| {
        RegistryError::BadManifest {
            url: m.url.clone(),
            source,
        }
    })?;
    Ok((m, parsed))
}

/// A manifest by digest from the first source that has it, verified against the digest and,
/// when a descriptor gave it, the size.
pub(crate) async fn manifest_by_digest(
    sources: &SourceSet,
    repo: &str,
    digest: &Digest,
    size: Option<u64>,
    what: &str,
    reporter: &dyn Reporter,
) -> Result<((FetchedManifest, Manifest), Arc<Source>), FallbackError> {
    sources
        .first_success(what, reporter, |s| async move {
            let (m, parsed) = fetch_parsed(&s.client, repo, digest.as_str(), Some(digest)).await?;
            match size {
                Some(want) if m.bytes.len() as u64 != want => Err(RegistryError::SizeMismatch {
                    url: m.url,
                    expected: want,
                    actual: m.bytes.len() as u64,
                }),
                _ => Ok((m, parsed)),
            }
        })
        .await
}
