//! One large layer filled from two sources at once with parallel Range requests: verified
//! end to end, resumable after a crash, and robust to one source failing midway.

use cudaimg_test_support as common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::proxy::ALWAYS;
use common::{
    run_ok, Arch, CudaSpec, Fault, FaultProxy, Fixture, FixtureStore, Flavor, Layer, Pusher,
    Sandbox, Scale, TestRegistry,
};
use serde_json::Value;

/// A runtime image whose largest layer is ~69 MB: above the parallel threshold (64 MiB).
fn image() -> Fixture {
    FixtureStore::shared().cuda(&CudaSpec::new("12.4.1", Flavor::Runtime).scale(Scale(0.05)))
}

fn largest(fx: &Fixture) -> &Layer {
    fx.largest_layer(Arch::Amd64)
}

fn total(fx: &Fixture) -> u64 {
    fx.image_bytes(Arch::Amd64)
}

struct Two {
    _registry: TestRegistry,
    a: FaultProxy,
    b: FaultProxy,
    sandbox: Sandbox,
    config: PathBuf,
    fx: Fixture,
}

fn two_sources(rate: Option<u64>) -> Two {
    let registry = TestRegistry::start();
    let fx = image();
    Pusher::new(&registry).push(&fx);
    let a = FaultProxy::start(&registry.url());
    let b = FaultProxy::start(&registry.url());
    if let Some(r) = rate {
        a.add(Fault::Throttle { bytes_per_sec: r });
        b.add(Fault::Throttle { bytes_per_sec: r });
    }
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&a.url(), &[&b.url()]);
    Two {
        _registry: registry,
        a,
        b,
        sandbox,
        config,
        fx,
    }
}

impl Two {
    fn pull(&self) -> std::process::Command {
        let mut cmd = self.sandbox.cudaimg();
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--store")
            .arg(self.sandbox.store_dir());
        cmd.args([
            "--json",
            "pull",
            "--platform",
            "linux/amd64",
            "--stall-timeout",
            "2",
            &self.fx.reference(),
        ]);
        cmd
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&run_ok(&mut self.pull()).stdout).unwrap()
    }
    fn big_from(&self, p: &FaultProxy) -> u64 {
        p.body_bytes_sent_for(&largest(&self.fx).digest)
    }
}

#[test]
fn a_large_layer_comes_from_both_sources_in_ranges_and_verifies() {
    let t = two_sources(None);
    let r = t.json();
    assert_eq!(r["digest"], t.fx.platform(Arch::Amd64).manifest.digest);
    assert_eq!(
        r["bytes_downloaded"],
        total(&t.fx),
        "bytes were fetched twice"
    );
    let big = largest(&t.fx);
    let (a, b) = (t.big_from(&t.a), t.big_from(&t.b));
    assert!(
        a > 0 && b > 0,
        "the large layer came from one source only: {a} and {b}"
    );
    assert_eq!(a + b, big.size);
    let ranged = t.b.requests().iter().any(|q| {
        q.range
            .as_deref()
            .is_some_and(|r| r.contains('-') && !r.ends_with('-'))
    });
    assert!(ranged, "no bounded Range request");
    run_ok(
        t.sandbox
            .cudaimg()
            .arg("--store")
            .arg(t.sandbox.store_dir())
            .arg("verify"),
    );
}

#[test]
fn one_source_failing_midway_leaves_the_rest_to_the_other() {
    let t = two_sources(None);
    let big = largest(&t.fx);
    t.b.add(Fault::CutAfter {
        path_contains: big.digest.clone(),
        bytes: 3_000_000,
        reset: true,
        times: ALWAYS,
    });
    let r = t.json();
    assert_eq!(r["digest"], t.fx.platform(Arch::Amd64).manifest.digest);
    assert_eq!(
        r["bytes_downloaded"],
        total(&t.fx),
        "bytes were fetched twice"
    );
    // The cut fired on the large layer's ranges from the failing source, midway (after
    // some of its bytes went out), and the other source carried the rest of that layer.
    let cut: Vec<_> =
        t.b.requests()
            .into_iter()
            .filter(|q| q.path.contains(&big.digest) && q.faults.contains(&"CutAfter"))
            .collect();
    assert!(!cut.is_empty(), "the cut never fired: {:?}", t.b.requests());
    assert!(
        cut.iter().any(|q| q.body_bytes >= 3_000_000),
        "cut before midway: {cut:?}"
    );
    let (from_a, from_b) = (t.big_from(&t.a), t.big_from(&t.b));
    assert!(
        from_a > 0 && from_a + from_b >= big.size,
        "the other source did not carry the rest: {from_a} + {from_b} of {}",
        big.size
    );
    run_ok(
        t.sandbox
            .cudaimg()
            .arg("--store")
            .arg(t.sandbox.store_dir())
            .arg("verify"),
    );
}

