//! Handing images to a real Docker Engine, exporting them, retagging, removing and
//! collecting garbage. The engine is `dockerd` started by the harness (root only: elsewhere
//! each test says it is skipped and why).

use cudaimg_test_support as common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::docker::{busybox, unavailable_reason, Runnable, TestDocker};
use common::{
    run_fails, run_ok, Arch, Fault, FaultProxy, Fixture, Flavor, MediaTypes, Pusher, Sandbox,
    Scale, TestRegistry,
};
use serde_json::Value;

const TAG: &str = "12.4.1-hello-ubuntu22.04";

fn docker_or_skip() -> Option<TestDocker> {
    match unavailable_reason() {
        Some(why) => {
            eprintln!("SKIPPED: {why}");
            None
        }
        None => Some(TestDocker::start()),
    }
}

struct Env {
    sandbox: Sandbox,
    config: PathBuf,
    registry: TestRegistry,
    image: Runnable,
}

/// A registry (as docker.io) holding `nvidia/cuda:TAG`: CUDA-like base layers plus busybox.
fn env(message: &str) -> Env {
    let registry = TestRegistry::start();
    let base = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, Scale::TINY);
    let amd64 = base.platform(Arch::Amd64);
    let image = Runnable::build(amd64, message, &busybox());
    image.push(&Pusher::new(&registry), amd64, "nvidia/cuda", TAG);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&registry.url(), &[]);
    Env {
        sandbox,
        config,
        registry,
        image,
    }
}

impl Env {
    fn cmd(&self, docker: Option<&TestDocker>, args: &[&str]) -> Command {
        let mut cmd = self.sandbox.cli(&self.config, args);
        if let Some(d) = docker {
            cmd.env("DOCKER_HOST", d.host());
        }
        cmd
    }
}

