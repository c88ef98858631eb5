//! Acceptance tests of the hand-over into today's engines (issue 21): `cudaimg pull --load`
//! and `cudaimg load` into Docker 28 with either store, Podman 4.3 and containerd 2.1, each
//! engine started by the harness that `engines.rs` proves.
//!
//! The contract they check, beyond the engine holding the image as upstream built it:
//! - the CLI: `pull --load REF` / `load REF` with `DOCKER_HOST` (Docker, Podman);
//!   `pull --load=containerd[:NAMESPACE] --containerd-address SOCK REF` and
//!   `load --to containerd[:NAMESPACE] --containerd-address SOCK REF` (namespace `k8s.io`
//!   by default);
//! - `--json`: the pull's record has `loaded` with `route` (`relay` | `archive`), `store`
//!   (`graphdriver` | `containerd` | `podman`), `engine_version`, `image_id`, and `error`
//!   when the hand-over failed.

use cudaimg_test_support as common;

use common::chroot::require;
use common::containerd::TestContainerd;
use common::docker::{EngineKind, TestDocker};
use common::fixtures::{sha256_digest, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST};
use common::podman::TestPodman;
use common::Sandbox;
use common::{run_fails, run_ok, Arch, Document, Fixture, Flavor, MediaTypes, Pusher, Scale};
use serde_json::Value;

use super::loaded::{
    check_loaded, check_save_and_push, diff_ids, env, flipping_mirror, image_names, run_output,
    Env, TAG,
};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON record ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn docker_28(containerd_store: bool) -> Option<TestDocker> {
    require(TestDocker::try_start_kind(
        EngineKind::Current { containerd_store },
        &serde_json::json!({}),
    ))
}

fn reference() -> String {
    format!("nvidia/cuda:{TAG}")
}

/// containerd's and Podman's name for it.
fn official() -> String {
    format!("docker.io/nvidia/cuda:{TAG}")
}

/// `loaded` of a pull's JSON record, with the fields every hand-over reports.
fn loaded(r: &Value, store: &str, engine_version_prefix: &str) -> Value {
    let l = r["loaded"].clone();
    assert!(l.is_object(), "no `loaded` in {r}");
    assert_eq!(l["store"], store, "{l}");
    assert!(
        l["route"] == "relay" || l["route"] == "archive",
        "route: {l}"
    );
    assert!(
        l["engine_version"]
            .as_str()
            .is_some_and(|v| v.starts_with(engine_version_prefix)),
        "engine_version: {l}"
    );
    assert!(l["error"].is_null(), "{l}");
    l
}

#[test]
fn pull_load_into_docker_28_graphdriver_relays_the_image_with_its_config_digest_as_id() {
    let Some(d) = docker_28(false) else { return };
    let e = env("hello from docker 28's graphdriver");
    let r = json(&run_ok(
        &mut e.cmd(Some(&d), &["--json", "pull", "--load", &reference()]),
    ));
    let l = loaded(&r, "graphdriver", "28.");
    assert_eq!(l["route"], "relay", "{l}");
    assert_eq!(l["image_id"], e.image.config.digest, "{l}");
    check_loaded(&d, &e, &reference());
    assert_eq!(
        run_output(&d, &reference()),
        "hello from docker 28's graphdriver"
    );

    // `load` from the store alone: the configuration now names no live registry.
    e.sandbox.write_hub_config(&common::dead_endpoint(), &[]);
    run_ok(&mut d.docker(&["rmi", &reference()]));
    run_ok(&mut e.cmd(Some(&d), &["load", &reference()]));
    check_loaded(&d, &e, &reference());
    assert_eq!(
        run_output(&d, &reference()),
        "hello from docker 28's graphdriver"
    );
}

