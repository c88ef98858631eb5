//! Request targets to routes of the distribution API, with mirror semantics.
//!
//! A repository in a path is parsed with Docker's reference grammar and becomes the
//! canonical `registry/repository` the store names images by:
//! - `/v2/nvidia/cuda/...` is `docker.io/nvidia/cuda` (Docker's `registry-mirrors` sends Hub
//!   names, `library/` included for official images; `/v2/ubuntu/...` gains it too);
//! - `?ns=HOST` (containerd's mirror requests) names the registry: `/v2/nvidia/pytorch/...?ns=nvcr.io`;
//! - `/v2/HOST/REPO/...` names it in the path, as a client of this server by name would.
//!
//! Nothing here touches a file: a route holds a parsed name, tag or [`Digest`] only, and
//! anything else is an error (a `..`, a `%2e`, a NUL are not in the grammar).

use cudaimg_oci::digest::{Digest, DigestError};
use cudaimg_oci::reference::{is_tag, registry_host, ImageRef, DOCKER_HUB};

/// The repository a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName {
    /// `registry/repository`, the store's key.
    pub key: String,
    /// As the request wrote it (for `tags/list`'s `name` and `Link`s).
    pub requested: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestRef {
    Tag(String),
    Digest(Digest),
}

/// `n` and `last` of a paginated list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub n: Option<usize>,
    pub last: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog(Page),
    Manifest(RepoName, ManifestRef),
    Blob(RepoName, Digest),
    Tags(RepoName, Page),
    Referrers(RepoName, Digest),
}

/// Why a target is not a route; each maps to an OCI error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Not a path of the API (404 `NOT_FOUND`).
    Unknown,
    NameInvalid(String),
    DigestInvalid(String),
    /// A tag outside the grammar, or a digest algorithm no store holds: nothing can be
    /// stored under it, so it is unknown (404), and a mirror client falls back.
    ManifestUnknown(String),
    BadQuery(String),
}

/// Caps `n`: a page never lists more than this many names.
pub const MAX_PAGE: usize = 10_000;

/// Parses an origin-form request target (`/v2/...?...`).
pub fn parse(target: &str) -> Result<Route, RouteError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let q = Query::parse(query)?;
    let Some(rest) = path.strip_prefix("/v2") else {
        return Err(RouteError::Unknown);
    };
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog(q.page()?));
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        let repo = repo_name(&segs[..n - 2], q.ns.as_deref())?;
        return Ok(Route::Tags(repo, q.page()?));
    }
    if n < 3 {
        return Err(RouteError::Unknown);
    }
    let last = segs[n - 1];
    let repo = || repo_name(&segs[..n - 2], q.ns.as_deref());
    match segs[n - 2] {
        "manifests" => {
            let r = if last.contains(':') {
                ManifestRef::Digest(digest(last).map_err(|e| match e {
                    RouteError::DigestInvalid(_) if !last.starts_with("sha256:") => {
                        RouteError::ManifestUnknown(last.to_owned())
                    }
                    e => e,
                })?)
            } else if is_tag(last) {
                ManifestRef::Tag(last.to_owned())
            } else {
                return Err(RouteError::ManifestUnknown(last.to_owned()));
            };
            Ok(Route::Manifest(repo()?, r))
        }
        "blobs" => Ok(Route::Blob(repo()?, digest(last)?)),
        "referrers" => Ok(Route::Referrers(repo()?, digest(last)?)),
        _ => Err(RouteError::Unknown),
    }
}

fn digest(s: &str) -> Result<Digest, RouteError> {
    Digest::parse(s).map_err(|e| match e {
        DigestError::Unsupported(_) => RouteError::ManifestUnknown(s.to_owned()),
        DigestError::Malformed(_) => RouteError::DigestInvalid(s.to_owned()),
    })
}

fn repo_name(segs: &[&str], ns: Option<&str>) -> Result<RepoName, RouteError> {
    let requested = segs.join("/");
    let invalid = || RouteError::NameInvalid(requested.clone());
    // Only a host's port may hold a `:`; a tag or digest inside the name is not a name.
    if segs.is_empty() || requested.contains('@') || segs[1..].iter().any(|s| s.contains(':')) {
        return Err(invalid());
    }
    let parsed = match ns {
        Some(ns) => {
            let host = registry_host(ns).map_err(|_| RouteError::BadQuery(format!("ns={ns}")))?;
            let host = match host.as_str() {
                "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
                _ => host,
            };
            ImageRef::parse(&format!("{host}/{requested}"))
        }
        None => ImageRef::parse(&requested),
    }
    .map_err(|_| invalid())?;
    Ok(RepoName {
        key: parsed.name(),
        requested,
    })
}

