//! README's "Getting started", run exactly as written: the fenced block after the
//! `getting-started` marker is taken from README.md (so the two cannot drift) and run by
//! `sh -e`, in a fresh sandbox with no mirrors.toml, against a local registry as the mirror
//! (Docker Hub is out of reach here, as behind a blocked link) and the harness's own dockerd.
//! Two lines are stood in for, and checked to be what README says: `export MIRROR=…` gets the
//! local registry's URL, and `cargo install --locked --path .` (a release build, minutes) is
//! replaced by this test run's own build of cudaimg first on PATH. Root only; else SKIPPED.

use cudaimg_test_support as common;

use common::docker::{busybox, unavailable_reason, Runnable, TestDocker};
use common::{run_ok, Arch, CudaSpec, FixtureStore, Flavor, Pusher, Sandbox, TestRegistry};

const MARKER: &str = "<!-- getting-started:";
const IMAGE: &str = "nvidia/cuda:12.4.1-base-ubuntu22.04";

/// The lines of the first `sh` fenced block after the marker.
fn readme_block() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = &readme[readme
        .find(MARKER)
        .expect("README has the getting-started marker")..];
    let start = after
        .find("```sh\n")
        .expect("a ```sh block after the marker")
        + 6;
    let body = &after[start..];
    let end = body.find("```").unwrap();
    body[..end].lines().map(str::to_owned).collect()
}

#[test]
fn getting_started_runs_as_written() {
    let block = readme_block();
    let command = |l: &str| l.split('#').next().unwrap().trim().to_owned();
    let commands: Vec<String> = block.iter().map(|l| command(l)).collect();
    assert_eq!(commands[0], "cargo install --locked --path .", "{block:?}");
    assert!(commands[1].starts_with("export MIRROR="), "{block:?}");
    // What the block does, so a rewrite that drops a step fails here.
    for step in [
        "cudaimg mirrors init",
        "cudaimg pull",
        "cudaimg load",
        "docker run",
    ] {
        assert!(
            commands.iter().any(|c| c.starts_with(step)),
            "no `{step}`: {block:?}"
        );
    }
    if let Some(why) = unavailable_reason() {
        common::skip(&why);
        return;
    }

    // The mirror holds a runnable nvidia/cuda:12.4.1-base-ubuntu22.04 (a static busybox
    // whose default command prints a message, on the fixture's layers).
    let base = FixtureStore::shared().cuda(&CudaSpec::new("12.4.1", Flavor::Base));
    let runnable = Runnable::build(
        base.platform(Arch::Amd64),
        "hello from the mirror",
        &busybox(),
    );
    let mirror = TestRegistry::start();
    let (repo, tag) = IMAGE.split_once(':').unwrap();
    runnable.push(&Pusher::new(&mirror), base.platform(Arch::Amd64), repo, tag);
    let docker = TestDocker::start();

    let sandbox = Sandbox::new();
    let bin = common::cudaimg_binary();
    let bin_dir = bin.parent().unwrap();
    let mut script = String::from("set -e\n");
    for (line, cmd) in block.iter().zip(&commands) {
        if cmd.starts_with("cargo install") {
            continue;
        }
        if cmd.starts_with("export MIRROR=") {
            script.push_str(&format!("export MIRROR={}\n", mirror.url()));
            continue;
        }
        script.push_str(line);
        script.push('\n');
    }
    let out = run_ok(
        sandbox
            .command("sh")
            .arg("-c")
            .arg(&script)
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
            .env("DOCKER_HOST", docker.host()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("hello from the mirror"),
        "{stdout}\n{stderr}"
    );
    // The file went where every directory finds it, and says so.
    let file = sandbox.config_home().join("cudaimg/mirrors.toml");
    assert!(
        stdout.contains(&format!("wrote {}", file.display()))
            && stdout.contains("used from every directory"),
        "{stdout}"
    );
    // Docker Hub was out of reach: the mirror's answer was taken, and said so.
    assert!(stderr.contains("mirror-asserted"), "{stderr}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains(&mirror.url()), "{written}");
    // Docker holds it under its official name.
    let inspect = docker.inspect(IMAGE);
    assert!(inspect.to_string().contains(IMAGE), "{inspect}");
}
