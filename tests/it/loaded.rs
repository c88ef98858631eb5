//! What the hand-over tests share: a registry (as docker.io) holding a runnable
//! `nvidia/cuda:TAG`, the CLI pointed at it (and at an engine), and the checks of what an
//! engine holds after a load. Used by the Docker 20.10 suite (`docker.rs`), the suites of
//! today's engines (`engines.rs`, `engines_handover.rs`) and `first_hour.rs`.

use cudaimg_test_support as common;

use std::path::PathBuf;
use std::process::Command;

use common::docker::{busybox, Runnable, TestDocker};
use common::{run_ok, Arch, Fixture, Flavor, MediaTypes, Pusher, Sandbox, Scale, TestRegistry};

pub(crate) const TAG: &str = "12.4.1-hello-ubuntu22.04";

pub(crate) struct Env {
    pub(crate) sandbox: Sandbox,
    pub(crate) config: PathBuf,
    pub(crate) registry: TestRegistry,
    pub(crate) image: Runnable,
}

/// A registry (as docker.io) holding `nvidia/cuda:TAG`: CUDA-like base layers plus busybox.
pub(crate) fn env(message: &str) -> Env {
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
    /// `cudaimg ARGS` against the registry, with `DOCKER_HOST` set to `docker` if given.
    pub(crate) fn cmd(&self, docker: Option<&TestDocker>, args: &[&str]) -> Command {
        self.cli(docker.map(TestDocker::host).as_deref(), args)
    }

    /// `cudaimg ARGS` against the registry, with `DOCKER_HOST` set to `docker_host` if given
    /// (any engine speaking Docker's API: Docker, Podman's service).
    pub(crate) fn cli(&self, docker_host: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = self.sandbox.cli(&self.config, args);
        if let Some(host) = docker_host {
            cmd.env("DOCKER_HOST", host);
        }
        cmd
    }
}

/// `docker run --rm --network none IMAGE`'s output, trimmed.
pub(crate) fn run_output(d: &TestDocker, image: &str) -> String {
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

/// `inspect`'s `RootFS.Layers` (Docker's and Podman's shape).
pub(crate) fn diff_ids(inspect: &serde_json::Value) -> Vec<String> {
    inspect["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// `docker images`' names (`REPOSITORY:TAG`), one per line.
pub(crate) fn image_names(d: &TestDocker) -> Vec<String> {
    let names = d
        .docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&names.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The Engine holds the image as upstream built it (ID, layers, environment) under
/// `reference` alone: no other name (the relay's) and no digest it could not resolve.
/// (A graphdriver store: the image ID is the config's digest.)
pub(crate) fn check_loaded(d: &TestDocker, e: &Env, reference: &str) {
    let inspect = d.inspect(reference);
    assert_eq!(
        inspect["Id"], e.image.config.digest,
        "Docker's image ID is the upstream config digest"
    );
    assert_eq!(diff_ids(&inspect), e.image.diff_ids);
    let env: Vec<&str> = inspect["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"CUDA_VERSION=12.4.1"), "{env:?}");
    assert_eq!(inspect["RepoTags"], serde_json::json!([reference]));
    assert_eq!(inspect["RepoDigests"], serde_json::json!([]), "{inspect}");
    assert_eq!(image_names(d), [reference], "the Engine holds other names");
}

/// What a user does with an image the Engine holds, checked: `docker save` writes an archive
/// (to stdout), and `docker push` to another registry pushes `manifest`, byte for byte, as
/// skopeo reads it back.
pub(crate) fn check_save_and_push(d: &TestDocker, image: &str, manifest: &str) {
    let sandbox = Sandbox::new();
    let tar = sandbox.root().join("saved.tar");
    let out = d
        .docker(&["save", image])
        .stdout(std::fs::File::create(&tar).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker save: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let names = run_ok(Command::new("tar").arg("-tf").arg(&tar));
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(
        names
            .lines()
            .any(|n| n == "manifest.json" || n == "index.json"),
        "{names}"
    );
    let second = TestRegistry::start();
    let pushed = format!("{}/nvidia/cuda:{TAG}", second.host());
    run_ok(&mut d.docker(&["tag", image, &pushed]));
    run_ok(&mut d.docker(&["push", &pushed]));
    let out = run_ok(sandbox.skopeo().args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{pushed}"),
    ]));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Digest"], manifest, "docker push changed the manifest");
    run_ok(&mut d.docker(&["rmi", &pushed]));
}

/// A mirror of `e`'s registry that flips a byte in the middle of the top layer once, then
/// holds the rest back for 6 s, so the engine is reading the bad bytes meanwhile (it asks
/// for the top layer last; on a loaded machine, 2 s were once not enough); `e`'s
/// configuration names it as Docker Hub's mirror.
pub(crate) fn flipping_mirror(e: &Env) -> common::FaultProxy {
    use common::Fault;
    let (top, top_bytes) = &e.image.layer;
    let mirror = common::FaultProxy::start(&e.registry.url());
    let len = top_bytes.len() as u64;
    mirror.add(Fault::FlipByte {
        path_contains: top.clone(),
        offset: len / 2,
        times: 1,
    });
    mirror.add(Fault::Stall {
        path_contains: top.clone(),
        after_bytes: len * 3 / 4,
        for_secs: 6,
        times: 1,
    });
    e.sandbox
        .write_hub_config(&e.registry.url(), &[&mirror.url()]);
    mirror
}
