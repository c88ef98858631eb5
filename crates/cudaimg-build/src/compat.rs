//! The compatibility tables, in one place, each row with its source, and the rules built on
//! them:
//!
//! - the torch table ([`crate::table`], `data/torch.toml`): torch minor → the `cuXYZ` wheel
//!   indexes it is published on (`download.pytorch.org/whl/cuXYZ`) → the Python range, each
//!   row with its source and date. The package index the build will use wins over it
//!   ([`crate::index`], [`Request::index`]): what the index holds is the truth; the table is
//!   the offline fallback and the source of the reasons.
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

use crate::index::{Listing, Offer};
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
#[derive(Debug, Clone)]
pub struct TorchRelease {
    pub minor: (u32, u32),
    /// The `cuXYZ` indexes that carry it, oldest CUDA first.
    pub variants: Vec<String>,
    /// Supported Python, inclusive.
    pub python: (Py, Py),
    /// A newer Python with experimental wheels (accepted with a warning).
    pub python_experimental: Option<Py>,
    /// Where the row comes from, with its date.
    pub source: String,
}

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

/// The table's row for a torch minor.
pub fn release(minor: (u32, u32)) -> Option<&'static TorchRelease> {
    crate::table::torch().iter().find(|r| r.minor == minor)
}

fn minor_text(m: (u32, u32)) -> String {
    format!("{}.{}", m.0, m.1)
}

fn table() -> &'static [TorchRelease] {
    crate::table::torch()
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
    /// What the package index the build will use holds, when it could be read: it wins
    /// over the compiled table.
    pub index: Option<&'a Listing>,
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
    /// Where the combination was learned: the index read, else the table's row.
    pub source: String,
    /// What pip is asked for: `2.14.0+cu130` when the index names its variants, else the
    /// version alone.
    pub pin: String,
}

