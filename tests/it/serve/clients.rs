//! More of the serve suite: hostile requests and slow clients, gc beside a live download,
//! `--verify-reads` on a corrupt blob, and real Docker and containerd pulling through it.

use super::*;

#[test]
fn serve_hostile_requests_get_errors_and_a_slow_client_holds_nothing() {
    let f = filled(runtime());
    let s = Served::start(&f.sandbox, &["--client-timeout", "2"]);
    let layer = f.fx.largest_layer(Arch::Amd64);
    let size = layer.size;

    for target in [
        "/v2/../../../../etc/passwd",
        "/v2/nvidia/../../etc/manifests/passwd",
        "/v2/nvidia/cuda/blobs/..%2f..%2f..%2fetc%2fpasswd",
        "/v2/nvidia/cuda/blobs/sha256:../../../../etc/passwd",
        "/v2/nvidia/cuda/manifests/../../../index.json",
        "/v2/%2e%2e/%2e%2e/manifests/x",
        "/etc/passwd",
        "/v2/nvidia/cuda/blobs/sha256:0000",
    ] {
        let (st, _, body) = s.get(target, "");
        assert!((400..500).contains(&st), "{target}: {st}");
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("root:"), "{target} served a file: {text}");
        error_code(&body);
    }
    let (st, _, body) = s.get("/v2/nvidia/cuda/blobs/sha256:XYZ", "");
    assert_eq!((st, error_code(&body)), (400, "DIGEST_INVALID".into()));
    let (st, _, body) = s.get("/v2/NVIDIA/cuda/tags/list", "");
    assert_eq!((st, error_code(&body)), (400, "NAME_INVALID".into()));

    // Ranges: inverted, past the end, and numbers larger than any file.
    let blob = format!("/v2/nvidia/cuda/blobs/{}", layer.digest);
    for range in [
        "bytes=100-10".to_owned(),
        format!("bytes={size}-"),
        "bytes=18446744073709551615-18446744073709551616".to_owned(),
        "bytes=0-99999999999999999999999999".to_owned(),
    ] {
        let (st, head, _) = s.get(&blob, &format!("Range: {range}\r\n"));
        assert_eq!(st, 416, "{range}");
        assert_eq!(
            header(&head, "Content-Range"),
            Some(format!("bytes */{size}").as_str())
        );
    }

    // Writes: refused with the OCI error body, without reading a body.
    for method in ["PUT", "POST", "PATCH", "DELETE"] {
        let (st, head, body) = s.raw(
            format!(
                "{method} /v2/nvidia/cuda/manifests/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            )
            .as_bytes(),
        );
        assert_eq!(
            (st, error_code(&body)),
            (405, "UNSUPPORTED".into()),
            "{method}"
        );
        assert_eq!(header(&head, "Allow"), Some("GET, HEAD"));
    }
    let (st, _, _) = s.raw(
        b"POST /v2/nvidia/cuda/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(st, 405);

    // A head too large, too many headers, garbage.
    let big = format!("GET /v2/ HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(64 * 1024));
    assert_eq!(s.raw(big.as_bytes()).0, 431);
    let many = format!("GET /v2/ HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(100));
    assert_eq!(s.raw(many.as_bytes()).0, 431);
    assert_eq!(s.raw(b"\x16\x03\x01 not http\r\n\r\n").0, 400);

    // Slow clients: a partial head, then silence, on several connections. Others are
    // served meanwhile, and each slow one is closed after the client timeout.
    let slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            c
        })
        .collect();
    let t = Instant::now();
    let (st, _, body) = s.get(&blob, "");
    assert_eq!(st, 200);
    assert_eq!(sha256_digest(&body), layer.digest);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "slow clients held the server up"
    );
    for mut c in slow {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t = Instant::now();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a slow client was kept open past the timeout"
        );
        assert!(
            buf.is_empty() || buf.starts_with(b"HTTP/1.1 408"),
            "{buf:?}"
        );
    }
    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(&s.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = idle.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(buf.is_empty());
}

#[test]
fn serve_a_gc_beside_a_live_download_never_breaks_it() {
    // Layers of a few MB, more than the socket buffers hold, so the download is mid-way.
    let store = FixtureStore::shared();
    let fx = store.cuda(
        &CudaSpec::new("12.4.1", Flavor::Runtime)
            .media(MediaTypes::Docker)
            .scale(Scale(0.02)),
    );
    let f = filled(fx);
    let s = Served::start(&f.sandbox, &[]);
    let layer = f.fx.largest_layer(Arch::Amd64);
    assert!(
        layer.size > 8 << 20,
        "the layer is too small: {}",
        layer.size
    );
    let blob = format!("/v2/nvidia/cuda/blobs/{}", layer.digest);

    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(format!("GET {blob} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut first = vec![0u8; 64 * 1024];
    c.read_exact(&mut first).unwrap();

    // The image goes, and gc deletes its blobs, while the client has read only 64 KiB.
    let config = f.sandbox.write_hub_config(&dead_endpoint(), &[]);
    run_ok(&mut f.sandbox.cli(&config, &["rm", &f.fx.reference()]));
    let gc = run_ok(&mut f.sandbox.cli(&config, &["--json", "gc"]));
    let report: Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert!(report["blobs_removed"].as_u64().unwrap() > 0, "{report}");
    let hex = layer.digest.strip_prefix("sha256:").unwrap();
    assert!(!f
        .sandbox
        .store_dir()
        .join("blobs/sha256")
        .join(hex)
        .exists());

    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    let mut all = first;
    all.extend_from_slice(&rest);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let body = &all[split + 4..];
    assert_eq!(body.len() as u64, layer.size);
    assert_eq!(
        sha256_digest(body),
        layer.digest,
        "the download was damaged by gc"
    );

    // The name is gone from the live server, without a restart.
    let (st, _, body) = s.get(&blob, "");
    assert_eq!((st, error_code(&body)), (404, "NAME_UNKNOWN".into()));
    let (_, _, body) = s.get("/v2/_catalog", "");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["library/ubuntu"]));
}

