//! `cudaimg pull` against real registries: mirrors with official fallback, canonical names,
//! platforms, dedup, tags that move, auth, and skopeo reading what was stored.

use cudaimg_test_support as common;

use std::path::Path;

use common::{
    dead_endpoint, run_fails, run_ok, Arch, CudaSpec, Fixture, FixtureStore, Flavor, MediaTypes,
    Pusher, Sandbox, Scale, TestRegistry, TokenServer,
};
use serde_json::Value;

const RUNTIME: &str = "nvidia/cuda:12.4.1-runtime-ubuntu22.04";

fn fixture(flavor: Flavor, media: MediaTypes) -> Fixture {
    Fixture::cuda("12.4.1", flavor, media, Scale::TINY)
}

fn pull_json(sandbox: &Sandbox, config: &Path, args: &[&str]) -> Value {
    let mut cmd = sandbox.cudaimg();
    cmd.arg("--config")
        .arg(config)
        .arg("--store")
        .arg(sandbox.store_dir());
    cmd.args(["--json", "pull"]).args(args);
    let out = run_ok(&mut cmd);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "pull --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn cli(sandbox: &Sandbox, config: &Path, args: &[&str]) -> std::process::Command {
    sandbox.cli(config, args)
}

fn index_json(sandbox: &Sandbox) -> Value {
    serde_json::from_slice(&std::fs::read(sandbox.store_dir().join("index.json")).unwrap()).unwrap()
}

fn stored_blob(sandbox: &Sandbox, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(sandbox.store_dir().join("blobs/sha256").join(hex)).unwrap()
}

#[test]
fn falls_back_past_a_dead_mirror_and_a_mirror_lacking_the_tag() {
    let official = TestRegistry::start();
    let empty_mirror = TestRegistry::start();
    let fx = fixture(Flavor::Runtime, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);

    let sandbox = Sandbox::new();
    let dead = dead_endpoint();
    let config = sandbox.write_hub_config(&official.url(), &[&dead, &empty_mirror.url()]);
    let r = pull_json(&sandbox, &config, &["--platform", "linux/amd64", RUNTIME]);

    let amd64 = fx.platform(Arch::Amd64);
    assert_eq!(r["reference"], RUNTIME);
    assert_eq!(r["canonical"], format!("docker.io/{RUNTIME}"));
    assert_eq!(r["digest"], amd64.manifest.digest);
    assert_eq!(r["index_digest"], fx.index.as_ref().unwrap().digest);
    assert_eq!(r["platform"], "linux/amd64");
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(layers.len(), amd64.layers.len());
    for (got, want) in layers.iter().zip(&amd64.layers) {
        assert_eq!(got["digest"], want.digest);
        assert_eq!(got["size"], want.size);
        let source = got["source"].as_str().unwrap();
        assert!(source.starts_with(&official.url()), "{source}");
    }
    assert_eq!(
        r["bytes_downloaded"],
        amd64.layers_size() + amd64.config.size()
    );
    // Both failures are reported, once each, naming the source and why.
    let warnings: Vec<&str> = r["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&dead) && w.contains("connect")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&empty_mirror.url()) && w.contains("not-found")),
        "{warnings:?}"
    );
    // The dead mirror cost one connection attempt, not one per blob.
    assert_eq!(warnings.iter().filter(|w| w.contains(&dead)).count(), 1);

    // Stored byte-exact under the canonical name.
    let idx = index_json(&sandbox);
    let entries = idx["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0]["annotations"]["org.opencontainers.image.ref.name"],
        format!("docker.io/{RUNTIME}")
    );
    assert_eq!(entries[0]["digest"], amd64.manifest.digest);
    assert_eq!(entries[0]["mediaType"], common::fixtures::DOCKER_MANIFEST);
    assert_eq!(
        stored_blob(&sandbox, &amd64.manifest.digest),
        amd64.manifest.bytes
    );
    assert_eq!(
        stored_blob(&sandbox, &fx.index.as_ref().unwrap().digest),
        fx.index.as_ref().unwrap().bytes
    );
    for l in &amd64.layers {
        assert_eq!(stored_blob(&sandbox, &l.digest), l.bytes());
    }
    // Nothing half-written is left behind.
    assert_eq!(
        std::fs::read_dir(sandbox.store_dir().join("ingest"))
            .unwrap()
            .count(),
        0
    );
    run_ok(&mut cli(&sandbox, &config, &["verify"]));
}

