//! `cudaimg build` given hostile or careless input (issue 22 item 7, issue 23 items 9, 10, 11
//! and 14): credentials in the pip index and apt mirror URLs never reach an image, a command
//! line or a plan, and still reach pip and apt (as `BuildKit` secrets); a remote host whose
//! name merely starts like `localhost` gets no host networking; the apt mirror is data,
//! never sed or shell; a tag that is no reference is a usage error; `--bake` writes a file
//! that works outside the checkout and builds nothing.
//!
//! The real builds run on the harness's own `dockerd` (root only; elsewhere SKIPPED) with
//! Debian's 20.10 CLI and `BuildKit`, the fixture base of `build.rs`, pypiserver demanding a
//! password, and a recording HTTP server standing in for an apt mirror.

use cudaimg_test_support as common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{run_fails, run_ok};

use crate::build::{env, offline, stderr, stdout, wheelhouse, BASE_TAG, DEBIAN_DOCKER};
use crate::build_index::pypi_server_with;

const PIP_SECRET: &str = "pw-5ecret-b7f3";
const APT_SECRET: &str = "apt-5ecret-91ac";

/// Every image the engine holds (intermediate ones too), inspected and with its history:
/// all that `--push` or anyone with the engine could read.
fn everything_the_engine_holds(e: &crate::build::Env) -> String {
    let ids = run_ok(&mut e.docker.docker(&["images", "-aq", "--no-trunc"]));
    let mut all = String::new();
    for id in stdout(&ids).split_whitespace() {
        all.push_str(&stdout(&run_ok(
            &mut e.docker.docker(&["image", "inspect", id]),
        )));
        all.push_str(&stdout(&run_ok(&mut e.docker.docker(&[
            "history",
            "--no-trunc",
            "--format",
            "{{.CreatedBy}}",
            id,
        ]))));
    }
    // BuildKit's cache of every stage, the `venv` one included, as the engine describes it.
    all.push_str(&stdout(&run_ok(
        &mut e.docker.docker(&["system", "df", "-v"]),
    )));
    all
}

#[test]
fn credentials_in_the_index_and_mirror_urls_reach_pip_as_secrets_and_nothing_else() {
    let Some(e) = env() else { return };
    let packages = wheelhouse(&e.sandbox.root().join("packages"));
    // An index that answers nothing without the password: the build installs only if the
    // credentials reach pip.
    let htpasswd = e.sandbox.write("htpasswd", format!("alice:{PIP_SECRET}\n"));
    let Some((_server, url)) = pypi_server_with(
        &packages,
        &[
            "-P",
            htpasswd.to_str().unwrap(),
            "-a",
            "download,list,update",
        ],
    ) else {
        return;
    };
    let index = url.replacen("http://", &format!("http://alice:{PIP_SECRET}@"), 1);
    let port = url.trim_start_matches("http://127.0.0.1:");
    let port = &port[..port.find('/').unwrap()];
    // The base has Python 3.11, so apt never runs here: the mirror's URL is still an arg
    // of the step, recorded in the history, which is where it used to leak.
    let mirror = format!("http://mirror:{APT_SECRET}@127.0.0.1:9/debian");
    let out = run_ok(&mut e.build(&[
        "--base",
        &format!("nvidia/cuda:{BASE_TAG}"),
        "--torch",
        "2.5.1",
        "--python",
        "3.11",
        "--tag",
        "team/torch:secret",
        "--pip-index-url",
        &index,
        "--apt-mirror",
        &mirror,
        "--builder",
        "buildkit",
        "--docker",
        DEBIAN_DOCKER,
    ]));
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(
        e.run(
            "team/torch:secret",
            "import torch; print(torch.__version__)"
        ),
        "2.5.1+cu124",
        "{err}"
    );
    // The plan shows who, never the password; cudaimg's own read of the index used it.
    assert!(
        text.contains(&format!(
            "secret:   pip index http://alice:***@127.0.0.1:{port}/simple/ (secret cudaimg_pip_index_url)"
        )),
        "{text}"
    );
    assert!(
        text.contains("secret:   apt mirror http://mirror:***@127.0.0.1:9/debian"),
        "{text}"
    );
    assert!(
        text.contains(&format!("the index http://alice:***@127.0.0.1:{port}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "--build-arg PIP_INDEX_URL=http://127.0.0.1:{port}/simple/"
        )),
        "{text}"
    );
    // The command line as run: the secrets by file, the loopback index with host networking.
    let cmdline = err
        .lines()
        .find(|l| l.starts_with(&format!("running {DEBIAN_DOCKER} build")))
        .unwrap_or_else(|| panic!("no command line: {err}"));
    assert!(
        cmdline.contains("--secret id=cudaimg_pip_index_url,src="),
        "{cmdline}"
    );
    assert!(
        cmdline.contains("--secret id=cudaimg_apt_auth,src="),
        "{cmdline}"
    );
    assert!(cmdline.contains("--network host"), "{cmdline}");
    // pip says where it looks, password hidden by pip itself.
    assert!(
        err.contains("Looking in indexes: http://alice:****@"),
        "{err}"
    );

    let engine = everything_the_engine_holds(&e);
    // The check looks where the leak was: the mirror's arg is in the history (pip's is in
    // the `venv` stage, which leaves no image behind with BuildKit), without credentials.
    assert!(
        engine.contains("APT_MIRROR=http://127.0.0.1:9/debian"),
        "{engine}"
    );
    for secret in [PIP_SECRET, APT_SECRET] {
        assert!(!text.contains(secret), "{secret} in the plan: {text}");
        assert!(!err.contains(secret), "{secret} on stderr: {err}");
        assert!(!engine.contains(secret), "{secret} in the engine: {engine}");
    }

    // The JSON plan of a dry run holds no secret either.
    let out = run_ok(
        e.sandbox
            .cli(
                &e.config,
                &[
                    "--json",
                    "build",
                    "--dry-run",
                    "--base",
                    &format!("nvidia/cuda:{BASE_TAG}"),
                    "--torch",
                    "2.5.1",
                    "--pip-index-url",
                    &index,
                    "--apt-mirror",
                    &mirror,
                ],
            )
            .env("DOCKER_HOST", e.docker.host()),
    );
    let json = stdout(&out);
    assert!(json.contains("\"credentials\""), "{json}");
    for secret in [PIP_SECRET, APT_SECRET] {
        assert!(!json.contains(secret), "{json}");
        assert!(!stderr(&out).contains(secret), "{}", stderr(&out));
    }
}

