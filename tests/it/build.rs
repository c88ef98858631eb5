//! `cudaimg build`: refusals (exit 2, with the reason and the nearest valid combinations),
//! plans and matrices (no engine needed), and real builds on the harness's own `dockerd`
//! (root only; elsewhere SKIPPED): a runnable fixture base with a real Python 3.11 (Debian
//! minbase shaped as `nvidia/cuda:12.4.1-runtime-ubuntu22.04`, see
//! `cudaimg_test_support::python_base`), the stand-in torch wheel installed from a wheelhouse
//! with `BuildKit` and through a real package index (pypiserver on loopback) with the classic
//! builder; `docker run` imports it and prints its version. `--push` to a registry that
//! holds the base already uploads no base byte.

use cudaimg_test_support as common;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build_index::pypi_server;
use common::docker::{unavailable_reason, TestDocker};
use common::python_base::{stand_in_torch_wheel, PythonBase};
use common::{run_fails, run_ok, FaultProxy, Pusher, Sandbox, TestRegistry};

/// Debian's 20.10 CLI: `BuildKit` with `DOCKER_BUILDKIT=1`, no buildx needed (FIELD.md).
pub(crate) const DEBIAN_DOCKER: &str = "/usr/bin/docker";

pub(crate) fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub(crate) fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn offline() -> (Sandbox, PathBuf) {
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&common::dead_endpoint(), &[]);
    (sandbox, config)
}

#[test]
fn the_seed_case_cu118_wheels_on_a_cuda_13_base_is_refused_with_its_fix() {
    let (sandbox, config) = offline();
    let out = run_fails(&mut sandbox.cli(
        &config,
        &[
            "build",
            "--base",
            "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04",
            "--torch",
            "2.7.1",
            "--cuda-wheels",
            "cu118",
        ],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cu118 wheels (CUDA 11.8) on the CUDA 13.0.1 base"),
        "{err}"
    );
    assert!(
        err.contains("hint: nearest valid: --torch 2.14 --cuda-wheels cu130"),
        "{err}"
    );
    assert!(
        err.contains("--base nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04"),
        "{err}"
    );
    // Refused before any network traffic: the only endpoint is dead, and no store was made.
    assert!(!sandbox.store_dir().exists());
}

#[test]
fn impossible_combinations_are_refused_with_the_nearest_valid_ones() {
    let (sandbox, config) = offline();
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &[
                "--base",
                "nvidia/cuda:12.4.1-devel-ubuntu22.04",
                "--torch",
                "2.5.1",
                "--cuda-wheels",
                "cu118",
            ],
            "on a `devel` base, extensions compile with the base's nvcc",
            "--cuda-wheels cu124",
        ),
        (
            &[
                "--base",
                "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
                "--torch",
                "2.8.0",
                "--cuda-wheels",
                "cu124",
            ],
            "torch 2.8.0 has no cu124 wheels",
            "torch 2.8 has cu126, cu128, cu129",
        ),
        (
            &[
                "--base",
                "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
                "--torch",
                "2.3.1",
                "--python",
                "3.12",
            ],
            "torch 2.3.1 has no wheels for Python 3.12 (it supports 3.8 to 3.11)",
            "--python 3.10",
        ),
        (
            &[
                "--base",
                "nvidia/cuda:12.6.3-base-ubuntu24.04",
                "--torch",
                "2.5.1",
                "--python",
                "3.10",
            ],
            "Python 3.10 is neither in the base nor among ubuntu24.04's packages",
            "a ubuntu22.04 base (Python 3.10)",
        ),
        (
            &[
                "--base",
                "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
                "--torch",
                "1.13.1",
            ],
            "torch 1.13.1 is not in cudaimg's table",
            "--torch 2.3",
        ),
        (
            &[
                "--base",
                "nvidia/cuda:12.4.1-bogus-ubuntu22.04",
                "--torch",
                "2.5.1",
            ],
            "is not an nvidia/cuda tag",
            "hint:",
        ),
    ];
    for (args, reason, nearest) in cases {
        let mut cmd = sandbox.cli(&config, &["build", "--dry-run"]);
        cmd.args(*args);
        let out = run_fails(&mut cmd);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(reason), "{args:?}: {err}");
        assert!(err.contains(nearest), "{args:?}: {err}");
    }
}

