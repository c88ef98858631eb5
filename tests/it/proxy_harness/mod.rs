//! Tests of the fault-injecting proxy (tests/common/proxy.rs) against a real registry, with a
//! plain blocking HTTP client: that it is transparent without faults (ranges, uploads, auth
//! challenges) and that each fault does exactly what it says, at the byte it says. cudaimg's own
//! resilience tests rely on this; if these fail, those would prove nothing.

use cudaimg_test_support as common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::fixtures::{sha256_digest, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
use common::proxy::{ALWAYS, CDN_SIGNATURE};
use common::*;
use reqwest::blocking::{Client, Response};
use reqwest::redirect::Policy;

const REPO: &str = "test/faults";
/// 1 MiB: big enough for many 64 KiB pieces, small enough to keep the file fast.
const BLOB_SIZE: usize = 1 << 20;

/// A registry holding one blob of [`BLOB_SIZE`] pseudo-random bytes, and a proxy in front of it.
struct Setup {
    registry: TestRegistry,
    proxy: FaultProxy,
    blob: Vec<u8>,
    digest: String,
}

impl Setup {
    fn new() -> Self {
        let registry = TestRegistry::start();
        let blob = pseudo_random(BLOB_SIZE, 7);
        let digest = sha256_digest(&blob);
        Pusher::new(&registry).push_blob(
            REPO,
            BlobRef::Bytes {
                digest: &digest,
                bytes: &blob,
            },
        );
        let proxy = FaultProxy::start(&registry.url());
        Setup {
            registry,
            proxy,
            blob,
            digest,
        }
    }
    /// The blob's URL through the proxy.
    fn blob_url(&self) -> String {
        format!("{}/v2/{REPO}/blobs/{}", self.proxy.url(), self.digest)
    }
}

/// Deterministic incompressible-looking bytes (xorshift).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// No proxy from the environment, no redirects followed (tests look at the 307s themselves).
fn client() -> Client {
    client_with(Policy::none(), Duration::from_secs(20))
}

fn client_with(redirect: Policy, timeout: Duration) -> Client {
    Client::builder()
        .no_proxy()
        .redirect(redirect)
        .timeout(timeout)
        .build()
        .unwrap()
}

/// Reads a body to its end or first error; returns what arrived and the error, if any.
fn read_body(mut response: Response) -> (Vec<u8>, Option<io::Error>) {
    let mut body = Vec::new();
    let mut piece = [0u8; 16 * 1024];
    // Ends: the body is finite and every error returns.
    loop {
        match response.read(&mut piece) {
            Ok(0) => return (body, None),
            Ok(n) => body.extend_from_slice(&piece[..n]),
            Err(e) => return (body, Some(e)),
        }
    }
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// Waits (bounded) until the registry's access log has `count` GETs whose path contains `part`;
/// its lines are written a moment after the response.
fn wait_registry_gets(registry: &TestRegistry, part: &str, count: usize) -> Vec<Request> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let gets: Vec<Request> = registry
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.contains(part))
            .collect();
        if gets.len() >= count || Instant::now() > deadline {
            return gets;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn without_faults_the_proxy_is_transparent() {
    let s = Setup::new();
    let c = client();

    let response = c.get(s.blob_url()).send().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "docker-content-digest"),
        Some(s.digest.clone())
    );
    assert_eq!(header(&response, "connection").as_deref(), Some("close"));
    assert_eq!(response.bytes().unwrap(), s.blob);

    let response = c
        .get(s.blob_url())
        .header("Range", "bytes=100-199")
        .send()
        .unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        header(&response, "content-range"),
        Some(format!("bytes 100-199/{BLOB_SIZE}"))
    );
    assert_eq!(response.bytes().unwrap(), &s.blob[100..200]);

    let response = c.head(s.blob_url()).send().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-length"),
        Some(BLOB_SIZE.to_string())
    );

    let requests = s.proxy.requests();
    let summary: Vec<_> = requests
        .iter()
        .map(|r| {
            (
                r.method.as_str(),
                r.status,
                r.range.as_deref(),
                r.body_bytes,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("GET", Some(200), None, BLOB_SIZE as u64),
            ("GET", Some(206), Some("bytes=100-199"), 100),
            ("HEAD", Some(200), None, 0),
        ]
    );
    assert!(requests.iter().all(|r| !r.fault_fired()));
    assert_eq!(s.proxy.body_bytes_sent(), BLOB_SIZE as u64 + 100);
    assert_eq!(
        s.proxy.body_bytes_sent_for(&s.digest),
        BLOB_SIZE as u64 + 100
    );
    assert_eq!(s.proxy.body_bytes_sent_for("/manifests/"), 0);

    // Uploads go through too: POST, then PUT to the Location the registry made from our Host.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_digest = sha256_digest(&config);
    let pusher = Pusher::to_url(&s.proxy.url());
    pusher.push_blob(
        REPO,
        BlobRef::Bytes {
            digest: &config_digest,
            bytes: &config,
        },
    );
    let manifest = manifest(&config_digest, config.len(), &s.digest, BLOB_SIZE);
    pusher.push_manifest(REPO, "latest", &manifest);
    let puts: Vec<_> = s
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.status)
        .collect();
    assert_eq!(
        puts,
        [Some(201), Some(201)],
        "blob and manifest PUT via the proxy"
    );

    let response = c
        .get(format!("{}/v2/{REPO}/manifests/latest", s.proxy.url()))
        .header("Accept", OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some(OCI_MANIFEST)
    );
    assert_eq!(response.bytes().unwrap(), manifest.bytes);
}

