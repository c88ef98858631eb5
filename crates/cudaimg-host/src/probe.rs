//! Probes of the machine `doctor` runs on: the NVIDIA driver and GPUs, the NVIDIA Container
//! Toolkit, Docker's `daemon.json`, and CDI specs. Each reads what it can and reports what
//! it found, including "nothing" and "unreadable": a probe never fails the command.
//!
//! Every location can be overridden through an environment variable (documented in
//! README.md), so tests fake a host without root, and so can a user inspecting another root:
//! [`ENV_NVIDIA_SMI`], [`ENV_PROC_DRIVER_VERSION`], [`ENV_DOCKER_DAEMON_JSON`],
//! [`ENV_CDI_DIRS`]. Toolkit binaries are looked up on `PATH`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use cudaimg_cuda::arch::ComputeCap;
use cudaimg_cuda::DriverVersion;

use cudaimg_static::EnvVars;

/// Path of the `nvidia-smi` to run [default: `nvidia-smi` on `PATH`].
pub const ENV_NVIDIA_SMI: &str = EnvVars::CUDAIMG_NVIDIA_SMI;
/// Path of the kernel module's version file [default: `/proc/driver/nvidia/version`].
pub const ENV_PROC_DRIVER_VERSION: &str = EnvVars::CUDAIMG_PROC_DRIVER_VERSION;
/// Path of Docker's daemon configuration [default: `/etc/docker/daemon.json`].
pub const ENV_DOCKER_DAEMON_JSON: &str = EnvVars::CUDAIMG_DOCKER_DAEMON_JSON;
/// `:`-separated directories of CDI specs [default: `/etc/cdi:/var/run/cdi`].
pub const ENV_CDI_DIRS: &str = EnvVars::CUDAIMG_CDI_DIRS;

const PROC_DRIVER_VERSION: &str = "/proc/driver/nvidia/version";
const DAEMON_JSON: &str = "/etc/docker/daemon.json";
const CDI_DIRS: &str = "/etc/cdi:/var/run/cdi";
/// `nvidia-smi` can hang on a wedged GPU; it gets this long.
const SMI_TIMEOUT: Duration = Duration::from_secs(20);
/// Files larger than this are not configuration files: not read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The NVIDIA Container Toolkit's programs, in the order they are reported.
pub const TOOLKIT_BINARIES: &[&str] = &[
    "nvidia-ctk",
    "nvidia-container-runtime",
    "nvidia-container-runtime-hook",
    "nvidia-container-cli",
];

/// One GPU as `nvidia-smi` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Gpu {
    pub name: String,
    pub driver: DriverVersion,
    /// Its index (`nvidia-smi -i`, `CUDA_VISIBLE_DEVICES`), from the architecture query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Its compute capability (`9.0`); `None` when `nvidia-smi` did not report it (drivers
    /// before R510 have no `compute_cap` field).
    pub compute_cap: Option<ComputeCap>,
}

/// What the driver probes found.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "found", rename_all = "kebab-case")]
pub enum DriverProbe {
    /// `nvidia-smi` listed the GPUs.
    Smi {
        path: PathBuf,
        driver: DriverVersion,
        gpus: Vec<Gpu>,
        /// Why the compute capabilities are unknown, when they are.
        #[serde(skip_serializing_if = "Option::is_none")]
        compute_cap_error: Option<String>,
    },
    /// No `nvidia-smi`, but the kernel module's version file names a driver.
    Proc {
        path: PathBuf,
        driver: DriverVersion,
        smi: String,
    },
    /// `nvidia-smi` is there and failed (driver not loaded, library mismatch, no device).
    SmiFailed {
        path: PathBuf,
        message: String,
        /// The kernel module's version, if its file exists.
        proc_driver: Option<DriverVersion>,
    },
    /// Neither: no driver, or no GPU.
    Nothing { smi: String, proc_path: PathBuf },
}