fn display<S: serde::Serializer>(v: &CudaVersion, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The release a request is checked against: the index's offer when the index was read
/// and names variants, else the table's row.
struct Known {
    torch: TorchVersion,
    rel: TorchRelease,
    /// The index's listing of this version, when it decided.
    offer: Option<Offer>,
    index: Option<String>,
}

/// Checks a request against what the index holds, else against the table.
pub fn check(req: &Request<'_>) -> Result<Checked, Refusal> {
    let asked = TorchVersion::parse(req.torch).ok_or_else(|| {
        Refusal::new(
            format!("`{}` is not a torch version (`2.5.1` or `2.5`)", req.torch),
            vec![format!("--torch {}", newest_text())],
        )
    })?;
    let mut warnings = Vec::new();
    let known = resolve(asked, req, &mut warnings)?;
    let base_major = req.base_cuda.major;
    let variant = match req.variant {
        Some(v) => explicit_variant(v, &known, req)?,
        None => auto_variant(&known, req)?,
    };
    let wheels_cuda = variant_cuda(&variant).unwrap_or(req.base_cuda);
    if wheels_cuda.major != base_major {
        return Err(major_mismatch(&known, &variant, wheels_cuda, req));
    }
    let (python, python_source) = choose_python(&known.torch, &known.rel, req, &mut warnings)?;
    if let (Some(offer), Some(index)) = (&known.offer, &known.index) {
        if !offer.has(&variant, python) {
            return Err(Refusal::new(
                format!(
                    "the index {index} has no torch {} {variant} wheel for Python {python} \
                     (its {variant} wheels are for {})",
                    offer.version,
                    offer.pythons_text(&variant)
                ),
                offer.variants[&variant]
                    .iter()
                    .flatten()
                    .map(|p| format!("--python {p}"))
                    .collect(),
            ));
        }
    }
    if matches!(req.base.flavor, Flavor::Runtime) {
        warnings.push(runtime_warning(req.base, &variant));
    }
    let pin = match &known.offer {
        Some(o) => format!("{}+{variant}", o.version),
        None => known.torch.text.clone(),
    };
    Ok(Checked {
        torch: known.torch.text,
        variant,
        wheels_cuda,
        python,
        python_source,
        flavor: req.base.flavor,
        warnings,
        source: known.rel.source,
        pin,
    })
}

fn resolve(
    asked: TorchVersion,
    req: &Request<'_>,
    warnings: &mut Vec<String>,
) -> Result<Known, Refusal> {
    let row = release(asked.minor);
    let Some(listing) = req.index.filter(|l| l.knows_variants()) else {
        let rel = row
            .cloned()
            .ok_or_else(|| unknown_torch(&asked, req.index))?;
        return Ok(Known {
            torch: asked,
            rel,
            offer: None,
            index: None,
        });
    };
    let offer = listing
        .offer(&asked)
        .filter(|o| !o.variants.is_empty())
        .ok_or_else(|| {
            let mut versions: Vec<&str> = listing
                .wheels
                .iter()
                .filter(|w| w.variant.is_some())
                .map(|w| w.version.as_str())
                .collect();
            versions.sort_by_key(|v| std::cmp::Reverse(crate::index::version_key(v)));
            versions.dedup();
            let nearest = versions
                .iter()
                .take(3)
                .map(|v| format!("--torch {v}"))
                .collect();
            Refusal::new(
                format!(
                    "the index {} holds no torch {} CUDA wheel for this platform; it holds {}",
                    listing.source,
                    asked.text,
                    listing.summary()
                ),
                nearest,
            )
        })?;
    let mut variants: Vec<String> = offer.variants.keys().cloned().collect();
    variants.sort_by_key(|v| variant_cuda(v));
    let pythons: Vec<Py> = offer
        .variants
        .values()
        .flatten()
        .flatten()
        .copied()
        .collect();
    let python = match (pythons.iter().min(), pythons.iter().max(), row) {
        (Some(lo), Some(hi), _) => (*lo, *hi),
        (_, _, Some(r)) => r.python,
        _ => (Py(3, 0), Py(3, 99)),
    };
    if row.is_none() {
        warnings.push(format!(
            "torch {} is not in cudaimg's table (dated {}); the index {} holds it, and its \
             wheels decide",
            offer.version,
            crate::table::table().date,
            listing.source
        ));
    }
    let torch = TorchVersion::parse(&offer.version).unwrap_or(asked);
    Ok(Known {
        rel: TorchRelease {
            minor: torch.minor,
            variants,
            python,
            python_experimental: row.and_then(|r| r.python_experimental),
            source: format!("the index {}", listing.source),
        },
        torch,
        offer: Some(offer),
        index: Some(listing.source.clone()),
    })
}

fn newest_text() -> String {
    table()
        .last()
        .map_or_else(String::new, |r| minor_text(r.minor))
}

fn unknown_torch(torch: &TorchVersion, index: Option<&Listing>) -> Refusal {
    let mut near: Vec<&TorchRelease> = table().iter().collect();
    near.sort_by_key(|r| {
        let d = |m: (u32, u32)| i64::from(m.0) * 100 + i64::from(m.1);
        (d(r.minor) - d(torch.minor)).abs()
    });
    let read = match index {
        Some(l) => format!(
            "; the index {} names no CUDA variant ({})",
            l.source,
            l.summary()
        ),
        None => "; the package index could not be read".to_owned(),
    };
    Refusal::new(
        format!(
            "torch {} is not in cudaimg's table (torch {} to {}, dated {}){read}",
            torch.text,
            table()
                .first()
                .map_or_else(String::new, |r| minor_text(r.minor)),
            newest_text(),
            crate::table::table().date,
        ),
        near.iter()
            .take(2)
            .map(|r| format!("--torch {}", minor_text(r.minor)))
            .collect(),
    )
}

/// The torch minors that publish a variant of the base's CUDA major not newer than it,
/// newest first.
fn releases_with_major(base: CudaVersion) -> Vec<(&'static TorchRelease, &'static str)> {
    let (major, limit) = (base.major, base.minor_only());
    let mut out = Vec::new();
    for r in table().iter().rev() {
        if let Some(v) = r
            .variants
            .iter()
            .rev()
            .find(|v| variant_cuda(v).is_some_and(|c| c.major == major && c <= limit))
        {
            out.push((r, v.as_str()));
        }
    }
    out
}

fn where_from(known: &Known, v: &str) -> String {
    match &known.index {
        Some(i) => format!(
            "the index {i} holds no torch {} {v} wheel",
            known.torch.text
        ),
        None => format!("download.pytorch.org/whl/{v} does not carry it"),
    }
}

fn explicit_variant(v: &str, known: &Known, req: &Request<'_>) -> Result<String, Refusal> {
    let rel = &known.rel;
    if rel.variants.iter().any(|x| x == v) {
        return Ok(v.to_owned());
    }
    let has = format!(
        "torch {} has {}",
        if known.offer.is_some() {
            known.torch.text.clone()
        } else {
            minor_text(rel.minor)
        },
        rel.variants.join(", ")
    );
    if variant_cuda(v).is_none() {
        return Err(Refusal::new(
            format!("`{v}` is not a wheel variant (`cu124`: CUDA 12.4)"),
            vec![has],
        ));
    }
    let mut nearest = vec![has];
    let with: Vec<String> = table()
        .iter()
        .filter(|r| r.variants.iter().any(|x| x == v))
        .map(|r| minor_text(r.minor))
        .collect();
    if !with.is_empty() && known.offer.is_none() {
        nearest.push(format!("{v} wheels exist for torch {}", with.join(", ")));
    }
    if let Ok(same) = auto_variant(known, req) {
        nearest.insert(0, format!("--cuda-wheels {same}"));
    }
    Err(Refusal::new(
        format!(
            "torch {} has no {v} wheels ({})",
            known.torch.text,
            where_from(known, v)
        ),
        nearest,
    ))
}

/// The variant of the base's CUDA major: the newest not newer than the base. Never a newer
/// one: its wheels would need a newer driver than the base says (`NVIDIA_REQUIRE_CUDA`).
fn auto_variant(known: &Known, req: &Request<'_>) -> Result<String, Refusal> {
    let rel = &known.rel;
    let same: Vec<(&str, CudaVersion)> = rel
        .variants
        .iter()
        .filter_map(|v| variant_cuda(v).map(|c| (v.as_str(), c)))
        .filter(|(_, c)| c.major == req.base_cuda.major)
        .collect();
    let base_minor = req.base_cuda.minor_only();
    if let Some((v, _)) = same.iter().rev().find(|(_, c)| *c <= base_minor) {
        return Ok((*v).to_owned());
    }
    if !same.is_empty() {
        return Err(newer_only(known, req));
    }
    let v = rel.variants.last().map_or("cu124", String::as_str);
    Err(major_mismatch(
        known,
        v,
        variant_cuda(v).unwrap_or(req.base_cuda),
        req,
    ))
}

/// Every variant of the base's major is newer than the base: which bases fit.
fn newer_only(known: &Known, req: &Request<'_>) -> Refusal {
    let mut nearest = Vec::new();
    for v in &known.rel.variants {
        let Some(c) = variant_cuda(v) else { continue };
        if let Some(tag) = base_for(c, req.base) {
            nearest.push(format!("--base nvidia/cuda:{tag} (for {v})"));
        }
    }
    let older: Vec<String> = table()
        .iter()
        .rev()
        .filter_map(|r| {
            r.variants
                .iter()
                .rev()
                .find(|v| {
                    variant_cuda(v).is_some_and(|c| {
                        c.major == req.base_cuda.major && c <= req.base_cuda.minor_only()
                    })
                })
                .map(|v| format!("--torch {} ({v})", minor_text(r.minor)))
        })
        .take(1)
        .collect();
    nearest.extend(older);
    Refusal::new(
        format!(
            "torch {} has no wheel for CUDA {} or older of CUDA {} (it has {}); a newer \
             variant would need a newer driver than the base `{}` says \
             (NVIDIA_REQUIRE_CUDA), so it is not chosen for you",
            known.torch.text,
            req.base_cuda.minor_only(),
            req.base_cuda.major,
            known.rel.variants.join(", "),
            req.base.tag
        ),
        nearest,
    )
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

fn major_mismatch(known: &Known, variant: &str, wheels: CudaVersion, req: &Request<'_>) -> Refusal {
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
    let (torch, rel) = (&known.torch, &known.rel);
    let mut nearest = Vec::new();
    let base_minor = req.base_cuda.minor_only();
    if let Some(v) = rel
        .variants
        .iter()
        .rev()
        .find(|v| variant_cuda(v).is_some_and(|c| c.major == base_major && c <= base_minor))
    {
        nearest.push(format!("--cuda-wheels {v}"));
    } else if rel
        .variants
        .iter()
        .any(|v| variant_cuda(v).is_some_and(|c| c.major == base_major))
    {
        nearest.push(newer_only(known, req).hint());
    } else if let Some((r, v)) = releases_with_major(req.base_cuda).first() {
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
    rel: &TorchRelease,
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
                let newer: Vec<String> = table()
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
mod tests;
