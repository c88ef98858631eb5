//! `cudaimg push` and `cudaimg copy` against real distribution registries: htpasswd and
//! Bearer token auth, the fault proxy between cudaimg and either side, mounts, and what was
//! pushed read back by skopeo and a real Docker Engine (never by the code under test).

use cudaimg_test_support as common;

use common::b64;

use std::path::PathBuf;

use common::docker::{busybox, unavailable_reason, Runnable, TestDocker};
use common::push::http_client;
use common::{
    run_fails, run_ok, Arch, CudaSpec, Fault, FaultProxy, Fixture, FixtureStore, Flavor,
    MediaTypes, Pusher, Sandbox, Scale, TestRegistry, TokenServer,
};
use serde_json::Value;

/// A sandbox whose store holds `fixture` (amd64), pulled from a registry standing in for
/// docker.io.
struct Stored {
    sandbox: Sandbox,
    config: PathBuf,
    _upstream: TestRegistry,
    /// The stored name and the platform manifest's digest.
    name: String,
    digest: String,
}

fn stored(fixture: &Fixture) -> Stored {
    let upstream = TestRegistry::start();
    Pusher::new(&upstream).push(fixture);
    stored_from(upstream, &[fixture.reference()])
}

fn stored_from(upstream: TestRegistry, references: &[String]) -> Stored {
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&upstream.url(), &[]);
    let mut last = Value::Null;
    for r in references {
        last = json(run_ok(
            &mut sandbox.cli(&config, &["--json", "pull", "--platform", "linux/amd64", r]),
        ));
    }
    Stored {
        name: last["canonical"].as_str().unwrap().to_owned(),
        digest: last["digest"].as_str().unwrap().to_owned(),
        sandbox,
        config,
        _upstream: upstream,
    }
}

impl Stored {
    fn cli(&self, args: &[&str]) -> std::process::Command {
        self.sandbox.cli(&self.config, args)
    }
    fn push_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json", "push"];
        all.extend_from_slice(args);
        json(run_ok(&mut self.cli(&all)))
    }
    fn stored_blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::read(self.sandbox.store_dir().join("blobs/sha256").join(hex)).unwrap()
    }
}

