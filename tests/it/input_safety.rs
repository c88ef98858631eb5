//! Bad input through the binary: references outside Docker's grammar (a Unicode tag, ports 0
//! and 99999) are refused before anything is stored, the edges of the grammar (port 65535, an
//! IPv6 literal) work end to end, and control characters in what a user or a file supplies
//! reach the terminal escaped.

use cudaimg_test_support as common;

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Output;

use common::{
    run_fails, run_ok, Fixture, Flavor, MediaTypes, Pusher, Sandbox, Scale, TestRegistry,
};
use serde_json::Value;

fn empty_config(sandbox: &Sandbox) -> PathBuf {
    sandbox.write("mirrors.toml", "")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Refused as a usage error, with `says` in the message and nothing stored.
fn refused(sandbox: &Sandbox, args: &[&str], says: &str) -> String {
    let out = run_fails(&mut sandbox.cli(&empty_config(sandbox), args));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(says), "{args:?}: {err}");
    assert!(err.contains("hint:"), "{args:?}: {err}");
    assert!(
        !sandbox.store_dir().join("index.json").exists(),
        "{args:?} stored something"
    );
    err
}

#[test]
fn a_unicode_tag_is_refused_before_anything_is_stored() {
    let sandbox = Sandbox::new();
    refused(
        &sandbox,
        &["pull", "nvidia/cuda:タグ"],
        "the tag `タグ` is not valid",
    );
    refused(
        &sandbox,
        &["tag", "nvidia/cuda:a", "nvidia/cuda:é"],
        "is not valid",
    );
}

#[test]
fn ports_outside_1_to_65535_are_refused_and_65535_is_a_port() {
    let sandbox = Sandbox::new();
    refused(&sandbox, &["pull", "localhost:0/x:1"], "`0` is not a port");
    refused(
        &sandbox,
        &["pull", "127.0.0.1:99999/x:1"],
        "`99999` is not a port",
    );
    // `explain` is offline: it shows the canonical name the reference stands for.
    let out = run_ok(&mut sandbox.cli(
        &empty_config(&sandbox),
        &[
            "--json",
            "explain",
            "127.0.0.1:65535/nvidia/cuda:12.4.1-runtime-ubuntu22.04",
        ],
    ));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        e["reference"],
        "127.0.0.1:65535/nvidia/cuda:12.4.1-runtime-ubuntu22.04"
    );
}

/// Listens on `[::1]` and relays every connection to `127.0.0.1:target` (where the test
/// registry listens), so a reference can name the registry by an IPv6 literal.
fn ipv6_relay(target: u16) -> u16 {
    let listener = TcpListener::bind("[::1]:0").expect("IPv6 loopback");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let (mut c, mut u) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = io::copy(&mut c, &mut u);
                let _ = u.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut c, mut u) = (client, upstream);
                let _ = io::copy(&mut u, &mut c);
                let _ = c.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn an_ipv6_literal_names_a_registry_end_to_end() {
    let registry = TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Oci, Scale::TINY);
    Pusher::new(&registry).push(&fx);
    let port = ipv6_relay(registry.port());

    let sandbox = Sandbox::new();
    let config = empty_config(&sandbox);
    // Written with a long form and a leading zero: stored under the canonical name.
    let written = format!("[0:0:0:0:0:0:0:1]:0{port}/{}", fx.reference());
    let canonical = format!("[::1]:{port}/{}", fx.reference());
    let out = run_ok(&mut sandbox.cli(&config, &["--json", "pull", &written]));
    let pulled = String::from_utf8_lossy(&out.stdout);
    assert!(pulled.contains(&canonical), "{pulled}");

    let out = run_ok(&mut sandbox.cli(&config, &["--json", "images"]));
    let images = String::from_utf8_lossy(&out.stdout);
    assert!(images.contains(&canonical), "{images}");
    run_ok(&mut sandbox.cli(&config, &["verify"]));
    // The registry saw the requests: the pull went over the relay, not anywhere else.
    assert!(
        registry
            .requests()
            .iter()
            .any(|r| r.path.contains("/manifests/")),
        "{}",
        registry.log()
    );
}

fn assert_escaped(out: &Output, shown: &str) {
    let err = stderr(out);
    assert!(
        !out.stderr
            .iter()
            .any(|&b| b == 0x1b || b == 0x07 || b == b'\r'),
        "raw control characters reached the terminal: {err:?}"
    );
    assert!(err.contains(shown), "{err}");
}

#[test]
fn control_characters_are_escaped_in_error_output() {
    let sandbox = Sandbox::new();
    let config = empty_config(&sandbox);
    for (args, shown) in [
        (vec!["pull", "nvidia/cuda:\u{1b}[2J"], "\\u{1b}"),
        (vec!["pull", "nvidia/cuda:\u{7}bell"], "\\u{7}"),
        (vec!["explain", "12.4.1-runtime-ubuntu22.04\r"], "\\r"),
        (
            vec!["explain", "nvidia/cuda:\u{1b}]0;title\u{7}"],
            "\\u{1b}",
        ),
    ] {
        let out = run_fails(&mut sandbox.cli(&config, &args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_escaped(&out, shown);
    }
    // And from the configuration file.
    let bad = sandbox.write(
        "bad.toml",
        "[registries.\"docker.io\"]\nmirrors = [{ url = \"ftp://m\\u001b[2J\" }]\n",
    );
    let out = run_fails(&mut sandbox.cli(&bad, &["pull", "nvidia/cuda:1"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_escaped(&out, "\\u{1b}");
}

#[test]
fn explain_parses_a_tag_with_an_os_its_tables_do_not_know() {
    let sandbox = Sandbox::new();
    let config = empty_config(&sandbox);
    let out = run_ok(&mut sandbox.cli(
        &config,
        &[
            "--json",
            "explain",
            "nvidia/cuda:13.1.0-cudnn-runtime-debian13",
        ],
    ));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["os"], "debian13");
    assert_eq!(e["os_name"], Value::Null);
    let unknown = e["unknown"].to_string();
    assert!(
        unknown.contains("OS `debian13` is not in cudaimg's table"),
        "{e}"
    );
    assert!(e["notes"].to_string().contains("treated as unknown"), "{e}");
    // The oldest tags NVIDIA published, which the grammar once refused, explain too.
    for tag in ["8.0-base-centos7", "8.0-runtime", "6.5-devel-ubuntu14.04"] {
        run_ok(&mut sandbox.cli(&config, &["explain", tag]));
    }
}
