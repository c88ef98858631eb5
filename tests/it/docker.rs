//! Handing images to a real Docker Engine, exporting them, retagging, removing and
//! collecting garbage. The engine is `dockerd` started by the harness (root only: elsewhere
//! each test says it is skipped and why).
//!
//! Where an export goes needs no engine: device nodes made with `mknod`, FIFOs, directories,
//! links, a file that must keep its old content when the export fails, and stdout whose
//! reader leaves early (that part, for every command that prints).

use cudaimg_test_support as common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::docker::{unavailable_reason, TestDocker};
use common::{
    run_fails, run_ok, Arch, Fault, FaultProxy, Fixture, Flavor, MediaTypes, Pusher, Sandbox,
    Scale, TestRegistry,
};

use super::loaded::{check_loaded, env, flipping_mirror, run_output, TAG};
use serde_json::Value;

fn docker_or_skip() -> Option<TestDocker> {
    match unavailable_reason() {
        Some(why) => {
            common::skip(&why);
            None
        }
        None => Some(TestDocker::start()),
    }
}

#[test]
fn pull_load_puts_the_upstream_image_into_docker_under_its_official_name_and_it_runs() {
    let Some(d) = docker_or_skip() else { return };
    let e = env("hello from a loaded image");
    let reference = format!("nvidia/cuda:{TAG}");
    // The relay (the Engine pulls from cudaimg on 127.0.0.1), then the streamed archive.
    for (via, route) in [(None, "relay"), (Some("archive"), "archive")] {
        d.docker(&["rmi", &reference]).output().unwrap();
        let mut cmd = e.cmd(Some(&d), &["--json", "pull", "--load", &reference]);
        if let Some(via) = via {
            cmd.env("CUDAIMG_LOAD_VIA", via);
        }
        let out = run_ok(&mut cmd);
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["loaded"]["route"], route, "{r}");
        assert_eq!(r["loaded"]["name"], reference);
        assert_eq!(r["loaded"]["image_id"], e.image.config.digest);
        check_loaded(&d, &e, &reference);
        assert_eq!(run_output(&d, &reference), "hello from a loaded image");
    }

    // `load` again from the store alone: the configuration now names no live registry.
    e.sandbox.write_hub_config(&common::dead_endpoint(), &[]);
    d.docker(&["rmi", &reference]).output().unwrap();
    run_ok(&mut e.cmd(Some(&d), &["load", &reference]));
    assert_eq!(run_output(&d, &reference), "hello from a loaded image");
}

#[test]
fn pull_load_through_the_relay_survives_a_mirror_that_flips_a_byte_and_the_engine_never_takes_it() {
    let Some(d) = docker_or_skip() else { return };
    let e = env("flipped on the way");
    let mirror = flipping_mirror(&e);
    let reference = format!("nvidia/cuda:{TAG}");
    let out = run_ok(&mut e.cmd(Some(&d), &["--json", "pull", "--load", &reference]));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        mirror
            .requests()
            .iter()
            .any(common::ProxyRequest::fault_fired),
        "the mirror flipped nothing"
    );
    assert_eq!(r["loaded"]["route"], "relay", "{r}");
    // The relay ended its answer for that layer short, so the Engine dropped what it had
    // and asked again; what it holds is the upstream image.
    assert!(
        r["loaded"]["answers_ended_short"].as_u64() >= Some(1),
        "the Engine was never refused a layer: {r}"
    );
    check_loaded(&d, &e, &reference);
    assert_eq!(run_output(&d, &reference), "flipped on the way");
    // And the store holds the image whole: every blob re-hashed, every name complete.
    run_ok(&mut e.cmd(None, &["verify"]));
}

