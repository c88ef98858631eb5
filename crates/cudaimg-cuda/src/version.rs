//! Version numbers of the two things that must agree: the CUDA toolkit in an image
//! (`12.4.1`, or `10.2` in old tags) and the NVIDIA driver on the host (`535.104.05`).
//!
//! Both compare numerically, component by component (`535.104.05` > `535.54.03`), never as
//! strings.

use std::cmp::Ordering;
use std::fmt;

/// A CUDA toolkit version: `X.Y` (tags before 12.x) or `X.Y.Z`.
#[derive(Debug, Clone, Copy)]
pub struct CudaVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: Option<u32>,
}

/// A host driver version: `535.104.05`, `570.26`, `440.33`.
#[derive(Debug, Clone)]
pub struct DriverVersion {
    parts: [u32; 3],
    text: String,
}

/// Splits `a.b[.c]` into numbers; `None` unless every part is 1 to 5 ASCII digits.
fn numbers(s: &str, min: usize, max: usize) -> Option<Vec<u32>> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() < min || parts.len() > max {
        return None;
    }
    parts
        .iter()
        .map(|p| {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                p.parse().ok()
            }
        })
        .collect()
}

impl CudaVersion {
    pub const fn new(major: u32, minor: u32, patch: Option<u32>) -> Self {
        CudaVersion {
            major,
            minor,
            patch,
        }
    }

    /// `X.Y` or `X.Y.Z`. No part has a leading zero (`12.01` is not a CUDA version, and
    /// would print back as `12.1`); driver versions, which have them (`535.104.05`), are
    /// read by [`DriverVersion::parse`].
    pub fn parse(s: &str) -> Option<Self> {
        if s.split('.').any(|p| p.len() > 1 && p.starts_with('0')) {
            return None;
        }
        let n = numbers(s, 2, 3)?;
        Some(CudaVersion {
            major: n[0],
            minor: n[1],
            patch: n.get(2).copied(),
        })
    }

    /// The `X.Y` the minor-level tables are keyed by.
    pub fn minor_key(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    /// The same version without its patch number (`12.4.1` -> `12.4`).
    pub fn minor_only(&self) -> CudaVersion {
        CudaVersion::new(self.major, self.minor, None)
    }

    fn key(&self) -> (u32, u32, u32, bool) {
        (
            self.major,
            self.minor,
            self.patch.unwrap_or(0),
            self.patch.is_some(),
        )
    }
}

impl PartialEq for CudaVersion {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for CudaVersion {}
impl std::hash::Hash for CudaVersion {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}
impl PartialOrd for CudaVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
/// `12.4` sorts just before `12.4.0`, both before `12.4.1`.
impl Ord for CudaVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.patch {
            Some(p) => write!(f, "{}.{}.{p}", self.major, self.minor),
            None => write!(f, "{}.{}", self.major, self.minor),
        }
    }
}

impl serde::Serialize for CudaVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl DriverVersion {
    /// `major[.minor[.patch]]`, as `nvidia-smi` and `/proc/driver/nvidia/version` print it.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let n = numbers(s, 1, 3)?;
        let mut parts = [0; 3];
        parts[..n.len()].copy_from_slice(&n);
        Some(DriverVersion {
            parts,
            text: s.to_owned(),
        })
    }

    /// The driver branch: `535` for `535.104.05` (NVIDIA's "R535").
    pub fn branch(&self) -> u32 {
        self.parts[0]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for DriverVersion {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts
    }
}
impl Eq for DriverVersion {}
impl PartialOrd for DriverVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for DriverVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts.cmp(&other.parts)
    }
}

impl fmt::Display for DriverVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for DriverVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn d(s: &str) -> DriverVersion {
        DriverVersion::parse(s).expect(s)
    }

    #[test]
    fn driver_versions_compare_numerically() {
        assert!(d("535.104.05") > d("535.54.03"));
        assert!(d("570.26") < d("570.124.06"));
        assert!(d("550.54.15") > d("550.54.14"));
        assert_eq!(d("570.26"), d("570.26.0"));
        assert_eq!(d("535.104.05").branch(), 535);
        assert_eq!(d(" 440.33\n").as_str(), "440.33");
        for bad in ["", "abc", "535..1", "535.1.2.3", "-1", "535.x", "1234567"] {
            assert!(DriverVersion::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cuda_versions_order_and_print() {
        let v = |s: &str| CudaVersion::parse(s).expect(s);
        assert!(v("12.4.1") > v("12.4.0"));
        assert!(v("12.4.0") > v("12.4"));
        assert!(v("12.10.0") > v("12.9.1"));
        assert!(v("10.2") < v("11.0.3"));
        assert_eq!(v("12.4.1").to_string(), "12.4.1");
        assert_eq!(v("9.0").to_string(), "9.0");
        assert_eq!(v("12.4.1").minor_only().to_string(), "12.4");
        assert!(CudaVersion::parse("12").is_none());
        assert!(CudaVersion::parse("12.4.1.2").is_none());
        assert!(CudaVersion::parse("12.a").is_none());
    }
}
