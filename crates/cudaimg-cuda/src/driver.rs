//! Which host driver runs which CUDA image.
//!
//! Three facts decide it (NVIDIA's CUDA Toolkit release notes and the CUDA Compatibility
//! guide; rows from CUDA 11.8 on as in `docs/CUDA.md`):
//! - Each toolkit minor has a minimum driver for **full compatibility** ([`min_driver`]).
//! - From CUDA 11 on, **minor-version compatibility** runs an image of a newer minor of the
//!   same major on an older driver of that family (11.x from 450.80.02, 12.x from 525.60.13,
//!   13.x from 580.65.06), with limits: no PTX JIT of code newer than the driver.
//! - The NVIDIA container runtime enforces the image's own `NVIDIA_REQUIRE_CUDA`
//!   ([`Requirement`]): `cuda>=12.4` compares the CUDA version the *driver* supports, so an
//!   image can be refused on a driver that minor-version compatibility would run it on,
//!   unless an alternative (forward compatibility on data-centre GPUs,
//!   `brand=tesla,driver>=535,driver<536`) matches, or `NVIDIA_DISABLE_REQUIRE=1` is set.

use serde::Serialize;

use super::version::{CudaVersion, DriverVersion};

/// Minimum Linux `x86_64` driver of each toolkit minor's first (GA) release (`data/cuda.toml`).
/// A later update of the same minor may need a slightly newer one (12.4.1: 550.54.15); the
/// container runtime checks at minor level, which is what this table is for.
fn min_driver_rows() -> impl Iterator<Item = ((u32, u32), &'static str)> {
    crate::data::tables()
        .min_driver
        .iter()
        .map(|r| (r.key, r.value.as_str()))
}

/// Where the figures come from, for output that cites them.
pub const SOURCE: &str = "NVIDIA CUDA Toolkit release notes (toolkit and minimum driver \
    versions) and CUDA Compatibility guide (minor-version compatibility)";

/// The oldest driver of each major family that runs the family's newer minors with
/// minor-version compatibility.
const MINOR_COMPAT: &[(u32, &str)] = &[(11, "450.80.02"), (12, "525.60.13"), (13, "580.65.06")];

fn driver(s: &str) -> Option<DriverVersion> {
    DriverVersion::parse(s)
}

/// The minimum driver for full compatibility with CUDA `v`'s minor; `None` when the table
/// does not know that minor (a release newer than the table, or one that never existed).
pub fn min_driver(v: CudaVersion) -> Option<DriverVersion> {
    min_driver_rows()
        .find(|(k, _)| *k == v.minor_key())
        .and_then(|(_, d)| driver(d))
}

/// The newest CUDA minor the table knows.
pub fn newest_known() -> CudaVersion {
    min_driver_rows()
        .last()
        .map_or(CudaVersion::new(0, 0, None), |((major, minor), _)| {
            CudaVersion::new(major, minor, None)
        })
}

/// The oldest driver that runs CUDA `v` with minor-version compatibility; `None` before
/// CUDA 11, which had none.
pub fn minor_compat_driver(v: CudaVersion) -> Option<DriverVersion> {
    let family = MINOR_COMPAT
        .iter()
        .find(|(major, _)| *major == v.major)
        .and_then(|(_, d)| driver(d))?;
    // Never more lenient than the toolkit's own minimum (11.0 needs less than 450.80.02).
    match min_driver(v) {
        Some(full) if full < family => Some(full),
        _ => Some(family),
    }
}

/// The newest CUDA minor a driver fully supports, per the table (a lower bound: a driver
/// branch between two rows reports at least the older row's version).
pub fn driver_cuda(d: &DriverVersion) -> Option<CudaVersion> {
    min_driver_rows()
        .filter(|(_, min)| driver(min).is_some_and(|m| m <= *d))
        .map(|((major, minor), _)| CudaVersion::new(major, minor, None))
        .max()
}

