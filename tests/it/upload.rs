//! The upload protocol (`cudaimg_registry`'s push API) against real registries: htpasswd
//! Basic and Bearer token auth, with the fault proxy in between for cuts, 5xx, 429, lost
//! sessions and Locations on another host. What was uploaded is read back with plain HTTP
//! (the harness's client) or skopeo, never with the code under test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{Fault, FaultProxy};
use common::push::http_client;
use common::{run_ok, BlobRef, Pusher, Sandbox, TestRegistry, TokenServer};
use cudaimg_oci::digest::Digest;
use cudaimg_registry::{
    BytesSource, Credential, FileSource, HttpClients, Pushed, RegistryClient, RegistryError,
    UploadError, UploadOptions,
};
use cudaimg_test_support as common;

const MIB: u64 = 1024 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn client(url: &str) -> RegistryClient {
    let clients = HttpClients::new(Duration::from_secs(30)).unwrap();
    RegistryClient::new(&reqwest::Url::parse(url).unwrap(), false, &clients)
}

fn basic(user: &str, pass: &str) -> Credential {
    Credential::Basic {
        username: user.into(),
        password: pass.into(),
    }
}

/// Deterministic incompressible bytes (xorshift), so a misplaced range cannot hash right.
fn blob_bytes(size: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

struct Blob {
    bytes: Vec<u8>,
    digest: Digest,
    _dir: tempfile::TempDir,
    source: FileSource,
}

fn blob(size: u64, seed: u64) -> Blob {
    let bytes = blob_bytes(size, seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    std::fs::write(&path, &bytes).unwrap();
    Blob {
        digest: Digest::of(&bytes),
        bytes,
        _dir: dir,
        source: FileSource(path),
    }
}

fn options(chunk_size: u64) -> UploadOptions {
    UploadOptions {
        chunk_size,
        backoff: Duration::from_millis(50),
        ..Default::default()
    }
}

/// `GET /v2/<repo>/blobs/<digest>` with the harness's own client.
fn read_back(base: &str, repo: &str, digest: &Digest, auth: Option<(&str, &str)>) -> Vec<u8> {
    let mut request = http_client().get(format!("{base}/v2/{repo}/blobs/{digest}"));
    if let Some((user, pass)) = auth {
        request = request.basic_auth(user, Some(pass));
    }
    let response = request.send().unwrap();
    assert_eq!(response.status(), 200, "GET blob {digest} from {repo}");
    response.bytes().unwrap().to_vec()
}

fn read_back_bearer(base: &str, repo: &str, digest: &Digest, tokens: &TokenServer) -> Vec<u8> {
    let token = tokens.issue("reader", &[&format!("repository:{repo}:pull")]);
    let response = http_client()
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "GET blob {digest} from {repo}");
    response.bytes().unwrap().to_vec()
}

fn uploaded(pushed: &Pushed) -> (u64, u32, u32) {
    match pushed {
        Pushed::Uploaded {
            bytes_sent,
            resumes,
            restarts,
        } => (*bytes_sent, *resumes, *restarts),
        other => panic!("expected an upload, got {other:?}"),
    }
}

fn count(proxy: &FaultProxy, method: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == method)
        .count()
}

