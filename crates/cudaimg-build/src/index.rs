//! What a package index holds of torch, learned from wheel file names (no network here: the
//! binary fetches the PEP 503 simple page, or lists `--wheelhouse`, and hands the text over).
//!
//! A wheel's name spells torch × CUDA variant × Python (PEP 427, PEP 440 local versions):
//!
//! ```text
//! torch-2.14.0+cu130-cp313-cp313-manylinux_2_28_x86_64.whl
//!       ^version ^variant ^python     ^platform
//! ```
//!
//! Only wheels the build's platform can install count (`linux`/`manylinux` of the host's
//! architecture, or `any`); a wheel with no `+cuXYZ` has no variant cudaimg can read.

use std::collections::{BTreeMap, BTreeSet};

use crate::compat::{variant_cuda, Py, TorchVersion};

/// One torch wheel, as its name spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wheel {
    /// `2.14.0`, without the local part.
    pub version: String,
    /// `cu130` (the local version), when it names a CUDA variant.
    pub variant: Option<String>,
    /// `cp313` → 3.13; `None` for `py3` (any Python 3).
    pub python: Option<Py>,
}

/// Parses a torch wheel's file name; `None` for anything else (sdists, other projects,
/// platforms the build cannot install on `arch`: `x86_64` or `aarch64`).
pub fn parse_wheel(name: &str, arch: &str) -> Option<Wheel> {
    let stem = name.trim().strip_suffix(".whl")?;
    let parts: Vec<&str> = stem.split('-').collect();
    // name-version[-build]-python-abi-platform
    if !(5..=6).contains(&parts.len()) || !parts[0].eq_ignore_ascii_case("torch") {
        return None;
    }
    let platform = parts[parts.len() - 1];
    let python_tag = parts[parts.len() - 3];
    let installable = platform == "any"
        || (platform.contains("linux") && platform.split('.').any(|p| p.ends_with(arch)));
    if !installable {
        return None;
    }
    let (version, local) = match parts[1].split_once('+') {
        Some((v, l)) => (v, Some(l)),
        None => (parts[1], None),
    };
    TorchVersion::parse(version)?;
    let variant = local
        .filter(|l| variant_cuda(l).is_some())
        .map(str::to_owned);
    if local.is_some() && variant.is_none() {
        // `+cpu`, `+rocm6.2`: not a CUDA build.
        return None;
    }
    let python = python_tag
        .split('.')
        .find_map(|t| {
            let digits = t.strip_prefix("cp")?;
            let minor = digits.strip_prefix('3')?.parse().ok()?;
            Some(Some(Py(3, minor)))
        })
        .or_else(|| python_tag.split('.').any(|t| t == "py3").then_some(None))?;
    Some(Wheel {
        version: version.to_owned(),
        variant,
        python,
    })
}

/// The torch wheels one index (or wheelhouse) holds.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Where it was read: the index URL or the wheelhouse directory.
    pub source: String,
    pub wheels: Vec<Wheel>,
}

/// What the listing holds of one torch version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The version the listing holds (`2.14.0` for a request of `2.14`).
    pub version: String,
    /// Variant → the Pythons with a wheel (`None`: a `py3` wheel, any Python).
    pub variants: BTreeMap<String, BTreeSet<Option<Py>>>,
}

