//! Tests of the test harness itself (tests/common): that the registries it starts behave like
//! registries, that pushed fixtures are byte-exact as seen by an independent client (skopeo),
//! and that the fixtures have the shape of NVIDIA's images. If these fail, cudaimg's own
//! integration tests would prove nothing.

use cudaimg_test_support as common;

use std::collections::BTreeSet;
use std::io::Read;
use std::time::Duration;

use common::push::{http_client, parse_bearer_challenge};
use common::*;
use sha2::{Digest as _, Sha256};

const V: &str = "12.4.1";

/// `skopeo inspect --tls-verify=false [extra...] docker://<host>/<reference>`, stdout.
fn skopeo_inspect(global: &[&str], extra: &[&str], host: &str, reference: &str) -> Vec<u8> {
    let sandbox = Sandbox::new();
    let mut command = sandbox.skopeo();
    command
        .args(global)
        .args(["inspect", "--tls-verify=false"])
        .args(extra)
        .arg(format!("docker://{host}/{reference}"));
    run_ok(&mut command).stdout
}

/// Like `skopeo_inspect` but expects failure; returns stderr.
fn skopeo_inspect_fails(extra: &[&str], host: &str, reference: &str) -> String {
    let sandbox = Sandbox::new();
    let mut command = sandbox.skopeo();
    command
        .args(["inspect", "--tls-verify=false"])
        .args(extra)
        .arg(format!("docker://{host}/{reference}"));
    String::from_utf8_lossy(&run_fails(&mut command).stderr).into_owned()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn docker_fixture_round_trips_through_skopeo_byte_exactly() {
    let registry = TestRegistry::start();
    let fixture = Fixture::cuda(V, Flavor::Runtime, MediaTypes::Docker, Scale::TINY);
    Pusher::new(&registry).push(&fixture);
    let index = fixture.index.as_ref().unwrap();
    let reference = fixture.reference();
    assert_eq!(reference, "nvidia/cuda:12.4.1-runtime-ubuntu22.04");

    let raw = skopeo_inspect(&[], &["--raw"], &registry.host(), &reference);
    assert_eq!(
        raw, index.bytes,
        "the tag serves the pushed list, byte for byte"
    );
    assert_eq!(
        json(&raw)["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    // NVIDIA's pretty-printing: 3-space indentation.
    assert!(index.text().starts_with("{\n   \"schemaVersion\": 2,\n"));

    let arm = fixture.platform(Arch::Arm64);
    let by_digest = format!("nvidia/cuda@{}", arm.manifest.digest);
    let raw = skopeo_inspect(&[], &["--raw"], &registry.host(), &by_digest);
    assert_eq!(raw, arm.manifest.bytes);

    let inspected = json(&skopeo_inspect(
        &["--override-arch", "arm64"],
        &[],
        &registry.host(),
        &reference,
    ));
    assert_eq!(inspected["Architecture"], "arm64");
    // skopeo reports the digest of what the reference names: the list.
    assert_eq!(inspected["Digest"], index.digest.as_str());
    assert_eq!(strings(&inspected["Layers"]), arm.layer_digests());
    let env = strings(&inspected["Env"]);
    for expected in [
        "CUDA_VERSION=12.4.1",
        "NVARCH=sbsa",
        "NVIDIA_PRODUCT_NAME=CUDA",
        "NVIDIA_VISIBLE_DEVICES=all",
    ] {
        assert!(env.contains(&expected.to_string()), "{expected} in {env:?}");
    }
    assert_eq!(
        inspected["Labels"]["maintainer"],
        "NVIDIA CORPORATION <cudatools@nvidia.com>"
    );
    // skopeo fetched the arm64 config: the access log shows it.
    let downloads = registry.blob_downloads();
    assert!(
        downloads.contains(&arm.config.digest),
        "config download in {downloads:?}"
    );
}

#[test]
fn oci_fixture_round_trips_through_skopeo_byte_exactly() {
    let registry = TestRegistry::start();
    let fixture = Fixture::cuda(V, Flavor::Runtime, MediaTypes::Oci, Scale::TINY);
    Pusher::new(&registry).push(&fixture);
    let index = fixture.index.as_ref().unwrap();
    assert_eq!(index.media_type, "application/vnd.oci.image.index.v1+json");

    let raw = skopeo_inspect(&[], &["--raw"], &registry.host(), &fixture.reference());
    assert_eq!(raw, index.bytes);
    let amd = fixture.platform(Arch::Amd64);
    let manifest = amd.manifest.json();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );

    let inspected = json(&skopeo_inspect(
        &["--override-arch", "amd64"],
        &[],
        &registry.host(),
        &fixture.reference(),
    ));
    assert_eq!(inspected["Digest"], index.digest.as_str());
    assert_eq!(strings(&inspected["Layers"]), amd.layer_digests());
    assert!(strings(&inspected["Env"]).contains(&"NVARCH=x86_64".to_string()));

    // Same content as the Docker-typed image: the layers are the same blobs.
    let docker = Fixture::cuda(V, Flavor::Runtime, MediaTypes::Docker, Scale::TINY);
    assert_eq!(
        docker.platform(Arch::Amd64).layer_digests(),
        amd.layer_digests()
    );
    assert_ne!(
        docker.platform(Arch::Amd64).manifest.digest,
        amd.manifest.digest
    );
}

#[test]
fn license_layer_is_the_only_layer_shared_across_arches() {
    let fixture = Fixture::cuda(V, Flavor::CudnnRuntime, MediaTypes::Docker, Scale::TINY);
    let amd = fixture.platform(Arch::Amd64);
    let arm = fixture.platform(Arch::Arm64);
    assert_eq!(amd.layers.len(), 10);
    assert_eq!(amd.layer("5").name, "ngc-license");
    assert_eq!(amd.layer("5").digest, arm.layer("5").digest);
    assert_eq!(amd.layer("5").diff_id, arm.layer("5").diff_id);
    for (a, b) in amd.layers.iter().zip(&arm.layers) {
        assert_eq!(a.number, b.number);
        if a.number != "5" {
            assert_ne!(a.digest, b.digest, "layer #{} differs per arch", a.number);
        }
    }
    // The index lists amd64 then arm64/v8, like NVIDIA's.
    let index = fixture.index.as_ref().unwrap().json();
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
    assert!(index["manifests"][0]["platform"].get("variant").is_none());
    assert_eq!(index["manifests"][1]["platform"]["architecture"], "arm64");
    assert_eq!(index["manifests"][1]["platform"]["variant"], "v8");
    assert_eq!(amd.env_var("NVARCH").as_deref(), Some("x86_64"));
    assert_eq!(arm.env_var("NVARCH").as_deref(), Some("sbsa"));
    assert_eq!(arm.config.json()["variant"], "v8");
}

#[test]
fn flavors_share_layers_by_digest_like_nvidia_builds() {
    let store = FixtureStore::new();
    let make = |flavor| store.cuda(&CudaSpec::new(V, flavor));
    let base = make(Flavor::Base);
    let runtime = make(Flavor::Runtime);
    let cudnn = make(Flavor::CudnnRuntime);
    let devel = make(Flavor::Devel);
    let numbers = |layers: Vec<&Layer>| layers.iter().map(|l| l.number).collect::<Vec<_>>();
    for arch in [Arch::Amd64, Arch::Arm64] {
        assert_eq!(
            numbers(runtime.new_layers_since(&base, arch)),
            ["6", "7", "8", "9"]
        );
        assert_eq!(numbers(cudnn.new_layers_since(&runtime, arch)), ["10"]);
        assert_eq!(numbers(devel.new_layers_since(&runtime, arch)), ["10'"]);
        assert_eq!(numbers(cudnn.new_layers_since(&devel, arch)), ["10"]);
        assert!(base.new_layers_since(&cudnn, arch).is_empty());
        let base_layers = base.platform(arch).layer_digests();
        assert_eq!(base_layers.len(), 5);
        for f in [&runtime, &cudnn, &devel] {
            assert_eq!(f.platform(arch).layer_digests()[..5], base_layers[..]);
        }
    }
    assert_eq!(cudnn.tag, "12.4.1-cudnn-runtime-ubuntu22.04");

    let env = |f: &Fixture, name| f.platform(Arch::Amd64).env_var(name);
    assert_eq!(env(&base, "CUDA_VERSION").as_deref(), Some("12.4.1"));
    assert_eq!(
        env(&base, "NV_CUDA_CUDART_VERSION").as_deref(),
        Some("12.4.127-1")
    );
    assert!(env(&base, "PATH")
        .unwrap()
        .starts_with("/usr/local/nvidia/bin:/usr/local/cuda/bin:"));
    assert_eq!(
        env(&base, "LD_LIBRARY_PATH").as_deref(),
        Some("/usr/local/nvidia/lib:/usr/local/nvidia/lib64")
    );
    assert_eq!(
        env(&base, "NVIDIA_DRIVER_CAPABILITIES").as_deref(),
        Some("compute,utility")
    );
    assert!(env(&base, "NVIDIA_REQUIRE_CUDA")
        .unwrap()
        .starts_with("cuda>=12.4 brand=tesla"));
    assert_eq!(env(&base, "NCCL_VERSION"), None);
    assert!(env(&runtime, "NCCL_VERSION").is_some());
    assert_eq!(
        env(&runtime, "NVIDIA_PRODUCT_NAME").as_deref(),
        Some("CUDA")
    );
    assert!(env(&cudnn, "NV_CUDNN_VERSION").is_some());
    assert_eq!(env(&runtime, "NV_CUDNN_VERSION"), None);
    assert_eq!(
        env(&devel, "LIBRARY_PATH").as_deref(),
        Some("/usr/local/cuda/lib64/stubs")
    );

    let config = |f: &Fixture| f.platform(Arch::Arm64).config.json();
    assert!(config(&base)["config"].get("Entrypoint").is_none());
    assert_eq!(
        config(&runtime)["config"]["Entrypoint"],
        serde_json::json!(["/opt/nvidia/nvidia_entrypoint.sh"])
    );
    assert_eq!(
        config(&cudnn)["config"]["Labels"]["com.nvidia.cudnn.version"],
        "9.1.0.70-1"
    );
    assert_eq!(
        config(&devel)["config"]["Labels"]["maintainer"],
        "NVIDIA CORPORATION <cudatools@nvidia.com>"
    );
    // Docker's rule: one non-empty history entry per layer.
    for f in [&base, &runtime, &cudnn, &devel] {
        let c = config(f);
        let non_empty = c["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h.get("empty_layer").is_none())
            .count();
        assert_eq!(non_empty, f.platform(Arch::Arm64).layers.len());
    }
}

#[test]
fn layer_digests_sizes_and_diff_ids_are_what_the_files_hold() {
    let fixture = Fixture::cuda(V, Flavor::CudnnRuntime, MediaTypes::Docker, Scale::TINY);
    for platform in &fixture.platforms {
        let config = platform.config.json();
        let diff_ids = strings(&config["rootfs"]["diff_ids"]);
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(diff_ids.len(), platform.layers.len());
        let manifest = platform.manifest.json();
        assert_eq!(
            manifest["config"]["digest"],
            platform.config.digest.as_str()
        );
        assert_eq!(manifest["config"]["size"], platform.config.size());
        for (i, layer) in platform.layers.iter().enumerate() {
            let bytes = layer.bytes();
            assert_eq!(bytes.len() as u64, layer.size);
            assert_eq!(
                format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
                layer.digest
            );
            assert_eq!(manifest["layers"][i]["digest"], layer.digest.as_str());
            assert_eq!(manifest["layers"][i]["size"], layer.size);
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut tar)
                .unwrap();
            assert_eq!(tar.len() as u64, layer.uncompressed_size);
            assert_eq!(
                format!("sha256:{}", hex::encode(Sha256::digest(&tar))),
                diff_ids[i]
            );
            let mut archive = tar::Archive::new(&tar[..]);
            let paths: Vec<String> = archive
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().display().to_string())
                .collect();
            assert!(
                paths.iter().any(|p| !p.ends_with('/')),
                "layer #{} has a file: {paths:?}",
                layer.number
            );
            if layer.number == "4" {
                assert_eq!(paths, ["etc/ld.so.conf.d/", "etc/ld.so.conf.d/nvidia.conf"]);
            }
        }
    }
}

/// Golden digests: if these change, every recorded expectation about fixture bytes is stale.
/// Update them only for an intended change of the generator (or of flate2's output).
const GOLDEN_LICENSE_LAYER: &str =
    "sha256:f0a70904dd4898325947a4d9337c4a269ca1822f7631f3e663d975e77abf494e";
const GOLDEN_RUNTIME_INDEX: &str =
    "sha256:94b84b303c29c2ccdcb97fea2e462794083e0253f611f657ec7d910aea43fa04";

#[test]
fn generation_is_deterministic_and_pinned() {
    let spec = CudaSpec::new(V, Flavor::Runtime);
    let a = FixtureStore::new().cuda(&spec);
    let b = FixtureStore::new().cuda(&spec);
    assert_eq!(a.top(), b.top());
    for (pa, pb) in a.platforms.iter().zip(&b.platforms) {
        assert_eq!(pa.manifest, pb.manifest);
        assert_eq!(pa.config, pb.config);
        assert_eq!(pa.layers.len(), pb.layers.len());
        for (la, lb) in pa.layers.iter().zip(&pb.layers) {
            assert_eq!(la.bytes(), lb.bytes());
        }
    }
    let license = &a.platform(Arch::Amd64).layer("5").digest;
    assert_eq!(license, GOLDEN_LICENSE_LAYER);
    assert_eq!(a.top().digest, GOLDEN_RUNTIME_INDEX);

    // The license layer is also the same across versions and rebuilds; the rest is not.
    let other = FixtureStore::new().cuda(&CudaSpec::new("12.6.0", Flavor::Base).rebuild(1));
    assert_eq!(&other.platform(Arch::Amd64).layer("5").digest, license);
    assert_ne!(
        other.platform(Arch::Amd64).layer("1").digest,
        a.platform(Arch::Amd64).layer("1").digest
    );
}

#[test]
fn scale_sets_sizes_proportionally_to_the_real_table() {
    let store = FixtureStore::new();
    let spec = CudaSpec::new(V, Flavor::Base).arches(&[Arch::Amd64]);
    let tiny = store.cuda(&spec);
    let double = store.cuda(&spec.clone().scale(Scale(0.002)));
    let near = |actual: u64, expected: f64| {
        let ratio = actual as f64 / expected;
        assert!((0.8..1.25).contains(&ratio), "{actual} vs {expected}");
    };
    let t = tiny.platform(Arch::Amd64);
    let d = double.platform(Arch::Amd64);
    near(t.layer("1").size, 29_533_419.0 * 0.001);
    near(t.layer("3").size, 57_593_640.0 * 0.001);
    near(d.layer("3").size, 57_593_640.0 * 0.002);
    // Small layers keep their real size whatever the scale.
    near(t.layer("5").size, 6_886.0);
    assert!(t.layer("4").size < 400, "nvidia.conf is tiny");
    assert_eq!(t.layer("5").digest, d.layer("5").digest);
    assert_ne!(t.layer("3").digest, d.layer("3").digest);
    // End-of-life images differ only in their config.
    let eol = store.cuda(&spec.clone().end_of_life(true));
    let e = eol.platform(Arch::Amd64);
    assert_eq!(e.env_var("NVIDIA_CUDA_END_OF_LIFE").as_deref(), Some("1"));
    assert_eq!(t.env_var("NVIDIA_CUDA_END_OF_LIFE"), None);
    assert_eq!(e.layer_digests(), t.layer_digests());
    // Single arch, without index: the tag names the manifest itself.
    let flat = store.cuda(&spec.clone().without_index());
    assert!(flat.index.is_none());
    assert_eq!(flat.top(), &flat.platform(Arch::Amd64).manifest);
}

#[test]
fn basic_auth_registry_refuses_anonymous_and_accepts_credentials() {
    let registry = TestRegistry::start_with_basic_auth("alice", "s3cret");
    let client = http_client();
    let v2 = format!("{}/v2/", registry.url());

    let anonymous = client.get(&v2).send().unwrap();
    assert_eq!(anonymous.status(), 401);
    let challenge = anonymous.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    let wrong = client
        .get(&v2)
        .basic_auth("alice", Some("nope"))
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client
        .get(&v2)
        .basic_auth("alice", Some("s3cret"))
        .send()
        .unwrap();
    assert_eq!(right.status(), 200);

    let store = FixtureStore::new();
    let image = store.plain("team/hello", "a", MediaTypes::Docker);
    Pusher::new(&registry).push(&image);
    let raw = skopeo_inspect(
        &[],
        &["--raw", "--creds", "alice:s3cret"],
        &registry.host(),
        "team/hello:latest",
    );
    assert_eq!(raw, image.top().bytes);
    let err = skopeo_inspect_fails(
        &["--raw", "--no-creds"],
        &registry.host(),
        "team/hello:latest",
    );
    assert!(
        err.contains("unauthorized") || err.contains("authentication required"),
        "{err}"
    );
}

#[test]
fn dead_and_blackhole_endpoints_fail_as_advertised() {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let dead = dead_endpoint();
    assert!(dead.starts_with("http://127.0.0.1:"));
    let err = client.get(format!("{dead}/v2/")).send().unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    let hole = Blackhole::start();
    let err = client
        .get(format!("{}/v2/", hole.url()))
        .send()
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
}

#[test]
fn untagged_push_moved_tag_and_deleted_blob() {
    let registry = TestRegistry::start();
    let pusher = Pusher::new(&registry);
    let store = FixtureStore::new();
    let spec = CudaSpec::new(V, Flavor::Base);
    let old = store.cuda(&spec);
    let reference = old.reference();

    // A mirror that has the content but not the tag.
    pusher.push_untagged(&old, &old.repo);
    let err = skopeo_inspect_fails(&["--raw"], &registry.host(), &reference);
    assert!(err.contains("manifest unknown"), "{err}");
    let by_digest = format!("{}@{}", old.repo, old.top().digest);
    assert_eq!(
        skopeo_inspect(&[], &["--raw"], &registry.host(), &by_digest),
        old.top().bytes
    );

    // Tag it, then NVIDIA rebuilds the tag: same name, new bytes.
    pusher.push(&old);
    assert_eq!(
        skopeo_inspect(&[], &["--raw"], &registry.host(), &reference),
        old.top().bytes
    );
    let new = store.cuda(&spec.clone().rebuild(1));
    assert_eq!(new.reference(), reference);
    assert_ne!(new.top().digest, old.top().digest);
    pusher.push(&new);
    assert_eq!(
        skopeo_inspect(&[], &["--raw"], &registry.host(), &reference),
        new.top().bytes
    );
    assert_eq!(
        new.new_layers_since(&old, Arch::Amd64)
            .iter()
            .map(|l| l.number)
            .collect::<Vec<_>>(),
        ["1", "2", "3", "4"],
        "a rebuild changes every layer but the license"
    );

    // A mirror that lost a blob.
    let layer = &new.platform(Arch::Arm64).layers[0];
    assert!(pusher.blob_exists(&new.repo, &layer.digest));
    pusher.delete_blob(&new.repo, &layer.digest);
    assert!(!pusher.blob_exists(&new.repo, &layer.digest));
    let deletes: Vec<Request> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0].status, 202);
}

