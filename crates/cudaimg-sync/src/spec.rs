//! The sync spec (`sync.toml`): which images to carry, as `[[images]]` entries of three
//! kinds, each checked when the file is read so that a broken spec fails before any
//! network or store work, with the file, line and column of what is wrong and a hint.
//!
//! ```toml
//! [[images]]                      # named references
//! references = ["docker.io/library/ubuntu:22.04"]
//!
//! [[images]]                      # a CUDA selector, in the nvidia/cuda tag grammar
//! repository = "docker.io/nvidia/cuda"
//! cuda = ">=12.4, <12.6"          # or "12.4" (every 12.4.x), "12.4.1"
//! flavors = ["runtime", "devel"]  # base, runtime, devel, tensorrt-runtime, tensorrt-devel
//! cudnn = false                   # absent: with and without cuDNN
//! os = ["ubuntu22.04"]            # release candidates (`-rc`) are never selected
//! platforms = ["linux/amd64"]     # any entry; absent: every platform, the index whole
//!
//! [[images]]                      # any repository, by tag pattern and/or version range
//! repository = "quay.io/org/app"
//! tags = "v1\\..*"                # a regex that must match the whole tag
//! semver = ">=1.2"
//! ```
//!
//! Names are not canonicalized here (that needs the mirror configuration, see
//! [`crate::select`]); they are only checked to be references and repositories.

use std::ops::Range;
use std::path::{Path, PathBuf};

use cudaimg_cuda::choose::VersionFilter;
use cudaimg_cuda::{tag, CudaTag, Flavor};
use cudaimg_oci::platform::Platform;
use cudaimg_oci::reference::ImageRef;
use cudaimg_oci::text::shown;
use serde::Deserialize;
use toml::Spanned;

/// A parsed, checked sync spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The file it was read from (errors and reports name it).
    pub path: PathBuf,
    pub entries: Vec<Entry>,
}

/// One `[[images]]` entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub selector: Selector,
    /// `None`: every platform, the manifest list carried whole.
    pub platforms: Option<Vec<Platform>>,
    /// 1-based line of the entry, for messages about what it selected.
    pub line: usize,
}

/// How an entry chooses images.
#[derive(Debug, Clone)]
pub enum Selector {
    /// `references = [..]`: exactly these, as written.
    References(Vec<String>),
    /// A CUDA selector over `repository`'s tags.
    Cuda {
        repository: String,
        filter: CudaFilter,
    },
    /// `tags` and/or `semver` over `repository`'s tags.
    Tags {
        repository: String,
        tags: Option<regex::Regex>,
        semver: Option<semver::VersionReq>,
    },
}

/// What a CUDA selector keeps; each absent part keeps everything.
#[derive(Debug, Clone, Default)]
pub struct CudaFilter {
    pub cuda: Option<CudaVersions>,
    /// `(flavor, tensorrt)` pairs.
    pub flavors: Option<Vec<(Flavor, bool)>>,
    pub cudnn: Option<bool>,
    pub os: Option<Vec<String>>,
}

/// `cuda = ".."`: a version as in the tags (`12`, `12.4`, `12.4.1`: that version and every
/// release under it), or a range (`>=12.4, <12.6`) compared on `major.minor.patch`, a tag
/// without a patch counting as `.0`.
#[derive(Debug, Clone)]
pub enum CudaVersions {
    Prefix(VersionFilter),
    Range(semver::VersionReq),
}

impl CudaFilter {
    /// Release candidates (`…-rc`) are left out, as version ranges leave out pre-releases.
    pub fn matches(&self, t: &CudaTag) -> bool {
        if t.rc {
            return false;
        }
        let version_ok = match &self.cuda {
            None => true,
            Some(CudaVersions::Prefix(f)) => f.matches(t.version),
            Some(CudaVersions::Range(r)) => r.matches(&semver::Version::new(
                u64::from(t.version.major),
                u64::from(t.version.minor),
                u64::from(t.version.patch.unwrap_or(0)),
            )),
        };
        version_ok
            && self
                .flavors
                .as_ref()
                .is_none_or(|fs| fs.contains(&(t.flavor, t.tensorrt)))
            && self.cudnn.is_none_or(|want| want == t.cudnn.is_some())
            && self
                .os
                .as_ref()
                .is_none_or(|oss| t.os.as_ref().is_some_and(|os| oss.contains(os)))
    }
}

