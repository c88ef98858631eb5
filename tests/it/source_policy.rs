//! Issue 25, source policy: every command that reads from sources goes through the run's
//! session, so the mirror-health record one command writes orders the sources of the next
//! (a silent mirror marked by `pull` is asked last by `copy`, and `copy` writes the record
//! too), and a tag list follows one rule for `tags` and `sync`: the official registry's
//! answer, "no such repository" included, stands; mirrors answer only when it is out of
//! reach. The witnesses are the fault proxy's request log and the registries' access logs.

use cudaimg_test_support as common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::proxy::ALWAYS;
use common::{
    run_ok, Arch, Fault, FaultProxy, Fixture, Flavor, MediaTypes, Pusher, Sandbox, Scale,
};
use common::{Request, TestRegistry};
use serde_json::Value;

/// Well below the 30 s stall timeout a silent mirror asked first costs a blob of `copy`, and
/// well above a small copy on a loaded machine.
const BOUND: Duration = Duration::from_secs(12);

fn fx(version: &str, flavor: Flavor) -> Fixture {
    Fixture::cuda(version, flavor, MediaTypes::Docker, Scale(0.002))
}

fn health(sandbox: &Sandbox) -> Value {
    let path = sandbox.store_dir().join("state/mirror-health.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn marked_unhealthy(sandbox: &Sandbox, mirror: &FaultProxy) -> bool {
    health(sandbox)["sources"][mirror.url()]["unhealthy_until"]
        .as_u64()
        .is_some_and(|t| t > now())
}

/// Polls `log` until `done` holds of it, or fails after 20 s with `what`.
fn wait_for<T: std::fmt::Debug>(what: &str, log: impl Fn() -> Vec<T>, done: impl Fn(&[T]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = log();
        if done(&seen) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn copy(sandbox: &Sandbox, config: &Path, fx: &Fixture, dest: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--json", "copy", "--platform", "linux/amd64"];
    args.extend_from_slice(extra);
    let reference = fx.reference();
    args.extend([reference.as_str(), dest]);
    let out = run_ok(&mut sandbox.cli(config, &args));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_silent_mirror_marked_by_pull_is_asked_last_by_copy() {
    let registry = TestRegistry::start();
    let pulled = fx("12.4.1", Flavor::Base);
    let copied = fx("12.4.1", Flavor::Runtime);
    Pusher::new(&registry).push(&pulled);
    Pusher::new(&registry).push(&copied);
    // Accepts every connection, answers HEADs, and sends headers and then nothing for a
    // minute on every GET. It is the first source in mirrors.toml.
    let mirror = FaultProxy::start(&registry.url());
    mirror.add(Fault::Stall {
        path_contains: "/v2/".into(),
        after_bytes: 0,
        for_secs: 60,
        times: ALWAYS,
    });
    let dest = TestRegistry::start();
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&registry.url(), &[&mirror.url()]);

    // `pull` meets the stall (the proxy says it fired) and records the mirror as silent.
    run_ok(&mut sandbox.cli(
        &config,
        &["pull", "--platform", "linux/amd64", &pulled.reference()],
    ));
    let stalled = mirror
        .requests()
        .iter()
        .filter(|q| q.method == "GET" && q.fault_fired())
        .count();
    assert!(
        stalled > 0,
        "the stall never fired: {:?}",
        mirror.requests()
    );
    assert!(marked_unhealthy(&sandbox, &mirror), "{}", health(&sandbox));

    // `copy` with the same store: the mirror is asked for nothing; every manifest and blob
    // of the copied platform comes from the official registry (its access log).
    mirror.clear_requests();
    let logged = registry.requests().len();
    let started = Instant::now();
    let to = format!("{}/team/cuda:1", dest.host());
    let report = copy(&sandbox, &config, &copied, &to, &[]);
    let took = started.elapsed();
    let amd64 = copied.platform(Arch::Amd64);
    assert_eq!(report["digest"], amd64.manifest.digest.as_str(), "{report}");
    let mut wanted: Vec<String> = amd64.layers.iter().map(|l| l.digest.clone()).collect();
    wanted.push(amd64.config.digest.clone());
    wanted.push(amd64.manifest.digest.clone());
    wait_for(
        "the official registry never served the copy",
        || registry.requests()[logged..].to_vec(),
        |log: &[Request]| {
            wanted.iter().all(|d| {
                log.iter()
                    .any(|r| r.method == "GET" && r.status < 400 && r.path.ends_with(d.as_str()))
            })
        },
    );
    let asked: Vec<_> = mirror
        .requests()
        .into_iter()
        .filter(|q| q.method == "GET")
        .collect();
    assert!(asked.is_empty(), "copy asked the silent mirror: {asked:?}");
    assert!(took < BOUND, "the copy took {took:?}");

    // Control: the same copy from a store with no record asks the mirror first (the proxy
    // sees it), meets the stall, and writes the record itself.
    let fresh = Sandbox::new();
    let config = fresh.write_hub_config(&registry.url(), &[&mirror.url()]);
    let to = format!("{}/team/cuda:2", dest.host());
    copy(&fresh, &config, &copied, &to, &["--stall-timeout", "5"]);
    wait_for(
        "copy without a record never asked the mirror",
        || mirror.requests(),
        |log| log.iter().any(|q| q.method == "GET" && q.fault_fired()),
    );
    assert!(marked_unhealthy(&fresh, &mirror), "{}", health(&fresh));
}

#[test]
fn a_tag_list_comes_from_a_mirror_only_when_the_official_registry_is_out_of_reach() {
    // The official registry has no nvidia/cuda; a mirror (behind a proxy that only counts)
    // still lists it.
    let official = TestRegistry::start();
    let behind = TestRegistry::start();
    Pusher::new(&behind).push(&fx("12.4.1", Flavor::Runtime));
    let mirror = FaultProxy::start(&behind.url());
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[&mirror.url()]);
    let spec = sandbox.write(
        "sync.toml",
        "[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"12.4\"\n",
    );
    let lists = |log: &[common::proxy::ProxyRequest]| {
        log.iter().filter(|q| q.path.contains("/tags/list")).count()
    };

    // `tags` and `sync`: "no such repository" from the authority is the answer (not found,
    // exit 4), and no mirror is asked to overrule it.
    for args in [
        vec!["tags", "nvidia/cuda"],
        vec!["sync", spec.to_str().unwrap(), "--plan"],
    ] {
        let logged = official.requests().len();
        let out = sandbox.cli(&config, &args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {err}");
        assert!(err.contains(&official.url()), "{args:?}: {err}");
        wait_for(
            "the official registry was never asked for the list",
            || official.requests()[logged..].to_vec(),
            |log: &[Request]| {
                log.iter()
                    .any(|r| r.path.contains("/nvidia/cuda/tags/list") && r.status == 404)
            },
        );
        assert_eq!(
            lists(&mirror.requests()),
            0,
            "{args:?}: {:?}",
            mirror.requests()
        );
    }

    // Control: the official registry out of reach (a closed port): the mirror's list,
    // asked of the mirror (the proxy's log), with the warning that it can lag.
    let config = sandbox.write_hub_config(&common::dead_endpoint(), &[&mirror.url()]);
    let out = run_ok(&mut sandbox.cli(&config, &["--json", "tags", "nvidia/cuda"]));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["source_role"], "mirror", "{r}");
    assert!(r["warnings"].to_string().contains("can lag"), "{r}");
    wait_for(
        "the mirror was never asked for the list",
        || mirror.requests(),
        |log| lists(log) > 0,
    );
}

/// `copy --stall-timeout` reaches the session's settings, so its manifest requests get it as
/// its blobs do. The official registry is out of reach and the only mirror is silent on every
/// manifest body: the mirror sees the manifest asked again one 3 s wait (and a short backoff)
/// after the first request, where the default would wait 30 s. The witness is when the
/// proxy's log shows each request, polled while the copy runs.
#[test]
fn copy_stall_timeout_bounds_its_manifest_requests_too() {
    let registry = TestRegistry::start();
    let image = fx("12.4.1", Flavor::Base);
    Pusher::new(&registry).push(&image);
    let mirror = FaultProxy::start(&registry.url());
    mirror.add(Fault::Stall {
        path_contains: "/manifests/sha256:".into(),
        after_bytes: 0,
        for_secs: 120,
        times: ALWAYS,
    });
    let dest = TestRegistry::start();
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&common::dead_endpoint(), &[&mirror.url()]);
    let to = format!("{}/team/cuda:1", dest.host());
    let mut child = sandbox
        .cli(
            &config,
            &[
                "copy",
                "--platform",
                "linux/amd64",
                "--stall-timeout",
                "3",
                &image.reference(),
                &to,
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stalled = || {
        mirror
            .requests()
            .iter()
            .filter(|q| {
                q.method == "GET" && q.path.contains("/manifests/sha256:") && q.fault_fired()
            })
            .count()
    };
    // When the first and the second stalled manifest request reached the proxy.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: Vec<Instant> = Vec::new();
    while seen.len() < 2 && Instant::now() < deadline {
        if stalled() > seen.len() {
            seen.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen.len(),
        2,
        "the stalled manifest was not asked twice: {:?}",
        mirror.requests()
    );
    let gap = seen[1] - seen[0];
    assert!(
        gap >= Duration::from_millis(2500) && gap < Duration::from_secs(15),
        "the manifest was asked again after {gap:?}"
    );
}