fn json(out: std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn statuses(report: &Value) -> Vec<String> {
    report["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap().to_owned())
        .collect()
}

/// The manifest bytes at `base/v2/repo/manifests/reference`, with the harness's client.
fn manifest_at(
    base: &str,
    repo: &str,
    reference: &str,
    auth: Option<(&str, &str)>,
) -> (Vec<u8>, String) {
    let mut request = http_client()
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
        );
    if let Some((u, p)) = auth {
        request = request.basic_auth(u, Some(p));
    }
    let resp = request.send().unwrap();
    assert_eq!(resp.status(), 200, "GET manifest {repo}:{reference}");
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (resp.bytes().unwrap().to_vec(), ct)
}

fn sha256(bytes: &[u8]) -> String {
    common::fixtures::sha256_digest(bytes)
}

fn fixture(scale: Scale) -> Fixture {
    FixtureStore::shared().cuda(
        &CudaSpec::new("12.4.1", Flavor::Runtime)
            .media(MediaTypes::Docker)
            .scale(scale)
            .arches(&[Arch::Amd64]),
    )
}

#[test]
fn push_to_an_htpasswd_registry_is_byte_exact_and_skopeo_reads_it_back() {
    let fx = fixture(Scale::TINY);
    let s = stored(&fx);
    let dest = TestRegistry::start_with_basic_auth("pusher", "pw-9f3");
    let target = format!("{}/base/cuda:12.4.1-runtime", dest.host());

    // Without credentials: refused, with a hint naming docker login for that host.
    let out = run_fails(&mut s.cli(&["push", &s.name, &target]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("docker login {}", dest.host())),
        "{err}"
    );

    s.sandbox.write_docker_config(&serde_json::json!({
        "auths": { dest.host(): { "auth": b64("pusher:pw-9f3") } }
    }));
    let report = s.push_json(&[&s.name, &target]);
    assert_eq!(report["digest"], s.digest.as_str(), "{report:#}");
    assert!(
        statuses(&report).iter().all(|st| st == "uploaded"),
        "{report:#}"
    );
    assert_eq!(
        report["bytes_uploaded"].as_u64(),
        report["total_bytes"].as_u64()
    );

    // Byte-exact: the manifest at DEST is the stored one, under its own media type.
    let (bytes, content_type) = manifest_at(
        &dest.url(),
        "base/cuda",
        "12.4.1-runtime",
        Some(("pusher", "pw-9f3")),
    );
    assert_eq!(bytes, s.stored_blob(&s.digest));
    assert_eq!(sha256(&bytes), s.digest);
    assert_eq!(
        content_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    // skopeo reads it back, manifest and blobs.
    let creds = "--creds=pusher:pw-9f3";
    let raw = run_ok(s.sandbox.skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        creds,
        &format!("docker://{target}"),
    ]));
    assert_eq!(raw.stdout, bytes);
    let oci = s.sandbox.root().join("copied");
    run_ok(s.sandbox.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        "--src-creds=pusher:pw-9f3",
        &format!("docker://{target}"),
        &format!("oci:{}:x", oci.display()),
    ]));
    let m: Value = serde_json::from_slice(&bytes).unwrap();
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        let copied = std::fs::read(oci.join("blobs/sha256").join(&d[7..])).unwrap();
        assert_eq!(copied, s.stored_blob(d), "layer {d}");
    }

    // Again: everything is there already.
    let again = s.push_json(&[&s.name, &target]);
    assert!(
        statuses(&again).iter().all(|st| st == "skipped"),
        "{again:#}"
    );
    assert_eq!(again["bytes_uploaded"], 0);
}

#[test]
fn push_to_a_token_auth_registry_uses_docker_config_credentials() {
    let fx = fixture(Scale::TINY);
    let s = stored(&fx);
    let tokens = TokenServer::start("alice", "pw");
    let dest = TestRegistry::start_with_token_auth(&tokens);
    s.sandbox.write_docker_config(&serde_json::json!({
        "auths": { dest.host(): { "auth": b64("alice:pw") } }
    }));
    let target = format!("{}/team/cuda:1", dest.host());
    let report = s.push_json(&[&s.name, &target]);
    assert_eq!(report["digest"], s.digest.as_str());
    let token = tokens.issue("reader", &["repository:team/cuda:pull"]);
    let resp = http_client()
        .get(format!("{}/v2/team/cuda/manifests/1", dest.url()))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sha256(&resp.bytes().unwrap()), s.digest);
    let scopes: Vec<String> = tokens
        .requests()
        .iter()
        .flat_map(|r| r.scopes.clone())
        .collect();
    assert!(
        scopes
            .iter()
            .any(|sc| sc == "repository:team/cuda:pull,push"),
        "{scopes:?}"
    );
}

#[test]
fn docker_pulls_and_runs_what_was_pushed() {
    let Some(reason_or_docker) = (match unavailable_reason() {
        Some(why) => {
            common::skip(&why);
            None
        }
        None => Some(TestDocker::start()),
    }) else {
        return;
    };
    let d = reason_or_docker;
    let upstream = TestRegistry::start();
    let base = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, Scale::TINY);
    let amd64 = base.platform(Arch::Amd64);
    let image = Runnable::build(amd64, "pushed-and-running", &busybox());
    image.push(&Pusher::new(&upstream), amd64, "nvidia/cuda", "hello");
    let s = stored_from(upstream, &["nvidia/cuda:hello".to_owned()]);
    let dest = TestRegistry::start();
    let target = format!("{}/apps/hello:v1", dest.host());
    let report = s.push_json(&[&s.name, &target]);
    assert_eq!(report["digest"], image.manifest.digest.as_str());

    let pulled = d.docker(&["pull", &target]).output().unwrap();
    assert!(
        pulled.status.success(),
        "docker pull: {}\n{}",
        String::from_utf8_lossy(&pulled.stderr),
        d.log()
    );
    assert!(
        String::from_utf8_lossy(&pulled.stdout).contains(&image.manifest.digest),
        "{}",
        String::from_utf8_lossy(&pulled.stdout)
    );
    let out = d
        .docker(&["run", "--rm", "--network", "none", &target])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pushed-and-running"
    );
    let _ = d.docker(&["rmi", &target]).output();
}

