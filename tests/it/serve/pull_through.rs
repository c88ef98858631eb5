//! `serve --pull-through` from an empty store, with the "official" registry (a real
//! distribution registry) reached only through cudaimg: real clients (skopeo, containerd's
//! `ctr` through `hosts.toml`, Docker 20.10 and Docker 28 in both image stores through
//! `registry-mirrors`) get upstream's digests; what upstream sent is counted by the
//! registry's access log and by the misbehaving proxy in front of it.

use super::*;
use common::chroot::require;
use common::docker::EngineKind;
use common::{Fault, FaultProxy};

/// An official registry behind a counting proxy (what cudaimg calls the official
/// endpoint), a mirror proxy in front of the same registry, and a sandbox whose
/// mirrors.toml names them for docker.io.
struct Upstream {
    official: TestRegistry,
    /// The official endpoint as cudaimg reaches it: counts what it sends.
    front: FaultProxy,
    mirror: FaultProxy,
    sandbox: Sandbox,
    config: PathBuf,
}

impl Upstream {
    fn start() -> Upstream {
        let official = TestRegistry::start();
        let front = FaultProxy::start(&official.url());
        let mirror = FaultProxy::start(&official.url());
        let sandbox = Sandbox::new();
        let config = sandbox.write_hub_config(&front.url(), &[&mirror.url()]);
        Upstream {
            official,
            front,
            mirror,
            sandbox,
            config,
        }
    }

    fn serve(&self, extra: &[&str]) -> Served {
        let mut args = vec!["--config", self.config.to_str().unwrap(), "--pull-through"];
        args.extend_from_slice(extra);
        assert!(
            !self.sandbox.store_dir().join("index.json").exists(),
            "the store was not empty"
        );
        Served::start(&self.sandbox, &args)
    }

    /// Body bytes upstream sent for `digest`, through the mirror and the official endpoint.
    fn sent_for(&self, digest: &str) -> u64 {
        self.front.body_bytes_sent_for(digest) + self.mirror.body_bytes_sent_for(digest)
    }

    /// Every request that reached the registry itself.
    fn registry_requests(&self) -> usize {
        self.official.requests().len()
    }
}

/// Polls `what` until it holds or `secs` pass.
fn eventually(secs: u64, what: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    what()
}

fn wait_for_log(s: &Served, line: &str) {
    assert!(
        eventually(30, || s.log().contains(line)),
        "serve never logged `{line}`:\n{}",
        s.log()
    );
}

/// Layers of several MB: a download is mid-way long enough to be cut or joined.
fn medium() -> Fixture {
    FixtureStore::shared().cuda(
        &CudaSpec::new("12.4.1", Flavor::Runtime)
            .media(MediaTypes::Docker)
            .scale(Scale(0.02)),
    )
}

fn skopeo_copy(sandbox: &Sandbox, src: &str, dir: &Path) {
    run_ok(sandbox.skopeo().args([
        "copy",
        "-q",
        "--src-tls-verify=false",
        "--override-arch",
        "amd64",
        src,
        &format!("oci:{}:x", dir.display()),
    ]));
}

fn copied_blobs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect()
}

