//! NVIDIA's end-of-life policy for CUDA images, and what cudaimg can know of it offline.
//!
//! The policy (gitlab nvidia/container-images/cuda, `doc/support-policy.md`, 2022-10-28):
//! an image set goes end-of-life when the driver branch its toolkit shipped with does, and
//! only the latest patch release of each minor is supported (12.1.1 ends 12.1.0). EOL images
//! set `NVIDIA_CUDA_END_OF_LIFE=1`; their tags are deleted from Docker Hub and NGC about six
//! months later.
//!
//! cudaimg knows this only as of [`AS_OF`]: the newest patch of each minor then, and the
//! driver branches NVIDIA supported then. A release or an end of life after that date is
//! unknown to it; an image's own `NVIDIA_CUDA_END_OF_LIFE=1` (from the store) always wins.

use serde::Serialize;

use super::driver;
use super::version::CudaVersion;

/// The date the tables below were written.
pub const AS_OF: &str = "2026-12-07";

/// Where the tables come from.
pub const SOURCE: &str = "NVIDIA's support-policy.md and supported-tags.md (gitlab \
    nvidia/container-images/cuda) and docs/CUDA.md's data-centre driver branches";

/// The newest patch release of each minor NVIDIA built images of, as of [`AS_OF`]
/// (`data/cuda.toml`).
fn latest_patch_rows() -> impl Iterator<Item = ((u32, u32), u32)> {
    crate::data::tables()
        .latest_patch
        .iter()
        .map(|r| (r.key, r.value))
}

/// Driver branches NVIDIA supported as of [`AS_OF`]: the data-centre branches R535 LTS,
/// R570 and R580 LTS, R590 (13.1's), and R595, the branch of the newest toolkit in the
/// driver table (13.2).
pub const SUPPORTED_BRANCHES: &[u32] = &[535, 570, 580, 590, 595];

/// What cudaimg can say about a version's support.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Support {
    /// `Some(true)`: past end of life; `Some(false)`: supported as of [`AS_OF`]; `None`:
    /// the tables do not know.
    pub eol: Option<bool>,
    /// Why, one sentence each.
    pub reasons: Vec<String>,
    pub as_of: &'static str,
}

/// The newest patch of `v`'s minor known to the table.
pub fn latest_patch(v: CudaVersion) -> Option<CudaVersion> {
    latest_patch_rows()
        .find(|(k, _)| *k == v.minor_key())
        .map(|((major, minor), patch)| CudaVersion::new(major, minor, Some(patch)))
}

/// The newest patch of every minor NVIDIA built images of, oldest first.
pub fn latest_patches() -> impl Iterator<Item = CudaVersion> {
    latest_patch_rows().map(|((major, minor), patch)| CudaVersion::new(major, minor, Some(patch)))
}

/// Support of CUDA `v` by the tables; `image_says_eol` is the image's own
/// `NVIDIA_CUDA_END_OF_LIFE=1`, when the image is at hand.
pub fn support(v: CudaVersion, image_says_eol: bool) -> Support {
    let mut reasons = Vec::new();
    let mut eol = None;
    if image_says_eol {
        eol = Some(true);
        reasons.push("the image itself sets NVIDIA_CUDA_END_OF_LIFE=1".to_owned());
    }
    if let (Some(latest), Some(_)) = (latest_patch(v), v.patch) {
        if v < latest {
            eol = Some(true);
            reasons.push(format!(
                "{latest} replaced it: NVIDIA supports only the latest patch of each minor"
            ));
        }
    }
    let branch = driver::min_driver(v).map(|d| d.branch());
    match branch {
        Some(b) if SUPPORTED_BRANCHES.contains(&b) => {
            if eol.is_none() {
                eol = Some(false);
                reasons.push(format!(
                    "CUDA {} shipped with driver branch R{b}, still supported as of {AS_OF}",
                    v.minor_only()
                ));
            }
        }
        Some(b) => {
            eol = Some(true);
            reasons.push(format!(
                "CUDA {} shipped with driver branch R{b}, which NVIDIA no longer supports as of \
                 {AS_OF} (supported: {}): the image set ends with its branch",
                v.minor_only(),
                branches()
            ));
        }
        None if latest_patch(v).is_some() && v.minor_key() > newest_in_driver_table() => {
            if eol.is_none() {
                eol = Some(false);
                reasons.push(format!(
                    "CUDA {} is newer than the driver table: a current release as of {AS_OF}",
                    v.minor_only()
                ));
            }
        }
        None => {
            if eol.is_none() {
                reasons.push(format!(
                    "CUDA {} is not in cudaimg's tables (as of {AS_OF}): a newer release, or \
                     one NVIDIA never built",
                    v.minor_only()
                ));
            }
        }
    }
    Support {
        eol,
        reasons,
        as_of: AS_OF,
    }
}

