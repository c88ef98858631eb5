//! `doctor`'s GPU architecture check, on hosts faked by an `nvidia-smi` on PATH that answers
//! both of doctor's queries as the real one does: a Tesla V100 (`sm_70`), an A100 (`sm_80`)
//! and an RTX 5090 (`sm_120`), against CUDA 12 and 13 images and a torch image's wheel variant.

use super::{findings, has, json_of, stderr, Host};
use common::{run_fails, CudaSpec, FixtureStore, Flavor, Pusher, TestRegistry};
use serde_json::Value;

use super::common;

/// A host with the driver, the Container Toolkit and a daemon.json with the `nvidia` runtime
/// (so only the GPU's architecture can fail), and an `nvidia-smi` on PATH listing `gpus`
/// (name, compute capability) as `--query-gpu=driver_version,name` and
/// `--query-gpu=index,name,compute_cap` print them.
pub(super) fn gpu_host(driver: &str, gpus: &[(&str, &str)]) -> Host {
    let mut host = Host::new();
    let mut names = String::new();
    let mut caps = String::new();
    for (i, (name, cap)) in gpus.iter().enumerate() {
        names.push_str(&format!("{driver}, {name}\\n"));
        caps.push_str(&format!("{i}, {name}, {cap}\\n"));
    }
    host.env.retain(|(k, _)| k != "CUDAIMG_NVIDIA_SMI");
    host.program(
        "nvidia-smi",
        &format!(
            "case \"$1\" in\n  --query-gpu=driver_version,name) printf '{names}' ;;\n  \
             --query-gpu=index,name,compute_cap) printf '{caps}' ;;\n  \
             *) echo \"Field \\\"$1\\\" is not a valid field to query.\" >&2; exit 2 ;;\nesac"
        ),
    );
    host.program("nvidia-ctk", "exit 0");
    host.program("nvidia-container-runtime", "exit 0");
    let daemon = host.sandbox.write(
        "daemon.json",
        r#"{"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}"#,
    );
    host.set("CUDAIMG_DOCKER_DAEMON_JSON", daemon.display().to_string());
    host
}

fn arch_fail(r: &Value) -> Value {
    findings(r, "gpu-arch")
        .into_iter()
        .find(|f| f["status"] == "fail")
        .unwrap_or_else(|| panic!("no gpu-arch failure: {r:#}"))
}