/// A one-layer OCI manifest.
fn manifest(config: &str, config_size: usize, layer: &str, layer_size: usize) -> Document {
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": config_size},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": layer_size}],
    }))
    .unwrap();
    Document {
        media_type: OCI_MANIFEST.to_string(),
        digest: sha256_digest(&bytes),
        bytes,
    }
}

#[test]
fn authorization_and_challenges_pass_through() {
    let registry = TestRegistry::start_with_basic_auth("alice", "s3cret");
    let proxy = FaultProxy::start(&registry.url());
    let c = client();
    let url = format!("{}/v2/", proxy.url());

    let response = c.get(&url).send().unwrap();
    assert_eq!(response.status(), 401);
    assert!(header(&response, "www-authenticate")
        .unwrap()
        .starts_with("Basic realm="));
    let response = c
        .get(&url)
        .basic_auth("alice", Some("s3cret"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);

    let seen: Vec<_> = proxy
        .requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    assert_eq!(seen, [None, Some("Basic YWxpY2U6czNjcmV0".to_string())]);
}

#[test]
fn cut_after_sends_exactly_the_bytes_then_fin_or_rst() {
    let s = Setup::new();
    let c = client();
    for reset in [false, true] {
        s.proxy.add(Fault::CutAfter {
            path_contains: s.digest.clone(),
            bytes: 100_000,
            reset,
            times: 1,
        });
        let response = c.get(s.blob_url()).send().unwrap();
        assert_eq!(response.status(), 200, "the head goes out whole");
        let (body, error) = read_body(response);
        let error = error.unwrap_or_else(|| panic!("reset={reset}: a cut body must fail"));
        assert_eq!(body.len(), 100_000, "reset={reset}: {error}");
        assert_eq!(body, &s.blob[..100_000]);
        if reset {
            assert!(
                format!("{error:?}").contains("ConnectionReset"),
                "an RST reads as a reset: {error:?}"
            );
        } else {
            assert!(
                format!("{error:?}").contains("UnexpectedEof"),
                "a FIN reads as an early end: {error:?}"
            );
        }
        let last = s.proxy.requests().pop().unwrap();
        assert_eq!(last.body_bytes, 100_000);
        assert_eq!(last.faults, ["CutAfter"]);

        // What a resuming client does next: ask for the rest; the fault is spent.
        let response = c
            .get(s.blob_url())
            .header("Range", "bytes=100000-")
            .send()
            .unwrap();
        assert_eq!(response.status(), 206);
        let rest = response.bytes().unwrap();
        assert_eq!([&body[..], &rest[..]].concat(), s.blob);
    }
}

#[test]
fn status_answers_503_and_429_without_asking_upstream() {
    let s = Setup::new();
    let c = client();
    s.proxy.add(Fault::Status {
        path_contains: s.digest.clone(),
        status: 503,
        retry_after: None,
        times: 1,
    });
    s.proxy.add(Fault::Status {
        path_contains: "/blobs/".into(),
        status: 429,
        retry_after: Some(7),
        times: 1,
    });

    let response = c.get(s.blob_url()).send().unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(header(&response, "retry-after"), None);
    let body: serde_json::Value = response.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");

    let response = c.get(s.blob_url()).send().unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after").as_deref(), Some("7"));
    let body: serde_json::Value = response.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");

    assert_eq!(c.get(s.blob_url()).send().unwrap().status(), 200);
    let gets = wait_registry_gets(&s.registry, &s.digest, 1);
    assert_eq!(
        gets.len(),
        1,
        "only the third GET reached the registry: {gets:?}"
    );
}

#[test]
fn times_counts_down_and_only_responses_a_fault_can_affect_count() {
    let s = Setup::new();
    let c = client();
    s.proxy.add(Fault::Status {
        path_contains: s.digest.clone(),
        status: 500,
        retry_after: None,
        times: 2,
    });
    let statuses: Vec<u16> = (0..3)
        .map(|_| c.get(s.blob_url()).send().unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses, [500, 500, 200], "2 failures, then success");

    // A HEAD has no body to cut: it does not use up the cut meant for the GET.
    s.proxy.add(Fault::CutAfter {
        path_contains: s.digest.clone(),
        bytes: 10,
        reset: false,
        times: 1,
    });
    assert_eq!(c.head(s.blob_url()).send().unwrap().status(), 200);
    let (body, error) = read_body(c.get(s.blob_url()).send().unwrap());
    assert!(error.is_some());
    assert_eq!(body.len(), 10);
    let (body, error) = read_body(c.get(s.blob_url()).send().unwrap());
    assert!(error.is_none());
    assert_eq!(body, s.blob);

    // ALWAYS never gets spent; clear() removes it.
    s.proxy.add(Fault::Status {
        path_contains: s.digest.clone(),
        status: 502,
        retry_after: None,
        times: ALWAYS,
    });
    for _ in 0..3 {
        assert_eq!(c.get(s.blob_url()).send().unwrap().status(), 502);
    }
    s.proxy.clear();
    assert_eq!(c.get(s.blob_url()).send().unwrap().status(), 200);
}

#[test]
fn stall_goes_silent_until_the_client_times_out() {
    let s = Setup::new();
    s.proxy.add(Fault::Stall {
        path_contains: s.digest.clone(),
        after_bytes: 1000,
        for_secs: 2,
        times: 1,
    });
    // reqwest's blocking timeout covers the body reads as well.
    let c = client_with(Policy::none(), Duration::from_secs(1));
    let started = Instant::now();
    let response = c.get(s.blob_url()).send().unwrap();
    let (body, error) = read_body(response);
    let elapsed = started.elapsed();
    let error = error.expect("the stalled read times out");
    assert_eq!(body, &s.blob[..1000]);
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1900),
        "timed out after {elapsed:?} ({error})"
    );
    // reqwest wraps it: `Custom { kind: Other, error: reqwest::Error { .., source: TimedOut } }`.
    assert!(format!("{error:?}").contains("TimedOut"), "{error:?}");
    let request = &s.proxy.requests()[0];
    assert_eq!(
        (request.body_bytes, request.faults.clone()),
        (1000, vec!["Stall"])
    );
}

