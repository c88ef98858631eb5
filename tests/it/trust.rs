//! Zero-trust mirrors and the lockfile: the official registry says what a tag means, mirrors
//! only carry bytes; `cudaimg lock` pins digests and `pull --locked` pulls exactly those.

use cudaimg_test_support as common;

use std::path::PathBuf;
use std::process::Command;

use common::{
    dead_endpoint, run_fails, run_ok, Arch, CudaSpec, Fault, FaultProxy, Fixture, FixtureStore,
    Flavor, Pusher, Sandbox, TestRegistry,
};
use serde_json::Value;

fn old_and_new() -> (Fixture, Fixture) {
    let store = FixtureStore::shared();
    let old = store.cuda(&CudaSpec::new("12.4.1", Flavor::Base));
    let new = store.cuda(&CudaSpec::new("12.4.1", Flavor::Base).rebuild(1));
    assert_eq!(old.reference(), new.reference());
    (old, new)
}

struct Env {
    sandbox: Sandbox,
    config: PathBuf,
}

impl Env {
    fn new(official: &str, mirrors: &str) -> Env {
        let sandbox = Sandbox::new();
        let config = sandbox.write(
            "mirrors.toml",
            format!(
                "[registries.\"docker.io\"]\nendpoint = \"{official}\"\nmirrors = [{mirrors}]\n"
            ),
        );
        Env { sandbox, config }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        self.sandbox.cli(&self.config, args)
    }

    fn pull(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json", "pull", "--platform", "linux/amd64"];
        all.extend_from_slice(args);
        serde_json::from_slice(&run_ok(&mut self.cmd(&all)).stdout).unwrap()
    }

    fn lockfile(&self) -> PathBuf {
        self.sandbox.root().join("cudaimg.lock")
    }
}

fn mirror(url: &str) -> String {
    format!("{{ url = \"{url}\" }}")
}

#[test]
fn a_stale_mirror_is_reported_and_the_official_digest_wins_while_shared_layers_come_from_the_mirror(
) {
    let (old, new) = old_and_new();
    let official = TestRegistry::start();
    let stale = TestRegistry::start();
    Pusher::new(&official).push(&new);
    Pusher::new(&stale).push(&old);
    let env = Env::new(&official.url(), &mirror(&stale.url()));
    let r = env.pull(&[&new.reference()]);

    let want = &new.platform(Arch::Amd64).manifest.digest;
    assert_eq!(r["digest"], *want);
    assert_eq!(r["resolved_by"], "official");
    let w = r["warnings"].to_string();
    assert!(w.contains("stale") && w.contains("differs"), "{w}");
    assert!(
        w.contains(&stale.url()) && w.contains(&old.index.as_ref().unwrap().digest),
        "{w}"
    );
    assert!(w.contains(&new.index.as_ref().unwrap().digest), "{w}");
    // The license layer is the same in both builds: the stale mirror still serves it.
    let license = &new.platform(Arch::Amd64).layer("5").digest;
    let l = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["digest"] == *license)
        .unwrap();
    assert!(
        l["source"].as_str().unwrap().starts_with(&stale.url()),
        "{l}"
    );
    // The official registry was asked with a HEAD, which Docker Hub does not count as a pull.
    let heads = official
        .requests()
        .into_iter()
        .filter(|q| q.method == "HEAD" && q.path.ends_with(&new.tag))
        .count();
    assert_eq!(heads, 1);
}