#[test]
fn pull_through_mirror_fetches_from_upstream() {
    let upstream = TestRegistry::start();
    let image = FixtureStore::new().plain("library/hello", "mirror", MediaTypes::Oci);
    Pusher::new(&upstream).push(&image);
    let mirror = TestRegistry::start_mirror_of(&upstream);
    let raw = skopeo_inspect(&[], &["--raw"], &mirror.host(), "library/hello:latest");
    assert_eq!(raw, image.top().bytes);
    assert!(
        upstream
            .requests()
            .iter()
            .any(|r| r.path == "/v2/library/hello/manifests/latest"),
        "the mirror asked upstream: {:?}",
        upstream.requests()
    );
}

#[test]
fn sandboxed_commands_see_only_the_sandbox_environment() {
    let sandbox = Sandbox::new();
    let out = run_ok(&mut sandbox.command("env")).stdout;
    let out = String::from_utf8(out).unwrap();
    let keys: BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|kv| kv.0)
        .collect();
    let expected: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_CACHE_HOME",
        "XDG_RUNTIME_DIR",
        "DOCKER_CONFIG",
        "RUST_BACKTRACE",
    ]
    .into();
    assert_eq!(keys, expected);
    let home = format!("HOME={}", sandbox.home().display());
    assert!(out.lines().any(|l| l == home));
    assert!(sandbox.home().starts_with(sandbox.root()));
    assert_eq!(
        std::fs::read_dir(sandbox.docker_config_dir())
            .unwrap()
            .count(),
        0
    );

    let cli = cudaimg();
    assert!(std::path::Path::new(cli.get_program()).is_file());
    let envs: Vec<_> = cli.get_envs().map(|(k, _)| k.to_owned()).collect();
    assert!(envs.contains(&"DOCKER_CONFIG".into()));
    let root = cli.sandbox.root().to_path_buf();
    drop(cli);
    assert!(!root.exists(), "the sandbox goes with the command");
}

