//! Mirror health remembered between runs (issue #15, item 3): a mirror that accepts
//! connections and then sends nothing (the fault proxy's stall, in front of a real
//! registry) costs the first run one short first-byte wait, said as it happens; the runs
//! after it ask that mirror last without waiting on it, and say so; the mark expires.

use cudaimg_test_support as common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::proxy::ALWAYS;
use common::{
    run_ok, Arch, Fault, FaultProxy, Fixture, Flavor, MediaTypes, Pusher, Sandbox, Scale,
};
use serde_json::Value;

/// Well below the 30 s a silent mirror cost every run before, and well above the 2 s wait
/// plus a small pull on a loaded machine.
const BOUND: Duration = Duration::from_secs(12);

fn pull(sandbox: &Sandbox, config: &Path, fx: &Fixture) -> (Value, String, Duration) {
    let reference = fx.reference();
    let started = Instant::now();
    // The default stall timeout (30 s): the bound must come from the first-byte wait.
    let out: Output = run_ok(&mut sandbox.cli(
        config,
        &["--json", "pull", "--platform", "linux/amd64", &reference],
    ));
    let took = started.elapsed();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["digest"], fx.platform(Arch::Amd64).manifest.digest);
    (r, String::from_utf8_lossy(&out.stderr).into_owned(), took)
}

fn state(sandbox: &Sandbox) -> Value {
    let path = sandbox.store_dir().join("state/mirror-health.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Progress lines (not the closing `warning:` lines) that start with `text`.
fn said_lines(stderr: &str, text: &str) -> usize {
    stderr.lines().filter(|l| l.starts_with(text)).count()
}

fn gets(mirror: &FaultProxy) -> usize {
    mirror
        .requests()
        .iter()
        .filter(|q| q.method == "GET")
        .count()
}

#[test]
fn a_silent_mirror_costs_one_short_wait_once_and_is_asked_last_until_the_mark_expires() {
    let registry = common::TestRegistry::start();
    let scale = Scale(0.002);
    let images = [
        Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, scale),
        Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, scale),
        Fixture::cuda("12.2.2", Flavor::Base, MediaTypes::Oci, scale),
    ];
    for fx in &images {
        Pusher::new(&registry).push(fx);
    }
    // Accepts every connection, answers HEADs (so it resolves tags), and sends headers and
    // then nothing for a minute on every GET.
    let mirror = FaultProxy::start(&registry.url());
    mirror.add(Fault::Stall {
        path_contains: "/v2/".into(),
        after_bytes: 0,
        for_secs: 60,
        times: ALWAYS,
    });
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&registry.url(), &[&mirror.url()]);

    // Run 1: one short wait, said, then everything from the official registry.
    let (r, stderr, took) = pull(&sandbox, &config, &images[0]);
    assert!(took < BOUND, "the first run took {took:?}: {stderr}");
    let said = format!(
        "mirror {} has not answered in 2 s; asking the official registry {}",
        mirror.url(),
        registry.url()
    );
    // Said once as it happens (a progress line), and once among the closing warnings.
    assert_eq!(said_lines(&stderr, &said), 1, "{stderr}");
    assert!(r["warnings"]
        .to_string()
        .contains("asked last by the next runs"));
    for layer in r["layers"].as_array().unwrap() {
        assert!(layer["source"]
            .as_str()
            .unwrap()
            .starts_with(&registry.url()));
    }
    let recorded = &state(&sandbox)["sources"][mirror.url()];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        recorded["unhealthy_until"].as_u64().unwrap() > now,
        "{recorded}"
    );
    assert_eq!(recorded["timeouts"], 1);
    // The official registry answered: recorded healthy, with how fast.
    let official = &state(&sandbox)["sources"][registry.url()];
    assert_eq!(official["unhealthy_until"], 0, "{official}");
    assert!(official["latency_ms"].is_u64(), "{official}");

    // Run 2, another image: the mirror is asked last, said once, and never waited on.
    mirror.clear_requests();
    let (r, stderr, took) = pull(&sandbox, &config, &images[1]);
    assert!(took < BOUND, "the second run took {took:?}");
    assert_eq!(gets(&mirror), 0, "the second run asked the silent mirror");
    assert!(!stderr.contains("has not answered"), "{stderr}");
    let told = format!(
        "mirror {} did not answer in time on a recent run; asking it last",
        mirror.url()
    );
    assert_eq!(said_lines(&stderr, &told), 1, "{stderr}");
    assert!(r["warnings"].to_string().contains(&told));

    // The mark expires: with its time moved into the past (and the mirror answering again),
    // run 3 asks the mirror first again, and its good answer clears the mark.
    let path = sandbox.store_dir().join("state/mirror-health.json");
    let mut book = state(&sandbox);
    book["sources"][mirror.url()]["unhealthy_until"] = Value::from(now - 1);
    std::fs::write(&path, serde_json::to_vec(&book).unwrap()).unwrap();
    mirror.clear();
    mirror.clear_requests();
    let (r, stderr, _) = pull(&sandbox, &config, &images[2]);
    assert!(!stderr.contains("asking it last"), "{stderr}");
    assert!(
        gets(&mirror) > 0,
        "the expired mark still kept the mirror last"
    );
    let from_mirror = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["source"]
                .as_str()
                .is_some_and(|s| s.starts_with(&mirror.url()))
        })
        .count();
    assert!(from_mirror > 0, "{r}");
    assert_eq!(
        state(&sandbox)["sources"][mirror.url()]["unhealthy_until"],
        0
    );
    run_ok(&mut sandbox.cli(&config, &["verify"]));
}

/// Issue #22, item 1: a cold mirror that takes 6 s to start every answer, with the official
/// registry out of reach (a closed port). It is the only source in reach, so it gets the whole
/// stall timeout (the default 30 s), not the short first-byte wait, and the run says what it
/// waits for.
#[test]
fn the_only_source_in_reach_is_waited_for_up_to_the_stall_timeout() {
    let registry = common::TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, Scale(0.002));
    Pusher::new(&registry).push(&fx);
    let mirror = FaultProxy::start(&registry.url());
    mirror.add(Fault::Delay {
        path_contains: "/v2/".into(),
        millis: 6000,
        times: ALWAYS,
    });
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&common::dead_endpoint(), &[&mirror.url()]);
    let (r, stderr, _) = pull(&sandbox, &config, &fx);
    // Every layer came from the slow mirror, each answer after its delay.
    for layer in r["layers"].as_array().unwrap() {
        assert!(
            layer["source"].as_str().unwrap().starts_with(&mirror.url()),
            "{r}"
        );
    }
    let delayed = mirror
        .requests()
        .iter()
        .filter(|q| q.method == "GET" && q.path.contains("/blobs/") && q.faults == ["Delay"])
        .count();
    assert!(
        delayed >= 2,
        "the delay never fired: {:?}",
        mirror.requests()
    );
    let said = format!(
        "waiting up to 30 s for mirror {}: no other source is in reach",
        mirror.url()
    );
    assert!(stderr.lines().any(|l| l.starts_with(&said)), "{stderr}");
    // Never given up for the short first-byte wait, and said once.
    assert!(!stderr.contains("has not answered"), "{stderr}");
    assert_eq!(
        stderr.matches("no other source is in reach").count(),
        1,
        "{stderr}"
    );
    run_ok(&mut sandbox.cli(&config, &["verify"]));
}