fn run_output(d: &TestDocker, image: &str) -> String {
    let out = d
        .docker(&["run", "--rm", "--network", "none", image])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker run failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn pull_load_puts_the_upstream_image_into_docker_under_its_official_name_and_it_runs() {
    let Some(d) = docker_or_skip() else { return };
    let e = env("hello from a loaded image");
    let reference = format!("nvidia/cuda:{TAG}");
    let out = run_ok(&mut e.cmd(Some(&d), &["--json", "pull", "--load", &reference]));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["loaded"]["name"], reference);
    assert_eq!(r["loaded"]["image_id"], e.image.config.digest);

    let inspect = d.inspect(&reference);
    assert_eq!(
        inspect["Id"], e.image.config.digest,
        "Docker's image ID is the upstream config digest"
    );
    let layers: Vec<&str> = inspect["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        layers,
        e.image
            .diff_ids
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let env: Vec<&str> = inspect["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"CUDA_VERSION=12.4.1"), "{env:?}");
    assert_eq!(inspect["RepoTags"], serde_json::json!([reference]));
    assert_eq!(run_output(&d, &reference), "hello from a loaded image");

    // `load` again from the store alone: the configuration now names no live registry.
    e.sandbox.write_hub_config(&common::dead_endpoint(), &[]);
    d.docker(&["rmi", &reference]).output().unwrap();
    run_ok(&mut e.cmd(Some(&d), &["load", &reference]));
    assert_eq!(run_output(&d, &reference), "hello from a loaded image");
}

#[test]
fn export_docker_archive_loads_with_docker_load_and_skopeo_reads_it() {
    let Some(d) = docker_or_skip() else { return };
    let e = env("hello from an exported image");
    let reference = format!("nvidia/cuda:{TAG}");
    run_ok(&mut e.cmd(None, &["pull", &reference]));
    let file = e.sandbox.root().join("cuda.tar");
    run_ok(e.cmd(None, &["export", &reference, "-o"]).arg(&file));
    let again = e.sandbox.root().join("cuda2.tar");
    run_ok(e.cmd(None, &["export", &reference, "-o"]).arg(&again));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(&again).unwrap(),
        "exports are not reproducible"
    );

    let out = d
        .docker(&["load", "-i", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run_output(&d, &reference), "hello from an exported image");
    assert_eq!(d.inspect(&reference)["Id"], e.image.config.digest);

    let out = run_ok(
        e.sandbox
            .skopeo()
            .args(["inspect", &format!("docker-archive:{}", file.display())]),
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        info["Env"].to_string().contains("CUDA_VERSION=12.4.1"),
        "{info}"
    );
    assert_eq!(
        info["Layers"].as_array().unwrap().len(),
        e.image.diff_ids.len()
    );
}

#[test]
fn export_oci_archive_is_read_by_skopeo() {
    let registry = TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Oci, Scale::TINY);
    Pusher::new(&registry).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&registry.url(), &[]);
    let mut pull = sandbox.cudaimg();
    pull.arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(sandbox.store_dir());
    run_ok(pull.args(["pull", "--platform", "linux/amd64", &fx.reference()]));
    let file = sandbox.root().join("cuda.oci.tar");
    let mut export = sandbox.cudaimg();
    export
        .arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(sandbox.store_dir());
    run_ok(
        export
            .args(["export", "--format", "oci-archive", &fx.reference(), "-o"])
            .arg(&file),
    );
    let out = run_ok(
        sandbox
            .skopeo()
            .args(["inspect", &format!("oci-archive:{}", file.display())]),
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Digest"], fx.platform(Arch::Amd64).manifest.digest);
    let copy = sandbox.root().join("copy");
    run_ok(sandbox.skopeo().args([
        "copy",
        &format!("oci-archive:{}", file.display()),
        &format!("dir:{}", copy.display()),
    ]));
}

#[test]
fn load_without_an_engine_says_how_to_get_one() {
    let e = env("unused");
    let reference = format!("nvidia/cuda:{TAG}");
    run_ok(&mut e.cmd(None, &["pull", &reference]));
    let mut cmd = e.cmd(None, &["load", &reference]);
    cmd.env(
        "DOCKER_HOST",
        format!("unix://{}", e.sandbox.root().join("no.sock").display()),
    );
    let out = run_fails(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no Docker Engine answers") && err.contains("no.sock"),
        "{err}"
    );
    assert!(
        err.contains("hint:") && err.contains("DOCKER_HOST"),
        "{err}"
    );
    let mut cmd = e.cmd(None, &["load", &reference]);
    cmd.env("DOCKER_HOST", "ssh://host");
    let out = run_fails(&mut cmd);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported"));
}

#[test]
fn tag_rm_and_gc_keep_the_store_sound() {
    let e = env("unused");
    let reference = format!("nvidia/cuda:{TAG}");
    run_ok(&mut e.cmd(None, &["pull", &reference]));
    run_ok(&mut e.cmd(
        None,
        &["tag", &reference, "registry.corp.example/base/cuda:12.4"],
    ));
    let out = run_ok(&mut e.cmd(None, &["--json", "images"]));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "docker.io/nvidia/cuda:12.4.1-hello-ubuntu22.04",
            "registry.corp.example/base/cuda:12.4"
        ]
    );

    // Removing one name frees nothing: the other still uses every blob.
    run_ok(&mut e.cmd(None, &["rm", &reference]));
    let out = run_ok(&mut e.cmd(None, &["--json", "gc"]));
    let gc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(gc["blobs_removed"], 0, "{gc}");
    run_ok(&mut e.cmd(None, &["verify"]));
    let out = run_ok(&mut e.cmd(None, &["inspect", "registry.corp.example/base/cuda:12.4"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("CUDA_VERSION=12.4.1"));

    // Removing the last name frees everything.
    run_ok(&mut e.cmd(None, &["rm", "registry.corp.example/base/cuda:12.4"]));
    let out = run_ok(&mut e.cmd(None, &["--json", "gc"]));
    let gc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(gc["blobs_removed"].as_u64().unwrap() > 0, "{gc}");
    assert_eq!(gc["blobs_kept"], 0, "{gc}");
    let blobs = std::fs::read_dir(e.sandbox.store_dir().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0);
    run_ok(&mut e.cmd(None, &["verify"]));
    let out = run_fails(&mut e.cmd(None, &["rm", &reference]));
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn gc_during_a_pull_waits_and_deletes_nothing_the_pull_needs() {
    let e = env("unused");
    let reference = format!("nvidia/cuda:{TAG}");
    let slow = FaultProxy::start(&e.registry.url());
    slow.add(Fault::Throttle {
        bytes_per_sec: 1_000_000,
    });
    let config = e.sandbox.write_hub_config(&slow.url(), &[]);
    let mut pull = e.sandbox.cudaimg();
    pull.arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(e.sandbox.store_dir());
    let child = pull
        .args(["pull", &reference])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the pull has committed a blob that no index entry names yet.
    let blobs = e.sandbox.store_dir().join("blobs/sha256");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull committed nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let gc = run_ok(&mut e.cmd(None, &["--json", "gc"]));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gc: Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(
        gc["blobs_removed"], 0,
        "gc removed blobs of a running pull: {gc}"
    );
    run_ok(&mut e.cmd(None, &["verify"]));
}

#[test]
fn load_of_a_blob_flipped_in_place_fails_and_the_engine_gets_no_image() {
    let Some(d) = docker_or_skip() else { return };
    let e = env("never loaded");
    let reference = format!("nvidia/cuda:{TAG}");
    run_ok(&mut e.cmd(None, &["pull", &reference]));
    // The largest layer (busybox's), one bit changed, same size.
    let (hex, path) = std::fs::read_dir(e.sandbox.store_dir().join("blobs/sha256"))
        .unwrap()
        .map(|x| x.unwrap())
        .max_by_key(|x| x.metadata().unwrap().len())
        .map(|x| (x.file_name().to_string_lossy().into_owned(), x.path()))
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let out = run_fails(&mut e.cmd(Some(&d), &["load", &reference]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("blob sha256:{hex}")), "{err}");
    assert!(err.contains("cudaimg verify --repair"), "{err}");
    let inspect = d
        .docker(&["image", "inspect", &reference])
        .output()
        .unwrap();
    assert!(
        !inspect.status.success(),
        "the engine holds the image after a failed load"
    );
    let inspect = d
        .docker(&["image", "inspect", &e.image.config.digest])
        .output()
        .unwrap();
    assert!(
        !inspect.status.success(),
        "the engine holds the image by ID"
    );
}