#[test]
fn a_dry_run_plans_name_args_driver_and_warns_about_cuda_twice_on_runtime() {
    let (sandbox, config) = offline();
    let out = run_ok(&mut sandbox.cli(
        &config,
        &[
            "build",
            "--dry-run",
            "--base",
            "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
            "--torch",
            "2.5.1",
            "--tag",
            "team/torch",
        ],
    ));
    let plan = stdout(&out);
    assert!(
        plan.contains("plan team/torch:2.5.1-cu124-py3.10-runtime-ubuntu22.04"),
        "{plan}"
    );
    assert!(
        plan.contains("--build-arg NVIDIA_REQUIRE_CUDA=cuda>=12.4"),
        "{plan}"
    );
    assert!(
        plan.contains("needs an NVIDIA driver >= 550.54.14"),
        "{plan}"
    );
    assert!(plan.contains("3.10 from ubuntu22.04's packages"), "{plan}");
    let err = stderr(&out);
    assert!(err.contains("CUDA ships twice"), "{err}");
    assert!(err.contains("`12.4.1-base-ubuntu22.04` avoids it"), "{err}");
    // The `base` flavor has nothing to warn about.
    let out = run_ok(&mut sandbox.cli(
        &config,
        &[
            "build",
            "--dry-run",
            "--base",
            "nvidia/cuda:12.4.1-base-ubuntu22.04",
            "--torch",
            "2.5.1",
        ],
    ));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

/// A fake `nvidia-smi` answering doctor's and build's two queries for one GPU, in a
/// directory to put first on PATH.
fn fake_smi(sandbox: &Sandbox, name: &str, cap: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let smi = sandbox.write(
        "gpu-bin/nvidia-smi",
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  --query-gpu=driver_version,name) echo '580.95.05, {name}' ;;\n  \
             --query-gpu=index,name,compute_cap) echo '0, {name}, {cap}' ;;\n  *) exit 2 ;;\nesac\n"
        ),
    );
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        smi.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn gpu_arch_refuses_a_cell_without_kernels_for_it_and_names_the_variant_that_has_them() {
    let (sandbox, config) = offline();
    let cuda13 = [
        "build",
        "--dry-run",
        "--base",
        "nvidia/cuda:13.0.3-runtime-ubuntu24.04",
        "--torch",
        "2.14",
    ];
    // Asked for a Volta: CUDA 13 and the cu130 wheels have no code for it.
    let mut args = cuda13.to_vec();
    args.extend(["--gpu-arch", "sm_90,sm_70"]);
    let out = run_fails(&mut sandbox.cli(&config, &args));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot run on sm_70"), "{err}");
    assert!(err.contains("cu130 wheels have no kernels"), "{err}");
    assert!(
        err.contains("hint: `--cuda-wheels cu126` on a CUDA 12.x base"),
        "{err}"
    );
    assert!(!sandbox.store_dir().exists());

    // A Hopper is served: the dry run shows the check.
    let mut args = cuda13.to_vec();
    args.extend(["--gpu-arch", "9.0"]);
    let plan = stdout(&run_ok(&mut sandbox.cli(&config, &args)));
    assert!(
        plan.contains("gpu-arch: sm_90 (Hopper): torch 2.14's cu130 wheels carry its kernels"),
        "{plan}"
    );
    assert!(plan.contains("(--gpu-arch sm_90)"), "{plan}");

    // On a CUDA 12 base with cu126 wheels the Volta runs.
    let out = run_ok(&mut sandbox.cli(
        &config,
        &[
            "build",
            "--dry-run",
            "--base",
            "nvidia/cuda:12.6.3-runtime-ubuntu24.04",
            "--torch",
            "2.14",
            "--cuda-wheels",
            "cu126",
            "--gpu-arch",
            "sm_70",
        ],
    ));
    assert!(
        stdout(&out).contains("gpu-arch: sm_70 (Volta)"),
        "{}",
        stdout(&out)
    );

    // Bad input: what is wrong, and how to write it.
    let mut args = cuda13.to_vec();
    args.extend(["--gpu-arch", "volta"]);
    let out = run_fails(&mut sandbox.cli(&config, &args));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("`--gpu-arch volta` is not a GPU architecture"));

    // Not asked, only detected on this host (a V100 behind a fake nvidia-smi): a warning
    // naming the variant, and the plan goes on.
    let path = fake_smi(&sandbox, "Tesla V100-SXM2-16GB", "7.0");
    let out = run_ok(sandbox.cli(&config, &cuda13).env("PATH", path));
    let err = stderr(&out);
    assert!(
        err.contains("will not run on GPU 0 (Tesla V100-SXM2-16GB) of this host"),
        "{err}"
    );
    assert!(err.contains("`--cuda-wheels cu126`"), "{err}");
    assert!(
        stdout(&out).contains(
            "gpu-arch: sm_70 (Volta) (GPU 0 (Tesla V100-SXM2-16GB) of this host): will not run"
        ),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_matrix_skips_invalid_cells_with_reasons_and_bake_enumerates_the_valid_ones() {
    let (sandbox, config) = offline();
    let matrix = sandbox.write(
        "builds.toml",
        "repository = \"team/torch\"\n\
         bases = [\"nvidia/cuda:12.4.1-base-ubuntu22.04\", \"nvidia/cuda:13.0.1-devel-ubuntu24.04\"]\n\
         torch = [\"2.5.1\", \"2.9.0\"]\n",
    );
    for (file, check) in [
        ("docker-bake.hcl", "target \""),
        ("docker-bake.json", "\"target\""),
    ] {
        let bake = sandbox.root().join(file);
        let out = run_ok(
            sandbox
                .cli(&config, &["build", "--dry-run", "--matrix"])
                .arg(&matrix)
                .arg("--bake")
                .arg(&bake),
        );
        let text = stdout(&out);
        // 2.5.1 on CUDA 12.4: planned; 2.9.0 has no cu12.4-or-older wheel, and a newer one
        // (cu126) is never chosen for a 12.4 base: skipped, naming the bases that fit;
        // 2.5.1 on CUDA 13: skipped; 2.9.0 on CUDA 13 with Python 3.12.
        assert!(text.contains("planned  nvidia/cuda:12.4.1-base-ubuntu22.04 torch 2.5.1 -> team/torch:2.5.1-cu124-py3.10-base-ubuntu22.04"), "{text}");
        assert!(text.contains("skipped  nvidia/cuda:13.0.1-devel-ubuntu24.04 torch 2.5.1: cu124 wheels (CUDA 12.4) on the CUDA 13.0.1 base"), "{text}");
        assert!(
            text.contains("team/torch:2.9.0-cu130-py3.12-devel-ubuntu24.04"),
            "{text}"
        );
        assert!(text.contains("skipped  nvidia/cuda:12.4.1-base-ubuntu22.04 torch 2.9.0: torch 2.9.0 has no wheel for CUDA 12.4 or older"), "{text}");
        assert!(
            text.contains("--base nvidia/cuda:12.6.3-base-ubuntu22.04 (for cu126)"),
            "{text}"
        );
        assert!(text.contains("2 planned, 2 skipped, 0 failed"), "{text}");
        let written = std::fs::read_to_string(&bake).unwrap();
        assert!(written.contains(check), "{written}");
        assert_eq!(
            written
                .matches("2.9.0-cu130-py3.12-devel-ubuntu24.04")
                .count(),
            1,
            "{written}"
        );
        assert!(!written.contains("2.5.1-cu124-py3.10-devel"), "{written}");
        assert!(written.contains("/pytorch.Dockerfile"), "{written}");
    }
    let bad = sandbox.write("bad.toml", "bases = []\ntorch = [\"2.5.1\"]\n");
    let out = run_fails(
        sandbox
            .cli(&config, &["build", "--dry-run", "--matrix"])
            .arg(&bad),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

// ---- real builds ----------------------------------------------------------------------

pub(crate) struct Env {
    pub(crate) sandbox: Sandbox,
    pub(crate) config: PathBuf,
    _registry: TestRegistry,
    pub(crate) base: PythonBase,
    pub(crate) docker: TestDocker,
}

pub(crate) const BASE_TAG: &str = "12.4.1-runtime-ubuntu22.04";

/// dockerd, and a registry acting as docker.io holding the fixture base; `None` (after
/// printing SKIPPED) where that cannot be had.
pub(crate) fn env() -> Option<Env> {
    if let Some(why) = unavailable_reason() {
        common::skip(&why);
        return None;
    }
    let base = match PythonBase::build("runtime") {
        Ok(b) => b,
        Err(why) => {
            common::skip(&format!("no fixture base: {why}"));
            return None;
        }
    };
    let registry = TestRegistry::start();
    base.push(&Pusher::new(&registry), "nvidia/cuda", BASE_TAG);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&registry.url(), &[]);
    Some(Env {
        sandbox,
        config,
        _registry: registry,
        base,
        docker: TestDocker::start(),
    })
}

impl Env {
    pub(crate) fn build(&self, args: &[&str]) -> Command {
        let mut cmd = self.sandbox.cli(&self.config, &["build"]);
        cmd.args(args).env("DOCKER_HOST", self.docker.host());
        cmd
    }

    pub(crate) fn run(&self, image: &str, code: &str) -> String {
        let out = self
            .docker
            .docker(&[
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "python",
                image,
                "-c",
                code,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "docker run: {}", stderr(&out));
        stdout(&out).trim().to_owned()
    }
}

pub(crate) fn wheelhouse(dir: &Path) -> PathBuf {
    stand_in_torch_wheel(dir, "2.5.1+cu124", "12.4");
    dir.to_owned()
}

#[test]
fn buildkit_installs_from_a_wheelhouse_and_the_image_carries_labels_and_the_driver_check() {
    let Some(e) = env() else { return };
    let wheels = wheelhouse(&e.sandbox.root().join("wheels"));
    let out = run_ok(&mut e.build(&[
        "--base",
        &format!("nvidia/cuda:{BASE_TAG}"),
        "--torch",
        "2.5.1",
        "--python",
        "3.11",
        "--tag",
        "team/torch",
        "--wheelhouse",
        wheels.to_str().unwrap(),
        "--builder",
        "buildkit",
        "--docker",
        DEBIAN_DOCKER,
        "--network",
        "none",
    ]));
    let image = "team/torch:2.5.1-cu124-py3.11-runtime-ubuntu22.04";
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(text.contains(&format!("built {image}")), "{text}\n{err}");
    assert!(text.contains("3.11 from the base image"), "{text}");
    assert!(
        err.contains("building team/torch:2.5.1-cu124-py3.11-runtime-ubuntu22.04 with BuildKit"),
        "{err}"
    );
    // BuildKit's plain progress, streamed as lines.
    assert!(err.contains("  | #"), "{err}");
    assert!(err.contains("torch 2.5.1+cu124 CUDA 12.4"), "{err}");
    assert!(err.contains("CUDA ships twice"), "{err}");

    assert_eq!(
        e.run(image, "import torch; print(torch.__version__)"),
        "2.5.1+cu124"
    );
    // The system Python is untouched: torch lives only in the venv.
    let sys = e
        .docker
        .docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/usr/bin/python3",
            image,
            "-c",
            "import torch",
        ])
        .output()
        .unwrap();
    assert!(
        !sys.status.success(),
        "torch must not be in the system Python"
    );

    let inspect = e.docker.inspect(image);
    let labels = &inspect["Config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.base.name"],
        format!("docker.io/nvidia/cuda:{BASE_TAG}")
    );
    assert_eq!(
        labels["org.opencontainers.image.base.digest"],
        e.base.manifest.digest
    );
    assert_eq!(labels["io.cudaimg.torch.version"], "2.5.1");
    assert_eq!(labels["io.cudaimg.torch.variant"], "cu124");
    assert_eq!(labels["io.cudaimg.cuda.wheels"], "12.4");
    assert_eq!(labels["io.cudaimg.cuda.base"], "12.4.1");
    assert_eq!(labels["io.cudaimg.python.version"], "3.11");
    let env: Vec<&str> = inspect["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"NVIDIA_REQUIRE_CUDA=cuda>=12.4"), "{env:?}");
    assert!(env.contains(&"CUDA_VERSION=12.4.1"), "{env:?}");
    // The base's layer first, as pulled; no wheel file in the result (the wheelhouse is
    // only in the `venv` stage, whose /opt/venv alone is copied).
    let layers = inspect["RootFS"]["Layers"].as_array().unwrap();
    assert_eq!(layers[0], e.base.diff_id);
    assert_eq!(
        e.run(image, "import os; print(os.path.exists('/tmp/wheelhouse'))"),
        "False"
    );

    // `doctor` checks the built image, which only the engine holds (no --push): its
    // NVIDIA_REQUIRE_CUDA against a driver too old for the wheels' CUDA 12.4.
    let smi = e
        .sandbox
        .write("bin/nvidia-smi", "#!/bin/sh\necho '470.82.01, Tesla T4'\n");
    std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = run_fails(
        e.sandbox
            .cli(&e.config, &["--json", "doctor", image])
            .env("DOCKER_HOST", e.docker.host())
            .env("CUDAIMG_NVIDIA_SMI", &smi),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let image_findings: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "image")
        .collect();
    let has = |status: &str, text: &str| {
        image_findings
            .iter()
            .any(|f| f["status"] == status && f["message"].as_str().unwrap().contains(text))
    };
    assert!(has("fail", "too old"), "{report:#}");
    assert!(
        has("ok", "torch 2.5.1 (cu124 wheels, CUDA 12.4), Python 3.11"),
        "{report:#}"
    );
}

#[test]
fn the_classic_builder_installs_through_a_real_package_index_on_loopback() {
    let Some(e) = env() else { return };
    let packages = wheelhouse(&e.sandbox.root().join("packages"));
    let Some((_server, url)) = pypi_server(&packages) else {
        return;
    };
    let out = run_ok(&mut e.build(&[
        "--base",
        &format!("nvidia/cuda:{BASE_TAG}"),
        "--torch",
        "2.5.1",
        "--python",
        "3.11",
        "--tag",
        "team/torch:classic",
        "--pip-index-url",
        &url,
        "--builder",
        "classic",
        "--docker",
        DEBIAN_DOCKER,
    ]));
    let err = stderr(&out);
    assert!(err.contains("with the classic builder"), "{err}");
    // The classic builder's own output format ("Step 1/…"), streamed.
    assert!(err.contains("  | Step 1/"), "{err}");
    assert!(err.contains(&format!("Looking in indexes: {url}")), "{err}");
    assert_eq!(
        e.run(
            "team/torch:classic",
            "import torch; print(torch.__version__)"
        ),
        "2.5.1+cu124"
    );
    let labels = &e.docker.inspect("team/torch:classic")["Config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.base.digest"],
        e.base.manifest.digest
    );
}