impl Selector {
    /// The repository whose tag list the selector reads (`None` for references).
    pub fn repository(&self) -> Option<&str> {
        match self {
            Selector::References(_) => None,
            Selector::Cuda { repository, .. } | Selector::Tags { repository, .. } => {
                Some(repository)
            }
        }
    }

    /// Whether the selector keeps `tag` (references keep nothing from a tag list).
    pub fn matches(&self, tag: &str) -> bool {
        match self {
            Selector::References(_) => false,
            Selector::Cuda { filter, .. } => CudaTag::parse(tag).is_ok_and(|t| filter.matches(&t)),
            Selector::Tags { tags, semver, .. } => {
                tags.as_ref().is_none_or(|r| r.is_match(tag))
                    && semver
                        .as_ref()
                        .is_none_or(|req| tag_version(tag).is_some_and(|v| req.matches(&v)))
            }
        }
    }
}

/// A tag read as a version: an optional `v`, then `1`, `1.2` or `1.2.3` (missing parts are
/// 0), then what semver allows after (`-rc.1`, which ranges skip unless they name it).
pub fn tag_version(tag: &str) -> Option<semver::Version> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let core_end = t.find(['-', '+']).unwrap_or(t.len());
    let (core, rest) = t.split_at(core_end);
    let dots = core.matches('.').count();
    let padded = match dots {
        0 => format!("{core}.0.0{rest}"),
        1 => format!("{core}.0{rest}"),
        _ => t.to_owned(),
    };
    semver::Version::parse(&padded).ok()
}

/// A spec that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read the sync spec `{}`", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", .path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        hint: String,
    },
}

impl SpecError {
    pub fn hint(&self) -> String {
        match self {
            SpecError::Read { .. } => {
                "give the path of a sync.toml with `[[images]]` entries".into()
            }
            SpecError::Invalid { hint, .. } => hint.clone(),
        }
    }
}

const KINDS_HINT: &str = "each `[[images]]` entry is one of: `references = [\"REF\", ..]`; \
    `repository` with a CUDA selector (`cuda`, `flavors`, `cudnn`, `os`); or `repository` with \
    `tags = \"REGEX\"` and/or `semver = \"RANGE\"`; any of them may add `platforms`";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    images: Vec<Spanned<RawEntry>>,
}

type Strings = Spanned<Vec<Spanned<String>>>;

