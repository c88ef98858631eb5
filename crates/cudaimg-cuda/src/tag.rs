//! The tag grammar of `nvidia/cuda`, in every form it has had:
//!
//! ```text
//! VERSION [-cudnn|-cudnnN] [-tensorrt] -FLAVOR [-OS] [-rc]
//! 12.4.1-cudnn-runtime-ubuntu22.04   11.8.0-cudnn8-devel-ubi8   13.0.0-tensorrt-devel-ubuntu24.04
//! 10.2-base   9.0-cudnn7-devel   8.0-cudnn5-runtime-ubuntu16.04   11.0-cudnn8-devel-ubuntu18.04-rc
//! ```
//!
//! - VERSION is `X.Y.Z` from 11.0.3 on and `X.Y` before (11.x had both; 12.x and later
//!   only `X.Y.Z`).
//! - FLAVOR is `base` (from CUDA 9.0), `runtime` or `devel`; `tensorrt-runtime|devel` exist
//!   on 13.0.0 only.
//! - cuDNN: `cudnn2`-`cudnn6` up to CUDA 8.0, `cudnn7` on 8.0 to 10.2, `cudnn8` on 10.1 to
//!   12.3, `cudnn9` on 12.3 and 12.4, `cudnn` (cuDNN 9) from 12.4 on; `base` has none.
//! - OS is a family and its version (`ubuntu22.04`, `ubi9`, `rockylinux9`, …); old tags
//!   may have none.
//!
//! The sources are `docs/CUDA.md` and NVIDIA's tag lists (gitlab
//! nvidia/container-images/cuda, `doc/*-tags.md`); `crates/cudaimg-cuda/data/nvidia-cuda-tags.txt` holds
//! every tag those lists ever named, and each one parses with nothing unknown.
//!
//! A string outside the grammar, or a combination history rules out (cuDNN 7 on CUDA 12,
//! `base` with cuDNN, `TensorRT` before 13.0.0), is refused with the reason: never guessed at.
//! What NVIDIA may still add is never refused: an OS family or version, a cuDNN major, a CUDA
//! release, or a `TensorRT` variant that cudaimg's tables (as of [`eol::AS_OF`]) do not know is
//! parsed and marked in [`CudaTag::unknown`], with a note. Combinations whose existence
//! depends on a date (an OS NVIDIA added later) likewise only get a note: the registry decides.

use std::fmt;

use serde::Serialize;

use super::version::CudaVersion;
use super::{driver, eol};
use cudaimg_oci::text::shown;

/// What the image is built for: `base` < `runtime` < `devel`, each FROM the previous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Base,
    Runtime,
    Devel,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Base => "base",
            Flavor::Runtime => "runtime",
            Flavor::Devel => "devel",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "base" => Some(Flavor::Base),
            "runtime" => Some(Flavor::Runtime),
            "devel" => Some(Flavor::Devel),
            _ => None,
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cuDNN part of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cudnn {
    None,
    /// `cudnn`: cuDNN 9, the form from CUDA 12.4 on.
    Unversioned,
    /// `cudnn7`, `cudnn8`, …
    Major(u8),
}

impl Cudnn {
    /// The cuDNN major version the image carries, if any.
    pub fn major(self) -> Option<u8> {
        match self {
            Cudnn::None => None,
            Cudnn::Unversioned => Some(9),
            Cudnn::Major(n) => Some(n),
        }
    }

    pub fn is_some(self) -> bool {
        self != Cudnn::None
    }
}

impl fmt::Display for Cudnn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cudnn::None => f.write_str("none"),
            Cudnn::Unversioned => f.write_str("cudnn"),
            Cudnn::Major(n) => write!(f, "cudnn{n}"),
        }
    }
}

impl Serialize for Cudnn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A parsed `nvidia/cuda` tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaTag {
    pub tag: String,
    pub version: CudaVersion,
    pub cudnn: Cudnn,
    /// `tensorrt-runtime` / `tensorrt-devel` (13.0.0).
    pub tensorrt: bool,
    pub flavor: Flavor,
    /// `ubuntu22.04`, `ubi9`, …; `None` for old tags without one (`10.2-base`).
    pub os: Option<String>,
    /// A release-candidate image (`…-rc`).
    pub rc: bool,
    /// What cudaimg's tables do not know about this tag (an OS family, a cuDNN major, a CUDA
    /// release newer than the tables), one note each; empty for a fully known tag.
    pub unknown: Vec<String>,
}