#[test]
fn a_failing_matrix_cell_does_not_stop_the_rest() {
    let Some(e) = env() else { return };
    let wheels = wheelhouse(&e.sandbox.root().join("wheels"));
    // A 2.4.1 wheel that says cu124 in its name but was built for CUDA 11.8: the plan
    // accepts it (the wheelhouse holds it), the template's check fails the build.
    stand_in_torch_wheel(&wheels, "2.4.1+cu124", "11.8");
    let matrix = e.sandbox.write(
        "builds.toml",
        format!(
            "repository = \"team/torch\"\nbases = [\"nvidia/cuda:{BASE_TAG}\"]\n\
             torch = [\"2.4.1\", \"2.5.1\", \"2.8.0\"]\npython = [\"3.11\"]\n"
        ),
    );
    // 2.4.1: planned, its build fails. 2.5.1: built. 2.8.0: the wheelhouse holds none:
    // skipped, naming what it holds.
    let out = run_fails(
        e.build(&[
            "--builder",
            "buildkit",
            "--docker",
            DEBIAN_DOCKER,
            "--network",
            "none",
            "--wheelhouse",
        ])
        .arg(&wheels)
        .arg("--matrix")
        .arg(&matrix),
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(text.contains("built    nvidia/cuda:12.4.1-runtime-ubuntu22.04 torch 2.5.1 python 3.11 -> team/torch:2.5.1-cu124-py3.11-runtime-ubuntu22.04"), "{text}");
    assert!(
        text.contains("failed   nvidia/cuda:12.4.1-runtime-ubuntu22.04 torch 2.4.1"),
        "{text}"
    );
    assert!(
        text.contains("skipped  nvidia/cuda:12.4.1-runtime-ubuntu22.04 torch 2.8.0 python 3.11: the index --wheelhouse"),
        "{text}"
    );
    assert!(
        text.contains("1 built, 0 planned, 1 skipped, 1 failed"),
        "{text}"
    );
    assert_eq!(
        e.run(
            "team/torch:2.5.1-cu124-py3.11-runtime-ubuntu22.04",
            "import torch; print(torch.__version__)"
        ),
        "2.5.1+cu124"
    );
}

/// What the proxy in front of the registry saw of `cudaimg push`: the base layer mounted
/// (a `201` to `POST …?mount=BASE`), never uploaded, and exactly the bytes of the image's
/// other blobs (their sizes read back by skopeo from the pushed manifest) sent as uploads.
fn on_the_wire_only_the_new_blobs(wire: &FaultProxy, sandbox: &Sandbox, image: &str, base: &str) {
    let requests = wire.requests();
    // The digest is in the query, URL-encoded (`sha256%3A…`): matched by its hex.
    let hex = base.trim_start_matches("sha256:");
    assert!(
        requests.iter().any(|r| r.method == "POST"
            && r.path.contains("mount=")
            && r.path.contains(hex)
            && r.status == Some(201)),
        "the base layer was not mounted: {requests:#?}"
    );
    let uploads: Vec<_> = requests
        .iter()
        .filter(|r| r.path.contains("/blobs/uploads/"))
        .collect();
    assert!(
        !uploads
            .iter()
            .any(|r| r.path.contains(hex) && !r.path.contains("mount=")),
        "the base layer was uploaded: {uploads:#?}"
    );
    let raw = run_ok(sandbox.skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{image}"),
    ]));
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let size = |d: &serde_json::Value| d["size"].as_u64().unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("{manifest}"));
    assert_eq!(layers[0]["digest"], base, "{manifest}");
    let new: u64 = size(&manifest["config"]) + layers[1..].iter().map(size).sum::<u64>();
    let sent: u64 = uploads.iter().map(|r| r.request_bytes).sum();
    assert_eq!(
        sent,
        new,
        "upload bytes on the wire are not the new blobs' ({} of them): {uploads:#?}",
        layers.len()
    );
}

