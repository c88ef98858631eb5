//! `mirrors.toml`: which endpoints serve which registry, and in what order.
//!
//! ```toml
//! [registries."docker.io"]
//! endpoint = "https://registry-1.docker.io"   # the official registry: the last fallback
//! mirrors = [{ url = "https://docker.xuanyuan.run" }, { url = "http://10.0.0.5:5000" }]
//! ```
//!
//! The file is found through `--config`, then `CUDAIMG_CONFIG`, then `./mirrors.toml`, then
//! `$XDG_CONFIG_HOME/cudaimg/mirrors.toml`. A registry without an entry is pulled from its own
//! host. Every error names the file, line and column, and says how to fix it.

pub mod lockfile;

use cudaimg_static::regular;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use cudaimg_oci::reference::{registry_host, DOCKER_HUB};
use cudaimg_oci::text::shown;
use cudaimg_static::EnvVars;

/// Docker Hub's API host: `docker.io` is a name, not a server.
pub const DOCKER_HUB_ENDPOINT: &str = "https://registry-1.docker.io";

/// The loaded mirror policy.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where it came from; `None` when no file was found and defaults apply.
    pub path: Option<PathBuf>,
    registries: BTreeMap<String, RegistryConfig>,
}

/// Endpoints for one canonical registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The official registry, the authority and last fallback.
    pub endpoint: Endpoint,
    /// Tried in order before the endpoint.
    pub mirrors: Vec<Endpoint>,
}

/// One HTTP(S) endpoint that speaks the distribution API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: Url,
    /// Skip TLS certificate verification. Only ever set by the user, per endpoint.
    pub insecure: bool,
    /// What the endpoint may be asked (mirrors; the official endpoint may do everything).
    pub capabilities: Capabilities,
}

/// containerd's split: `resolve` may say which digest a tag names, `pull` may serve content
/// by digest. The official registry stays the authority on tags either way; a mirror's
/// answer is used to detect staleness, and as a fallback when the official one is out of reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub resolve: bool,
    pub pull: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            resolve: true,
            pull: true,
        }
    }
}

impl Endpoint {
    /// `host[:port]`, which is how references and docker's `config.json` name it.
    pub fn authority(&self) -> String {
        authority(&self.url)
    }
}

fn authority(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    }
}

/// A problem with the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A `--mirror` flag that names no usable mirror.
    #[error("--mirror `{flag}`: {message}")]
    Flag { flag: String, message: String },
}