#[test]
fn token_auth_registry_challenges_and_accepts_tokens() {
    let tokens = TokenServer::start("bob", "hunter2");
    let registry = TestRegistry::start_with_token_auth(&tokens);
    let client = http_client();
    let v2 = format!("{}/v2/", registry.url());

    let anonymous = client.get(&v2).send().unwrap();
    assert_eq!(anonymous.status(), 401);
    let header = anonymous.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let challenge = parse_bearer_challenge(&header).unwrap_or_else(|| panic!("{header}"));
    assert_eq!(challenge["realm"], tokens.realm());
    assert_eq!(challenge["service"], common::token::SERVICE);

    // The realm wants the credentials.
    let scope = "repository:nvidia/cuda:pull";
    let realm = |user: Option<(&str, &str)>| {
        let mut request = client
            .get(tokens.realm())
            .query(&[("service", common::token::SERVICE), ("scope", scope)]);
        if let Some((u, p)) = user {
            request = request.basic_auth(u, Some(p));
        }
        request.send().unwrap()
    };
    assert_eq!(realm(None).status(), 401);
    assert_eq!(realm(Some(("bob", "wrong"))).status(), 401);
    let body: serde_json::Value = realm(Some(("bob", "hunter2"))).json().unwrap();
    let token = body["token"].as_str().unwrap();
    assert_eq!(
        client.get(&v2).bearer_auth(token).send().unwrap().status(),
        200
    );

    // A token signed by a key the registry does not trust is refused.
    let forger = TokenServer::start_anonymous();
    let forged = forger.issue("bob", &[scope]);
    assert_eq!(
        client.get(&v2).bearer_auth(forged).send().unwrap().status(),
        401
    );

    // Push and read back through the token flow (reqwest here, skopeo there).
    let image = FixtureStore::new().plain("nvidia/cuda", "token", MediaTypes::Docker);
    Pusher::new(&registry)
        .with_basic_auth("bob", "hunter2")
        .push(&image);
    let raw = skopeo_inspect(
        &[],
        &["--raw", "--creds", "bob:hunter2"],
        &registry.host(),
        "nvidia/cuda:latest",
    );
    assert_eq!(raw, image.top().bytes);

    let seen = tokens.requests();
    assert!(seen.len() >= 5, "{seen:?}");
    assert!(seen
        .iter()
        .all(|r| r.service.as_deref() == Some(common::token::SERVICE)));
    assert!(seen.iter().any(|r| r
        .scopes
        .iter()
        .any(|s| s == "repository:nvidia/cuda:pull,push,delete")));
    let granted: Vec<_> = seen.iter().filter(|r| r.status == 200).collect();
    assert!(granted.len() >= 3);
    assert!(granted
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Basic Ym9iOmh1bnRlcjI=")));
}