/// How well a driver runs a CUDA version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "level", rename_all = "kebab-case")]
pub enum Compatibility {
    /// At least the toolkit's own minimum driver.
    Full { min_driver: DriverVersion },
    /// Runs with minor-version compatibility: no PTX JIT of newer code; full needs `min_driver`.
    MinorVersion {
        min_driver: Option<DriverVersion>,
        minor_compat_driver: DriverVersion,
    },
    /// Older than anything that runs it.
    TooOld {
        min_driver: Option<DriverVersion>,
        minor_compat_driver: Option<DriverVersion>,
    },
    /// The table does not know this CUDA version (nor its major family).
    Unknown,
}

impl Compatibility {
    /// The driver the image runs on at all (minor-version compatibility counts).
    pub fn runs(&self) -> bool {
        matches!(
            self,
            Compatibility::Full { .. } | Compatibility::MinorVersion { .. }
        )
    }
}

/// How `d` runs CUDA `v`.
pub fn compatibility(v: CudaVersion, d: &DriverVersion) -> Compatibility {
    let full = min_driver(v);
    let minor = minor_compat_driver(v);
    match (&full, &minor) {
        (Some(f), _) if d >= f => Compatibility::Full {
            min_driver: f.clone(),
        },
        (_, Some(m)) if d >= m => Compatibility::MinorVersion {
            min_driver: full,
            minor_compat_driver: m.clone(),
        },
        (None, None) => Compatibility::Unknown,
        _ => Compatibility::TooOld {
            min_driver: full,
            minor_compat_driver: minor,
        },
    }
}

/// The GPU brand as `NVIDIA_REQUIRE_CUDA` names it, guessed from the product name; `None`
/// when the name does not say (data-centre products are named `NVIDIA A100`, …).
pub fn brand_of(gpu_name: &str) -> Option<&'static str> {
    let n = gpu_name.to_ascii_lowercase();
    [
        ("geforce rtx", "geforcertx"),
        ("geforce", "geforce"),
        ("quadro rtx", "quadrortx"),
        ("quadro", "quadro"),
        ("tesla", "tesla"),
        ("titan rtx", "titanrtx"),
        ("titan", "titan"),
    ]
    .into_iter()
    .find(|(word, _)| n.contains(word))
    .map(|(_, brand)| brand)
}

/// An image's `NVIDIA_REQUIRE_CUDA`: alternatives separated by spaces, each a list of
/// comma-separated conditions that must all hold (libnvidia-container's grammar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub text: String,
    alternatives: Vec<Vec<Condition>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    key: String,
    op: Op,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

/// What the host offers to check a requirement against.
pub struct HostFacts<'a> {
    pub driver: &'a DriverVersion,
    /// `None`: not known (the name does not tell).
    pub brand: Option<&'a str>,
}

/// The outcome of checking a requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequireOutcome {
    /// Met, by the alternative quoted.
    Met(String),
    /// Met only if the GPU's brand is one the alternatives quoted name (brand not known).
    DependsOnBrand(Vec<String>),
    NotMet,
}

impl Requirement {
    /// Parses the variable's value; conditions it cannot read are kept out (never guessed).
    pub fn parse(text: &str) -> Option<Self> {
        let mut alternatives = Vec::new();
        for alt in text.split_whitespace() {
            let mut conds = Vec::new();
            for c in alt.split(',') {
                let (key, op, value) = [
                    (">=", Op::Ge),
                    ("<=", Op::Le),
                    (">", Op::Gt),
                    ("<", Op::Lt),
                    ("=", Op::Eq),
                ]
                .into_iter()
                .find_map(|(sym, op)| c.split_once(sym).map(|(k, v)| (k, op, v)))?;
                if !matches!(key, "cuda" | "driver" | "brand" | "arch") || value.is_empty() {
                    return None;
                }
                conds.push(Condition {
                    key: key.to_owned(),
                    op,
                    value: value.to_owned(),
                });
            }
            alternatives.push(conds);
        }
        (!alternatives.is_empty()).then(|| Requirement {
            text: text.to_owned(),
            alternatives,
        })
    }

    /// The CUDA version the main alternative asks of the driver (`cuda>=12.4`).
    pub fn cuda(&self) -> Option<CudaVersion> {
        self.alternatives
            .iter()
            .flatten()
            .find(|c| c.key == "cuda" && matches!(c.op, Op::Ge | Op::Gt))
            .and_then(|c| CudaVersion::parse(&c.value))
    }

