//! `cudaimg serve` with real clients: a store filled by `cudaimg pull` from a real registry,
//! then read back by skopeo, by `cudaimg pull` through mirrors.toml, by a real dockerd whose
//! `registry-mirrors` names the server, and by containerd's `ctr` through a `hosts.toml`
//! mirror; hostile requests on raw sockets; `gc` beside a live download.

use cudaimg_test_support as common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::docker::{busybox, unavailable_reason, Runnable, TestDocker};
use common::fixtures::sha256_digest;
use common::{
    dead_endpoint, run_ok, Arch, CudaSpec, Fixture, FixtureStore, Flavor, MediaTypes, Pusher,
    Sandbox, Scale, TestRegistry,
};
use serde_json::Value;

/// A running `cudaimg serve`, killed on drop.
struct Served {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Served {
    fn start(sandbox: &Sandbox, extra: &[&str]) -> Served {
        Self::start_at(sandbox, "127.0.0.1:0", extra)
    }

    fn start_at(sandbox: &Sandbox, addr: &str, extra: &[&str]) -> Served {
        let log = sandbox
            .root()
            .join(format!("serve-{}.log", fastrand_suffix()));
        let mut cmd = sandbox.cudaimg();
        cmd.arg("--store")
            .arg(sandbox.store_dir())
            .args(["--json", "-v", "serve", "--addr", addr])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "serve printed no JSON ({e}): {line}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Served {
            child,
            addr: v["addr"].as_str().unwrap().to_owned(),
            log,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One raw request; returns the status line, the head and the body (read to EOF).
    fn raw(&self, request: &[u8]) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(request).unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let split = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&all)));
        let head = String::from_utf8_lossy(&all[..split]).into_owned();
        let status = head[9..12].parse().unwrap();
        (status, head, all[split + 4..].to_vec())
    }

    fn get(&self, target: &str, extra: &str) -> (u16, String, Vec<u8>) {
        self.raw(
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
                .as_bytes(),
        )
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn error_code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A store holding the multi-arch `nvidia/cuda` runtime fixture (amd64 pulled) and
/// `ubuntu:22.04`, pulled from a real registry.
struct Filled {
    sandbox: Sandbox,
    fx: Fixture,
    _official: TestRegistry,
}

fn filled(fx: Fixture) -> Filled {
    let official = TestRegistry::start();
    Pusher::new(&official).push(&fx);
    let ubuntu = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Oci, Scale::TINY);
    Pusher::new(&official).push_as(&ubuntu, "library/ubuntu", "22.04");
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    run_ok(&mut sandbox.cli(
        &config,
        &[
            "pull",
            "--platform",
            "linux/amd64",
            &fx.reference(),
            "ubuntu:22.04",
        ],
    ));
    Filled {
        sandbox,
        fx,
        _official: official,
    }
}

fn runtime() -> Fixture {
    Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale::TINY)
}

