//! The CUDA commands through the binary: `explain`, `tags` (with pagination and fallback),
//! `doctor` (on a faked host: a fake `nvidia-smi`, fake toolkit programs, a fake
//! `daemon.json`, a fake Docker Engine), `mirrors check` (fresh, stale, pull-only and dead
//! mirrors) and `run-config` (its compose file checked by `docker-compose config`).

use cudaimg_test_support as common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{
    dead_endpoint, run_fails, run_ok, CudaSpec, Fault, FaultProxy, Fixture, FixtureStore, Flavor,
    MediaTypes, Pusher, Sandbox, Scale, TestRegistry,
};
use serde_json::Value;

const REPO: &str = "nvidia/cuda";
const RUNTIME_TAG: &str = "12.4.1-runtime-ubuntu22.04";

fn runtime() -> Fixture {
    Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale::TINY)
}

/// A sandbox with a docker.io configuration and a host that has nothing: no nvidia-smi, no
/// /proc file, no daemon.json, no CDI spec, no Docker, and a PATH of its own `bin/` only.
struct Host {
    sandbox: Sandbox,
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl Host {
    fn new() -> Host {
        let sandbox = Sandbox::new();
        std::fs::create_dir_all(sandbox.root().join("bin")).unwrap();
        let none = |name: &str| sandbox.root().join(name).display().to_string();
        let env = vec![
            ("PATH".to_owned(), none("bin")),
            ("CUDAIMG_NVIDIA_SMI".to_owned(), none("no-nvidia-smi")),
            (
                "CUDAIMG_PROC_DRIVER_VERSION".to_owned(),
                none("no-proc-version"),
            ),
            (
                "CUDAIMG_DOCKER_DAEMON_JSON".to_owned(),
                none("no-daemon.json"),
            ),
            ("CUDAIMG_CDI_DIRS".to_owned(), none("no-cdi")),
            (
                "DOCKER_HOST".to_owned(),
                format!("unix://{}", none("no-docker.sock")),
            ),
        ];
        Host {
            sandbox,
            config: None,
            env,
        }
    }

    fn with_hub(mut self, official: &str, mirrors: &[&str]) -> Host {
        self.config = Some(self.sandbox.write_hub_config(official, mirrors));
        self
    }

    fn with_config(mut self, text: &str) -> Host {
        self.config = Some(self.sandbox.write("mirrors.toml", text));
        self
    }

    fn set(&mut self, key: &str, value: impl Into<String>) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.into()));
    }

    /// A program in the sandbox's `bin/` (on PATH), as a shell script.
    fn program(&self, name: &str, script: &str) -> PathBuf {
        let path = self
            .sandbox
            .write(&format!("bin/{name}"), format!("#!/bin/sh\n{script}\n"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A fake `nvidia-smi` answering the query with `lines`, used through `CUDAIMG_NVIDIA_SMI`.
    fn gpu(&mut self, lines: &str) {
        let smi = self.program("nvidia-smi", &format!("printf '{lines}\\n'"));
        self.set("CUDAIMG_NVIDIA_SMI", smi.display().to_string());
    }

    /// The same, found the way a real one is: as `nvidia-smi` on PATH.
    fn gpu_on_path(&mut self, lines: &str) {
        self.program("nvidia-smi", &format!("printf '{lines}\\n'"));
        self.env.retain(|(k, _)| k != "CUDAIMG_NVIDIA_SMI");
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.sandbox.cudaimg();
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("--store").arg(self.sandbox.store_dir());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(args);
        cmd
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        json_of(&run_ok(&mut self.cmd(&all)))
    }

    fn pull(&self, reference: &str) {
        run_ok(&mut self.cmd(&["-q", "pull", "--platform", "linux/amd64", reference]));
    }
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A registry holding `fx`'s content once and `tags` all naming it.
fn registry_with_tags(fx: &Fixture, tags: &[&str]) -> TestRegistry {
    let reg = TestRegistry::start();
    let pusher = Pusher::new(&reg);
    pusher.push_untagged(fx, REPO);
    for t in tags {
        pusher.push_manifest(REPO, t, fx.top());
    }
    reg
}

/// A Docker Engine API that answers `/_ping` and `/info` (with these runtimes), on TCP.
fn fake_docker(runtimes: &[&str]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let runtimes: serde_json::Map<String, Value> = runtimes
        .iter()
        .map(|r| ((*r).to_owned(), serde_json::json!({"path": r})))
        .collect();
    let info = serde_json::json!({"Runtimes": runtimes, "DefaultRuntime": "runc"}).to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (status, body) = if path.ends_with("/_ping") {
                ("200 OK", "OK".to_owned())
            } else if path.ends_with("/info") {
                ("200 OK", info.clone())
            } else {
                ("404 Not Found", "{\"message\":\"no\"}".to_owned())
            };
            let mut out = &stream;
            let _ = write!(
                out,
                "HTTP/1.1 {status}\r\nApi-Version: 1.45\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("tcp://127.0.0.1:{port}")
}

fn findings(report: &Value, check: &str) -> Vec<Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .cloned()
        .collect()
}

fn has(findings: &[Value], status: &str, text: &str) -> bool {
    findings
        .iter()
        .any(|f| f["status"] == status && f["message"].as_str().unwrap().contains(text))
}

// ---------------------------------------------------------------------------------------
// explain
// ---------------------------------------------------------------------------------------

#[test]
fn explain_reads_tags_and_references() {
    let host = Host::new().with_hub(&dead_endpoint(), &["http://127.0.0.1:5999"]);
    let e = host.json(&["explain", "12.4.1-cudnn-runtime-ubuntu22.04"]);
    assert_eq!(
        e["reference"],
        "docker.io/nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
    );
    assert_eq!(e["cuda_version"], "12.4.1");
    assert_eq!(e["flavor"], "runtime");
    assert_eq!(e["cudnn"], "cudnn");
    assert_eq!(e["cudnn_major"], 9);
    assert_eq!(e["os"], "ubuntu22.04");
    assert_eq!(e["min_driver"], "550.54.14");
    assert_eq!(e["minor_compat_driver"], "525.60.13");
    assert_eq!(e["nvcc"], false);
    assert!(e["eol"].is_boolean());
    assert!(e["contains"][0].as_str().unwrap().contains("no nvcc"));

    // The same tag through every way of naming it, a mirror-prefixed one included.
    for r in [
        "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
        "docker.io/nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
        "127.0.0.1:5999/nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
    ] {
        let e2 = host.json(&["explain", r]);
        assert_eq!(e2["reference"], e["reference"], "{r}");
        assert_eq!(e2["cudnn"], "cudnn");
    }

    let old = host.json(&["explain", "9.0-cudnn7-devel"]);
    assert_eq!(old["os"], Value::Null);
    assert_eq!(old["cudnn"], "cudnn7");
    assert_eq!(old["nvcc"], true);
    assert_eq!(old["min_driver"], "384.81");
    assert_eq!(old["minor_compat_driver"], Value::Null);
    assert_eq!(old["eol"], true);

    let text = stdout(&run_ok(
        &mut host.cmd(&["explain", "13.0.0-tensorrt-devel-ubuntu24.04"]),
    ));
    assert!(
        text.contains("tensorrt-devel") && text.contains("TensorRT"),
        "{text}"
    );

    for (bad, says) in [
        ("12.4-runtime-ubuntu22.04", "patch release"),
        ("latest", "no `latest`"),
        ("12.4.1-cudnn8-runtime-ubuntu22.04", "say `cudnn`"),
        ("ubuntu:22.04", "nvidia/cuda tags only"),
        ("nvidia/cuda", "no tag"),
        ("nvidia/cuda:12.4.1-bogus-ubuntu22.04", "not a flavor"),
    ] {
        let out = run_fails(&mut host.cmd(&["explain", bad]));
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{bad}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn explain_takes_the_stored_images_word() {
    // 13.0.3 is supported by the table; this image says it is end-of-life.
    let fx =
        FixtureStore::shared().cuda(&CudaSpec::new("13.0.3", Flavor::Runtime).end_of_life(true));
    let official = TestRegistry::start();
    Pusher::new(&official).push(&fx);
    let host = Host::new().with_hub(&official.url(), &[]);
    let tag = fx.tag.clone();
    let before = host.json(&["explain", &tag]);
    assert_eq!(before["eol"], false, "{before}");
    assert_eq!(before["image"], Value::Null);

    host.pull(&fx.reference());
    let after = host.json(&["explain", &tag]);
    assert_eq!(after["eol"], true, "{after}");
    assert!(after["eol_reasons"][0]
        .as_str()
        .unwrap()
        .contains("NVIDIA_CUDA_END_OF_LIFE=1"));
    assert_eq!(after["image"]["cuda_version"], "13.0.3");
    assert_eq!(after["image"]["end_of_life"], true);
    assert_eq!(after["image"]["digest"], fx.index.as_ref().unwrap().digest);
    assert!(after["image"]["require_cuda"]
        .as_str()
        .unwrap()
        .starts_with("cuda>=13.0"));
}

/// Issue 24: with the image stored, the driver minimum follows the image's own
/// `NVIDIA_REQUIRE_CUDA`, which the container runtime checks, not the tag.
#[test]
fn explain_takes_the_driver_minimum_from_the_stored_images_requirement() {
    // A 12.4.1 tag whose image asks for CUDA 12.6, and a CUDA release the table lacks.
    let asks_more = FixtureStore::shared().cuda(&CudaSpec::new("12.4.1", Flavor::Base).env(
        "NVIDIA_REQUIRE_CUDA",
        "cuda>=12.6 brand=tesla,driver>=535,driver<536",
    ));
    let unknown = FixtureStore::shared().cuda(&CudaSpec::new("13.9.1", Flavor::Base).env(
        "NVIDIA_REQUIRE_CUDA",
        "cuda>=13.9 brand=tesla,driver>=580,driver<581",
    ));
    let official = TestRegistry::start();
    let pusher = Pusher::new(&official);
    pusher.push(&asks_more);
    pusher.push(&unknown);
    let host = Host::new().with_hub(&official.url(), &[]);

    let before = host.json(&["explain", &asks_more.tag]);
    // NVIDIA's release notes: CUDA 12.4 GA needs 550.54.14 on Linux, 12.6 GA 560.28.03.
    assert_eq!(before["min_driver"], "550.54.14", "{before}");
    assert_eq!(before["driver_cuda_from"], "tag");
    host.pull(&asks_more.reference());
    let after = host.json(&["explain", &asks_more.tag]);
    assert_eq!(after["driver_cuda"], "12.6", "{after}");
    assert_eq!(after["driver_cuda_from"], "image");
    assert_eq!(after["min_driver"], "560.28.03");
    assert_eq!(
        after["driver_branches"][0],
        "brand=tesla,driver>=535,driver<536"
    );
    assert!(after["driver_source"]
        .as_str()
        .unwrap()
        .contains("NVIDIA_REQUIRE_CUDA (cuda>=12.6)"));

    let before = host.json(&["explain", &unknown.tag]);
    assert_eq!(before["min_driver"], Value::Null, "{before}");
    assert!(before["notes"]
        .to_string()
        .contains("until the image is pulled"));
    host.pull(&unknown.reference());
    let after = host.json(&["explain", &unknown.tag]);
    assert_eq!(after["driver_cuda"], "13.9", "{after}");
    assert_eq!(after["driver_cuda_from"], "image");
    assert_eq!(after["min_driver"], Value::Null);
    assert!(after["notes"].to_string().contains("supports CUDA 13.9"));
    // The words, at 80 columns.
    let out = host
        .cmd(&["explain", &unknown.tag])
        .env("COLUMNS", "80")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("one for CUDA 13.9"), "{text}");
    assert!(
        text.contains("or brand=tesla,driver>=580,driver<581"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
}

// ---------------------------------------------------------------------------------------
// tags
// ---------------------------------------------------------------------------------------

const SOME_TAGS: &[&str] = &[
    "12.4.0-runtime-ubuntu22.04",
    "12.4.1-base-ubuntu22.04",
    "12.4.1-runtime-ubuntu20.04",
    "12.4.1-runtime-ubuntu22.04",
    "12.4.1-devel-ubuntu22.04",
    "12.4.1-cudnn-runtime-ubuntu22.04",
    "12.4.1-cudnn-devel-ubuntu22.04",
    "12.5.1-runtime-ubuntu24.04",
    "12.8.2-runtime-ubuntu24.04",
    "12.8.2-runtime-ubuntu22.04",
    "12.9.1-runtime-ubuntu24.04",
    "13.0.3-devel-ubuntu24.04",
    "11.0-devel-ubuntu18.04-rc",
    "latest",
    "my-own-build",
];

/// Issue 24: what the registry's tag list shows wins over the tables: a CUDA release and an
/// OS family the tables lack are reported as seen in the registry, not as unknown.
#[test]
fn tags_report_what_the_tables_lack_as_seen_in_the_registry() {
    let fx = runtime();
    let official = registry_with_tags(
        &fx,
        &[
            "12.4.1-runtime-ubuntu22.04",
            "13.9.1-runtime-ubuntu24.04",
            "13.0.3-runtime-ubuntu28.04",
        ],
    );
    let host = Host::new().with_hub(&official.url(), &[]);
    let out = host.cmd(&["tags", REPO]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(notes.contains("CUDA 13.9"), "{notes}");
    assert!(notes.contains("ubuntu28.04"), "{notes}");
    assert!(notes.contains("seen in the registry"), "{notes}");
    assert!(!notes.contains("treated as unknown"), "{notes}");
    let all = host.json(&["tags", REPO]);
    let listed = all["tags"].as_array().unwrap();
    let new = listed
        .iter()
        .find(|t| t["tag"] == "13.9.1-runtime-ubuntu24.04")
        .unwrap();
    assert!(
        new["unknown"].to_string().contains("seen in the registry"),
        "{new}"
    );

    // `sync` says the same of the tags it selects from that list, and nothing of the rest.
    let spec = host.sandbox.write(
        "sync.toml",
        "[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \">=13.9\"\n",
    );
    let plan = host.json(&["sync", spec.to_str().unwrap(), "--plan"]);
    let seen = plan["seen_in_registry"].as_array().unwrap();
    assert_eq!(seen.len(), 1, "{plan}");
    assert!(seen[0].as_str().unwrap().contains("CUDA 13.9"), "{plan}");
    assert!(
        seen[0].as_str().unwrap().contains("seen in the registry"),
        "{plan}"
    );
    let out = host
        .cmd(&["sync", spec.to_str().unwrap(), "--plan"])
        .output()
        .unwrap();
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{notes}");
    assert!(
        notes.contains("CUDA 13.9") && notes.contains("seen in the registry"),
        "{notes}"
    );
    assert!(!notes.contains("ubuntu28.04"), "{notes}");
}

#[test]
fn tags_are_filtered_sorted_and_one_is_recommended() {
    let fx = runtime();
    let official = registry_with_tags(&fx, SOME_TAGS);
    let host = Host::new().with_hub(&official.url(), &[]);

    let all = host.json(&["tags", REPO]);
    assert_eq!(all["repository"], "docker.io/nvidia/cuda");
    assert_eq!(all["total"], SOME_TAGS.len());
    assert_eq!(all["skipped"], 2, "`latest` and `my-own-build`");
    assert!(all.get("unparsed").is_none());
    let listed: Vec<&str> = all["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), SOME_TAGS.len() - 2);
    assert_eq!(listed[0], "13.0.3-devel-ubuntu24.04", "newest first");
    assert_eq!(*listed.last().unwrap(), "11.0-devel-ubuntu18.04-rc");

    // The newest patch of the minor, runtime, on an Ubuntu LTS; the reasons say so.
    let r = host.json(&["tags", REPO, "--cuda", "12.4"]);
    assert_eq!(r["tags"].as_array().unwrap().len(), 7);
    assert_eq!(r["recommended"]["tag"], "12.4.1-runtime-ubuntu22.04");
    let reasons = r["recommended"]["reasons"].to_string();
    assert!(
        reasons.contains("patch of the requested minor"),
        "{reasons}"
    );
    assert!(reasons.contains("Ubuntu LTS"), "{reasons}");

    let r = host.json(&[
        "tags", REPO, "--cuda", "12.4", "--cudnn", "--flavor", "devel",
    ]);
    let only: Vec<&str> = r["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag"].as_str().unwrap())
        .collect();
    assert_eq!(only, ["12.4.1-cudnn-devel-ubuntu22.04"]);

    let r = host.json(&["tags", REPO, "--os", "ubuntu24.04", "--cuda", "12"]);
    for t in r["tags"].as_array().unwrap() {
        assert_eq!(t["os"], "ubuntu24.04");
    }
    // 12.9 shipped with R575, which the table says has ended; 12.8 with R570, which has not.
    assert_eq!(r["recommended"]["tag"], "12.8.2-runtime-ubuntu24.04");

    let r = host.json(&["tags", REPO, "--all"]);
    assert_eq!(r["unparsed"], serde_json::json!(["latest", "my-own-build"]));

    let none = host.json(&["tags", REPO, "--cuda", "10.2"]);
    assert_eq!(none["tags"], serde_json::json!([]));
    assert_eq!(none["recommended"], Value::Null);

    let text = stdout(&run_ok(&mut host.cmd(&["tags", REPO, "--cuda", "12.4"])));
    assert!(
        text.contains("recommended: docker.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04"),
        "{text}"
    );

    for bad in [
        &["tags", "nvidia/cuda:12.4.1"][..],
        &["tags", REPO, "--cuda", "twelve"],
        &["tags", REPO, "--os", "windows"],
    ] {
        let out = run_fails(&mut host.cmd(bad));
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
    let out = run_fails(&mut host.cmd(&["tags", "nvidia/nothing"]));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

#[test]
fn tags_follow_the_link_header_page_by_page() {
    let fx = runtime();
    let tags: Vec<String> = (0..13)
        .map(|i| format!("12.{i}.0-runtime-ubuntu22.04"))
        .collect();
    let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    let registry = registry_with_tags(&fx, &refs);
    let proxy = FaultProxy::start(&registry.url());
    proxy.add(Fault::PaginateTags { max_page: 4 });
    let host = Host::new().with_hub(&proxy.url(), &[]);

    // Asks 5 a page; the registry sends at most 4: 4 + 4 + 4 + 1.
    let r = host.json(&["tags", REPO, "--page-size", "5"]);
    assert_eq!(r["pages"], 4, "{r}");
    assert_eq!(r["total"], 13);
    assert_eq!(r["skipped"], 0);
    let got: std::collections::BTreeSet<String> = r["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, tags.iter().cloned().collect());
    let pages: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|q| q.path.contains("/tags/list"))
        .map(|q| q.path)
        .collect();
    assert_eq!(pages.len(), 4, "{pages:?}");
    assert!(pages[0].ends_with("/tags/list?n=5"), "{pages:?}");
    assert!(pages[1..].iter().all(|p| p.contains("last=")), "{pages:?}");

    proxy.clear_requests();
    let r = host.json(&["tags", REPO, "--page-size", "2"]);
    assert_eq!(r["pages"], 7);
    assert_eq!(r["total"], 13);
}

#[test]
fn tags_fall_back_across_sources_like_manifests() {
    let fx = runtime();
    let official = registry_with_tags(&fx, SOME_TAGS);
    let empty_mirror = TestRegistry::start();
    let dead = dead_endpoint();
    let host = Host::new().with_hub(&official.url(), &[&dead, &empty_mirror.url()]);
    let r = host.json(&["tags", REPO, "--cuda", "12.4.1"]);
    assert_eq!(r["source"], official.url());
    assert_eq!(r["source_role"], "official");
    // The official list is the authority: asked first, and the mirrors not at all.
    assert!(
        !empty_mirror
            .requests()
            .iter()
            .any(|q| q.path.contains("/tags/list")),
        "{:?}",
        empty_mirror.requests()
    );

    // A mirror that answers is used, and said to be a mirror.
    let mirror = registry_with_tags(&fx, SOME_TAGS);
    let host = Host::new().with_hub(&dead, &[&mirror.url()]);
    let r = host.json(&["tags", REPO]);
    assert_eq!(r["source"], mirror.url());
    assert_eq!(r["source_role"], "mirror");
    assert!(r["warnings"].to_string().contains("can lag"), "{r}");
}

// ---------------------------------------------------------------------------------------
// doctor
// ---------------------------------------------------------------------------------------

#[test]
fn doctor_on_a_machine_without_gpu_warns_and_exits_0() {
    let host = Host::new();
    let r = host.json(&["doctor", RUNTIME_TAG]);
    assert_eq!(r["summary"]["fail"], 0, "{r:#}");
    assert_eq!(r["driver"]["found"], "nothing");
    assert!(
        has(&findings(&r, "driver"), "warn", "no NVIDIA driver found"),
        "{r:#}"
    );
    assert!(
        has(&findings(&r, "nvidia-runtime"), "warn", "Toolkit not found"),
        "{r:#}"
    );
    assert!(
        has(&findings(&r, "docker"), "warn", "no Docker Engine"),
        "{r:#}"
    );
    assert!(
        has(&findings(&r, "image"), "warn", "cannot be checked"),
        "{r:#}"
    );
    // The seed's FAQ 3: a runtime image has no nvcc, and devel is named.
    let nvcc = findings(&r, "image")
        .into_iter()
        .find(|f| f["message"].as_str().unwrap().contains("no nvcc"))
        .expect("nvcc finding");
    assert!(nvcc["fix"]
        .as_str()
        .unwrap()
        .contains("12.4.1-devel-ubuntu22.04"));
    assert!(has(&findings(&r, "mirrors"), "ok", "no mirrors.toml"));

    // Text output: one line per finding, statuses first.
    let out = run_ok(&mut host.cmd(&["doctor"]));
    let text = stdout(&out);
    assert!(
        text.lines().any(|l| l.starts_with("warn  driver")),
        "{text}"
    );
    assert!(text.contains("fix: "), "{text}");
    assert!(text.trim_end().ends_with("0 fail"), "{text}");
}

#[test]
fn doctor_fails_a_driver_too_old_for_the_image() {
    let mut host = Host::new();
    host.gpu_on_path("470.82.01, Tesla T4");
    let out = run_fails(&mut host.cmd(&["--json", "doctor", RUNTIME_TAG]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = json_of(&out);
    assert_eq!(r["driver"]["found"], "smi");
    assert_eq!(r["driver"]["driver"], "470.82.01");
    assert_eq!(r["driver"]["gpus"][0]["name"], "Tesla T4");
    let image = findings(&r, "image");
    assert!(has(&image, "fail", "too old"), "{r:#}");
    let fix = image.iter().find(|f| f["status"] == "fail").unwrap()["fix"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(fix.contains("550.54.14"), "{fix}");
    assert!(stderr(&out).contains("doctor found"), "{}", stderr(&out));
}

#[test]
fn doctor_passes_a_good_driver_with_the_toolkit() {
    let mut host = Host::new();
    host.gpu("550.54.15, NVIDIA A100-SXM4-80GB\\n550.54.15, NVIDIA A100-SXM4-80GB");
    host.program("nvidia-ctk", "exit 0");
    host.program("nvidia-container-runtime", "exit 0");
    let daemon = host.sandbox.write(
        "daemon.json",
        r#"{"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}, "registry-mirrors": ["https://mirror.example"]}"#,
    );
    host.set("CUDAIMG_DOCKER_DAEMON_JSON", daemon.display().to_string());
    host.set("DOCKER_HOST", fake_docker(&["runc", "nvidia"]));
    let r = host.json(&["doctor", RUNTIME_TAG]);
    assert_eq!(r["summary"]["fail"], 0, "{r:#}");
    assert!(has(&findings(&r, "driver"), "ok", "2 GPUs"), "{r:#}");
    assert!(
        has(&findings(&r, "image"), "ok", "driver 550.54.15 runs"),
        "{r:#}"
    );
    let runtime = findings(&r, "nvidia-runtime");
    assert!(has(&runtime, "ok", "nvidia-ctk"), "{r:#}");
    assert!(has(&runtime, "ok", "runtime `nvidia` in"), "{r:#}");
    assert!(
        has(
            &runtime,
            "ok",
            "the Docker Engine knows the `nvidia` runtime"
        ),
        "{r:#}"
    );
    assert!(has(&findings(&r, "docker"), "ok", "API 1.45"), "{r:#}");
    assert!(
        has(&findings(&r, "mirrors"), "ok", "https://mirror.example"),
        "{r:#}"
    );

    // The kernel module's file is enough when nvidia-smi is missing.
    let mut host = Host::new();
    let proc = host.sandbox.write(
        "version",
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n",
    );
    host.set("CUDAIMG_PROC_DRIVER_VERSION", proc.display().to_string());
    host.program("nvidia-container-runtime-hook", "exit 0");
    let r = host.json(&["doctor", RUNTIME_TAG]);
    assert_eq!(r["driver"]["found"], "proc");
    assert!(
        has(&findings(&r, "image"), "ok", "driver 550.54.15 runs"),
        "{r:#}"
    );
}

#[test]
fn doctor_explains_minor_version_compatibility() {
    // The stored 12.4.1 image's NVIDIA_REQUIRE_CUDA accepts R535 on Tesla GPUs only.
    let fx = runtime();
    let official = TestRegistry::start();
    Pusher::new(&official).push(&fx);
    let mut host = Host::new().with_hub(&official.url(), &[]);
    host.pull(&fx.reference());
    host.program("nvidia-ctk", "exit 0");
    let cdi = host.sandbox.write(
        "cdi/nvidia.yaml",
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n",
    );
    host.set(
        "CUDAIMG_CDI_DIRS",
        cdi.parent().unwrap().display().to_string(),
    );

    host.gpu("535.104.05, NVIDIA GeForce RTX 4090");
    let out = run_fails(&mut host.cmd(&["--json", "doctor", &fx.reference()]));
    let r = json_of(&out);
    let image = findings(&r, "image");
    assert!(has(&image, "fail", "minor-version compatibility"), "{r:#}");
    assert!(has(&image, "fail", "cuda>=12.4"), "{r:#}");
    let fix = image.iter().find(|f| f["status"] == "fail").unwrap()["fix"].to_string();
    assert!(fix.contains("NVIDIA_DISABLE_REQUIRE=1"), "{fix}");
    assert!(
        has(&findings(&r, "nvidia-runtime"), "ok", "CDI specs"),
        "{r:#}"
    );

    // On a Tesla, the image's forward-compatibility alternative for R535 holds.
    host.gpu("535.104.05, Tesla T4");
    let r = host.json(&["doctor", &fx.reference()]);
    assert!(
        has(
            &findings(&r, "image"),
            "warn",
            "brand=tesla,driver>=535,driver<536"
        ),
        "{r:#}"
    );
    assert_eq!(r["summary"]["fail"], 0, "{r:#}");

    // A tag alone (not stored): its real NVIDIA_REQUIRE_CUDA is unknown (NVIDIA writes
    // driver-branch alternatives into it), so no refusal is claimed, only the limits.
    host.gpu("550.54.15, NVIDIA GeForce RTX 4090");
    let r = host.json(&["doctor", "12.8.2-runtime-ubuntu24.04"]);
    assert!(
        has(
            &findings(&r, "image"),
            "warn",
            "minor-version compatibility only"
        ),
        "{r:#}"
    );
    assert_eq!(r["summary"]["fail"], 0, "{r:#}");
    // A bare tag that is not a tag says why, not "not in the store".
    let out = run_fails(&mut host.cmd(&["doctor", "12.4-runtime-ubuntu22.04"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 13.x needs the 580 family: no minor-version compatibility from 550.
    let out = run_fails(&mut host.cmd(&["--json", "doctor", "13.0.3-runtime-ubuntu24.04"]));
    assert!(has(&findings(&json_of(&out), "image"), "fail", "too old"));
}

fn compose_validates(dir: &Path, yaml: &str) -> String {
    let file = dir.join("docker-compose.yml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(&file)
        .arg("config")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `docker-compose` (scripts/setup.sh installs it): {e}")
        });
    assert!(
        out.status.success(),
        "docker-compose config refused:\n{yaml}\n{}",
        stderr(&out)
    );
    stdout(&out)
}

mod checks;
mod engine;
mod gpu_arch;
