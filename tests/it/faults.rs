//! Pulls through a misbehaving proxy in front of a real registry: cut connections, 5xx, 429
//! with Retry-After, stalls, flipped bytes, ignored ranges, a slow source, a mirror that goes
//! down, blob redirects to a CDN, and `kill -9` in the middle. Each pull must end with the
//! right digests, and its byte count must show resumption, not restart.

use cudaimg_test_support as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::ALWAYS;
use common::{
    run_ok, Arch, CudaSpec, Fault, FaultProxy, Fixture, FixtureStore, Flavor, Layer, MediaTypes,
    Pusher, Sandbox, Scale, TestRegistry,
};
use serde_json::Value;

/// A runtime image whose largest layer is ~7 MB.
fn image() -> Fixture {
    Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale(0.005))
}

/// A registry holding [`image`].
fn serving_image() -> (TestRegistry, Fixture) {
    let registry = TestRegistry::start();
    let fx = image();
    Pusher::new(&registry).push(&fx);
    (registry, fx)
}

fn largest(fx: &Fixture) -> &Layer {
    fx.largest_layer(Arch::Amd64)
}

fn total(fx: &Fixture) -> u64 {
    fx.image_bytes(Arch::Amd64)
}

struct Setup {
    sandbox: Sandbox,
    config: PathBuf,
}

fn setup(official: &str, mirrors: &[&str]) -> Setup {
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(official, mirrors);
    Setup { sandbox, config }
}

impl Setup {
    fn cmd(&self, args: &[&str]) -> Command {
        self.sandbox.cli(&self.config, args)
    }

    fn pull(&self, fx: &Fixture, extra: &[&str]) -> Value {
        let mut args = vec![
            "--json",
            "pull",
            "--platform",
            "linux/amd64",
            "--stall-timeout",
            "1",
        ];
        args.extend_from_slice(extra);
        let reference = fx.reference();
        args.push(&reference);
        let out = run_ok(&mut self.cmd(&args));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["digest"], fx.platform(Arch::Amd64).manifest.digest);
        r
    }

    fn verify(&self) {
        run_ok(&mut self.cmd(&["verify"]));
    }

    fn store(&self) -> PathBuf {
        self.sandbox.store_dir()
    }
}

fn warnings(r: &Value) -> String {
    r["warnings"].to_string()
}

fn source<'a>(r: &'a Value, url: &str) -> &'a Value {
    r["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["url"] == url)
        .unwrap()
}

fn layer_source<'a>(r: &'a Value, digest: &str) -> &'a str {
    let l = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["digest"] == digest)
        .unwrap();
    l["source"].as_str().unwrap()
}

#[test]
fn a_cut_connection_resumes_with_range_from_the_byte_reached() {
    let (registry, fx) = serving_image();
    let big = largest(&fx);
    for reset in [false, true] {
        // The only source: resumption must come back to it, after its backoff.
        let proxy = FaultProxy::start(&registry.url());
        let third = big.size / 3;
        proxy.add(Fault::CutAfter {
            path_contains: big.digest.clone(),
            bytes: third,
            reset,
            times: 2,
        });
        let s = setup(&proxy.url(), &[]);
        let r = s.pull(&fx, &[]);
        assert_eq!(
            r["bytes_downloaded"],
            total(&fx),
            "reset={reset}: bytes were fetched twice"
        );
        let ranges: Vec<Option<String>> = proxy
            .requests()
            .into_iter()
            .filter(|q| q.path.contains(&big.digest) && q.method == "GET")
            .map(|q| q.range)
            .collect();
        let expected = [
            None,
            Some(format!("bytes={third}-")),
            Some(format!("bytes={}-", 2 * third)),
        ];
        assert_eq!(ranges, expected, "reset={reset}");
        assert!(warnings(&r).contains("transfer"), "{}", warnings(&r));
        s.verify();
    }
}

