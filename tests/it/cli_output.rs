//! Issue 22, what a new user hit in the output (items 8, 10 and 11): every failure under
//! `--json` as one error object on stdout, usage errors exit 2, nothing human-only on
//! stderr under `--json`; tables, bars and digests that fit 80 columns; Ctrl-C's one line;
//! hints and docs that are true. Each test feeds the real binary the mistake, with real
//! registries on loopback.

use cudaimg_test_support as common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{dead_endpoint, run_fails, run_ok, Arch, CudaSpec, Fault, FaultProxy, Fixture};
use common::{FixtureStore, Flavor};
use common::{MediaTypes, Pusher, Sandbox, Scale, TestRegistry};
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every JSON document on stdout, in order; panics on anything else there.
fn documents(out: &Output) -> Vec<Value> {
    serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .map(|d| d.unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", text(&out.stdout))))
        .collect()
}

/// The one document on stdout of a failed run, and its `error` object, checked against the
/// exit status.
fn error_object(out: &Output) -> (Value, Value) {
    let docs = documents(out);
    assert_eq!(
        docs.len(),
        1,
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let doc = docs.into_iter().next().unwrap();
    let e = doc["error"].clone();
    assert!(e.is_object(), "{doc}");
    assert_eq!(
        e["exit_code"].as_i64(),
        out.status.code().map(i64::from),
        "{doc}"
    );
    assert!(
        !e["message"].as_str().unwrap_or_default().is_empty(),
        "{doc}"
    );
    (doc, e)
}

/// `cudaimg ARGS` in `sandbox`, every registry endpoint (the official one and a mirror)
/// dead: nothing is reached, whatever the network.
fn offline(sandbox: &Sandbox, args: &[&str]) -> Command {
    let dead = dead_endpoint();
    let config = sandbox.write_hub_config(&dead, &[&dead]);
    sandbox.cli(&config, args)
}

#[test]
fn every_failure_under_json_is_one_error_object_on_stdout() {
    let sandbox = Sandbox::new();
    let spec = sandbox.write(
        "sync.toml",
        "[[images]]\nreference = \"nvidia/cuda:12.4.1-base-ubuntu22.04\"\n",
    );
    let spec = spec.display().to_string();
    // The mistake, the kind and exit code it must have.
    let cases: &[(&[&str], &str, i32)] = &[
        (&["--json", "pull", "NVIDIA/cuda:x"], "usage", 2),
        (
            &["--json", "inspect", "nvidia/cuda:12.4.1-base-ubuntu22.04"],
            "not_found",
            4,
        ),
        (&["--json", "explain", "latest"], "usage", 2),
        // clap's own usage errors, --json anywhere on the line.
        (
            &["--json", "pulll", "nvidia/cuda:12.4.1-base-ubuntu22.04"],
            "usage",
            2,
        ),
        (
            &[
                "pull",
                "--json",
                "--jobs",
                "0",
                "nvidia/cuda:12.4.1-base-ubuntu22.04",
            ],
            "usage",
            2,
        ),
        (&["--json", "sync", &spec], "usage", 2),
        (
            &[
                "--json",
                "pull",
                "--platform",
                "linux/amd46",
                "nvidia/cuda:12.4.1-base-ubuntu22.04",
            ],
            "usage",
            2,
        ),
        // A failure of the network: every source down.
        (
            &["--json", "digest", "nvidia/cuda:12.4.1-base-ubuntu22.04"],
            "failure",
            1,
        ),
    ];
    for (args, kind, code) in cases {
        let out = run_fails(&mut offline(&sandbox, args));
        assert_eq!(
            out.status.code(),
            Some(*code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let (_, e) = error_object(&out);
        assert_eq!(e["kind"], *kind, "{args:?}: {e}");
        // The same failure is still said on stderr, for the CI log.
        assert!(
            text(&out.stderr).contains("error:"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }

    // Without --json, stdout stays empty: the object is for scripts that asked.
    let out = run_fails(&mut offline(&sandbox, &["explain", "latest"]));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn a_platform_typo_is_a_usage_error_with_the_nearest_name() {
    let sandbox = Sandbox::new();
    for args in [
        &[
            "pull",
            "--platform",
            "linux/amd46",
            "nvidia/cuda:12.4.1-base-ubuntu22.04",
        ][..],
        &[
            "digest",
            "--platform",
            "linux/amd46",
            "nvidia/cuda:12.4.1-base-ubuntu22.04",
        ],
        &[
            "inspect",
            "--platform",
            "linx/amd64",
            "nvidia/cuda:12.4.1-base-ubuntu22.04",
        ],
    ] {
        let out = run_fails(&mut offline(&sandbox, args));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("did you mean `amd64`") || err.contains("did you mean `linux`"),
            "{args:?}: {err}"
        );
        // Refused before any request: no source was tried.
        assert!(!err.contains("cannot connect"), "{err}");
    }
    // Spellings `uname -m` gives are still platforms.
    let out = run_fails(&mut offline(
        &sandbox,
        &[
            "digest",
            "--platform",
            "linux/aarch64",
            "nvidia/cuda:12.4.1-base-ubuntu22.04",
        ],
    ));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn sync_without_an_action_names_every_choice() {
    let sandbox = Sandbox::new();
    let spec = sandbox.write(
        "sync.toml",
        "[[images]]\nreference = \"nvidia/cuda:12.4.1-base-ubuntu22.04\"\n",
    );
    let out = run_fails(offline(&sandbox, &["sync"]).arg(&spec));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--plan") && err.contains("--to <DIR>"),
        "{err}"
    );
}

#[test]
fn doctor_under_json_puts_its_findings_and_error_in_one_document_and_nothing_human_on_stderr() {
    let sandbox = Sandbox::new();
    // Every registry endpoint dead: the mirrors check fails.
    let dead = dead_endpoint();
    let config = sandbox.write_hub_config(&dead, &[&dead]);
    let out = run_fails(&mut sandbox.cli(&config, &["--json", "doctor"]));
    let (doc, e) = error_object(&out);
    assert!(doc["findings"].is_array(), "{doc}");
    let failing: Vec<&str> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "fail")
        .filter_map(|f| f["check"].as_str())
        .collect();
    assert!(failing.contains(&"mirrors"), "{doc}");
    // The message names the failing checks; nothing refers to a table that was not printed.
    let message = e["message"].as_str().unwrap();
    for check in &failing {
        assert!(message.contains(check), "{message}");
    }
    let err = text(&out.stderr);
    assert!(!err.contains("above"), "{err}");
    assert!(!err.contains("ok,"), "{err}");
}

/// Waits (60 s at most) until the blob `digest`'s partial download holds `bytes`.
fn wait_for_partial(store: &std::path::Path, bytes: u64, digest: &str) {
    let path = store
        .join("ingest")
        .join(format!("{}.partial", &digest[7..]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&path).map_or(0, |m| m.len()) < bytes {
        assert!(
            Instant::now() < deadline,
            "the partial file never reached {bytes} bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_says_in_one_line_what_is_kept_and_exits_130() {
    let registry = TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale(0.005));
    Pusher::new(&registry).push(&fx);
    let big = fx.largest_layer(Arch::Amd64).digest.clone();
    let slow = FaultProxy::start(&registry.url());
    slow.add(Fault::Throttle {
        bytes_per_sec: 1_000_000,
    });
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&slow.url(), &[]);
    let reference = fx.reference();
    let pull = [
        "--json",
        "pull",
        "--platform",
        "linux/amd64",
        reference.as_str(),
    ];
    let child = sandbox
        .cli(&config, &pull)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_partial(&sandbox.store_dir(), 500_000, &big);
    run_ok(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let said: Vec<&str> = err.lines().filter(|l| l.contains("interrupted")).collect();
    assert_eq!(said.len(), 1, "{err}");
    let line = said[0];
    let store = sandbox.store_dir().display().to_string();
    assert!(line.contains(&store), "{line}");
    assert!(line.contains("run the same command again"), "{line}");
    // "K of N blobs": N is the image's config and layers.
    let blobs = fx.platform(Arch::Amd64).layers.len() + 1;
    assert!(line.contains(&format!(" of {blobs} blobs")), "{line}");
    // Under --json the interruption is the run's error object too.
    let (_, e) = error_object(&out);
    assert_eq!(e["kind"], "interrupted", "{e}");

    // What it said is true: the same command again resumes, and finishes.
    slow.clear();
    let out = run_ok(&mut sandbox.cli(&config, &pull));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["bytes_downloaded"].as_u64().unwrap() < fx.image_bytes(Arch::Amd64),
        "{r}"
    );
}

/// Every line of `out`'s stdout in at most `cols` characters (not bytes: `…` is one).
fn assert_fits(what: &str, out: &Output, cols: usize) {
    let s = text(&out.stdout);
    assert!(!s.trim().is_empty(), "{what}: no output");
    for l in s.lines() {
        assert!(
            l.chars().count() <= cols,
            "{what}: a line of {} columns:\n{l}\n--- all of it\n{s}",
            l.chars().count()
        );
    }
}

#[test]
fn tables_and_reports_fit_80_columns_and_a_multi_arch_image_is_one_row() {
    let fx = FixtureStore::shared().cuda(&CudaSpec::new("12.4.1", Flavor::Base));
    let registry = TestRegistry::start();
    Pusher::new(&registry).push(&fx);
    let sandbox = Sandbox::new();
    // A dead mirror too: doctor has a failing check, with its long fix, to print.
    let config = sandbox.write_hub_config(&registry.url(), &[&dead_endpoint()]);
    let reference = fx.reference();
    let at80 = |args: &[&str]| {
        let mut cmd = sandbox.cli(&config, args);
        cmd.env("COLUMNS", "80");
        cmd
    };
    let out = run_ok(&mut at80(&["pull", "--all-platforms", &reference]));
    assert_fits("pull --all-platforms", &out, 80);
    let out = run_ok(&mut at80(&[
        "pull",
        "--platform",
        "linux/arm64",
        &reference,
    ]));
    assert_fits("pull", &out, 80);
    // The digest stays whole, to be copied: on a line of its own.
    let arm64 = &fx.platform(Arch::Arm64).manifest.digest;
    assert!(
        text(&out.stdout).contains(arm64.as_str()),
        "{}",
        text(&out.stdout)
    );

    let out = run_ok(&mut at80(&["images"]));
    assert_fits("images", &out, 80);
    let shown = text(&out.stdout);
    // One row (a continuation line starts blank), its platforms listed in it.
    let rows: Vec<&str> = shown
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with(' '))
        .collect();
    assert_eq!(rows.len(), 1, "one row for the whole image:\n{shown}");
    assert!(
        shown.contains("linux/amd64,") && shown.contains("linux/arm64"),
        "{shown}"
    );
    // Shortened from the left: the tag's end is what tells images apart.
    let os = reference.rsplit('-').next().unwrap();
    assert!(rows[0].starts_with('…'), "{shown}");
    assert!(rows[0].split("  ").next().unwrap().ends_with(os), "{shown}");
    // Piped with no COLUMNS, and with --no-trunc: whole names, for scripts.
    for mut cmd in [
        sandbox.cli(&config, &["images"]),
        at80(&["--no-trunc", "images"]),
    ] {
        let out = run_ok(&mut cmd);
        assert!(
            text(&out.stdout).contains(&format!("docker.io/{reference}")),
            "{}",
            text(&out.stdout)
        );
    }

    let out = run_ok(&mut at80(&[
        "inspect",
        "--platform",
        "linux/amd64",
        &reference,
    ]));
    assert_fits("inspect", &out, 80);
    let amd64 = &fx.platform(Arch::Amd64);
    for l in &amd64.layers {
        assert!(
            text(&out.stdout).contains(&l.digest),
            "{}",
            text(&out.stdout)
        );
    }

    let out = run_ok(&mut at80(&["tags", "nvidia/cuda"]));
    assert_fits("tags", &out, 80);
    let out = at80(&["doctor"]).output().unwrap();
    assert_fits("doctor", &out, 80);
    assert!(text(&out.stdout).contains("fix:"), "{}", text(&out.stdout));
}

/// What a terminal shows of `raw` (a pty's bytes): escape sequences dropped, one entry per
/// line drawn (a bar redrawn in place is a line each time).
fn drawn_lines(raw: &[u8]) -> Vec<String> {
    let raw = text(raw);
    let mut plain = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next_if_eq(&'[').is_some() {
                // CSI: parameters, then one final byte in @..~.
                for n in chars.by_ref() {
                    if ('@'..='~').contains(&n) {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    // A terminal of 80 columns wraps what runs past them; indicatif pads the lines it
    // prints to whole rows. A row whose last column holds text that the next row goes on
    // with is a line the terminal wrapped: kept whole, so that its width shows.
    let mut lines = Vec::new();
    for segment in plain.split(['\r', '\n']) {
        let chars: Vec<char> = segment.chars().collect();
        let rows: Vec<String> = chars.chunks(80).map(|r| r.iter().collect()).collect();
        let mut line = String::new();
        for (i, row) in rows.iter().enumerate() {
            line.push_str(row);
            let goes_on = row.chars().count() == 80
                && !row.ends_with(' ')
                && rows.get(i + 1).is_some_and(|n| !n.starts_with(' '));
            if !goes_on {
                lines.push(std::mem::take(&mut line).trim_end().to_owned());
            }
        }
        lines.push(line.trim_end().to_owned());
    }
    lines.retain(|l| !l.trim().is_empty());
    lines
}

#[test]
fn bars_at_80_columns_keep_the_tag_end_align_and_rate_only_this_runs_bytes() {
    let registry = TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale(0.005));
    Pusher::new(&registry).push(&fx);
    let big = fx.largest_layer(Arch::Amd64).clone();
    let slow = FaultProxy::start(&registry.url());
    // 1 MB/s: a rate above 2 MiB/s is one the link cannot have given.
    slow.add(Fault::Throttle {
        bytes_per_sec: 1_000_000,
    });
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&slow.url(), &[]);
    let reference = fx.reference();
    // A first run stopped half-way through the big layer: the next one resumes it.
    let mut child = sandbox
        .cli(
            &config,
            &["-q", "pull", "--platform", "linux/amd64", &reference],
        )
        .spawn()
        .unwrap();
    wait_for_partial(&sandbox.store_dir(), big.size / 2, &big.digest);
    child.kill().unwrap();
    child.wait().unwrap();

    // The resumed pull on an 80-column terminal (a pty, as `script` gives).
    let line = format!(
        "stty cols 80 rows 40; exec '{}' --config '{}' --store '{}' pull --platform linux/amd64 '{}'",
        common::cudaimg_binary().display(),
        config.display(),
        sandbox.store_dir().display(),
        reference
    );
    let out =
        run_ok(
            sandbox
                .command("script")
                .env("TERM", "xterm")
                .args(["-qfec", &line, "/dev/null"]),
        );
    let lines = drawn_lines(&out.stdout);
    let bars: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" [") && l.contains("] "))
        .collect();
    assert!(!bars.is_empty(), "no bars drawn:\n{}", lines.join("\n"));
    for l in &lines {
        assert!(
            l.chars().count() <= 80,
            "a line of {} columns:\n{l}",
            l.chars().count()
        );
    }
    // Every bar starts and ends in the same columns.
    let starts: std::collections::BTreeSet<usize> = bars
        .iter()
        .map(|l| l.chars().position(|c| c == '[').unwrap())
        .collect();
    let ends: std::collections::BTreeSet<usize> = bars
        .iter()
        .map(|l| l.chars().count() - l.chars().rev().position(|c| c == ']').unwrap())
        .collect();
    let mut distinct: Vec<&str> = bars.iter().map(|b| b.as_str()).collect();
    distinct.dedup();
    let distinct = distinct.join("\n");
    assert_eq!(starts.len(), 1, "ragged bars {starts:?}:\n{distinct}");
    assert_eq!(ends.len(), 1, "ragged bars {ends:?}:\n{distinct}");
    // The image's bar names it by the end of its tag, not cut mid-OS.
    let os = reference.rsplit('-').next().unwrap();
    assert!(
        bars.iter()
            .any(|l| l.starts_with('…') && l.contains(&format!("-{os} ["))),
        "{}",
        lines.join("\n")
    );
    // Rates are shown (the big layer takes seconds), so the checks below check something.
    assert!(
        bars.iter().any(|l| l.contains("/s")),
        "no rate shown:\n{}",
        lines.join("\n")
    );
    for l in &bars {
        // No rate for a blob of a few bytes; none faster than the link.
        let words: Vec<&str> = l.split_whitespace().collect();
        if let Some(at) = words.iter().position(|w| w.ends_with("/s")) {
            // `4.02 MiB/6.67 MiB`: the unit of the blob's size follows the `/` word.
            let slash = words
                .iter()
                .position(|w| w.contains('/') && !w.ends_with("/s"));
            let size_unit = slash.and_then(|k| words.get(k + 1)).copied();
            assert!(
                !matches!(size_unit, Some("B" | "KiB")),
                "a rate for a tiny blob: {l}"
            );
            let number: f64 = words[at - 1].parse().unwrap();
            let mib = match words[at] {
                "B/s" => number / 1_048_576.0,
                "KiB/s" => number / 1024.0,
                "MiB/s" => number,
                _ => number * 1024.0,
            };
            assert!(mib <= 2.0, "a rate the 1 MB/s link cannot give: {l}");
        }
    }
}

#[test]
fn pull_load_with_no_engine_says_what_the_store_really_holds() {
    let fx = FixtureStore::shared().cuda(&CudaSpec::new("12.4.1", Flavor::Base));
    let registry = TestRegistry::start();
    Pusher::new(&registry).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&registry.url(), &[]);
    let reference = fx.reference();
    let nowhere = format!("unix://{}", sandbox.root().join("no-docker.sock").display());
    let load = [
        "pull",
        "--platform",
        "linux/amd64",
        "--load",
        reference.as_str(),
    ];
    let store = sandbox.store_dir().display().to_string();

    let out = run_fails(sandbox.cli(&config, &load).env("DOCKER_HOST", &nowhere));
    let err = text(&out.stderr);
    assert!(!err.contains("stays in the cudaimg store"), "{err}");
    assert!(
        err.contains("nothing was downloaded") && err.contains(&store),
        "{err}"
    );
    // True: the store holds no image.
    let images = run_ok(&mut sandbox.cli(&config, &["--json", "images"]));
    assert_eq!(
        serde_json::from_slice::<Value>(&images.stdout).unwrap(),
        serde_json::json!([])
    );

    // Once stored, the hint says so, and names the command that hands it over.
    run_ok(&mut sandbox.cli(
        &config,
        &["-q", "pull", "--platform", "linux/amd64", &reference],
    ));
    let out = run_fails(sandbox.cli(&config, &load).env("DOCKER_HOST", &nowhere));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("the image is in {store}")) && err.contains("cudaimg load"),
        "{err}"
    );
}

/// The README's section headings (`## mirrors.toml` -> `mirrors.toml`).
fn readme_sections() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    readme
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim().to_owned())
        .collect()
}