/// Request body bytes the proxy read from cudaimg for blob uploads.
fn upload_bytes(proxy: &FaultProxy) -> u64 {
    proxy
        .requests()
        .iter()
        .filter(|r| r.path.contains("/blobs/uploads/"))
        .map(|r| r.request_bytes)
        .sum()
}

#[test]
fn a_cut_mid_upload_resumes_with_at_most_1_15x_the_image_sent() {
    let fx = fixture(Scale(0.004));
    let s = stored(&fx);
    let dest = TestRegistry::start();
    let proxy = FaultProxy::start(&dest.url());
    proxy.add(Fault::CutRequestAfter {
        method: "PATCH".into(),
        path_contains: "/blobs/uploads/".into(),
        skip: 1,
        bytes: 300_000,
        forward: false,
        times: 1,
    });
    let target = format!("{}/base/cuda:cut", proxy.host());
    let report = s.push_json(&[&s.name, &target, "--chunk-size", "1M", "-j", "2"]);
    assert_eq!(report["digest"], s.digest.as_str());
    let total = report["total_bytes"].as_u64().unwrap();
    assert!(
        total > 3 << 20,
        "the image is large enough to be chunked: {total}"
    );
    let resumes: u64 = report["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["resumes"].as_u64().unwrap())
        .sum();
    assert!(resumes >= 1, "{report:#}");
    assert!(proxy
        .requests()
        .iter()
        .any(cudaimg_test_support::ProxyRequest::fault_fired));
    let sent = upload_bytes(&proxy);
    assert!(
        sent as f64 <= 1.15 * total as f64,
        "{sent} bytes sent for a {total}-byte image"
    );
    let (bytes, _) = manifest_at(&dest.url(), "base/cuda", "cut", None);
    assert_eq!(sha256(&bytes), s.digest);
}

#[test]
fn a_500_on_a_patch_a_429_on_the_post_and_a_lost_session_all_recover() {
    let fx = fixture(Scale(0.004));
    let s = stored(&fx);
    let dest = TestRegistry::start();
    let proxy = FaultProxy::start(&dest.url());
    let status_on = |method: &str, skip, status, retry_after| Fault::StatusOn {
        method: method.into(),
        path_contains: "/blobs/uploads/".into(),
        skip,
        status,
        retry_after,
        www_authenticate: None,
        times: 1,
    };
    proxy.add(status_on("POST", 0, 429, Some(1)));
    proxy.add(status_on("PATCH", 1, 500, None));
    proxy.add(status_on("PATCH", 3, 404, None));
    let target = format!("{}/base/cuda:faults", proxy.host());
    let report = s.push_json(&[&s.name, &target, "--chunk-size", "1M", "-j", "1"]);
    assert_eq!(report["digest"], s.digest.as_str());
    let requests = proxy.requests();
    for (method, status) in [("POST", 429), ("PATCH", 500), ("PATCH", 404)] {
        assert!(
            requests
                .iter()
                .any(|r| r.method == method && r.status == Some(status)),
            "{method} {status} happened: {requests:#?}"
        );
    }
    let restarts: u64 = report["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["restarts"].as_u64().unwrap())
        .sum();
    assert_eq!(restarts, 1, "{report:#}");
    let (bytes, _) = manifest_at(&dest.url(), "base/cuda", "faults", None);
    assert_eq!(sha256(&bytes), s.digest);
}

#[test]
fn a_derived_image_pushed_beside_its_base_mounts_the_base_layers() {
    let upstream = TestRegistry::start();
    let base = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, Scale(0.004));
    let amd64 = base.platform(Arch::Amd64);
    Pusher::new(&upstream).push(&base);
    let derived = Runnable::build(amd64, "derived", &busybox());
    derived.push(&Pusher::new(&upstream), amd64, "team/app", "1");
    let s = stored_from(upstream, &[base.reference(), "team/app:1".to_owned()]);
    let dest = TestRegistry::start();
    let proxy = FaultProxy::start(&dest.url());
    let base_name = base.reference();
    s.push_json(&[&base_name, &format!("{}/base/cuda:1", proxy.host())]);
    let base_sent = upload_bytes(&proxy);
    proxy.clear_requests();

    let report = s.push_json(&["team/app:1", &format!("{}/team/app:1", proxy.host())]);
    assert_eq!(report["digest"], derived.manifest.digest.as_str());
    let mut mounted = 0;
    for b in report["blobs"].as_array().unwrap() {
        let d = b["digest"].as_str().unwrap();
        if amd64.layer_digests().iter().any(|l| l == d) {
            assert_eq!(b["status"], "mounted", "{report:#}");
            assert_eq!(b["mounted_from"], "base/cuda");
            mounted += 1;
        } else {
            assert_eq!(b["status"], "uploaded", "{report:#}");
        }
    }
    assert_eq!(mounted, amd64.layer_digests().len());
    // Only the new layer and the config crossed the wire.
    let sent = upload_bytes(&proxy);
    let new = (derived.layer.1.len() + derived.config.bytes.len()) as u64;
    assert_eq!(sent, new, "base push sent {base_sent}");
    assert!(base_sent >= amd64.layers_size(), "{base_sent}");
    let (bytes, _) = manifest_at(&dest.url(), "team/app", "1", None);
    assert_eq!(bytes, derived.manifest.bytes);
}

#[test]
fn a_corrupt_stored_blob_stops_the_push_and_is_never_committed() {
    let fx = fixture(Scale::TINY);
    let s = stored(&fx);
    let layer = fx.largest_layer(Arch::Amd64).digest.clone();
    let path = s.sandbox.store_dir().join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let dest = TestRegistry::start();
    let out = run_fails(&mut s.cli(&["push", &s.name, &format!("{}/x/y:1", dest.host())]));
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&layer) && err.contains("verify --repair"),
        "{err}"
    );
    assert!(!Pusher::new(&dest).blob_exists("x/y", &layer));
}