#[derive(Default)]
struct Query {
    ns: Option<String>,
    n: Option<String>,
    last: Option<String>,
}

impl Query {
    fn parse(q: &str) -> Result<Query, RouteError> {
        let mut out = Query::default();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| RouteError::BadQuery(pair.to_owned()))?;
            match k {
                "ns" => out.ns = Some(v),
                "n" => out.n = Some(v),
                "last" => out.last = Some(v),
                // Other parameters (`artifactType`, cache busters) change nothing here.
                _ => {}
            }
        }
        Ok(out)
    }

    fn page(&self) -> Result<Page, RouteError> {
        let n = match &self.n {
            None => None,
            Some(s) => Some(
                s.parse::<u64>()
                    .map_err(|_| RouteError::BadQuery(format!("n={s}")))?
                    .min(MAX_PAGE as u64) as usize,
            ),
        };
        Ok(Page {
            n,
            last: self.last.clone().filter(|l| !l.is_empty()),
        })
    }
}

/// `%XX` and `+` decoding of a query value; `None` for a bad escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn key(r: Result<Route, RouteError>) -> String {
        match r {
            Ok(Route::Manifest(n, _) | Route::Blob(n, _) | Route::Tags(n, _)) => n.key,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mirror_names_map_to_the_registry_they_stand_for() {
        assert_eq!(
            key(parse("/v2/nvidia/cuda/manifests/12.4.1")),
            "docker.io/nvidia/cuda"
        );
        assert_eq!(
            key(parse("/v2/library/ubuntu/manifests/22.04")),
            "docker.io/library/ubuntu"
        );
        assert_eq!(
            key(parse("/v2/ubuntu/tags/list")),
            "docker.io/library/ubuntu"
        );
        assert_eq!(
            key(parse("/v2/nvidia/pytorch/manifests/24.05-py3?ns=nvcr.io")),
            "nvcr.io/nvidia/pytorch"
        );
        assert_eq!(
            key(parse("/v2/nvidia/cuda/manifests/x?ns=registry-1.docker.io")),
            "docker.io/nvidia/cuda"
        );
        assert_eq!(
            key(parse(&format!("/v2/127.0.0.1:5000/a/b/blobs/{D}"))),
            "127.0.0.1:5000/a/b"
        );
    }

    #[test]
    fn hostile_targets_are_errors_never_names() {
        for t in [
            "/v2/../../etc/manifests/passwd",
            "/v2/nvidia/../cuda/manifests/x",
            "/v2/%2e%2e/cuda/manifests/x",
            "/v2/nvidia/cuda:x/manifests/y",
            "/v2/a@b/manifests/y",
            "/v2/NVIDIA/cuda/manifests/x",
            "/v2//manifests/x",
        ] {
            assert!(
                matches!(parse(t), Err(RouteError::NameInvalid(_))),
                "{t}: {:?}",
                parse(t)
            );
        }
        assert!(matches!(
            parse("/v2/a/blobs/sha256:../../x"),
            Err(RouteError::Unknown)
        ));
        assert!(matches!(
            parse("/v2/a/blobs/sha256:..%2f..%2fx"),
            Err(RouteError::DigestInvalid(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/..%2f"),
            Err(RouteError::ManifestUnknown(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/sha512:abc"),
            Err(RouteError::ManifestUnknown(_))
        ));
        assert!(matches!(parse("/etc/passwd"), Err(RouteError::Unknown)));
        assert!(matches!(
            parse("/v2/a/tags/list?n=x"),
            Err(RouteError::BadQuery(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/x?ns=/etc"),
            Err(RouteError::BadQuery(_))
        ));
    }

    #[test]
    fn pages_read_n_and_last() {
        assert_eq!(
            parse("/v2/_catalog?n=2&last=nvidia%2Fcuda"),
            Ok(Route::Catalog(Page {
                n: Some(2),
                last: Some("nvidia/cuda".into())
            }))
        );
        assert_eq!(
            parse("/v2/_catalog?n=99999999999999999999"),
            Err(RouteError::BadQuery("n=99999999999999999999".into()))
        );
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert_eq!(parse("/v2"), Ok(Route::Base));
    }
}