#[test]
fn the_starter_mirrors_toml_cites_a_readme_section_that_exists() {
    let sandbox = Sandbox::new();
    let path = sandbox.root().join("written.toml");
    run_ok(
        sandbox
            .cudaimg()
            .arg("--config")
            .arg(&path)
            .args(["mirrors", "init"]),
    );
    let written = std::fs::read_to_string(&path).unwrap();
    let repo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mirrors.toml")).unwrap();
    let sections = readme_sections();
    for (what, file) in [
        ("mirrors init", &written),
        ("the repo's mirrors.toml", &repo),
    ] {
        let cited: Vec<&str> = file
            .lines()
            .filter(|l| l.contains("README"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        // The file `mirrors init` writes points at the README; the repo's may, or not.
        assert!(
            !cited.is_empty() || what != "mirrors init",
            "{what} cites no README section:\n{file}"
        );
        for c in cited {
            assert!(
                sections.iter().any(|s| s == c),
                "{what} cites README section {c:?}, which does not exist"
            );
        }
    }
}

#[test]
fn the_help_shows_the_default_paths_as_written() {
    let out = run_ok(Sandbox::new().cudaimg().arg("--help"));
    let help = text(&out.stdout);
    assert!(
        help.contains("`$XDG_CONFIG_HOME/cudaimg/mirrors.toml`"),
        "{help}"
    );
    assert!(help.contains("`$XDG_DATA_HOME/cudaimg`"), "{help}");
    assert!(!help.contains("$`"), "{help}");
}

/// Issue 22 item 8: `explain` of a tag whose CUDA the driver table has, on an OS family the
/// tables know, says one thing: a minimum driver and a support verdict, never "not in the
/// table" beside "a current release".
#[test]
fn explain_of_a_current_ubi10_tag_is_consistent() {
    let sandbox = Sandbox::new();
    let out = run_ok(&mut offline(&sandbox, &["explain", "13.2.1-base-ubi10"]));
    let said = text(&out.stdout);
    assert!(!said.contains("not in the table"), "{said}");
    assert!(!said.contains("unknown"), "{said}");
    assert!(said.contains("min driver:  5"), "{said}");
    assert!(said.contains("Red Hat UBI 10"), "{said}");
}
