//! The first hour of a new user (issue 15): each test feeds a command the mistake a new
//! user makes, or the situation they are in, and checks that what is printed works as
//! printed: `run-config` after `pull --load`, Docker contexts, `pull` of a tag the grammar
//! knows is wrong, `tags` from the official list, config and platform spellings, hints that
//! must be valid commands, and output (JSON, plurals, widths).

use cudaimg_test_support as common;

use std::path::PathBuf;
use std::process::Command;

use common::docker::{unavailable_reason, TestDocker};
use common::{
    run_fails, run_ok, Arch, Fixture, Flavor, MediaTypes, Pusher, Sandbox, Scale, TestRegistry,
};
use serde_json::Value;

const TAG: &str = "12.4.1-hello-ubuntu22.04";

fn docker_or_skip() -> Option<TestDocker> {
    match unavailable_reason() {
        Some(why) => {
            common::skip(&why);
            None
        }
        None => Some(TestDocker::start()),
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A registry (as docker.io) holding a runnable `nvidia/cuda:TAG` that prints `message`.
struct Hub {
    sandbox: Sandbox,
    config: PathBuf,
    registry: Option<TestRegistry>,
}

fn hub(message: &str) -> Hub {
    let e = crate::loaded::env(message);
    Hub {
        sandbox: e.sandbox,
        config: e.config,
        registry: Some(e.registry),
    }
}

impl Hub {
    fn cmd(&self, docker: Option<&TestDocker>, args: &[&str]) -> Command {
        let mut cmd = self.sandbox.cli(&self.config, args);
        if let Some(d) = docker {
            cmd.env("DOCKER_HOST", d.host());
        }
        cmd
    }
}

/// The quick line, made runnable without a GPU: no `--gpus`, no `-it`, the image's own
/// command instead of `nvidia-smi`, no network. Everything else (the image as printed)
/// stays as printed.
fn without_gpu(line: &str) -> String {
    line.replace(" -it", "")
        .replace("--gpus all", "--network none")
        .replace(" nvidia-smi", "")
}

#[test]
fn run_config_after_pull_load_runs_in_docker_and_compose_with_no_registry() {
    let Some(d) = docker_or_skip() else { return };
    let mut hub = hub("hello from run-config");
    let reference = format!("nvidia/cuda:{TAG}");
    run_ok(&mut hub.cmd(Some(&d), &["pull", "--load", &reference]));
    // What Docker records after a load: the tag, and no repository digest.
    let inspect = d.inspect(&reference);
    assert_eq!(inspect["RepoDigests"], serde_json::json!([]), "{inspect}");

    // No registry from here on: whatever the line names must resolve in the Engine.
    drop(hub.registry.take());
    let out = run_ok(&mut hub.cmd(
        Some(&d),
        &["--json", "run-config", &reference, "--scenario", "quick"],
    ));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["pinned_by"], "tag", "{r}");
    assert_eq!(r["image"], reference.as_str());
    assert_eq!(r["docker_image_id"], inspect["Id"]);
    let content = r["content"].as_str().unwrap();
    assert!(
        content.contains(inspect["Id"].as_str().unwrap()) && content.contains("@sha256:"),
        "the comment names the image ID and the upstream digest:\n{content}"
    );
    let line = content
        .lines()
        .find(|l| l.starts_with("docker run"))
        .unwrap();
    let script = without_gpu(line);
    let ran = Command::new("sh")
        .args(["-c", &script])
        .env("DOCKER_HOST", d.host())
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "`{script}` failed: {}\n{}",
        stderr(&ran),
        d.log()
    );
    assert_eq!(stdout(&ran).trim(), "hello from run-config");

    // The text form prints the same line on stdout, the comment with it.
    let out = run_ok(&mut hub.cmd(Some(&d), &["run-config", &reference, "--scenario", "quick"]));
    assert!(stdout(&out).contains(line), "{}", stdout(&out));

    // compose: the service's image resolves in the Engine with no pull.
    let out = run_ok(&mut hub.cmd(
        Some(&d),
        &["run-config", &reference, "--scenario", "compose"],
    ));
    let dir = hub.sandbox.root().join("compose");
    std::fs::create_dir_all(dir.join("work")).unwrap();
    std::fs::write(dir.join("docker-compose.yml"), stdout(&out)).unwrap();
    let compose = Command::new("docker-compose")
        .args(["--no-ansi", "up", "--no-start"])
        .current_dir(&dir)
        .env("DOCKER_HOST", d.host())
        .output();
    match compose {
        Err(e) => eprintln!("docker-compose not runnable here ({e}); compose part skipped"),
        Ok(o) => {
            assert!(
                o.status.success(),
                "docker-compose up --no-start failed:\n{}\n{}",
                stdout(&o),
                stderr(&o)
            );
            let ps = d
                .docker(&["ps", "-a", "--format", "{{.Image}}"])
                .output()
                .unwrap();
            assert_eq!(
                stdout(&ps).trim(),
                reference,
                "the service's container uses the loaded image"
            );
        }
    }

    // An image Docker pulled by digest keeps the digest pin; one Docker lacks is named by
    // digest with a note saying how to load it.
    d.docker(&["rm", "-f", "compose_cuda_1"]).output().unwrap();
    let ps = d.docker(&["ps", "-aq"]).output().unwrap();
    for id in stdout(&ps).split_whitespace() {
        d.docker(&["rm", "-f", id]).output().unwrap();
    }
    run_ok(&mut d.docker(&["rmi", &reference]));
    let out = run_ok(&mut hub.cmd(
        Some(&d),
        &["--json", "run-config", &reference, "--scenario", "quick"],
    ));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["pinned_by"], "digest", "{r}");
    assert!(stderr(&out).contains("cudaimg load"), "{}", stderr(&out));
}

