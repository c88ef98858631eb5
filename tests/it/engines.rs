//! The harness of today's engines, proven on its own (no cudaimg involved): Docker 28.5 with
//! the graphdriver store and with the containerd image store, Podman 4.3 and containerd 2.1
//! each start, pull a runnable image from a registry on 127.0.0.1 with their own client, run
//! it, and leave no mount, process or file behind when dropped.
//!
//! These need root. As root or with `CI` set, an engine that cannot be had (the chroot cannot
//! be built, podman is missing) fails the test; only a developer's run as another user
//! prints SKIPPED. The acceptance tests of the hand-over into these engines are in
//! `engines_handover.rs`.

use cudaimg_test_support as common;

use common::chroot::{assert_cleaned_up, http_get, require};
use common::containerd::TestContainerd;
use common::docker::{EngineKind, TestDocker};
use common::podman::TestPodman;
use common::run_ok;
use serde_json::Value;

use super::loaded::{check_save_and_push, diff_ids, env, image_names, run_output, Env, TAG};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn docker_28(containerd_store: bool) -> Option<TestDocker> {
    require(TestDocker::try_start_kind(
        EngineKind::Current { containerd_store },
        &serde_json::json!({}),
    ))
}

/// Docker 28 with the store asked for, with an image pulled by `docker pull` from a registry
/// on 127.0.0.1 that ran and printed `message`; its `docker image inspect`.
struct Pulled {
    d: TestDocker,
    e: Env,
    remote: String,
    inspect: Value,
}

fn docker_28_pulls_and_runs(containerd_store: bool, message: &str) -> Option<Pulled> {
    let d = docker_28(containerd_store)?;
    let info = d.info();
    assert!(
        info["ServerVersion"].as_str().unwrap().starts_with("28."),
        "{info}"
    );
    assert_eq!(
        d.uses_containerd_store(),
        containerd_store,
        "{}",
        info["DriverStatus"]
    );
    // The chroot's CLI, of the same release, speaks the engine's newest API.
    let versions = run_ok(&mut d.docker(&[
        "version",
        "--format",
        "{{.Client.Version}} {{.Client.APIVersion}} {{.Server.APIVersion}}",
    ]));
    let versions = stdout(&versions);
    let words: Vec<&str> = versions.split(' ').collect();
    assert!(words[0].starts_with("28.5"), "{versions}");
    assert_eq!(words[1], words[2], "{versions}");

    let e = env(message);
    let remote = format!("{}/nvidia/cuda:{TAG}", e.registry.host());
    // With the containerd store, containerd's resolver asks 127.0.0.1 in HTTPS first and
    // takes distribution's HTTP answer as the cue to fall back.
    run_ok(&mut d.docker(&["pull", &remote]));
    assert_eq!(run_output(&d, &remote), message);
    let inspect = d.inspect(&remote);
    assert_eq!(diff_ids(&inspect), e.image.diff_ids);
    assert_eq!(
        inspect["Config"]["Env"],
        e.image.config.json()["config"]["Env"]
    );
    Some(Pulled {
        d,
        e,
        remote,
        inspect,
    })
}

#[test]
fn docker_28_with_the_graphdriver_store_pulls_from_a_loopback_registry_and_runs() {
    let Some(Pulled {
        d,
        e,
        remote: _,
        inspect,
    }) = docker_28_pulls_and_runs(false, "hello from docker 28")
    else {
        return;
    };
    assert_eq!(d.info()["Driver"], "overlay2");
    assert_eq!(
        inspect["Id"], e.image.config.digest,
        "graphdriver: the config's digest"
    );
    assert_eq!(
        inspect["RepoDigests"],
        serde_json::json!([format!(
            "{}/nvidia/cuda@{}",
            e.registry.host(),
            e.image.manifest.digest
        )])
    );

    let dir = d.dir().to_owned();
    drop(d);
    assert_cleaned_up(&dir);
}

#[test]
fn docker_28_with_the_containerd_store_pulls_runs_saves_and_pushes_the_same_manifest() {
    let Some(Pulled {
        d,
        e,
        remote,
        inspect,
    }) = docker_28_pulls_and_runs(true, "hello from the containerd store")
    else {
        return;
    };
    assert_eq!(
        inspect["Id"], e.image.manifest.digest,
        "containerd store: the manifest's digest"
    );
    // The compressed layers stay in containerd's content store, as pulled.
    let content = run_ok(&mut d.ctr(&["content", "ls", "-q"]));
    assert!(stdout(&content).contains(&e.image.layer.0), "{content:?}");

    // What the hand-over's acceptance test checks after a load, proven here on a plain pull.
    check_save_and_push(&d, &remote, &e.image.manifest.digest);

    let dir = d.dir().to_owned();
    drop(d);
    assert_cleaned_up(&dir);
}