/// An official registry and a mirror (behind a fault proxy) holding the fixture, and a
/// destination behind another.
struct CopyEnv {
    sandbox: Sandbox,
    config: PathBuf,
    _official: TestRegistry,
    _mirror: TestRegistry,
    mirror_proxy: FaultProxy,
    dest: TestRegistry,
    dest_proxy: FaultProxy,
    fx: Fixture,
}

fn copy_env() -> CopyEnv {
    let fx = fixture(Scale(0.004));
    let official = TestRegistry::start();
    let mirror = TestRegistry::start();
    Pusher::new(&official).push(&fx);
    Pusher::new(&mirror).push(&fx);
    let mirror_proxy = FaultProxy::start(&mirror.url());
    let dest = TestRegistry::start();
    let dest_proxy = FaultProxy::start(&dest.url());
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[&mirror_proxy.url()]);
    CopyEnv {
        sandbox,
        config,
        _official: official,
        _mirror: mirror,
        mirror_proxy,
        dest,
        dest_proxy,
        fx,
    }
}

impl CopyEnv {
    fn copy(&self, repo: &str) -> Value {
        json(run_ok(&mut self.sandbox.cli(
            &self.config,
            &[
                "--json",
                "copy",
                "--platform",
                "linux/amd64",
                &self.fx.reference(),
                &format!("{}/{repo}:1", self.dest_proxy.host()),
                "--chunk-size",
                "1M",
            ],
        )))
    }
    fn amd64_digest(&self) -> String {
        self.fx.platform(Arch::Amd64).manifest.digest.clone()
    }
}