#[test]
fn load_finds_the_engine_through_the_current_docker_context() {
    let Some(d) = docker_or_skip() else { return };
    let hub = hub("hello through a context");
    let reference = format!("nvidia/cuda:{TAG}");
    run_ok(&mut hub.cmd(None, &["pull", &reference]));

    // `docker context create ci --docker host=…` then `docker context use ci`, by hand:
    // meta.json under the sha256 of the name, `currentContext` in config.json.
    use sha2::{Digest as _, Sha256};
    let name = "ci";
    let meta_dir = hub
        .sandbox
        .docker_config_dir()
        .join("contexts/meta")
        .join(hex::encode(Sha256::digest(name.as_bytes())));
    std::fs::create_dir_all(&meta_dir).unwrap();
    std::fs::write(
        meta_dir.join("meta.json"),
        serde_json::json!({
            "Name": name,
            "Metadata": {},
            "Endpoints": {"docker": {"Host": d.host(), "SkipTLSVerify": false}}
        })
        .to_string(),
    )
    .unwrap();
    // The docker CLI itself agrees this is the context's endpoint.
    let mut cli = Command::new("docker");
    cli.env_remove("DOCKER_HOST")
        .env("DOCKER_CONFIG", hub.sandbox.docker_config_dir())
        .args([
            "--context",
            name,
            "version",
            "--format",
            "{{.Server.Version}}",
        ]);
    run_ok(&mut cli);

    // With no DOCKER_HOST and no current context: the default socket, which is not there.
    let out = run_fails(&mut hub.cmd(None, &["load", &reference]));
    assert!(
        stderr(&out).contains("/var/run/docker.sock"),
        "{}",
        stderr(&out)
    );

    hub.sandbox
        .write_docker_config(&serde_json::json!({"currentContext": name}));
    let out = run_ok(&mut hub.cmd(None, &["--json", "load", &reference]));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["loaded"]["engine"], d.host(), "{r}");
    d.inspect(&reference);

    // DOCKER_CONTEXT overrides config.json; a context that does not exist is named.
    let out = run_fails(
        hub.cmd(None, &["load", &reference])
            .env("DOCKER_CONTEXT", "nope"),
    );
    assert!(
        stderr(&out).contains("context `nope`") && stderr(&out).contains("docker context ls"),
        "{}",
        stderr(&out)
    );
}