    /// The alternatives that name a driver branch rather than a CUDA version
    /// (`brand=tesla,driver>=535,driver<536`): forward compatibility on the GPU brands they
    /// name, as written.
    pub fn branch_alternatives(&self) -> Vec<String> {
        self.alternatives
            .iter()
            .filter(|alt| alt.iter().any(|c| c.key == "driver"))
            .map(|alt| render(alt))
            .collect()
    }

    /// Checks the requirement as the container runtime would.
    pub fn check(&self, host: &HostFacts<'_>) -> RequireOutcome {
        let driver_cuda = driver_cuda(host.driver);
        let mut brand_dependent = Vec::new();
        for alt in &self.alternatives {
            let mut needs_brand = false;
            let mut ok = true;
            for c in alt {
                let holds = match c.key.as_str() {
                    "cuda" => match (CudaVersion::parse(&c.value), driver_cuda) {
                        (Some(want), Some(have)) => {
                            compare(have.minor_only().cmp(&want.minor_only()), c.op)
                        }
                        _ => false,
                    },
                    "driver" => match DriverVersion::parse(&c.value) {
                        Some(want) => compare(host.driver.cmp(&want), c.op),
                        None => false,
                    },
                    "brand" => {
                        if let Some(b) = host.brand {
                            c.op == Op::Eq && b == c.value
                        } else {
                            needs_brand = true;
                            true
                        }
                    }
                    // Architecture constraints (`arch=7.5`) need the GPU's compute
                    // capability, which the probes do not read: treated as unmet.
                    _ => false,
                };
                ok &= holds;
            }
            if ok && !needs_brand {
                return RequireOutcome::Met(render(alt));
            }
            if ok {
                brand_dependent.push(render(alt));
            }
        }
        if brand_dependent.is_empty() {
            RequireOutcome::NotMet
        } else {
            RequireOutcome::DependsOnBrand(brand_dependent)
        }
    }
}

fn compare(ord: std::cmp::Ordering, op: Op) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match op {
        Op::Ge => ord != Less,
        Op::Gt => ord == Greater,
        Op::Le => ord != Greater,
        Op::Lt => ord == Less,
        Op::Eq => ord == Equal,
    }
}