fn newest_in_driver_table() -> (u32, u32) {
    driver::newest_known().minor_key()
}

fn branches() -> String {
    SUPPORTED_BRANCHES
        .iter()
        .map(|b| format!("R{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {

    /// `explain --json` prints [`SOURCE`]: every file it cites is in the repository.
    #[test]
    fn the_cited_files_are_in_the_repository() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cited: Vec<&str> = SOURCE
            .split_whitespace()
            .map(|w| {
                w.trim_end_matches("'s")
                    .trim_matches(|c: char| "(),`".contains(c))
            })
            .filter(|w| {
                std::path::Path::new(w)
                    .extension()
                    .is_some_and(|e| e == "md")
            })
            .filter(|w| w.contains('/') && !w.contains("gitlab"))
            .collect();
        assert_eq!(cited, ["docs/CUDA.md"]);
        for f in cited {
            assert!(
                root.join(f).is_file(),
                "{f} is cited but not in the repository"
            );
        }
    }
    use super::*;

    fn v(s: &str) -> CudaVersion {
        CudaVersion::parse(s).expect(s)
    }

    #[test]
    fn an_older_patch_is_end_of_life() {
        let s = support(v("12.2.0"), false);
        assert_eq!(s.eol, Some(true));
        assert!(s.reasons[0].contains("12.2.2 replaced it"), "{s:?}");
    }

    #[test]
    fn the_driver_branch_decides() {
        let s = support(v("12.2.2"), false);
        assert_eq!(s.eol, Some(false), "{s:?}");
        assert!(s.reasons[0].contains("R535"));
        let s = support(v("12.4.1"), false);
        assert_eq!(s.eol, Some(true), "{s:?}");
        assert!(s.reasons[0].contains("R550"));
        assert_eq!(support(v("13.0.3"), false).eol, Some(false));
        assert_eq!(support(v("12.8.2"), false).eol, Some(false));
        assert_eq!(support(v("10.2"), false).eol, Some(true));
    }

    #[test]
    fn newer_than_the_tables() {
        assert_eq!(support(v("13.2.1"), false).eol, Some(false));
        // 13.4: released (data/cuda.toml) with no driver minimum known: current, not unknown.
        assert_eq!(support(v("13.4.2"), false).eol, Some(false));
        let s = support(v("14.0.0"), false);
        assert_eq!(s.eol, None);
        assert!(s.reasons[0].contains("not in cudaimg's tables"));
    }

    #[test]
    fn the_image_has_the_last_word() {
        let s = support(v("13.0.3"), true);
        assert_eq!(s.eol, Some(true));
        assert!(s.reasons[0].contains("NVIDIA_CUDA_END_OF_LIFE=1"));
        assert_eq!(support(v("14.0.0"), true).eol, Some(true));
    }

    #[test]
    fn latest_patches_are_latest() {
        for ((major, minor), patch) in latest_patch_rows() {
            let s = support(CudaVersion::new(major, minor, Some(patch)), false);
            assert!(
                !s.reasons.iter().any(|r| r.contains("replaced it")),
                "{major}.{minor}.{patch}: {s:?}"
            );
        }
    }
}
