//! Image references: Docker's normalization (`ubuntu` is `docker.io/library/ubuntu:latest`),
//! and canonicalization of mirror-prefixed names to the registry the mirror stands for
//! (`docker.xuanyuan.run/nvidia/cuda:T` is `docker.io/nvidia/cuda:T` when that host is a
//! configured docker.io mirror).
//!
//! The grammar itself is Docker's, through `oci-spec`'s parser (re-exported by `oci-client`);
//! this module adds the mirror rule and errors that say how to write the name instead.

use std::fmt;

use oci_client::{ParseError, Reference};

use crate::digest::{Digest, DigestError};

/// A fully normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Canonical registry host, with port if any (`docker.io`, `nvcr.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path within the registry (`nvidia/cuda`, `library/ubuntu`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error)]
#[error("`{input}` is not a valid image reference: {reason}")]
pub struct ReferenceError {
    pub input: String,
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

impl ImageRef {
    /// Parses `input` with Docker's normalization rules.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err = |reason: String| ReferenceError {
            input: input.to_owned(),
            reason,
        };
        if input.contains("://") {
            return Err(err(
                "a reference names no scheme; drop the `http://` or `https://`".into(),
            ));
        }
        if input.trim() != input {
            return Err(err("it has leading or trailing white space".into()));
        }
        if let Some((_, digest)) = input.rsplit_once('@') {
            Digest::parse(digest).map_err(|e| err(e.to_string()))?;
        }
        let parsed = Reference::try_from(input).map_err(|e| err(describe(&e)))?;
        // Docker refuses these; oci-spec's grammar lets them through.
        if parsed.repository().chars().any(|c| c.is_ascii_uppercase()) {
            return Err(err("repository names must be lowercase".into()));
        }
        let digest = parsed
            .digest()
            .map(Digest::parse)
            .transpose()
            .map_err(|e: DigestError| err(e.to_string()))?;
        Ok(ImageRef {
            registry: parsed.registry().to_owned(),
            repository: parsed.repository().to_owned(),
            tag: parsed.tag().map(str::to_owned),
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
        self.registry = registry.to_owned();
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

fn describe(e: &ParseError) -> String {
    match e {
        ParseError::NameEmpty => "it is empty".into(),
        ParseError::NameTooLong => "the repository name is longer than 255 characters".into(),
        ParseError::DigestInvalidFormat | ParseError::DigestInvalidLength => {
            "the digest after `@` must be `sha256:` followed by 64 hex characters".into()
        }
        ParseError::DigestUnsupported => "only sha256 digests are supported".into(),
        _ => "it does not follow the [HOST[:PORT]/]NAME[:TAG][@DIGEST] grammar".into(),
    }
}

#[cfg(test)]
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
}
