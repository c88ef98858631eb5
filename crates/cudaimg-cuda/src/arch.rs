//! GPU architectures: a GPU's compute capability (`9.0`, `sm_90`) as `nvidia-smi` reports it
//! or a user types it, its family name, and whether a CUDA toolkit release serves it (the
//! `[[arch]]` rows of `data/cuda.toml`: CUDA 13 dropped Maxwell, Pascal and Volta).
//!
//! Whether code built for one architecture runs on another follows CUDA's binary
//! compatibility rule (CUDA C++ Programming Guide, "Binary Compatibility"): a cubin for
//! `sm_XY` runs on `sm_XZ` with `Z >= Y` (same major), and PTX for `compute_XY` is
//! JIT-compiled by the driver for any GPU of capability `X.Y` or newer.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::version::CudaVersion;

/// A compute capability, `major.minor` (`sm_90` is 9.0, `sm_120` is 12.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComputeCap {
    pub major: u32,
    pub minor: u32,
}

impl ComputeCap {
    pub const fn new(major: u32, minor: u32) -> Self {
        ComputeCap { major, minor }
    }

    /// `9.0` (nvidia-smi's `compute_cap`, `TORCH_CUDA_ARCH_LIST`), `sm_90`, `sm_90a`,
    /// `compute_90` or `90`. The minor is one digit: `sm_120` is 12.0.
    pub fn parse(s: &str) -> Option<ComputeCap> {
        let s = s.trim();
        if let Some((a, b)) = s.split_once('.') {
            let num = |t: &str| {
                (!t.is_empty() && t.len() <= 2 && t.bytes().all(|c| c.is_ascii_digit()))
                    .then(|| t.parse().ok())
                    .flatten()
            };
            return Some(ComputeCap::new(num(a)?, num(b)?));
        }
        let digits = s
            .strip_prefix("sm_")
            .or_else(|| s.strip_prefix("compute_"))
            .unwrap_or(s);
        // Arch-specific (`sm_90a`) and family (`sm_100f`) targets name the same GPUs.
        let digits = digits.trim_end_matches(['a', 'f']);
        if !(2..=3).contains(&digits.len()) || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let (major, minor) = digits.split_at(digits.len() - 1);
        Some(ComputeCap::new(major.parse().ok()?, minor.parse().ok()?))
    }

    /// `sm_90`.
    pub fn sm(self) -> String {
        format!("sm_{}{}", self.major, self.minor)
    }

    /// The architecture's family, as NVIDIA names it (`Volta`, `Hopper`), if known.
    pub fn family(self) -> Option<&'static str> {
        Some(match (self.major, self.minor) {
            (3, _) => "Kepler",
            (5, _) => "Maxwell",
            (6, _) => "Pascal",
            (7, 0 | 2) => "Volta",
            (7, 5) => "Turing",
            (8, 9) => "Ada Lovelace",
            (8, _) => "Ampere",
            (9, _) => "Hopper",
            (10..=12, _) => "Blackwell",
            _ => return None,
        })
    }

    /// `sm_70 (Volta)`.
    pub fn describe(self) -> String {
        match self.family() {
            Some(f) => format!("{} ({f})", self.sm()),
            None => self.sm(),
        }
    }

    /// Whether native code (a cubin) built for `self` runs on `gpu`: same major, not newer.
    pub fn cubin_runs_on(self, gpu: ComputeCap) -> bool {
        self.major == gpu.major && self.minor <= gpu.minor
    }
}

impl fmt::Display for ComputeCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Serialize for ComputeCap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The architectures a toolkit release serves, from `from` until the next row.
#[derive(Debug, Clone)]
pub struct ToolkitArch {
    pub from: (u32, u32),
    /// The oldest architecture with native code and library kernels.
    pub min: ComputeCap,
    /// The newest architecture with native code.
    pub max: ComputeCap,
    /// The source's text, with the date it was checked.
    pub source: String,
}

