//! Selection: a [`Spec`] resolved against the registries' tag lists and fetched into the
//! store, as the [`StoredSet`]s a [`crate::plan::Plan`] is computed from.
//!
//! Trust is pull's: the official registry is the authority on tags. A selector's tag list
//! is asked of the official registry first; only when it is out of reach do the mirrors
//! answer (in mirrors.toml's order), with a warning that a mirror's list can lag. Each
//! selected tag is then fetched through the pull path, which resolves the tag at the
//! official registry too (a tag a mirror still lists but the official registry deleted is
//! refused, as `pull` refuses it). Blobs already in the store are not fetched again.
//!
//! An entry without `platforms` is fetched whole (`pull --all-platforms`: the index and
//! every child, attestations included). With `platforms`, each chosen platform is pulled as
//! a single-platform pull does. When that is not every child of the index, the image is
//! carried as the chosen platform's own manifest (one chosen) or as a filtered index of the
//! chosen children (several), with upstream's index beside it
//! ([`Store::index_subset`](cudaimg_store::Store::index_subset)): a registry refuses an
//! index that names manifests it lacks.

use std::collections::BTreeMap;

use cudaimg_config::Canonical;
use cudaimg_mirrors::fallback::FallbackError;
use cudaimg_mirrors::sources::Role;
use cudaimg_oci::digest::Digest;
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::Reporter;
use cudaimg_store::StoredSet;
use cudaimg_transfer::{PullTarget, Session};
use serde::Serialize;

use crate::spec::{Selector, Spec};
use crate::SyncError;

/// Tags asked for per page of a tag list.
const TAG_PAGE: u32 = 1000;

/// What a spec selected, fetched into the store.
#[derive(Debug, Clone)]
pub struct Selection {
    /// One per image, sorted by name.
    pub images: Vec<SelectedImage>,
    /// What each selector entry read and kept, in the spec's order.
    pub entries: Vec<EntryReport>,
    pub warnings: Vec<String>,
}

/// One selected image, whole in the store.
#[derive(Debug, Clone)]
pub struct SelectedImage {
    /// The canonical reference, e.g. `docker.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04`.
    pub name: String,
    /// `None`: every platform.
    pub platforms: Option<Vec<Platform>>,
    pub set: StoredSet,
}

/// What one entry of the spec selected.
#[derive(Debug, Clone, Serialize)]
pub struct EntryReport {
    /// The entry's line in the spec.
    pub line: usize,
    /// The repository whose tags were read (`None` for `references`).
    pub repository: Option<String>,
    /// Where the tag list came from, and how many tags it had.
    pub source: Option<String>,
    pub tags_listed: usize,
    /// The references the entry selected, sorted.
    pub selected: Vec<String>,
}

impl Selection {
    /// The stored sets, in the order of [`Selection::images`].
    pub fn sets(&self) -> Vec<StoredSet> {
        self.images.iter().map(|i| i.set.clone()).collect()
    }
}

/// Resolves `spec` through the session's mirrors and fetches what it selects into the
/// session's store (see the module docs).
pub async fn select(
    session: &Session,
    spec: &Spec,
    reporter: &dyn Reporter,
) -> Result<Selection, SyncError> {
    let config = session.config().map_err(SyncError::Config)?;
    let mut warnings = Vec::new();
    let mut entries = Vec::new();
    // Canonical reference -> (the canonical name, platforms: None = every one).
    let mut wanted: BTreeMap<String, (Canonical, Option<Vec<Platform>>)> = BTreeMap::new();
    for entry in &spec.entries {
        let mut report = EntryReport {
            line: entry.line,
            repository: entry.selector.repository().map(str::to_owned),
            source: None,
            tags_listed: 0,
            selected: Vec::new(),
        };
        let names: Vec<Canonical> = match &entry.selector {
            Selector::References(refs) => refs
                .iter()
                .map(|r| config.canonicalize(r))
                .collect::<Result<_, _>>()?,
            selector => {
                let repo = config.canonicalize(selector.repository().unwrap_or_default())?;
                let (tags, source, warning) = list_tags(session, &repo, reporter).await?;
                warnings.extend(warning);
                report.source = Some(source);
                report.tags_listed = tags.len();
                let mut kept: Vec<&String> = tags.iter().filter(|t| selector.matches(t)).collect();
                kept.sort();
                if kept.is_empty() {
                    warnings.push(format!(
                        "{}:{}: the entry for `{}` matches none of its {} tags",
                        spec.path.display(),
                        entry.line,
                        repo.image.name(),
                        tags.len()
                    ));
                }
                kept.into_iter()
                    .map(|t| {
                        let mut c = repo.clone();
                        c.image.tag = Some(t.clone());
                        c
                    })
                    .collect()
            }
        };
        for name in names {
            let key = name.image.to_string();
            report.selected.push(key.clone());
            match wanted.get_mut(&key) {
                None => {
                    wanted.insert(key, (name, entry.platforms.clone()));
                }
                // Two entries select one image: it is carried once, with the platforms of
                // both (every platform when either asks for all).
                Some((_, have)) => match (have.as_mut(), &entry.platforms) {
                    (Some(list), Some(more)) => {
                        for p in more {
                            if !list.contains(p) {
                                list.push(p.clone());
                            }
                        }
                    }
                    (_, None) => *have = None,
                    (None, Some(_)) => {}
                },
            }
        }
        report.selected.sort();
        report.selected.dedup();
        entries.push(report);
    }

    let mut images = Vec::with_capacity(wanted.len());
    for (key, (name, platforms)) in wanted {
        let (set, mut w) = fetch(session, &key, &name, platforms.as_deref(), reporter).await?;
        warnings.append(&mut w);
        images.push(SelectedImage {
            name: key,
            platforms,
            set,
        });
    }
    Ok(Selection {
        images,
        entries,
        warnings,
    })
}