/// A registry holding one image under each of `tags` in `nvidia/cuda`.
fn registry_with_tags(tags: &[&str]) -> TestRegistry {
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale::TINY);
    let reg = TestRegistry::start();
    let pusher = Pusher::new(&reg);
    pusher.push_untagged(&fx, "nvidia/cuda");
    for t in tags {
        pusher.push_manifest("nvidia/cuda", t, fx.top());
    }
    reg
}

const OLD_TAGS: &[&str] = &[
    "12.4.1-runtime-ubuntu22.04",
    "12.4.1-devel-ubuntu22.04",
    "12.4.1-runtime-ubuntu20.04",
];
const NEWEST: &str = "13.0.1-runtime-ubuntu24.04";

#[test]
fn tags_come_from_the_official_list_when_it_answers_and_say_so_when_not() {
    let mut all = OLD_TAGS.to_vec();
    all.push(NEWEST);
    let official = registry_with_tags(&all);
    // A mirror that lags: the newest tag is not there yet.
    let mirror = registry_with_tags(OLD_TAGS);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[&mirror.url()]);
    for repository in [
        "nvidia/cuda".to_owned(),
        "docker.io/nvidia/cuda".to_owned(),
        "registry-1.docker.io/nvidia/cuda".to_owned(),
        format!("{}/nvidia/cuda", official.host()),
    ] {
        let out = run_ok(&mut sandbox.cli(&config, &["--json", "tags", &repository]));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["source_role"], "official", "{repository}: {r}");
        assert_eq!(r["total"], 4, "{repository}: {r}");
        assert_eq!(r["recommended"]["tag"], NEWEST, "{repository}: {r}");
    }
    assert!(
        !mirror
            .requests()
            .iter()
            .any(|q| q.path.contains("/tags/list")),
        "the lagging mirror was not asked: {:?}",
        mirror.requests()
    );

    // The official registry down: the mirror's list, and the reason it is used.
    let config = sandbox.write_hub_config(&common::dead_endpoint(), &[&mirror.url()]);
    let out = run_ok(&mut sandbox.cli(&config, &["tags", "nvidia/cuda"]));
    let err = stderr(&out);
    assert!(
        err.contains("official registry did not answer") && err.contains(&mirror.url()),
        "{err}"
    );
}