#[test]
fn doctor_fails_a_volta_gpu_on_a_cuda_13_image_and_names_a_12_base_and_cu126() {
    let host = gpu_host("580.95.05", &[("Tesla V100-SXM2-16GB", "7.0")]);

    // No image: what the GPU can run, CUDA 13 not among it.
    let r = host.json(&["doctor"]);
    assert_eq!(r["driver"]["gpus"][0]["compute_cap"], "7.0", "{r:#}");
    let arch = findings(&r, "gpu-arch");
    assert!(has(&arch, "ok", "sm_70, Volta"), "{r:#}");
    assert!(has(&arch, "ok", "CUDA 12 images: yes"), "{r:#}");
    assert!(has(&arch, "ok", "CUDA 13 images: no"), "{r:#}");
    assert_eq!(r["summary"]["fail"], 0, "{r:#}");

    // A CUDA 13 image: it has no code for Volta.
    let out = run_fails(&mut host.cmd(&["--json", "doctor", "13.0.3-runtime-ubuntu24.04"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = json_of(&out);
    let fail = arch_fail(&r);
    let message = fail["message"].as_str().unwrap();
    assert!(message.contains("Tesla V100-SXM2-16GB"), "{message}");
    assert!(
        message.contains("CUDA 13 serves sm_75 and newer"),
        "{message}"
    );
    assert!(message.contains("Maxwell, Pascal and Volta"), "{message}");
    let fix = fail["fix"].as_str().unwrap();
    assert!(fix.contains("CUDA 12.x base"), "{fix}");
    assert!(fix.contains("cu126"), "{fix}");
    // The driver is new enough: the architecture is the only failure.
    assert_eq!(r["summary"]["fail"], 1, "{r:#}");

    // A CUDA 12 image runs on it.
    let r = host.json(&["doctor", "12.9.1-runtime-ubuntu24.04"]);
    assert!(has(&findings(&r, "gpu-arch"), "ok", "CUDA 12.9.1"), "{r:#}");
    assert_eq!(r["summary"]["fail"], 0, "{r:#}");
}

#[test]
fn doctor_passes_an_ampere_gpu_on_a_cuda_13_image() {
    let host = gpu_host(
        "580.95.05",
        &[
            ("NVIDIA A100-SXM4-80GB", "8.0"),
            ("NVIDIA A100-SXM4-80GB", "8.0"),
        ],
    );
    let r = host.json(&["doctor", "13.0.3-runtime-ubuntu24.04"]);
    let arch = findings(&r, "gpu-arch");
    assert!(
        has(&arch, "ok", "GPUs 0, 1 (NVIDIA A100-SXM4-80GB"),
        "{r:#}"
    );
    assert!(has(&arch, "ok", "CUDA 13.0.3"), "{r:#}");
    assert_eq!(r["summary"]["fail"], 0, "{r:#}");
    let text = super::stdout(&common::run_ok(&mut host.cmd(&["doctor"])));
    assert!(
        text.contains("compute capability 8.0: sm_80, Ampere"),
        "{text}"
    );
}

#[test]
fn doctor_fails_a_blackwell_gpu_on_a_cu126_torch_image_and_names_cu128() {
    // An image as `cudaimg build` labels one: torch 2.7.1 from the cu126 wheels.
    let fx = FixtureStore::shared().cuda(
        &CudaSpec::new("12.8.1", Flavor::Runtime)
            .repo("team/torch")
            .arches(&[common::Arch::Amd64])
            .label("io.cudaimg.torch.version", "2.7.1")
            .label("io.cudaimg.torch.variant", "cu126")
            .label("io.cudaimg.cuda.wheels", "12.6"),
    );
    let official = TestRegistry::start();
    Pusher::new(&official).push(&fx);
    let mut host = gpu_host("580.95.05", &[("NVIDIA GeForce RTX 5090", "12.0")]);
    host.config = Some(host.sandbox.write_hub_config(&official.url(), &[]));
    host.pull(&fx.reference());

    let out = run_fails(&mut host.cmd(&["--json", "doctor", &fx.reference()]));
    let r = json_of(&out);
    let fail = arch_fail(&r);
    let message = fail["message"].as_str().unwrap();
    assert!(message.contains("sm_120, Blackwell"), "{message}");
    assert!(message.contains("cu126 wheels"), "{message}");
    assert!(message.contains("sm_50 to sm_90"), "{message}");
    let fix = fail["fix"].as_str().unwrap();
    assert!(fix.contains("--cuda-wheels cu128"), "{fix}");
    // The base's CUDA 12.8 knows Blackwell: only the wheels fail.
    assert!(has(&findings(&r, "gpu-arch"), "ok", "CUDA 12.8.1"), "{r:#}");
    assert_eq!(r["summary"]["fail"], 1, "{r:#}");

    // The same GPU with an old driver's nvidia-smi (no compute_cap field): a warning, no guess.
    let old = gpu_host("470.82.01", &[("NVIDIA GeForce RTX 5090", "12.0")]);
    old.program(
        "nvidia-smi",
        "case \"$1\" in --query-gpu=driver_version,name) echo '470.82.01, Tesla T4' ;; \
         *) echo 'Field \"compute_cap\" is not a valid field to query.' >&2; exit 2 ;; esac",
    );
    let r = old.json(&["doctor"]);
    assert!(
        has(
            &findings(&r, "gpu-arch"),
            "warn",
            "compute capabilities are unknown"
        ),
        "{r:#}"
    );
}