#[test]
fn credentials_with_the_classic_builder_are_refused_with_the_fix() {
    let (sandbox, config) = offline();
    for flag in ["--pip-index-url", "--apt-mirror"] {
        let out = run_fails(&mut sandbox.cli(
            &config,
            &[
                "build",
                "--base",
                "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
                "--torch",
                "2.5.1",
                "--builder",
                "classic",
                flag,
                &format!("http://alice:{PIP_SECRET}@127.0.0.1:9/simple/"),
            ],
        ));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "{flag} http://alice:***@127.0.0.1:9/simple/ carries credentials"
            )),
            "{err}"
        );
        assert!(err.contains("hint: build with BuildKit"), "{err}");
        assert!(!err.contains(PIP_SECRET), "{err}");
        // Refused before anything was pulled.
        assert!(!sandbox.store_dir().exists());
    }
}

/// The plan's `network:` line for a pip index at `url`.
fn network_for(url: &str) -> String {
    let (sandbox, config) = offline();
    let out = run_ok(&mut sandbox.cli(
        &config,
        &[
            "build",
            "--dry-run",
            "--base",
            "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
            "--torch",
            "2.5.1",
            "--pip-index-url",
            url,
        ],
    ));
    let text = stdout(&out);
    text.lines()
        .find(|l| l.trim_start().starts_with("network:"))
        .unwrap_or_else(|| panic!("no network line: {text}"))
        .trim()
        .to_owned()
}

#[test]
fn only_an_index_that_resolves_to_loopback_gets_the_hosts_network() {
    // A dead port on loopback: the index read fails at once (the table decides), and the
    // decision is the resolver's, not the name's.
    let dead = common::dead_endpoint();
    let port = dead.rsplit(':').next().unwrap();
    for host in ["127.0.0.1", "localhost", "[::1]"] {
        let line = network_for(&format!("http://{host}:{port}/simple/"));
        assert!(line.starts_with("network:  host ("), "{host}: {line}");
        assert!(line.contains("resolves only to loopback"), "{host}: {line}");
    }
    // Starts like `localhost`, is someone else's (it resolves nowhere here, or elsewhere).
    let line = network_for(&format!("http://localhost.attacker.example:{port}/simple/"));
    assert!(line.starts_with("network:  the engine's default"), "{line}");
    let line = network_for(&format!("http://127.0.0.1.nip.example:{port}/simple/"));
    assert!(line.starts_with("network:  the engine's default"), "{line}");
}

