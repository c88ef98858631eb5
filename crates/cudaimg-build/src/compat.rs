//! The compatibility tables, in one place, each row with its source, and the rules built on
//! them:
//!
//! - [`TORCH`]: torch minor → the `cuXYZ` wheel indexes it is published on
//!   (`download.pytorch.org/whl/cuXYZ`) → the Python range. Source: pytorch's RELEASE.md
//!   "Release Compatibility Matrix" (stable and experimental CUDA; a `cuXYZ` index holds
//!   both), as gathered in `docs/CUDA.md` and cross-read with third-party copies of
//!   the matrix. Rows stop at 2.11: the 2.12+ rows CUDA.md has come from one unverified copy.
//! - [`OS_PYTHON`]: which Python minors an OS of an `nvidia/cuda` tag ships as packages.
//! - [`check`]: an impossible combination is refused with the reason and the nearest valid
//!   ones; on `devel` (and on every flavor, see below) the wheels' CUDA major must equal the
//!   base's; on `runtime` a warning names the duplicated CUDA, its size and the `base` tag.
//!
//! Why a CUDA major mismatch is refused on every flavor, not only on `devel`: pip's CUDA
//! wheels bring their own CUDA libraries, so torch never uses the base's; an image that says
//! CUDA 13 (`CUDA_VERSION`, `NVIDIA_REQUIRE_CUDA`, cuda-compat) while torch runs CUDA 11.8 is
//! the mismatch the seed tutorial ships (`cu118` wheels into `13.0.1-cudnn-runtime`): the
//! base's CUDA is dead weight and every tool that trusts the image's CUDA version is misled.

use std::fmt;

use cudaimg_cuda::{CudaTag, CudaVersion, Flavor};
use serde::Serialize;

/// A Python minor version, `3.11`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Py(pub u32, pub u32);

impl Py {
    /// `3.11` (a patch, `3.11.7`, is accepted and dropped: wheels are per minor).
    pub fn parse(s: &str) -> Option<Py> {
        let mut parts = s.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        if let Some(p) = parts.next() {
            p.parse::<u32>().ok()?;
        }
        (parts.next().is_none() && major == 3).then_some(Py(major, minor))
    }
}