#[test]
fn a_mirror_that_has_the_image_serves_every_blob() {
    let official = TestRegistry::start();
    let mirror = TestRegistry::start();
    let fx = fixture(Flavor::Runtime, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    Pusher::new(&mirror).push(&fx);

    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[&mirror.url()]);
    let r = pull_json(&sandbox, &config, &["--platform", "linux/amd64", RUNTIME]);
    for l in r["layers"].as_array().unwrap() {
        assert!(
            l["source"].as_str().unwrap().starts_with(&mirror.url()),
            "{l}"
        );
    }
    assert_eq!(r["warnings"], serde_json::json!([]));
    assert!(
        official.blob_downloads().is_empty(),
        "the official registry served blobs"
    );
}

#[test]
fn a_mirror_prefixed_name_is_stored_under_the_registry_it_mirrors() {
    let official = TestRegistry::start();
    let other_mirror = TestRegistry::start();
    let mirror = TestRegistry::start();
    let fx = fixture(Flavor::Runtime, MediaTypes::Docker);
    // The official registry says what the tag is; the mirrors carry the bytes.
    Pusher::new(&official).push(&fx);
    Pusher::new(&mirror).push(&fx);
    Pusher::new(&other_mirror).push(&fx);

    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[&other_mirror.url(), &mirror.url()]);
    let typed = format!("{}/{RUNTIME}", mirror.host());
    let r = pull_json(&sandbox, &config, &["--platform", "linux/arm64", &typed]);
    assert_eq!(r["reference"], typed);
    assert_eq!(r["canonical"], format!("docker.io/{RUNTIME}"));
    assert_eq!(r["digest"], fx.platform(Arch::Arm64).manifest.digest);
    assert_eq!(r["platform"], "linux/arm64/v8");
    // The mirror the user named is asked first.
    assert!(r["manifest_source"]
        .as_str()
        .unwrap()
        .starts_with(&mirror.url()));
    // Blobs are spread over the healthy mirrors (one link each), the named one included,
    // and still never fetched from the official registry while a mirror serves them.
    assert!(
        !mirror.blob_downloads().is_empty(),
        "the named mirror served no blob"
    );
    assert!(
        !other_mirror.blob_downloads().is_empty(),
        "the blobs were not spread over both mirrors"
    );
    assert!(
        official.blob_downloads().is_empty(),
        "the official registry served blobs"
    );

    // Docker Hub's implicit `library/` applies to mirror-prefixed short names too.
    let ubuntu = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, Scale::TINY);
    Pusher::new(&official).push_as(&ubuntu, "library/ubuntu", "22.04");
    Pusher::new(&mirror).push_as(&ubuntu, "library/ubuntu", "22.04");
    let r = pull_json(
        &sandbox,
        &config,
        &[&format!("{}/ubuntu:22.04", mirror.host())],
    );
    assert_eq!(r["canonical"], "docker.io/library/ubuntu:22.04");

    let out = run_ok(&mut cli(&sandbox, &config, &["images"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("docker.io/{RUNTIME}")), "{text}");
    assert!(
        !text.contains(&mirror.host()),
        "a mirror name leaked into the store: {text}"
    );
}

#[test]
fn platform_choice_and_both_platforms_side_by_side() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let reference = fx.reference();

    let amd = pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/amd64", &reference],
    );
    let arm = pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/arm64", &reference],
    );
    assert_eq!(amd["digest"], fx.platform(Arch::Amd64).manifest.digest);
    assert_eq!(arm["digest"], fx.platform(Arch::Arm64).manifest.digest);
    // The NGC license layer has one digest on both arches: the second pull reuses it.
    let license = &fx.platform(Arch::Arm64).layer("5").digest;
    let arm_license = arm["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["digest"] == *license)
        .unwrap();
    assert_eq!(arm_license["cached"], true);
    assert_eq!(
        index_json(&sandbox)["manifests"].as_array().unwrap().len(),
        2
    );

    let out = run_fails(&mut cli(
        &sandbox,
        &config,
        &["pull", "--platform", "linux/ppc64le", &reference],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("linux/ppc64le") && err.contains("linux/amd64, linux/arm64/v8"),
        "{err}"
    );
}

#[test]
fn pulling_cudnn_runtime_after_runtime_fetches_only_the_new_layer() {
    let official = TestRegistry::start();
    let runtime = fixture(Flavor::Runtime, MediaTypes::Docker);
    let cudnn = fixture(Flavor::CudnnRuntime, MediaTypes::Docker);
    Pusher::new(&official).push(&runtime);
    Pusher::new(&official).push(&cudnn);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);

    pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/amd64", &runtime.reference()],
    );
    let before = official.blob_downloads().len();
    let r = pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/amd64", &cudnn.reference()],
    );

    let new = cudnn.new_layers_since(&runtime, Arch::Amd64);
    assert_eq!(
        new.len(),
        1,
        "fixture: cudnn-runtime adds one layer to runtime"
    );
    let config_size = cudnn.platform(Arch::Amd64).config.size();
    assert_eq!(r["bytes_downloaded"], new[0].size + config_size);
    let fetched: Vec<&Value> = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["cached"] == false)
        .collect();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0]["digest"], new[0].digest);
    // The registry saw exactly two more blob GETs: the new layer and the new config.
    assert_eq!(official.blob_downloads().len() - before, 2);

    // `images` shows what the two share.
    let out = run_ok(&mut cli(&sandbox, &config, &["--json", "images"]));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let shared = runtime.platform(Arch::Amd64).layers_size();
    for row in rows {
        assert_eq!(row["shared"], shared, "{row}");
        assert_eq!(row["platform"], "linux/amd64");
    }
}