#[test]
fn a_corrupting_source_in_a_parallel_fill_is_caught_by_the_digest() {
    let t = two_sources(None);
    let big = largest(&t.fx);
    // In the first range, which the first source's worker (the mirror's) takes first.
    t.b.add(Fault::FlipByte {
        path_contains: big.digest.clone(),
        offset: 1_000_000,
        times: 1,
    });
    let r = t.json();
    assert_eq!(r["digest"], t.fx.platform(Arch::Amd64).manifest.digest);
    assert!(
        r["warnings"].to_string().contains("discarded"),
        "{}\n{:?}\n{:?}",
        r["warnings"],
        t.a.requests(),
        t.b.requests()
    );
    run_ok(
        t.sandbox
            .cudaimg()
            .arg("--store")
            .arg(t.sandbox.store_dir())
            .arg("verify"),
    );
}

#[test]
fn kill_9_during_a_parallel_fill_resumes_from_the_contiguous_prefix() {
    let t = two_sources(Some(8_000_000));
    let big = largest(&t.fx);
    let child = t
        .pull()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = child;
    let partial = t
        .sandbox
        .store_dir()
        .join("ingest")
        .join(format!("{}.partial", &big.digest[7..]));
    let sidecar = partial.with_extension("prefix");
    let deadline = Instant::now() + Duration::from_secs(120);
    // Wait until some prefix is hashed and recorded.
    while !sidecar.exists() {
        assert!(Instant::now() < deadline, "no prefix was ever recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = run_ok(
        t.sandbox
            .cudaimg()
            .arg("--store")
            .arg(t.sandbox.store_dir())
            .args(["--json", "verify"]),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["problems"], serde_json::json!([]));

    t.a.clear();
    t.b.clear();
    let r = t.json();
    assert_eq!(r["digest"], t.fx.platform(Arch::Amd64).manifest.digest);
    assert!(
        r["bytes_downloaded"].as_u64().unwrap() < total(&t.fx),
        "nothing was resumed"
    );
    run_ok(
        t.sandbox
            .cudaimg()
            .arg("--store")
            .arg(t.sandbox.store_dir())
            .arg("verify"),
    );
}

/// Issue #22, item 3: a real pull-through cache (distribution with `proxy.remoteurl`) answers
/// a ranged GET for a blob it has not cached with `200` and the whole body. It is used from
/// byte 0, not dropped: beside a slower official registry it carries at least 80% of the
/// bytes, counted by a transparent proxy in front of each.
#[test]
fn a_pull_through_cache_that_ignores_range_is_used_not_dropped() {
    let upstream = TestRegistry::start();
    let fx = image();
    Pusher::new(&upstream).push(&fx);
    let cache = TestRegistry::start_mirror_of(&upstream);
    let mirror = FaultProxy::start(&cache.url());
    let official = FaultProxy::start(&upstream.url());
    official.add(Fault::Throttle {
        bytes_per_sec: 8_000_000,
    });
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[&mirror.url()]);
    let t = Two {
        _registry: upstream,
        a: official,
        b: mirror,
        sandbox,
        config,
        fx,
    };
    let r = t.json();
    assert_eq!(r["digest"], t.fx.platform(Arch::Amd64).manifest.digest);
    let big = largest(&t.fx);
    // The case arose: the cache answered a ranged GET of the large layer with the whole body.
    let whole =
        t.b.requests()
            .iter()
            .any(|q| q.path.contains(&big.digest) && q.range.is_some() && q.status == Some(200));
    assert!(
        whole,
        "the cache never ignored a Range: {:?}",
        t.b.requests()
    );
    let (from_cache, from_official) = (
        t.b.body_bytes_sent_for("/blobs/"),
        t.a.body_bytes_sent_for("/blobs/"),
    );
    assert!(
        from_cache * 5 >= (from_cache + from_official) * 4,
        "the cache carried {from_cache} bytes, the official registry {from_official}\n\
         cache: {:?}\nofficial: {:?}\n{r}",
        t.b.requests(),
        t.a.requests()
    );
    assert!(!r["warnings"].to_string().contains("bad-range"), "{r}");
    run_ok(
        t.sandbox
            .cudaimg()
            .arg("--store")
            .arg(t.sandbox.store_dir())
            .arg("verify"),
    );
    drop(cache);
}