#[test]
fn pull_through_skopeo_and_ctr_get_upstreams_digests_and_a_second_node_sends_nothing_upstream() {
    let up = Upstream::start();
    let fx = runtime();
    Pusher::new(&up.official).push(&fx);
    let s = up.serve(&[]);
    let index = fx.index.as_ref().unwrap();
    let amd = fx.platform(Arch::Amd64);

    // skopeo: the manifest bytes are upstream's, as skopeo reads them from the registry.
    let node = Sandbox::new();
    let src = format!("docker://{}/nvidia/cuda:{}", s.addr, fx.tag);
    let upstream_raw = run_ok(node.skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/nvidia/cuda:{}", up.official.host(), fx.tag),
    ]));
    let raw = run_ok(
        node.skopeo()
            .args(["inspect", "--raw", "--tls-verify=false", &src]),
    );
    assert_eq!(
        raw.stdout, upstream_raw.stdout,
        "skopeo saw other manifest bytes"
    );
    assert_eq!(raw.stdout, index.bytes);
    let dir = node.root().join("first");
    skopeo_copy(&node, &src, &dir);
    let copied = copied_blobs(&dir);
    for l in amd.layer_digests() {
        assert!(copied.contains(&l), "skopeo did not copy {l}");
    }
    // Every amd64 blob came from upstream once, and the image is now named in the store.
    for l in amd.layer_digests() {
        assert!(up.sent_for(&l) > 0, "{l} never came from upstream");
    }
    wait_for_log(&s, &format!("stored `docker.io/nvidia/cuda:{}`", fx.tag));
    run_ok(&mut up.sandbox.cli(&up.config, &["verify"]));

    // A second node (containerd through hosts.toml, then skopeo again): nothing upstream.
    let before = (
        up.registry_requests(),
        up.front.requests().len(),
        up.mirror.requests().len(),
    );
    let c = Containerd::start();
    let hosts = c.path().join("certs.d/docker.io");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            s.url()
        ),
    )
    .unwrap();
    let reference = format!("docker.io/{}", fx.reference());
    let out = c
        .ctr(&["image", "pull", "--platform", "linux/amd64", "--hosts-dir"])
        .arg(c.path().join("certs.d"))
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr pull failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let ls = run_ok(&mut c.ctr(&["image", "ls"]));
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.contains(&reference) && ls.contains(index.digest.as_str()),
        "{ls}"
    );
    skopeo_copy(&node, &src, &node.root().join("second"));
    // The server answered both (its access log), and nothing reached upstream meanwhile.
    wait_for_log(&s, "?ns=docker.io");
    let after = (
        up.registry_requests(),
        up.front.requests().len(),
        up.mirror.requests().len(),
    );
    assert_eq!(
        before,
        after,
        "the second node's pulls went upstream:\n{}",
        s.log()
    );
}

#[test]
fn pull_through_a_mirror_cut_at_half_a_layer_costs_skopeo_no_failed_pull() {
    let up = Upstream::start();
    let fx = medium();
    Pusher::new(&up.official).push(&fx);
    let layer = fx.largest_layer(Arch::Amd64);
    assert!(
        layer.size > 4 << 20,
        "the layer is too small: {}",
        layer.size
    );
    up.mirror.add(Fault::CutAfter {
        path_contains: layer.digest.clone(),
        bytes: layer.size / 2,
        reset: true,
        times: 1,
    });
    let s = up.serve(&[]);
    let node = Sandbox::new();
    let dir = node.root().join("copy");
    skopeo_copy(
        &node,
        &format!("docker://{}/nvidia/cuda:{}", s.addr, fx.tag),
        &dir,
    );
    assert!(copied_blobs(&dir).contains(&layer.digest));
    let cut = up
        .mirror
        .requests()
        .into_iter()
        .filter(common::ProxyRequest::fault_fired)
        .count();
    assert_eq!(cut, 1, "the cut never fired");
    // Resumed, not fetched again: upstream sent the layer about once.
    let sent = up.sent_for(&layer.digest);
    assert!(
        sent >= layer.size && sent < layer.size + layer.size / 4,
        "upstream sent {sent} bytes of a {}-byte layer",
        layer.size
    );
    wait_for_log(&s, &format!("stored `docker.io/nvidia/cuda:{}`", fx.tag));
    run_ok(&mut up.sandbox.cli(&up.config, &["verify"]));
}

#[test]
fn pull_through_many_clients_of_one_blob_share_one_download() {
    let up = Upstream::start();
    let fx = medium();
    Pusher::new(&up.official).push(&fx);
    let layer = fx.largest_layer(Arch::Amd64).clone();
    // About 2 s for the layer: every client arrives while it downloads.
    let rate = layer.size / 2;
    up.mirror.add(Fault::Throttle {
        bytes_per_sec: rate,
    });
    up.front.add(Fault::Throttle {
        bytes_per_sec: rate,
    });
    let s = up.serve(&[]);
    let amd = fx.platform(Arch::Amd64);
    let (st, _, _) = s.get(
        &format!("/v2/nvidia/cuda/manifests/{}", amd.manifest.digest),
        "",
    );
    assert_eq!(st, 200);
    let started = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let addr = s.addr.clone();
            let target = format!("/v2/nvidia/cuda/blobs/{}", layer.digest);
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(&addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                c.write_all(
                    format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .unwrap();
                let mut all = Vec::new();
                let _ = c.read_to_end(&mut all);
                let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                (
                    all[..12].to_vec(),
                    all[split + 4..].to_vec(),
                    Instant::now(),
                )
            })
        })
        .collect();
    for c in clients {
        let (status, body, _) = c.join().unwrap();
        assert_eq!(&status[9..12], b"200");
        assert_eq!(body.len() as u64, layer.size);
        assert_eq!(sha256_digest(&body), layer.digest);
    }
    let took = started.elapsed();
    let sent = up.sent_for(&layer.digest);
    assert!(
        sent >= layer.size && sent < layer.size + layer.size / 4,
        "upstream sent {sent} bytes for 16 clients of a {}-byte layer",
        layer.size
    );
    assert!(
        took < Duration::from_secs(10),
        "16 clients took {took:?}: they did not share the download"
    );
    let served = up
        .official
        .blob_downloads()
        .iter()
        .filter(|d| **d == layer.digest)
        .count();
    assert!(
        (1..=2).contains(&served),
        "the registry served the layer {served} times (one download, or one and a resume)"
    );
}

