//! Platforms (`os/arch[/variant]`): parsing `--platform`, the host default, and matching
//! against the entries of a manifest list or OCI index.

use std::fmt;
use std::str::FromStr;

/// A target platform as written in manifest lists.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a platform: expected `os/arch` or `os/arch/variant`, such as `linux/amd64` or `linux/arm64/v8`")]
pub struct PlatformError(String);

impl Platform {
    /// The platform of the machine cudaimg runs on, in Go's `GOARCH` spelling.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "powerpc64" => "ppc64le",
            "x86" => "386",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Whether an index entry for `candidate` can serve a request for `self`.
    ///
    /// A request without a variant takes any variant. arm64 entries without a variant
    /// are v8, as containerd's matcher treats them.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match (&self.variant, &candidate.variant) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
        }
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        };
        if parts.len() < 2 {
            return Err(PlatformError(s.to_owned()));
        }
        // The names `uname -m` and distributions use, as Docker (containerd's
        // `platforms.Normalize`) maps them; `x86-64` has a `-` no canonical name has.
        let (architecture, implied_variant) = match parts[1] {
            "x86_64" | "x86-64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "i386" => ("386", None),
            "armhf" => ("arm", Some("v7")),
            "armel" => ("arm", Some("v6")),
            other => (other, None),
        };
        let variant = match (architecture, parts.get(2).copied().or(implied_variant)) {
            // `arm64/8` and `arm/7` as Docker reads them: `v8`, `v7`.
            ("arm64" | "arm", Some(v)) if v.bytes().all(|b| b.is_ascii_digit()) => {
                Some(format!("v{v}"))
            }
            (_, v) => v.map(str::to_owned),
        };
        let os = parts[0];
        if parts.len() > 3
            || !valid(os)
            || !valid(architecture)
            || variant.as_deref().is_some_and(|v| !valid(v))
        {
            return Err(PlatformError(s.to_owned()));
        }
        Ok(Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant,
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().expect("valid platform")
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert_eq!(p("linux/amd64").variant, None);
        for bad in ["linux", "linux/", "/amd64", "Linux/AMD64", "a/b/c/d", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_names_docker_maps_are_mapped() {
        for (given, is) in [
            ("linux/x86_64", "linux/amd64"),
            ("linux/x86-64", "linux/amd64"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/aarch64/v8", "linux/arm64/v8"),
            ("linux/arm64/8", "linux/arm64/v8"),
            ("linux/arm64/v8", "linux/arm64/v8"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/i386", "linux/386"),
        ] {
            assert_eq!(p(given).to_string(), is, "{given}");
        }
        assert!("linux/x86-64/v2/x".parse::<Platform>().is_err());
    }

    #[test]
    fn matching_follows_variant_rules() {
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(p("linux/arm64/v8").matches(&p("linux/arm64")));
        assert!(!p("linux/arm/v7").matches(&p("linux/arm")));
        assert!(!p("linux/amd64").matches(&p("linux/arm64")));
        assert!(!p("windows/amd64").matches(&p("linux/amd64")));
    }
}
