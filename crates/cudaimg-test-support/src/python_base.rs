//! A runnable fixture base with a real Python, for `cudaimg build` tests: a Debian 12
//! minbase rootfs (`debootstrap --variant=minbase --include=python3,python3-venv bookworm`,
//! Python 3.11) packed as one gzip layer, with the environment and labels of an
//! `nvidia/cuda:12.4.1-<flavor>-ubuntu22.04` image. The OS does not match the tag (Debian,
//! not Ubuntu): fine for a fixture, whose job is to be runnable offline and shaped like
//! NVIDIA's image, not to be one. It has no CUDA libraries and no `nvcc`.
//!
//! The rootfs tarball is cached outside the clone, so CI builds it once per machine:
//! `$CUDAIMG_TEST_CACHE`, else `/var/cache/cudaimg-test` (root), else
//! `$XDG_CACHE_HOME/cudaimg-test`. It is written to a temporary name and renamed, so a
//! half-built cache is never used.
//!
//! Also: the stand-in torch wheel. Real torch wheels are GBs; this one is a clearly
//! labelled fixture named `torch`, version `2.5.1+cu124`, whose `torch.version.cuda` is
//! `12.4`: pip installs it like the real one and `import torch` prints its version.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use flate2::write::GzEncoder;

use super::fixtures::{sha256_digest, Document, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST};
use super::push::Pusher;
use super::BlobRef;

const ROOTFS: &str = "debian-bookworm-python-rootfs.tar";

/// Where the rootfs tarball is cached.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CUDAIMG_TEST_CACHE") {
        return PathBuf::from(d);
    }
    let root = PathBuf::from("/var/cache/cudaimg-test");
    if std::fs::create_dir_all(&root).is_ok() {
        return root;
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("cudaimg-test")
}

/// The Debian mirror apt itself uses here (debootstrap needs one), else deb.debian.org.
fn debian_mirror() -> String {
    for f in [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines() {
            let line = line.trim();
            let url = line.strip_prefix("URIs:").map(str::trim).or_else(|| {
                line.strip_prefix("deb ")
                    .and_then(|l| l.split_whitespace().next())
            });
            if let Some(u) = url.filter(|u| u.ends_with("/debian") || u.ends_with("/debian/")) {
                return u.to_owned();
            }
        }
    }
    "http://deb.debian.org/debian".to_owned()
}

static BUILDING: Mutex<()> = Mutex::new(());

/// The cached rootfs tarball, built (as root, with debootstrap) if missing; `Err` says why
/// it cannot be had, for a test to print as SKIPPED.
pub fn rootfs_tar() -> Result<PathBuf, String> {
    let _one = BUILDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = cache_dir();
    let file = dir.join(ROOTFS);
    if file.is_file() {
        return Ok(file);
    }
    if Command::new("debootstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("debootstrap is not installed (scripts/setup.sh installs it)".into());
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".rootfs-")
        .tempdir_in(&dir)
        .map_err(|e| e.to_string())?;
    let root = work.path().join("root");
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=python3,python3-venv",
            "bookworm",
        ])
        .arg(&root)
        .arg(debian_mirror())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "debootstrap failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let partial = work.path().join("rootfs.tar");
    let out = Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&partial)
        .arg(".")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "tar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&partial, &file).map_err(|e| e.to_string())?;
    Ok(file)
}

/// The fixture base, ready to push.
pub struct PythonBase {
    pub manifest: Document,
    pub config: Document,
    pub layer_digest: String,
    pub layer: PathBuf,
    pub layer_size: u64,
    pub diff_id: String,
}

/// The environment of NVIDIA's 12.4.1 image (docs/CUDA.md), `runtime` and `devel`
/// additions included by flavor.
fn nvidia_env(flavor: &str) -> Vec<String> {
    let mut env = vec![
        "PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        "NVARCH=x86_64".to_owned(),
        "NVIDIA_REQUIRE_CUDA=cuda>=12.4 brand=tesla,driver>=470,driver<471 brand=tesla,driver>=535,driver<536".to_owned(),
        "NV_CUDA_CUDART_VERSION=12.4.127-1".to_owned(),
        "CUDA_VERSION=12.4.1".to_owned(),
        "LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64".to_owned(),
        "NVIDIA_VISIBLE_DEVICES=all".to_owned(),
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility".to_owned(),
    ];
    if flavor != "base" {
        env.push("NCCL_VERSION=2.21.5-1".to_owned());
        env.push("NVIDIA_PRODUCT_NAME=CUDA".to_owned());
    }
    if flavor == "devel" {
        env.push("LIBRARY_PATH=/usr/local/cuda/lib64/stubs".to_owned());
    }
    env
}