impl ConfigError {
    pub fn hint(&self) -> String {
        match self {
            ConfigError::Flag { .. } => {
                "`--mirror URL` adds a mirror of Docker Hub (`--mirror https://mirror.gcr.io`); \
                 `--mirror HOST=URL` one of another registry (`--mirror nvcr.io=http://10.0.0.5:5000`)"
                    .into()
            }
            ConfigError::Read { .. } => {
                "check the path given by `--config` or `CUDAIMG_CONFIG`, or unset them to use \
                 ./mirrors.toml or $XDG_CONFIG_HOME/cudaimg/mirrors.toml"
                    .into()
            }
            ConfigError::Invalid { .. } => {
                "see the documented example `mirrors.toml` in the cudaimg repository; each \
                 registry is `[registries.\"HOST\"]` with `endpoint = \"https://…\"` and \
                 `mirrors = [\"https://…\"]` (or `[{ url = \"https://…\", capabilities = [...] }]`)"
                    .into()
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    registries: BTreeMap<Spanned<String>, RawRegistry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    endpoint: Option<Spanned<String>>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    mirrors: Vec<Spanned<MirrorEntry>>,
}

/// A mirror as a table (`{ url = "https://…" }`), or as a bare URL string: daemon.json's
/// `"registry-mirrors": ["https://…"]` form, which people copy, means the same.
enum MirrorEntry {
    Url(String),
    Table(RawMirror),
}

impl<'de> Deserialize<'de> for MirrorEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = MirrorEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mirror: `{ url = \"https://…\" }` or a URL string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MirrorEntry, E> {
                Ok(MirrorEntry::Url(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<MirrorEntry, A::Error> {
                RawMirror::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(MirrorEntry::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    url: Spanned<String>,
    #[serde(default)]
    insecure: bool,
    capabilities: Option<Spanned<Vec<String>>>,
}

fn capabilities(raw: Option<&Spanned<Vec<String>>>) -> Result<Capabilities, String> {
    let Some(list) = raw else {
        return Ok(Capabilities::default());
    };
    let mut caps = Capabilities {
        resolve: false,
        pull: false,
    };
    for c in list.get_ref() {
        match c.as_str() {
            "resolve" => caps.resolve = true,
            "pull" => caps.pull = true,
            other => {
                return Err(format!(
                    "unknown capability `{}`: a mirror's capabilities are `pull` (serve content by digest) and `resolve` (answer which digest a tag names)",
                    shown(other)
                ))
            }
        }
    }
    if !caps.pull && !caps.resolve {
        return Err("a mirror needs at least one capability, `pull` or `resolve`".into());
    }
    Ok(caps)
}

impl Config {
    /// Finds and loads the configuration. `explicit` is `--config` or `CUDAIMG_CONFIG`;
    /// a missing explicit file is an error, a missing default file is not.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        if let Some(path) = explicit {
            return Self::from_file(path);
        }
        for candidate in default_locations() {
            if candidate.is_file() {
                return Self::from_file(&candidate);
            }
        }
        Ok(Config::default())
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = regular::read_capped_to_string(path, regular::MAX_TEXT_FILE).map_err(|e| {
            ConfigError::Read {
                path: path.to_owned(),
                source: e.into(),
            }
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        };
        // The parser's messages may quote keys and values from the file.
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            if let Some((span, message)) = unquoted_host(text) {
                return invalid(Some(span), message);
            }
            invalid(
                e.span(),
                cudaimg_oci::text::shown_lines(e.message().trim()).replace('\n', "; "),
            )
        })?;
        let mut registries = BTreeMap::new();
        for (key, reg) in raw.registries {
            // Keys are hosts as image references name them, in the same canonical form, so
            // that `[::1]:5000` and `localhost:05000` find their entry.
            let host = match registry_host(key.get_ref()) {
                Ok(h) => h,
                Err(why) => {
                    return Err(invalid(
                        Some(key.span()),
                        format!(
                            "`{}` is not a registry host ({why}): use the bare name as it \
                             appears in image references, such as `docker.io` or `nvcr.io` \
                             (no scheme, no path)",
                            shown(key.get_ref())
                        ),
                    ))
                }
            };
            let host = &host;
            let endpoint = match reg.endpoint {
                Some(e) => Endpoint {
                    url: parse_url(&e).map_err(|m| invalid(Some(e.span()), m))?,
                    insecure: reg.insecure,
                    capabilities: Capabilities::default(),
                },
                None => Endpoint {
                    insecure: reg.insecure,
                    ..default_endpoint(host)
                },
            };
            let mut mirrors = Vec::with_capacity(reg.mirrors.len());
            for entry in reg.mirrors {
                let span = entry.span();
                let m = match entry.into_inner() {
                    MirrorEntry::Table(m) => m,
                    MirrorEntry::Url(url) => RawMirror {
                        url: Spanned::new(span, url),
                        insecure: false,
                        capabilities: None,
                    },
                };
                let url = parse_url(&m.url).map_err(|msg| invalid(Some(m.url.span()), msg))?;
                let capabilities = capabilities(m.capabilities.as_ref())
                    .map_err(|msg| invalid(m.capabilities.as_ref().map(Spanned::span), msg))?;
                mirrors.push(Endpoint {
                    url,
                    insecure: m.insecure,
                    capabilities,
                });
            }
            registries.insert(host.clone(), RegistryConfig { endpoint, mirrors });
        }
        Ok(Config {
            path: Some(path.to_owned()),
            registries,
        })
    }

    /// Adds the command line's `--mirror [REGISTRY=]URL` flags (`REGISTRY` defaults to
    /// `docker.io`): tried in the order given, before the file's mirrors, with the same
    /// trust rules (the official endpoint stays the authority on tags). No file is needed.
    pub fn add_mirror_flags(&mut self, flags: &[String]) -> Result<(), ConfigError> {
        let mut added: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
        for flag in flags {
            let err = |message: String| ConfigError::Flag {
                flag: shown(&without_userinfo(flag)).to_string(),
                message,
            };
            let (registry, url) = match flag.split_once('=') {
                Some((r, u)) if !r.contains("://") => (r, u),
                _ => (DOCKER_HUB, flag.as_str()),
            };
            let host = registry_host(registry).map_err(|why| {
                err(format!(
                    "`{}` is not a registry host ({why})",
                    shown(registry)
                ))
            })?;
            // The file's URL rules, word for word (the span is unused here).
            let url = parse_url(&Spanned::new(0..0, url.to_owned())).map_err(err)?;
            added.entry(host).or_default().push(Endpoint {
                url,
                insecure: false,
                capabilities: Capabilities::default(),
            });
        }
        for (host, mut mirrors) in added {
            let entry = self
                .registries
                .entry(host.clone())
                .or_insert_with(|| RegistryConfig {
                    endpoint: default_endpoint(&host),
                    mirrors: Vec::new(),
                });
            mirrors.retain(|m| !entry.mirrors.contains(m));
            mirrors.append(&mut entry.mirrors);
            entry.mirrors = mirrors;
        }
        Ok(())
    }

    /// The endpoints for a canonical registry; its own host when the file has no entry.
    pub fn registry(&self, host: &str) -> RegistryConfig {
        self.registries
            .get(host)
            .cloned()
            .unwrap_or_else(|| RegistryConfig {
                endpoint: default_endpoint(host),
                mirrors: Vec::new(),
            })
    }

    /// The registries the file configures, by canonical host.
    pub fn registries(&self) -> impl Iterator<Item = (&str, &RegistryConfig)> {
        self.registries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The canonical registry that `host` is a configured mirror (or the official endpoint)
    /// of, if any: how `docker.xuanyuan.run/nvidia/cuda` becomes `docker.io/nvidia/cuda`.
    pub fn registry_for_mirror_host(&self, host: &str) -> Option<&str> {
        if host == "registry-1.docker.io" {
            return Some(DOCKER_HUB);
        }
        self.registries.iter().find_map(|(name, reg)| {
            let is_mirror = reg.mirrors.iter().any(|m| m.authority() == host)
                || (reg.endpoint.authority() == host && name != host);
            is_mirror.then_some(name.as_str())
        })
    }
}

/// A reference with its registry made canonical.
#[derive(Debug, Clone)]
pub struct Canonical {
    pub image: cudaimg_oci::reference::ImageRef,
    /// The mirror host the user wrote, when the reference was mirror-prefixed.
    pub via_mirror: Option<String>,
}

impl Config {
    /// Parses `input` and rewrites a configured mirror's host to its registry.
    pub fn canonicalize(
        &self,
        input: &str,
    ) -> Result<Canonical, cudaimg_oci::reference::ReferenceError> {
        let image = cudaimg_oci::reference::ImageRef::parse(input)?;
        match self.registry_for_mirror_host(&image.registry) {
            Some(registry) => {
                let registry = registry.to_owned();
                let host = image.registry.clone();
                Ok(Canonical {
                    image: image.with_registry(&registry),
                    via_mirror: Some(host),
                })
            }
            None => Ok(Canonical {
                image,
                via_mirror: None,
            }),
        }
    }
}

/// The official endpoint of a registry nobody configured.
///
/// Loopback registries get plain HTTP, as Docker treats 127.0.0.0/8 as insecure by default.
pub fn default_endpoint(host: &str) -> Endpoint {
    let url = if host == DOCKER_HUB {
        DOCKER_HUB_ENDPOINT.to_owned()
    } else if is_loopback(host) {
        format!("http://{host}")
    } else {
        format!("https://{host}")
    };
    Endpoint {
        url: Url::parse(&url).unwrap_or_else(|_| {
            // A host that passed reference validation always forms a URL; keep a safe value.
            Url::parse(DOCKER_HUB_ENDPOINT).expect("constant URL parses")
        }),
        insecure: false,
        capabilities: Capabilities::default(),
    }
}

fn is_loopback(host: &str) -> bool {
    // `host[:port]`, with IPv6 in brackets.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn default_locations() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("mirrors.toml")];
    out.extend(user_config_path());
    out
}

/// The user-wide file, read from every directory: `$XDG_CONFIG_HOME/cudaimg/mirrors.toml`
/// (`~/.config/cudaimg/mirrors.toml`). `mirrors init` and `mirrors add` write it by default.
pub fn user_config_path() -> Option<PathBuf> {
    xdg_dir(EnvVars::XDG_CONFIG_HOME, ".config").map(|d| d.join("cudaimg").join("mirrors.toml"))
}

/// Where a run looks for the file when neither `--config` nor `CUDAIMG_CONFIG` names one,
/// in order: for messages that say where nothing was found.
pub fn searched_locations() -> Vec<PathBuf> {
    default_locations()
}

/// The default store: `$XDG_DATA_HOME/cudaimg`, or `~/.local/share/cudaimg`.
pub fn default_store_root() -> Option<PathBuf> {
    xdg_dir(EnvVars::XDG_DATA_HOME, ".local/share").map(|d| d.join("cudaimg"))
}

/// `$VAR` if set and absolute, else `$HOME/fallback`, per the XDG base directory spec.
pub fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_absolute() => Some(p),
        _ => std::env::var_os(EnvVars::HOME).map(|h| PathBuf::from(h).join(fallback)),
    }
}

/// A `--mirror` value as errors may echo it: `user:pass@` in a URL becomes `***@`.
fn without_userinfo(flag: &str) -> String {
    let Some(scheme_end) = flag.find("://").map(|i| i + 3) else {
        return flag.to_owned();
    };
    let rest = &flag[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &flag[..scheme_end], &rest[at..]),
        None => flag.to_owned(),
    }
}

/// `[registries.docker.io]`: TOML reads a bare dotted key as nested tables (`docker`, then
/// `io`), and a `:` (a port) is not allowed in a bare key at all; the host must be quoted.
/// Returns where the first such header is, and the message that says so.
fn unquoted_host(text: &str) -> Option<(Range<usize>, String)> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim_start();
        let Some(rest) = trimmed.strip_prefix("[registries.") else {
            continue;
        };
        let Some(key) = rest.split(']').next() else {
            continue;
        };
        let key = key.trim();
        if key.starts_with(['"', '\'']) || !key.contains(['.', ':']) {
            continue;
        }
        let at = start + (line.len() - trimmed.len());
        return Some((
            at..at + trimmed.trim_end().len(),
            format!(
                "`[registries.{k}]` names the host unquoted, so TOML reads it as nested tables \
                 (`{first}`, then the rest), not the host `{k}`: quote it, \
                 `[registries.\"{k}\"]`",
                k = shown(key),
                first = shown(key.split(['.', ':']).next().unwrap_or_default()),
            ),
        ));
    }
    None
}

