//! Issue 22, what a new user hit in the output (items 8, 10 and 11): every failure under
//! `--json` as one error object on stdout, usage errors exit 2, nothing human-only on
//! stderr under `--json`; tables, bars and digests that fit 80 columns; Ctrl-C's one line;
//! hints and docs that are true. Each test feeds the real binary the mistake, with real
//! registries on loopback.

use cudaimg_test_support as common;

use std::process::{Command, Output};

use common::{dead_endpoint, run_fails, run_ok, CudaSpec, Fixture, FixtureStore, Flavor};
use common::{Pusher, Sandbox, TestRegistry};
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
    let out = run_fails(&mut offline(&sandbox, &["sync"]).arg(&spec));
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