fn render(alt: &[Condition]) -> String {
    alt.iter()
        .map(|c| {
            let op = match c.op {
                Op::Ge => ">=",
                Op::Gt => ">",
                Op::Le => "<=",
                Op::Lt => "<",
                Op::Eq => "=",
            };
            format!("{}{op}{}", c.key, c.value)
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn v(s: &str) -> CudaVersion {
        CudaVersion::parse(s).expect(s)
    }
    fn d(s: &str) -> DriverVersion {
        DriverVersion::parse(s).expect(s)
    }

    #[test]
    fn branch_alternatives_are_those_that_name_a_driver() {
        let r = Requirement::parse(
            "cuda>=12.4 brand=tesla,driver>=470,driver<471 brand=nvidia,driver>=535,driver<536",
        )
        .expect("NVIDIA's form");
        assert_eq!(r.cuda(), Some(v("12.4")));
        assert_eq!(
            r.branch_alternatives(),
            [
                "brand=tesla,driver>=470,driver<471",
                "brand=nvidia,driver>=535,driver<536"
            ]
        );
        assert!(Requirement::parse("cuda>=13.9")
            .expect("a bare cuda>=")
            .branch_alternatives()
            .is_empty());
    }

    #[test]
    fn the_table_is_sorted_and_readable() {
        let rows: Vec<DriverVersion> = min_driver_rows().map(|(_, x)| d(x)).collect();
        assert!(
            rows.windows(2).all(|w| w[0] < w[1]),
            "drivers rise with toolkits"
        );
        let keys: Vec<(u32, u32)> = min_driver_rows().map(|(k, _)| k).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn minimum_drivers() {
        assert_eq!(min_driver(v("12.4.1")), Some(d("550.54.14")));
        assert_eq!(min_driver(v("13.0.0")), Some(d("580.65.06")));
        assert_eq!(min_driver(v("10.2")), Some(d("440.33")));
        assert_eq!(min_driver(v("12.7.0")), None, "12.7 was never released");
        assert_eq!(minor_compat_driver(v("12.8.1")), Some(d("525.60.13")));
        assert_eq!(minor_compat_driver(v("11.8.0")), Some(d("450.80.02")));
        assert_eq!(minor_compat_driver(v("11.0.3")), Some(d("450.51.05")));
        assert_eq!(minor_compat_driver(v("10.2")), None);
    }

    #[test]
    fn compatibility_levels() {
        assert!(matches!(
            compatibility(v("12.4.1"), &d("550.54.15")),
            Compatibility::Full { .. }
        ));
        assert!(matches!(
            compatibility(v("12.4.1"), &d("535.104.05")),
            Compatibility::MinorVersion { .. }
        ));
        assert!(matches!(
            compatibility(v("12.4.1"), &d("470.82.01")),
            Compatibility::TooOld { .. }
        ));
        // 13.x needs the 580 family: a 575 driver cannot run it at all.
        assert!(!compatibility(v("13.0.1"), &d("575.57.08")).runs());
        assert!(compatibility(v("13.1.0"), &d("580.82.07")).runs());
        // Before CUDA 11 there is no minor-version compatibility.
        assert!(!compatibility(v("10.2"), &d("418.87.00")).runs());
        assert!(compatibility(v("10.2"), &d("440.33")).runs());
        assert_eq!(
            compatibility(v("14.0.0"), &d("999.1")),
            Compatibility::Unknown
        );
    }

    #[test]
    fn a_driver_supports_the_newest_minor_whose_minimum_it_meets() {
        assert_eq!(driver_cuda(&d("535.104.05")), Some(v("12.2")));
        assert_eq!(driver_cuda(&d("550.54.14")), Some(v("12.4")));
        assert_eq!(driver_cuda(&d("580.82.07")), Some(v("13.0")));
        assert_eq!(driver_cuda(&d("300.1")), None);
    }

    const REQUIRE_12_4: &str = "cuda>=12.4 brand=tesla,driver>=470,driver<471 \
        brand=unknown,driver>=470,driver<471 brand=nvidia,driver>=470,driver<471 \
        brand=tesla,driver>=525,driver<526 brand=tesla,driver>=535,driver<536";

    #[test]
    fn requirements_are_checked_like_the_container_runtime() {
        let r = Requirement::parse(REQUIRE_12_4).expect("parses");
        assert_eq!(r.cuda(), Some(v("12.4")));
        let new = d("550.54.15");
        assert_eq!(
            r.check(&HostFacts {
                driver: &new,
                brand: None
            }),
            RequireOutcome::Met("cuda>=12.4".into())
        );
        // R535 on a GeForce: minor-version compatibility would run it, the runtime refuses.
        let r535 = d("535.104.05");
        assert_eq!(
            r.check(&HostFacts {
                driver: &r535,
                brand: Some("geforce")
            }),
            RequireOutcome::NotMet
        );
        // On a Tesla, the forward-compatibility alternative for R535 holds.
        assert_eq!(
            r.check(&HostFacts {
                driver: &r535,
                brand: Some("tesla")
            }),
            RequireOutcome::Met("brand=tesla,driver>=535,driver<536".into())
        );
        // Brand unknown: it depends.
        assert_eq!(
            r.check(&HostFacts {
                driver: &r535,
                brand: None
            }),
            RequireOutcome::DependsOnBrand(vec!["brand=tesla,driver>=535,driver<536".into()])
        );
        let old = d("418.87.00");
        assert_eq!(
            r.check(&HostFacts {
                driver: &old,
                brand: None
            }),
            RequireOutcome::NotMet
        );
        assert!(Requirement::parse("cuda>=12.4 brand~tesla").is_none());
        assert!(Requirement::parse("").is_none());
    }

    #[test]
    fn brands_from_names() {
        assert_eq!(brand_of("Tesla T4"), Some("tesla"));
        assert_eq!(brand_of("NVIDIA GeForce RTX 4090"), Some("geforcertx"));
        assert_eq!(brand_of("NVIDIA GeForce GTX 1080"), Some("geforce"));
        assert_eq!(brand_of("NVIDIA A100-SXM4-80GB"), None);
    }
}
