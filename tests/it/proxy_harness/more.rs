//! More tests of the fault proxy against a real registry: refusing and reopening its port,
//! a stale manifest, streamed and cut chunked bodies, chunked uploads passing through.

use super::*;

#[test]
fn refuse_closes_the_port_cuts_transfers_and_resume_reopens_it() {
    let s = Setup::new();
    let c = client();
    assert_eq!(c.get(s.blob_url()).send().unwrap().status(), 200);

    // A transfer in progress (held open by a stall) is cut when the mirror goes down.
    s.proxy.add(Fault::Stall {
        path_contains: s.digest.clone(),
        after_bytes: 1000,
        for_secs: 10,
        times: 1,
    });
    let url = s.blob_url();
    let transfer = thread::spawn(move || {
        let response = client().get(url).send().unwrap();
        let started = Instant::now();
        let (body, error) = read_body(response);
        (body.len(), error.is_some(), started.elapsed())
    });
    // Bounded wait until the stall has begun (its first 1000 bytes sent).
    let stalled = || {
        s.proxy
            .requests()
            .iter()
            .any(|r| r.faults == ["Stall"] && r.body_bytes == 1000)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stalled() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(stalled(), "{:?}", s.proxy.requests());
    s.proxy.add(Fault::Refuse);
    let (received, failed, took) = transfer.join().unwrap();
    assert_eq!((received, failed), (1000, true));
    assert!(
        took < Duration::from_secs(5),
        "cut at once, not after the stall: {took:?}"
    );

    let refused = TcpStream::connect(s.proxy.host()).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    let error = c.get(s.blob_url()).send().unwrap_err();
    assert!(error.is_connect(), "{error:?}");

    s.proxy.resume();
    assert_eq!(c.get(s.blob_url()).send().unwrap().bytes().unwrap(), s.blob);
}

#[test]
fn serve_manifest_answers_like_a_stale_mirror() {
    let s = Setup::new();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_digest = sha256_digest(&config);
    let pusher = Pusher::new(&s.registry);
    pusher.push_blob(
        REPO,
        BlobRef::Bytes {
            digest: &config_digest,
            bytes: &config,
        },
    );
    let current = manifest(&config_digest, config.len(), &s.digest, BLOB_SIZE);
    pusher.push_manifest(REPO, "latest", &current);
    // What the tag pointed at before: another layer size, so other bytes and another digest.
    let stale = manifest(&config_digest, config.len(), &s.digest, 1234);
    s.proxy.add(Fault::ServeManifest {
        path_contains: "/manifests/latest".into(),
        body: stale.bytes.clone(),
        media_type: OCI_MANIFEST.into(),
    });
    let c = client();
    let url = |reference: &str| format!("{}/v2/{REPO}/manifests/{reference}", s.proxy.url());

    let response = c.get(url("latest")).send().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some(OCI_MANIFEST)
    );
    assert_eq!(
        header(&response, "docker-content-digest"),
        Some(stale.digest.clone())
    );
    assert_eq!(response.bytes().unwrap(), stale.bytes);

    let response = c.head(url("latest")).send().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-length"),
        Some(stale.bytes.len().to_string())
    );
    assert_eq!(
        header(&response, "docker-content-digest"),
        Some(stale.digest.clone())
    );

    // By digest, the path does not match: upstream answers.
    let response = c
        .get(url(&current.digest))
        .header("Accept", OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(response.bytes().unwrap(), current.bytes);
    let faults: Vec<_> = s.proxy.requests().into_iter().map(|r| r.faults).collect();
    assert_eq!(
        faults,
        [vec!["ServeManifest"], vec!["ServeManifest"], vec![]]
    );
}

#[test]
fn dropping_the_proxy_closes_its_port() {
    let registry = TestRegistry::start();
    let proxy = FaultProxy::start(&registry.url());
    let host = proxy.host();
    assert_eq!(
        client()
            .get(format!("{}/v2/", proxy.url()))
            .send()
            .unwrap()
            .status(),
        200
    );
    drop(proxy);
    match TcpStream::connect(&host) {
        Err(refused) => assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused),
        // Tests run side by side, and one may have been given the freed port at once: then
        // what answers there must not be this proxy, so a request sent through it must never
        // reach this registry.
        Ok(mut other) => {
            other
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let _ = other.write_all(
                b"GET /v2/dropped-proxy-probe/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            );
            let _ = other.read_to_end(&mut Vec::new());
            assert!(
                !registry
                    .requests()
                    .iter()
                    .any(|r| r.path.contains("dropped-proxy-probe")),
                "the dropped proxy still forwarded a request"
            );
        }
    }
}

#[test]
fn chunked_and_close_delimited_bodies_are_streamed_and_cut() {
    let c = client();
    let chunked =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let proxy = FaultProxy::start(&canned_upstream(chunked, 2));
    let response = c.get(format!("{}/x", proxy.url())).send().unwrap();
    assert_eq!(
        header(&response, "transfer-encoding").as_deref(),
        Some("chunked")
    );
    assert_eq!(response.text().unwrap(), "hello world");
    // Re-chunked towards the client, so a cut shows as an incomplete body.
    proxy.add(Fault::CutAfter {
        path_contains: "/x".into(),
        bytes: 7,
        reset: false,
        times: 1,
    });
    let (body, error) = read_body(c.get(format!("{}/x", proxy.url())).send().unwrap());
    assert_eq!(body, b"hello w");
    assert!(error.is_some(), "a cut chunked body fails");

    // Without length or chunks, the end of the connection is the end of the body: a cut there
    // cannot be told from a short body. (The registry always sends a length for blobs.)
    let close_delimited = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello world";
    let proxy = FaultProxy::start(&canned_upstream(close_delimited, 2));
    let response = c.get(format!("{}/y", proxy.url())).send().unwrap();
    assert_eq!(response.text().unwrap(), "hello world");
    proxy.add(Fault::CutAfter {
        path_contains: "/y".into(),
        bytes: 7,
        reset: false,
        times: 1,
    });
    let (body, error) = read_body(c.get(format!("{}/y", proxy.url())).send().unwrap());
    assert_eq!((body.as_slice(), error.is_none()), (&b"hello w"[..], true));
}

#[test]
fn chunked_uploads_pass_through() {
    let s = Setup::new();
    let c = client();
    let blob = pseudo_random(300_000, 11);
    let digest = sha256_digest(&blob);
    let response = c
        .post(format!("{}/v2/{REPO}/blobs/uploads/", s.proxy.url()))
        .send()
        .unwrap();
    assert_eq!(response.status(), 202);
    // distribution makes it absolute from the Host header, which the proxy forwards.
    let location = header(&response, "location").unwrap();
    assert!(
        location.starts_with(&s.proxy.url()),
        "the registry's Location leads back through the proxy: {location}"
    );
    // A body of unknown length goes out chunked.
    let response = c
        .put(format!("{location}&digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::blocking::Body::new(io::Cursor::new(blob.clone())))
        .send()
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = c
        .get(format!("{}/v2/{REPO}/blobs/{digest}", s.proxy.url()))
        .send()
        .unwrap();
    assert_eq!(response.bytes().unwrap(), blob);
}
