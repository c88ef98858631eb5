//! Issue 22 item 12: `cudaimg import ARCHIVE` stores what `docker save` wrote (Docker 20.10's
//! legacy layout and Docker 28's OCI layout) and what `cudaimg export --format oci-archive`
//! wrote, verified, under the names they record; and refuses hostile archives without
//! writing outside the store. Real engines and registries; skopeo reads back what is pushed.

use std::path::Path;

use cudaimg_test_support as common;

use common::chroot::require;
use common::docker::{busybox, EngineKind, Runnable, TestDocker};
use common::TestRegistry;
use common::{run_fails, run_ok, Arch, Fixture, Flavor, MediaTypes, Pusher, Sandbox, Scale};
use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn cli(sandbox: &Sandbox, args: &[&str]) -> std::process::Command {
    let mut cmd = sandbox.cudaimg();
    cmd.arg("--store").arg(sandbox.store_dir()).args(args);
    cmd
}

/// `docker save` from `docker`, `import` into a fresh store, then the store's image is the
/// engine's: same config (image ID), `verify` passes, and a push of it reads back in skopeo.
fn save_import_and_check(docker: &TestDocker, name: &str, kind: &str) {
    let sandbox = Sandbox::new();
    let archive = sandbox.root().join("saved.tar");
    run_ok(&mut docker.docker(&["save", "-o", archive.to_str().unwrap(), name]));
    let id = docker.inspect(name)["Id"].as_str().unwrap().to_owned();
    let report = json(&run_ok(&mut cli(
        &sandbox,
        &["--json", "import", archive.to_str().unwrap()],
    )));
    assert_eq!(report["kind"], kind, "{report:#}");
    let canonical = format!("docker.io/{name}");
    let image = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == canonical.as_str())
        .unwrap_or_else(|| panic!("{canonical} not stored: {report:#}"));
    assert!(image["digest"].as_str().unwrap().starts_with("sha256:"));
    run_ok(&mut cli(&sandbox, &["verify"]));
    let inspect = json(&run_ok(&mut cli(
        &sandbox,
        &["--json", "inspect", &canonical],
    )));
    assert_eq!(inspect["config_digest"], id.as_str(), "{inspect:#}");

    // Out again, to a registry: skopeo reads the same config.
    let registry = TestRegistry::start();
    let to = format!("{}/saved/image:1", registry.host());
    run_ok(&mut cli(&sandbox, &["push", &canonical, &to]));
    let config = run_ok(sandbox.skopeo().args([
        "inspect",
        "--raw",
        "--config",
        "--tls-verify=false",
        &format!("docker://{to}"),
    ]));
    assert_eq!(common::fixtures::sha256_digest(&config.stdout), id);
}

fn runnable_in(docker: &TestDocker, tag: &str) -> String {
    let base = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, Scale::TINY);
    let amd64 = base.platform(Arch::Amd64);
    let image = Runnable::build(amd64, "hello from an archive", &busybox());
    let registry = TestRegistry::start();
    image.push(&Pusher::new(&registry), amd64, "nvidia/cuda", tag);
    let remote = format!("{}/nvidia/cuda:{tag}", registry.host());
    run_ok(&mut docker.docker(&["pull", &remote]));
    let name = format!("nvidia/cuda:{tag}");
    run_ok(&mut docker.docker(&["tag", &remote, &name]));
    name
}

#[test]
fn docker_save_of_engine_20_10_and_28_imports_into_the_store_as_the_engine_holds_it() {
    let Some(stable) = require(TestDocker::try_start_kind(
        EngineKind::Stable,
        &serde_json::json!({}),
    )) else {
        return;
    };
    let name = runnable_in(&stable, "12.4.1-saved-legacy");
    save_import_and_check(&stable, &name, "docker-legacy");
    drop(stable);
    let Some(current) = require(TestDocker::try_start_kind(
        EngineKind::Current {
            containerd_store: false,
        },
        &serde_json::json!({}),
    )) else {
        return;
    };
    let name = runnable_in(&current, "12.4.1-saved-oci");
    save_import_and_check(&current, &name, "oci-layout");
}