#[test]
fn copy_resumes_a_cut_on_the_source_side_with_range_in_the_same_upload() {
    let e = copy_env();
    let big = e.fx.largest_layer(Arch::Amd64).digest.clone();
    e.mirror_proxy.add(Fault::CutAfter {
        path_contains: big.clone(),
        bytes: 1_500_000,
        reset: true,
        times: 1,
    });
    let report = e.copy("team/cuda");
    assert_eq!(report["digest"], e.amd64_digest().as_str(), "{report:#}");
    let gets: Vec<_> = e
        .mirror_proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&big))
        .collect();
    assert_eq!(gets.len(), 1, "{gets:#?}");
    assert!(gets[0].fault_fired(), "{gets:#?}");
    // The rest came with `Range` from the next source (the mirror backs off after its cut):
    // the official registry served part of the blob, not all of it.
    let size = e.fx.largest_layer(Arch::Amd64).size;
    let by_role = |role: &str| {
        report["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["role"] == role)
            .unwrap()["bytes"]
            .as_u64()
            .unwrap()
    };
    let official = by_role("official");
    assert!(
        official > 0 && official <= size - 1_000_000,
        "official sent {official} of {size}: {report:#}"
    );
    // One upload session per blob: the cut did not start the upload over.
    let posts = e
        .dest_proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(
        posts,
        report["blobs"].as_array().unwrap().len(),
        "{report:#}"
    );
    let total = report["total_bytes"].as_u64().unwrap();
    assert!(upload_bytes(&e.dest_proxy) as f64 <= 1.15 * total as f64);
    assert!(
        by_role("mirror") + official <= total + 2_000_000,
        "{report:#}"
    );
    let (bytes, _) = manifest_at(&e.dest.url(), "team/cuda", "1", None);
    assert_eq!(sha256(&bytes), e.amd64_digest());
}

#[test]
fn copy_cancels_a_blob_with_a_flipped_byte_and_fetches_it_from_the_official_registry() {
    let e = copy_env();
    let big = e.fx.largest_layer(Arch::Amd64).digest.clone();
    e.mirror_proxy.add(Fault::FlipByte {
        path_contains: big.clone(),
        offset: 1000,
        times: 1,
    });
    let out = run_ok(&mut e.sandbox.cli(
        &e.config,
        &[
            "--json",
            "copy",
            "--platform",
            "linux/amd64",
            &e.fx.reference(),
            &format!("{}/team/cuda:1", e.dest_proxy.host()),
            "--chunk-size",
            "1M",
        ],
    ));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = json(out);
    assert_eq!(report["digest"], e.amd64_digest().as_str());
    assert!(
        err.contains(&big) && err.contains("hashed to"),
        "the bad source is named: {err}"
    );
    // The destination saw the session cancelled.
    assert!(
        e.dest_proxy
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path.contains("/blobs/uploads/")),
        "{:#?}",
        e.dest_proxy.requests()
    );
    let official = report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["role"] == "official")
        .unwrap();
    assert!(
        official["bytes"].as_u64().unwrap() >= e.fx.largest_layer(Arch::Amd64).size,
        "{report:#}"
    );
    let (bytes, _) = manifest_at(&e.dest.url(), "team/cuda", "1", None);
    assert_eq!(sha256(&bytes), e.amd64_digest());
    let layer = http_client()
        .get(format!("{}/v2/team/cuda/blobs/{big}", e.dest.url()))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(sha256(&layer), big);
}

/// A throttled link that cuts each upload once, at half its first body, and drops what it
/// cut (as a buffering proxy does): the bench's fault, at test size.
fn cut_each_upload(proxy: &FaultProxy, bytes_per_sec: u64) {
    proxy.add(Fault::Throttle { bytes_per_sec });
    proxy.add(Fault::CutEachUpload {
        percent: 50,
        unsized_at: 256 << 10,
    });
}