fn parse_url(raw: &Spanned<String>) -> Result<Url, String> {
    let s = raw.get_ref();
    let url = Url::parse(s).map_err(|e| {
        format!(
            "`{}` is not a URL ({e}); write it as `https://host[:port]`",
            shown(s)
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "`{}` must start with `https://` or `http://`",
            shown(s)
        ));
    }
    if url.host_str().is_none() {
        return Err(format!("`{}` has no host", shown(s)));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{}` carries credentials in the URL; remove them and use `docker login {}` \
             (cudaimg reads docker's config.json and credential helpers)",
            shown(&redact_userinfo(&url)),
            shown(&authority(&url))
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{}` must not have a query or fragment", shown(s)));
    }
    Ok(url)
}

fn redact_userinfo(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// 1-based line and column of a byte offset, for errors that point into a file.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {

    #[test]
    fn mirror_flags_go_first_per_registry_with_the_files_rules() {
        let text = "[registries.\"docker.io\"]\nmirrors = [{ url = \"https://file.example\" }]\n";
        let mut c = Config::parse(text, Path::new("m.toml")).expect("valid");
        c.add_mirror_flags(&[
            "http://10.0.0.5:5000".into(),
            "nvcr.io=https://n.example".into(),
            "https://file.example".into(),
        ])
        .expect("valid flags");
        let hub: Vec<String> = c
            .registry("docker.io")
            .mirrors
            .iter()
            .map(Endpoint::authority)
            .collect();
        assert_eq!(hub, ["10.0.0.5:5000", "file.example"]);
        let nvcr = c.registry("nvcr.io");
        assert_eq!(nvcr.mirrors[0].authority(), "n.example");
        assert_eq!(nvcr.endpoint.authority(), "nvcr.io");
        for bad in ["ftp://x", "https://u:p@h.example", "not a host=https://x"] {
            let e = Config::default()
                .add_mirror_flags(&[bad.into()])
                .expect_err(bad);
            assert!(matches!(e, ConfigError::Flag { .. }), "{bad}: {e}");
            assert!(!e.to_string().contains(":p@"), "{e}");
        }
    }
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("mirrors.toml"))
    }

    #[test]
    fn reads_the_documented_schema() {
        let c = parse(
            r#"
[registries."docker.io"]
endpoint = "https://registry-1.docker.io"
mirrors = [{ url = "https://docker.xuanyuan.run" }, { url = "http://10.0.0.5:5000", insecure = true }]
"#,
        )
        .expect("valid");
        let hub = c.registry("docker.io");
        assert_eq!(hub.mirrors.len(), 2);
        assert_eq!(hub.mirrors[1].url.as_str(), "http://10.0.0.5:5000/");
        assert!(hub.mirrors[1].insecure);
        assert_eq!(
            c.registry_for_mirror_host("docker.xuanyuan.run"),
            Some("docker.io")
        );
        assert_eq!(
            c.registry_for_mirror_host("10.0.0.5:5000"),
            Some("docker.io")
        );
        assert_eq!(c.registry_for_mirror_host("nvcr.io"), None);
    }

    #[test]
    fn only_real_loopback_addresses_default_to_http() {
        for (host, http) in [
            ("127.0.0.1:5000", true),
            ("localhost:5000", true),
            ("[::1]:5000", true),
            ("[::1]", true),
            ("127.evil.example", false),
            ("127.0.0.1.nip.io", false),
        ] {
            let url = default_endpoint(host).url;
            assert_eq!(url.scheme() == "http", http, "{host}: {url}");
        }
    }

    #[test]
    fn mirror_capabilities() {
        let c = parse(
            "[registries.\"docker.io\"]\nmirrors = [{ url = \"https://a\", capabilities = [\"pull\"] }, { url = \"https://b\" }]\n",
        )
        .expect("valid");
        let m = &c.registry("docker.io").mirrors;
        assert_eq!(
            m[0].capabilities,
            Capabilities {
                resolve: false,
                pull: true
            }
        );
        assert_eq!(m[1].capabilities, Capabilities::default());
        let e = parse("[registries.\"docker.io\"]\nmirrors = [{ url = \"https://a\", capabilities = [\"push\"] }]\n")
            .expect_err("unknown capability");
        assert!(e.to_string().starts_with("mirrors.toml:2:"), "{e}");
        assert!(e.to_string().contains("`push`"), "{e}");
    }

    #[test]
    fn unconfigured_registries_use_their_own_host() {
        let c = Config::default();
        assert_eq!(
            c.registry("nvcr.io").endpoint.url.as_str(),
            "https://nvcr.io/"
        );
        assert_eq!(
            c.registry("docker.io").endpoint.url.as_str(),
            "https://registry-1.docker.io/"
        );
        assert_eq!(
            c.registry("127.0.0.1:5000").endpoint.url.as_str(),
            "http://127.0.0.1:5000/"
        );
        assert!(c.registry("docker.io").mirrors.is_empty());
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse("[registries.\"docker.io\"]\nmirrors = [{ url = \"ftp://x\" }]\n")
            .expect_err("ftp is refused");
        let s = e.to_string();
        assert!(s.starts_with("mirrors.toml:2:20:"), "{s}");
        assert!(s.contains("https://"), "{s}");

        let e = parse("[registries.\"docker.io\"]\nmirors = []\n").expect_err("typo");
        assert!(e.to_string().starts_with("mirrors.toml:2:1:"), "{e}");
        assert!(e.to_string().contains("mirors"), "{e}");

        let e = parse("[registries.\"https://docker.io\"]\n").expect_err("scheme in key");
        assert!(e.to_string().contains("not a registry host"), "{e}");

        let e = parse("[registries.\"docker.io\"\n").expect_err("syntax");
        assert!(e.to_string().starts_with("mirrors.toml:1:"), "{e}");
    }

    #[test]
    fn ipv6_hosts_get_bracketed_urls() {
        let c = Config::default();
        assert_eq!(
            c.registry("[::1]:5000").endpoint.url.as_str(),
            "http://[::1]:5000/"
        );
        assert_eq!(
            c.registry("[2001:db8::1]:5000").endpoint.url.as_str(),
            "https://[2001:db8::1]:5000/"
        );
        // A reference's host and the endpoint built from it name the same authority.
        let image = c
            .canonicalize("[2001:DB8::1]:5000/nvidia/cuda:t")
            .expect("valid");
        let endpoint = c.registry(&image.image.registry).endpoint;
        assert_eq!(endpoint.authority(), image.image.registry);
        // Keys are read in the same canonical form.
        let c =
            parse("[registries.\"[0:0::1]:05000\"]\nmirrors = [{ url = \"http://[::1]:6000\" }]\n")
                .expect("valid");
        assert_eq!(c.registry("[::1]:5000").mirrors.len(), 1);
        assert_eq!(c.registry_for_mirror_host("[::1]:6000"), Some("[::1]:5000"));
    }

    #[test]
    fn errors_escape_control_characters_from_the_file() {
        for text in [
            "[registries.\"docker.io\\u001b[2J\"]\n",
            "[registries.\"docker.io\"]\nmirrors = [{ url = \"https://a\\u0007b\" }]\n",
            "[registries.\"docker.io\"]\nmirrors = [{ url = \"ftp://\\u001b\" }]\n",
            "[registries.\"docker.io\"]\nmirrors = [{ url = \"https://a\", capabilities = [\"\\u001b\"] }]\n",
            "[registries.\"docker.io\"]\n\"x\\u001by\" = 1\n",
        ] {
            let e = parse(text).expect_err("invalid");
            let s = e.to_string();
            assert!(!cudaimg_oci::text::has_unsafe(&s), "{text:?}: {s:?}");
        }
        let e = parse("[registries.\"a:0\"]\n").expect_err("port 0");
        assert!(e.to_string().contains("`0` is not a port"), "{e}");
    }

    #[test]
    fn credentials_in_urls_are_refused_without_echoing_them() {
        let e = parse(
            "[registries.\"docker.io\"]\nmirrors = [{ url = \"https://u:s3cret@m.example\" }]\n",
        )
        .expect_err("userinfo");
        let s = e.to_string();
        assert!(!s.contains("s3cret"), "{s}");
        assert!(s.contains("docker login m.example"), "{s}");
    }
}