#[test]
fn flip_byte_corrupts_one_blob_byte_also_inside_ranges() {
    let s = Setup::new();
    let c = client();
    let offset = 300_000;
    s.proxy.add(Fault::FlipByte {
        path_contains: s.digest.clone(),
        offset,
        times: 2,
    });
    let get = |range: Option<&str>| {
        let mut request = c.get(s.blob_url());
        if let Some(range) = range {
            request = request.header("Range", range);
        }
        let response = request.send().unwrap();
        assert!(response.status().is_success());
        response.bytes().unwrap().to_vec()
    };
    let o = offset as usize;

    // A range that does not hold the offset passes unchanged and does not count.
    assert_eq!(get(Some("bytes=0-99")), &s.blob[..100]);

    let body = get(None);
    assert_eq!(body.len(), s.blob.len());
    assert_ne!(sha256_digest(&body), s.digest);
    let differing: Vec<usize> = (0..body.len()).filter(|&i| body[i] != s.blob[i]).collect();
    assert_eq!(differing, [o]);
    assert_eq!(body[o], s.blob[o] ^ 0xFF);

    // In a 206 starting at 299_000, the blob's byte 300_000 is the body's byte 1000.
    let body = get(Some("bytes=299000-300999"));
    let mut expected = s.blob[299_000..301_000].to_vec();
    expected[1000] ^= 0xFF;
    assert_eq!(body, expected);

    assert_eq!(get(None), s.blob, "spent after 2");
    let faults: Vec<_> = s.proxy.requests().into_iter().map(|r| r.faults).collect();
    assert_eq!(faults, [vec![], vec!["FlipByte"], vec!["FlipByte"], vec![]]);
}

