//! `doctor IMAGE` for an image only the Docker Engine holds (what `cudaimg build` leaves
//! without `--push`): its `NVIDIA_REQUIRE_CUDA` and labels are read from the harness's own
//! dockerd and checked against the (faked) driver. Root only; elsewhere SKIPPED.

use super::{findings, has, json_of, Host};
use common::docker::{unavailable_reason, TestDocker};
use common::{run_fails, run_ok};

use super::common;

const BUILT: &str = "team/torch:2.5.1-cu124-py3.11-runtime-ubuntu22.04";

/// An image in the engine as `cudaimg build` labels one: `docker import` of a one-file
/// rootfs with the template's environment and labels.
fn engine_with_built_image(host: &Host) -> TestDocker {
    let docker = TestDocker::start();
    let dir = host.sandbox.root().join("rootfs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello"), "torch stand-in\n").unwrap();
    let tar = host.sandbox.root().join("rootfs.tar");
    let ok = std::process::Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    let changes = [
        "ENV CUDA_VERSION=12.4.1",
        "ENV NVIDIA_REQUIRE_CUDA=cuda>=12.4",
        "LABEL io.cudaimg.torch.version=2.5.1 io.cudaimg.torch.variant=cu124 \
         io.cudaimg.cuda.wheels=12.4 io.cudaimg.python.version=3.11 \
         org.opencontainers.image.base.name=docker.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04",
    ];
    let mut cmd = docker.docker(&["import"]);
    for c in changes {
        cmd.args(["--change", c]);
    }
    run_ok(cmd.arg(&tar).arg(BUILT));
    docker
}

#[test]
fn doctor_checks_an_image_only_the_engine_holds_against_the_driver() {
    if let Some(why) = unavailable_reason() {
        common::skip(&why);
        return;
    }
    let mut host = Host::new();
    let docker = engine_with_built_image(&host);
    host.set("DOCKER_HOST", docker.host());

    // A driver too old for the wheels' CUDA 12.4: the engine's NVIDIA_REQUIRE_CUDA fails it.
    host.gpu("470.82.01, Tesla T4");
    let out = run_fails(&mut host.cmd(&["--json", "doctor", BUILT]));
    assert_eq!(out.status.code(), Some(1));
    let r = json_of(&out);
    let image = findings(&r, "image");
    assert!(has(&image, "fail", "too old"), "{r:#}");
    assert!(
        has(
            &image,
            "ok",
            "torch 2.5.1 (cu124 wheels, CUDA 12.4), Python 3.11"
        ),
        "{r:#}"
    );

    // A driver new enough: the same image passes, in text too. (This host has no toolkit:
    // that `fail` is not the image's.)
    host.gpu("550.54.15, NVIDIA A100-SXM4-80GB");
    let out = host.cmd(&["doctor", BUILT]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("fail  image"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("ok    image")
            && l.contains("driver 550.54.15 runs")
            && l.contains("from the image in the Docker Engine")),
        "{text}"
    );

    // Not in the store, not in the engine, not a CUDA tag: still refused.
    let out = run_fails(&mut host.cmd(&["doctor", "team/torch:absent"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("team/torch:absent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
