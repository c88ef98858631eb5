//! `cudaimg build` learns torch × CUDA variant × Python from the index it will install from:
//! a real package index (pypiserver on loopback) and a `--wheelhouse` directory, each holding
//! stand-in files named as `PyTorch` names its wheels (torch 2.14.0 with cu126, cu130 and
//! cu132 for `CPython` 3.12 and 3.13). No engine is needed: `--dry-run` reads the index too.

use cudaimg_test_support as common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_fails, run_ok, Sandbox};

const VARIANTS: &[&str] = &["cu126", "cu130", "cu132"];

/// Stand-in wheels (the listing reads names only), named as download.pytorch.org names them.
fn wheels(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for v in VARIANTS {
        for py in ["cp312", "cp313"] {
            let name = format!("torch-2.14.0+{v}-{py}-{py}-manylinux_2_28_x86_64.whl");
            std::fs::write(dir.join(name), b"stand-in").unwrap();
        }
    }
    // Another platform's wheel, which must not count.
    std::fs::write(
        dir.join("torch-2.15.0+cu132-cp313-cp313-win_amd64.whl"),
        b"stand-in",
    )
    .unwrap();
    dir.to_owned()
}

fn offline() -> (Sandbox, PathBuf) {
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&common::dead_endpoint(), &[]);
    (sandbox, config)
}

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs the same checks with `from` (`--pip-index-url URL` or `--wheelhouse DIR`).
fn the_index_decides(sandbox: &Sandbox, config: &Path, from: &[&str], source: &str) {
    // torch 2.14 is newer than nothing in the table, but the index is what decides: the
    // newest 2.14 it holds, the variant of the base's CUDA, a Python it has wheels for.
    let out = run_ok(
        sandbox
            .cli(
                config,
                &[
                    "build",
                    "--dry-run",
                    "--base",
                    "nvidia/cuda:13.0.1-base-ubuntu24.04",
                    "--torch",
                    "2.14",
                ],
            )
            .args(from),
    );
    let (plan, err) = text(&out);
    assert!(
        plan.contains("plan cudaimg/torch:2.14.0-cu130-py3.12-base-ubuntu24.04"),
        "{plan}\n{err}"
    );
    assert!(
        plan.contains("--build-arg TORCH_PIN=2.14.0+cu130"),
        "{plan}"
    );
    assert!(plan.contains(&format!("the index {source}")), "{plan}");

    // A variant the index lacks: refused, naming the ones it has.
    let out = run_fails(
        sandbox
            .cli(
                config,
                &[
                    "build",
                    "--dry-run",
                    "--base",
                    "nvidia/cuda:12.8.1-base-ubuntu24.04",
                    "--torch",
                    "2.14",
                    "--cuda-wheels",
                    "cu128",
                ],
            )
            .args(from),
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("torch 2.14.0 has no cu128 wheels"), "{err}");
    assert!(err.contains(&format!("the index {source}")), "{err}");
    assert!(
        err.contains("torch 2.14.0 has cu126, cu130, cu132"),
        "{err}"
    );

    // A torch version the index lacks: refused, naming what it holds.
    let out = run_fails(
        sandbox
            .cli(
                config,
                &[
                    "build",
                    "--dry-run",
                    "--base",
                    "nvidia/cuda:13.0.1-base-ubuntu24.04",
                    "--torch",
                    "2.13",
                ],
            )
            .args(from),
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("holds no torch 2.13 CUDA wheel for this platform; it holds 2.14.0 (cu126, cu130, cu132)"),
        "{err}"
    );
    assert!(err.contains("--torch 2.14.0"), "{err}");

    // A Python the variant has no wheel for.
    let out = run_fails(
        sandbox
            .cli(
                config,
                &[
                    "build",
                    "--dry-run",
                    "--base",
                    "nvidia/cuda:13.0.1-base-ubuntu24.04",
                    "--torch",
                    "2.14",
                    "--python",
                    "3.11",
                ],
            )
            .args(from),
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("supports 3.12 to 3.13"), "{err}");
}

#[test]
fn build_learns_torch_variants_and_pythons_from_a_real_package_index() {
    let (sandbox, config) = offline();
    let dir = wheels(&sandbox.root().join("packages"));
    let Some((_server, url)) = pypi_server(&dir) else {
        return;
    };
    let source = format!("{url}torch/");
    the_index_decides(&sandbox, &config, &["--pip-index-url", &url], &source);
}

#[test]
fn build_learns_torch_variants_and_pythons_from_a_wheelhouse() {
    let (sandbox, config) = offline();
    let dir = wheels(&sandbox.root().join("wheels"));
    let source = format!("--wheelhouse {}", dir.display());
    the_index_decides(
        &sandbox,
        &config,
        &["--wheelhouse", dir.to_str().unwrap()],
        &source,
    );
}