/// Docker's containerd store holds the image as upstream built it, under its official name
/// alone, with the repository digest of `top` (the manifest, or the index of a multi-arch
/// tag) and that digest as its ID.
fn check_loaded_containerd_store(d: &TestDocker, e: &Env, top: &str) {
    let reference = reference();
    let inspect = d.inspect(&reference);
    assert_eq!(inspect["Id"], top, "the image ID is the top digest");
    let repo_digest = format!("nvidia/cuda@{top}");
    assert!(
        inspect["RepoDigests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| *v == repo_digest),
        "no {repo_digest}: {inspect}"
    );
    assert_eq!(inspect["RepoTags"], serde_json::json!([reference]));
    let names = image_names(d);
    assert_eq!(names, [reference], "the Engine holds other names");
    assert!(
        !names.iter().any(|n| n.contains("cudaimg-load")),
        "{names:?}"
    );
    assert_eq!(diff_ids(&inspect), e.image.diff_ids);
    assert_eq!(
        inspect["Config"]["Env"],
        e.image.config.json()["config"]["Env"]
    );
}

#[test]
fn pull_load_into_docker_28_containerd_store_keeps_the_manifest_so_save_and_push_work() {
    let Some(d) = docker_28(true) else { return };
    assert!(d.uses_containerd_store());
    let e = env("hello from docker 28's containerd store");
    let manifest = e.image.manifest.digest.clone();
    let r = json(&run_ok(
        &mut e.cmd(Some(&d), &["--json", "pull", "--load", &reference()]),
    ));
    let l = loaded(&r, "containerd", "28.");
    assert_eq!(l["route"], "relay", "{l}");
    assert_eq!(l["image_id"], manifest, "{l}");
    check_loaded_containerd_store(&d, &e, &manifest);
    assert_eq!(
        run_output(&d, &reference()),
        "hello from docker 28's containerd store"
    );

    // The engine holds what it would have pulled itself: `docker save` and `docker push`
    // work, and the pushed manifest is upstream's, byte for byte.
    check_save_and_push(&d, &reference(), &manifest);

    // `load` from the store alone.
    e.sandbox.write_hub_config(&common::dead_endpoint(), &[]);
    run_ok(&mut d.docker(&["rmi", &reference()]));
    run_ok(&mut e.cmd(Some(&d), &["load", &reference()]));
    check_loaded_containerd_store(&d, &e, &manifest);
    assert_eq!(
        run_output(&d, &reference()),
        "hello from docker 28's containerd store"
    );
}

/// Tags `nvidia/cuda:TAG` as a manifest list of `e`'s runnable amd64 image and the fixture's
/// arm64 one, as NVIDIA's tags are; returns the list.
fn push_multiarch(e: &Env) -> Document {
    let base = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, Scale::TINY);
    let arm64 = base.platform(Arch::Arm64);
    let pusher = Pusher::new(&e.registry);
    pusher.push_platform("nvidia/cuda", arm64);
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [
            {"mediaType": DOCKER_MANIFEST, "size": e.image.manifest.bytes.len(),
             "digest": e.image.manifest.digest,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": DOCKER_MANIFEST, "size": arm64.manifest.size(),
             "digest": arm64.manifest.digest,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
    });
    let bytes = serde_json::to_vec_pretty(&list).unwrap();
    let list = Document {
        media_type: DOCKER_MANIFEST_LIST.into(),
        digest: sha256_digest(&bytes),
        bytes,
    };
    pusher.push_manifest("nvidia/cuda", TAG, &list);
    list
}

#[test]
fn pull_load_of_a_multi_arch_tag_gives_the_index_digest_as_the_image_id() {
    let hub = env("hello from a multi-arch tag");
    let list = push_multiarch(&hub);

    let Some(docker) = docker_28(true) else {
        return;
    };
    let record = json(&run_ok(
        &mut hub.cmd(Some(&docker), &["--json", "pull", "--load", &reference()]),
    ));
    let ld = loaded(&record, "containerd", "28.");
    assert_eq!(ld["image_id"], list.digest, "{ld}");
    check_loaded_containerd_store(&docker, &hub, &list.digest);
    assert_eq!(
        run_output(&docker, &reference()),
        "hello from a multi-arch tag"
    );
    drop(docker);

    let Some(ctrd) = require(TestContainerd::try_start()) else {
        return;
    };
    let address = ctrd.address().display().to_string();
    run_ok(&mut hub.cmd(
        None,
        &[
            "pull",
            "--load=containerd:k8s.io",
            "--containerd-address",
            &address,
            &reference(),
        ],
    ));
    assert!(
        ctrd.images("k8s.io")
            .contains(&(official(), list.digest.clone())),
        "{:?}",
        ctrd.images("k8s.io")
    );
    let out = run_ok(&mut ctrd.ctr(&["-n", "k8s.io", "run", "--rm", &official(), "multiarch"]));
    assert_eq!(stdout(&out), "hello from a multi-arch tag");
}

#[test]
fn pull_load_and_load_into_containerd_name_the_image_for_kubernetes_and_it_runs() {
    let Some(c) = require(TestContainerd::try_start()) else {
        return;
    };
    let e = env("hello from containerd's k8s.io");
    let address = c.address().display().to_string();
    let manifest = e.image.manifest.digest.clone();
    let r = json(&run_ok(&mut e.cmd(
        None,
        &[
            "--json",
            "pull",
            "--load=containerd:k8s.io",
            "--containerd-address",
            &address,
            &reference(),
        ],
    )));
    let l = loaded(&r, "containerd", "2.1");
    assert_eq!(l["image_id"], manifest, "{l}");
    let listed = |c: &TestContainerd| c.images("k8s.io").contains(&(official(), manifest.clone()));
    assert!(listed(&c), "{:?}", c.images("k8s.io"));
    let run = |c: &TestContainerd, id: &str| {
        let out = run_ok(&mut c.ctr(&["-n", "k8s.io", "run", "--rm", &official(), id]));
        assert_eq!(stdout(&out), "hello from containerd's k8s.io");
    };
    run(&c, "after-pull");

    // `load` from the store alone, the namespace left to its default (k8s.io).
    e.sandbox.write_hub_config(&common::dead_endpoint(), &[]);
    run_ok(&mut c.ctr(&["-n", "k8s.io", "images", "rm", &official()]));
    assert!(!listed(&c));
    run_ok(&mut e.cmd(
        None,
        &[
            "load",
            "--to",
            "containerd",
            "--containerd-address",
            &address,
            &reference(),
        ],
    ));
    assert!(listed(&c), "{:?}", c.images("k8s.io"));
    run(&c, "after-load");

    // Another namespace when asked.
    run_ok(&mut e.cmd(
        None,
        &[
            "load",
            "--to",
            "containerd:cudaimg-test",
            "--containerd-address",
            &address,
            &reference(),
        ],
    ));
    assert!(
        c.images("cudaimg-test")
            .contains(&(official(), manifest.clone())),
        "{:?}",
        c.images("cudaimg-test")
    );
}