#[test]
fn basic_auth_monolithic_and_chunked_uploads_read_back_byte_exact() {
    let registry = TestRegistry::start_with_basic_auth("pusher", "s3cret");
    let proxy = FaultProxy::start(&registry.url());
    let dest = client(&proxy.url()).with_credential(basic("pusher", "s3cret"));
    let small = blob(200_000, 1);
    let big = blob(5 * MIB + 123, 2);
    let repo = "team/cuda";
    let opts = options(MIB);

    let (small_pushed, big_pushed, exists_before, exists_after, again) =
        runtime().block_on(async {
            let before = dest.blob_exists(repo, &big.digest).await.unwrap();
            let s = dest
                .push_blob(repo, &small.digest, 200_000, &small.source, &[], &opts)
                .await
                .unwrap();
            let b = dest
                .push_blob(repo, &big.digest, 5 * MIB + 123, &big.source, &[], &opts)
                .await
                .unwrap();
            let after = dest.blob_exists(repo, &big.digest).await.unwrap();
            let again = dest
                .push_blob(repo, &big.digest, 5 * MIB + 123, &big.source, &[], &opts)
                .await
                .unwrap();
            (s, b, before, after, again)
        });
    assert_eq!(exists_before, None);
    assert_eq!(exists_after, Some(5 * MIB + 123));
    assert_eq!(again, Pushed::Skipped, "HEAD first: nothing sent twice");
    assert_eq!(uploaded(&small_pushed), (200_000, 0, 0));
    assert_eq!(uploaded(&big_pushed), (5 * MIB + 123, 0, 0));

    let requests = proxy.requests();
    // The small blob in one PUT; the big one in six PATCHes of at most 1 MiB and a closing PUT.
    assert_eq!(count(&proxy, "PATCH"), 6, "{requests:#?}");
    assert_eq!(count(&proxy, "PUT"), 2, "{requests:#?}");
    assert!(requests.iter().all(|r| r.request_bytes <= MIB));
    let puts: Vec<u64> = requests
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.request_bytes)
        .collect();
    assert_eq!(
        puts,
        [200_000, 0],
        "monolithic PUT, then the empty closing one"
    );
    assert_eq!(proxy.request_bytes_received(), 200_000 + 5 * MIB + 123);

    let auth = registry.basic_auth();
    assert_eq!(
        read_back(&registry.url(), repo, &small.digest, auth),
        small.bytes
    );
    assert_eq!(
        read_back(&registry.url(), repo, &big.digest, auth),
        big.bytes
    );
}

#[test]
fn bearer_mount_from_another_repository_sends_no_blob_bytes() {
    let tokens = TokenServer::start("alice", "pw");
    let registry = TestRegistry::start_with_token_auth(&tokens);
    let layer = blob_bytes(3 * MIB, 3);
    let digest = Digest::of(&layer);
    Pusher::new(&registry)
        .with_basic_auth("alice", "pw")
        .push_blob(
            "base/cuda",
            BlobRef::Bytes {
                digest: digest.as_str(),
                bytes: &layer,
            },
        );
    let proxy = FaultProxy::start(&registry.url());
    let dest = client(&proxy.url()).with_credential(basic("alice", "pw"));
    let source = BytesSource(Arc::from(layer.clone()));
    let token_requests_before = tokens.requests().len();

    let pushed = runtime()
        .block_on(dest.push_blob(
            "team/app",
            &digest,
            3 * MIB,
            &source,
            &["elsewhere/none", "base/cuda"],
            &options(MIB),
        ))
        .unwrap();
    let requests = proxy.requests();
    assert_eq!(
        pushed,
        Pushed::Mounted {
            from: "base/cuda".into()
        },
        "{requests:#?}"
    );
    // The first candidate does not hold it: distribution opens a session instead (202), which
    // is cancelled before the next candidate is tried.
    let mounts: Vec<Option<u16>> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("mount="))
        .map(|r| r.status)
        .filter(|s| *s != Some(401))
        .collect();
    assert_eq!(mounts, [Some(202), Some(201)], "{requests:#?}");
    // (A DELETE needs the `delete` action under token auth: its challenge adds that scope.)
    let deletes = requests
        .iter()
        .filter(|r| r.method == "DELETE" && r.status == Some(204))
        .count();
    assert_eq!(deletes, 1, "{requests:#?}");
    assert_eq!(
        proxy.request_bytes_received(),
        0,
        "no blob bytes: {requests:#?}"
    );
    assert!(
        requests.iter().all(|r| r
            .authorization
            .as_deref()
            .is_none_or(|a| a.starts_with("Bearer "))),
        "the password goes to the token realm only: {requests:#?}"
    );
    let scopes: Vec<Vec<String>> = tokens.requests()[token_requests_before..]
        .iter()
        .map(|r| r.scopes.clone())
        .collect();
    assert!(
        scopes.iter().any(|s| {
            s.contains(&"repository:team/app:pull,push".to_string())
                && s.contains(&"repository:base/cuda:pull".to_string())
        }),
        "a mount's token covers push on the target and pull on the source: {scopes:?}"
    );
    assert_eq!(
        read_back_bearer(&registry.url(), "team/app", &digest, &tokens),
        layer
    );
}