/// Makes the error for a span of the file: message, then hint.
type Invalid<'a> = dyn Fn(Option<Range<usize>>, String, &str) -> SpecError + 'a;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    references: Option<Strings>,
    repository: Option<Spanned<String>>,
    cuda: Option<Spanned<String>>,
    flavors: Option<Strings>,
    cudnn: Option<Spanned<bool>>,
    os: Option<Strings>,
    tags: Option<Spanned<String>>,
    semver: Option<Spanned<String>>,
    platforms: Option<Strings>,
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = cudaimg_static::regular::read_capped_to_string(
            path,
            cudaimg_static::regular::MAX_TEXT_FILE,
        )
        .map_err(|e| SpecError::Read {
            path: path.to_owned(),
            source: e.into(),
        })?;
        Spec::parse(&text, path)
    }

    /// Parses spec text; `path` only labels errors.
    #[allow(clippy::too_many_lines)]
    pub fn parse(text: &str, path: &Path) -> Result<Spec, SpecError> {
        let invalid = |span: Option<Range<usize>>, message: String, hint: &str| {
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            SpecError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
                hint: hint.to_owned(),
            }
        };
        let raw: RawSpec = toml::from_str(text).map_err(|e| {
            let message = cudaimg_oci::text::shown_lines(e.message().trim()).replace('\n', "; ");
            let hint = if message.contains("unknown field") {
                KINDS_HINT
            } else {
                "write the spec as TOML: one `[[images]]` table per entry"
            };
            invalid(e.span(), message, hint)
        })?;
        if raw.images.is_empty() {
            return Err(invalid(
                None,
                "the spec selects nothing: it has no `[[images]]` entry".into(),
                KINDS_HINT,
            ));
        }
        let mut entries = Vec::with_capacity(raw.images.len());
        for spanned in raw.images {
            let entry_span = spanned.span();
            let e = spanned.into_inner();
            let cuda_keys: Vec<(&str, Range<usize>)> = [
                ("cuda", e.cuda.as_ref().map(Spanned::span)),
                ("flavors", e.flavors.as_ref().map(Spanned::span)),
                ("cudnn", e.cudnn.as_ref().map(Spanned::span)),
                ("os", e.os.as_ref().map(Spanned::span)),
            ]
            .into_iter()
            .filter_map(|(k, s)| s.map(|s| (k, s)))
            .collect();
            let tag_keys: Vec<(&str, Range<usize>)> = [
                ("tags", e.tags.as_ref().map(Spanned::span)),
                ("semver", e.semver.as_ref().map(Spanned::span)),
            ]
            .into_iter()
            .filter_map(|(k, s)| s.map(|s| (k, s)))
            .collect();
            let platforms = match &e.platforms {
                None => None,
                Some(list) => {
                    if list.get_ref().is_empty() {
                        return Err(invalid(
                            Some(list.span()),
                            "`platforms` is empty".into(),
                            "list at least one, e.g. `platforms = [\"linux/amd64\"]`, or leave \
                             `platforms` out for every platform",
                        ));
                    }
                    let mut out = Vec::new();
                    for p in list.get_ref() {
                        let parsed: Platform = p.get_ref().parse().map_err(|err| {
                            invalid(
                                Some(p.span()),
                                format!("{err}"),
                                "write platforms as `os/arch[/variant]`, e.g. `linux/amd64`, \
                                 `linux/arm64`",
                            )
                        })?;
                        if !out.contains(&parsed) {
                            out.push(parsed);
                        }
                    }
                    Some(out)
                }
            };
            let selector = if let Some(refs) = &e.references {
                if let Some((key, span)) = e
                    .repository
                    .as_ref()
                    .map(|r| ("repository", r.span()))
                    .into_iter()
                    .chain(cuda_keys.iter().cloned())
                    .chain(tag_keys.iter().cloned())
                    .next()
                {
                    return Err(invalid(
                        Some(span),
                        format!("this entry mixes `references` with `{key}`"),
                        "named references are carried as they are: put a selector over a \
                         repository's tags in an `[[images]]` entry of its own",
                    ));
                }
                if refs.get_ref().is_empty() {
                    return Err(invalid(
                        Some(refs.span()),
                        "`references` is empty".into(),
                        "list at least one, e.g. `references = [\"docker.io/library/ubuntu:22.04\"]`",
                    ));
                }
                let mut list = Vec::new();
                for r in refs.get_ref() {
                    ImageRef::parse(r.get_ref()).map_err(|err| {
                        invalid(
                            Some(r.span()),
                            err.to_string(),
                            "write a reference as `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`, e.g. \
                             `docker.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04`",
                        )
                    })?;
                    list.push(r.get_ref().clone());
                }
                Selector::References(list)
            } else if let Some(repo) = &e.repository {
                let repository = check_repository(repo).map_err(|m| {
                    invalid(
                        Some(repo.span()),
                        m,
                        "give the repository alone, e.g. `repository = \"docker.io/nvidia/cuda\"`, \
                         and choose tags with a selector",
                    )
                })?;
                match (cuda_keys.first(), tag_keys.first()) {
                    (Some((ck, _)), Some((tk, span))) => {
                        return Err(invalid(
                            Some(span.clone()),
                            format!("this entry mixes a CUDA selector (`{ck}`) with `{tk}`"),
                            "use one kind per entry: the CUDA keys (`cuda`, `flavors`, `cudnn`, \
                             `os`) read the nvidia/cuda tag grammar; `tags`/`semver` match any \
                             tag; write two `[[images]]` entries to use both",
                        ));
                    }
                    (None, None) => {
                        return Err(invalid(
                            Some(entry_span),
                            format!("the entry for `{}` has no selector", shown(&repository)),
                            "add a CUDA selector (`cuda = \"12.4\"`, `flavors`, `cudnn`, `os`) or \
                             `tags = \"REGEX\"` / `semver = \"RANGE\"`; `tags = \".*\"` takes every \
                             tag",
                        ));
                    }
                    (Some(_), None) => Selector::Cuda {
                        repository,
                        filter: cuda_filter(&e, &invalid)?,
                    },
                    (None, Some(_)) => Selector::Tags {
                        repository,
                        tags: match &e.tags {
                            None => None,
                            Some(t) => Some(
                                regex::Regex::new(&format!("^(?:{})$", t.get_ref())).map_err(
                                    |err| {
                                        invalid(
                                            Some(t.span()),
                                            format!(
                                                "`tags` is not a regular expression: {}",
                                                err.to_string().replace('\n', " ")
                                            ),
                                            "`tags` is a regex (Rust `regex` syntax) matched \
                                             against the whole tag, e.g. `tags = \"1\\\\.2\\\\..*\"`",
                                        )
                                    },
                                )?,
                            ),
                        },
                        semver: match &e.semver {
                            None => None,
                            Some(s) => Some(semver::VersionReq::parse(s.get_ref()).map_err(
                                |err| {
                                    invalid(
                                        Some(s.span()),
                                        format!("`semver` is not a version range: {err}"),
                                        "write a range as Cargo does, e.g. `semver = \">=1.2, \
                                         <2\"`; tags are read as versions with an optional `v`",
                                    )
                                },
                            )?),
                        },
                    },
                }
            } else {
                let message = match cuda_keys.first().or(tag_keys.first()) {
                    Some((k, _)) => format!("`{k}` needs a `repository` to select from"),
                    None => "this entry names no images".into(),
                };
                return Err(invalid(Some(entry_span), message, KINDS_HINT));
            };
            entries.push(Entry {
                selector,
                platforms,
                line: line_col(text, entry_span.start).0,
            });
        }
        Ok(Spec {
            path: path.to_owned(),
            entries,
        })
    }
}

