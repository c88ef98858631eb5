//! Image references: Docker's normalization (`ubuntu` is `docker.io/library/ubuntu:latest`),
//! and canonicalization of mirror-prefixed names to the registry the mirror stands for
//! (`docker.xuanyuan.run/nvidia/cuda:T` is `docker.io/nvidia/cuda:T` when that host is a
//! configured docker.io mirror).
//!
//! The grammar is Docker's, as `distribution/reference` (`regexp.go`, `normalize.go`) writes it:
//!
//! ```text
//! reference := name [":" tag] ["@" digest]
//! name      := [host [":" port] "/"] path          path := component ("/" component)*
//! host      := domain-component ("." domain-component)* | "[" IPv6 "]"
//! component := [a-z0-9]+ (("." | "_" | "__" | "-"+) [a-z0-9]+)*
//! tag       := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}          (ASCII, as Go's `\w`)
//! ```
//!
//! The first path element is a host when it is `localhost` or holds a `.` or `:`. It is parsed
//! here, by hand, rather than by `oci-spec`'s regular expression, which reads `\w` as Unicode
//! (it took `nvidia/cuda:タグ`, which skopeo then refuses) and knows no IPv6 literals. cudaimg
//! is stricter than Docker in three places, each because the looser form cannot work: a port
//! is 1 to 65535, the only digest algorithm is sha256, and a first element with capitals but
//! no `.` or `:` is refused as a repository that must be lowercase, not taken as a host. Hosts
//! are written canonically: IPv6 in its RFC 5952 form and ports without leading zeros, so that
//! a name and the URL built from it agree on the authority.
//!
//! Every error says which part is wrong and echoes the input through [`shown`], so a control
//! character in it reaches the terminal escaped.

use std::fmt;
use std::net::Ipv6Addr;

use crate::digest::Digest;
use crate::text::shown;

/// A fully normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Canonical registry host, with port if any (`docker.io`, `nvcr.io`, `127.0.0.1:5000`,
    /// `[::1]:5000`).
    pub registry: String,
    /// Repository path within the registry (`nvidia/cuda`, `library/ubuntu`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error)]
#[error("`{}` is not a valid image reference: {reason}", shown(input))]
pub struct ReferenceError {
    pub input: String,
    /// Already safe to print: every piece of the input in it went through [`shown`].
    pub reason: String,
}

impl ReferenceError {
    pub fn hint(&self) -> String {
        "write it as [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST], for example \
         `nvidia/cuda:12.4.1-runtime-ubuntu22.04` or `nvcr.io/nvidia/pytorch:24.05-py3`"
            .to_owned()
    }
}

pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's legacy name, normalized to [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// The longest repository path Docker accepts (`RepositoryNameTotalLengthMax`).
const PATH_MAX: usize = 255;
/// The longest tag.
const TAG_MAX: usize = 128;

/// Checks a registry host as a reference names it (`host[:port]`, IPv6 in brackets) and
/// returns its canonical form; the error says what is wrong with it.
pub fn registry_host(host: &str) -> Result<String, String> {
    let (name, port) = if let Some(inner) = host.strip_prefix('[') {
        let Some((addr, after)) = inner.split_once(']') else {
            return Err(format!(
                "the IPv6 address in `{}` has no closing `]`",
                shown(host)
            ));
        };
        let ok = !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        let parsed = addr.parse::<Ipv6Addr>().ok().filter(|_| ok);
        let Some(ip) = parsed else {
            return Err(format!(
                "`[{}]` is not an IPv6 address (hex digits and `:` only, no zone, no dotted \
                 IPv4 part)",
                shown(addr)
            ));
        };
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                format!("`{}` after the IPv6 address must be `:PORT`", shown(after))
            })?),
        };
        (format!("[{ip}]"), port)
    } else {
        let (name, port) = match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err(format!(
                "`{}` is not a host: an IPv6 address goes in brackets, as in `[::1]:5000`",
                shown(host)
            ));
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        };
        if !name.split('.').all(component_ok) {
            return Err(format!(
                "`{}` is not a host name: dot-separated ASCII letters, digits and inner `-`",
                shown(name)
            ));
        }
        (name.to_owned(), port)
    };
    match port {
        None => Ok(name),
        Some(p) => {
            // Docker takes any digits; leading zeros are dropped (`05000` is `5000`).
            let digits = p.trim_start_matches('0');
            let n = (!p.is_empty() && digits.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse::<u32>().ok().or(Some(0)))
                .flatten()
                .filter(|n| (1..=65535).contains(n));
            match n {
                Some(n) => Ok(format!("{name}:{n}")),
                None => Err(format!(
                    "`{}` is not a port: a port is a number from 1 to 65535",
                    shown(p)
                )),
            }
        }
    }
}