#[test]
fn serve_answers_the_distribution_api_from_the_store() {
    let f = filled(runtime());
    let s = Served::start(&f.sandbox, &[]);
    let index = f.fx.index.as_ref().unwrap();
    let amd = f.fx.platform(Arch::Amd64);
    let arm = f.fx.platform(Arch::Arm64);
    let tag = &f.fx.tag;

    let (st, head, body) = s.get("/v2/", "");
    assert_eq!(st, 200);
    assert_eq!(
        header(&head, "Docker-Distribution-API-Version"),
        Some("registry/2.0")
    );
    assert_eq!(body, b"{}");

    // By tag: the stored index, byte for byte, with its media type and digest; as the
    // registry-mirrors name, as containerd's ?ns= name, and with the host in the path.
    for target in [
        format!("/v2/nvidia/cuda/manifests/{tag}"),
        format!("/v2/nvidia/cuda/manifests/{tag}?ns=docker.io"),
        format!("/v2/docker.io/nvidia/cuda/manifests/{tag}"),
        format!("/v2/nvidia/cuda/manifests/{}", index.digest),
    ] {
        let (st, head, body) = s.get(&target, "");
        assert_eq!(st, 200, "{target}: {head}");
        assert_eq!(body, index.bytes, "{target}");
        assert_eq!(
            header(&head, "Content-Type"),
            Some(index.media_type.as_str())
        );
        assert_eq!(
            header(&head, "Docker-Content-Digest"),
            Some(index.digest.as_str())
        );
        assert_eq!(
            header(&head, "Content-Length"),
            Some(index.bytes.len().to_string().as_str())
        );
    }
    let (st, head, body) = s.raw(
        format!(
            "HEAD /v2/nvidia/cuda/manifests/{tag} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(st, 200);
    assert!(body.is_empty());
    assert_eq!(
        header(&head, "Content-Length"),
        Some(index.bytes.len().to_string().as_str())
    );
    // The pulled child is served; the platform that was not pulled is a 404.
    let (st, head, body) = s.get(
        &format!("/v2/nvidia/cuda/manifests/{}", amd.manifest.digest),
        "",
    );
    assert_eq!(st, 200);
    assert_eq!(body, amd.manifest.bytes);
    assert_eq!(
        header(&head, "Content-Type"),
        Some(amd.manifest.media_type.as_str())
    );
    let (st, _, body) = s.get(
        &format!("/v2/nvidia/cuda/manifests/{}", arm.manifest.digest),
        "",
    );
    assert_eq!((st, error_code(&body)), (404, "MANIFEST_UNKNOWN".into()));
    let (st, _, body) = s.get("/v2/nvidia/cuda/manifests/no-such-tag", "");
    assert_eq!((st, error_code(&body)), (404, "MANIFEST_UNKNOWN".into()));
    let (st, _, body) = s.get("/v2/nvidia/other/manifests/latest", "");
    assert_eq!((st, error_code(&body)), (404, "NAME_UNKNOWN".into()));
    let (st, _, body) = s.get(&format!("/v2/nvidia/cuda/manifests/{tag}?ns=nvcr.io"), "");
    assert_eq!((st, error_code(&body)), (404, "NAME_UNKNOWN".into()));

    // Blobs: whole, ranged, HEAD.
    let layer = f.fx.largest_layer(Arch::Amd64);
    let bytes = layer.bytes();
    let blob = format!("/v2/nvidia/cuda/blobs/{}", layer.digest);
    let (st, head, body) = s.get(&blob, "");
    assert_eq!(st, 200);
    assert_eq!(sha256_digest(&body), layer.digest);
    assert_eq!(
        header(&head, "Docker-Content-Digest"),
        Some(layer.digest.as_str())
    );
    let (st, head, body) = s.get(&blob, "Range: bytes=10-1009\r\n");
    assert_eq!(st, 206);
    assert_eq!(body, bytes[10..1010]);
    assert_eq!(
        header(&head, "Content-Range"),
        Some(format!("bytes 10-1009/{}", bytes.len()).as_str())
    );
    let (st, _, body) = s.get(&blob, "Range: bytes=-5\r\n");
    assert_eq!((st, body.as_slice()), (206, &bytes[bytes.len() - 5..]));
    let (st, head, body) =
        s.raw(format!("HEAD {blob} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes());
    assert_eq!(st, 200);
    assert!(body.is_empty());
    assert_eq!(
        header(&head, "Content-Length"),
        Some(bytes.len().to_string().as_str())
    );
    // A blob of another repository is not this one's.
    let (st, _, body) = s.get(
        &format!("/v2/library/ubuntu/blobs/{}", amd.config.digest),
        "",
    );
    assert_eq!((st, error_code(&body)), (404, "BLOB_UNKNOWN".into()));

    // Lists, paginated.
    let (st, _, body) = s.get("/v2/nvidia/cuda/tags/list", "");
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["name"], "nvidia/cuda");
    assert_eq!(v["tags"], serde_json::json!([tag]));
    let (st, head, body) = s.get("/v2/_catalog?n=1", "");
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["library/ubuntu"]));
    assert_eq!(
        header(&head, "Link"),
        Some("</v2/_catalog?n=1&last=library%2Fubuntu>; rel=\"next\"")
    );
    let (_, head, body) = s.get("/v2/_catalog?n=1&last=library%2Fubuntu", "");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["nvidia/cuda"]));
    assert_eq!(header(&head, "Link"), None);
    let (st, _, body) = s.get("/v2/ubuntu/tags/list", "");
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["tags"],
        serde_json::json!(["22.04"])
    );

    // Referrers: the store keeps none, so an empty OCI index.
    let (st, head, body) = s.get(&format!("/v2/nvidia/cuda/referrers/{}", index.digest), "");
    assert_eq!(st, 200);
    assert_eq!(
        header(&head, "Content-Type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["manifests"], serde_json::json!([]));

    // Keep-alive: two requests on one connection, both answered.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
}

#[test]
fn serve_skopeo_copies_from_it_and_cudaimg_pulls_through_it_as_a_mirror() {
    let f = filled(runtime());
    let s = Served::start(&f.sandbox, &[]);
    let index = f.fx.index.as_ref().unwrap();
    let amd = f.fx.platform(Arch::Amd64);

    let other = Sandbox::new();
    let src = format!("docker://{}/nvidia/cuda:{}", s.addr, f.fx.tag);
    let raw = run_ok(
        other
            .skopeo()
            .args(["inspect", "--raw", "--tls-verify=false", &src]),
    );
    assert_eq!(raw.stdout, index.bytes, "skopeo saw other manifest bytes");
    let dir = other.root().join("copy");
    run_ok(other.skopeo().args([
        "copy",
        "-q",
        "--src-tls-verify=false",
        "--override-arch",
        "amd64",
        &src,
        &format!("oci:{}:x", dir.display()),
    ]));
    let layout: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    // skopeo 1.9 converts Docker media types for an OCI layout, so compare what it verified:
    // every layer digest of the amd64 image is in the copy.
    let copied: Vec<String> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    for l in amd.layer_digests() {
        assert!(copied.contains(&l), "skopeo did not copy {l}: {layout}");
    }

    // cudaimg itself, with the server as docker.io's mirror and no official endpoint alive.
    let config = other.write_hub_config(&dead_endpoint(), &[&s.url()]);
    let out = run_ok(&mut other.cli(
        &config,
        &[
            "--json",
            "pull",
            "--platform",
            "linux/amd64",
            &f.fx.reference(),
        ],
    ));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["digest"], amd.manifest.digest);
    assert_eq!(r["index_digest"], index.digest);
    run_ok(&mut other.cli(&config, &["verify"]));
}