#[test]
fn an_exported_oci_archive_imports_into_another_store_byte_exact() {
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Oci, Scale::TINY);
    let upstream = TestRegistry::start();
    Pusher::new(&upstream).push(&fx);
    let near = Sandbox::new();
    let config = near.write_hub_config(&upstream.url(), &[]);
    run_ok(&mut near.cli(
        &config,
        &["pull", "--platform", "linux/amd64", &fx.reference()],
    ));
    let archive = near.root().join("x.tar");
    let name = format!("docker.io/{}", fx.reference());
    run_ok(&mut near.cli(
        &config,
        &[
            "export",
            &name,
            "--format",
            "oci-archive",
            "-o",
            archive.to_str().unwrap(),
        ],
    ));
    let far = Sandbox::new();
    let report = json(&run_ok(&mut cli(
        &far,
        &["--json", "import", archive.to_str().unwrap()],
    )));
    assert_eq!(report["kind"], "oci-layout", "{report:#}");
    let amd = fx.platform(Arch::Amd64);
    assert!(
        report["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == name.as_str() && i["digest"] == amd.manifest.digest.as_str()),
        "{report:#}"
    );
    run_ok(&mut cli(&far, &["verify"]));
    // Again: nothing new to write.
    let again = json(&run_ok(&mut cli(
        &far,
        &["--json", "import", archive.to_str().unwrap()],
    )));
    assert_eq!(again["blobs_written"], 0, "{again:#}");
    // `--name` puts it elsewhere; `--to` is refused with the way to do it.
    run_ok(&mut cli(
        &far,
        &[
            "import",
            archive.to_str().unwrap(),
            "--name",
            "team/cuda:mine",
        ],
    ));
    let images = String::from_utf8_lossy(&run_ok(&mut cli(&far, &["images"])).stdout).into_owned();
    assert!(images.contains("team/cuda"), "{images}");
    let out = run_fails(&mut cli(
        &far,
        &[
            "import",
            archive.to_str().unwrap(),
            "--to",
            "localhost:5000",
        ],
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cudaimg push"));
}

/// A tar with the given entries: (path, contents) files, and (path, target) symlinks.
fn tar_of(path: &Path, files: &[(&str, &[u8])], links: &[(&str, &str)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`; a hostile archive writes the name raw.
        let raw = name.as_bytes();
        h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
        h.set_cksum();
        b.append(&h, *bytes).unwrap();
    }
    for (name, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn hostile_archives_are_refused_naming_the_problem_and_nothing_leaves_the_store() {
    let sandbox = Sandbox::new();
    let run =
        |archive: &Path| run_fails(&mut cli(&sandbox, &["import", archive.to_str().unwrap()]));
    let outside = sandbox.root().join("evil");

    // A path out of the archive.
    let a = sandbox.root().join("escape.tar");
    tar_of(&a, &[("../../evil", b"x")], &[]);
    let out = run(&a);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("outside"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!outside.exists());

    // A layer linked out of the archive (the legacy layout links duplicate layers).
    let b = sandbox.root().join("link.tar");
    let manifest = br#"[{"Config":"c.json","RepoTags":["x/y:1"],"Layers":["l/layer.tar"]}]"#;
    tar_of(
        &b,
        &[("manifest.json", manifest), ("c.json", b"{}")],
        &[("l/layer.tar", "../../../../etc/passwd")],
    );
    let out = run(&b);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("outside"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Layers that are not what the config says.
    let c = sandbox.root().join("lies.tar");
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
    tar_of(
        &c,
        &[
            ("manifest.json", manifest),
            ("c.json", config),
            ("l/layer.tar", b"not the layer"),
        ],
        &[],
    );
    let out = run(&c);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("config lists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Not an archive at all, and a FIFO (refused before any read, so it cannot block).
    let d = sandbox.root().join("notes.txt");
    std::fs::write(&d, "hello").unwrap();
    assert_eq!(run(&d).status.code(), Some(2));
    let fifo = sandbox.root().join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = run(&fifo);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));

    // Nothing was named, and no scratch is left behind.
    let images = run_ok(&mut cli(&sandbox, &["--json", "images"]));
    assert_eq!(json(&images), serde_json::json!([]));
    let ingest = sandbox.store_dir().join("ingest");
    let left: Vec<_> = std::fs::read_dir(&ingest)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
