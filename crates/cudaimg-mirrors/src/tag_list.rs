//! The one rule for a repository's tag list, for every command that reads one (`tags`,
//! `sync`, the hint after "no such tag"): the official registry's list, since it is the
//! authority and a mirror's list can lag it; the mirrors' (in order, the official endpoint
//! retried last) only when the official registry is out of reach.
//!
//! "Out of reach" is the rule a tag's digest follows too ([`out_of_reach`]): a refused
//! connection, a timeout, a 5xx or a 429. The official registry's "no such repository" and
//! its refusal are answers: no mirror overrules them, since a mirror that still lists a
//! repository the authority does not know is stale, and what it lists could not be pulled
//! (a pull resolves its tag at the official registry).

use std::sync::Arc;

use cudaimg_oci::progress::Reporter;
use cudaimg_registry::{RegistryError, TagList};

use crate::fallback::{Attempt, FallbackError};
use crate::sources::{Source, SourceSet};

/// A tag list, who gave it, and whether the official registry was asked and out of reach.
pub struct Listed {
    pub list: TagList,
    pub source: Arc<Source>,
    pub official_down: bool,
}

impl Listed {
    /// The warning a list from a mirror carries, `None` for the official registry's.
    pub fn mirror_warning(&self, what: &str) -> Option<String> {
        (self.source.role == crate::sources::Role::Mirror).then(|| {
            format!(
                "{what} came from the mirror {}{}: a mirror's list can lag the official \
                 registry's, so the newest tags may be missing",
                self.source.label(),
                if self.official_down {
                    " because the official registry did not answer"
                } else {
                    ""
                }
            )
        })
    }
}

/// The official registry did not answer at all (as opposed to answering "no such tag or
/// repository" or "denied"): only then may mirrors answer in its place.
pub fn out_of_reach(e: &RegistryError) -> bool {
    !e.is_not_found() && !matches!(e, RegistryError::Denied { .. })
}

impl SourceSet {
    /// The tag list of `repo` under the module's rule; `what` names it in reports and errors
    /// ("the tag list of nvidia/cuda").
    pub async fn tag_list(
        &self,
        repo: &str,
        page_size: u32,
        what: &str,
        reporter: &dyn Reporter,
    ) -> Result<Listed, FallbackError> {
        let mut official_down = false;
        if let Some(official) = self.official().cloned() {
            match official.client.tags(repo, page_size).await {
                Ok(list) => {
                    self.succeeded(&official);
                    return Ok(Listed {
                        list,
                        source: official,
                        official_down,
                    });
                }
                Err(e) if !out_of_reach(&e) => {
                    self.note_failure(official.as_ref(), &e, reporter, what);
                    return Err(FallbackError::Exhausted {
                        what: what.to_owned(),
                        attempts: vec![Attempt {
                            source: official.label().to_owned(),
                            role: official.role,
                            error: e,
                        }],
                    });
                }
                Err(e) => {
                    self.note_failure(official.as_ref(), &e, reporter, what);
                    official_down = true;
                }
            }
        }
        let (list, source) = self
            .first_success(what, reporter, |s| async move {
                s.client.tags(repo, page_size).await
            })
            .await?;
        Ok(Listed {
            list,
            source,
            official_down,
        })
    }
}