impl DriverProbe {
    pub fn driver(&self) -> Option<&DriverVersion> {
        match self {
            DriverProbe::Smi { driver, .. } | DriverProbe::Proc { driver, .. } => Some(driver),
            DriverProbe::SmiFailed { proc_driver, .. } => proc_driver.as_ref(),
            DriverProbe::Nothing { .. } => None,
        }
    }

    pub fn gpus(&self) -> &[Gpu] {
        match self {
            DriverProbe::Smi { gpus, .. } => gpus,
            _ => &[],
        }
    }
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// An executable file named `name` in a `PATH` directory.
/// How to restart the Docker daemon on this host: `systemctl` only where systemd runs (it
/// does when `/run/systemd/system` exists, as `sd_booted` checks); a container or WSL
/// without it has `service`, or a daemon started by hand. (`cudaimg-docker` says how to
/// start one by the same test.)
pub fn restart_docker() -> &'static str {
    if Path::new("/run/systemd/system").is_dir() {
        "`sudo systemctl restart docker`"
    } else if Path::new("/etc/init.d/docker").exists() {
        "`sudo service docker restart`"
    } else {
        "a restart of the daemon (stop `dockerd`, start it again)"
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os(EnvVars::PATH)?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs_err::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the driver: `nvidia-smi --query-gpu=driver_version,name --format=csv,noheader`,
/// else `/proc/driver/nvidia/version`; and each GPU's compute capability
/// (`--query-gpu=index,name,compute_cap`).
pub async fn probe_driver() -> DriverProbe {
    let proc_path = env_path(ENV_PROC_DRIVER_VERSION, PROC_DRIVER_VERSION);
    let proc_driver = read_small(&proc_path)
        .ok()
        .and_then(|text| parse_proc_version(&text));
    let smi = match std::env::var_os(ENV_NVIDIA_SMI).filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            if is_executable(&p) {
                Ok(p)
            } else {
                Err(format!("no executable at {ENV_NVIDIA_SMI}={}", p.display()))
            }
        }
        None => which("nvidia-smi").ok_or_else(|| "`nvidia-smi` is not on PATH".to_owned()),
    };
    let smi = match smi {
        Ok(p) => p,
        Err(why) => {
            return match proc_driver {
                Some(driver) => DriverProbe::Proc {
                    path: proc_path,
                    driver,
                    smi: why,
                },
                None => DriverProbe::Nothing {
                    smi: why,
                    proc_path,
                },
            }
        }
    };
    match run_smi(&smi, DRIVER_QUERY)
        .await
        .and_then(|t| parse_smi(&t))
    {
        Ok(mut gpus) if !gpus.is_empty() => {
            let caps = run_smi(&smi, ARCH_QUERY)
                .await
                .and_then(|t| parse_arch(&t))
                .and_then(|caps| {
                    if caps.len() == gpus.len() {
                        Ok(caps)
                    } else {
                        Err(format!(
                            "`{}` listed {} GPUs, the driver query {}",
                            ARCH_QUERY.join(" "),
                            caps.len(),
                            gpus.len()
                        ))
                    }
                });
            let compute_cap_error = match caps {
                Ok(caps) => {
                    // Both queries list the GPUs in the same (PCI bus) order.
                    for (g, (index, cap)) in gpus.iter_mut().zip(caps) {
                        g.index = Some(index);
                        g.compute_cap = Some(cap);
                    }
                    None
                }
                Err(e) => Some(e),
            };
            DriverProbe::Smi {
                path: smi,
                driver: gpus[0].driver.clone(),
                gpus,
                compute_cap_error,
            }
        }
        Ok(_) => DriverProbe::SmiFailed {
            path: smi,
            message: "it listed no GPU".into(),
            proc_driver,
        },
        Err(message) => DriverProbe::SmiFailed {
            path: smi,
            message,
            proc_driver,
        },
    }
}