/// Whether `t` is a tag as Docker's grammar has it: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    t.len() <= TAG_MAX
        && t.bytes().next().is_some_and(word)
        && t.bytes().all(|b| word(b) || matches!(b, b'.' | b'-'))
}

/// Whether `c` is a path component: `[a-z0-9]+` joined by `.`, `_`, `__` or a run of `-`.
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if !bytes.first().is_some_and(|b| alnum(*b)) || !bytes.last().is_some_and(|b| alnum(*b)) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl ImageRef {
    /// Parses `input` with Docker's normalization rules.
    // Docker's grammar, step by step (digest, tag, host, port, path components), in the
    // order distribution/reference applies it; each step's error names its part.
    #[allow(clippy::too_many_lines)]
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err = |reason: String| ReferenceError {
            input: input.to_owned(),
            reason,
        };
        if input.is_empty() {
            return Err(err("it is empty".into()));
        }
        if input.contains("://") {
            return Err(err(
                "a reference names no scheme; drop the `http://` or `https://`".into(),
            ));
        }
        if input.trim() != input {
            return Err(err("it has leading or trailing white space".into()));
        }
        if let Some(c) = input.chars().find(|c| c.is_control()) {
            return Err(err(format!(
                "it holds the control character `{}`",
                c.escape_debug()
            )));
        }
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(err(
                "64 hex digits are an image ID, not a name; write `NAME@sha256:…`".into(),
            ));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(Digest::parse(d).map_err(|e| err(e.to_string()))?),
            ),
            None => (input, None),
        };
        // The tag follows the last `:` after the last `/`: a host's port comes before a `/`.
        let last = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last..].find(':') {
            Some(i) => (&rest[..last + i], Some(&rest[last + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !is_tag(t) {
                return Err(err(format!(
                    "the tag `{}` is not valid: a tag is 1 to {TAG_MAX} ASCII letters, digits, \
                     `_`, `.` and `-`, and does not start with `.` or `-`",
                    shown(t)
                )));
            }
        }
        if name.is_empty() {
            return Err(err("it names no repository".into()));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if first == "localhost" || first.contains(['.', ':', '[']) => {
                let host = registry_host(first).map_err(err)?;
                (
                    if host == DOCKER_HUB_LEGACY {
                        DOCKER_HUB.to_owned()
                    } else {
                        host
                    },
                    path,
                )
            }
            _ => (DOCKER_HUB.to_owned(), name),
        };
        if path.is_empty() {
            return Err(err("it names no repository after the host".into()));
        }
        if let Some(bad) = path.split('/').find(|c| !is_path_component(c)) {
            let reason = if bad.bytes().any(|b| b.is_ascii_uppercase()) {
                "repository names must be lowercase".to_owned()
            } else {
                format!(
                    "`{}` is not a repository name part: lowercase letters and digits, \
                     joined by `.`, `_`, `__` or `-`, between single `/`",
                    shown(bad)
                )
            };
            return Err(err(reason));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        if repository.len() > PATH_MAX {
            return Err(err(format!(
                "the repository name is longer than {PATH_MAX} characters"
            )));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Rewrites a reference whose host is a mirror of `registry` into that registry's name.
    ///
    /// Docker Hub's single-component names gain their implicit `library/` there, as they
    /// would have if written without the mirror prefix.
    pub fn with_registry(mut self, registry: &str) -> Self {
        if registry == DOCKER_HUB && !self.repository.contains('/') {
            self.repository = format!("library/{}", self.repository);
        }
        registry.clone_into(&mut self.registry);
        self
    }

    /// `registry/repository`, the name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn manifest_reference(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.as_str(),
            (None, Some(t)) => t,
            (None, None) => "latest",
        }
    }

    /// The same name and tag, without a digest.
    pub fn without_digest(&self) -> ImageRef {
        ImageRef {
            digest: None,
            ..self.clone()
        }
    }

    /// How a lockfile names this image: by tag when there is one (the lock supplies the
    /// digest), else by digest.
    pub fn lock_key(&self) -> String {
        if self.tag.is_some() {
            self.without_digest().to_string()
        } else {
            self.to_string()
        }
    }

    /// Docker's short form (`nvidia/cuda:TAG`, `ubuntu:22.04`), as `docker images` shows it.
    pub fn docker_form(&self) -> String {
        let mut name = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_owned()
        } else {
            self.name()
        };
        if let Some(t) = &self.tag {
            name = format!("{name}:{t}");
        }
        if let Some(d) = &self.digest {
            name = format!("{name}@{d}");
        }
        name
    }
}

/// The canonical form: `docker.io/nvidia/cuda:TAG`, `name@sha256:…`, or `name:TAG@sha256:…`.
impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        ImageRef::parse(s).expect(s).to_string()
    }

    #[test]
    fn docker_normalization() {
        assert_eq!(canon("ubuntu"), "docker.io/library/ubuntu:latest");
        assert_eq!(canon("ubuntu:22.04"), "docker.io/library/ubuntu:22.04");
        assert_eq!(
            canon("nvidia/cuda:12.4.1-runtime-ubuntu22.04"),
            "docker.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04"
        );
        assert_eq!(
            canon("index.docker.io/nvidia/cuda:1"),
            "docker.io/nvidia/cuda:1"
        );
        assert_eq!(
            canon("nvcr.io/nvidia/pytorch:24.05-py3"),
            "nvcr.io/nvidia/pytorch:24.05-py3"
        );
        assert_eq!(canon("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(canon("127.0.0.1:5000/cuda:x"), "127.0.0.1:5000/cuda:x");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            canon(&format!("nvidia/cuda@{d}")),
            format!("docker.io/nvidia/cuda@{d}")
        );
        assert_eq!(
            canon(&format!("nvidia/cuda:t@{d}")),
            format!("docker.io/nvidia/cuda:t@{d}")
        );
    }

    #[test]
    fn mirror_prefix_becomes_the_registry() {
        let r = ImageRef::parse("docker.xuanyuan.run/ubuntu:22.04").expect("parses");
        assert_eq!(r.registry, "docker.xuanyuan.run");
        assert_eq!(
            r.with_registry("docker.io").to_string(),
            "docker.io/library/ubuntu:22.04"
        );
    }

    #[test]
    fn docker_form_drops_hub_prefixes() {
        let r = ImageRef::parse("ubuntu:22.04").expect("parses");
        assert_eq!(r.docker_form(), "ubuntu:22.04");
        let r = ImageRef::parse("nvcr.io/nvidia/cuda:1").expect("parses");
        assert_eq!(r.docker_form(), "nvcr.io/nvidia/cuda:1");
    }

    #[test]
    fn bad_references_say_why() {
        let e = ImageRef::parse("NVIDIA/cuda:12").expect_err("must be refused");
        assert!(e.to_string().contains("lowercase"), "{e}");
        let e = ImageRef::parse("https://docker.io/nvidia/cuda").expect_err("must be refused");
        assert!(e.to_string().contains("scheme"), "{e}");
        let e = ImageRef::parse("nvidia/cuda@sha256:123").expect_err("must be refused");
        assert!(e.to_string().contains("64 hex"), "{e}");
        let e = ImageRef::parse("").expect_err("must be refused");
        assert!(e.to_string().contains("empty"), "{e}");
        assert!(ImageRef::parse("nvidia/cuda:bad tag").is_err());
        assert!(ImageRef::parse("nvidia//cuda").is_err());
    }

    fn refused(input: &str, says: &str) {
        match ImageRef::parse(input) {
            Ok(r) => panic!("{input:?} parsed as {r:?}"),
            Err(e) => assert!(e.to_string().contains(says), "{input:?}: {e}"),
        }
    }

    #[test]
    fn tags_are_ascii_words() {
        // Go's `\w` is ASCII: skopeo and Docker refuse these names.
        refused("nvidia/cuda:タグ", "the tag `タグ` is not valid");
        refused("nvidia/cuda:é", "is not valid");
        refused("nvidia/cuda:.hidden", "is not valid");
        refused("nvidia/cuda:-x", "is not valid");
        refused("nvidia/cuda:", "the tag `` is not valid");
        refused(&format!("nvidia/cuda:{}", "a".repeat(129)), "1 to 128");
        assert_eq!(
            canon(&format!("nvidia/cuda:_{}", "a".repeat(127))),
            format!("docker.io/nvidia/cuda:_{}", "a".repeat(127))
        );
        assert_eq!(
            canon("nvidia/cuda:A.b-C_1"),
            "docker.io/nvidia/cuda:A.b-C_1"
        );
    }

    #[test]
    fn ports_run_from_1_to_65535() {
        refused("localhost:0/x", "`0` is not a port");
        refused("127.0.0.1:99999/x", "`99999` is not a port");
        refused("127.0.0.1:65536/x", "`65536` is not a port");
        refused("127.0.0.1:/x", "`` is not a port");
        refused("127.0.0.1:5x/x", "`5x` is not a port");
        assert_eq!(canon("127.0.0.1:65535/x"), "127.0.0.1:65535/x:latest");
        assert_eq!(canon("registry.example:1/x:t"), "registry.example:1/x:t");
        assert_eq!(canon("localhost:05000/x"), "localhost:5000/x:latest");
        assert_eq!(canon("localhost:000065535/x"), "localhost:65535/x:latest");
        refused("localhost:000/x", "`000` is not a port");
        refused("localhost:0065536/x", "`0065536` is not a port");
    }

    #[test]
    fn ipv6_literals_in_brackets_are_hosts() {
        let r = ImageRef::parse("[::1]:5000/x").expect("Docker's grammar allows IPv6 literals");
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.repository, "x");
        assert_eq!(r.to_string(), "[::1]:5000/x:latest");
        assert_eq!(r.docker_form(), "[::1]:5000/x:latest");
        // Written canonically, so that the name and its URL's authority agree.
        assert_eq!(
            canon("[2001:DB8:0:0::1]/nvidia/cuda:t"),
            "[2001:db8::1]/nvidia/cuda:t"
        );
        assert_eq!(canon("[::1]/a/b"), "[::1]/a/b:latest");
        refused("[::1/x", "no closing `]`");
        refused("[fe80::1%eth0]:5000/x", "not an IPv6 address");
        refused("[::ffff:1.2.3.4]/x", "not an IPv6 address");
        refused("[]:5000/x", "not an IPv6 address");
        refused("[::1]x/y", "must be `:PORT`");
        refused("[::1]:0/y", "not a port");
        refused("::1/x", "goes in brackets");
    }

    #[test]
    fn hosts_follow_the_domain_grammar() {
        assert_eq!(canon("Registry.Example/a"), "Registry.Example/a:latest");
        assert_eq!(canon("docker.io/ubuntu"), "docker.io/library/ubuntu:latest");
        refused("-bad.example/a", "not a host name");
        refused("bad..example/a", "not a host name");
        refused("bad_host.example/a", "not a host name");
        refused("localhost/", "no repository after the host");
        refused(":tag", "names no repository");
        refused("a/b__c___d", "not a repository name part");
        assert_eq!(canon("a/b__c---d.e_f"), "docker.io/a/b__c---d.e_f:latest");
        refused(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "image ID",
        );
        refused(&format!("a/{}", "b".repeat(254)), "longer than 255");
        assert!(ImageRef::parse(&format!("a/{}", "b".repeat(253))).is_ok());
    }

    #[test]
    fn errors_escape_control_characters() {
        for input in [
            "nvidia/cuda:\x1b[2J",
            "nvidia/cuda\n:t",
            "\x07",
            "nvidia/cuda:t@sha256:\x1b",
            "[\x1b]/x",
        ] {
            let e = ImageRef::parse(input).expect_err("control characters are refused");
            let text = e.to_string();
            assert!(!crate::text::has_unsafe(&text), "{text:?}");
            assert!(
                text.contains("\\u{1b}") || text.contains("\\n") || text.contains("\\u{7}"),
                "{text}"
            );
        }
    }
}