#[test]
fn with_the_official_registry_out_of_reach_agreeing_mirrors_decide_with_a_warning() {
    let (old, _) = old_and_new();
    let a = TestRegistry::start();
    let b = TestRegistry::start();
    Pusher::new(&a).push(&old);
    Pusher::new(&b).push(&old);
    let dead = dead_endpoint();
    let env = Env::new(
        &dead,
        &format!("{}, {}", mirror(&a.url()), mirror(&b.url())),
    );
    let r = env.pull(&[&old.reference()]);
    assert_eq!(r["digest"], old.platform(Arch::Amd64).manifest.digest);
    assert_eq!(r["resolved_by"], "mirrors");
    let w = r["warnings"].to_string();
    assert!(
        w.contains("mirror-asserted") && w.contains("they agree") && w.contains(&dead),
        "{w}"
    );

    let out = run_fails(&mut env.cmd(&[
        "pull",
        "--require-upstream",
        "--platform",
        "linux/amd64",
        &old.reference(),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--require-upstream") && err.contains(&dead),
        "{err}"
    );
}

#[test]
fn mirrors_that_disagree_without_the_official_registry_are_an_error() {
    let (old, new) = old_and_new();
    let a = TestRegistry::start();
    let b = TestRegistry::start();
    Pusher::new(&a).push(&old);
    Pusher::new(&b).push(&new);
    let env = Env::new(
        &dead_endpoint(),
        &format!("{}, {}", mirror(&a.url()), mirror(&b.url())),
    );
    let out = run_fails(&mut env.cmd(&["pull", &old.reference()]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("disagree"), "{err}");
    assert!(
        err.contains(&old.index.as_ref().unwrap().digest)
            && err.contains(&new.index.as_ref().unwrap().digest),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn digest_only_mirrors_are_never_asked_for_tags_and_digest_pulls_fall_back_across_them() {
    let (old, new) = old_and_new();
    let official = TestRegistry::start();
    Pusher::new(&official).push(&new);
    // A digest-only mirror holding a stale tag: never asked, so never reported.
    let stale = TestRegistry::start();
    Pusher::new(&stale).push(&old);
    let watch = FaultProxy::start(&stale.url());
    let empty = TestRegistry::start();
    let full = TestRegistry::start();
    Pusher::new(&full).push_untagged(&new, &new.repo);
    let caps = |u: &str| format!("{{ url = \"{u}\", capabilities = [\"pull\"] }}");
    let env = Env::new(
        &official.url(),
        &format!(
            "{}, {}, {}",
            caps(&watch.url()),
            caps(&empty.url()),
            caps(&full.url())
        ),
    );
    let r = env.pull(&[&new.reference()]);
    assert_eq!(r["digest"], new.platform(Arch::Amd64).manifest.digest);
    assert!(
        !r["warnings"].to_string().contains("stale"),
        "{}",
        r["warnings"]
    );
    let by_tag = watch
        .requests()
        .into_iter()
        .filter(|q| q.path.ends_with(&new.tag))
        .count();
    assert_eq!(by_tag, 0, "a digest-only mirror was asked for a tag");

    // By digest, with the official registry down: through the digest-only mirrors, past the
    // one that lacks it.
    let env = Env::new(
        &dead_endpoint(),
        &format!("{}, {}", caps(&empty.url()), caps(&full.url())),
    );
    let by_digest = format!("{}@{}", new.repo, new.index.as_ref().unwrap().digest);
    let r = env.pull(&[&by_digest]);
    assert_eq!(r["digest"], new.platform(Arch::Amd64).manifest.digest);
    assert_eq!(r["resolved_by"], "digest");
    assert!(r["manifest_source"]
        .as_str()
        .unwrap()
        .starts_with(&full.url()));
}

#[test]
fn a_tag_gone_upstream_is_not_found_even_if_a_mirror_keeps_it() {
    let (old, _) = old_and_new();
    let official = TestRegistry::start();
    let keeper = TestRegistry::start();
    Pusher::new(&keeper).push(&old);
    let env = Env::new(&official.url(), &mirror(&keeper.url()));
    let out = run_fails(&mut env.cmd(&["pull", &old.reference()]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    let idx = &old.index.as_ref().unwrap().digest;
    assert!(err.contains(&keeper.url()) && err.contains(idx), "{err}");
    assert!(
        err.contains(&format!("cudaimg pull docker.io/{}@{idx}", old.repo)),
        "{err}"
    );
}

#[test]
fn lock_then_pull_locked_pulls_exactly_the_locked_digests_from_any_source() {
    let (old, new) = old_and_new();
    let official = TestRegistry::start();
    let mirror_reg = TestRegistry::start();
    Pusher::new(&official).push(&old);
    Pusher::new(&mirror_reg).push(&old);
    let cuda = Fixture::cuda(
        "12.4.1",
        Flavor::Runtime,
        common::MediaTypes::Docker,
        common::Scale::TINY,
    );
    Pusher::new(&official).push(&cuda);
    let env = Env::new(&official.url(), &mirror(&mirror_reg.url()));

    // Lock two references; the file is sorted, stable, and names every platform.
    let mut lock = env.cmd(&["lock", &old.reference(), &cuda.reference()]);
    lock.current_dir(env.sandbox.root());
    run_ok(&mut lock);
    let text = std::fs::read_to_string(env.lockfile()).unwrap();
    let runtime_key = format!("[images.\"docker.io/{}\"]", cuda.reference());
    let base_key = format!("[images.\"docker.io/{}\"]", old.reference());
    assert!(
        text.find(&base_key).unwrap() < text.find(&runtime_key).unwrap(),
        "{text}"
    );
    assert!(text.contains(&old.index.as_ref().unwrap().digest), "{text}");
    assert!(
        text.contains(&format!(
            "\"linux/arm64/v8\" = \"{}\"",
            old.platform(Arch::Arm64).manifest.digest
        )),
        "{text}"
    );
    run_ok(&mut lock);
    assert_eq!(
        std::fs::read_to_string(env.lockfile()).unwrap(),
        text,
        "re-locking changed the file"
    );

    // The tag moves upstream; a locked pull still gets the locked image, with the official
    // registry unreachable, from the mirror.
    Pusher::new(&official).push(&new);
    let down = Env::new(&dead_endpoint(), &mirror(&mirror_reg.url()));
    std::fs::copy(env.lockfile(), down.lockfile()).unwrap();
    let mut pull = down.cmd(&[
        "--json",
        "pull",
        "--locked",
        "--platform",
        "linux/amd64",
        &old.reference(),
    ]);
    pull.current_dir(down.sandbox.root());
    let r: Value = serde_json::from_slice(&run_ok(&mut pull).stdout).unwrap();
    assert_eq!(r["digest"], old.platform(Arch::Amd64).manifest.digest);
    assert_eq!(r["resolved_by"], "lock");
    assert_eq!(r["canonical"], format!("docker.io/{}", old.reference()));

    // Re-locking now records the move: only digest lines change.
    run_ok(&mut lock);
    let moved = std::fs::read_to_string(env.lockfile()).unwrap();
    let changed: Vec<_> = text
        .lines()
        .zip(moved.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        changed.len(),
        3,
        "index, amd64 and arm64 digests: {changed:?}"
    );
    assert!(
        changed.iter().all(|(a, _)| a.contains("sha256:")),
        "{changed:?}"
    );

    // A reference missing from the lock is refused before any network traffic.
    let mut unlocked = env.cmd(&["pull", "--locked", "nvidia/cuda:9.9-base"]);
    unlocked.current_dir(env.sandbox.root());
    let out = run_fails(&mut unlocked);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not in the lockfile") && err.contains("cudaimg lock"),
        "{err}"
    );

    // `--locked` without references pulls every locked image.
    let all = Env::new(&official.url(), "");
    let mut cmd = all.cmd(&["--json", "pull", "--locked", "--lockfile"]);
    cmd.arg(env.lockfile()).args(["--platform", "linux/arm64"]);
    let out = run_ok(&mut cmd);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

#[test]
fn a_locked_digest_no_source_holds_is_a_clear_error_not_a_fallback_to_the_tag() {
    let (old, new) = old_and_new();
    let official = TestRegistry::start();
    Pusher::new(&official).push(&old);
    let env = Env::new(&official.url(), "");
    let mut lock = env.cmd(&["lock", "--lockfile"]);
    lock.arg(env.lockfile()).arg(old.reference());
    run_ok(&mut lock);

    // Upstream replaces the tag and deletes the old image: the lock can no longer be met.
    Pusher::new(&official).push(&new);
    Pusher::new(&official).delete_manifest(&old.repo, &old.index.as_ref().unwrap().digest);
    let mut pull = env.cmd(&["pull", "--locked", "--lockfile"]);
    pull.arg(env.lockfile()).arg(old.reference());
    let out = run_fails(&mut pull);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains(&old.index.as_ref().unwrap().digest), "{err}");
    // Nothing was stored under the name: no silent fallback to what the tag says now.
    let idx: Value =
        serde_json::from_slice(&std::fs::read(env.sandbox.store_dir().join("index.json")).unwrap())
            .unwrap();
    assert_eq!(idx["manifests"], serde_json::json!([]));
}

#[test]
fn a_lying_mirror_manifest_is_refused_by_digest() {
    let (old, new) = old_and_new();
    let official = TestRegistry::start();
    Pusher::new(&official).push(&new);
    let liar = FaultProxy::start(&official.url());
    // Answers every manifest request with the old image's index.
    liar.add(Fault::ServeManifest {
        path_contains: "/manifests/".into(),
        body: old.index.as_ref().unwrap().bytes.clone(),
        media_type: old.index.as_ref().unwrap().media_type.clone(),
    });
    let env = Env::new(&official.url(), &mirror(&liar.url()));
    let r = env.pull(&[&new.reference()]);
    assert_eq!(r["digest"], new.platform(Arch::Amd64).manifest.digest);
    let w = r["warnings"].to_string();
    assert!(
        w.contains(&liar.url()) && (w.contains("digest-mismatch") || w.contains("stale")),
        "{w}"
    );
}

#[test]
fn lock_requires_the_official_registry_unless_told_to_trust_mirrors() {
    let (old, _) = old_and_new();
    let m = TestRegistry::start();
    Pusher::new(&m).push(&old);
    let env = Env::new(&dead_endpoint(), &mirror(&m.url()));
    let mut lock = env.cmd(&["lock", "--lockfile"]);
    lock.arg(env.lockfile()).arg(old.reference());
    let out = run_fails(&mut lock);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!env.lockfile().exists(), "a failed lock wrote the lockfile");
    let mut lock = env.cmd(&["lock", "--trust-mirrors", "--lockfile"]);
    lock.arg(env.lockfile()).arg(old.reference());
    run_ok(&mut lock);
    assert!(std::fs::read_to_string(env.lockfile())
        .unwrap()
        .contains(&old.index.as_ref().unwrap().digest));

    // With a lock, an explicit digest that differs is a usage error, not silently ignored.
    let other = format!("{}@sha256:{}", old.reference(), "0".repeat(64));
    let mut pull = env.cmd(&["pull", "--locked", "--lockfile"]);
    pull.arg(env.lockfile()).arg(&other);
    let out = run_fails(&mut pull);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("lockfile pins"), "{err}");
}