impl fmt::Display for Py {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl Serialize for Py {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One torch minor release and the wheels published for it.
#[derive(Debug)]
pub struct TorchRelease {
    pub minor: (u32, u32),
    /// The `cuXYZ` indexes that carry it, oldest CUDA first.
    pub variants: &'static [&'static str],
    /// Supported Python, inclusive.
    pub python: (Py, Py),
    /// A newer Python with experimental wheels (accepted with a warning).
    pub python_experimental: Option<Py>,
    pub source: &'static str,
}

const RELEASE_MD: &str = "pytorch/pytorch RELEASE.md, Release Compatibility Matrix \
    (docs/CUDA.md)";

/// torch → `cuXYZ` → Python. See the module doc for the source.
pub const TORCH: &[TorchRelease] = &[
    TorchRelease {
        minor: (2, 3),
        variants: &["cu118", "cu121"],
        python: (Py(3, 8), Py(3, 11)),
        python_experimental: None,
        source: RELEASE_MD,
    },
    TorchRelease {
        minor: (2, 4),
        variants: &["cu118", "cu121", "cu124"],
        python: (Py(3, 8), Py(3, 12)),
        python_experimental: None,
        source: RELEASE_MD,
    },
    TorchRelease {
        minor: (2, 5),
        variants: &["cu118", "cu121", "cu124"],
        python: (Py(3, 9), Py(3, 12)),
        python_experimental: Some(Py(3, 13)),
        source: RELEASE_MD,
    },
    TorchRelease {
        minor: (2, 6),
        variants: &["cu118", "cu124", "cu126"],
        python: (Py(3, 9), Py(3, 13)),
        python_experimental: None,
        source: RELEASE_MD,
    },
    TorchRelease {
        minor: (2, 7),
        variants: &["cu118", "cu126", "cu128"],
        python: (Py(3, 9), Py(3, 13)),
        python_experimental: None,
        source: RELEASE_MD,
    },
    TorchRelease {
        minor: (2, 8),
        variants: &["cu126", "cu128", "cu129"],
        python: (Py(3, 9), Py(3, 13)),
        python_experimental: None,
        source: RELEASE_MD,
    },
    TorchRelease {
        minor: (2, 9),
        variants: &["cu126", "cu128", "cu130"],
        python: (Py(3, 10), Py(3, 14)),
        python_experimental: None,
        source: RELEASE_MD,
    },
    TorchRelease {
        minor: (2, 10),
        variants: &["cu126", "cu128", "cu130"],
        python: (Py(3, 10), Py(3, 14)),
        python_experimental: None,
        source: RELEASE_MD,
    },
    TorchRelease {
        minor: (2, 11),
        variants: &["cu126", "cu128", "cu130"],
        python: (Py(3, 10), Py(3, 14)),
        python_experimental: None,
        source: RELEASE_MD,
    },
];

/// Python minors each OS family/version of the `nvidia/cuda` tags ships as packages (the
/// first is the system default). Sources: Ubuntu's archive (`python3.X` in main/universe of
/// focal, jammy, noble), RHEL 8/9/10 `AppStream` (Rocky and Oracle rebuild it), Amazon Linux
/// 2023 and Azure Linux 3 package lists; as of 2025. The fixture base of the tests is Debian
/// 12 (3.11).
pub const OS_PYTHON: &[(&str, &[Py])] = &[
    ("ubuntu20.04", &[Py(3, 8), Py(3, 9)]),
    ("ubuntu22.04", &[Py(3, 10), Py(3, 11)]),
    ("ubuntu24.04", &[Py(3, 12)]),
    (
        "ubi8",
        &[Py(3, 6), Py(3, 8), Py(3, 9), Py(3, 11), Py(3, 12)],
    ),
    (
        "rockylinux8",
        &[Py(3, 6), Py(3, 8), Py(3, 9), Py(3, 11), Py(3, 12)],
    ),
    (
        "oraclelinux8",
        &[Py(3, 6), Py(3, 8), Py(3, 9), Py(3, 11), Py(3, 12)],
    ),
    ("ubi9", &[Py(3, 9), Py(3, 11), Py(3, 12)]),
    ("rockylinux9", &[Py(3, 9), Py(3, 11), Py(3, 12)]),
    ("oraclelinux9", &[Py(3, 9), Py(3, 11), Py(3, 12)]),
    ("ubi10", &[Py(3, 12)]),
    ("rockylinux10", &[Py(3, 12)]),
    ("amzn2023", &[Py(3, 9), Py(3, 11)]),
    ("azl3", &[Py(3, 12)]),
];

/// What `runtime` adds over `base` (CUDA's libraries), and `cudnn-runtime` over `base`,
/// in compressed bytes: the 12.4.1 ubuntu22.04 amd64 layers of `docs/CUDA.md`
/// (layer 6 + layers 7-9; plus layer 10 for cuDNN). Other versions differ somewhat.
pub const RUNTIME_OVER_BASE: u64 = 1_374_295_401 + 64_047 + 1_684 + 1_523;
pub const CUDNN_RUNTIME_OVER_BASE: u64 = RUNTIME_OVER_BASE + 670_103_963;

/// The Pythons `os` ships, if the table knows the OS.
pub fn os_pythons(os: &str) -> Option<&'static [Py]> {
    OS_PYTHON.iter().find(|(o, _)| *o == os).map(|(_, p)| *p)
}

/// A torch version as asked: `2.5.1` or `2.5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchVersion {
    pub text: String,
    pub minor: (u32, u32),
}

impl TorchVersion {
    pub fn parse(s: &str) -> Option<TorchVersion> {
        let parts: Vec<&str> = s.split('.').collect();
        if !(2..=3).contains(&parts.len())
            || !parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        Some(TorchVersion {
            text: s.to_owned(),
            minor: (parts[0].parse().ok()?, parts[1].parse().ok()?),
        })
    }
}

/// The CUDA a `cuXYZ` wheel variant carries: `cu124` → 12.4, `cu130` → 13.0.
pub fn variant_cuda(variant: &str) -> Option<CudaVersion> {
    let digits = variant.strip_prefix("cu")?;
    if !(3..=4).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some(CudaVersion::new(
        major.parse().ok()?,
        minor.parse().ok()?,
        None,
    ))
}

/// The row for a torch minor.
pub fn release(minor: (u32, u32)) -> Option<&'static TorchRelease> {
    TORCH.iter().find(|r| r.minor == minor)
}

fn minor_text(m: (u32, u32)) -> String {
    format!("{}.{}", m.0, m.1)
}

/// An impossible combination: why, and the nearest valid ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    pub reason: String,
    pub nearest: Vec<String>,
}

impl Refusal {
    fn new(reason: impl Into<String>, nearest: Vec<String>) -> Self {
        Refusal {
            reason: reason.into(),
            nearest,
        }
    }