#[test]
fn ignore_range_makes_upstream_answer_the_whole_blob() {
    let s = Setup::new();
    let c = client();
    s.proxy.add(Fault::IgnoreRange {
        path_contains: "/blobs/".into(),
        times: 1,
    });
    // A request without Range does not use it up.
    assert_eq!(c.get(s.blob_url()).send().unwrap().status(), 200);

    let response = c
        .get(s.blob_url())
        .header("Range", "bytes=500-")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-range"), None);
    assert_eq!(response.bytes().unwrap(), s.blob);

    let response = c
        .get(s.blob_url())
        .header("Range", "bytes=500-")
        .send()
        .unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(response.bytes().unwrap(), &s.blob[500..]);

    let requests = s.proxy.requests();
    assert_eq!(
        requests[1].range.as_deref(),
        Some("bytes=500-"),
        "as the client sent it"
    );
    assert_eq!(requests[1].faults, ["IgnoreRange"]);
    assert!(requests[2].faults.is_empty());
}

#[test]
fn throttle_paces_bodies_until_cleared() {
    let s = Setup::new();
    let c = client();
    let rate = 2_000_000;
    s.proxy.add(Fault::Throttle {
        bytes_per_sec: rate,
    });
    let started = Instant::now();
    assert_eq!(c.get(s.blob_url()).send().unwrap().bytes().unwrap(), s.blob);
    let throttled = started.elapsed();
    let expected = Duration::from_secs_f64(BLOB_SIZE as f64 / rate as f64); // ~0.52 s
    assert!(
        throttled >= expected.mul_f64(0.8) && throttled <= expected * 4,
        "1 MiB at 2 MB/s took {throttled:?}"
    );

    s.proxy.clear();
    let started = Instant::now();
    assert_eq!(c.get(s.blob_url()).send().unwrap().bytes().unwrap(), s.blob);
    let free = started.elapsed();
    assert!(
        free < throttled / 2,
        "unthrottled {free:?} vs {throttled:?}"
    );
}