#[test]
fn serve_over_tls_copies_with_skopeo() {
    let f = filled(runtime());
    let (cert, key) = test_cert(&f.sandbox);
    let s = Served::start(
        &f.sandbox,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let out = f.sandbox.root().join("copy");
    run_ok(f.sandbox.skopeo().args([
        "copy",
        "-q",
        "--src-tls-verify=false",
        "--override-arch",
        "amd64",
        &format!("docker://{}/nvidia/cuda:{}", s.addr, f.fx.tag),
        &format!("dir:{}", out.display()),
    ]));
    let layer = f.fx.largest_layer(Arch::Amd64);
    let copied = std::fs::read(out.join(layer.digest.strip_prefix("sha256:").unwrap())).unwrap();
    assert_eq!(sha256_digest(&copied), layer.digest);

    // Plain HTTP to the TLS port is not answered as HTTP.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "TLS port answered plain HTTP"
    );
}

/// A self-signed certificate for 127.0.0.1 and its key, made by openssl in the sandbox.
fn test_cert(sandbox: &Sandbox) -> (PathBuf, PathBuf) {
    let dir = sandbox.root().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl (Debian package openssl) makes the test certificate");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir.join("cert.pem"), dir.join("key.pem"))
}

fn docker_or_skip() -> bool {
    match unavailable_reason() {
        Some(why) => {
            common::skip(&why);
            false
        }
        None => true,
    }
}

/// containerd with its own root, state and socket, stopped on drop.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("cudaimg-containerd-")
            .tempdir()
            .unwrap();
        let p = dir.path();
        let config = format!(
            "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{r}/c.sock\"\n[ttrpc]\n  address = \"{r}/c.sock.ttrpc\"\n\
             [debug]\n  address = \"{r}/debug.sock\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{r}/opt\"\n",
            r = p.display()
        );
        std::fs::write(p.join("config.toml"), config).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(p.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(p.join("containerd.log")).unwrap())
            .spawn()
            .unwrap();
        let c = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c
            .ctr(&["version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .args(args);
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        common::docker::stop_gracefully(&mut self.child);
    }
}

mod auth;
mod clients;
mod greedy;
mod pull_through;