    /// The nearest valid combinations, as one `hint:` text.
    pub fn hint(&self) -> String {
        if self.nearest.is_empty() {
            return "see the compatibility table in README.md (`cudaimg build`)".into();
        }
        format!("nearest valid: {}", self.nearest.join("; "))
    }
}

/// Where the image's Python comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum PythonSource {
    /// The base already has `pythonX.Y`.
    Base,
    /// The OS's package `pythonX.Y` (with its venv module), installed by the template.
    Os { os: String },
}

impl fmt::Display for PythonSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PythonSource::Base => f.write_str("the base image (it has it)"),
            PythonSource::Os { os } => write!(f, "{os}'s packages (the base has none)"),
        }
    }
}

/// What is asked of one build.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub torch: &'a str,
    pub python: Option<&'a str>,
    pub variant: Option<&'a str>,
    pub base: &'a CudaTag,
    /// The base's CUDA as its own environment says (`CUDA_VERSION`), else its tag's.
    pub base_cuda: CudaVersion,
    /// The Pythons found in the base's layers; empty when not known or none.
    pub base_pythons: &'a [Py],
}

/// A combination that can be built.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub torch: String,
    pub variant: String,
    #[serde(serialize_with = "display")]
    pub wheels_cuda: CudaVersion,
    pub python: Py,
    pub python_source: PythonSource,
    pub flavor: Flavor,
    pub warnings: Vec<String>,
    pub source: &'static str,
}

fn display<S: serde::Serializer>(v: &CudaVersion, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Checks a request against the tables.
pub fn check(req: &Request<'_>) -> Result<Checked, Refusal> {
    let torch = TorchVersion::parse(req.torch).ok_or_else(|| {
        Refusal::new(
            format!("`{}` is not a torch version (`2.5.1` or `2.5`)", req.torch),
            vec![format!("--torch {}", newest_text())],
        )
    })?;
    let rel = release(torch.minor).ok_or_else(|| unknown_torch(&torch))?;
    let base_major = req.base_cuda.major;
    let variant = match req.variant {
        Some(v) => explicit_variant(v, &torch, rel, req)?,
        None => auto_variant(&torch, rel, req)?,
    };
    let wheels_cuda = variant_cuda(variant).unwrap_or(req.base_cuda);
    if wheels_cuda.major != base_major {
        return Err(major_mismatch(&torch, rel, variant, wheels_cuda, req));
    }
    let mut warnings = Vec::new();
    let (python, python_source) = choose_python(&torch, rel, req, &mut warnings)?;
    if matches!(req.base.flavor, Flavor::Runtime) {
        warnings.push(runtime_warning(req.base, variant));
    }
    Ok(Checked {
        torch: torch.text,
        variant: variant.to_owned(),
        wheels_cuda,
        python,
        python_source,
        flavor: req.base.flavor,
        warnings,
        source: rel.source,
    })
}

fn newest_text() -> String {
    TORCH
        .last()
        .map_or_else(String::new, |r| minor_text(r.minor))
}

fn unknown_torch(torch: &TorchVersion) -> Refusal {
    let mut near: Vec<&TorchRelease> = TORCH.iter().collect();
    near.sort_by_key(|r| {
        let d = |m: (u32, u32)| i64::from(m.0) * 100 + i64::from(m.1);
        (d(r.minor) - d(torch.minor)).abs()
    });
    Refusal::new(
        format!(
            "torch {} is not in cudaimg's table (torch {} to {}, from pytorch's RELEASE.md)",
            torch.text,
            TORCH
                .first()
                .map_or_else(String::new, |r| minor_text(r.minor)),
            newest_text()
        ),
        near.iter()
            .take(2)
            .map(|r| format!("--torch {}", minor_text(r.minor)))
            .collect(),
    )
}

/// The torch minors that publish a variant of CUDA `major`, newest first.
fn releases_with_major(major: u32) -> Vec<(&'static TorchRelease, &'static str)> {
    let mut out = Vec::new();
    for r in TORCH.iter().rev() {
        if let Some(v) = r
            .variants
            .iter()
            .rev()
            .find(|v| variant_cuda(v).is_some_and(|c| c.major == major))
        {
            out.push((r, *v));
        }
    }
    out
}

fn explicit_variant(
    v: &str,
    torch: &TorchVersion,
    rel: &'static TorchRelease,
    req: &Request<'_>,
) -> Result<&'static str, Refusal> {
    if let Some(found) = rel.variants.iter().find(|x| **x == v) {
        return Ok(found);
    }
    if variant_cuda(v).is_none() {
        return Err(Refusal::new(
            format!("`{v}` is not a wheel variant (`cu124`: CUDA 12.4)"),
            vec![format!(
                "torch {} has {}",
                minor_text(rel.minor),
                rel.variants.join(", ")
            )],
        ));
    }
    let mut nearest = vec![format!(
        "torch {} has {}",
        minor_text(rel.minor),
        rel.variants.join(", ")
    )];
    let with: Vec<String> = TORCH
        .iter()
        .filter(|r| r.variants.contains(&v))
        .map(|r| minor_text(r.minor))
        .collect();
    if !with.is_empty() {
        nearest.push(format!("{v} wheels exist for torch {}", with.join(", ")));
    }
    if let Ok(same) = auto_variant(torch, rel, req) {
        nearest.insert(0, format!("--cuda-wheels {same}"));
    }
    Err(Refusal::new(
        format!(
            "torch {} has no {v} wheels (download.pytorch.org/whl/{v} does not carry it)",
            torch.text
        ),
        nearest,
    ))
}

