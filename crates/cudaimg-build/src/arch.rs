//! Which GPUs a torch wheel variant runs on: the compute capabilities each `cuXYZ` variant
//! carries kernels for (`data/wheel-arch.toml`, pytorch's `TORCH_CUDA_ARCH_LIST`), each row
//! with its source. `doctor` checks a torch image's variant against the host's GPUs with it,
//! and `build` checks every cell against the GPUs it is for.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use cudaimg_cuda::arch::ComputeCap;

/// The data file, as compiled in.
pub const WHEEL_ARCH_TOML: &str = include_str!("../data/wheel-arch.toml");

#[derive(Debug, Deserialize)]
struct File {
    date: String,
    sources: BTreeMap<String, String>,
    arch: Vec<Row>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    variant: String,
    torch: Option<[String; 2]>,
    sm: Vec<String>,
    ptx: Option<String>,
    source: String,
    checked: String,
}

/// The architectures of one wheel variant (for some torch minors).
#[derive(Debug, Clone)]
pub struct WheelArch {
    pub variant: String,
    /// The torch minors the row holds for, inclusive; `None`: all.
    pub torch: Option<((u32, u32), (u32, u32))>,
    /// Native code.
    pub sm: Vec<ComputeCap>,
    /// PTX for this architecture, JIT-compiled for it and newer.
    pub ptx: Option<ComputeCap>,
    /// The source's text, with the date it was checked.
    pub source: String,
}

impl WheelArch {
    /// Whether the wheel has kernels a GPU of capability `gpu` runs.
    pub fn runs_on(&self, gpu: ComputeCap) -> bool {
        self.sm.iter().any(|s| s.cubin_runs_on(gpu)) || self.ptx.is_some_and(|p| p <= gpu)
    }

    /// `sm_50 to sm_90` (`+ PTX 12.0`).
    pub fn describe(&self) -> String {
        let first = self.sm.first().map(|c| c.sm()).unwrap_or_default();
        let last = self.sm.last().map(|c| c.sm()).unwrap_or_default();
        let mut s = format!("{first} to {last}");
        if let Some(p) = self.ptx {
            s.push_str(&format!(" and PTX for {p}+"));
        }
        s
    }
}

/// The table, parsed.
#[derive(Debug)]
pub struct Table {
    pub date: String,
    pub sources: BTreeMap<String, String>,
    pub rows: Vec<WheelArch>,
}

fn minor(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not a torch minor");
    let (a, b) = s.split_once('.').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

/// Parses a table file (the compiled-in one, or a test's).
pub fn parse(text: &str) -> Result<Table, String> {
    let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let cap = |s: &str| ComputeCap::parse(s).ok_or_else(|| format!("`{s}` is not an architecture"));
    let mut rows = Vec::new();
    for r in f.arch {
        let source = f
            .sources
            .get(&r.source)
            .ok_or_else(|| format!("{}: unknown source `{}`", r.variant, r.source))?;
        rows.push(WheelArch {
            torch: r
                .torch
                .as_ref()
                .map(|[a, b]| Ok::<_, String>((minor(a)?, minor(b)?)))
                .transpose()?,
            sm: r.sm.iter().map(|s| cap(s)).collect::<Result<_, _>>()?,
            ptx: r.ptx.as_deref().map(cap).transpose()?,
            source: format!("{source} (checked {})", r.checked),
            variant: r.variant,
        });
    }
    Ok(Table {
        date: f.date,
        sources: f.sources,
        rows,
    })
}

/// The compiled-in table.
pub fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        parse(WHEEL_ARCH_TOML).expect(
            "data/wheel-arch.toml is compiled in and parsed by the unit test `the_data_parses`",
        )
    })
}

/// The architectures of `variant`'s wheels of torch `torch` (a minor), if the table has them.
pub fn wheel_arch(variant: &str, torch: Option<(u32, u32)>) -> Option<&'static WheelArch> {
    table().rows.iter().find(|r| {
        r.variant == variant
            && match (r.torch, torch) {
                (None, _) => true,
                (Some((lo, hi)), Some(t)) => lo <= t && t <= hi,
                (Some(_), None) => false,
            }
    })
}

/// The variants of torch `torch` (a minor) whose wheels run on `gpu`, oldest CUDA first; with
/// no torch row, every variant of the table that does.
pub fn variants_for(torch: Option<(u32, u32)>, gpu: ComputeCap) -> Vec<String> {
    let candidates: Vec<String> = torch.and_then(crate::compat::release).map_or_else(
        || {
            let mut all: Vec<String> = table().rows.iter().map(|r| r.variant.clone()).collect();
            all.dedup();
            all
        },
        |rel| rel.variants.clone(),
    );
    candidates
        .into_iter()
        .filter(|v| wheel_arch(v, torch).is_some_and(|a| a.runs_on(gpu)))
        .collect()
}