/// The driver and the GPUs' names.
const DRIVER_QUERY: &[&str] = &["--query-gpu=driver_version,name", "--format=csv,noheader"];
/// Each GPU's compute capability: a query of its own, so that a driver too old for the
/// `compute_cap` field (before R510) still gives the driver and the names.
const ARCH_QUERY: &[&str] = &[
    "--query-gpu=index,name,compute_cap",
    "--format=csv,noheader",
];

async fn run_smi(path: &Path, args: &[&str]) -> Result<String, String> {
    let child = tokio::process::Command::new(path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(SMI_TIMEOUT, child).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("cannot run it: {e}")),
        Err(_) => return Err(format!("it did not answer in {} s", SMI_TIMEOUT.as_secs())),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let text = [stderr.trim(), stdout.trim()]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or("no output");
        let first: String = text
            .lines()
            .next()
            .unwrap_or(text)
            .chars()
            .take(300)
            .collect();
        return Err(format!("it exited with {}: {first}", out.status));
    }
    Ok(stdout.into_owned())
}

/// Lines of `INDEX, NAME, COMPUTE_CAP` (`0, Tesla V100-SXM2-16GB, 7.0`). A GPU name may hold
/// commas, so the index is the first field and the capability the last.
pub fn parse_arch(text: &str) -> Result<Vec<(u32, ComputeCap)>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let bad = || {
            format!(
                "unexpected output `{}`",
                line.chars().take(200).collect::<String>()
            )
        };
        let (index, rest) = line.split_once(',').ok_or_else(bad)?;
        let (_, cap) = rest.rsplit_once(',').ok_or_else(bad)?;
        let index = index.trim().parse().map_err(|_| bad())?;
        let cap = ComputeCap::parse(cap)
            .ok_or_else(|| format!("`{}` is not a compute capability", cap.trim()))?;
        out.push((index, cap));
        if out.len() > 256 {
            return Err("it listed more than 256 GPUs".into());
        }
    }
    Ok(out)
}

/// Lines of `DRIVER, NAME`.
pub fn parse_smi(text: &str) -> Result<Vec<Gpu>, String> {
    let mut gpus = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (driver, name) = line
            .split_once(',')
            .ok_or_else(|| format!("unexpected output `{line}`"))?;
        let driver = DriverVersion::parse(driver)
            .ok_or_else(|| format!("`{}` is not a driver version", driver.trim()))?;
        gpus.push(Gpu {
            name: name.trim().to_owned(),
            driver,
            index: None,
            compute_cap: None,
        });
        if gpus.len() > 256 {
            return Err("it listed more than 256 GPUs".into());
        }
    }
    Ok(gpus)
}

/// `NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 …` (or `Open
/// Kernel Module for x86_64  570.86.15  Release Build …`): the first version after "Module".
pub fn parse_proc_version(text: &str) -> Option<DriverVersion> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    let after = line.split_once("Module")?.1;
    after
        .split_whitespace()
        .find(|w| w.contains('.'))
        .and_then(DriverVersion::parse)
}

/// A FIFO or device named like a config file would block the read forever; `/proc` files
/// report size 0, so the cap counts what is read.
fn read_small(path: &Path) -> Result<String, String> {
    cudaimg_static::regular::read_capped_to_string(path, MAX_CONFIG_BYTES)
        .map_err(|e| e.to_string())
}

/// What Docker's `daemon.json` says.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum DaemonJson {
    Missing {
        path: PathBuf,
    },
    Unreadable {
        path: PathBuf,
        error: String,
    },
    Invalid {
        path: PathBuf,
        error: String,
    },
    Read {
        path: PathBuf,
        /// Names under `runtimes` (`nvidia`).
        runtimes: Vec<String>,
        default_runtime: Option<String>,
        registry_mirrors: Vec<String>,
        /// `features.cdi`.
        cdi: bool,
    },
}