/// Upload sessions that were cut, and those that committed a blob (a closing `PUT` 201).
fn cut_and_committed(proxy: &FaultProxy) -> (usize, usize) {
    let requests = proxy.requests();
    let cut = requests
        .iter()
        .filter(|r| r.faults.contains(&"CutEachUpload"))
        .count();
    let committed = requests
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/"))
        .filter(|r| r.status == Some(201))
        .count();
    (cut, committed)
}

/// Every uploaded blob was cut once and resumed in the same session (no restart).
fn assert_each_upload_resumed_once(report: &Value) {
    let uploaded: Vec<&Value> = report["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["status"] == "uploaded")
        .collect();
    assert!(!uploaded.is_empty(), "{report:#}");
    for b in uploaded {
        assert_eq!(
            (b["resumes"].as_u64(), b["restarts"].as_u64()),
            (Some(1), Some(0)),
            "{b:#}"
        );
    }
}

#[test]
fn a_throttled_push_cut_once_per_upload_resumes_each_and_is_byte_exact() {
    let fx = fixture(Scale(0.004));
    let s = stored(&fx);
    let dest = TestRegistry::start();
    let proxy = FaultProxy::start(&dest.url());
    cut_each_upload(&proxy, 8 << 20);
    let target = format!("{}/base/cuda:throttled", proxy.host());
    let report = s.push_json(&[&s.name, &target, "--chunk-size", "512K"]);
    assert_eq!(report["digest"], s.digest.as_str(), "{report:#}");

    assert_cut_once_resumed_within_budget(&proxy, &report);

    // Byte-exact, as skopeo reads it from the registry itself.
    let raw = run_ok(s.sandbox.skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/base/cuda:throttled", dest.host()),
    ]));
    assert_eq!(raw.stdout, s.stored_blob(&s.digest));
    let m: Value = serde_json::from_slice(&raw.stdout).unwrap();
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        let got = http_client()
            .get(format!("{}/v2/base/cuda/blobs/{d}", dest.url()))
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        assert_eq!(sha256(&got), d, "layer {d}");
    }
}

#[test]
fn a_throttled_copy_cut_once_per_upload_resumes_each_and_is_byte_exact() {
    let e = copy_env();
    cut_each_upload(&e.dest_proxy, 8 << 20);
    let report = json(run_ok(&mut e.sandbox.cli(
        &e.config,
        &[
            "--json",
            "copy",
            "--platform",
            "linux/amd64",
            &e.fx.reference(),
            &format!("{}/copied/cuda:1", e.dest_proxy.host()),
            "--chunk-size",
            "512K",
        ],
    )));
    assert_eq!(report["digest"], e.amd64_digest(), "{report:#}");

    assert_cut_once_resumed_within_budget(&e.dest_proxy, &report);

    let raw = run_ok(e.sandbox.skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/copied/cuda:1", e.dest.host()),
    ]));
    assert_eq!(sha256(&raw.stdout), e.amd64_digest());
    let m: Value = serde_json::from_slice(&raw.stdout).unwrap();
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        let got = http_client()
            .get(format!("{}/v2/copied/cuda/blobs/{d}", e.dest.url()))
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        assert_eq!(sha256(&got), d, "layer {d}");
    }
}

/// Each uploaded blob met one cut and was committed once, each resumed once (never started
/// over), and the bytes sent stayed within 1.15x the image.
fn assert_cut_once_resumed_within_budget(proxy: &FaultProxy, report: &Value) {
    let (cut, committed) = cut_and_committed(proxy);
    let uploaded = statuses(report).iter().filter(|s| *s == "uploaded").count();
    assert_eq!(
        (cut, committed),
        (uploaded, uploaded),
        "{:#?}",
        proxy.requests()
    );
    assert_each_upload_resumed_once(report);
    let total = report["total_bytes"].as_u64().unwrap();
    let sent = upload_bytes(proxy);
    assert!(
        sent as f64 <= 1.15 * total as f64,
        "{sent} bytes sent for a {total}-byte image"
    );
}