#[test]
fn server_errors_fall_back_to_the_next_source_and_the_report_says_so() {
    let (registry, fx) = serving_image();
    let mirror = FaultProxy::start(&registry.url());
    mirror.add(Fault::Status {
        path_contains: "/blobs/".into(),
        status: 503,
        retry_after: None,
        times: ALWAYS,
    });
    let s = setup(&registry.url(), &[&mirror.url()]);
    let mut cmd = s.cmd(&[
        "-v",
        "--json",
        "pull",
        "--platform",
        "linux/amd64",
        &fx.reference(),
    ]);
    let out = run_ok(&mut cmd);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    for l in &fx.platform(Arch::Amd64).layers {
        assert!(layer_source(&r, &l.digest).starts_with(&registry.url()));
    }
    assert_eq!(r["bytes_downloaded"], total(&fx));
    let m = source(&r, &mirror.url());
    assert_eq!(m["bytes"], 0);
    assert_eq!(m["failures"][0]["kind"], "server-error", "{m}");
    assert_eq!(source(&r, &registry.url())["bytes"], total(&fx));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("source {}", mirror.url())) && stderr.contains("server-error x"),
        "{stderr}"
    );
    // Backoff: the failing mirror was not asked first again for every blob.
    let blob_gets = mirror
        .requests()
        .iter()
        .filter(|q| q.path.contains("/blobs/"))
        .count();
    assert!(
        blob_gets < fx.platform(Arch::Amd64).layers.len(),
        "{blob_gets} blob requests to a failing mirror"
    );

    // A lone source that fails twice, then recovers, is retried after a backoff.
    let flaky = FaultProxy::start(&registry.url());
    flaky.add(Fault::Status {
        path_contains: big_path(&fx),
        status: 502,
        retry_after: None,
        times: 2,
    });
    let s = setup(&flaky.url(), &[]);
    let r = s.pull(&fx, &[]);
    assert_eq!(r["bytes_downloaded"], total(&fx));
}

fn big_path(fx: &Fixture) -> String {
    format!("/blobs/{}", largest(fx).digest)
}

#[test]
fn a_429_is_honoured_while_another_source_serves() {
    let (registry, fx) = serving_image();
    let big = largest(&fx);

    // Two sources: the throttled mirror's blob goes to the official registry meanwhile.
    let mirror = FaultProxy::start(&registry.url());
    mirror.add(Fault::Status {
        path_contains: big_path(&fx),
        status: 429,
        retry_after: Some(30),
        times: ALWAYS,
    });
    let s = setup(&registry.url(), &[&mirror.url()]);
    let started = Instant::now();
    let r = s.pull(&fx, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it waited out Retry-After instead of using the other source"
    );
    assert!(layer_source(&r, &big.digest).starts_with(&registry.url()));
    assert!(warnings(&r).contains("rate-limited"), "{}", warnings(&r));
    // One 429 was enough: the mirror was not asked for that blob again during its Retry-After.
    let asked = mirror
        .requests()
        .iter()
        .filter(|q| q.path.contains(&big.digest))
        .count();
    assert_eq!(asked, 1);

    // A lone source: its Retry-After is waited out, then the blob comes from it.
    let lone = FaultProxy::start(&registry.url());
    lone.add(Fault::Status {
        path_contains: big_path(&fx),
        status: 429,
        retry_after: Some(2),
        times: 1,
    });
    let s = setup(&lone.url(), &[]);
    let started = Instant::now();
    let r = s.pull(&fx, &[]);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After was not honoured"
    );
    assert_eq!(r["bytes_downloaded"], total(&fx));
}