#[test]
fn pull_refuses_tags_that_cannot_exist_before_any_request_and_suggests_real_ones() {
    let official = registry_with_tags(OLD_TAGS);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let before = official.requests().len();
    for (reference, cause, suggestion) in [
        (
            "nvidia/cuda:12.4-runtime-ubuntu22.04",
            "patch release",
            "did you mean `nvidia/cuda:12.4.1-runtime-ubuntu22.04`",
        ),
        (
            "nvidia/cuda:12.4.1-runtime-ubuntu22.4",
            "not an Ubuntu release",
            "did you mean `nvidia/cuda:12.4.1-runtime-ubuntu22.04`",
        ),
        // Issue 22 item 8: the newest supported runtime the tables know, a CUDA 13 one.
        (
            "nvidia/cuda",
            "names no tag",
            "did you mean `nvidia/cuda:13.",
        ),
        (
            "nvidia/cuda:latest",
            "no `latest` tag",
            "`cudaimg tags nvidia/cuda`",
        ),
        (
            "docker.io/nvidia/cuda:12.4-devel-ubuntu22.04",
            "patch release",
            "`nvidia/cuda:12.4.1-devel-ubuntu22.04`",
        ),
    ] {
        let out = run_fails(&mut sandbox.cli(&config, &["pull", reference]));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{reference}: {err}");
        assert!(err.contains(cause), "{reference}: {err}");
        assert!(err.contains(suggestion), "{reference}: {err}");
    }
    assert_eq!(
        official.requests().len(),
        before,
        "no request for a tag that cannot exist: {:?}",
        official.requests()
    );

    // A well-formed tag the registry does not have: its own list says what is near.
    let out = run_fails(&mut sandbox.cli(
        &config,
        &[
            "pull",
            "--platform",
            "linux/amd64",
            "nvidia/cuda:12.4.1-runtime-ubuntu24.04",
        ],
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("did you mean `nvidia/cuda:12.4.1-runtime-ubuntu20.04`")
            && err.contains(&format!("tag list of {}", official.url())),
        "{err}"
    );
}

/// `mount --bind` then `remount,ro` of `dir` onto itself; unmounted on drop. Root only (as
/// root, file permissions do not make a directory read-only).
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(dir: &std::path::Path) -> Option<ReadOnly> {
        let ok = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&["--bind"]) {
            return None;
        }
        let ro = ReadOnly(dir.to_owned());
        ok(&["-o", "remount,bind,ro"]).then_some(ro)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_stored_image_pulls_again_from_a_read_only_store_and_a_file_is_no_store() {
    let official = registry_with_tags(OLD_TAGS);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let reference = "nvidia/cuda:12.4.1-runtime-ubuntu22.04";
    let pull = ["pull", "--platform", "linux/amd64", reference];
    run_ok(&mut sandbox.cli(&config, &pull));

    // The read-only part needs a bind mount (root); without one, only that part is skipped
    // (a failure as root or in CI), and the `--store FILE` part below still runs.
    match ReadOnly::mount(&sandbox.store_dir()) {
        Some(ro) => pulls_from_a_read_only_store(&sandbox, &config, &pull, ro),
        None => common::skip("the read-only part: cannot bind-mount here (needs root)"),
    }

    // `--store FILE`: said to be a file, by every command, and `images` fails.
    let file = sandbox.write("a-file", "not a store");
    for args in [&["images"][..], &pull[..]] {
        let mut cmd = sandbox.cudaimg();
        cmd.arg("--config")
            .arg(&config)
            .arg("--store")
            .arg(&file)
            .args(args);
        let out = run_fails(&mut cmd);
        assert!(
            stderr(&out).contains("is a file, not a directory"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// A stored image pulls again from the read-only store `ro`; one that needs writing says
/// the store is read-only.
fn pulls_from_a_read_only_store(
    sandbox: &Sandbox,
    config: &std::path::Path,
    pull: &[&str],
    ro: ReadOnly,
) {
    let out = run_ok(&mut sandbox.cli(config, pull));
    assert!(
        stdout(&out).contains("docker.io/nvidia/cuda"),
        "{}",
        stdout(&out)
    );
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    // One that needs writing says the store is read-only.
    let out = run_fails(&mut sandbox.cli(
        config,
        &[
            "pull",
            "--platform",
            "linux/amd64",
            "nvidia/cuda:12.4.1-devel-ubuntu22.04",
        ],
    ));
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
    drop(ro);
}

/// The commands a hint holds (`cudaimg …` between backticks), as argument lists.
fn hinted_commands(stderr: &str, starting: &str) -> Vec<Vec<String>> {
    let hint = stderr
        .lines()
        .find(|l| l.starts_with("hint:"))
        .unwrap_or_else(|| panic!("no hint in:\n{stderr}"));
    hint.split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with(starting))
        .map(|c| c.split_whitespace().skip(1).map(str::to_owned).collect())
        .collect()
}

#[test]
fn verify_and_inspect_hints_name_the_platform_and_run_as_printed() {
    let official = registry_with_tags(OLD_TAGS);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let reference = "nvidia/cuda:12.4.1-runtime-ubuntu22.04";
    let cli = |args: &[&str]| sandbox.cli(&config, args);
    run_ok(&mut cli(&["pull", "--platform", "linux/amd64", reference]));

    // inspect of a platform not stored: the hint's commands are valid as printed.
    let out = run_fails(&mut cli(&[
        "inspect",
        "--platform",
        "linux/arm64",
        reference,
    ]));
    let err = stderr(&out);
    let pulls = hinted_commands(&err, "cudaimg pull");
    assert_eq!(pulls.len(), 1, "{err}");
    let inspects = hinted_commands(&err, "cudaimg inspect");
    assert_eq!(inspects.len(), 1, "{err}");
    let args: Vec<&str> = inspects[0].iter().map(String::as_str).collect();
    run_ok(&mut cli(&args));
    let args: Vec<&str> = pulls[0].iter().map(String::as_str).collect();
    run_ok(&mut cli(&args));
    run_ok(&mut cli(&[
        "inspect",
        "--platform",
        "linux/arm64",
        reference,
    ]));

    // A layer only arm64 has goes missing: verify names the platform, and its hint's pull
    // fetches that platform, after which the store is whole.
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale::TINY);
    let arm = fx.platform(Arch::Arm64);
    let layer = &arm.layers[0].digest;
    let hex = layer.strip_prefix("sha256:").unwrap();
    std::fs::remove_file(sandbox.store_dir().join("blobs/sha256").join(hex)).unwrap();
    let out = run_fails(&mut cli(&["verify"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("(linux/arm64"),
        "the problem names the platform: {err}"
    );
    assert!(
        !err.contains("problems found") || err.contains("1 problem found"),
        "{err}"
    );
    let pulls = hinted_commands(&err, "cudaimg pull");
    assert_eq!(pulls.len(), 1, "{err}");
    assert!(
        pulls[0].iter().any(|a| a.starts_with("linux/arm64")),
        "{pulls:?}"
    );
    let args: Vec<&str> = pulls[0].iter().map(String::as_str).collect();
    run_ok(&mut cli(&args));
    run_ok(&mut cli(&["verify"]));
}

#[test]
fn lock_with_the_official_registry_down_names_trust_mirrors_not_require_upstream() {
    let mirror = registry_with_tags(OLD_TAGS);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&common::dead_endpoint(), &[&mirror.url()]);
    let reference = "nvidia/cuda:12.4.1-runtime-ubuntu22.04";
    let lockfile = sandbox.root().join("cudaimg.lock");
    let lockfile = lockfile.to_str().unwrap();
    let out = run_fails(&mut sandbox.cli(&config, &["lock", "--lockfile", lockfile, reference]));
    let err = stderr(&out);
    assert!(!err.contains("require-upstream"), "{err}");
    assert!(err.contains("cudaimg lock --trust-mirrors"), "{err}");
    run_ok(&mut sandbox.cli(
        &config,
        &["lock", "--trust-mirrors", "--lockfile", lockfile, reference],
    ));
}

#[test]
fn config_and_platform_spellings_people_use_work_or_say_the_fix() {
    let registry = registry_with_tags(OLD_TAGS);
    let sandbox = Sandbox::new();
    let reference = "nvidia/cuda:12.4.1-runtime-ubuntu22.04";

    // The host unquoted in the header.
    let config = sandbox.write(
        "unquoted.toml",
        format!(
            "[registries.docker.io]\nendpoint = \"{}\"\n",
            registry.url()
        ),
    );
    let out = run_fails(&mut sandbox.cli(&config, &["pull", reference]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unquoted.toml:1:1") && err.contains("[registries.\"docker.io\"]"),
        "{err}"
    );
    assert!(!err.contains("unknown field"), "{err}");

    // daemon.json's form of mirrors: a list of URL strings, used as mirrors.
    let config = sandbox.write(
        "strings.toml",
        format!(
            "[registries.\"docker.io\"]\nendpoint = \"{}\"\nmirrors = [\"{}\"]\n",
            common::dead_endpoint(),
            registry.url()
        ),
    );
    // `uname -m` names: mapped as Docker maps them.
    for (given, is) in [
        ("linux/x86_64", "linux/amd64"),
        ("linux/x86-64", "linux/amd64"),
        ("linux/aarch64", "linux/arm64/v8"),
        ("linux/arm64/8", "linux/arm64/v8"),
    ] {
        let out =
            run_ok(&mut sandbox.cli(&config, &["--json", "pull", "--platform", given, reference]));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["platform"], is, "{given}: {r}");
        assert_eq!(r["manifest_source"], registry.url(), "{r}");
    }
}

/// Text as a terminal shows it: CSI escape sequences removed, split at `\r` and `\n`.
fn screen_lines(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut plain = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                while let Some(&n) = chars.peek() {
                    chars.next();
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    plain
        .split(['\r', '\n'])
        .map(str::to_owned)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

#[test]
fn progress_bars_fit_80_and_120_column_terminals() {
    if Command::new("script").arg("--version").output().is_err() {
        common::skip("no `script` (util-linux) to run under a terminal");
        return;
    }
    let registry = registry_with_tags(OLD_TAGS);
    // Slow enough that the bars are drawn many times.
    let proxy = common::FaultProxy::start(&registry.url());
    proxy.add(common::Fault::Throttle {
        bytes_per_sec: 600_000,
    });
    for cols in [80, 120] {
        let sandbox = Sandbox::new();
        let config = sandbox.write_hub_config(&proxy.url(), &[]);
        let line = format!(
            "stty cols {cols} rows 50; exec {} --config {} --store {} pull --platform linux/amd64 \
             nvidia/cuda:12.4.1-runtime-ubuntu22.04",
            common::cudaimg_binary().display(),
            config.display(),
            sandbox.store_dir().display()
        );
        let out = run_ok(
            sandbox
                .command("script")
                .args(["-q", "-e", "-c", &line, "/dev/null"])
                .env("TERM", "xterm-256color"),
        );
        // indicatif writes a line as wide as the terminal without a newline, relying on the
        // terminal's wrap to start the next row: so rows are cut at `cols` here, as the
        // terminal cuts them, and each row holding counts must hold one whole bar line.
        let rows: Vec<String> = screen_lines(&out.stdout)
            .iter()
            .flat_map(|l| {
                let chars: Vec<char> = l.chars().collect();
                chars
                    .chunks(cols)
                    .map(|c| c.iter().collect::<String>())
                    .collect::<Vec<_>>()
            })
            .collect();
        let bars: Vec<&String> = rows.iter().filter(|l| l.contains("B/s")).collect();
        assert!(
            !bars.is_empty(),
            "no bar was drawn at {cols} columns:\n{rows:#?}"
        );
        for row in &bars {
            // The image's name, whole or shortened from the left keeping the tag's end.
            let starts_whole = row.starts_with("cuda:12.4.1-runtime")
                || (row.starts_with('…') && row.contains("runtime-ubuntu22.04 "))
                || (row.starts_with("  ")
                    && row[2..].len() > 12
                    && row[2..14].bytes().all(|b| b.is_ascii_hexdigit()));
            let tail = row.trim_end();
            let ends_whole = tail.ends_with("/s")
                || tail
                    .rsplit_once(" eta ")
                    .is_some_and(|(_, d)| !d.trim().contains(' '));
            assert!(
                starts_whole && ends_whole,
                "a bar line wraps at {cols} columns:\n{row}\n{bars:#?}"
            );
        }
        // The bar takes the width there is: wider at 120 columns.
        if cols == 120 {
            assert!(
                bars.iter().any(|l| l.trim_end().chars().count() > 100),
                "{bars:#?}"
            );
        }
    }
}

#[test]
fn a_partial_mirror_is_summarised_once_and_every_source_counts_its_requests() {
    let official = registry_with_tags(OLD_TAGS);
    let mirror = registry_with_tags(OLD_TAGS);
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale::TINY);
    let amd = fx.platform(Arch::Amd64);
    let pusher = Pusher::new(&mirror);
    let missing: Vec<&String> = amd.layers.iter().take(3).map(|l| &l.digest).collect();
    for d in &missing {
        pusher.delete_blob("nvidia/cuda", d);
    }
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[&mirror.url()]);
    let out = run_ok(&mut sandbox.cli(
        &config,
        &[
            "-q",
            "--json",
            "pull",
            "--platform",
            "linux/amd64",
            "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
        ],
    ));
    let err = stderr(&out);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    // One line for the mirror, counting the blobs it lacked; none per blob.
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("(3 times)"), "{err}");
    for s in r["sources"].as_array().unwrap() {
        assert!(
            s["requests"].as_u64().unwrap() > 0,
            "every source answered something: {s}"
        );
    }

    // A whole mirror: the official registry only says which digest the tag names, and
    // that answer is a request it served.
    let whole = registry_with_tags(OLD_TAGS);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[&whole.url()]);
    let out = run_ok(&mut sandbox.cli(
        &config,
        &[
            "--json",
            "pull",
            "--platform",
            "linux/amd64",
            "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
        ],
    ));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let official_report = r["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["role"] == "official")
        .unwrap()
        .clone();
    assert_eq!(official_report["bytes"], 0, "{r:#}");
    assert_eq!(official_report["requests"], 1, "the tag's HEAD: {r:#}");
}

/// `1.46 MiB`, `29.64 KiB`, `512 B` as bytes (approximately: as printed).
fn parse_human(s: &str) -> f64 {
    let (n, unit) = s.trim().split_once(' ').unwrap();
    let n: f64 = n.parse().unwrap();
    n * match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other}"),
    }
}

#[test]
fn to_fetch_after_a_killed_pull_counts_only_what_remains() {
    let registry = registry_with_tags(OLD_TAGS);
    let proxy = common::FaultProxy::start(&registry.url());
    proxy.add(common::Fault::Throttle {
        bytes_per_sec: 250_000,
    });
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&proxy.url(), &[]);
    let pull = [
        "--json",
        "-v",
        "pull",
        "--platform",
        "linux/amd64",
        "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
    ];
    let mut child = sandbox
        .cli(&config, &pull)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once a good part is down, as Ctrl-C or a lost SSH session would.
    let ingest = sandbox.store_dir().join("ingest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let partial = || -> u64 {
        std::fs::read_dir(&ingest).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
    };
    while partial() < 400_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "no partial download appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    proxy.clear();

    let out = run_ok(&mut sandbox.cli(&config, &pull));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("resolved "))
        .unwrap_or_else(|| panic!("{err}"));
    let (to_fetch, total) = line
        .rsplit_once(": ")
        .unwrap()
        .1
        .split_once(" to fetch of ")
        .unwrap();
    let (to_fetch, total) = (parse_human(to_fetch), parse_human(total));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fetched = r["bytes_downloaded"].as_f64().unwrap();
    assert!(to_fetch < total * 0.8, "{line}");
    assert!(
        (to_fetch - fetched).abs() <= fetched * 0.01 + 1024.0,
        "said {to_fetch} to fetch, fetched {fetched}: {line}"
    );
}