/// Why a string is not an `nvidia/cuda` tag.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{}` is not an nvidia/cuda tag: {reason}", shown(tag))]
pub struct TagError {
    pub tag: String,
    pub reason: String,
    hint: Option<String>,
    /// The tag cannot exist on NVIDIA's registry whatever its list holds today: a retired
    /// alias (`latest`), a version form NVIDIA's tags never had (`12.4` from CUDA 12 on),
    /// an Ubuntu release that is not YY.MM. `pull` refuses these before any request.
    certain: bool,
}

impl TagError {
    fn new(tag: &str, reason: impl Into<String>) -> Self {
        TagError {
            tag: tag.to_owned(),
            reason: reason.into(),
            hint: None,
            certain: false,
        }
    }

    fn certainly(mut self) -> Self {
        self.certain = true;
        self
    }

    /// Whether no registry could have this tag (see the field): no need to ask one.
    pub fn is_certain(&self) -> bool {
        self.certain
    }

    fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn hint(&self) -> String {
        self.hint.clone().unwrap_or_else(|| {
            "nvidia/cuda tags read VERSION[-cudnn]-FLAVOR[-OS], for example \
             `12.4.1-cudnn-runtime-ubuntu22.04`; `cudaimg tags nvidia/cuda` lists the real ones"
                .to_owned()
        })
    }
}

/// OS families NVIDIA has built images on, with how the version follows the name.
const OS_FAMILIES: &[(&str, &str)] = &[
    ("ubuntu", "Ubuntu"),
    ("ubi", "Red Hat UBI"),
    ("rockylinux", "Rocky Linux"),
    ("oraclelinux", "Oracle Linux"),
    ("centos", "CentOS"),
    ("amzn", "Amazon Linux"),
    ("cm", "CBL-Mariner"),
    ("azl", "Azure Linux"),
];

/// Every OS NVIDIA's tag lists name, up to [`eol::AS_OF`] (`crates/cudaimg-cuda/data/nvidia-cuda-tags.txt`).
const KNOWN_OS: &[&str] = &[
    "ubuntu14.04",
    "ubuntu16.04",
    "ubuntu17.04",
    "ubuntu18.04",
    "ubuntu20.04",
    "ubuntu22.04",
    "ubuntu24.04",
    "ubuntu26.04",
    "ubi7",
    "ubi8",
    "ubi9",
    "ubi10",
    "rockylinux8",
    "rockylinux9",
    "rockylinux10",
    "oraclelinux8",
    "oraclelinux9",
    "centos6",
    "centos7",
    "centos8",
    "amzn2023",
    "cm2",
    "azl3",
];

/// Whether NVIDIA's lists, as cudaimg knows them, name `os`.
pub fn os_known(os: &str) -> bool {
    KNOWN_OS.contains(&os)
}

/// `ubuntu22.04` -> "Ubuntu 22.04"; `None` if the family or its version form is unknown.
pub fn os_name(os: &str) -> Option<String> {
    // Longest family first: `cm` must not claim `centos`.
    let mut families: Vec<&(&str, &str)> = OS_FAMILIES.iter().collect();
    families.sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
    for (family, name) in families {
        let Some(version) = os.strip_prefix(family) else {
            continue;
        };
        let ok = if *family == "ubuntu" {
            version.len() == 5
                && version.as_bytes()[2] == b'.'
                && version
                    .bytes()
                    .enumerate()
                    .all(|(i, b)| i == 2 || b.is_ascii_digit())
        } else {
            !version.is_empty() && version.len() <= 4 && version.bytes().all(|b| b.is_ascii_digit())
        };
        return ok.then(|| format!("{name} {version}"));
    }
    None
}