/// A stand-in apt mirror that records each request's path and `Authorization` header and
/// answers 404 (it holds no packages: the build then fails, after apt asked it).
/// What the stand-in mirror was asked: each request's path and `Authorization`.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

fn recording_mirror() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let mut auth = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("authorization") {
                        auth = Some(v.trim().to_owned());
                    }
                }
            }
            record.lock().unwrap().push((path, auth));
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (format!("127.0.0.1:{port}"), seen)
}

#[test]
fn the_apt_mirror_is_data_an_injection_is_refused_and_an_ampersand_reaches_apt_intact() {
    // Offline: a value that was a sed command is refused as a URL, before anything runs.
    let (sandbox, config) = offline();
    let out = run_fails(&mut sandbox.cli(
        &config,
        &[
            "build",
            "--dry-run",
            "--base",
            "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
            "--torch",
            "2.5.1",
            "--apt-mirror",
            "http://m/ubuntu#g; e id >&2 #",
        ],
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the apt mirror `http://m/ubuntu#g; e id >&2 #` cannot be used: it holds ` `"),
        "{err}"
    );
    assert!(err.contains("hint: give the mirror as http(s)://"), "{err}");
    let out = run_fails(&mut sandbox.cli(
        &config,
        &[
            "build",
            "--dry-run",
            "--base",
            "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
            "--torch",
            "2.5.1",
            "--apt-mirror",
            "http://m/ubuntu#g;e/bin/id",
        ],
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("it has a fragment (`#…`)"), "{err}");

    let Some(e) = env() else { return };
    let (mirror, seen) = recording_mirror();
    // Python 3.10 is not in the base: the template installs it with apt, through the mirror.
    let out = run_fails(
        &mut e.build(&[
            "--base",
            &format!("nvidia/cuda:{BASE_TAG}"),
            "--torch",
            "2.5.1",
            "--python",
            "3.10",
            "--wheelhouse",
            wheelhouse(&e.sandbox.root().join("wheels"))
                .to_str()
                .unwrap(),
            "--apt-mirror",
            &format!("http://u:p%40ss@{mirror}/a&b/debian"),
            "--builder",
            "buildkit",
            "--docker",
            DEBIAN_DOCKER,
        ]),
    );
    let err = stderr(&out);
    assert!(err.contains("--network host"), "{err}");
    let seen = seen.lock().unwrap().clone();
    // The path as given (sed made `&` the matched text: `/ahttp://deb.debian.org/debianb`),
    // and the credentials, percent-decoded, from the secret.
    let release = seen
        .iter()
        .find(|(p, _)| p.starts_with("/a&b/debian/dists/bookworm/"))
        .unwrap_or_else(|| {
            panic!("apt never asked for /a&b/debian/dists/bookworm: {seen:?}\n{err}")
        });
    use base64::Engine as _;
    let auth = release.1.clone().unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim_start_matches("Basic "))
        .unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&decoded), "u:p@ss", "{seen:?}");
    assert!(!err.contains("p%40ss") && !err.contains("p@ss"), "{err}");

    // The template itself, run by plain `docker build` with the injection as the arg: perl
    // writes it into sources.list as text, and `id` never runs.
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("dockerfiles/pytorch.Dockerfile");
    let ctx = e.sandbox.root().join("empty");
    std::fs::create_dir_all(&ctx).unwrap();
    let out = std::process::Command::new(DEBIAN_DOCKER)
        .env("DOCKER_HOST", e.docker.host())
        .args([
            "build",
            "--progress=plain",
            "--network",
            "none",
            "--target",
            "python",
            "--build-arg",
            &format!("BASE_IMAGE=docker.io/nvidia/cuda:{BASE_TAG}"),
            "--build-arg",
            "PYTHON=3.10",
            "--build-arg",
            "APT_MIRROR=http://m/ubuntu#g; e id >&2 #",
            "-f",
            template.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ])
        .env("DOCKER_BUILDKIT", "1")
        .output()
        .unwrap();
    let log = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("/etc/apt/sources.list"), "apt read it: {log}");
    assert!(!log.contains("uid=0("), "the injected `id` ran: {log}");
}