#[test]
fn a_stall_ends_the_request_and_the_blob_resumes_elsewhere() {
    let (registry, fx) = serving_image();
    let big = largest(&fx);
    let mirror = FaultProxy::start(&registry.url());
    mirror.add(Fault::Stall {
        path_contains: big.digest.clone(),
        after_bytes: big.size / 3,
        for_secs: 20,
        times: ALWAYS,
    });
    let s = setup(&registry.url(), &[&mirror.url()]);
    let started = Instant::now();
    let r = s.pull(&fx, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the stall was waited out"
    );
    assert!(warnings(&r).contains("stall"), "{}", warnings(&r));
    // The first third came from the mirror, the rest from the registry: nothing twice.
    assert_eq!(r["bytes_downloaded"], total(&fx));
    assert!(source(&r, &mirror.url())["bytes"].as_u64().unwrap() >= big.size / 3);
    let resumed = registry
        .log()
        .lines()
        .any(|l| l.contains(&big.digest[7..]) && l.contains(" 206 "));
    assert!(
        resumed,
        "the registry never answered a Range request for the stalled layer"
    );
    s.verify();
}

#[test]
fn a_flipped_byte_is_discarded_fetched_elsewhere_and_reported() {
    let (registry, fx) = serving_image();
    let big = largest(&fx);
    let mirror = FaultProxy::start(&registry.url());
    mirror.add(Fault::FlipByte {
        path_contains: big.digest.clone(),
        offset: 12345,
        times: ALWAYS,
    });
    let s = setup(&registry.url(), &[&mirror.url()]);
    let r = s.pull(&fx, &[]);
    assert_eq!(
        r["bytes_downloaded"],
        total(&fx) + big.size,
        "one blob twice, no more"
    );
    assert!(layer_source(&r, &big.digest).starts_with(&registry.url()));
    let w = warnings(&r);
    assert!(
        w.contains(&big.digest) && w.contains(&mirror.url()) && w.contains("discarded"),
        "{w}"
    );
    assert!(w.contains("digest-mismatch"), "{w}");
    s.verify();

    // One source that corrupts once: one more full try from it, then the right bytes.
    let lone = FaultProxy::start(&registry.url());
    lone.add(Fault::FlipByte {
        path_contains: big.digest.clone(),
        offset: 7,
        times: 1,
    });
    let s = setup(&lone.url(), &[]);
    let r = s.pull(&fx, &[]);
    assert_eq!(r["bytes_downloaded"], total(&fx) + big.size);
    s.verify();
}

/// The resumed request after the cut gets the whole body (`200`): the held prefix is skipped
/// as it streams and the hash continues from it (verify re-hashes the stored blob).
#[test]
fn a_source_that_ignores_range_is_used_skipping_the_bytes_held() {
    let (registry, fx) = serving_image();
    let big = largest(&fx);
    let proxy = FaultProxy::start(&registry.url());
    proxy.add(Fault::CutAfter {
        path_contains: big.digest.clone(),
        bytes: 1_000_000,
        reset: false,
        times: 1,
    });
    proxy.add(Fault::IgnoreRange {
        path_contains: big.digest.clone(),
        times: ALWAYS,
    });
    let s = setup(&proxy.url(), &[]);
    let r = s.pull(&fx, &[]);
    assert_eq!(r["bytes_downloaded"], total(&fx) + 1_000_000);
    s.verify();
}

#[test]
fn a_very_slow_source_still_delivers_every_byte_once() {
    let registry = TestRegistry::start();
    let fx = FixtureStore::shared().cuda(&CudaSpec::new("12.4.1", Flavor::Base).scale(Scale(0.02)));
    Pusher::new(&registry).push(&fx);
    let proxy = FaultProxy::start(&registry.url());
    proxy.add(Fault::Throttle {
        bytes_per_sec: 1_000_000,
    });
    let s = setup(&proxy.url(), &[]);
    let r = s.pull(&fx, &[]);
    assert_eq!(r["bytes_downloaded"], total(&fx));
    assert_eq!(r["warnings"], serde_json::json!([]));
}