/// A repository's tags: the official registry's list; the mirrors' only when the official
/// registry is out of reach. Returns the tags, the source's label, and a warning when a
/// mirror answered.
async fn list_tags(
    session: &Session,
    repo: &Canonical,
    reporter: &dyn Reporter,
) -> Result<(Vec<String>, String, Option<String>), SyncError> {
    let set = session.sources(repo)?;
    let repository = repo.image.repository.clone();
    let what = format!("the tag list of {}", repo.image.name());
    if let Some(official) = set.official().cloned() {
        match official.client.tags(&repository, TAG_PAGE).await {
            Ok(list) => return Ok((list.tags, official.label().to_owned(), None)),
            // The authority says there is no such repository: no mirror overrules it.
            Err(e) if e.is_not_found() => {
                return Err(SyncError::Tags(FallbackError::Exhausted {
                    what,
                    attempts: vec![cudaimg_mirrors::fallback::Attempt {
                        source: official.label().to_owned(),
                        role: Role::Official,
                        error: e,
                    }],
                }))
            }
            Err(e) => set.note_failure(&official, &e, reporter, &what),
        }
    }
    let (list, source) = set
        .first_success(&what, reporter, |s| {
            let repository = repository.clone();
            // The official registry, asked and failed above, comes last again: a retry.
            async move { s.client.tags(&repository, TAG_PAGE).await }
        })
        .await
        .map_err(SyncError::Tags)?;
    let warning = (source.role == Role::Mirror).then(|| {
        format!(
            "{what} came from the mirror {}: the official registry was out of reach, and a \
             mirror's list can lag it",
            source.label()
        )
    });
    Ok((list.tags, source.label().to_owned(), warning))
}

/// Fetches one image into the store and returns what is stored for it.
async fn fetch(
    session: &Session,
    key: &str,
    name: &Canonical,
    platforms: Option<&[Platform]>,
    reporter: &dyn Reporter,
) -> Result<(StoredSet, Vec<String>), SyncError> {
    let target = PullTarget {
        input: key,
        name,
        pin: None,
        platform_explicit: true,
    };
    let pull_failed = |source| SyncError::Pull {
        reference: key.to_owned(),
        source: Box::new(source),
    };
    let store = session.store()?;
    let Some(platforms) = platforms else {
        let report = session
            .pull_all(&target, reporter)
            .await
            .map_err(pull_failed)?;
        let stored = report.canonical.to_string();
        let set = store
            .image_set(&stored)?
            .ok_or_else(|| SyncError::NotStored(stored.clone()))?;
        return Ok((set, report.warnings));
    };
    let mut warnings = Vec::new();
    let mut index: Option<Digest> = None;
    let mut chosen = Vec::new();
    let mut single = None;
    for p in platforms {
        let report = session
            .pull(&target, p, reporter)
            .await
            .map_err(pull_failed)?;
        warnings.extend(report.warnings);
        match (&index, report.index_digest) {
            (_, None) => single = Some(report.canonical.to_string()),
            (None, Some(d)) => index = Some(d),
            (Some(had), Some(d)) if *had != d => {
                return Err(SyncError::Moved {
                    reference: key.to_owned(),
                    first: had.clone(),
                    then: d,
                })
            }
            (Some(_), Some(_)) => {}
        }
        if !chosen.contains(&report.digest) {
            chosen.push(report.digest);
        }
    }
    let set = match (index, single) {
        (Some(index), None) => store.index_subset(key, &index, &chosen).await?,
        // A single-platform image of one of the platforms asked for: carried as it is.
        (None, Some(stored)) => store
            .image_set(&stored)?
            .ok_or_else(|| SyncError::NotStored(stored.clone()))?,
        (Some(_), Some(_)) | (None, None) => {
            return Err(SyncError::NotStored(key.to_owned()));
        }
    };
    Ok((set, warnings))
}