#[test]
fn push_stores_the_build_keeps_the_base_blobs_and_uploads_no_base_byte() {
    let Some(e) = env() else { return };
    let wheels = wheelhouse(&e.sandbox.root().join("wheels"));
    // The team's registry already holds the base, pushed there by cudaimg (so the store's
    // blob-location record knows it is in `nvidia/cuda` there).
    let dest = TestRegistry::start();
    // Every byte sent to the team's registry passes this proxy, which counts it.
    let wire = FaultProxy::start(&dest.url());
    let reg = wire.host();
    let base = format!("nvidia/cuda:{BASE_TAG}");
    run_ok(&mut e.sandbox.cli(&e.config, &["pull", &base]));
    run_ok(&mut e.sandbox.cli(
        &e.config,
        &["push", &base, &format!("{reg}/nvidia/cuda:{BASE_TAG}")],
    ));
    wire.clear_requests();

    let out = run_ok(
        e.build(&[
            "--base",
            &base,
            "--torch",
            "2.5.1",
            "--python",
            "3.11",
            "--tag",
            &format!("{reg}/team/torch"),
            "--wheelhouse",
            wheels.to_str().unwrap(),
            "--builder",
            "buildkit",
            "--docker",
            DEBIAN_DOCKER,
            "--network",
            "none",
            "--push",
        ])
        .arg("--json"),
    );
    let err = stderr(&out);
    assert!(err.contains("1 base layer(s) kept as pulled"), "{err}");
    let reports: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let report = reports
        .iter()
        .find(|r| r.get("blobs").is_some())
        .unwrap_or_else(|| panic!("no push report: {reports:?}\n{err}"));
    let blobs = report["blobs"].as_array().unwrap();
    let base_blob = blobs
        .iter()
        .find(|b| b["digest"] == e.base.layer_digest.as_str())
        .unwrap_or_else(|| panic!("the base layer is not in the push: {report}"));
    // Zero base bytes uploaded: it was mounted from the registry's nvidia/cuda.
    assert_eq!(base_blob["status"], "mounted", "{report}");
    assert_eq!(base_blob["mounted_from"], "nvidia/cuda", "{report}");
    assert_eq!(base_blob["bytes"], 0, "{report}");
    let uploaded: Vec<&serde_json::Value> =
        blobs.iter().filter(|b| b["status"] == "uploaded").collect();
    assert!(!uploaded.is_empty(), "{report}");
    let sent: u64 = uploaded.iter().map(|b| b["bytes"].as_u64().unwrap()).sum();
    assert_eq!(report["bytes_uploaded"].as_u64().unwrap(), sent, "{report}");
    assert!(
        sent < e.base.layer_size,
        "only the new layers and the config were sent ({sent} bytes)"
    );

    // What was stored (the new layers gzipped here) passes the store's own re-hash.
    run_ok(&mut e.sandbox.cli(&e.config, &["verify"]));

    // skopeo (not the code under test) reads it back: the base's layer digest first.
    let image = format!("{reg}/team/torch:2.5.1-cu124-py3.11-runtime-ubuntu22.04");
    let inspect = run_ok(e.sandbox.skopeo().args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{image}"),
    ]));
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let layers = inspect["Layers"].as_array().unwrap();
    assert_eq!(layers[0], e.base.layer_digest.as_str(), "{inspect}");
    assert!(layers.len() > 1, "{inspect}");
    for l in &layers[1..] {
        assert!(
            uploaded.iter().any(|b| &b["digest"] == l),
            "{l} neither the base's nor uploaded: {report}"
        );
    }
    on_the_wire_only_the_new_blobs(&wire, &e.sandbox, &image, &e.base.layer_digest);

    // A fresh pull from the registry runs: the image is whole there.
    run_ok(&mut e.docker.docker(&["rmi", &image]));
    run_ok(&mut e.docker.docker(&["pull", &image]));
    assert_eq!(
        e.run(&image, "import torch; print(torch.__version__)"),
        "2.5.1+cu124"
    );
}