#[test]
fn json_outputs_plurals_and_pull_load_without_an_engine() {
    let registry = registry_with_tags(OLD_TAGS);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&registry.url(), &[]);
    let cli = |args: &[&str]| sandbox.cli(&config, args);
    let good = "nvidia/cuda:12.4.1-runtime-ubuntu22.04";

    // `pull --load` with no Engine: refused before any blob is downloaded, with a start
    // command this host has.
    let no_engine = format!("unix://{}", sandbox.root().join("no-docker.sock").display());
    let out = run_fails(
        cli(&["pull", "--load", "--platform", "linux/amd64", good]).env("DOCKER_HOST", &no_engine),
    );
    let err = stderr(&out);
    assert!(err.contains("no Docker Engine answers"), "{err}");
    assert!(
        registry.blob_downloads().is_empty(),
        "nothing downloaded: {:?}",
        registry.blob_downloads()
    );
    if !std::path::Path::new("/run/systemd/system").exists() {
        assert!(!err.contains("systemctl"), "no systemd here: {err}");
    }

    // Several references under --json, one of them wrong: one JSON document each.
    let out = run_fails(&mut cli(&[
        "--json",
        "pull",
        "--platform",
        "linux/amd64",
        good,
        "nvidia/cuda:12.4.1-runtime-ubuntu24.04",
    ]));
    let docs: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect();
    // One per reference, then the run's own error object, as every failure under --json.
    assert_eq!(docs.len(), 3, "{}", stdout(&out));
    assert_eq!(docs[0]["reference"], good);
    assert_eq!(
        docs[1]["reference"],
        "nvidia/cuda:12.4.1-runtime-ubuntu24.04"
    );
    let e = &docs[1]["error"];
    assert_eq!(e["exit_code"], 4, "{}", docs[1]);
    assert_eq!(e["kind"], "not_found", "{}", docs[1]);
    assert!(
        e["message"].as_str().unwrap().contains("no tag"),
        "{}",
        docs[1]
    );
    assert!(
        e["hint"].as_str().unwrap().contains("did you mean"),
        "{}",
        docs[1]
    );
    assert_eq!(docs[2]["error"]["exit_code"], 4, "{}", docs[2]);
    assert_eq!(out.status.code(), Some(4));

    // export --json: JSON.
    let file = sandbox.root().join("cuda.tar");
    let out = run_ok(cli(&["--json", "export", good, "-o"]).arg(&file));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["format"], "docker-archive", "{r}");
    assert!(r["bytes"].as_u64().unwrap() > 0);

    // Counts read as English: a registry with one tag.
    let one = TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale::TINY);
    Pusher::new(&one).push_platform("nvidia/cuda", fx.platform(Arch::Amd64));
    Pusher::new(&one).push_manifest(
        "nvidia/cuda",
        "12.4.1-runtime-ubuntu22.04",
        &fx.platform(Arch::Amd64).manifest,
    );
    let config_one = sandbox.write_hub_config(&one.url(), &[]);
    let out = run_ok(&mut sandbox.cli(&config_one, &["tags", "nvidia/cuda"]));
    let err = stderr(&out);
    assert!(
        err.contains(": 1 tag from") && err.contains("(1 page)"),
        "{err}"
    );
}