#[test]
fn offline_the_table_decides_and_says_so_and_never_picks_a_variant_newer_than_the_base() {
    let (sandbox, config) = offline();
    // PyTorch's index is out of reach (the sandbox points it at a dead endpoint): the
    // compiled table, which knows 2.14, decides.
    let out = run_ok(&mut sandbox.cli(
        &config,
        &[
            "build",
            "--dry-run",
            "--base",
            "nvidia/cuda:13.0.1-base-ubuntu24.04",
            "--torch",
            "2.14.0",
        ],
    ));
    let (plan, err) = text(&out);
    assert!(err.contains("cannot read the package index"), "{err}");
    assert!(
        plan.contains("2.14.0-cu130-py3.12-base-ubuntu24.04"),
        "{plan}"
    );
    // Issue 22 item 7: a 12.4.1 base never gets cu126 (and `cuda>=12.6`) by default; the
    // refusal says which bases fit.
    let out = run_fails(&mut sandbox.cli(
        &config,
        &[
            "build",
            "--dry-run",
            "--base",
            "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
            "--torch",
            "2.14",
        ],
    ));
    let (plan, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!plan.contains("cuda>=12.6"), "{plan}");
    assert!(
        err.contains("torch 2.14 has no wheel for CUDA 12.4 or older of CUDA 12"),
        "{err}"
    );
    assert!(
        err.contains("--base nvidia/cuda:12.6.3-runtime-ubuntu22.04 (for cu126)"),
        "{err}"
    );
}

#[test]
fn explain_sources_prints_each_tables_date_and_sources() {
    let (sandbox, config) = offline();
    let out = run_ok(&mut sandbox.cli(&config, &["explain", "--sources"]));
    let (shown, _) = text(&out);
    assert!(
        shown.contains("(crates/cudaimg-cuda/data/cuda.toml), dated 2026-12-07"),
        "{shown}"
    );
    assert!(
        shown.contains("(crates/cudaimg-build/data/torch.toml), dated 2026-12-07"),
        "{shown}"
    );
    // The architecture tables: the wheels' own file, and the toolkits' rows in cuda.toml.
    assert!(
        shown.contains("(crates/cudaimg-build/data/wheel-arch.toml), dated 2026-12-07"),
        "{shown}"
    );
    assert!(
        shown.contains("build_cuda_sh: pytorch/pytorch .ci/manywheel/build_cuda.sh"),
        "{shown}"
    );
    assert!(
        shown.contains("arch_notes: NVIDIA CUDA Toolkit release notes"),
        "{shown}"
    );
    assert!(
        shown.contains("release_md: pytorch/pytorch RELEASE.md"),
        "{shown}"
    );
    assert!(
        shown.contains("not confirmed from a primary source"),
        "{shown}"
    );
    // 13.4 and ubuntu26.04 are known now: no "treated as unknown".
    let out = run_ok(&mut sandbox.cli(&config, &["explain", "13.4.1-devel-ubuntu26.04"]));
    let (shown, _) = text(&out);
    assert!(!shown.contains("treated as unknown"), "{shown}");
    // 13.4.1 is not the newest 13.4 patch: past end of life by NVIDIA's policy.
    assert!(shown.contains("end of life: yes"), "{shown}");
    let out = run_ok(&mut sandbox.cli(&config, &["explain", "13.4.2-runtime-ubuntu24.04"]));
    let (shown, _) = text(&out);
    assert!(shown.contains("end of life: no"), "{shown}");
}

/// A real package index (pypiserver) on loopback serving `dir`, killed on drop.
pub(crate) struct PypiServer(Child);

impl Drop for PypiServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn pypi_server(dir: &Path) -> Option<(PypiServer, String)> {
    pypi_server_with(dir, &[])
}

/// pypiserver with more options (`-P htpasswd -a download,list`: an index that wants a
/// password); its health is checked on a page it never protects.
pub(crate) fn pypi_server_with(dir: &Path, options: &[&str]) -> Option<(PypiServer, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("pypi-server")
        .args(["run", "-i", "127.0.0.1", "-p", &port.to_string()])
        .args(options)
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        common::skip("pypi-server is not installed (scripts/setup.sh: pip install pypiserver)");
        return None;
    };
    let mut server = PypiServer(child);
    let url = format!("http://127.0.0.1:{port}/simple/");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Any HTTP answer (a 401 from an index that wants a password) means it is up.
    while reqwest::blocking::get(&url).is_err() {
        if let Ok(Some(status)) = server.0.try_wait() {
            common::skip(&format!(
                "pypi-server {options:?} exited ({status}); `-P` needs passlib \
                 (scripts/setup.sh: pip install 'pypiserver[passlib]')"
            ));
            return None;
        }
        assert!(Instant::now() < deadline, "pypi-server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    Some((server, url))
}