/// A repository without tag or digest; returned as written.
fn check_repository(repo: &Spanned<String>) -> Result<String, String> {
    let r = repo.get_ref();
    let last = r.rsplit('/').next().unwrap_or_default();
    if last.contains([':', '@']) {
        return Err(format!(
            "`{}` names a tag or digest, not a repository",
            shown(r)
        ));
    }
    ImageRef::parse(r).map_err(|e| e.to_string())?;
    Ok(r.clone())
}

fn cuda_filter(e: &RawEntry, invalid: &Invalid<'_>) -> Result<CudaFilter, SpecError> {
    let empty = |list: &Strings, key: &str| {
        invalid(
            Some(list.span()),
            format!("`{key}` is empty"),
            &format!("list at least one value, or leave `{key}` out to keep every one"),
        )
    };
    let cuda = match &e.cuda {
        None => None,
        Some(c) => {
            let text = c.get_ref().trim();
            Some(match VersionFilter::parse(text) {
                Some(f) => CudaVersions::Prefix(f),
                None => CudaVersions::Range(semver::VersionReq::parse(text).map_err(|err| {
                    invalid(
                        Some(c.span()),
                        format!("`cuda = \"{}\"` is not a CUDA version or range: {err}", shown(text)),
                        "write a version as in the tags (`12`, `12.4`, `12.4.1`) or a range such as \
                         `>=12.4, <12.6`",
                    )
                })?),
            })
        }
    };
    let flavors = match &e.flavors {
        None => None,
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(empty(list, "flavors"));
            }
            let mut out = Vec::new();
            for f in list.get_ref() {
                let s = f.get_ref().as_str();
                let (name, tensorrt) = match s.strip_prefix("tensorrt-") {
                    Some(rest) => (rest, true),
                    None => (s, false),
                };
                let flavor = Flavor::parse(name)
                    .filter(|fl| !tensorrt || *fl != Flavor::Base)
                    .ok_or_else(|| {
                        invalid(
                            Some(f.span()),
                            format!("`{}` is not an nvidia/cuda flavor", shown(s)),
                            "flavors are `base`, `runtime`, `devel`, `tensorrt-runtime`, \
                             `tensorrt-devel`; cuDNN is chosen with `cudnn = true|false`",
                        )
                    })?;
                out.push((flavor, tensorrt));
            }
            Some(out)
        }
    };
    let os =
        match &e.os {
            None => None,
            Some(list) => {
                if list.get_ref().is_empty() {
                    return Err(empty(list, "os"));
                }
                let mut out = Vec::new();
                for o in list.get_ref() {
                    if !tag::is_os(o.get_ref()) {
                        return Err(invalid(
                        Some(o.span()),
                        format!("`{}` is not an OS of the nvidia/cuda tags", shown(o.get_ref())),
                        "write it as in the tags, a family and its version, e.g. `ubuntu22.04`, \
                         `ubi9`, `rockylinux9`",
                    ));
                    }
                    out.push(o.get_ref().clone());
                }
                Some(out)
            }
        };
    Ok(CudaFilter {
        cuda,
        flavors,
        cudnn: e.cudnn.as_ref().map(|c| *c.get_ref()),
        os,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<Spec, SpecError> {
        Spec::parse(text, Path::new("sync.toml"))
    }

    fn err(text: &str) -> (usize, usize, String, String) {
        match parse(text).unwrap_err() {
            SpecError::Invalid {
                line,
                column,
                message,
                hint,
                ..
            } => (line, column, message, hint),
            SpecError::Read { .. } => unreachable!(),
        }
    }

    #[test]
    fn three_kinds_parse() {
        let s = parse(
            "[[images]]\nreferences = [\"docker.io/library/ubuntu:22.04\"]\n\n\
             [[images]]\nrepository = \"docker.io/nvidia/cuda\"\ncuda = \">=12.4, <12.6\"\n\
             flavors = [\"runtime\", \"devel\"]\ncudnn = false\nos = [\"ubuntu22.04\"]\n\
             platforms = [\"linux/amd64\"]\n\n\
             [[images]]\nrepository = \"quay.io/org/app\"\ntags = \"v1\\\\..*\"\nsemver = \">=1.2\"\n",
        )
        .unwrap();
        assert_eq!(s.entries.len(), 3);
        assert!(matches!(s.entries[0].selector, Selector::References(ref r) if r.len() == 1));
        assert_eq!(s.entries[1].line, 4);
        assert_eq!(
            s.entries[1].platforms.as_ref().unwrap()[0].to_string(),
            "linux/amd64"
        );
        let cuda = &s.entries[1].selector;
        assert!(cuda.matches("12.4.1-runtime-ubuntu22.04"));
        assert!(cuda.matches("12.5.0-devel-ubuntu22.04"));
        assert!(!cuda.matches("12.6.0-runtime-ubuntu22.04"));
        assert!(!cuda.matches("12.3.2-runtime-ubuntu22.04"));
        assert!(!cuda.matches("12.4.1-cudnn-runtime-ubuntu22.04"));
        assert!(!cuda.matches("12.4.1-base-ubuntu22.04"));
        assert!(!cuda.matches("12.4.1-runtime-ubuntu24.04"));
        assert!(!cuda.matches("latest"));
        assert!(!cuda.matches("12.4.1-runtime-ubuntu22.04-rc"));
        let t = &s.entries[2].selector;
        assert!(t.matches("v1.2.0"));
        assert!(t.matches("v1.10"));
        assert!(!t.matches("v1.1.9"));
        assert!(!t.matches("v2.0.0"), "the regex must match the whole tag");
        assert!(!t.matches("xv1.3"));
    }

    #[test]
    fn cuda_version_prefix_and_cudnn_absent_means_both() {
        let s = parse("[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"12.4\"\n").unwrap();
        let sel = &s.entries[0].selector;
        assert!(sel.matches("12.4.0-runtime-ubuntu22.04"));
        assert!(sel.matches("12.4.1-cudnn-devel-ubuntu22.04"));
        assert!(!sel.matches("12.5.0-runtime-ubuntu22.04"));
        let s = parse("[[images]]\nrepository = \"nvidia/cuda\"\ncudnn = true\n").unwrap();
        assert!(s.entries[0]
            .selector
            .matches("12.4.1-cudnn-devel-ubuntu22.04"));
        assert!(!s.entries[0].selector.matches("12.4.1-devel-ubuntu22.04"));
    }

    #[test]
    fn errors_name_line_and_column_with_a_hint() {
        let (l, c, m, h) =
            err("[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"12.4\"\nflavour = [\"x\"]\n");
        assert_eq!((l, c), (4, 1), "{m}");
        assert!(m.contains("unknown field") && m.contains("flavour"), "{m}");
        assert!(h.contains("references"), "{h}");

        let (l, c, m, _) = err("[[images]]\nrepository = \"r/x\"\ntags = \"(\"\n");
        assert_eq!((l, c), (3, 8), "{m}");
        assert!(m.contains("regular expression"), "{m}");

        let (l, c, m, _) = err("[[images]]\nrepository = \"r/x\"\nsemver = \">=1.x.y\"\n");
        assert_eq!((l, c), (3, 10), "{m}");
        assert!(m.contains("version range"), "{m}");

        let (l, c, m, _) = err("\n[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"twelve\"\n");
        assert_eq!((l, c), (4, 8), "{m}");
        assert!(m.contains("CUDA version or range"), "{m}");

        let (l, c, m, h) =
            err("[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"12.4\"\ntags = \".*\"\n");
        assert_eq!((l, c), (4, 8), "{m}");
        assert!(m.contains("mixes"), "{m}");
        assert!(h.contains("two `[[images]]` entries"), "{h}");

        let (l, c, m, _) =
            err("[[images]]\nreferences = [\"ubuntu:22.04\"]\nrepository = \"nvidia/cuda\"\n");
        assert_eq!((l, c), (3, 14), "{m}");
        assert!(m.contains("mixes `references` with `repository`"), "{m}");

        let (l, _, m, _) = err("[[images]]\nrepository = \"nvidia/cuda\"\nflavors = [\"cudnn\"]\n");
        assert_eq!(l, 3, "{m}");
        let (l, _, m, _) = err("[[images]]\nreferences = [\"a/b:c\"]\nplatforms = [\"linux\"]\n");
        assert_eq!(l, 3, "{m}");
        let (l, _, m, _) = err("[[images]]\nrepository = \"nvidia/cuda:12.4\"\ncuda = \"12\"\n");
        assert_eq!(l, 2, "{m}");
        assert!(m.contains("names a tag"), "{m}");
        let (_, _, m, _) = err("[[images]]\nrepository = \"nvidia/cuda\"\n");
        assert!(m.contains("no selector"), "{m}");
        let (_, _, m, _) = err("[[images]]\ncuda = \"12\"\n");
        assert!(m.contains("needs a `repository`"), "{m}");
        let (l, c, _, _) = err("[[images]]\nreferences = \"x\"\n");
        assert_eq!((l, c), (2, 14));
        let (_, _, m, _) = err("");
        assert!(m.contains("no `[[images]]`"), "{m}");
    }

    #[test]
    fn tags_read_as_versions() {
        assert_eq!(tag_version("v1.2").unwrap().to_string(), "1.2.0");
        assert_eq!(tag_version("3").unwrap().to_string(), "3.0.0");
        assert_eq!(tag_version("1.2.3-rc.1").unwrap().to_string(), "1.2.3-rc.1");
        assert!(tag_version("latest").is_none());
    }
}