#[test]
fn redirect_sends_blob_gets_to_a_cdn_that_sees_no_credentials() {
    let s = Setup::new();
    let cdn = FaultProxy::start_cdn(&s.registry.url());
    s.proxy.add(Fault::RedirectBlobs { to: cdn.url() });
    let c = client();

    let response = c
        .get(s.blob_url())
        .basic_auth("alice", Some("s3cret"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 307);
    let location = header(&response, "location").unwrap();
    assert_eq!(
        location,
        format!("{}/v2/{REPO}/blobs/{}?{CDN_SIGNATURE}", cdn.url(), s.digest)
    );
    // Only blob GETs are redirected.
    assert_eq!(c.head(s.blob_url()).send().unwrap().status(), 200);

    let response = c.get(&location).send().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().unwrap(), s.blob);
    // A CDN URL without its signature is refused.
    let unsigned = format!("{}/v2/{REPO}/blobs/{}", cdn.url(), s.digest);
    assert_eq!(c.get(&unsigned).send().unwrap().status(), 403);

    // A client that follows redirects itself: reqwest drops Authorization across hosts.
    let following = client_with(Policy::limited(3), Duration::from_secs(20));
    let response = following
        .get(s.blob_url())
        .basic_auth("alice", Some("s3cret"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().unwrap(), s.blob);

    let proxy_seen: Vec<_> = s
        .proxy
        .requests()
        .into_iter()
        .map(|r| (r.method, r.status, r.authorization.is_some()))
        .collect();
    assert_eq!(
        proxy_seen,
        [
            ("GET".into(), Some(307), true),
            ("HEAD".into(), Some(200), false),
            ("GET".into(), Some(307), true),
        ]
    );
    let cdn_seen: Vec<_> = cdn
        .requests()
        .into_iter()
        .map(|r| (r.path, r.status, r.authorization))
        .collect();
    let signed = format!("/v2/{REPO}/blobs/{}?{CDN_SIGNATURE}", s.digest);
    let unsigned = format!("/v2/{REPO}/blobs/{}", s.digest);
    assert_eq!(
        cdn_seen,
        [
            (signed.clone(), Some(200), None),
            (unsigned, Some(403), None),
            (signed, Some(200), None),
        ]
    );
    // The signature is the CDN's business: the registry gets the bare path.
    let gets = wait_registry_gets(&s.registry, &s.digest, 2);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets.iter().all(|r| !r.path.contains('?')), "{gets:?}");
}

#[test]
fn require_basic_answers_401_until_the_right_credentials_come() {
    let s = Setup::new();
    let c = client();
    s.proxy.add(Fault::RequireBasic {
        user: "bob".into(),
        pass: "hunter2".into(),
    });
    let response = c.get(s.blob_url()).send().unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        header(&response, "www-authenticate").as_deref(),
        Some("Basic realm=\"proxy\"")
    );
    let wrong = c
        .get(s.blob_url())
        .basic_auth("bob", Some("nope"))
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = c
        .get(s.blob_url())
        .basic_auth("bob", Some("hunter2"))
        .send()
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(right.bytes().unwrap(), s.blob);

    let seen: Vec<_> = s
        .proxy
        .requests()
        .into_iter()
        .map(|r| (r.status, r.authorization))
        .collect();
    assert_eq!(
        seen,
        [
            (Some(401), None),
            (Some(401), Some("Basic Ym9iOm5vcGU=".to_string())),
            (Some(200), Some("Basic Ym9iOmh1bnRlcjI=".to_string())),
        ]
    );
}

/// An upstream on 127.0.0.1 that answers each of `count` connections with `response` verbatim
/// and closes: for framings the registry does not produce. Gives up after 10 s without one.
fn canned_upstream(response: &'static [u8], count: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut served = 0;
        while served < count && Instant::now() < deadline {
            let Ok((stream, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            served += 1;
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            // Skip the request head (bounded by the proxy's request and the read timeout).
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 2) {
                line.clear();
            }
            let _ = (&stream).write_all(response);
        }
    });
    url
}

mod more;