#[test]
fn a_tag_that_is_no_reference_is_a_usage_error() {
    let (sandbox, config) = offline();
    for (tag, says) in [
        ("x:y\nEVIL", "control character"),
        ("Team/Torch", "lowercase"),
        ("team/torch:a b", "is not valid"),
        (
            "team/torch@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "names a digest",
        ),
    ] {
        let out = run_fails(&mut sandbox.cli(
            &config,
            &[
                "build",
                "--dry-run",
                "--base",
                "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
                "--torch",
                "2.5.1",
                "--tag",
                tag,
            ],
        ));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{tag:?}: {err}");
        assert!(err.contains(says), "{tag:?}: {err}");
        assert!(err.contains("hint:"), "{tag:?}: {err}");
        assert!(stdout(&out).is_empty(), "{tag:?}: no plan");
    }
    let matrix = sandbox.write(
        "builds.toml",
        "repository = \"team/torch:y\\nEVIL\"\nbases = [\"nvidia/cuda:12.4.1-base-ubuntu22.04\"]\ntorch = [\"2.5.1\"]\n",
    );
    let out = run_fails(
        sandbox
            .cli(&config, &["build", "--dry-run", "--matrix"])
            .arg(&matrix),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// A bake file's `KEY = "VALUE"` (HCL) or `"KEY": "VALUE"` (JSON) values for `key`.
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")))?;
            let rest = rest.trim_start().strip_prefix(['=', ':'])?.trim();
            if rest.starts_with(['{', '[']) {
                return None;
            }
            Some(
                rest.trim_end_matches(',')
                    .trim_matches('"')
                    .replace("\\\"", "\""),
            )
        })
        .collect()
}

#[test]
fn bake_writes_a_file_that_works_outside_the_checkout_and_builds_nothing() {
    let Some(e) = env() else { return };
    let matrix = e.sandbox.write(
        "builds.toml",
        format!(
            "repository = \"team/torch\"\nbases = [\"nvidia/cuda:{BASE_TAG}\"]\n\
             torch = [\"2.5.1\"]\npython = [\"3.11\"]\n"
        ),
    );
    // A directory outside the source checkout, as a team's CI would use.
    let elsewhere = tempfile::tempdir().unwrap();
    for file in ["out/docker-bake.hcl", "out/docker-bake.json"] {
        let out = run_ok(
            e.build(&["--docker", DEBIAN_DOCKER, "--matrix"])
                .arg(&matrix)
                .arg("--bake")
                .arg(file)
                .current_dir(elsewhere.path()),
        );
        let (text, err) = (stdout(&out), stderr(&out));
        assert!(
            text.contains("0 built, 1 planned, 0 skipped, 0 failed"),
            "{text}\n{err}"
        );
        assert!(err.contains("nothing was built"), "{err}");
        assert!(!err.contains("  | "), "a build ran: {err}");
        // The engine holds nothing: no base handed over, no image built.
        let images = run_ok(&mut e.docker.docker(&["images", "-aq"]));
        assert_eq!(stdout(&images).trim(), "", "{file}");

        let bake = elsewhere.path().join(file);
        let written = std::fs::read_to_string(&bake).unwrap();
        let dir = std::fs::canonicalize(bake.parent().unwrap()).unwrap();
        // Pinned by the digest the pull found.
        assert!(
            written.contains(&format!("@{}", e.base.manifest.digest)),
            "{written}"
        );
        // Every path is under the variable whose default is the file's own directory.
        let default = values(&written, "default");
        assert_eq!(default, [dir.to_str().unwrap()], "{written}");
        let paths: Vec<String> = ["context", "dockerfile"]
            .iter()
            .flat_map(|k| values(&written, k))
            .collect();
        assert_eq!(paths.len(), 2, "{written}");
        for p in paths {
            let rest = p
                .strip_prefix("${CUDAIMG_BAKE_DIR}/")
                .unwrap_or_else(|| panic!("`{p}` is not under CUDAIMG_BAKE_DIR: {written}"));
            assert!(dir.join(rest).exists(), "{p} does not exist beside {file}");
        }
        assert_eq!(
            std::fs::read_to_string(dir.join("pytorch.Dockerfile")).unwrap(),
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("dockerfiles/pytorch.Dockerfile")
            )
            .unwrap()
        );
        assert_eq!(std::fs::read_dir(dir.join("context")).unwrap().count(), 0);
    }
}
