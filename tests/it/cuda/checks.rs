//! More of the CUDA suite: `doctor` with a broken toolkit, daemon.json and mirror
//! configuration, and `run-config`.

use super::*;

#[test]
fn doctor_fails_a_gpu_without_the_toolkit_and_a_broken_daemon_json() {
    let mut host = Host::new();
    host.gpu("550.54.15, NVIDIA L4");
    let out = run_fails(&mut host.cmd(&["--json", "doctor"]));
    let r = json_of(&out);
    let runtime = findings(&r, "nvidia-runtime");
    assert!(has(&runtime, "fail", "Toolkit not found"), "{r:#}");
    assert!(runtime[0]["fix"]
        .as_str()
        .unwrap()
        .contains("nvidia-ctk runtime configure"));

    // The toolkit's programs alone, no runtime in Docker: a warning that says what is missing.
    host.program("nvidia-container-runtime-hook", "exit 0");
    let r = host.json(&["doctor"]);
    assert!(
        has(
            &findings(&r, "nvidia-runtime"),
            "warn",
            "Docker has no `nvidia` runtime"
        ),
        "{r:#}"
    );

    let broken = host.sandbox.write("daemon.json", "{\"runtimes\": {");
    host.set("CUDAIMG_DOCKER_DAEMON_JSON", broken.display().to_string());
    let out = run_fails(&mut host.cmd(&["--json", "doctor"]));
    assert!(has(
        &findings(&json_of(&out), "nvidia-runtime"),
        "fail",
        "not valid JSON"
    ));

    // A driver that does not answer.
    let mut host = Host::new();
    let smi = host.program(
        "nvidia-smi",
        "echo 'Failed to initialize NVML: Driver/library version mismatch' >&2; exit 18",
    );
    host.set("CUDAIMG_NVIDIA_SMI", smi.display().to_string());
    let out = run_fails(&mut host.cmd(&["--json", "doctor"]));
    let r = json_of(&out);
    assert_eq!(r["driver"]["found"], "smi-failed");
    assert!(
        has(&findings(&r, "driver"), "fail", "version mismatch"),
        "{r:#}"
    );
}