/// The variant of the base's CUDA major: the newest not newer than the base, else the
/// oldest of that major.
fn auto_variant(
    torch: &TorchVersion,
    rel: &'static TorchRelease,
    req: &Request<'_>,
) -> Result<&'static str, Refusal> {
    let same: Vec<(&'static str, CudaVersion)> = rel
        .variants
        .iter()
        .filter_map(|v| variant_cuda(v).map(|c| (*v, c)))
        .filter(|(_, c)| c.major == req.base_cuda.major)
        .collect();
    let base_minor = req.base_cuda.minor_only();
    same.iter()
        .rev()
        .find(|(_, c)| *c <= base_minor)
        .or(same.first())
        .map(|(v, _)| *v)
        .ok_or_else(|| {
            let v = rel.variants.last().copied().unwrap_or("cu124");
            major_mismatch(torch, rel, v, variant_cuda(v).unwrap_or(req.base_cuda), req)
        })
}

/// The base tag of another CUDA version, same flavor and OS where NVIDIA built it.
fn base_for(cuda: CudaVersion, base: &CudaTag) -> Option<String> {
    let full = cudaimg_cuda::eol::latest_patch(cuda)?;
    let cudnn = if base.cudnn.is_some() && base.flavor != Flavor::Base {
        "cudnn-".to_owned()
    } else {
        String::new()
    };
    let cudnn = if cudnn.is_empty() || full >= CudaVersion::new(12, 4, None) {
        cudnn
    } else {
        "cudnn8-".to_owned()
    };
    for os in base.os.iter().map(String::as_str).chain(["ubuntu22.04"]) {
        let tag = format!("{full}-{cudnn}{}-{os}", base.flavor);
        if let Ok(t) = CudaTag::parse(&tag) {
            if !t.notes().iter().any(|n| n.contains("never existed")) {
                return Some(tag);
            }
        }
    }
    None
}

fn major_mismatch(
    torch: &TorchVersion,
    rel: &'static TorchRelease,
    variant: &str,
    wheels: CudaVersion,
    req: &Request<'_>,
) -> Refusal {
    let base_major = req.base_cuda.major;
    let why = if req.base.flavor == Flavor::Devel {
        format!(
            "on a `devel` base, extensions compile with the base's nvcc (CUDA {}), whose major \
             must equal the wheels' (torch.utils.cpp_extension refuses otherwise)",
            req.base_cuda
        )
    } else {
        format!(
            "pip's {variant} wheels bring their own CUDA {wheels} (nvidia-* packages), so torch \
             never uses the base's CUDA {}: the image would say CUDA {} (CUDA_VERSION, \
             NVIDIA_REQUIRE_CUDA) while torch runs {wheels}, with the base's CUDA as dead weight",
            req.base_cuda, req.base_cuda
        )
    };
    let mut nearest = Vec::new();
    if let Some(v) = rel
        .variants
        .iter()
        .rev()
        .find(|v| variant_cuda(v).is_some_and(|c| c.major == base_major))
    {
        nearest.push(format!("--cuda-wheels {v}"));
    } else if let Some((r, v)) = releases_with_major(base_major).first() {
        nearest.push(format!(
            "--torch {} --cuda-wheels {v} (torch {} has no CUDA {base_major} wheels)",
            minor_text(r.minor),
            torch.text
        ));
    }
    if let Some(tag) = base_for(wheels, req.base) {
        nearest.push(format!(
            "keep {variant} and use a CUDA {wheels} base: --base nvidia/cuda:{tag}"
        ));
    }
    Refusal::new(
        format!(
            "{variant} wheels (CUDA {wheels}) on the CUDA {} base `{}`: {why}",
            req.base_cuda, req.base.tag
        ),
        nearest,
    )
}

