//! Pulls that survive bad conditions without a proxy in the way: two processes on one store,
//! a full disk, partial downloads left by an earlier run.

use cudaimg_test_support as common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    run_fails, run_ok, Arch, CudaSpec, Fault, FaultProxy, Fixture, FixtureStore, Flavor,
    MediaTypes, Pusher, Sandbox, Scale, TestRegistry,
};
use serde_json::Value;

fn pull_cmd(sandbox: &Sandbox, config: &Path, store: &Path, reference: &str) -> Command {
    let mut cmd = sandbox.cudaimg();
    cmd.arg("--config").arg(config).arg("--store").arg(store);
    cmd.args(["--json", "pull", "--platform", "linux/amd64", reference]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn two_processes_pulling_into_one_store_both_succeed_and_download_each_blob_once() {
    let official = TestRegistry::start();
    let fx =
        FixtureStore::shared().cuda(&CudaSpec::new("12.4.1", Flavor::Runtime).scale(Scale(0.005)));
    Pusher::new(&official).push(&fx);
    // Each process reaches the registry through a throttled proxy of its own, so that both
    // are in flight for seconds, and each proxy's log tells when its process was.
    let (via_a, via_b) = (
        FaultProxy::start(&official.url()),
        FaultProxy::start(&official.url()),
    );
    for p in [&via_a, &via_b] {
        p.add(Fault::Throttle {
            bytes_per_sec: 4_000_000,
        });
    }
    let sandbox = Sandbox::new();
    let config_a = sandbox.write("a.toml", hub_config(&via_a.url()));
    let config_b = sandbox.write("b.toml", hub_config(&via_b.url()));
    let store = sandbox.store_dir();
    let before = official.requests().len();

    let a = pull_cmd(&sandbox, &config_a, &store, &fx.reference())
        .spawn()
        .unwrap();
    let b = pull_cmd(&sandbox, &config_b, &store, &fx.reference())
        .spawn()
        .unwrap();
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));

    // The runs overlapped: each process asked its proxy something after the other began.
    let span = |p: &FaultProxy| {
        let times: Vec<_> = p.requests().iter().map(|r| r.received_at).collect();
        (*times.iter().min().unwrap(), *times.iter().max().unwrap())
    };
    let ((a_first, a_last), (b_first, b_last)) = (span(&via_a), span(&via_b));
    assert!(
        a_first < b_last && b_first < a_last,
        "the two pulls did not overlap: a {:?}..{:?}, b from {:?} after a began, to {:?}",
        Duration::ZERO,
        a_last - a_first,
        b_first.saturating_duration_since(a_first),
        b_last.saturating_duration_since(a_first)
    );

    // The registry's own log: every blob of the image served once, none twice.
    let amd64 = fx.platform(Arch::Amd64);
    let mut wanted: Vec<String> = amd64.layers.iter().map(|l| l.digest.clone()).collect();
    wanted.push(amd64.config.digest.clone());
    wanted.sort();
    let mut served: Vec<String> = official.requests()[before..]
        .iter()
        .filter(|r| r.method == "GET" && r.status < 400 && r.path.contains("/blobs/"))
        .map(|r| r.path.rsplit('/').next().unwrap().to_owned())
        .collect();
    served.sort();
    assert_eq!(served, wanted, "each blob served once");

    let (ja, jb) = (json(&a), json(&b));
    let downloaded =
        ja["bytes_downloaded"].as_u64().unwrap() + jb["bytes_downloaded"].as_u64().unwrap();
    let total = amd64.layers_size() + amd64.config.size();
    assert_eq!(
        downloaded, total,
        "between them the two pulls fetched each byte once"
    );

    let idx: Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap()).unwrap();
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 1, "{idx}");
    let mut verify = sandbox.cudaimg();
    verify.arg("--store").arg(&store).arg("verify");
    run_ok(&mut verify);
}

/// `mirrors.toml` with `endpoint` as docker.io's registry and no mirrors.
fn hub_config(endpoint: &str) -> String {
    format!("[registries.\"docker.io\"]\nendpoint = \"{endpoint}\"\nmirrors = []\n")
}

#[test]
fn partial_downloads_from_an_earlier_run_are_resumed_and_verified() {
    let official = TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale(0.005));
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let store = sandbox.store_dir();
    let amd64 = fx.platform(Arch::Amd64);
    let big = amd64.layers.iter().max_by_key(|l| l.size).unwrap();
    let bytes = big.bytes();

    // What an interrupted run leaves: the first half of the largest layer in ingest/.
    empty_store(&store);
    let half = bytes.len() / 2;
    std::fs::write(
        store
            .join("ingest")
            .join(format!("{}.partial", &big.digest[7..])),
        &bytes[..half],
    )
    .unwrap();
    let r = json(&run_ok(&mut pull_cmd(
        &sandbox,
        &config,
        &store,
        &fx.reference(),
    )));
    let total = amd64.layers_size() + amd64.config.size();
    assert_eq!(r["bytes_downloaded"].as_u64().unwrap(), total - half as u64);
    // The registry was asked for the rest of that layer only.
    let ranged = official
        .log()
        .lines()
        .any(|l| l.contains(&big.digest[7..]) && l.contains("206"));
    assert!(ranged, "no 206 for the resumed layer:\n{}", official.log());

    // A partial whose bytes are wrong is caught by the digest and fetched again.
    let other = sandbox.root().join("store2");
    empty_store(&other);
    let mut wrong = bytes[..half].to_vec();
    wrong[half / 2] ^= 0x55;
    std::fs::write(
        other
            .join("ingest")
            .join(format!("{}.partial", &big.digest[7..])),
        &wrong,
    )
    .unwrap();
    let out = run_ok(&mut pull_cmd(&sandbox, &config, &other, &fx.reference()));
    let r = json(&out);
    assert_eq!(
        r["bytes_downloaded"].as_u64().unwrap(),
        total - half as u64 + big.size
    );
    let warnings = r["warnings"].to_string();
    assert!(
        warnings.contains("earlier interrupted download"),
        "{warnings}"
    );
    let mut verify = sandbox.cudaimg();
    verify.arg("--store").arg(&other).arg("verify");
    run_ok(&mut verify);
}