#[test]
fn serve_verify_reads_aborts_a_corrupt_blob_before_its_end() {
    let f = filled(runtime());
    let layer = f.fx.largest_layer(Arch::Amd64);
    let path = f
        .sandbox
        .store_dir()
        .join("blobs/sha256")
        .join(layer.digest.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();

    let s = Served::start(&f.sandbox, &["--verify-reads"]);
    let (st, head, body) = s.get(&format!("/v2/nvidia/cuda/blobs/{}", layer.digest), "");
    assert_eq!(st, 200);
    let announced: usize = header(&head, "Content-Length").unwrap().parse().unwrap();
    assert_eq!(announced as u64, layer.size);
    assert!(
        body.len() < announced,
        "a corrupt blob was sent whole ({} bytes)",
        body.len()
    );
    // A range that ends early is held back too.
    let (_, _, body) = s.get(
        &format!("/v2/nvidia/cuda/blobs/{}", layer.digest),
        "Range: bytes=0-199\r\n",
    );
    assert!(body.len() < 200, "a range of a corrupt blob was sent whole");
    assert!(s.log().contains("corrupt"), "{}", s.log());
}

#[test]
fn serve_docker_pulls_nvidia_cuda_through_registry_mirrors_and_runs_it() {
    if !docker_or_skip() {
        return;
    }
    let official = TestRegistry::start();
    let base = Fixture::cuda("12.4.1", Flavor::Base, MediaTypes::Docker, Scale::TINY);
    let amd64 = base.platform(Arch::Amd64);
    let tag = "12.4.1-served-ubuntu22.04";
    let image = Runnable::build(amd64, "hello from the served store", &busybox());
    image.push(&Pusher::new(&official), amd64, "nvidia/cuda", tag);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let reference = format!("nvidia/cuda:{tag}");
    run_ok(&mut sandbox.cli(&config, &["pull", &reference]));
    drop(official);

    let s = Served::start(&sandbox, &[]);
    let d = TestDocker::start_with_config(&serde_json::json!({
        "registry-mirrors": [s.url()],
    }));
    let out = d.docker(&["pull", &reference]).output().unwrap();
    assert!(
        out.status.success(),
        "docker pull failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log(),
        s.log()
    );
    assert_eq!(d.inspect(&reference)["Id"], image.config.digest);
    assert_eq!(
        crate::loaded::run_output(&d, &reference),
        "hello from the served store"
    );
    // Docker asked the mirror for Hub's name (a HEAD by tag, then the digest).
    assert!(
        s.log()
            .contains(&format!("HEAD /v2/nvidia/cuda/manifests/{tag} 200")),
        "{}",
        s.log()
    );
}

#[test]
fn serve_ctr_pulls_through_a_hosts_toml_mirror() {
    if unavailable_reason().is_some()
        || Command::new("containerd")
            .arg("--version")
            .output()
            .is_err()
    {
        common::skip("containerd needs root and the Debian package containerd");
        return;
    }
    let f = filled(runtime());
    let s = Served::start(&f.sandbox, &[]);
    let c = Containerd::start();
    let hosts = c.path().join("certs.d/docker.io");
    std::fs::create_dir_all(&hosts).unwrap();
    // The official server is unreachable here: only the mirror can answer.
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            s.url()
        ),
    )
    .unwrap();
    let reference = format!("docker.io/{}", f.fx.reference());
    let out = c
        .ctr(&["image", "pull", "--platform", "linux/amd64", "--hosts-dir"])
        .arg(c.path().join("certs.d"))
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr pull failed: {}{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.log(),
        s.log()
    );
    let ls = run_ok(&mut c.ctr(&["image", "ls"]));
    let ls = String::from_utf8_lossy(&ls.stdout);
    let index = &f.fx.index.as_ref().unwrap().digest;
    assert!(
        ls.contains(&reference) && ls.contains(index.as_str()),
        "{ls}"
    );
    // containerd named the registry with ?ns=.
    assert!(s.log().contains("?ns=docker.io"), "{}", s.log());
}
