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

use std::collections::{BTreeMap, BTreeSet};

use cudaimg_config::Canonical;

use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{Descriptor, Manifest};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::Reporter;
use cudaimg_store::{StoredChild, StoredManifest, StoredSet};
use cudaimg_transfer::{PullTarget, Session};
use serde::Serialize;

use crate::spec::{Selector, Spec};
use crate::SyncError;

/// How [`select`] works.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selecting {
    /// Read manifests only (`sync --plan`): the sets are built from the registries'
    /// manifests, and no layer or config is downloaded or stored.
    pub manifests_only: bool,
    /// An entry that selects nothing is a warning, not an error (`--allow-empty`).
    pub allow_empty: bool,
}

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
    how: Selecting,
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
                    let at = format!("{}:{}", spec.path.display(), entry.line);
                    if !how.allow_empty {
                        return Err(SyncError::NothingSelected {
                            at,
                            repository: repo.image.name(),
                            tags: tags.len(),
                            nearest: nearest(selector, &tags),
                        });
                    }
                    warnings.push(format!(
                        "{at}: the entry for `{}` matches none of its {} tags",
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
        let (set, mut w) = if how.manifests_only {
            manifests_only(session, &key, &name, platforms.as_deref(), reporter).await?
        } else {
            fetch(session, &key, &name, platforms.as_deref(), reporter).await?
        };
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

/// A repository's tags, under the one tag-list rule
/// ([`cudaimg_mirrors::tag_list`]). Returns the tags, the source's label, and a warning when
/// a mirror answered.
async fn list_tags(
    session: &Session,
    repo: &Canonical,
    reporter: &dyn Reporter,
) -> Result<(Vec<String>, String, Option<String>), SyncError> {
    let set = session.sources(repo)?;
    let what = format!("the tag list of {}", repo.image.name());
    let listed = set
        .tag_list(&repo.image.repository, TAG_PAGE, &what, reporter)
        .await
        .map_err(SyncError::Tags)?;
    let warning = listed.mirror_warning(&what);
    Ok((listed.list.tags, listed.source.label().to_owned(), warning))
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

/// The real values nearest what a selector that matched nothing asked for: for a CUDA
/// selector, the operating systems (or flavors, versions) the tag list has, nearest first;
/// else some tags of the list.
fn nearest(selector: &Selector, tags: &[String]) -> String {
    let parsed: Vec<cudaimg_cuda::CudaTag> = tags
        .iter()
        .filter_map(|t| cudaimg_cuda::CudaTag::parse(t).ok())
        .collect();
    let by_distance = |want: &str, have: BTreeSet<String>| -> String {
        let mut have: Vec<String> = have.into_iter().collect();
        have.sort_by_key(|h| cudaimg_cuda::known::distance(want, h));
        have.truncate(6);
        have.join(", ")
    };
    if let Selector::Cuda { filter, .. } = selector {
        if let Some(want) = filter.os.as_ref().and_then(|o| o.first()) {
            let mut loose = filter.clone();
            loose.os = None;
            if parsed.iter().any(|t| loose.matches(t)) {
                let have = parsed.iter().filter_map(|t| t.os.clone()).collect();
                return format!("`os`: the tags have {}", by_distance(want, have));
            }
        }
        let have: BTreeSet<String> = parsed.iter().map(|t| t.version.to_string()).collect();
        return format!(
            "the tags have CUDA {}",
            have.into_iter()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut some: Vec<&str> = tags.iter().map(String::as_str).collect();
    some.sort_unstable();
    some.truncate(8);
    format!("the tags include {}", some.join(", "))
}

/// The set of one image as its manifests say, for a plan: nothing is downloaded but
/// manifests, nothing is stored. The same choices as [`fetch`] (every child, or the chosen
/// platforms as the platform's manifest or a filtered index beside upstream's).
async fn manifests_only(
    session: &Session,
    key: &str,
    name: &Canonical,
    platforms: Option<&[Platform]>,
    reporter: &dyn Reporter,
) -> Result<(StoredSet, Vec<String>), SyncError> {
    let failed = |source| SyncError::Pull {
        reference: key.to_owned(),
        source: Box::new(source),
    };
    let sources = session.sources(name)?;
    let image = &name.image;
    let resolved = session
        .resolve(&sources, image, None, reporter)
        .await
        .map_err(failed)?;
    let top = StoredManifest {
        descriptor: Descriptor {
            media_type: media_type(&resolved.parsed),
            digest: resolved.digest.clone(),
            size: resolved.manifest.bytes.len() as u64,
        },
        bytes: resolved.manifest.bytes.clone(),
    };
    let idx = match resolved.parsed {
        Manifest::Image(m) => {
            let child = plan_child(top, None, &m);
            return Ok((set_of(key, None, vec![child], None), Vec::new()));
        }
        Manifest::Index(idx) => idx,
    };
    let mut warnings = Vec::new();
    let mut chosen: Vec<&cudaimg_oci::manifest::IndexEntry> = Vec::new();
    for e in &idx.manifests {
        let wanted = match platforms {
            None => true,
            Some(ps) => ps
                .iter()
                .any(|p| idx.select(p).is_some_and(|s| s.descriptor == e.descriptor)),
        };
        if wanted && !chosen.iter().any(|c| c.descriptor == e.descriptor) {
            chosen.push(e);
        }
    }
    if let Some(p) = platforms.and_then(|ps| ps.iter().find(|p| idx.select(p).is_none())) {
        return Err(failed(cudaimg_transfer::PullError::NoPlatform {
            reference: key.to_owned(),
            platform: p.to_string(),
            available: idx.platforms().join(", "),
        }));
    }
    let mut children = Vec::new();
    for e in &chosen {
        let which = e
            .platform
            .as_ref()
            .map_or("a".to_owned(), ToString::to_string);
        match session
            .select_child(&sources, image, &e.descriptor, &which, reporter)
            .await
        {
            Ok((m, img)) => children.push(plan_child(
                StoredManifest {
                    descriptor: e.descriptor.clone(),
                    bytes: m.bytes,
                },
                e.platform.clone(),
                &img,
            )),
            Err(err) => warnings.push(format!("{key}: {which} is left out of the plan: {err}")),
        }
    }
    let every = chosen.len() == idx.manifests.len();
    let set = match children.len() {
        _ if every => set_of(key, Some(top), children, None),
        1 => set_of(key, None, children, Some(top.descriptor)),
        _ => {
            let ds: Vec<Digest> = children
                .iter()
                .map(|c| c.manifest.descriptor.digest.clone())
                .collect();
            let bytes = cudaimg_store::filtered_index(&top.bytes, &ds)
                .map_err(|e| SyncError::NotStored(format!("{key}: {e}")))?;
            let filtered = StoredManifest {
                descriptor: Descriptor {
                    media_type: top.descriptor.media_type.clone(),
                    digest: Digest::of(&bytes),
                    size: bytes.len() as u64,
                },
                bytes,
            };
            set_of(key, Some(filtered), children, Some(top.descriptor))
        }
    };
    Ok((set, warnings))
}

fn media_type(m: &Manifest) -> String {
    match m {
        Manifest::Image(i) => i.media_type.clone(),
        Manifest::Index(i) => i.media_type.clone(),
    }
}

fn set_of(
    name: &str,
    index: Option<StoredManifest>,
    children: Vec<StoredChild>,
    upstream: Option<Descriptor>,
) -> StoredSet {
    StoredSet {
        name: name.to_owned(),
        index,
        children,
        upstream,
    }
}

/// A child as its manifest lists it: config, then layers, each digest once.
fn plan_child(
    manifest: StoredManifest,
    platform: Option<Platform>,
    m: &cudaimg_oci::manifest::ImageManifest,
) -> StoredChild {
    let mut seen = BTreeSet::new();
    let blobs = std::iter::once(&m.config)
        .chain(&m.layers)
        .filter(|d| seen.insert(d.digest.clone()))
        .cloned()
        .collect();
    let named = platform
        .as_ref()
        .is_none_or(|p| p.os != "unknown" && p.architecture != "unknown");
    StoredChild {
        manifest,
        platform,
        blobs,
        named,
    }
}