#[test]
fn a_mirror_that_goes_down_mid_pull_hands_over_to_the_registry() {
    let (registry, fx) = serving_image();
    let big = largest(&fx);
    let mirror = FaultProxy::start(&registry.url());
    mirror.add(Fault::Throttle {
        bytes_per_sec: 2_000_000,
    });
    let s = setup(&registry.url(), &[&mirror.url()]);
    let child = s
        .cmd(&[
            "--json",
            "pull",
            "--platform",
            "linux/amd64",
            "--stall-timeout",
            "1",
            &fx.reference(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_partial(&s.store(), 1_000_000, &big.digest);
    mirror.add(Fault::Refuse);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["digest"], fx.platform(Arch::Amd64).manifest.digest);
    assert!(layer_source(&r, &big.digest).starts_with(&registry.url()));
    // Whatever the mirror had delivered of the big layer was kept.
    let from_mirror = source(&r, &mirror.url())["bytes"].as_u64().unwrap();
    assert!(from_mirror >= 1_000_000);
    assert_eq!(
        r["bytes_downloaded"].as_u64().unwrap(),
        total(&fx),
        "bytes were fetched twice"
    );
    s.verify();
}

/// Waits until the blob's partial file holds at least `bytes` (bounded: 60 s).
fn wait_for_partial(store: &Path, bytes: u64, digest: &str) -> u64 {
    let path = store
        .join("ingest")
        .join(format!("{}.partial", &digest[7..]));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        if len >= bytes {
            return len;
        }
        assert!(
            Instant::now() < deadline,
            "the partial file never reached {bytes} bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_mid_pull_leaves_a_sound_store_and_the_next_pull_resumes() {
    let (registry, fx) = serving_image();
    let big = largest(&fx);
    let slow = FaultProxy::start(&registry.url());
    slow.add(Fault::Throttle {
        bytes_per_sec: 2_000_000,
    });
    let s = setup(&slow.url(), &[]);
    let mut child = s
        .cmd(&[
            "--json",
            "pull",
            "--platform",
            "linux/amd64",
            &fx.reference(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = wait_for_partial(&s.store(), 2_000_000, &big.digest);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Sound after the crash: every stored blob whole, the partial left for resumption.
    let out = run_ok(&mut s.cmd(&["--json", "verify"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["problems"], serde_json::json!([]));
    assert!(v["partials"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(
        v["images"], 0,
        "an image was named before its blobs were stored"
    );

    slow.clear();
    let r = s.pull(&fx, &[]);
    let second = r["bytes_downloaded"].as_u64().unwrap();
    assert!(
        second <= total(&fx) - seen,
        "the second pull fetched {second} of {}: no resumption",
        total(&fx)
    );
    let resumed = slow
        .requests()
        .iter()
        .any(|q| q.path.contains(&big.digest) && q.range.is_some());
    assert!(resumed, "no Range request after the crash");
    s.verify();
}

#[test]
fn blob_redirects_to_a_cdn_never_carry_the_registry_credentials() {
    let (registry, fx) = serving_image();
    let cdn = FaultProxy::start_cdn(&registry.url());
    let front = FaultProxy::start(&registry.url());
    front.add(Fault::RequireBasic {
        user: "u".into(),
        pass: "cdn-test-secret".into(),
    });
    front.add(Fault::RedirectBlobs { to: cdn.url() });
    let s = setup(&front.url(), &[]);
    s.sandbox.write_docker_config(&serde_json::json!({
        "auths": { front.host(): { "auth": "dTpjZG4tdGVzdC1zZWNyZXQ=" } }
    }));
    let mut cmd = s.cmd(&[
        "-v",
        "--json",
        "pull",
        "--platform",
        "linux/amd64",
        &fx.reference(),
    ]);
    let out = run_ok(&mut cmd);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["bytes_downloaded"], total(&fx));

    let front_reqs = front.requests();
    assert!(front_reqs
        .iter()
        .filter(|q| q.path.contains("/blobs/"))
        .all(|q| q.status == Some(307)));
    assert!(front_reqs.iter().any(|q| q
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Basic "))));
    let cdn_reqs = cdn.requests();
    assert_eq!(
        cdn_reqs.iter().filter(|q| q.status == Some(200)).count(),
        fx.platform(Arch::Amd64).layers.len() + 1
    );
    for q in &cdn_reqs {
        assert_eq!(q.authorization, None, "credentials reached the CDN: {q:?}");
    }
    // Neither the password nor the CDN's signature is printed.
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains("cdn-test-secret") && !all.contains("secret-sig"),
        "{all}"
    );
}

#[test]
fn kill_9_at_many_moments_never_leaves_a_store_that_fails_verify() {
    let (registry, fx) = serving_image();
    let slow = FaultProxy::start(&registry.url());
    slow.add(Fault::Throttle {
        bytes_per_sec: 8_000_000,
    });
    let s = setup(&slow.url(), &[]);
    // Kill points spread over the whole pull (~1 s at this rate), manifests and index included.
    for delay_ms in [0u64, 30, 90, 200, 350, 500, 700, 900, 1100] {
        let mut child = s
            .cmd(&["pull", "--platform", "linux/amd64", &fx.reference()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        if !s.store().join("oci-layout").exists() {
            // Killed before the store was complete: the next pull finishes creating it.
            continue;
        }
        let out = run_ok(&mut s.cmd(&["--json", "verify"]));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["problems"],
            serde_json::json!([]),
            "after a kill at {delay_ms} ms"
        );
    }
    slow.clear();
    let r = s.pull(&fx, &[]);
    assert!(
        r["bytes_downloaded"].as_u64().unwrap() < total(&fx),
        "nothing was resumed"
    );
    s.verify();
}

#[test]
fn a_huge_retry_after_does_not_crash_and_other_sources_serve() {
    let (registry, fx) = serving_image();
    let mirror = FaultProxy::start(&registry.url());
    mirror.add(Fault::Status {
        path_contains: "/blobs/".into(),
        status: 429,
        retry_after: Some(u64::MAX),
        times: ALWAYS,
    });
    let s = setup(&registry.url(), &[&mirror.url()]);
    let r = s.pull(&fx, &[]);
    assert_eq!(r["bytes_downloaded"], total(&fx));
}

#[test]
fn a_mirror_that_never_answers_costs_timeouts_not_a_hang() {
    let (registry, fx) = serving_image();
    let silent = common::Blackhole::start();
    let s = setup(&registry.url(), &[silent.url()]);
    let started = Instant::now();
    let r = s.pull(&fx, &[]);
    assert_eq!(r["bytes_downloaded"], total(&fx));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        r["warnings"].to_string().contains(silent.url()),
        "{}",
        r["warnings"]
    );
}

#[test]
fn a_source_that_restarts_and_cuts_every_time_is_given_up_quickly() {
    let (registry, fx) = serving_image();
    let big = largest(&fx);
    let proxy = FaultProxy::start(&registry.url());
    proxy.add(Fault::IgnoreRange {
        path_contains: big.digest.clone(),
        times: ALWAYS,
    });
    proxy.add(Fault::CutAfter {
        path_contains: big.digest.clone(),
        bytes: big.size / 2,
        reset: false,
        times: ALWAYS,
    });
    let s = setup(&proxy.url(), &[]);
    let out = common::run_fails(&mut s.cmd(&[
        "pull",
        "--platform",
        "linux/amd64",
        "--stall-timeout",
        "1",
        &fx.reference(),
    ]));
    assert_eq!(out.status.code(), Some(1));
    let gets = proxy
        .requests()
        .iter()
        .filter(|q| q.method == "GET" && q.path.contains(&big.digest))
        .count();
    assert!(
        gets <= 5,
        "{gets} full downloads of a blob that could never complete"
    );
}

#[test]
fn credentials_are_not_sent_to_a_redirect_target_that_asks_for_them() {
    let (registry, fx) = serving_image();
    let cdn = FaultProxy::start(&registry.url());
    cdn.add(Fault::RequireBasic {
        user: "u".into(),
        pass: "cdn-test-secret".into(),
    });
    let front = FaultProxy::start(&registry.url());
    front.add(Fault::RequireBasic {
        user: "u".into(),
        pass: "cdn-test-secret".into(),
    });
    front.add(Fault::RedirectBlobs { to: cdn.url() });
    let s = setup(&front.url(), &[]);
    s.sandbox.write_docker_config(&serde_json::json!({
        "auths": { front.host(): { "auth": "dTpjZG4tdGVzdC1zZWNyZXQ=" } }
    }));
    let out =
        common::run_fails(&mut s.cmd(&["pull", "--platform", "linux/amd64", &fx.reference()]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not sent to another host"), "{err}");
    for q in cdn.requests() {
        assert_eq!(
            q.authorization, None,
            "credentials reached the redirect target: {q:?}"
        );
    }
}

#[test]
fn a_source_sending_more_than_the_blob_is_told_so_and_the_next_one_serves() {
    let (registry, fx) = serving_image();
    let big = largest(&fx);
    let mirror = FaultProxy::start(&registry.url());
    let extra = 300_000;
    mirror.add(Fault::AppendBytes {
        path_contains: big.digest.clone(),
        bytes: extra,
        times: ALWAYS,
    });
    let s = setup(&registry.url(), &[&mirror.url()]);
    let r = s.pull(&fx, &[]);
    assert!(layer_source(&r, &big.digest).starts_with(&registry.url()));
    assert!(mirror
        .requests()
        .iter()
        .any(|q| q.faults.contains(&"AppendBytes")));
    let w = warnings(&r);
    let said = format!("sent more than the {} bytes expected (at least ", big.size);
    let at = w
        .find(&said)
        .unwrap_or_else(|| panic!("no `{said}` in {w}"));
    let count: u64 = w[at + said.len()..]
        .split(')')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {w}"));
    assert!(
        (big.size + 1..=big.size + extra).contains(&count),
        "{count} for a {}-byte blob: {w}",
        big.size
    );
    assert!(w.contains("size-mismatch"), "{w}");
    s.verify();
}

#[test]
fn a_refused_redirect_says_why_it_was_refused() {
    let (registry, fx) = serving_image();
    // A scheme that is not http(s), from an endpoint nobody marked insecure.
    let front = FaultProxy::start(&registry.url());
    front.add(Fault::RedirectBlobs {
        to: "file:///etc".into(),
    });
    let s = setup(&registry.url(), &[&front.url()]);
    let r = s.pull(&fx, &[]);
    let w = warnings(&r);
    assert!(
        w.contains("a redirect to a `file:` URL, not followed: only http and https are"),
        "{w}"
    );
    assert!(!w.contains("insecure"), "{w}");
    assert!(
        front.requests().iter().any(|q| q.status == Some(307)),
        "no redirect was sent"
    );

    // Another origin, from an endpoint marked insecure: that is the reason then.
    let cdn = FaultProxy::start_cdn(&registry.url());
    let front = FaultProxy::start(&registry.url());
    front.add(Fault::RedirectBlobs { to: cdn.url() });
    let s = setup(&registry.url(), &[]);
    let config = s.sandbox.write(
        "mirrors.toml",
        format!(
            "[registries.\"docker.io\"]\nendpoint = \"{}\"\nmirrors = [{{ url = \"{}\", insecure = true }}]\n",
            registry.url(),
            front.url()
        ),
    );
    assert_eq!(config, s.config);
    let r = s.pull(&fx, &[]);
    let w = warnings(&r);
    assert!(
        w.contains(&format!(
            "a redirect to another origin, `{}`, not followed for an endpoint marked insecure",
            cdn.url().trim_end_matches('/')
        )),
        "{w}"
    );
    assert!(cdn.requests().is_empty());
}