#[cfg(test)]
// Tests: a missing row stops the test, which is its message.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_data_parses() {
        let t = parse(WHEEL_ARCH_TOML).unwrap_or_else(|e| panic!("{e}"));
        assert!(t.rows.iter().any(|r| r.variant == "cu130"));
    }

    #[test]
    fn kernels_follow_the_binary_compatibility_rule() {
        let cap = |s: &str| ComputeCap::parse(s).unwrap();
        let cu126 = wheel_arch("cu126", Some((2, 14))).unwrap();
        assert!(cu126.runs_on(cap("sm_70")) && cu126.runs_on(cap("sm_89")));
        assert!(!cu126.runs_on(cap("sm_120")), "no Blackwell code, no PTX");
        let cu130 = wheel_arch("cu130", Some((2, 10))).unwrap();
        assert!(!cu130.runs_on(cap("sm_70")));
        assert!(cu130.runs_on(cap("sm_121")), "PTX 12.0 JITs for 12.1");
        assert!(!wheel_arch("cu128", Some((2, 7)))
            .unwrap()
            .runs_on(cap("sm_70")));
        assert!(wheel_arch("cu128", Some((2, 8)))
            .unwrap()
            .runs_on(cap("sm_70")));
        assert_eq!(variants_for(Some((2, 14)), cap("sm_70")), ["cu126"]);
        assert_eq!(
            variants_for(Some((2, 14)), cap("sm_120")),
            ["cu130", "cu132"]
        );
    }

    #[test]
    fn a_cell_names_the_variant_and_base_that_run() {
        let v = |s: &str| cudaimg_cuda::CudaVersion::parse(s).unwrap();
        let sm70 = ComputeCap::new(7, 0);
        let m = check_cell(v("13.0.3"), "2.14.0", "cu130", sm70).unwrap_err();
        assert!(
            m.message.contains("no kernels") && m.message.contains("serves sm_75"),
            "{m:?}"
        );
        assert!(
            m.hint
                .starts_with("`--cuda-wheels cu126` on a CUDA 12.x base"),
            "{m:?}"
        );
        let ok = check_cell(v("13.0.3"), "2.14", "cu130", ComputeCap::new(9, 0)).unwrap();
        assert!(ok.contains("carry its kernels"), "{ok}");
        let m = check_cell(v("12.6.3"), "2.7.1", "cu126", ComputeCap::new(12, 0)).unwrap_err();
        assert!(m.hint.contains("cu128"), "{m:?}");
    }
}

/// Why a build cell cannot run on a GPU, and what can.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub message: String,
    /// The wheel variants (and base) that would, as a hint.
    pub hint: String,
}

/// Whether a build of torch `torch` from `variant` wheels on a CUDA `base` base runs on a GPU
/// of capability `gpu`: the base's toolkit (its libraries, `nvcc`) and the wheels' kernels.
/// `Ok` is the line `build --dry-run` prints.
pub fn check_cell(
    base: cudaimg_cuda::CudaVersion,
    torch: &str,
    variant: &str,
    gpu: ComputeCap,
) -> Result<String, Mismatch> {
    use cudaimg_cuda::arch::{newest_major_for, toolkit_verdict, ToolkitVerdict};
    let minor = crate::compat::TorchVersion::parse(torch).map(|t| t.minor);
    let wheels = wheel_arch(variant, minor);
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    match toolkit_verdict(base, gpu) {
        ToolkitVerdict::TooOld { min } => problems.push(format!(
            "the base's CUDA {base} serves {} and newer (CUDA 13 dropped Maxwell, Pascal and \
             Volta)",
            min.sm()
        )),
        ToolkitVerdict::TooNew { max } => notes.push(format!(
            "CUDA {base} has native code up to {} only (PTX JIT for the rest)",
            max.sm()
        )),
        ToolkitVerdict::Supported => notes.push(format!("CUDA {base} has code for it")),
        ToolkitVerdict::Unknown => notes.push(format!("CUDA {base} is not in the table")),
    }
    match wheels {
        Some(w) if w.runs_on(gpu) => notes.insert(
            0,
            format!(
                "torch {torch}'s {variant} wheels carry its kernels ({})",
                w.describe()
            ),
        ),
        Some(w) => problems.insert(
            0,
            format!(
                "torch {torch}'s {variant} wheels have no kernels for it (they carry {})",
                w.describe()
            ),
        ),
        None => notes.insert(
            0,
            format!("{variant}'s architectures are not in cudaimg's table: not checked"),
        ),
    }
    if problems.is_empty() {
        return Ok(format!("{}: {}", gpu.describe(), notes.join("; ")));
    }
    let can = variants_for(minor, gpu);
    let newest = newest_major_for(gpu);
    let hint = match can.first() {
        Some(v) => {
            let major = crate::compat::variant_cuda(v).map(|c| c.major);
            let base_hint = match (major, newest) {
                (Some(m), _) if m != base.major => {
                    format!(" on a CUDA {m}.x base (`cudaimg tags nvidia/cuda --cuda {m}`)")
                }
                _ => String::new(),
            };
            format!(
                "`--cuda-wheels {v}`{base_hint}: torch {torch}'s wheels with {} kernels: {}",
                gpu.sm(),
                can.join(", ")
            )
        }
        None => format!(
            "no torch {torch} wheels carry {} kernels; variants that do (other torch \
             releases): {}",
            gpu.sm(),
            variants_for(None, gpu).join(", ")
        ),
    };
    Err(Mismatch {
        message: format!("{}: {}", gpu.describe(), problems.join("; and ")),
        hint,
    })
}