#[test]
fn pull_load_and_load_into_podman_name_the_image_officially_with_its_config_digest() {
    let Some(p) = require(TestPodman::try_start()) else {
        return;
    };
    let e = env("hello from podman");
    let host = p.host();
    let r = json(&run_ok(
        &mut e.cli(Some(&host), &["--json", "pull", "--load", &reference()]),
    ));
    let l = loaded(&r, "podman", "4.");
    assert_eq!(l["image_id"], e.image.config.digest, "{l}");
    let check = |p: &TestPodman| {
        let names = run_ok(&mut p.podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]));
        assert_eq!(stdout(&names), official(), "podman holds other names");
        let inspect = p.inspect(&official());
        assert_eq!(
            format!("sha256:{}", inspect["Id"].as_str().unwrap()),
            e.image.config.digest
        );
        assert_eq!(diff_ids(&inspect), e.image.diff_ids);
        let out = run_ok(&mut p.run(&[&official()]));
        assert_eq!(stdout(&out), "hello from podman");
    };
    check(&p);

    e.sandbox.write_hub_config(&common::dead_endpoint(), &[]);
    run_ok(&mut p.podman(&["rmi", &official()]));
    run_ok(&mut e.cli(Some(&host), &["load", &reference()]));
    check(&p);
}

#[test]
fn a_hand_over_that_fails_says_so_in_the_json_record() {
    let e = env("never loaded");
    let nowhere = Sandbox::new();
    let address = nowhere.root().join("no-containerd.sock");
    let out = run_fails(&mut e.cmd(
        None,
        &[
            "--json",
            "pull",
            "--load=containerd",
            "--containerd-address",
            &address.display().to_string(),
            &reference(),
        ],
    ));
    let r = json(&out);
    let error = r["loaded"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&address.display().to_string()),
        "the error names no address: {r}"
    );
}

/// A mirror flips a byte in the middle of the top layer, then stalls so the engine is
/// reading the bad bytes meanwhile: in both stores of today's Engine, the relay ends that
/// answer short, the engine asks again, and it ends with upstream's image.
#[test]
fn pull_load_into_docker_28_survives_a_mirror_that_flips_a_byte_in_either_store() {
    for containerd_store in [false, true] {
        let Some(d) = docker_28(containerd_store) else {
            return;
        };
        let e = env("flipped on the way to docker 28");
        let mirror = flipping_mirror(&e);
        let r = json(&run_ok(
            &mut e.cmd(Some(&d), &["--json", "pull", "--load", &reference()]),
        ));
        assert!(
            mirror
                .requests()
                .iter()
                .any(common::ProxyRequest::fault_fired),
            "the mirror flipped nothing"
        );
        let store = if containerd_store {
            "containerd"
        } else {
            "graphdriver"
        };
        let l = loaded(&r, store, "28.");
        assert_eq!(l["route"], "relay", "{l}");
        assert!(
            l["answers_ended_short"].as_u64() >= Some(1),
            "the engine was never refused a blob: {l}"
        );
        if containerd_store {
            check_loaded_containerd_store(&d, &e, &e.image.manifest.digest);
        } else {
            check_loaded(&d, &e, &reference());
        }
        assert_eq!(
            run_output(&d, &reference()),
            "flipped on the way to docker 28"
        );
        run_ok(&mut e.cmd(None, &["verify"]));
    }
}

/// A pull that fails before it chose an image still says, under `--json`, what became of
/// the load that was asked: which engine, which store, and why nothing was loaded.
#[test]
fn a_pull_that_fails_under_load_reports_the_load_in_its_json_record() {
    let Some(d) = docker_28(false) else { return };
    let e = env("never pulled");
    let missing = "nvidia/cuda:12.4.1-missing-ubuntu22.04";
    let out = run_fails(&mut e.cmd(Some(&d), &["--json", "pull", "--load", missing]));
    let r = json(&out);
    assert_eq!(r["reference"], missing, "{r}");
    assert_eq!(r["loaded"]["store"], "graphdriver", "{r}");
    assert!(
        r["loaded"]["engine_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("28.")),
        "{r}"
    );
    let error = r["loaded"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("missing-ubuntu22.04"), "{r}");
    assert!(image_names(&d).is_empty(), "{:?}", image_names(&d));
}