#[test]
fn a_tag_that_moved_replaces_the_stored_entry() {
    let official = TestRegistry::start();
    let store = FixtureStore::shared();
    let old = store.cuda(&CudaSpec::new("12.4.1", Flavor::Base));
    let new = store.cuda(&CudaSpec::new("12.4.1", Flavor::Base).rebuild(1));
    assert_ne!(old.top().digest, new.top().digest);
    Pusher::new(&official).push(&old);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let args = ["--platform", "linux/amd64", &old.reference()];
    assert_eq!(
        pull_json(&sandbox, &config, &args)["digest"],
        old.platform(Arch::Amd64).manifest.digest
    );

    Pusher::new(&official).push(&new);
    assert_eq!(
        pull_json(&sandbox, &config, &args)["digest"],
        new.platform(Arch::Amd64).manifest.digest
    );
    let idx = index_json(&sandbox);
    let entries = idx["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{idx}");
    assert_eq!(
        entries[0]["digest"],
        new.platform(Arch::Amd64).manifest.digest
    );
}

#[test]
fn pulls_by_digest_and_refuses_content_that_does_not_match_it() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let index = &fx.index.as_ref().unwrap().digest;
    let by_digest = format!("{}@{index}", fx.repo);
    let r = pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/amd64", &by_digest],
    );
    assert_eq!(r["index_digest"], *index);
    assert_eq!(r["canonical"], format!("docker.io/{by_digest}"));

    // A digest nobody has: not found, exit 4.
    let missing = format!("{}@sha256:{}", fx.repo, "0".repeat(64));
    let out = run_fails(&mut cli(&sandbox, &config, &["pull", &missing]));
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_tag_missing_everywhere_exits_4_and_lists_every_source() {
    let official = TestRegistry::start();
    let mirror = TestRegistry::start();
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[&mirror.url()]);
    let out = run_fails(&mut cli(
        &sandbox,
        &config,
        &["pull", "nvidia/cuda:0.0-nope"],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains(&mirror.url()) && err.contains(&official.url()),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    // A failed pull names nothing in the store.
    assert_eq!(index_json(&sandbox)["manifests"], serde_json::json!([]));
}

#[test]
fn bad_references_and_bad_config_files_are_usage_errors() {
    let sandbox = Sandbox::new();
    let good = sandbox.write("ok.toml", "");
    for (reference, needle) in [
        ("NVIDIA/cuda:12.4.1", "lowercase"),
        ("https://docker.io/nvidia/cuda", "scheme"),
        ("nvidia/cuda@sha256:abc", "64 hex"),
        ("nvidia/cuda:bad tag", "the tag `bad tag` is not valid"),
    ] {
        let out = run_fails(&mut cli(&sandbox, &good, &["pull", reference]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{reference}: {err}");
        assert!(
            err.contains(needle) && err.contains("hint:"),
            "{reference}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    for (text, at, needle) in [
        (
            "[registries.\"docker.io\"]\nmirrors = [{ url = \"ftp://m\" }]\n",
            ":2:20:",
            "https://",
        ),
        (
            "[registries.\"docker.io\"]\nendpoint = 5\n",
            ":2:12:",
            "string",
        ),
        ("[registries.\"docker.io\"\n", ":1:", "bad.toml"),
        (
            "[registries.\"docker.io\"]\nmirors = []\n",
            ":2:1:",
            "mirors",
        ),
        (
            "[registries.\"docker.io\"]\nmirrors = [{ url = \"https://u:pw@m.example\" }]\n",
            ":2:20:",
            "docker login",
        ),
    ] {
        let bad = sandbox.write("bad.toml", text);
        let out = run_fails(&mut cli(&sandbox, &bad, &["pull", RUNTIME]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains(&format!("bad.toml{at}")) && err.contains(needle),
            "{text}: {err}"
        );
        assert!(!err.contains("pw@"), "a secret was echoed: {err}");
    }
    let mut cmd = sandbox.cudaimg();
    cmd.args(["--config", "/nonexistent/mirrors.toml", "pull", RUNTIME]);
    let out = run_fails(&mut cmd);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mirrors.toml"));
}

#[test]
fn config_is_found_through_env_then_cwd_then_xdg() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let body = format!(
        "[registries.\"docker.io\"]\nendpoint = \"{}\"\n",
        official.url()
    );
    let reference = fx.reference();
    let pull = |cmd: &mut std::process::Command| {
        cmd.arg("--store").arg(sandbox.store_dir()).args([
            "pull",
            "--platform",
            "linux/amd64",
            &reference,
        ]);
        cmd.output().unwrap()
    };
    // No config anywhere: docker.io means the real Docker Hub, unreachable here.
    assert!(!pull(&mut sandbox.cudaimg()).status.success());
    // XDG location.
    sandbox.write("home/.config/cudaimg/mirrors.toml", &body);
    assert!(pull(&mut sandbox.cudaimg()).status.success());
    // ./mirrors.toml wins over XDG.
    sandbox.write("home/.config/cudaimg/mirrors.toml", "not = [valid");
    sandbox.write("mirrors.toml", &body);
    assert!(pull(&mut sandbox.cudaimg()).status.success());
    // CUDAIMG_CONFIG wins over ./mirrors.toml, and --config over CUDAIMG_CONFIG.
    let broken = sandbox.write("broken.toml", "[[[");
    let out = pull(sandbox.cudaimg().env("CUDAIMG_CONFIG", &broken));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.toml"));
    let good = sandbox.write("good.toml", &body);
    assert!(pull(
        sandbox
            .cudaimg()
            .env("CUDAIMG_CONFIG", &broken)
            .arg("--config")
            .arg(&good)
    )
    .status
    .success());
}

#[test]
fn skopeo_reads_an_oci_typed_image_from_the_store() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::Runtime, MediaTypes::Oci);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    pull_json(&sandbox, &config, &["--platform", "linux/amd64", RUNTIME]);

    let amd64 = fx.platform(Arch::Amd64);
    let layout = format!("oci:{}:docker.io/{RUNTIME}", sandbox.store_dir().display());
    let out = run_ok(sandbox.skopeo().args(["inspect", &layout]));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Digest"], amd64.manifest.digest);
    assert_eq!(info["Architecture"], "amd64");
    let env: Vec<&str> = info["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"CUDA_VERSION=12.4.1"), "{env:?}");
    let layers: Vec<&str> = info["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        layers,
        amd64
            .layer_digests()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let raw = run_ok(sandbox.skopeo().args(["inspect", "--raw", &layout]));
    assert_eq!(
        raw.stdout, amd64.manifest.bytes,
        "the manifest was not stored byte-exact"
    );
    // A full read of every blob through an independent implementation.
    let copy = sandbox.root().join("copy");
    run_ok(
        sandbox
            .skopeo()
            .args(["copy", &layout, &format!("dir:{}", copy.display())]),
    );
}

#[test]
fn inspect_shows_nvidia_env_labels_and_layers() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::CudnnRuntime, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/arm64", &fx.reference()],
    );

    let out = run_ok(&mut cli(
        &sandbox,
        &config,
        &["--json", "inspect", &fx.reference()],
    ));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let arm = fx.platform(Arch::Arm64);
    assert_eq!(info["digest"], arm.manifest.digest);
    let env: Vec<String> = info["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(env, arm.env());
    assert!(env.iter().any(|e| e == "NVARCH=sbsa"), "{env:?}");
    assert!(
        info["labels"]["com.nvidia.cudnn.version"].is_string(),
        "{info}"
    );
    assert_eq!(info["layers"].as_array().unwrap().len(), arm.layers.len());
    assert_eq!(info["layers"][0]["diff_id"], arm.layers[0].diff_id);

    let out = run_fails(&mut cli(
        &sandbox,
        &config,
        &["inspect", "nvidia/cuda:not-pulled"],
    ));
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn verify_names_a_corrupt_blob_and_a_missing_one() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/amd64", &fx.reference()],
    );
    run_ok(&mut cli(&sandbox, &config, &["verify"]));

    let layers = &fx.platform(Arch::Amd64).layers;
    let corrupt = &layers[0].digest;
    let path = sandbox.store_dir().join("blobs/sha256").join(&corrupt[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let missing = &layers[1].digest;
    std::fs::remove_file(sandbox.store_dir().join("blobs/sha256").join(&missing[7..])).unwrap();

    let out = run_fails(&mut cli(&sandbox, &config, &["verify"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("blob {corrupt} is corrupt")), "{err}");
    assert!(
        err.contains(&format!("layer {missing} is missing")),
        "{err}"
    );

    // A pull repairs neither silently nor wrongly: the missing blob is fetched again.
    pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/amd64", &fx.reference()],
    );
    let out = run_fails(&mut cli(&sandbox, &config, &["verify"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains(missing.as_str()), "{err}");
}

/// Just enough base64 for docker's `auth` field, to avoid a dependency for one line.
mod store;