#[test]
fn podman_pulls_from_a_loopback_registry_runs_and_serves_dockers_api() {
    let Some(p) = require(TestPodman::try_start()) else {
        return;
    };
    let socket = p.dir().join("podman.sock");
    let (status, body) = http_get(&socket, "/version").unwrap();
    assert_eq!(status, 200, "{body}");
    let version: Value = serde_json::from_str(&body).unwrap();
    assert!(
        version["Version"].as_str().unwrap().starts_with("4."),
        "{version}"
    );

    let e = env("hello from podman");
    let remote = format!("{}/nvidia/cuda:{TAG}", e.registry.host());
    run_ok(&mut p.podman(&["pull", "--tls-verify=false", &remote]));
    let out = run_ok(&mut p.run(&[&remote]));
    assert_eq!(stdout(&out), "hello from podman");
    // Without flags, as a Docker API client's container gets it (containers.conf).
    let out = run_ok(&mut p.podman(&["run", "--rm", &remote]));
    assert_eq!(stdout(&out), "hello from podman");
    let inspect = p.inspect(&remote);
    assert_eq!(
        format!("sha256:{}", inspect["Id"].as_str().unwrap()),
        e.image.config.digest,
        "podman: the config's digest"
    );
    assert_eq!(inspect["Digest"], e.image.manifest.digest);
    // The same image through Docker's API on the socket.
    let (status, body) = http_get(&socket, "/v1.41/images/json").unwrap();
    assert_eq!(status, 200, "{body}");
    let images: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(images[0]["Id"], e.image.config.digest, "{images}");
    assert_eq!(
        images[0]["RepoTags"],
        serde_json::json!([remote]),
        "{images}"
    );

    let dir = p.dir().to_owned();
    drop(p);
    assert_cleaned_up(&dir);
}

#[test]
fn containerd_2_1_pulls_from_a_loopback_registry_and_runs_and_answers_on_the_host() {
    let Some(c) = require(TestContainerd::try_start()) else {
        return;
    };
    let version = run_ok(&mut c.ctr(&["version"]));
    assert!(
        stdout(&version).contains("Version:  2.1."),
        "{}",
        stdout(&version)
    );
    // The socket is the host's too: the host's own ctr (Debian 12's) reaches it.
    let address = c.address();
    run_ok(
        std::process::Command::new("ctr")
            .arg("--address")
            .arg(&address)
            .arg("version"),
    );

    let e = env("hello from containerd");
    let remote = format!("{}/nvidia/cuda:{TAG}", e.registry.host());
    run_ok(&mut c.ctr(&["-n", "k8s.io", "images", "pull", "--plain-http", &remote]));
    assert!(
        c.images("k8s.io")
            .contains(&(remote.clone(), e.image.manifest.digest.clone())),
        "{:?}",
        c.images("k8s.io")
    );
    let out = run_ok(&mut c.ctr(&["-n", "k8s.io", "run", "--rm", &remote, "cudaimg-test"]));
    assert_eq!(stdout(&out), "hello from containerd");

    let dir = c.dir().to_owned();
    drop(c);
    assert_cleaned_up(&dir);
}

#[test]
fn docker_20_10_and_28_run_side_by_side_each_with_its_own_images() {
    let Some(old) = require(TestDocker::try_start_kind(
        EngineKind::Stable,
        &serde_json::json!({}),
    )) else {
        return;
    };
    let Some(new) = docker_28(true) else { return };
    assert!(old.info()["ServerVersion"]
        .as_str()
        .unwrap()
        .starts_with("20.10"));
    let e = env("hello from one of two");
    let remote = format!("{}/nvidia/cuda:{TAG}", e.registry.host());
    run_ok(&mut new.docker(&["pull", &remote]));
    assert_eq!(image_names(&new), [remote]);
    assert!(image_names(&old).is_empty(), "{:?}", image_names(&old));
}

#[test]
fn a_docker_28_that_cannot_start_fails_with_its_log_and_leaves_nothing_behind() {
    let chroot = common::chroot::engines_root().and_then(|r| {
        if common::chroot::is_root() {
            Ok(r)
        } else {
            Err("dockerd needs root".into())
        }
    });
    if require(chroot).is_none() {
        return;
    }
    // dockerd refuses a daemon.json key it does not know, and exits.
    let Err(failed) = std::panic::catch_unwind(|| {
        TestDocker::try_start_kind(
            EngineKind::Current {
                containerd_store: false,
            },
            &serde_json::json!({"no-such-option": true}),
        )
    }) else {
        panic!("dockerd started with an unknown option");
    };
    let message = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("no-such-option"), "{message}");
    // The message names the engine's directory (its logs); nothing of it is left.
    let log = message
        .split_whitespace()
        .find(|w| w.contains("cudaimg-dockerd28-") && w.ends_with("dockerd.log"))
        .unwrap_or_else(|| panic!("no log named in: {message}"));
    assert_cleaned_up(std::path::Path::new(log).parent().unwrap());
}