impl PythonBase {
    /// The base for `flavor` (`base`, `runtime`, `devel`): the same rootfs layer, NVIDIA's
    /// environment for that flavor. The gzip layer is written next to the cached tarball
    /// once (same bytes every time: gzip without a timestamp).
    pub fn build(flavor: &str) -> Result<PythonBase, String> {
        let tar = rootfs_tar()?;
        let gz = tar.with_extension("tar.gz");
        let ids = tar.with_extension("ids");
        let _one = BUILDING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !gz.is_file() || !ids.is_file() {
            let raw = std::fs::read(&tar).map_err(|e| e.to_string())?;
            let diff_id = sha256_digest(&raw);
            let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&raw).map_err(|e| e.to_string())?;
            let bytes = enc.finish().map_err(|e| e.to_string())?;
            let digest = sha256_digest(&bytes);
            let partial = tar.with_extension("tar.gz.partial");
            std::fs::write(&partial, &bytes).map_err(|e| e.to_string())?;
            std::fs::rename(&partial, &gz).map_err(|e| e.to_string())?;
            std::fs::write(&ids, format!("{diff_id}\n{digest}\n")).map_err(|e| e.to_string())?;
        }
        let text = std::fs::read_to_string(&ids).map_err(|e| e.to_string())?;
        let mut lines = text.lines();
        let diff_id = lines.next().unwrap_or_default().to_owned();
        let layer_digest = lines.next().unwrap_or_default().to_owned();
        let layer_size = std::fs::metadata(&gz).map_err(|e| e.to_string())?.len();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": nvidia_env(flavor),
                "Cmd": ["/bin/bash"],
                "Labels": {"maintainer": "NVIDIA CORPORATION <cudatools@nvidia.com>",
                           "io.cudaimg.fixture": "debian 12 minbase with python3.11, shaped as nvidia/cuda 12.4.1"},
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "debootstrap --variant=minbase --include=python3,python3-venv bookworm"}],
        });
        let config_bytes = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
        let config = Document {
            media_type: DOCKER_CONFIG.into(),
            digest: sha256_digest(&config_bytes),
            bytes: config_bytes,
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": config.bytes.len(), "digest": config.digest},
            "layers": [{"mediaType": DOCKER_LAYER, "size": layer_size, "digest": layer_digest}],
        });
        let manifest_bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        Ok(PythonBase {
            manifest: Document {
                media_type: DOCKER_MANIFEST.into(),
                digest: sha256_digest(&manifest_bytes),
                bytes: manifest_bytes,
            },
            config,
            layer_digest,
            layer: gz,
            layer_size,
            diff_id,
        })
    }

    /// Pushes it as `repo:tag`.
    pub fn push(&self, pusher: &Pusher, repo: &str, tag: &str) {
        pusher.push_blob(
            repo,
            BlobRef::File {
                digest: &self.layer_digest,
                size: self.layer_size,
                path: &self.layer,
            },
        );
        pusher.push_blob(
            repo,
            BlobRef::Bytes {
                digest: &self.config.digest,
                bytes: &self.config.bytes,
            },
        );
        pusher.push_manifest(repo, tag, &self.manifest);
    }
}

/// Writes the stand-in torch wheel (`torch-2.5.1+cu124-py3-none-any.whl`) into `dir` and
/// returns its path. Built with Python's zipfile (a wheel is a zip with a RECORD).
pub fn stand_in_torch_wheel(dir: &Path, version: &str, cuda: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let name = format!("torch-{version}-py3-none-any.whl");
    let script = r#"
import base64, hashlib, sys, zipfile
path, version, cuda = sys.argv[1], sys.argv[2], sys.argv[3]
info = f"torch-{version}.dist-info"
files = {
    "torch/__init__.py": f'"""cudaimg test fixture: a stand-in for torch, not PyTorch."""\n__version__ = "{version}"\nfrom . import version\n',
    "torch/version.py": f'__version__ = "{version}"\ncuda = "{cuda}"\n',
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\nSummary: cudaimg test fixture standing in for torch\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: cudaimg-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(path, "w") as z:
    for n, text in files.items():
        data = text.encode()
        z.writestr(zipfile.ZipInfo(n, (2020, 1, 1, 0, 0, 0)), data)
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{n},sha256={h},{len(data)}")
    record.append(f"{info}/RECORD,,")
    z.writestr(zipfile.ZipInfo(f"{info}/RECORD", (2020, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
"#;
    let path = dir.join(&name);
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .arg(version)
        .arg(cuda)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot write the stand-in wheel: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}