#[test]
fn pull_load_streams_each_stored_layer_to_the_engine_while_later_ones_download() {
    let Some(d) = docker_or_skip() else { return };
    let e = env("streamed while downloading");
    // The top layer (busybox) comes through a proxy that sends half of it and then nothing
    // for 3 s before it closes: the layers below it are stored by then, and must already
    // be in the Engine's hands while it waits.
    let (top, top_bytes) = &e.image.layer;
    let proxy = FaultProxy::start(&e.registry.url());
    proxy.add(Fault::Stall {
        path_contains: top.clone(),
        after_bytes: top_bytes.len() as u64 / 2,
        for_secs: 3,
        times: 1,
    });
    e.sandbox.write_hub_config(&proxy.url(), &[]);
    let reference = format!("nvidia/cuda:{TAG}");
    let out = run_ok(&mut e.cmd(Some(&d), &["--json", "pull", "--load", &reference]));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        proxy
            .requests()
            .iter()
            .any(common::ProxyRequest::fault_fired),
        "the top layer was not held back"
    );
    let below: u64 = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["digest"] != *top)
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    assert_eq!(r["loaded"]["route"], "relay", "{r}");
    let early = r["loaded"]["sent_while_pulling"].as_u64().unwrap();
    assert!(
        early >= below,
        "only {early} bytes reached the Engine during the pull; the layers below the \
         held-back one are {below} bytes"
    );
    // What streamed early is the image, whole and verified: it runs, as upstream built it.
    assert_eq!(r["loaded"]["image_id"], e.image.config.digest);
    assert_eq!(run_output(&d, &reference), "streamed while downloading");

    // A pull that fails half-way ends the top layer's answer short: the Engine loads nothing.
    d.docker(&["rmi", &reference]).output().unwrap();
    let other = Sandbox::new();
    proxy.clear();
    proxy.add(Fault::Status {
        path_contains: top.clone(),
        status: 404,
        retry_after: None,
        times: common::proxy::ALWAYS,
    });
    let config = other.write_hub_config(&proxy.url(), &[]);
    let mut cmd = other.cli(&config, &["pull", "--load", &reference]);
    cmd.env("DOCKER_HOST", d.host());
    run_fails(&mut cmd);
    let images = d.docker(&["images", "-q"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&images.stdout).trim(),
        "",
        "{}",
        d.log()
    );
}

#[test]
fn export_docker_archive_loads_with_docker_load_and_skopeo_reads_it() {
    let Some(d) = docker_or_skip() else { return };
    let e = env("hello from an exported image");
    let reference = format!("nvidia/cuda:{TAG}");
    run_ok(&mut e.cmd(None, &["pull", &reference]));
    let file = e.sandbox.root().join("cuda.tar");
    run_ok(e.cmd(None, &["export", &reference, "-o"]).arg(&file));
    let again = e.sandbox.root().join("cuda2.tar");
    run_ok(e.cmd(None, &["export", &reference, "-o"]).arg(&again));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(&again).unwrap(),
        "exports are not reproducible"
    );

    let out = d
        .docker(&["load", "-i", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run_output(&d, &reference), "hello from an exported image");
    assert_eq!(d.inspect(&reference)["Id"], e.image.config.digest);

    let out = run_ok(
        e.sandbox
            .skopeo()
            .args(["inspect", &format!("docker-archive:{}", file.display())]),
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        info["Env"].to_string().contains("CUDA_VERSION=12.4.1"),
        "{info}"
    );
    assert_eq!(
        info["Layers"].as_array().unwrap().len(),
        e.image.diff_ids.len()
    );
}

#[test]
fn export_oci_archive_is_read_by_skopeo() {
    let registry = TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Oci, Scale::TINY);
    Pusher::new(&registry).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&registry.url(), &[]);
    let mut pull = sandbox.cudaimg();
    pull.arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(sandbox.store_dir());
    run_ok(pull.args(["pull", "--platform", "linux/amd64", &fx.reference()]));
    let file = sandbox.root().join("cuda.oci.tar");
    let mut export = sandbox.cudaimg();
    export
        .arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(sandbox.store_dir());
    run_ok(
        export
            .args(["export", "--format", "oci-archive", &fx.reference(), "-o"])
            .arg(&file),
    );
    let out = run_ok(
        sandbox
            .skopeo()
            .args(["inspect", &format!("oci-archive:{}", file.display())]),
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Digest"], fx.platform(Arch::Amd64).manifest.digest);
    let copy = sandbox.root().join("copy");
    run_ok(sandbox.skopeo().args([
        "copy",
        &format!("oci-archive:{}", file.display()),
        &format!("dir:{}", copy.display()),
    ]));
}

#[test]
fn load_without_an_engine_says_how_to_get_one() {
    let e = env("unused");
    let reference = format!("nvidia/cuda:{TAG}");
    run_ok(&mut e.cmd(None, &["pull", &reference]));
    let mut cmd = e.cmd(None, &["load", &reference]);
    cmd.env(
        "DOCKER_HOST",
        format!("unix://{}", e.sandbox.root().join("no.sock").display()),
    );
    let out = run_fails(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no Docker Engine answers") && err.contains("no.sock"),
        "{err}"
    );
    assert!(
        err.contains("hint:") && err.contains("DOCKER_HOST"),
        "{err}"
    );
    let mut cmd = e.cmd(None, &["load", &reference]);
    cmd.env("DOCKER_HOST", "ssh://host");
    let out = run_fails(&mut cmd);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported"));
}