#[test]
fn pull_through_tags_are_checked_again_after_the_ttl_and_served_stale_when_upstream_is_down() {
    let up = Upstream::start();
    let first = runtime();
    Pusher::new(&up.official).push(&first);
    let s = up.serve(&["--tag-ttl", "2"]);
    let target = format!("/v2/nvidia/cuda/manifests/{}", first.tag);
    let digest_of = |head: &str| header(head, "Docker-Content-Digest").unwrap().to_owned();
    let (st, head, _) = s.get(&target, "");
    assert_eq!(st, 200);
    let a = digest_of(&head);
    assert_eq!(a, first.top().digest);

    // Within the TTL, the tag is not asked upstream again.
    let asked = up.front.requests().len();
    let (_, head, _) = s.get(&target, "");
    assert_eq!(digest_of(&head), a);
    assert_eq!(
        up.front.requests().len(),
        asked,
        "asked upstream within the TTL"
    );

    // Upstream moves the tag; after the TTL the new digest is served.
    let second = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Oci, Scale::TINY);
    Pusher::new(&up.official).push_as(&second, "nvidia/cuda", &first.tag);
    std::thread::sleep(Duration::from_millis(2200));
    let (st, head, _) = s.get(&target, "");
    assert_eq!(st, 200);
    assert_eq!(
        digest_of(&head),
        second.top().digest,
        "the moved tag was not re-checked"
    );
    assert!(header(&head, "X-Cudaimg-Stale").is_none());

    // Upstream down: after the TTL, the stored answer, marked stale, and a log line.
    up.front.add(Fault::Refuse);
    up.mirror.add(Fault::Refuse);
    std::thread::sleep(Duration::from_millis(2200));
    let (st, head, _) = s.get(&target, "");
    assert_eq!(st, 200, "{}", s.log());
    assert_eq!(digest_of(&head), second.top().digest);
    assert!(header(&head, "X-Cudaimg-Stale").is_some(), "{head}");
    assert!(
        header(&head, "Warning").is_some_and(|w| w.starts_with("110")),
        "{head}"
    );
    wait_for_log(&s, "possibly stale");
}

/// An engine of `kind`, whose `registry-mirrors` names a pull-through server with an
/// empty store, pulls and runs an image; its ID and repo digest are upstream's.
fn engine_pulls_through(kind: EngineKind) {
    let up = Upstream::start();
    let base = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, Scale::TINY);
    let amd64 = base.platform(Arch::Amd64);
    let tag = "12.4.1-through-ubuntu22.04";
    let image = Runnable::build(amd64, "hello through cudaimg", &busybox());
    image.push(&Pusher::new(&up.official), amd64, "nvidia/cuda", tag);
    let s = up.serve(&[]);
    let Some(d) = require(TestDocker::try_start_kind(
        kind,
        &serde_json::json!({ "registry-mirrors": [s.url()] }),
    )) else {
        return;
    };
    let reference = format!("nvidia/cuda:{tag}");
    let out = d.docker(&["pull", &reference]).output().unwrap();
    assert!(
        out.status.success(),
        "docker pull failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log(),
        s.log()
    );
    let inspect = d.inspect(&reference);
    let id = if d.uses_containerd_store() {
        &image.manifest.digest
    } else {
        &image.config.digest
    };
    assert_eq!(inspect["Id"], *id.as_str(), "{kind:?}");
    let repo_digests = inspect["RepoDigests"].to_string();
    assert!(
        repo_digests.contains(&image.manifest.digest),
        "{repo_digests}"
    );
    assert_eq!(
        crate::loaded::run_output(&d, &reference),
        "hello through cudaimg"
    );
    // Fetched through cudaimg: the engine asked the server, the server asked upstream.
    // (containerd's resolver, in the containerd store, adds `?ns=docker.io`.)
    let asked = format!("/v2/nvidia/cuda/manifests/{tag}");
    assert!(
        s.log()
            .lines()
            .any(|l| l.contains(&asked) && l.contains(" 200 ")),
        "{}",
        s.log()
    );
    assert!(
        up.sent_for(&image.layer.0) > 0,
        "the layer never came from upstream"
    );
}