#[test]
fn doctor_checks_the_mirror_configuration() {
    let live = TestRegistry::start();
    let dead = dead_endpoint();
    let host = Host::new().with_hub(&live.url(), &[&dead]);
    let r = host.json(&["doctor"]);
    let mirrors = findings(&r, "mirrors");
    assert!(
        has(
            &mirrors,
            "ok",
            &format!("registry {} answers GET /v2/ (HTTP 200)", live.url())
        ),
        "{r:#}"
    );
    assert!(
        has(&mirrors, "warn", &format!("mirror {dead} does not answer")),
        "{r:#}"
    );
    assert_eq!(r["summary"]["fail"], 0);

    // Every endpoint of a registry dead: pulls cannot work.
    let host = Host::new().with_hub(&dead, &[&dead_endpoint()]);
    let out = run_fails(&mut host.cmd(&["--json", "doctor"]));
    assert!(has(
        &findings(&json_of(&out), "mirrors"),
        "fail",
        "none of its"
    ));

    // An image that is neither stored nor an nvidia/cuda tag.
    let out = run_fails(&mut Host::new().cmd(&["doctor", "ubuntu:22.04"]));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------
// mirrors check
// ---------------------------------------------------------------------------------------

#[test]
#[allow(clippy::many_single_char_names)]
fn mirrors_check_ranks_fresh_stale_and_dead_mirrors_and_emits_daemon_configs() {
    let store = FixtureStore::shared();
    let old = store.cuda(&CudaSpec::new("12.4.1", Flavor::Base).arches(&[common::Arch::Amd64]));
    let new = store.cuda(
        &CudaSpec::new("12.4.1", Flavor::Base)
            .arches(&[common::Arch::Amd64])
            .rebuild(1),
    );
    let official = TestRegistry::start();
    Pusher::new(&official).push(&new);
    let fresh = TestRegistry::start();
    Pusher::new(&fresh).push(&new);
    let pull_only = TestRegistry::start();
    Pusher::new(&pull_only).push_untagged(&new, REPO);
    // Stale: the tag still names the old build, though the new content is there by digest.
    let stale = TestRegistry::start();
    Pusher::new(&stale).push_untagged(&new, REPO);
    Pusher::new(&stale).push(&old);
    let dead = dead_endpoint();
    let host = Host::new().with_config(&format!(
        "[registries.\"docker.io\"]\nendpoint = \"{}\"\nmirrors = [{{ url = \"{dead}\" }}, {{ url = \"{}\" }}, {{ url = \"{}\" }}, {{ url = \"{}\", capabilities = [\"pull\"] }}]\n",
        official.url(),
        stale.url(),
        fresh.url(),
        pull_only.url()
    ));
    let tag = new.reference();
    let r = host.json(&[
        "mirrors",
        "check",
        "--tag",
        &tag,
        "--platform",
        "linux/amd64",
    ]);
    let hub = &r["registries"][0];
    assert_eq!(hub["registry"], "docker.io");
    assert_eq!(hub["official_digest"], new.top().digest);
    let by_url = |url: &str| -> Value {
        hub["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"] == url)
            .unwrap_or_else(|| panic!("{url} in {hub:#}"))
            .clone()
    };
    let (o, f, p, s, d) = (
        by_url(&official.url()),
        by_url(&fresh.url()),
        by_url(&pull_only.url()),
        by_url(&stale.url()),
        by_url(&dead),
    );
    assert_eq!(f["fresh"], true);
    assert_eq!(f["tag_state"], "same as the official registry");
    assert_eq!(s["fresh"], false);
    assert!(s["tag_state"].as_str().unwrap().contains("stale"), "{s}");
    assert!(
        s["tag_state"].as_str().unwrap().contains(&old.top().digest),
        "{s}"
    );
    assert_eq!(p["fresh"], Value::Null);
    assert!(
        p["tag_state"].as_str().unwrap().contains("pull-only"),
        "{p}"
    );
    assert_eq!(d["reachable"], false);
    assert!(d["error"].as_str().unwrap().contains("connect"), "{d}");
    // Every live endpoint served the measured blob, with the right bytes.
    for e in [&o, &f, &p, &s] {
        assert!(e["blob_bytes_per_sec"].as_u64().is_some(), "{e}");
        assert_eq!(e["blob_error"], Value::Null, "{e}");
        assert!(e["latency_ms"].as_u64().is_some(), "{e}");
    }
    // Ranks: the three fresh (order by speed), then the stale one, then the dead one.
    let mut fresh_ranks: Vec<u64> = [&o, &f, &p]
        .iter()
        .map(|e| e["rank"].as_u64().unwrap())
        .collect();
    fresh_ranks.sort_unstable();
    assert_eq!(fresh_ranks, [1, 2, 3]);
    assert_eq!(s["rank"], 4);
    assert_eq!(d["rank"], 5);

    // daemon.json: Docker trusts a mirror's tags, so only the fresh, resolve-capable one.
    let out = run_ok(&mut host.cmd(&[
        "mirrors",
        "check",
        "--tag",
        &tag,
        "--platform",
        "linux/amd64",
        "--emit",
        "daemon-json",
    ]));
    let daemon: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(daemon["registry-mirrors"], serde_json::json!([fresh.url()]));
    assert_eq!(
        daemon["insecure-registries"],
        serde_json::json!([fresh.host()])
    );
    let notes = stderr(&out);
    for left_out in [&dead, &stale.url(), &pull_only.url()] {
        assert!(notes.contains(left_out.as_str()), "{left_out}: {notes}");
    }

    // containerd: capabilities as configured; the stale mirror demoted to pull; the dead one out.
    let dir = host.sandbox.root().join("certs.d");
    run_ok(&mut host.cmd(&[
        "mirrors",
        "check",
        "--tag",
        &tag,
        "--platform",
        "linux/amd64",
        "--emit",
        "containerd",
        "--out",
        dir.to_str().unwrap(),
    ]));
    let hosts = std::fs::read_to_string(dir.join("docker.io/hosts.toml")).unwrap();
    assert!(
        hosts.contains(&format!("server = \"{}\"", official.url())),
        "{hosts}"
    );
    let section = |url: &str| -> String {
        let start = hosts
            .find(&format!("[host.\"{url}\"]"))
            .unwrap_or_else(|| panic!("{url}: {hosts}"));
        hosts[start..].split("\n\n").next().unwrap().to_owned()
    };
    assert!(
        section(&fresh.url()).contains("capabilities = [\"pull\", \"resolve\"]"),
        "{hosts}"
    );
    assert!(
        section(&pull_only.url()).contains("capabilities = [\"pull\"]"),
        "{hosts}"
    );
    assert!(
        section(&stale.url()).contains("capabilities = [\"pull\"]"),
        "{hosts}"
    );
    assert!(!hosts.contains(&dead), "{hosts}");
    assert!(toml::from_str::<toml::Value>(&hosts).is_ok(), "{hosts}");

    // Text report.
    let text = stdout(&run_ok(&mut host.cmd(&[
        "mirrors",
        "check",
        "--tag",
        &tag,
        "--platform",
        "linux/amd64",
    ])));
    assert!(text.contains("unreachable:"), "{text}");
    assert!(text.contains(" 5. "), "{text}");

    // No configuration: nothing to check.
    let out = run_fails(&mut Host::new().cmd(&["mirrors", "check"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------
// run-config
// ---------------------------------------------------------------------------------------

#[test]
fn run_config_writes_the_seed_scenarios_pinned_by_digest() {
    let fx = runtime();
    let official = TestRegistry::start();
    Pusher::new(&official).push(&fx);
    let host = Host::new().with_hub(&official.url(), &[]);

    // Not stored yet: a clear error that says to pull.
    let out = run_fails(&mut host.cmd(&["run-config", &fx.reference(), "--scenario", "quick"]));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cudaimg pull docker.io/{}", fx.reference())),
        "{}",
        stderr(&out)
    );

    host.pull(&fx.reference());
    let pinned = format!(
        "nvidia/cuda:{RUNTIME_TAG}@{}",
        fx.index.as_ref().unwrap().digest
    );

    let quick = stdout(&run_ok(&mut host.cmd(&[
        "run-config",
        &fx.reference(),
        "--scenario",
        "quick",
    ])));
    assert!(
        quick.contains(&format!(
            "docker run --rm -it --gpus all {pinned} nvidia-smi\n"
        )),
        "{quick}"
    );
    assert!(
        quick.contains("12.4.1-devel-ubuntu22.04"),
        "no nvcc note: {quick}"
    );

    let work = stdout(&run_ok(&mut host.cmd(&[
        "run-config",
        &fx.reference(),
        "--scenario",
        "workdir",
        "--gpus",
        "0,1",
        "--name",
        "train",
        "--restart",
        "always",
    ])));
    assert!(
        work.contains(r#"docker run -d --name train --gpus '"device=0,1"' --restart always \"#),
        "{work}"
    );
    assert!(
        work.contains(r#"-v "$PWD":/workspace -w /workspace \"#),
        "{work}"
    );
    assert!(work.contains(&format!("  {pinned} \\")), "{work}");
    assert!(work.contains("docker exec -it train bash"), "{work}");

    let r = host.json(&["run-config", &fx.reference(), "--scenario", "compose"]);
    assert_eq!(r["image"], pinned);
    assert_eq!(r["format"], "docker-compose.yml");
    let yaml = r["content"].as_str().unwrap();
    let config = compose_validates(host.sandbox.root(), yaml);
    assert!(config.contains("driver: nvidia"), "{config}");
    assert!(config.contains("count: all"), "{config}");
    assert!(config.contains("- gpu"), "{config}");
    assert!(config.contains(&pinned), "{config}");

    for (gpus, expect) in [
        ("2", "count: 2"),
        ("0,1", "- '0'"),
        ("GPU-8f1c0b2a-1d2e", "GPU-8f1c0b2a-1d2e"),
    ] {
        let yaml = stdout(&run_ok(&mut host.cmd(&[
            "run-config",
            &fx.reference(),
            "--scenario",
            "compose",
            "--gpus",
            gpus,
            "--name",
            "svc",
            "--host-dir",
            "./data dir",
        ])));
        let config = compose_validates(host.sandbox.root(), &yaml);
        assert!(config.contains(expect), "{gpus}: {config}");
        assert!(config.contains("container_name: svc"), "{config}");
        assert!(config.contains("data dir:/workspace"), "{config}");
    }

    let reference = fx.reference();
    for bad in [
        &["--gpus", "0"][..],
        &["--gpus", "x;y"],
        &["--name", "-x"],
        &["--restart", "sometimes"],
    ] {
        let mut args = vec!["run-config", reference.as_str(), "--scenario", "quick"];
        args.extend_from_slice(bad);
        let out = run_fails(&mut host.cmd(&args));
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
}