impl Offer {
    /// The Pythons `variant` has wheels for, as text (`3.12, 3.13`, or `any Python 3`).
    pub fn pythons_text(&self, variant: &str) -> String {
        let Some(set) = self.variants.get(variant) else {
            return "none".into();
        };
        if set.contains(&None) {
            return "any Python 3".into();
        }
        set.iter()
            .flatten()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether `variant` has a wheel for `python`.
    pub fn has(&self, variant: &str, python: Py) -> bool {
        self.variants
            .get(variant)
            .is_some_and(|s| s.contains(&None) || s.contains(&Some(python)))
    }
}

/// A version as numbers, for ordering (`2.14.0` → `[2, 14, 0]`).
pub fn version_key(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

impl Listing {
    /// From a PEP 503 simple page: each anchor's text is a file name.
    pub fn from_html(source: &str, html: &str, arch: &str) -> Listing {
        let mut names = Vec::new();
        for chunk in html.split("<a").skip(1) {
            let Some(after) = chunk.split_once('>').map(|(_, rest)| rest) else {
                continue;
            };
            let text = after.split("</a").next().unwrap_or_default();
            names.push(text.replace("%2B", "+").replace("&#43;", "+"));
        }
        Listing::from_names(source, names.iter().map(String::as_str), arch)
    }

    /// From file names (a wheelhouse directory).
    pub fn from_names<'a>(
        source: &str,
        names: impl IntoIterator<Item = &'a str>,
        arch: &str,
    ) -> Listing {
        Listing {
            source: source.to_owned(),
            wheels: names
                .into_iter()
                .filter_map(|n| parse_wheel(n, arch))
                .collect(),
        }
    }

    /// Whether any wheel names its CUDA variant (else the listing says nothing of variants).
    pub fn knows_variants(&self) -> bool {
        self.wheels.iter().any(|w| w.variant.is_some())
    }

    /// The newest version matching `torch` (`2.14` matches `2.14.x`; `2.14.0` itself).
    pub fn offer(&self, torch: &TorchVersion) -> Option<Offer> {
        let exact = torch.text.split('.').count() == 3;
        let version = self
            .wheels
            .iter()
            .map(|w| w.version.as_str())
            .filter(|v| {
                if exact {
                    version_key(v) == version_key(&torch.text)
                } else {
                    TorchVersion::parse(v).is_some_and(|t| t.minor == torch.minor)
                }
            })
            .max_by_key(|v| version_key(v))?
            .to_owned();
        let mut variants: BTreeMap<String, BTreeSet<Option<Py>>> = BTreeMap::new();
        for w in self.wheels.iter().filter(|w| w.version == version) {
            if let Some(v) = &w.variant {
                variants.entry(v.clone()).or_default().insert(w.python);
            }
        }
        Some(Offer { version, variants })
    }

    /// What the listing holds, newest first: `2.14.0 (cu126, cu130, cu132), 2.13.0 (…)`.
    pub fn summary(&self) -> String {
        let mut by_version: BTreeMap<Vec<u32>, (String, BTreeSet<String>)> = BTreeMap::new();
        for w in &self.wheels {
            let e = by_version
                .entry(version_key(&w.version))
                .or_insert_with(|| (w.version.clone(), BTreeSet::new()));
            if let Some(v) = &w.variant {
                e.1.insert(v.clone());
            }
        }
        if by_version.is_empty() {
            return "no torch wheel for this platform".into();
        }
        by_version
            .values()
            .rev()
            .take(6)
            .map(|(v, vs)| {
                if vs.is_empty() {
                    v.clone()
                } else {
                    format!(
                        "{v} ({})",
                        vs.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wheel_names_spell_torch_variant_and_python() {
        let w = parse_wheel(
            "torch-2.14.0+cu130-cp313-cp313-manylinux_2_28_x86_64.whl",
            "x86_64",
        )
        .unwrap();
        assert_eq!(w.version, "2.14.0");
        assert_eq!(w.variant.as_deref(), Some("cu130"));
        assert_eq!(w.python, Some(Py(3, 13)));
        assert!(parse_wheel(
            "torch-2.14.0+cu130-cp313-cp313-manylinux_2_28_aarch64.whl",
            "x86_64"
        )
        .is_none());
        assert!(parse_wheel("torch-2.14.0+cpu-cp313-cp313-linux_x86_64.whl", "x86_64").is_none());
        assert!(parse_wheel("torch-2.14.0-cp313-none-macosx_11_0_x86_64.whl", "x86_64").is_none());
        let any = parse_wheel("torch-2.5.1+cu124-py3-none-any.whl", "x86_64").unwrap();
        assert_eq!(any.python, None);
        assert!(parse_wheel("torchvision-0.20.1+cu124-py3-none-any.whl", "x86_64").is_none());
    }

    #[test]
    fn a_simple_page_lists_offers_newest_patch_first() {
        let html = r#"<html><body>
            <a href="/packages/torch-2.14.0%2Bcu126-cp312-cp312-manylinux_2_28_x86_64.whl#sha256=00">torch-2.14.0+cu126-cp312-cp312-manylinux_2_28_x86_64.whl</a><br>
            <a href="x">torch-2.14.1+cu130-cp313-cp313-manylinux_2_28_x86_64.whl</a>
            <a href="x">torch-2.13.0+cu132-cp313-cp313-manylinux_2_28_x86_64.whl</a>
            </body></html>"#;
        let l = Listing::from_html("http://i/simple/", html, "x86_64");
        assert_eq!(l.wheels.len(), 3);
        let o = l.offer(&TorchVersion::parse("2.14").unwrap()).unwrap();
        assert_eq!(o.version, "2.14.1");
        assert!(o.has("cu130", Py(3, 13)));
        assert!(!o.has("cu126", Py(3, 12)));
        let o = l.offer(&TorchVersion::parse("2.14.0").unwrap()).unwrap();
        assert!(o.has("cu126", Py(3, 12)));
        assert!(l.offer(&TorchVersion::parse("2.12").unwrap()).is_none());
        assert_eq!(
            l.summary(),
            "2.14.1 (cu130), 2.14.0 (cu126), 2.13.0 (cu132)"
        );
    }
}