/// Whether `os` has the form of an OS in a tag: a lowercase family and a version of
/// dot-separated digits (`ubuntu22.04`, `ubi9`, `debian13`), known to the table or not.
pub fn is_os(os: &str) -> bool {
    let version = os.trim_start_matches(|c: char| c.is_ascii_lowercase());
    version.len() < os.len()
        && !version.is_empty()
        && version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn known_families() -> String {
    OS_FAMILIES
        .iter()
        .map(|(f, _)| format!("{f}…"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a note for something the tables do not know ends ([`CudaTag::seen_in_registry`]
/// replaces it for a tag a registry listed).
const TREATED_AS_UNKNOWN: &str = "; treated as unknown";

/// The note for something the tables do not know.
fn not_in_table(what: &str) -> String {
    format!(
        "{what} is not in cudaimg's table (as of {}){TREATED_AS_UNKNOWN}",
        eol::AS_OF
    )
}

/// Inclusive range of CUDA versions, compared at minor level (`12.3` covers `12.3.2`).
struct Minors {
    from: (u32, u32),
    to: (u32, u32),
}

impl Minors {
    fn contains(&self, v: CudaVersion) -> bool {
        (self.from..=self.to).contains(&v.minor_key())
    }
}

fn cudnn_era(cudnn: Cudnn) -> Option<(Minors, &'static str)> {
    let m = |from, to| Minors { from, to };
    Some(match cudnn {
        Cudnn::None => return None,
        Cudnn::Major(2..=6) => (m((6, 5), (8, 0)), "CUDA 8.0 and older"),
        Cudnn::Major(7) => (m((8, 0), (10, 2)), "CUDA 8.0 to 10.2"),
        Cudnn::Major(8) => (m((10, 1), (12, 3)), "CUDA 10.1 to 12.3"),
        Cudnn::Major(9) => (m((12, 3), (12, 4)), "CUDA 12.3 and 12.4"),
        Cudnn::Unversioned => (m((12, 4), (u32::MAX, u32::MAX)), "CUDA 12.4 and later"),
        Cudnn::Major(_) => return None,
    })
}

impl CudaTag {
    /// Parses a tag (the part after `:` in `nvidia/cuda:TAG`).
    pub fn parse(tag: &str) -> Result<Self, TagError> {
        let err = |reason: String| TagError::new(tag, reason);
        if tag.is_empty() {
            return Err(err("it is empty".into()));
        }
        if tag.len() > 128
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(err(
                "a tag is at most 128 letters, digits, `.`, `-` and `_`".into(),
            ));
        }
        if tag == "latest" {
            return Err(err("nvidia/cuda has no `latest` tag any more".into())
                .certainly()
                .with_hint(
                    "name a CUDA version and flavor, for example `12.4.1-runtime-ubuntu22.04`; \
                 `cudaimg tags nvidia/cuda` recommends one",
                ));
        }
        let mut tokens: Vec<&str> = tag.split('-').collect();
        let version_text = tokens.remove(0);
        let version = CudaVersion::parse(version_text).ok_or_else(|| {
            err(format!(
                "it must start with the CUDA version (`12.4.1`, or `10.2` for old tags), not `{version_text}`"
            ))
        })?;
        let rc = tokens.last() == Some(&"rc");
        if rc {
            tokens.pop();
        }
        let mut rest = tokens.into_iter().peekable();
        let cudnn = match rest.peek().and_then(|t| t.strip_prefix("cudnn")) {
            Some("") => {
                rest.next();
                Cudnn::Unversioned
            }
            Some(n) => {
                let major: u8 = n
                    .parse()
                    .ok()
                    .filter(|_| n.len() <= 2 && n.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| err(format!("`cudnn{n}` is not a cuDNN variant")))?;
                rest.next();
                Cudnn::Major(major)
            }
            None => Cudnn::None,
        };
        let tensorrt = rest.peek() == Some(&"tensorrt");
        if tensorrt {
            rest.next();
        }
        let flavor_text = rest.next().ok_or_else(|| {
            err("it names no flavor: add `-base`, `-runtime` or `-devel` after the version".into())
        })?;
        let flavor = Flavor::parse(flavor_text).ok_or_else(|| {
            err(format!(
                "`{flavor_text}` is not a flavor; nvidia/cuda has `base`, `runtime` and `devel`"
            ))
        })?;
        let os = rest.next().map(str::to_owned);
        if let Some(extra) = rest.next() {
            return Err(err(format!(
                "unexpected `{extra}` after the OS `{}`",
                os.unwrap_or_default()
            )));
        }
        let mut unknown = Vec::new();
        if let Some(os) = &os {
            if !is_os(os) {
                return Err(err(format!(
                    "`{os}` is not an OS: an OS is a family and its version, as in \
                     `ubuntu22.04` or `ubi9` (cudaimg knows {})",
                    known_families()
                )));
            }
            if os.starts_with("ubuntu") && os_name(os).is_none() {
                return Err(err(format!(
                    "`{os}` is not an Ubuntu release: Ubuntu versions are YY.MM with two digits \
                     each, as in `ubuntu22.04`"
                ))
                .certainly());
            }
            if !os_known(os) {
                unknown.push(not_in_table(&format!("OS `{os}`")));
            }
        }
        let mut parsed = CudaTag {
            tag: tag.to_owned(),
            version,
            cudnn,
            tensorrt,
            flavor,
            os,
            rc,
            unknown,
        };
        parsed.check_combination()?;
        Ok(parsed)
    }

    /// Rules about what NVIDIA built at all (not what still exists today). What history
    /// rules out is refused; what only the tables do not know yet is marked unknown.
    fn check_combination(&mut self) -> Result<(), TagError> {
        let err = |reason: String| TagError::new(&self.tag, reason);
        let v = self.version;
        match (v.major, v.patch) {
            (0..=10, Some(_)) => {
                return Err(err(format!(
                    "tags before CUDA 11 name `X.Y` only: `{}`",
                    v.minor_only()
                ))
                .certainly())
            }
            (12.., None) => {
                return Err(err(format!(
                    "from CUDA 12 on, tags name the patch release (`{v}.0`, `{v}.1`, …), not `{v}`"
                ))
                .certainly()
                .with_hint(format!(
                    "`cudaimg tags nvidia/cuda --cuda {v}` lists the {v}.x tags and recommends one"
                )))
            }
            _ => {}
        }
        if v.major < 6 || (v.major == 6 && v.minor < 5) {
            return Err(err(format!(
                "nvidia/cuda images start at CUDA 6.5, not {v}"
            )));
        }
        if self.flavor == Flavor::Base && self.cudnn.is_some() {
            return Err(err(
                "`base` images have no cuDNN variant: cuDNN comes with `runtime` or `devel`".into(),
            ));
        }
        // `8.0-base`, `8.0-base-centos7`, … are in NVIDIA's lists; 7.5 had no `base`.
        if self.flavor == Flavor::Base && v < CudaVersion::new(8, 0, None) {
            return Err(err("the `base` flavor exists from CUDA 8.0 on".into()));
        }
        // A release the tables know (data/cuda.toml: 13.3 and 13.4 have no driver minimum yet)
        // is known; only one newer than every table is unknown.
        if v.minor_key() > driver::newest_known().minor_key() && eol::latest_patch(v).is_none() {
            self.unknown
                .push(not_in_table(&format!("CUDA {}", v.minor_only())));
        }
        match self.cudnn {
            Cudnn::Major(n @ 0..=1) => {
                return Err(err(format!(
                    "cuDNN {n} is older than any cuDNN NVIDIA built images with (cuDNN 2 on)"
                )))
            }
            Cudnn::Major(n) if cudnn_era(self.cudnn).is_none() => {
                self.unknown.push(not_in_table(&format!("cuDNN {n}")));
            }
            _ => {}
        }
        if let Some((era, text)) = cudnn_era(self.cudnn) {
            if !era.contains(v) {
                let hint = if v.minor_key() >= (12, 4) {
                    " (from CUDA 12.4 on the cuDNN tags say `cudnn`)"
                } else {
                    ""
                };
                return Err(err(format!(
                    "`{}` tags exist for {text}, not CUDA {v}{hint}",
                    self.cudnn
                )));
            }
        }
        if self.tensorrt {
            let first = CudaVersion::new(13, 0, Some(0));
            if v < first {
                return Err(err(format!(
                    "`tensorrt-{}` tags exist from CUDA 13.0.0 on, not for {v}",
                    self.flavor
                )));
            }
            if v > first {
                self.unknown.push(not_in_table(&format!(
                    "a TensorRT image of CUDA {v} (known: 13.0.0)"
                )));
            }
            if self.cudnn.is_some() {
                return Err(err(
                    "NVIDIA's TensorRT tags have no cuDNN part (`13.0.0-tensorrt-runtime-…`)"
                        .into(),
                ));
            }
            if self.flavor == Flavor::Base {
                return Err(err(
                    "TensorRT comes as `tensorrt-runtime` or `tensorrt-devel`".into(),
                ));
            }
        }
        Ok(())
    }

    /// Whether the image has the `nvcc` compiler (devel images only).
    pub fn has_nvcc(&self) -> bool {
        self.flavor == Flavor::Devel
    }

    /// What the image contains, one item per line, flavor first.
    pub fn contents(&self) -> Vec<String> {
        let mut out = vec![match self.flavor {
            Flavor::Base => "the CUDA runtime (libcudart) and cuda-compat only: the minimum to run a \
                             pre-built CUDA application; no CUDA libraries, no nvcc"
                .to_owned(),
            Flavor::Runtime => "base + the CUDA toolkit's shared libraries (cuBLAS, cuFFT, cuSPARSE, \
                                NPP, NVTX, NCCL, …): runs pre-built applications; no nvcc compiler, \
                                no headers"
                .to_owned(),
            Flavor::Devel => "runtime + the compiler toolchain (nvcc), debugging tools, headers and \
                              static libraries: builds CUDA code"
                .to_owned(),
        }];
        if let Some(n) = self.cudnn.major() {
            out.push(match self.flavor {
                Flavor::Devel => format!("cuDNN {n} (library and headers)"),
                _ => format!("cuDNN {n} (library)"),
            });
        }
        if self.tensorrt {
            out.push("TensorRT".to_owned());
        }
        out
    }

    /// What the tables lack about a tag read from a registry's own tag list (a newer CUDA,
    /// a new OS family): the tag exists, so each is reported as seen there, not as unknown.
    pub fn seen_in_registry(&self) -> Vec<String> {
        self.unknown
            .iter()
            .map(|note| match note.strip_suffix(TREATED_AS_UNKNOWN) {
                Some(fact) => {
                    format!("{fact}; seen in the registry's tag list, so NVIDIA built it")
                }
                None => note.clone(),
            })
            .collect()
    }

    /// Facts worth telling about this tag that are not errors.
    pub fn notes(&self) -> Vec<String> {
        let mut out = self.unknown.clone();
        let v = self.version;
        if self.rc {
            out.push("a release-candidate image (`-rc`): not for production".to_owned());
        }
        if self.os.is_none() {
            out.push(
                "no OS in the tag: an old alias NVIDIA used for its default OS (Ubuntu)".to_owned(),
            );
        }
        if self.flavor == Flavor::Runtime {
            out.push(format!(
                "no `nvcc` here: to compile CUDA code use `{}`",
                self.with_flavor(Flavor::Devel)
            ));
        }
        if let Some(os) = &self.os {
            // (OS, first CUDA with it, last CUDA with it), from docs/CUDA.md.
            let ranges: &[(&str, Option<CudaVersion>, Option<CudaVersion>)] = &[
                ("ubuntu24.04", Some(CudaVersion::new(12, 5, Some(1))), None),
                // data/cuda.toml, `[[os]]`.
                ("ubuntu26.04", Some(CudaVersion::new(13, 3, Some(0))), None),
                ("ubuntu20.04", None, Some(CudaVersion::new(12, 9, Some(1)))),
                ("centos7", None, Some(CudaVersion::new(12, 4, Some(0)))),
                ("oraclelinux8", Some(CudaVersion::new(12, 8, Some(0))), None),
                ("oraclelinux9", Some(CudaVersion::new(12, 8, Some(0))), None),
                ("amzn2023", Some(CudaVersion::new(12, 6, Some(0))), None),
                ("cm2", Some(CudaVersion::new(12, 6, Some(0))), None),
                ("azl3", Some(CudaVersion::new(12, 9, Some(0))), None),
            ];
            for (name, from, to) in ranges {
                if os != name {
                    continue;
                }
                let before = from.is_some_and(|f| v < f);
                let after = to.is_some_and(|t| v > t);
                if before || after {
                    let span = match (from, to) {
                        (Some(f), _) => format!("from CUDA {f} on"),
                        (_, Some(t)) => format!("up to CUDA {t}"),
                        _ => String::new(),
                    };
                    out.push(format!(
                        "NVIDIA builds {os} images {span}: this tag probably never existed \
                         (`cudaimg tags` asks the registry)"
                    ));
                }
            }
        }
        out
    }

    /// The same tag with another flavor (`runtime` -> `devel`).
    pub fn with_flavor(&self, flavor: Flavor) -> String {
        let mut parts = vec![self.version.to_string()];
        if self.cudnn.is_some() {
            parts.push(self.cudnn.to_string());
        }
        if self.tensorrt {
            parts.push("tensorrt".into());
        }
        parts.push(flavor.as_str().into());
        if let Some(os) = &self.os {
            parts.push(os.clone());
        }
        if self.rc {
            parts.push("rc".into());
        }
        parts.join("-")
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests;