#[test]
fn bearer_401_on_a_patch_renews_the_token_before_sending_again() {
    let tokens = TokenServer::start("alice", "pw");
    let registry = TestRegistry::start_with_token_auth(&tokens);
    let proxy = FaultProxy::start(&registry.url());
    let challenge = format!(
        r#"Bearer realm="{}",service="{}",scope="repository:team/app:pull,push""#,
        tokens.realm(),
        common::token::SERVICE
    );
    proxy.add(Fault::StatusOn {
        method: "PATCH".into(),
        path_contains: "/blobs/uploads/".into(),
        skip: 1,
        status: 401,
        retry_after: None,
        www_authenticate: Some(challenge),
        times: 1,
    });
    let dest = client(&proxy.url()).with_credential(basic("alice", "pw"));
    let b = blob(4 * MIB, 4);
    let pushed = runtime()
        .block_on(dest.push_blob(
            "team/app",
            &b.digest,
            4 * MIB,
            &b.source,
            &[],
            &options(MIB),
        ))
        .unwrap();
    let (_, resumes, restarts) = uploaded(&pushed);
    assert_eq!((resumes, restarts), (1, 0));
    let requests = proxy.requests();
    let refused = requests
        .iter()
        .position(|r| r.status == Some(401) && r.method == "PATCH")
        .expect("the injected 401");
    let next_body = requests[refused + 1..]
        .iter()
        .find(|r| r.request_bytes > 0)
        .expect("the upload went on");
    assert!(
        next_body.authorization.is_some()
            && next_body.authorization != requests[refused].authorization,
        "the next bytes went with a fresh token: {requests:#?}"
    );
    assert_eq!(
        read_back_bearer(&registry.url(), "team/app", &b.digest, &tokens),
        b.bytes
    );
}

#[test]
fn a_cut_before_the_registry_resumes_from_the_sessions_range() {
    let registry = TestRegistry::start();
    let proxy = FaultProxy::start(&registry.url());
    proxy.add(Fault::CutRequestAfter {
        method: "PATCH".into(),
        path_contains: "/blobs/uploads/".into(),
        skip: 2,
        bytes: 300_000,
        forward: false,
        times: 1,
    });
    let dest = client(&proxy.url());
    let size = 6 * MIB;
    let b = blob(size, 5);
    let pushed = runtime()
        .block_on(dest.push_blob("team/app", &b.digest, size, &b.source, &[], &options(MIB)))
        .unwrap();
    let (_, resumes, restarts) = uploaded(&pushed);
    assert_eq!((resumes, restarts), (1, 0), "{:#?}", proxy.requests());
    let requests = proxy.requests();
    assert!(
        requests.iter().any(|r| r.method == "GET"
            && r.path.contains("/blobs/uploads/")
            && r.status == Some(204)),
        "the session's status was asked: {requests:#?}"
    );
    let received = proxy.request_bytes_received();
    assert!(
        received as f64 <= 1.15 * size as f64,
        "{received} bytes sent for a {size}-byte blob"
    );
    assert_eq!(count(&proxy, "POST"), 1, "the same session went on");
    assert_eq!(
        read_back(&registry.url(), "team/app", &b.digest, None),
        b.bytes
    );
}

#[test]
fn a_cut_that_reached_the_registry_restarts_the_blob_and_stores_the_right_bytes() {
    // distribution 2.8 keeps the part of a cut PATCH it read; its session state (in the
    // Location) then no longer matches, and it answers BLOB_UPLOAD_INVALID: the session is
    // lost, and the blob starts over.
    let registry = TestRegistry::start();
    let proxy = FaultProxy::start(&registry.url());
    proxy.add(Fault::CutRequestAfter {
        method: "PATCH".into(),
        path_contains: "/blobs/uploads/".into(),
        skip: 2,
        bytes: 300_000,
        forward: true,
        times: 1,
    });
    let dest = client(&proxy.url());
    let size = 4 * MIB;
    let b = blob(size, 6);
    let pushed = runtime()
        .block_on(dest.push_blob("team/app", &b.digest, size, &b.source, &[], &options(MIB)))
        .unwrap();
    let (_, resumes, restarts) = uploaded(&pushed);
    assert_eq!((resumes, restarts), (1, 1), "{:#?}", proxy.requests());
    assert_eq!(count(&proxy, "POST"), 2, "a new session");
    assert_eq!(
        read_back(&registry.url(), "team/app", &b.digest, None),
        b.bytes
    );
}