/// Needs root to mount a small tmpfs; CI runs as root. Elsewhere it says so and stops.
#[test]
fn a_full_disk_is_a_clear_error_and_commits_nothing_partial() {
    let sandbox = Sandbox::new();
    let mnt = sandbox.root().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        common::skip("cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());

    let official = TestRegistry::start();
    // ~7 MB of layers into a 4 MB filesystem.
    let fx =
        FixtureStore::shared().cuda(&CudaSpec::new("12.4.1", Flavor::Runtime).scale(Scale(0.005)));
    Pusher::new(&official).push(&fx);
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let store = mnt.join("store");
    let out = run_fails(&mut pull_cmd(&sandbox, &config, &store, &fx.reference()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("disk holding the store is full"), "{err}");
    assert!(err.contains("hint:") && err.contains("--store"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Every committed blob is whole, and no image is named.
    let idx: Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap()).unwrap();
    assert_eq!(idx["manifests"], serde_json::json!([]));
    let mut verify = sandbox.cudaimg();
    verify.arg("--store").arg(&store).arg("verify");
    run_ok(&mut verify);
}

/// The layout an earlier cudaimg run leaves before it has stored any image.
fn empty_store(root: &Path) {
    for d in ["blobs/sha256", "ingest"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        root.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
}

#[test]
fn processes_creating_a_new_store_at_once_all_succeed() {
    let official = TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, Scale::TINY);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    for round in 0..5 {
        let store = sandbox.root().join(format!("store-{round}"));
        let children: Vec<_> = (0..3)
            .map(|_| {
                pull_cmd(&sandbox, &config, &store, &fx.reference())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A link planted where a partial download belongs: the pull neither writes through it nor
/// renames it into `blobs/`; the blob ends up a regular file with the right bytes.
#[test]
fn a_planted_partial_link_is_not_written_through() {
    let official = TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, Scale::TINY);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let store = sandbox.store_dir();
    let big = fx
        .platform(Arch::Amd64)
        .layers
        .iter()
        .max_by_key(|l| l.size)
        .unwrap();
    let hex = &big.digest[7..];

    empty_store(&store);
    let outside = sandbox.root().join("outside-file");
    std::fs::write(&outside, b"not yours").unwrap();
    std::os::unix::fs::symlink(
        &outside,
        store.join("ingest").join(format!("{hex}.partial")),
    )
    .unwrap();
    run_ok(&mut pull_cmd(&sandbox, &config, &store, &fx.reference()));

    assert_eq!(std::fs::read(&outside).unwrap(), b"not yours");
    let blob = store.join("blobs/sha256").join(hex);
    let meta = std::fs::symlink_metadata(&blob).unwrap();
    assert!(meta.file_type().is_file(), "{:?}", meta.file_type());
    assert_eq!(std::fs::read(&blob).unwrap(), big.bytes());
    let mut verify = sandbox.cudaimg();
    verify.arg("--store").arg(&store).arg("verify");
    run_ok(&mut verify);
}

/// Links planted for `index.json`, `ingest` and `blobs/sha256` are refused with the path
/// and the fix, and nothing outside the store is written or removed.
#[test]
fn planted_links_for_the_index_and_store_directories_are_refused() {
    let official = TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, Scale::TINY);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let store = sandbox.store_dir();
    run_ok(&mut pull_cmd(&sandbox, &config, &store, &fx.reference()));
    let refused = |out: &std::process::Output, what: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{what}` is a symbolic link")),
            "{err}"
        );
        assert!(err.contains("hint:") && err.contains("rm "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    };

    // index.json -> a file outside: `tag` neither reads nor writes it.
    let outside = sandbox.root().join("outside-index");
    std::fs::write(&outside, b"keep me").unwrap();
    let index = store.join("index.json");
    let saved = std::fs::read(&index).unwrap();
    std::fs::remove_file(&index).unwrap();
    std::os::unix::fs::symlink(&outside, &index).unwrap();
    let mut tag = sandbox.cudaimg();
    tag.arg("--store")
        .arg(&store)
        .args(["tag", &fx.reference(), "corp.example/cuda:x"]);
    refused(&run_fails(&mut tag), "index.json");
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(&index)
        .unwrap()
        .file_type()
        .is_symlink());
    std::fs::remove_file(&index).unwrap();
    std::fs::write(&index, saved).unwrap();

    // blobs/sha256 -> a directory outside: gc refuses instead of emptying it.
    let elsewhere = sandbox.root().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("precious"), b"data").unwrap();
    let blobs = store.join("blobs/sha256");
    std::fs::rename(&blobs, store.join("blobs/real")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &blobs).unwrap();
    let mut gc = sandbox.cudaimg();
    gc.arg("--store").arg(&store).arg("gc");
    refused(&run_fails(&mut gc), "blobs/sha256");
    assert_eq!(std::fs::read(elsewhere.join("precious")).unwrap(), b"data");

    // ingest -> a directory outside: a pull creates nothing there.
    let other = sandbox.root().join("store2");
    empty_store(&other);
    std::fs::remove_dir(other.join("ingest")).unwrap();
    let target = sandbox.root().join("ingest-target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&target, other.join("ingest")).unwrap();
    refused(
        &run_fails(&mut pull_cmd(&sandbox, &config, &other, &fx.reference())),
        "ingest",
    );
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}