#[test]
fn tag_rm_and_gc_keep_the_store_sound() {
    let e = env("unused");
    let reference = format!("nvidia/cuda:{TAG}");
    run_ok(&mut e.cmd(None, &["pull", &reference]));
    run_ok(&mut e.cmd(
        None,
        &["tag", &reference, "registry.corp.example/base/cuda:12.4"],
    ));
    let out = run_ok(&mut e.cmd(None, &["--json", "images"]));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "docker.io/nvidia/cuda:12.4.1-hello-ubuntu22.04",
            "registry.corp.example/base/cuda:12.4"
        ]
    );

    // Removing one name frees nothing: the other still uses every blob.
    run_ok(&mut e.cmd(None, &["rm", &reference]));
    let out = run_ok(&mut e.cmd(None, &["--json", "gc"]));
    let gc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(gc["blobs_removed"], 0, "{gc}");
    run_ok(&mut e.cmd(None, &["verify"]));
    let out = run_ok(&mut e.cmd(None, &["inspect", "registry.corp.example/base/cuda:12.4"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("CUDA_VERSION=12.4.1"));

    // Removing the last name frees everything.
    run_ok(&mut e.cmd(None, &["rm", "registry.corp.example/base/cuda:12.4"]));
    let out = run_ok(&mut e.cmd(None, &["--json", "gc"]));
    let gc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(gc["blobs_removed"].as_u64().unwrap() > 0, "{gc}");
    assert_eq!(gc["blobs_kept"], 0, "{gc}");
    let blobs = std::fs::read_dir(e.sandbox.store_dir().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0);
    run_ok(&mut e.cmd(None, &["verify"]));
    let out = run_fails(&mut e.cmd(None, &["rm", &reference]));
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn gc_during_a_pull_waits_and_deletes_nothing_the_pull_needs() {
    let e = env("unused");
    let reference = format!("nvidia/cuda:{TAG}");
    let slow = FaultProxy::start(&e.registry.url());
    slow.add(Fault::Throttle {
        bytes_per_sec: 1_000_000,
    });
    let config = e.sandbox.write_hub_config(&slow.url(), &[]);
    let mut pull = e.sandbox.cudaimg();
    pull.arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(e.sandbox.store_dir());
    let child = pull
        .args(["pull", &reference])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the pull has committed a blob that no index entry names yet.
    let blobs = e.sandbox.store_dir().join("blobs/sha256");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(&blobs).map_or(0, std::iter::Iterator::count) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull committed nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // gc starts while the pull is in flight, and the proxy's byte count (not either
    // process's account) tells when it ended: only after the pull had fetched everything.
    let mut pull = child;
    let mut gc = e
        .cmd(None, &["--json", "gc"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let at_gc_start = slow.body_bytes_sent();
    assert!(
        pull.try_wait().unwrap().is_none(),
        "the pull ended before gc started: no overlap to test"
    );
    let at_gc_end = loop {
        if gc.try_wait().unwrap().is_some() {
            break slow.body_bytes_sent();
        }
        assert!(std::time::Instant::now() < deadline, "gc never ended");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let gc = gc.wait_with_output().unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let out = pull.wait_with_output().unwrap();
    let fetched = slow.body_bytes_sent();
    assert!(
        at_gc_start < fetched,
        "gc started after the pull's last byte ({at_gc_start} of {fetched}): no overlap"
    );
    assert_eq!(
        at_gc_end, fetched,
        "gc ended while the pull was still fetching: it did not wait"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gc: Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(
        gc["blobs_removed"], 0,
        "gc removed blobs of a running pull: {gc}"
    );
    run_ok(&mut e.cmd(None, &["verify"]));
}

#[test]
fn load_of_a_blob_flipped_in_place_fails_and_the_engine_gets_no_image() {
    let Some(d) = docker_or_skip() else { return };
    let e = env("never loaded");
    let reference = format!("nvidia/cuda:{TAG}");
    run_ok(&mut e.cmd(None, &["pull", &reference]));
    // The largest layer (busybox's), one bit changed, same size.
    let (hex, path) = std::fs::read_dir(e.sandbox.store_dir().join("blobs/sha256"))
        .unwrap()
        .map(|x| x.unwrap())
        .max_by_key(|x| x.metadata().unwrap().len())
        .map(|x| (x.file_name().to_string_lossy().into_owned(), x.path()))
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let out = run_fails(&mut e.cmd(Some(&d), &["load", &reference]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("blob sha256:{hex}")), "{err}");
    assert!(err.contains("cudaimg verify --repair"), "{err}");
    let inspect = d
        .docker(&["image", "inspect", &reference])
        .output()
        .unwrap();
    assert!(
        !inspect.status.success(),
        "the engine holds the image after a failed load"
    );
    let inspect = d
        .docker(&["image", "inspect", &e.image.config.digest])
        .output()
        .unwrap();
    assert!(
        !inspect.status.success(),
        "the engine holds the image by ID"
    );
}

/// A store holding the amd64 runtime image, for the export tests that need no Docker Engine.
/// Its largest layer is a few MB, so an archive is far larger than a pipe's buffer.
struct Stored {
    sandbox: Sandbox,
    config: PathBuf,
    fx: Fixture,
    _registry: TestRegistry,
}

const EXPORTED_NAME: &str = "cuda-12.4.1-runtime-ubuntu22.04.tar";

fn stored() -> Stored {
    let registry = TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale(0.005));
    Pusher::new(&registry).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&registry.url(), &[]);
    run_ok(&mut sandbox.cli(
        &config,
        &["pull", "--platform", "linux/amd64", &fx.reference()],
    ));
    Stored {
        sandbox,
        config,
        fx,
        _registry: registry,
    }
}

impl Stored {
    fn cmd(&self, args: &[&str]) -> Command {
        self.sandbox.cli(&self.config, args)
    }
    fn export(&self, to: &Path) -> Command {
        let mut cmd = self.cmd(&["export", &self.fx.reference(), "-o"]);
        cmd.arg(to);
        cmd
    }
    /// The archive, as exported to a new regular file.
    fn archive(&self) -> Vec<u8> {
        let file = self.sandbox.root().join("reference.tar");
        run_ok(&mut self.export(&file));
        let bytes = std::fs::read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        bytes
    }
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn char_device(path: &Path) -> Option<u64> {
    let m = std::fs::symlink_metadata(path).ok()?;
    m.file_type().is_char_device().then(|| m.rdev())
}

#[test]
fn export_writes_through_devices_and_fifos_and_never_replaces_them() {
    if !is_root() {
        common::skip("mknod needs root");
        return;
    }
    let s = stored();
    let archive = s.archive();
    let dir = s.sandbox.root().join("dev");
    std::fs::create_dir(&dir).unwrap();

    // Twins of /dev/null and /dev/full: a regression replaces these, not the host's.
    let null = dir.join("null");
    let full = dir.join("full");
    run_ok(Command::new("mknod").arg(&null).args(["c", "1", "3"]));
    run_ok(Command::new("mknod").arg(&full).args(["c", "1", "7"]));
    let null_dev = char_device(&null).unwrap();
    let full_dev = char_device(&full).unwrap();
    assert_eq!(Some(null_dev), char_device(Path::new("/dev/null")));

    let out = run_ok(&mut s.export(&null));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("exported"),
        "{out:?}"
    );
    assert_eq!(
        char_device(&null),
        Some(null_dev),
        "the device was replaced"
    );

    let out = run_fails(&mut s.export(&full));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot write `{}`", full.display()))
            && err.contains("No space left on device"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        char_device(&full),
        Some(full_dev),
        "the device was replaced"
    );

    // A FIFO is written through to its reader, whole.
    let fifo = dir.join("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    run_ok(&mut s.export(&fifo));
    assert!(
        reader.join().unwrap() == archive,
        "the FIFO's reader got other bytes"
    );
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(names_in(&dir), ["fifo", "full", "null"], "litter was left");
}

#[test]
fn export_to_a_directory_is_refused_before_anything_is_written() {
    let s = stored();
    let dir = s.sandbox.root().join("out");
    std::fs::create_dir(&dir).unwrap();
    let before = names_in(s.sandbox.root());
    let out = run_fails(&mut s.export(&dir));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("`{}` is a directory", dir.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "hint: name a file inside it, e.g. `-o {}/{EXPORTED_NAME}`",
            dir.display()
        )),
        "{err}"
    );
    assert!(names_in(&dir).is_empty());
    assert_eq!(
        names_in(s.sandbox.root()),
        before,
        "something was written beside it"
    );
    // The suggested name works.
    run_ok(&mut s.export(&dir.join(EXPORTED_NAME)));
    assert_eq!(names_in(&dir), [EXPORTED_NAME]);
}

#[test]
fn export_replaces_a_file_only_when_the_archive_is_whole_and_leaves_no_temp_file() {
    let s = stored();
    let archive = s.archive();
    let out_dir = s.sandbox.root().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.join("image.tar");
    std::fs::write(&target, b"old content").unwrap();

    // Through a link, as `cp` does: the file it points to is replaced, the link stays.
    let link = out_dir.join("link.tar");
    std::os::unix::fs::symlink("image.tar", &link).unwrap();
    let out = run_ok(
        s.sandbox
            .cli(&s.config, &["--json", "export", &s.fx.reference(), "-o"])
            .arg(&link),
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["digest"], s.fx.platform(Arch::Amd64).manifest.digest);
    assert_eq!(r["bytes"], archive.len() as u64);
    assert_eq!(r["format"], "docker-archive");
    assert!(std::fs::read(&target).unwrap() == archive);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(names_in(&out_dir), ["image.tar", "link.tar"]);

    if !is_root() {
        common::skip("the failing export runs as another user, which needs root");
        return;
    }
    // A layer that cannot be read makes the export fail after the archive's first entries
    // were written: run as `nobody`, with that blob unreadable to it.
    std::fs::write(&target, b"old content").unwrap();
    let layer = &s.fx.platform(Arch::Amd64).layers[0].digest;
    let blob = s.sandbox.store_dir().join("blobs/sha256").join(&layer[7..]);
    std::fs::set_permissions(s.sandbox.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = s.export(&target);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    let out = run_fails(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&layer[7..]) && err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"old content");
    assert_eq!(
        names_in(&out_dir),
        ["image.tar", "link.tar"],
        "a temporary file was left"
    );

    // Readable again: the same user replaces the file.
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = s.export(&target);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    run_ok(&mut cmd);
    assert!(std::fs::read(&target).unwrap() == archive);
    assert_eq!(names_in(&out_dir), ["image.tar", "link.tar"]);
}

#[test]
fn a_closed_stdout_is_not_an_error_for_any_command() {
    let s = stored();
    let reference = s.fx.reference();
    // `export -o - | head -c 100`, as a shell runs it; the status is cudaimg's own.
    let status = s.sandbox.root().join("status");
    let mut sh = s.sandbox.command("sh");
    sh.arg("-c")
        .arg(format!(
            "(\"$0\" \"$@\"; echo $? > '{}') | head -c 100 | wc -c",
            status.display()
        ))
        .arg(common::cudaimg_binary())
        .arg("--config")
        .arg(&s.config)
        .arg("--store")
        .arg(s.sandbox.store_dir())
        .args(["export", &reference, "-o", "-"]);
    let out = run_ok(&mut sh);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        std::fs::read_to_string(&status).unwrap().trim(),
        "0",
        "{err}"
    );
    assert!(err.is_empty(), "{err}");

    // Every command that prints, into a pipe whose reader is gone before it starts.
    let commands: Vec<Vec<&str>> = vec![
        vec!["images"],
        vec!["--json", "images"],
        vec!["inspect", &reference],
        vec!["--json", "inspect", &reference],
        vec!["verify"],
        vec!["--json", "verify"],
        vec!["explain", "12.4.1-runtime-ubuntu22.04"],
        vec!["--json", "explain", "12.4.1-runtime-ubuntu22.04"],
        vec!["tags", "nvidia/cuda"],
        vec!["--json", "tags", "nvidia/cuda"],
        vec!["run-config", "--scenario", "compose", &reference],
        vec!["--help"],
        vec!["--version"],
        vec!["--json", "pull", "--platform", "linux/amd64", &reference],
        vec!["export", &reference, "-o", "-"],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = s
            .cmd(&args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("error") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }

    // stderr closed too (`2>&1 | head -1`): messages are lost, never the run; no panic (101).
    for (args, code) in [
        (
            vec!["-v", "pull", "--platform", "linux/amd64", &reference],
            0,
        ),
        (vec!["inspect", "nvidia/cuda:not-pulled"], 4),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let status = s
            .cmd(&args)
            .stdout(Stdio::from(writer.try_clone().unwrap()))
            .stderr(Stdio::from(writer))
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(code), "{args:?}");
    }
}