fn in_range(rel: &TorchRelease, p: Py) -> bool {
    p >= rel.python.0 && p <= rel.python.1
}

fn choose_python(
    torch: &TorchVersion,
    rel: &'static TorchRelease,
    req: &Request<'_>,
    warnings: &mut Vec<String>,
) -> Result<(Py, PythonSource), Refusal> {
    let os = req.base.os.clone().unwrap_or_default();
    let os_py: &[Py] = os_pythons(&os).unwrap_or(&[]);
    let range = format!("{} to {}", rel.python.0, rel.python.1);
    let available: Vec<Py> = req
        .base_pythons
        .iter()
        .chain(os_py)
        .copied()
        .filter(|p| in_range(rel, *p))
        .collect();
    let python = match req.python {
        Some(s) => {
            let p = Py::parse(s).ok_or_else(|| {
                Refusal::new(
                    format!("`{s}` is not a Python version (`3.11`)"),
                    available.iter().map(|p| format!("--python {p}")).collect(),
                )
            })?;
            if rel.python_experimental == Some(p) {
                warnings.push(format!(
                    "torch {} wheels for Python {p} are experimental (RELEASE.md)",
                    torch.text
                ));
            } else if !in_range(rel, p) {
                let mut nearest: Vec<String> =
                    available.iter().map(|a| format!("--python {a}")).collect();
                let newer: Vec<String> = TORCH
                    .iter()
                    .filter(|r| in_range(r, p))
                    .map(|r| minor_text(r.minor))
                    .collect();
                if let (Some(first), Some(last)) = (newer.first(), newer.last()) {
                    nearest.push(format!("Python {p} has torch {first} to {last}"));
                }
                return Err(Refusal::new(
                    format!(
                        "torch {} has no wheels for Python {p} (it supports {range})",
                        torch.text
                    ),
                    nearest,
                ));
            }
            p
        }
        None => *available.first().ok_or_else(|| {
            Refusal::new(
                format!(
                    "no Python for torch {} ({range}) in the base or in {}'s packages \
                     (it ships {})",
                    torch.text,
                    if os.is_empty() { "the OS" } else { &os },
                    list(os_py)
                ),
                other_os(rel),
            )
        })?,
    };
    if req.base_pythons.contains(&python) {
        return Ok((python, PythonSource::Base));
    }
    if os_py.contains(&python) {
        return Ok((python, PythonSource::Os { os }));
    }
    let mut nearest: Vec<String> = available.iter().map(|a| format!("--python {a}")).collect();
    nearest.extend(other_os_for(python));
    Err(Refusal::new(
        format!(
            "Python {python} is neither in the base nor among {}'s packages (it ships {})",
            if os.is_empty() { "the OS" } else { &os },
            list(os_py)
        ),
        nearest,
    ))
}