#[test]
fn a_mirror_prefixed_name_without_an_entry_is_said_honestly_and_the_fix_works() {
    let mirror = registry_with_tags(OLD_TAGS);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&common::dead_endpoint(), &[]);
    let prefixed = format!("{}/nvidia/cuda:12.4.1-runtime-ubuntu22.04", mirror.host());
    let out = run_ok(&mut sandbox.cli(&config, &["pull", "--platform", "linux/amd64", &prefixed]));
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(
        text.starts_with(&prefixed),
        "stored under the name given: {text}"
    );
    assert!(!text.contains("the official registry"), "{text}");
    assert!(text.contains("the registry the reference names"), "{text}");
    assert!(
        err.contains("not a mirror in mirrors.toml") && err.contains("docker.io/nvidia/cuda"),
        "{err}"
    );

    // The fix the warning gives: the host as a docker.io mirror. Then the same reference is
    // stored as Docker Hub's name, and the digest is said to come from a mirror.
    let config = sandbox.write(
        "fixed.toml",
        format!(
            "[registries.\"docker.io\"]\nendpoint = \"{}\"\nmirrors = [\"http://{}\"]\n",
            common::dead_endpoint(),
            mirror.host()
        ),
    );
    let out = run_ok(&mut sandbox.cli(&config, &["pull", "--platform", "linux/amd64", &prefixed]));
    let text = stdout(&out);
    assert!(
        text.starts_with("docker.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04"),
        "{text}"
    );
    assert!(text.contains("digest from: mirrors only"), "{text}");
    assert!(
        !stderr(&out).contains("not a mirror in mirrors.toml"),
        "{}",
        stderr(&out)
    );
}