/// How a toolkit release stands to a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolkitVerdict {
    /// Native code for it.
    Supported,
    /// Older than the oldest architecture the release serves: its libraries have no kernels.
    TooOld { min: ComputeCap },
    /// Newer than the newest it has native code for: only PTX, JIT-compiled by the driver.
    TooNew { max: ComputeCap },
    /// The table has no row for the release.
    Unknown,
}

/// The table's row for `cuda` (the last row whose `from` is not newer).
pub fn toolkit(cuda: CudaVersion) -> Option<&'static ToolkitArch> {
    crate::data::tables()
        .arch
        .iter()
        .rev()
        .find(|a| a.from <= (cuda.major, cuda.minor))
}

/// Whether CUDA `cuda`'s toolkit and libraries serve a GPU of capability `gpu`.
pub fn toolkit_verdict(cuda: CudaVersion, gpu: ComputeCap) -> ToolkitVerdict {
    match toolkit(cuda) {
        None => ToolkitVerdict::Unknown,
        Some(t) if gpu < t.min => ToolkitVerdict::TooOld { min: t.min },
        Some(t) if gpu > t.max && !t.max.cubin_runs_on(gpu) => {
            ToolkitVerdict::TooNew { max: t.max }
        }
        Some(_) => ToolkitVerdict::Supported,
    }
}

/// The newest CUDA major whose toolkit still serves `gpu` (12 for a Volta), if any.
pub fn newest_major_for(gpu: ComputeCap) -> Option<u32> {
    crate::data::tables()
        .arch
        .iter()
        .rev()
        .find(|a| a.min <= gpu)
        .map(|a| a.from.0)
}

#[cfg(test)]
// Tests: a missing row stops the test, which is its message.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        for s in ["7.0", "sm_70", "70", "compute_70", " 7.0 "] {
            assert_eq!(ComputeCap::parse(s), Some(ComputeCap::new(7, 0)), "{s}");
        }
        assert_eq!(ComputeCap::parse("sm_120"), Some(ComputeCap::new(12, 0)));
        assert_eq!(ComputeCap::parse("sm_90a"), Some(ComputeCap::new(9, 0)));
        assert_eq!(ComputeCap::parse("12.1"), Some(ComputeCap::new(12, 1)));
        for bad in [
            "", "sm_", "sm_7", "7", "seven", "7.", "1234", "[N/A]", "7.0.1",
        ] {
            assert_eq!(ComputeCap::parse(bad), None, "{bad}");
        }
        assert_eq!(ComputeCap::new(12, 0).sm(), "sm_120");
        assert_eq!(ComputeCap::new(7, 0).describe(), "sm_70 (Volta)");
    }

    #[test]
    fn cuda_13_drops_volta_and_keeps_turing() {
        let v = |s: &str| CudaVersion::parse(s).unwrap();
        let volta = ComputeCap::new(7, 0);
        assert!(matches!(
            toolkit_verdict(v("13.0.1"), volta),
            ToolkitVerdict::TooOld { .. }
        ));
        assert_eq!(
            toolkit_verdict(v("12.9.1"), volta),
            ToolkitVerdict::Supported
        );
        assert_eq!(
            toolkit_verdict(v("13.0.1"), ComputeCap::new(7, 5)),
            ToolkitVerdict::Supported
        );
        assert!(matches!(
            toolkit_verdict(v("12.4.1"), ComputeCap::new(12, 0)),
            ToolkitVerdict::TooNew { .. }
        ));
        assert_eq!(newest_major_for(volta), Some(12));
        assert_eq!(newest_major_for(ComputeCap::new(9, 0)), Some(13));
        // Same major, newer minor: sm_86 code runs on an sm_89.
        assert!(ComputeCap::new(8, 6).cubin_runs_on(ComputeCap::new(8, 9)));
        assert!(!ComputeCap::new(7, 5).cubin_runs_on(ComputeCap::new(7, 0)));
    }
}
