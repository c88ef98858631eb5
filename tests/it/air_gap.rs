//! README's "An air-gapped site, end to end", run as written (issue 22): every fenced block
//! between the `air-gap: outside`, `air-gap: inside` and `air-gap: end` markers is taken from
//! README.md, so the walkthrough and this test cannot drift.
//!
//! Outside: `sync.toml` is written as the README shows it and each `sh` line runs in a
//! sandbox whose Docker Hub is a local registry holding CUDA-like multi-arch tags (and tags
//! the spec must leave out). Inside, in another sandbox with no route to that registry:
//! `registry.site.example:5000` stands for a second local registry; the `json` block is the
//! `daemon.json` of a Docker 20.10 node, each `hosts.toml` block is containerd 2.1's
//! `certs.d/docker.io/hosts.toml` from where it appears on, the `mirrors.toml` block is
//! cudaimg's own `./mirrors.toml`, and `docker`/`ctr` lines run against those engines.
//! Every node must get the chosen platform's manifest, as upstream built it.

use std::path::Path;

use cudaimg_test_support as common;

use common::chroot::require;
use common::containerd::TestContainerd;
use common::docker::{EngineKind, TestDocker};
use common::{run_ok, Arch, Fixture, Flavor, MediaTypes, Pusher, Sandbox, Scale, TestRegistry};

const SITE: &str = "registry.site.example:5000";

/// A fenced block: its language and its lines.
struct Block {
    lang: String,
    body: String,
}

/// The fenced blocks between README's `<!-- air-gap: FROM` marker and the next marker.
fn blocks(from: &str) -> Vec<Block> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let marker = format!("<!-- air-gap: {from}");
    let start = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README has no `{marker}`"))
        + marker.len();
    let rest = &readme[start..];
    let end = rest
        .find("<!-- air-gap:")
        .expect("a closing air-gap marker");
    let mut out = Vec::new();
    let mut region = &rest[..end];
    while let Some(open) = region.find("```") {
        let after = &region[open + 3..];
        let newline = after.find('\n').unwrap();
        let lang = after[..newline].trim().to_owned();
        let body_end = after[newline + 1..].find("```").expect("a closed block");
        out.push(Block {
            lang,
            body: after[newline + 1..newline + 1 + body_end].to_owned(),
        });
        region = &after[newline + 1 + body_end + 3..];
    }
    out
}

/// A line's command, without its comment.
fn command(line: &str) -> String {
    line.split(" #").next().unwrap().trim().to_owned()
}

fn sh_lines(blocks: &[Block]) -> Vec<String> {
    blocks
        .iter()
        .filter(|b| b.lang == "sh")
        .flat_map(|b| b.body.lines().map(command))
        .filter(|c| !c.is_empty())
        .collect()
}

