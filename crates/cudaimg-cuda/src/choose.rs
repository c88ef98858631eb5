//! Choosing among a registry's tags: filters (`--cuda 12.4 --flavor runtime --cudnn --os
//! ubuntu22.04`), the order they are listed in (newest first), and the one tag to recommend
//! with the reasons for it.

use std::cmp::Reverse;

use super::eol;
use super::tag::{CudaTag, Flavor};
use super::version::CudaVersion;

/// A version filter: `12`, `12.4` or `12.4.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionFilter {
    major: u32,
    minor: Option<u32>,
    patch: Option<u32>,
}

impl VersionFilter {
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.is_empty() || parts.len() > 3 {
            return None;
        }
        let n: Vec<u32> = parts
            .iter()
            .map(|p| {
                (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| p.parse().ok())
                    .flatten()
            })
            .collect::<Option<_>>()?;
        Some(VersionFilter {
            major: n[0],
            minor: n.get(1).copied(),
            patch: n.get(2).copied(),
        })
    }

    pub fn matches(&self, v: CudaVersion) -> bool {
        v.major == self.major
            && self.minor.is_none_or(|m| m == v.minor)
            && self.patch.is_none_or(|p| Some(p) == v.patch)
    }
}

/// What `cudaimg tags` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub cuda: Option<VersionFilter>,
    pub flavor: Option<Flavor>,
    /// Only tags with cuDNN.
    pub cudnn: bool,
    pub os: Option<String>,
}

impl Filter {
    pub fn matches(&self, t: &CudaTag) -> bool {
        self.cuda.is_none_or(|f| f.matches(t.version))
            && self.flavor.is_none_or(|f| f == t.flavor)
            && (!self.cudnn || t.cudnn.is_some())
            && self.os.as_ref().is_none_or(|os| t.os.as_ref() == Some(os))
    }
}

/// Newest version first; then base, runtime, devel; plain before cuDNN; then by OS.
pub fn sort(tags: &mut [CudaTag]) {
    tags.sort_by(|a, b| {
        b.version
            .cmp(&a.version)
            .then(a.tensorrt.cmp(&b.tensorrt))
            .then(a.flavor.cmp(&b.flavor))
            .then(a.cudnn.cmp(&b.cudnn))
            .then(a.os.cmp(&b.os))
            .then(a.rc.cmp(&b.rc))
    });
}

/// The recommended tag and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recommendation {
    pub tag: String,
    pub reasons: Vec<String>,
}

/// Ubuntu LTS releases NVIDIA builds on, most preferred first.
const PREFERRED_OS: &[&str] = &["ubuntu24.04", "ubuntu22.04"];