fn list(p: &[Py]) -> String {
    if p.is_empty() {
        return "none cudaimg knows".into();
    }
    p.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn other_os(rel: &TorchRelease) -> Vec<String> {
    OS_PYTHON
        .iter()
        .filter(|(o, _)| o.starts_with("ubuntu"))
        .filter_map(|(o, ps)| {
            ps.iter()
                .find(|p| in_range(rel, **p))
                .map(|p| format!("a {o} base (Python {p})"))
        })
        .collect()
}

fn other_os_for(p: Py) -> Vec<String> {
    OS_PYTHON
        .iter()
        .filter(|(o, ps)| o.starts_with("ubuntu") && ps.contains(&p))
        .map(|(o, _)| format!("a {o} base (Python {p})"))
        .collect()
}

fn runtime_warning(base: &CudaTag, variant: &str) -> String {
    let (size, what) = if base.cudnn.is_some() {
        (CUDNN_RUNTIME_OVER_BASE, "CUDA libraries and cuDNN")
    } else {
        (RUNTIME_OVER_BASE, "CUDA libraries")
    };
    let mut plain = base.clone();
    plain.cudnn = cudaimg_cuda::Cudnn::None;
    format!(
        "the `runtime` base carries CUDA {}'s {what} (about {:.2} GB compressed, measured on \
         12.4.1 ubuntu22.04 amd64) and the {variant} wheels bring their own (pip's nvidia-* \
         packages: 2.87 GB unpacked for torch 2.5.1 cu124, measured by bench/torch-sizes.sh): \
         CUDA ships twice; the `base` tag `{}` avoids it",
        base.version,
        size as f64 / 1e9,
        plain.with_flavor(Flavor::Base)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req<'a>(
        tag: &'a CudaTag,
        torch: &'a str,
        py: Option<&'a str>,
        v: Option<&'a str>,
    ) -> Request<'a> {
        Request {
            torch,
            python: py,
            variant: v,
            base: tag,
            base_cuda: tag.version,
            base_pythons: &[],
        }
    }

    fn tag(s: &str) -> CudaTag {
        CudaTag::parse(s).unwrap()
    }

    #[test]
    fn every_row_has_known_variants_and_a_source() {
        for r in TORCH {
            assert!(!r.source.is_empty());
            assert!(r.python.0 <= r.python.1);
            for v in r.variants {
                let c = variant_cuda(v).unwrap();
                assert!(cudaimg_cuda::driver::min_driver(c).is_some(), "{v}");
            }
        }
        assert_eq!(variant_cuda("cu130"), Some(CudaVersion::new(13, 0, None)));
        assert_eq!(variant_cuda("cu118"), Some(CudaVersion::new(11, 8, None)));
    }

    #[test]
    fn the_seed_case_is_refused_with_its_fix() {
        let t = tag("13.0.1-cudnn-runtime-ubuntu24.04");
        let e = check(&req(&t, "2.7.1", None, Some("cu118"))).unwrap_err();
        assert!(
            e.reason
                .contains("cu118 wheels (CUDA 11.8) on the CUDA 13.0.1 base"),
            "{e:?}"
        );
        assert!(
            e.nearest
                .iter()
                .any(|n| n.contains("--torch 2.11 --cuda-wheels cu130")),
            "{e:?}"
        );
        assert!(
            e.nearest
                .iter()
                .any(|n| n.contains("nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04")),
            "{e:?}"
        );
    }

    #[test]
    fn auto_variant_follows_the_base_and_runtime_warns() {
        let t = tag("12.4.1-runtime-ubuntu22.04");
        let c = check(&req(&t, "2.5.1", None, None)).unwrap();
        assert_eq!(c.variant, "cu124");
        assert_eq!(c.python, Py(3, 10));
        assert_eq!(
            c.python_source,
            PythonSource::Os {
                os: "ubuntu22.04".into()
            }
        );
        assert!(
            c.warnings[0].contains("`12.4.1-base-ubuntu22.04` avoids it"),
            "{:?}",
            c.warnings
        );
        let c = check(&req(&tag("12.6.3-devel-ubuntu22.04"), "2.5.1", None, None)).unwrap();
        assert_eq!(c.variant, "cu124");
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn devel_major_mismatch_and_missing_variants_and_pythons_are_refused() {
        let t = tag("12.4.1-devel-ubuntu22.04");
        let e = check(&req(&t, "2.5.1", None, Some("cu118"))).unwrap_err();
        assert!(e.reason.contains("nvcc"), "{e:?}");
        assert_eq!(e.nearest[0], "--cuda-wheels cu124");
        let e = check(&req(&t, "2.8.0", None, Some("cu124"))).unwrap_err();
        assert!(
            e.reason.contains("torch 2.8.0 has no cu124 wheels"),
            "{e:?}"
        );
        let e = check(&req(&t, "2.3.1", Some("3.12"), None)).unwrap_err();
        assert!(e.reason.contains("supports 3.8 to 3.11"), "{e:?}");
        assert!(e.nearest.iter().any(|n| n == "--python 3.10"), "{e:?}");
        let e = check(&req(
            &tag("12.6.3-base-ubuntu24.04"),
            "2.5.1",
            Some("3.10"),
            None,
        ))
        .unwrap_err();
        assert!(e.reason.contains("neither in the base"), "{e:?}");
        let e = check(&req(&t, "1.13.1", None, None)).unwrap_err();
        assert!(e.reason.contains("not in cudaimg's table"), "{e:?}");
    }

    #[test]
    fn a_python_in_the_base_wins() {
        let t = tag("12.4.1-runtime-ubuntu22.04");
        let mut r = req(&t, "2.5.1", Some("3.11"), None);
        let found = [Py(3, 11)];
        r.base_pythons = &found;
        let c = check(&r).unwrap();
        assert_eq!(c.python_source, PythonSource::Base);
    }
}