#[test]
fn a_500_on_a_patch_resumes_and_a_429_on_the_post_backs_off() {
    let registry = TestRegistry::start();
    let proxy = FaultProxy::start(&registry.url());
    proxy.add(Fault::StatusOn {
        method: "POST".into(),
        path_contains: "/blobs/uploads/".into(),
        skip: 0,
        status: 429,
        retry_after: Some(1),
        www_authenticate: None,
        times: 1,
    });
    proxy.add(Fault::StatusOn {
        method: "PATCH".into(),
        path_contains: "/blobs/uploads/".into(),
        skip: 2,
        status: 500,
        retry_after: None,
        www_authenticate: None,
        times: 1,
    });
    let dest = client(&proxy.url());
    // A refused PATCH costs its whole chunk: 1 MiB of 8 is within the 1.15x bound.
    let size = 8 * MIB;
    let b = blob(size, 7);
    let started = Instant::now();
    let pushed = runtime()
        .block_on(dest.push_blob("team/app", &b.digest, size, &b.source, &[], &options(MIB)))
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    let (_, resumes, restarts) = uploaded(&pushed);
    assert_eq!((resumes, restarts), (1, 0), "{:#?}", proxy.requests());
    let posts: Vec<Option<u16>> = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    assert_eq!(posts, [Some(429), Some(202)]);
    let received = proxy.request_bytes_received();
    assert!(
        received as f64 <= 1.15 * size as f64,
        "{received} bytes sent"
    );
    assert_eq!(
        read_back(&registry.url(), "team/app", &b.digest, None),
        b.bytes
    );
}

#[test]
fn a_lost_session_restarts_that_blob_alone() {
    let registry = TestRegistry::start();
    let proxy = FaultProxy::start(&registry.url());
    proxy.add(Fault::StatusOn {
        method: "PATCH".into(),
        path_contains: "/blobs/uploads/".into(),
        skip: 3,
        status: 404,
        retry_after: None,
        www_authenticate: None,
        times: 1,
    });
    let dest = client(&proxy.url());
    let big = blob(6 * MIB, 8);
    // One PUT, no PATCH: the 404 can only hit the big blob.
    let small = blob(500_000, 9);
    let opts = options(MIB);
    let (big_pushed, small_pushed) = runtime().block_on(async {
        tokio::join!(
            dest.push_blob("team/app", &big.digest, 6 * MIB, &big.source, &[], &opts),
            dest.push_blob(
                "team/app",
                &small.digest,
                500_000,
                &small.source,
                &[],
                &opts
            ),
        )
    });
    let (_, _, restarts) = uploaded(&big_pushed.unwrap());
    assert_eq!(restarts, 1, "{:#?}", proxy.requests());
    assert_eq!(uploaded(&small_pushed.unwrap()), (500_000, 0, 0));
    assert_eq!(
        count(&proxy, "POST"),
        3,
        "two sessions for the big blob, one for the small"
    );
    assert_eq!(
        read_back(&registry.url(), "team/app", &big.digest, None),
        big.bytes
    );
    assert_eq!(
        read_back(&registry.url(), "team/app", &small.digest, None),
        small.bytes
    );
}