/// Picks one of `matched` (all passing `filter`): supported before end-of-life (per the
/// tables as of [`eol::AS_OF`]), the newest version, no release candidates or `TensorRT`
/// variants unless nothing else matches; `runtime` when no flavor was asked for, no cuDNN
/// unless asked, and the newest Ubuntu LTS when no OS was asked for.
pub fn recommend(matched: &[CudaTag], filter: &Filter) -> Option<Recommendation> {
    let os_rank = |t: &CudaTag| {
        t.os.as_deref()
            .and_then(|os| PREFERRED_OS.iter().position(|p| *p == os))
            .unwrap_or(PREFERRED_OS.len())
    };
    let flavor_rank = |t: &CudaTag| match (filter.flavor, t.flavor) {
        (Some(_), _) | (None, Flavor::Runtime) => 0,
        (None, Flavor::Devel) => 1,
        (None, Flavor::Base) => 2,
    };
    let eol_of = |t: &CudaTag| eol::support(t.version, false).eol == Some(true);
    let best = matched.iter().min_by_key(|t| {
        (
            t.rc || t.tensorrt,
            eol_of(t),
            // A tag the tables know in full before one they only parse.
            !t.unknown.is_empty(),
            Reverse(t.version),
            flavor_rank(t),
            !filter.cudnn && t.cudnn.is_some(),
            os_rank(t),
            t.os.is_none(),
            t.tag.clone(),
        )
    })?;
    let mut reasons = Vec::new();
    let newest = matched
        .iter()
        .filter(|t| !t.rc && !t.tensorrt)
        .map(|t| t.version)
        .max();
    let supported = eol::support(best.version, false);
    match (newest, supported.eol) {
        (Some(n), Some(false)) if n > best.version => reasons.push(format!(
            "CUDA {}: the newest matching version that is not past end of life ({n} is newer, \
             but CUDA {} is end-of-life as of {})",
            best.version,
            n.minor_only(),
            eol::AS_OF
        )),
        _ => reasons.push(format!(
            "CUDA {}: the newest matching {}",
            best.version,
            if filter
                .cuda
                .is_some_and(|f| f.minor.is_some() && f.patch.is_none())
            {
                "patch of the requested minor"
            } else {
                "version"
            }
        )),
    }
    if supported.eol == Some(true) {
        reasons.push(format!(
            "past end of life as of {}: {}",
            eol::AS_OF,
            supported.reasons.join("; ")
        ));
    }
    if filter.flavor.is_none() {
        reasons.push(match best.flavor {
            Flavor::Runtime => "runtime: runs pre-built CUDA applications; use `--flavor devel` \
                                for nvcc and headers to compile CUDA code"
                .to_owned(),
            other => format!("{other}: CUDA {} has no matching runtime tag", best.version),
        });
    }
    if !filter.cudnn && !best.cudnn.is_some() && matched.iter().any(|t| t.cudnn.is_some()) {
        reasons.push("without cuDNN: `--cudnn` for deep-learning frameworks that need it".into());
    }
    if filter.os.is_none() {
        if let Some(os) = best.os.as_deref().filter(|os| PREFERRED_OS.contains(os)) {
            reasons.push(format!(
                "{os}: an Ubuntu LTS, the best-supported OS in NVIDIA's images (preferred: {})",
                PREFERRED_OS.join(", then ")
            ));
        }
    }
    if best.rc || best.tensorrt {
        reasons.push("only release-candidate or TensorRT tags match".into());
    }
    Some(Recommendation {
        tag: best.tag.clone(),
        reasons,
    })
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<CudaTag> {
        list.iter().map(|t| CudaTag::parse(t).expect(t)).collect()
    }

    const TAGS: &[&str] = &[
        "12.4.0-runtime-ubuntu22.04",
        "12.4.1-runtime-ubuntu22.04",
        "12.4.1-runtime-ubuntu20.04",
        "12.4.1-runtime-rockylinux9",
        "12.4.1-devel-ubuntu22.04",
        "12.4.1-cudnn-runtime-ubuntu22.04",
        "12.4.1-base-ubuntu22.04",
        "12.5.1-runtime-ubuntu24.04",
        "12.5.1-runtime-ubuntu22.04",
        "12.8.2-runtime-ubuntu24.04",
        "12.9.1-runtime-ubuntu24.04",
        "13.0.0-tensorrt-runtime-ubuntu24.04",
        "11.0-devel-ubuntu18.04-rc",
    ];

    #[test]
    fn version_filters() {
        let f = |s: &str| VersionFilter::parse(s).expect(s);
        let v = |s: &str| CudaVersion::parse(s).expect(s);
        assert!(f("12").matches(v("12.9.1")));
        assert!(f("12.4").matches(v("12.4.1")));
        assert!(!f("12.4").matches(v("12.5.1")));
        assert!(f("12.4.1").matches(v("12.4.1")));
        assert!(!f("12.4.1").matches(v("12.4.0")));
        assert!(f("10.2").matches(v("10.2")));
        for bad in ["", "x", "12.", "12.4.1.1", "-1"] {
            assert!(VersionFilter::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn newest_patch_of_the_minor_on_an_ubuntu_lts() {
        let all = tags(TAGS);
        let filter = Filter {
            cuda: VersionFilter::parse("12.4"),
            ..Filter::default()
        };
        let matched: Vec<CudaTag> = all.into_iter().filter(|t| filter.matches(t)).collect();
        let r = recommend(&matched, &filter).expect("one");
        assert_eq!(r.tag, "12.4.1-runtime-ubuntu22.04");
        assert!(
            r.reasons[0].contains("patch of the requested minor"),
            "{r:?}"
        );
        assert!(
            r.reasons.iter().any(|x| x.contains("past end of life")),
            "{r:?}"
        );
        assert!(r.reasons.iter().any(|x| x.contains("Ubuntu LTS")), "{r:?}");
    }

    #[test]
    fn supported_beats_newer_end_of_life() {
        let all = tags(TAGS);
        let filter = Filter {
            cuda: VersionFilter::parse("12"),
            ..Filter::default()
        };
        let matched: Vec<CudaTag> = all.into_iter().filter(|t| filter.matches(t)).collect();
        let r = recommend(&matched, &filter).expect("one");
        // 12.9 shipped with R575, which the table lists as ended; 12.8 with R570.
        assert_eq!(r.tag, "12.8.2-runtime-ubuntu24.04");
        assert!(r.reasons[0].contains("12.9.1 is newer"), "{r:?}");
    }

    #[test]
    fn filters_and_order() {
        let mut all = tags(TAGS);
        sort(&mut all);
        assert_eq!(all[0].tag, "13.0.0-tensorrt-runtime-ubuntu24.04");
        assert_eq!(
            all.last().map(|t| t.tag.as_str()),
            Some("11.0-devel-ubuntu18.04-rc")
        );
        let filter = Filter {
            cudnn: true,
            ..Filter::default()
        };
        let m: Vec<&CudaTag> = all.iter().filter(|t| filter.matches(t)).collect();
        assert_eq!(m.len(), 1);
        let filter = Filter {
            os: Some("rockylinux9".into()),
            flavor: Some(Flavor::Runtime),
            ..Filter::default()
        };
        let m: Vec<CudaTag> = all.iter().filter(|t| filter.matches(t)).cloned().collect();
        assert_eq!(m.len(), 1);
        assert_eq!(
            recommend(&m, &filter).expect("one").tag,
            "12.4.1-runtime-rockylinux9"
        );
        assert!(recommend(&[], &filter).is_none());
    }

    #[test]
    fn release_candidates_only_when_nothing_else() {
        let m = tags(&["11.0-devel-ubuntu18.04-rc"]);
        let r = recommend(&m, &Filter::default()).expect("one");
        assert!(r.reasons.iter().any(|x| x.contains("release-candidate")));
    }
}