/// `sh -ec LINE` in `sandbox`, with this run's cudaimg first on PATH.
fn sh(sandbox: &Sandbox, line: &str, config: Option<&Path>) -> String {
    let bin = common::cudaimg_binary();
    let mut cmd = sandbox.command("sh");
    cmd.arg("-ec").arg(line).env(
        "PATH",
        format!("{}:/usr/bin:/bin", bin.parent().unwrap().display()),
    );
    if let Some(config) = config {
        cmd.env("CUDAIMG_CONFIG", config);
    }
    let out = run_ok(&mut cmd);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_air_gapped_walkthrough_ends_with_docker_and_containerd_nodes_pulling() {
    let outside = blocks("outside");
    let inside = blocks("inside");
    // What the walkthrough does, so a rewrite that drops a step fails here.
    let outside_sh = sh_lines(&outside);
    let inside_sh = sh_lines(&inside);
    assert!(outside
        .iter()
        .any(|b| b.lang == "toml" && b.body.contains("[[images]]")));
    assert!(outside_sh.iter().any(|c| c.contains("--to bundle-1")));
    for step in [
        format!("cudaimg import bundle-1 --to {SITE}"),
        format!("cudaimg import bundle-1 --to {SITE}/mirror"),
        "docker pull".into(),
        "ctr image pull".into(),
        "cudaimg pull".into(),
    ] {
        assert!(
            inside_sh.iter().any(|c| c.starts_with(&step)),
            "no `{step}`: {inside_sh:?}"
        );
    }
    let daemon: serde_json::Value = serde_json::from_str(
        &inside
            .iter()
            .find(|b| b.lang == "json")
            .expect("a daemon.json block")
            .body
            .replace(SITE, "SITE"),
    )
    .unwrap();

    let Some(containerd) = require(TestContainerd::try_start()) else {
        return;
    };
    // Upstream: what the spec selects (12.4.1 runtime and devel, Ubuntu 22.04, amd64 of a
    // multi-arch index), beside what it must leave out (another CUDA, another OS).
    let upstream = TestRegistry::start();
    let fixture = |v: &str, f: Flavor| Fixture::cuda(v, f, MediaTypes::Docker, Scale::TINY);
    let runtime = fixture("12.4.1", Flavor::Runtime);
    let devel = fixture("12.4.1", Flavor::Devel);
    let pusher = Pusher::new(&upstream);
    for f in [&runtime, &devel, &fixture("12.6.2", Flavor::Runtime)] {
        pusher.push(f);
    }

    // Outside.
    let near = Sandbox::new();
    let config = near.write_hub_config(&upstream.url(), &[]);
    for block in outside.iter().filter(|b| b.lang == "toml") {
        near.write("sync.toml", &block.body);
    }
    let mut log = String::new();
    for line in &outside_sh {
        log += &sh(&near, line, Some(&config));
    }
    drop(upstream);

    // Carried across.
    let far = Sandbox::new();
    run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(near.root().join("bundle-1"))
            .arg(far.root()),
    );
    let site = TestRegistry::start();
    let host = site.host();
    let daemon: serde_json::Value =
        serde_json::from_str(&daemon.to_string().replace("SITE", &host)).unwrap();
    let Some(docker) = require(TestDocker::try_start_kind(EngineKind::Stable, &daemon)) else {
        return;
    };
    let certs = containerd.dir().join("certs.d");
    let mut hosts_tomls = 0;
    for block in &inside {
        let body = block.body.replace(SITE, &host);
        match block.lang.as_str() {
            "toml" if body.contains("server =") => {
                let dir = certs.join("docker.io");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("hosts.toml"), &body).unwrap();
                hosts_tomls += 1;
            }
            "toml" => {
                assert!(body.contains("[registries."), "{body}");
                far.write("mirrors.toml", &body);
            }
            "sh" => {
                for line in body.lines().map(command).filter(|c| !c.is_empty()) {
                    let words: Vec<String> = line
                        .split_whitespace()
                        .map(|w| w.replace("/etc/containerd/certs.d", certs.to_str().unwrap()))
                        .collect();
                    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
                    let out = match words[0].as_str() {
                        "docker" => run_ok(&mut docker.docker(&args)),
                        "ctr" => run_ok(&mut containerd.ctr(&args)),
                        _ => {
                            log += &sh(&far, &line, None);
                            continue;
                        }
                    };
                    log += &String::from_utf8_lossy(&out.stdout);
                    log += &String::from_utf8_lossy(&out.stderr);
                }
            }
            _ => {}
        }
    }
    assert_eq!(hosts_tomls, 2, "{log}");

    // Each node holds the chosen platform, as upstream built it.
    let inspect = docker.inspect(&runtime.reference());
    assert_eq!(
        inspect["Id"],
        runtime.platform(Arch::Amd64).config.digest,
        "{inspect:#}"
    );
    assert_eq!(inspect["Architecture"], "amd64");
    let images = containerd.images("default");
    for f in [&devel, &runtime] {
        let name = format!("docker.io/{}", f.reference());
        let digest = &f.platform(Arch::Amd64).manifest.digest;
        assert!(
            images
                .iter()
                .any(|(n, d)| *n == name && d == digest.as_str()),
            "{name} is not {digest}: {images:?}\n{log}"
        );
    }
    // cudaimg itself took the namespaced mirror (Docker Hub is out of reach here).
    assert!(
        log.contains(&format!("http://{host}/mirror")),
        "the pull did not name the mirror under its path:\n{log}"
    );
    // `mirrors check` writes the README's hosts.toml for that mirror, and containerd pulls
    // through it; Docker's daemon.json cannot name a path, and the mirror is left out.
    let emitted = far.root().join("emitted");
    let check = |emit: &str| {
        run_ok(
            far.cudaimg()
                .args([
                    "mirrors",
                    "check",
                    "--tag",
                    &devel.reference(),
                    "--emit",
                    emit,
                ])
                .args(["--out", emitted.to_str().unwrap()]),
        )
    };
    check("containerd");
    let hosts = std::fs::read_to_string(emitted.join("docker.io/hosts.toml")).unwrap();
    assert!(
        hosts.contains(&format!(
            "[host.\"http://{host}/v2/mirror\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
        )),
        "{hosts}"
    );
    run_ok(&mut containerd.ctr(&["image", "rm", &format!("docker.io/{}", devel.reference())]));
    let emitted_dir = emitted.to_str().unwrap();
    run_ok(&mut containerd.ctr(&[
        "image",
        "pull",
        "--hosts-dir",
        emitted_dir,
        &format!("docker.io/{}", devel.reference()),
    ]));
    let daemon = run_ok(far.cudaimg().args([
        "mirrors",
        "check",
        "--tag",
        &devel.tag,
        "--emit",
        "daemon-json",
    ]));
    let notes = String::from_utf8_lossy(&daemon.stderr);
    assert!(notes.contains("take no path"), "{notes}");
    let daemon: serde_json::Value = serde_json::from_slice(&daemon.stdout).unwrap();
    assert_eq!(
        daemon["registry-mirrors"],
        serde_json::json!([]),
        "{daemon}"
    );

    let stored = run_ok(far.cudaimg().args(["--json", "images"]));
    let stored = String::from_utf8_lossy(&stored.stdout);
    assert!(stored.contains(devel.tag.as_str()), "{stored}");
}