#[test]
fn bytes_that_are_not_the_blob_cancel_the_session() {
    let registry = TestRegistry::start();
    let proxy = FaultProxy::start(&registry.url());
    let dest = client(&proxy.url());
    let claimed = Digest::of(&blob_bytes(3 * MIB, 10));
    let wrong = BytesSource(Arc::from(blob_bytes(3 * MIB, 11)));
    let (result, exists) = runtime().block_on(async {
        let r = dest
            .push_blob("team/app", &claimed, 3 * MIB, &wrong, &[], &options(MIB))
            .await;
        (r, dest.blob_exists("team/app", &claimed).await.unwrap())
    });
    match result {
        Err(e @ UploadError::SourceMismatch { .. }) => {
            assert_eq!(e.next(), cudaimg_registry::Next::NextSource);
        }
        other => panic!("expected a source mismatch, got {other:?}"),
    }
    assert_eq!(exists, None);
    let requests = proxy.requests();
    assert!(
        requests.iter().any(|r| r.method == "DELETE"
            && r.path.contains("/blobs/uploads/")
            && r.status == Some(204)),
        "the session was cancelled: {requests:#?}"
    );
    assert_eq!(count(&proxy, "PUT"), 0, "nothing committed: {requests:#?}");
}

#[test]
fn manifest_put_round_trips_byte_exact_with_its_media_type() {
    let registry = TestRegistry::start();
    let dest = client(&registry.url());
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = Digest::of(config);
    let layer = blob(300_000, 12);
    // Unusual spacing and key order: a re-serialized manifest would hash differently.
    let manifest = format!(
        "{{ \"schemaVersion\": 2,\n  \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\",\n  \"config\": {{\"mediaType\": \"application/vnd.oci.image.config.v1+json\", \"size\": {}, \"digest\": \"{config_digest}\"}},\n  \"layers\": [ {{\"size\": 300000, \"mediaType\": \"application/vnd.oci.image.layer.v1.tar+gzip\", \"digest\": \"{}\"}} ] }}\n",
        config.len(),
        layer.digest
    );
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    let (by_tag, by_digest) = runtime().block_on(async {
        let source = BytesSource(Arc::from(config.to_vec()));
        let opts = UploadOptions::default();
        dest.push_blob(
            "team/app",
            &config_digest,
            config.len() as u64,
            &source,
            &[],
            &opts,
        )
        .await
        .unwrap();
        dest.push_blob(
            "team/app",
            &layer.digest,
            300_000,
            &layer.source,
            &[],
            &opts,
        )
        .await
        .unwrap();
        let tag = dest
            .put_manifest("team/app", "v1", manifest.as_bytes(), media_type)
            .await
            .unwrap();
        let digest = Digest::of(manifest.as_bytes());
        let by_digest = dest
            .put_manifest("team/app", digest.as_str(), manifest.as_bytes(), media_type)
            .await
            .unwrap();
        (tag, by_digest)
    });
    assert_eq!(by_tag, Digest::of(manifest.as_bytes()));
    assert_eq!(by_digest, by_tag);

    let sandbox = Sandbox::new();
    let raw = run_ok(sandbox.skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/team/app:v1", registry.host()),
    ]));
    assert_eq!(
        raw.stdout,
        manifest.as_bytes(),
        "skopeo reads the same bytes"
    );
    let response = http_client()
        .get(format!("{}/v2/team/app/manifests/v1", registry.url()))
        .header("Accept", media_type)
        .send()
        .unwrap();
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        media_type
    );
    assert_eq!(
        response.headers()["docker-content-digest"]
            .to_str()
            .unwrap(),
        by_tag.as_str()
    );
}

#[test]
fn credentials_never_go_to_an_upload_location_on_another_host() {
    let registry = TestRegistry::start_with_basic_auth("pusher", "s3cret");
    let elsewhere = FaultProxy::start(&registry.url());
    let proxy = FaultProxy::start(&registry.url());
    proxy.add(Fault::RewriteLocation {
        to: elsewhere.url(),
    });
    let dest = client(&proxy.url()).with_credential(basic("pusher", "s3cret"));
    let b = blob(2 * MIB, 13);
    let result = runtime().block_on(dest.push_blob(
        "team/app",
        &b.digest,
        2 * MIB,
        &b.source,
        &[],
        &options(MIB),
    ));
    match result {
        Err(UploadError::Registry(e @ RegistryError::BadResponse { .. })) => {
            assert!(e.to_string().contains("another host"), "{e}");
        }
        other => panic!("expected the Location to be refused, got {other:?}"),
    }
    assert_eq!(
        elsewhere.requests(),
        [],
        "nothing at all went to the other host"
    );
    assert_eq!(proxy.request_bytes_received(), 0, "{:#?}", proxy.requests());
}