/// Issue #23, item 1: a registry (the fault proxy rewriting a real one's answers) that takes
/// every `PATCH` with `202` and `Range: 0-0`. Each request that made no progress counts as a
/// failure, so the push ends within the retry limit with an error that says so, instead of
/// sending the same chunk forever.
#[test]
fn a_registry_that_never_holds_more_ends_the_push_within_the_retry_limit() {
    let fx = fixture(Scale(0.004));
    let s = stored(&fx);
    let dest = TestRegistry::start();
    let proxy = FaultProxy::start(&dest.url());
    proxy.add(Fault::PinUploadRange);
    let target = format!("{}/base/cuda:pinned", proxy.host());
    let out = run_fails(&mut s.cli(&["push", &s.name, &target, "--chunk-size", "1M"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no progress"), "{stderr}");
    let patches: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert!(
        patches.iter().any(|r| r.faults == ["PinUploadRange"]),
        "the fault never fired: {patches:?}"
    );
    // A few blobs are chunked; each gets at most its retries (6) after its first PATCH.
    assert!(patches.len() <= 40, "{} PATCHes", patches.len());
}

/// Issue #23, item 8: a registry (the fault proxy in front of a real one) that answers every
/// blob `HEAD` with `200` and a `Content-Length` that is not the blob's. The size is compared
/// before anything is skipped: every blob is sent, and the real registry takes the manifest.
#[test]
fn a_head_with_the_wrong_size_does_not_skip_the_blob() {
    let fx = fixture(Scale::TINY);
    let s = stored(&fx);
    let dest = TestRegistry::start();
    let proxy = FaultProxy::start(&dest.url());
    proxy.add(Fault::Status {
        path_contains: "/blobs/sha256:".into(),
        status: 200,
        retry_after: None,
        times: common::proxy::ALWAYS,
    });
    let target = format!("{}/base/cuda:head", proxy.host());
    let report = s.push_json(&[&s.name, &target]);
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.method == "HEAD" && r.faults == ["Status"]),
        "the fault never fired"
    );
    assert!(
        statuses(&report).iter().all(|st| st != "skipped"),
        "{report:#}"
    );
    let (bytes, _) = manifest_at(&dest.url(), "base/cuda", "head", None);
    assert_eq!(sha256(&bytes), s.digest);
}

/// Issue 22 item 4: a push through a proxy that buffers request bodies (nginx's default: a
/// cut mid-body leaves the registry nothing, and the session's status says so), with no
/// option set. Each blob's first body is cut at half: a sixteenth of the blob goes first, so
/// a cut costs little, and the lesson (bodies of 8 MiB at most there) is reported, kept in
/// the store, and used by the next push without a new cut being needed to learn it.
#[test]
fn a_push_through_a_buffering_proxy_loses_little_per_cut_with_no_option_set() {
    let fx = fixture(Scale(0.02));
    let s = stored(&fx);
    let dest = TestRegistry::start();
    let proxy = FaultProxy::start(&dest.url());
    proxy.add(Fault::CutEachUpload {
        percent: 50,
        unsized_at: 256 << 10,
    });
    let target = format!("{}/base/cuda:buffered", proxy.host());
    let report = s.push_json(&[&s.name, &target]);
    assert_eq!(report["digest"], s.digest.as_str(), "{report:#}");
    assert_cut_once_resumed_within_budget(&proxy, &report);
    assert_eq!(report["body_limit"], 8 << 20, "{report:#}");
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("buffers bodies"), "{warnings}");
    // Byte-exact, as skopeo reads it from the registry itself.
    let raw = run_ok(s.sandbox.skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/base/cuda:buffered", dest.host()),
    ]));
    assert_eq!(raw.stdout, s.stored_blob(&s.digest));

    // Kept in the store for this registry.
    let kept: Value = serde_json::from_slice(
        &std::fs::read(s.sandbox.store_dir().join("state/upload-limits.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept[proxy.host()]["max_body"], 8 << 20, "{kept:#}");
    // A later push there starts with it: no body over 8 MiB, and no new lesson to report.
    proxy.clear_requests();
    let report = s.push_json(&[
        &s.name,
        &format!("{}/other/cuda:buffered", proxy.host()),
        "--mount-from",
        "none/none",
    ]);
    assert_eq!(report["body_limit"], 8 << 20, "{report:#}");
    assert!(
        !report["warnings"].to_string().contains("buffers bodies"),
        "{report:#}"
    );
    let largest = proxy
        .requests()
        .iter()
        .filter(|r| r.path.contains("/blobs/uploads/"))
        .map(|r| r.request_bytes)
        .max()
        .unwrap_or(0);
    assert!(
        largest <= (8 << 20) + (64 << 10),
        "a body of {largest} bytes"
    );
}

/// The other side of the lesson: a registry that keeps what arrived of a cut body (no
/// buffering proxy) teaches nothing, and bodies stay large.
#[test]
fn a_cut_that_the_registry_kept_part_of_teaches_no_body_limit() {
    let fx = fixture(Scale(0.02));
    let s = stored(&fx);
    let dest = TestRegistry::start();
    let proxy = FaultProxy::start(&dest.url());
    proxy.add(Fault::CutRequestAfter {
        method: "PATCH".into(),
        path_contains: "/blobs/uploads/".into(),
        skip: 1,
        bytes: 600 << 10,
        forward: true,
        times: 1,
    });
    let target = format!("{}/base/cuda:streamed", proxy.host());
    let report = s.push_json(&[&s.name, &target]);
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.faults.contains(&"CutRequestAfter")),
        "{:#?}",
        proxy.requests()
    );
    assert_eq!(report["digest"], s.digest.as_str(), "{report:#}");
    assert_eq!(report["body_limit"], Value::Null, "{report:#}");
    assert!(!s
        .sandbox
        .store_dir()
        .join("state/upload-limits.json")
        .exists());
}

/// Issue 23: a registry (the fault proxy in front of a real one) that answers a write with
/// `307` to another host: the manifest `PUT`, an upload's `POST`, a chunk's `PATCH` and the
/// closing `PUT`. The other host is a second proxy of the same registry, so a followed
/// redirect would succeed there; writes stay on the registry's origin instead: the push
/// fails, saying why, and the other host sees no write.
#[test]
fn a_write_redirected_to_another_host_fails_the_push_and_is_not_sent_there() {
    let fx = fixture(Scale(0.004));
    let s = stored(&fx);
    for (method, path) in [
        ("PUT", "/manifests/"),
        ("POST", "/blobs/uploads/"),
        ("PATCH", "/blobs/uploads/"),
        ("PUT", "/blobs/uploads/"),
    ] {
        let dest = TestRegistry::start();
        let front = FaultProxy::start(&dest.url());
        let elsewhere = FaultProxy::start(&dest.url());
        front.add(Fault::RedirectWrites {
            method: method.into(),
            path_contains: path.into(),
            to: elsewhere.url(),
        });
        let target = format!("{}/base/cuda:redirected", front.host());
        let out = run_fails(&mut s.cli(&["push", &s.name, &target, "--chunk-size", "1M"]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            front
                .requests()
                .iter()
                .any(|r| r.method == method && r.faults == ["RedirectWrites"]),
            "{method} {path}: the fault never fired"
        );
        assert!(
            stderr.contains("another origin") && stderr.contains(&elsewhere.host()),
            "{method} {path}: {stderr}"
        );
        let writes: Vec<_> = elsewhere
            .requests()
            .into_iter()
            .filter(|r| r.method != "GET" && r.method != "HEAD")
            .collect();
        assert!(writes.is_empty(), "{method} {path}: {writes:?}");
    }
}