/// Reads `daemon.json` (at [`ENV_DOCKER_DAEMON_JSON`] or `/etc/docker/daemon.json`).
pub fn probe_daemon_json() -> DaemonJson {
    let path = env_path(ENV_DOCKER_DAEMON_JSON, DAEMON_JSON);
    if !path.exists() {
        return DaemonJson::Missing { path };
    }
    let text = match read_small(&path) {
        Ok(t) => t,
        Err(error) => return DaemonJson::Unreadable { path, error },
    };
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            return DaemonJson::Invalid {
                path,
                error: e.to_string(),
            }
        }
    };
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    DaemonJson::Read {
        runtimes: v["runtimes"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default(),
        default_runtime: v["default-runtime"].as_str().map(str::to_owned),
        registry_mirrors: strings(&v["registry-mirrors"]),
        cdi: v["features"]["cdi"].as_bool().unwrap_or(false),
        path,
    }
}

/// CDI spec files that describe NVIDIA GPUs (`kind: nvidia.com/gpu`).
#[derive(Debug, Clone, Serialize)]
pub struct Cdi {
    pub dirs: Vec<PathBuf>,
    pub nvidia_specs: Vec<PathBuf>,
}

/// Looks through the CDI directories ([`ENV_CDI_DIRS`] or `/etc/cdi:/var/run/cdi`).
pub fn probe_cdi() -> Cdi {
    let dirs: Vec<PathBuf> = std::env::var_os(ENV_CDI_DIRS)
        .filter(|v| !v.is_empty())
        .map_or_else(
            || std::env::split_paths(CDI_DIRS).collect(),
            |v| std::env::split_paths(&v).collect(),
        );
    let mut nvidia_specs = Vec::new();
    for dir in &dirs {
        let Ok(entries) = fs_err::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let is_spec = f
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if is_spec && read_small(&f).is_ok_and(|t| t.contains("nvidia.com/gpu")) {
                nvidia_specs.push(f);
            }
        }
    }
    Cdi { dirs, nvidia_specs }
}

/// Toolkit programs found on `PATH`.
pub fn probe_toolkit() -> Vec<(String, PathBuf)> {
    TOOLKIT_BINARIES
        .iter()
        .filter_map(|b| which(b).map(|p| ((*b).to_owned(), p)))
        .collect()
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_output() {
        let gpus =
            parse_smi("550.54.15, NVIDIA A100-SXM4-80GB\n550.54.15, NVIDIA A100-SXM4-80GB\n")
                .expect("parses");
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].driver.as_str(), "550.54.15");
        assert_eq!(gpus[0].name, "NVIDIA A100-SXM4-80GB");
        assert!(parse_smi("").expect("empty is no GPU").is_empty());
        assert!(parse_smi("No devices were found").is_err());
        assert!(parse_smi("abc, Tesla T4").is_err());
    }

    #[test]
    fn compute_capabilities() {
        let caps = parse_arch("0, Tesla V100-SXM2-16GB, 7.0\n1, NVIDIA GeForce RTX 5090, 12.0\n")
            .expect("parses");
        assert_eq!(
            caps,
            [(0, ComputeCap::new(7, 0)), (1, ComputeCap::new(12, 0))]
        );
        assert!(parse_arch("0, Tesla K80, [N/A]").is_err());
        // An old driver's fake answering the driver query to everything.
        assert!(parse_arch("470.82.01, Tesla T4").is_err());
    }

    #[test]
    fn proc_version_files() {
        let classic = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version:  gcc version 12.2.0\n";
        assert_eq!(
            parse_proc_version(classic)
                .map(|d| d.to_string())
                .as_deref(),
            Some("535.104.05")
        );
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Jan 23 2025\n";
        assert_eq!(
            parse_proc_version(open).map(|d| d.to_string()).as_deref(),
            Some("570.86.15")
        );
        assert!(parse_proc_version("hello").is_none());
    }
}