#[test]
fn pull_through_docker_20_10_pulls_through_registry_mirrors() {
    engine_pulls_through(EngineKind::Stable);
}

#[test]
fn pull_through_docker_28_graphdriver_pulls_through_registry_mirrors() {
    engine_pulls_through(EngineKind::Current {
        containerd_store: false,
    });
}

#[test]
fn pull_through_docker_28_containerd_store_pulls_through_registry_mirrors() {
    engine_pulls_through(EngineKind::Current {
        containerd_store: true,
    });
}

#[test]
fn pull_through_a_flipped_byte_costs_the_client_a_retry_never_a_wrong_layer() {
    let up = Upstream::start();
    let fx = medium();
    Pusher::new(&up.official).push(&fx);
    let layer = fx.largest_layer(Arch::Amd64).clone();
    // Slow enough that the client reads the flipped byte before the download ends.
    up.mirror.add(Fault::Throttle {
        bytes_per_sec: layer.size,
    });
    up.mirror.add(Fault::FlipByte {
        path_contains: layer.digest.clone(),
        offset: 100,
        times: 1,
    });
    let s = up.serve(&[]);
    let amd = fx.platform(Arch::Amd64);
    let (st, _, _) = s.get(
        &format!("/v2/nvidia/cuda/manifests/{}", amd.manifest.digest),
        "",
    );
    assert_eq!(st, 200);
    let target = format!("/v2/nvidia/cuda/blobs/{}", layer.digest);
    let (st, head, body) = s.get(&target, "");
    assert_eq!(st, 200);
    assert_eq!(
        header(&head, "Content-Length"),
        Some(layer.size.to_string().as_str())
    );
    let flipped = up
        .mirror
        .requests()
        .iter()
        .any(common::ProxyRequest::fault_fired);
    assert!(flipped, "the flip never fired");
    // Either the answer ended short (the client retries), or it is the right layer: never
    // a complete body that is not the layer.
    assert!(
        (body.len() as u64) < layer.size || sha256_digest(&body) == layer.digest,
        "a wrong layer was sent whole"
    );
    // The retry gets the layer.
    let (st, _, body) = s.get(&target, "");
    assert_eq!(st, 200);
    assert_eq!(sha256_digest(&body), layer.digest, "{}", s.log());
}

/// Health memory: a mirror that `pull` found silent (its stall fired, the store records it)
/// is asked for nothing by the server's pull-through, which takes every byte from the
/// official endpoint well before the 30 s a silent mirror asked first would cost a blob.
#[test]
fn pull_through_asks_a_mirror_that_pull_found_silent_last() {
    let up = Upstream::start();
    let pulled = FixtureStore::shared().cuda(&CudaSpec::new("12.4.1", Flavor::Base));
    let served = medium();
    Pusher::new(&up.official).push(&pulled);
    Pusher::new(&up.official).push(&served);
    up.mirror.add(Fault::Stall {
        path_contains: "/v2/".into(),
        after_bytes: 0,
        for_secs: 60,
        times: common::proxy::ALWAYS,
    });
    run_ok(&mut up.sandbox.cli(
        &up.config,
        &["pull", "--platform", "linux/amd64", &pulled.reference()],
    ));
    assert!(
        up.mirror
            .requests()
            .iter()
            .any(common::ProxyRequest::fault_fired),
        "the stall never fired: {:?}",
        up.mirror.requests()
    );
    up.mirror.clear_requests();

    // Not `up.serve`: the store is not empty, it holds the pull and its health record.
    let s = Served::start(
        &up.sandbox,
        &["--config", up.config.to_str().unwrap(), "--pull-through"],
    );
    let started = Instant::now();
    let node = Sandbox::new();
    let dir = node.root().join("copied");
    skopeo_copy(
        &node,
        &format!("docker://{}/nvidia/cuda:{}", s.addr, served.tag),
        &dir,
    );
    let took = started.elapsed();
    let amd = served.platform(Arch::Amd64);
    let blobs = copied_blobs(&dir);
    for layer in &amd.layers {
        assert!(blobs.contains(&layer.digest), "{} not copied", layer.digest);
        assert!(up.front.body_bytes_sent_for(&layer.digest) >= layer.size);
    }
    let asked: Vec<_> = up
        .mirror
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert!(asked.is_empty(), "the silent mirror was asked: {asked:?}");
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}:\n{}",
        s.log()
    );
}
