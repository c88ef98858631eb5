use super::*;

use cudaimg_transfer::archive::ArchiveImage;
use cudaimg_transfer::UpstreamIndex;

fn d(n: u8) -> Digest {
    Digest::of(&[n])
}

fn desc(media_type: &str, n: u8, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: d(n),
        size,
    }
}

fn served_manifest(image: &Image) -> serde_json::Value {
    serde_json::from_slice(&image.top.bytes).unwrap_or_default()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn chosen(manifest: ImageManifest, index: Option<UpstreamIndex>) -> ChosenImage {
    let descriptor = |d: &Descriptor| serde_json::json!({"mediaType": d.media_type, "digest": d.digest.as_str(), "size": d.size});
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest.media_type,
        "config": descriptor(&manifest.config),
        "layers": manifest.layers.iter().map(descriptor).collect::<Vec<_>>(),
    }))
    .unwrap_or_default();
    ChosenImage {
        image: ArchiveImage {
            name: "docker.io/nvidia/cuda:t".into(),
            media_type: manifest.media_type.clone(),
            digest: Digest::of(&bytes),
            manifest_bytes: bytes,
            manifest,
        },
        name: cudaimg_oci::reference::ImageRef::parse("docker.io/nvidia/cuda:t")
            .unwrap_or_else(|e| panic!("{e}")),
        index,
        platform: "linux/amd64".parse().unwrap_or_else(|e| panic!("{e:?}")),
    }
}

#[test]
fn only_the_engine_knows_the_repository_the_relay_serves() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&tmp.path().join("s")).unwrap_or_else(|e| panic!("{e}"));
    let manifest = ImageManifest {
        media_type: DOCKER_MANIFEST.into(),
        config: desc(DOCKER_CONFIG, 0, 10),
        layers: vec![],
    };
    rt.block_on(async {
        let relay = |m: &ImageManifest| {
            start(
                store.clone(),
                Arc::default(),
                chosen(m.clone(), None),
                "t".into(),
                Serve::Upstream,
                Arc::default(),
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let (a, b) = (relay(&manifest), relay(&manifest));
        for r in [&a, &b] {
            let secret = r
                .repository
                .strip_prefix(REPOSITORY_PREFIX)
                .unwrap_or_default();
            assert_eq!(secret.len(), 32, "{}", r.repository);
            assert!(
                secret.bytes().all(|c| c.is_ascii_hexdigit()),
                "{}",
                r.repository
            );
        }
        assert_ne!(a.repository, b.repository);
        let client = reqwest::Client::new();
        let get = |path: String| {
            let client = client.clone();
            let url = format!("http://{}{path}", a.addr);
            async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
        };
        assert_eq!(get("/v2/".into()).await.ok(), Some(200));
        for guess in ["cudaimg-load", b.repository.as_str(), "nvidia/cuda"] {
            let status = get(format!("/v2/{guess}/manifests/t")).await.ok();
            assert_eq!(status, Some(404), "{guess}");
        }
    });
}

/// containerd's resolver tries HTTPS first on a loopback registry, and falls back to HTTP
/// only when the server answers in HTTP: a `ClientHello` must get an HTTP answer, not an EOF.
#[test]
fn a_tls_client_hello_is_answered_in_plain_http() {
    use tokio::io::AsyncReadExt;
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&tmp.path().join("s")).unwrap_or_else(|e| panic!("{e}"));
    let manifest = ImageManifest {
        media_type: DOCKER_MANIFEST.into(),
        config: desc(DOCKER_CONFIG, 0, 10),
        layers: vec![],
    };
    rt.block_on(async {
        let relay = start(
            store,
            Arc::default(),
            chosen(manifest, None),
            "t".into(),
            Serve::Upstream,
            Arc::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // The first bytes of a TLS 1.2/1.3 ClientHello record.
        let hello = [
            0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03,
        ];
        let mut tcp = TcpStream::connect(relay.addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tcp.write_all(&hello)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
        // A bad head that is not TLS gets hyper's own 400, never a silent close.
        let mut tcp = TcpStream::connect(relay.addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tcp.write_all(b"NOT A REQUEST\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");
    });
}

/// containerd's content store refuses a blob whose size differs from its descriptor's:
/// the upstream variant serves upstream's documents and blobs byte-exact, sizes and all.
#[test]
fn the_upstream_variant_serves_the_index_manifest_and_blobs_byte_exact() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&tmp.path().join("s")).unwrap_or_else(|e| panic!("{e}"));
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = vec![7u8; 300_000];
    let blob = |media_type: &str, bytes: &[u8]| Descriptor {
        media_type: media_type.into(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
    };
    let manifest = ImageManifest {
        media_type: OCI_MANIFEST.into(),
        config: blob("application/vnd.oci.image.config.v1+json", config),
        layers: vec![blob("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
    };
    let c = chosen(manifest, None);
    let index_bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": c.image.digest.as_str(),
            "size": c.image.manifest_bytes.len(), "platform": {"os": "linux", "architecture": "amd64"}}]
    }))
    .unwrap_or_default();
    let index = UpstreamIndex {
        media_type: Some(OCI_INDEX.into()),
        digest: Digest::of(&index_bytes),
        bytes: index_bytes.clone(),
    };
    let c = ChosenImage {
        index: Some(index.clone()),
        ..c
    };
    rt.block_on(async {
        store
            .put_bytes(&Digest::of(config), config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .put_bytes(&Digest::of(&layer), &layer)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let relay = start(
            store.clone(),
            Arc::default(),
            c.clone(),
            "t".into(),
            Serve::Upstream,
            Arc::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let client = reqwest::Client::new();
        let base = format!("http://{}/v2/{}", relay.addr, relay.repository);
        let get = |path: String| {
            let client = client.clone();
            let url = format!("{base}/{path}");
            async move {
                let r = client
                    .get(url)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let header = |h: &str| {
                    r.headers()
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let (ct, dcd, len) = (
                    header("content-type"),
                    header("docker-content-digest"),
                    header("content-length"),
                );
                let body = r.bytes().await.unwrap_or_else(|e| panic!("{e}"));
                (ct, dcd, len, body.to_vec())
            }
        };
        let (ct, dcd, len, body) = get("manifests/t".into()).await;
        assert_eq!(
            (ct.as_str(), dcd.as_str()),
            (OCI_INDEX, index.digest.as_str())
        );
        assert_eq!(body, index_bytes);
        assert_eq!(len, index_bytes.len().to_string());
        assert_eq!(relay.top_digest.get(), Some(&index.digest));
        let (_, dcd, _, body) = get(format!("manifests/{}", c.image.digest)).await;
        assert_eq!(body, c.image.manifest_bytes);
        assert_eq!(dcd, c.image.digest.as_str());
        let (_, _, len, body) = get(format!("blobs/{}", Digest::of(&layer))).await;
        assert_eq!(len, layer.len().to_string(), "the size is upstream's");
        assert_eq!(body, layer);
        let (_, _, _, body) = get(format!("blobs/{}", Digest::of(config))).await;
        assert_eq!(body, config);
    });
}

#[test]
fn gzip_layers_are_served_as_their_diffs_and_the_rest_as_stored() {
    let manifest = ImageManifest {
        media_type: DOCKER_MANIFEST.into(),
        config: desc(DOCKER_CONFIG, 0, 10),
        layers: vec![
            desc("application/vnd.docker.image.rootfs.diff.tar.gzip", 1, 100),
            desc(DOCKER_LAYER_PLAIN, 2, 200),
            desc("application/vnd.oci.image.layer.v1.tar+zstd", 3, 300),
        ],
    };
    let diff_ids: Vec<String> = [11, 2, 13].iter().map(|n| d(*n).to_string()).collect();
    let image = diffs(&manifest, &diff_ids);
    assert_eq!(image.top.media_type, DOCKER_MANIFEST);
    assert_eq!(image.top.digest, Digest::of(&image.top.bytes));
    let m = served_manifest(&image);
    assert_eq!(
        m["config"]["digest"],
        d(0).to_string(),
        "the image ID stays upstream's"
    );
    let layers = m["layers"].as_array().cloned().unwrap_or_default();
    let types: Vec<&str> = layers
        .iter()
        .filter_map(|l| l["mediaType"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            DOCKER_LAYER_PLAIN,
            DOCKER_LAYER_PLAIN,
            "application/vnd.oci.image.layer.v1.tar+zstd"
        ]
    );
    let digests: Vec<&str> = layers.iter().filter_map(|l| l["digest"].as_str()).collect();
    assert_eq!(
        digests,
        [d(11).to_string(), d(2).to_string(), d(3).to_string()]
    );
    assert!(matches!(
        image.blobs.get(&d(11)),
        Some(Served::Decompressed { blob, diff_id }) if blob.digest == d(1) && *diff_id == d(11)
    ));
    assert!(matches!(image.blobs.get(&d(2)), Some(Served::AsStored(b)) if b.size == 200));
    assert!(matches!(image.blobs.get(&d(3)), Some(Served::AsStored(_))));
    assert!(matches!(image.blobs.get(&d(0)), Some(Served::AsStored(_))));
    assert!(
        !image.blobs.contains_key(&d(1)),
        "the gzip blob itself is not offered"
    );
}

#[test]
fn oci_images_get_oci_types_and_a_config_without_a_diff_per_layer_serves_them_as_stored() {
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    let manifest = ImageManifest {
        media_type: OCI_MANIFEST.into(),
        config: desc("application/vnd.oci.image.config.v1+json", 0, 10),
        layers: vec![desc(gz, 1, 100), desc(gz, 2, 200)],
    };
    let two: Vec<String> = [11, 12].iter().map(|n| d(*n).to_string()).collect();
    let image = diffs(&manifest, &two);
    assert_eq!(image.top.media_type, OCI_MANIFEST);
    let m = served_manifest(&image);
    assert_eq!(m["layers"][0]["mediaType"], OCI_LAYER_PLAIN);
    assert_eq!(m["layers"][1]["digest"], d(12).to_string());

    let image = diffs(&manifest, &two[..1]);
    let m = served_manifest(&image);
    assert_eq!(m["layers"][0]["mediaType"], gz);
    assert_eq!(m["layers"][0]["digest"], d(1).to_string());
    assert!(matches!(image.blobs.get(&d(2)), Some(Served::AsStored(_))));
}

/// containerd's fetcher resumes a cut blob with `Range: bytes=N-` and appends what it gets:
/// the relay answers `206` with the rest. A range that ends early gets the whole blob,
/// whose last bytes wait for the whole check.
#[test]
fn a_stored_blob_resumes_from_a_range_to_its_end() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&tmp.path().join("s")).unwrap_or_else(|e| panic!("{e}"));
    let layer = vec![9u8; 300_000];
    let blob = Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: Digest::of(&layer),
        size: layer.len() as u64,
    };
    let manifest = ImageManifest {
        media_type: OCI_MANIFEST.into(),
        config: desc("application/vnd.oci.image.config.v1+json", 0, 10),
        layers: vec![blob],
    };
    rt.block_on(async {
        store
            .put_bytes(&Digest::of(&layer), &layer)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let relay = start(
            store.clone(),
            Arc::default(),
            chosen(manifest, None),
            "t".into(),
            Serve::Upstream,
            Arc::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let client = reqwest::Client::new();
        let base = format!("http://{}/v2/{}", relay.addr, relay.repository);
        let ranged = |range: &'static str| {
            let url = format!("{base}/blobs/{}", Digest::of(&layer));
            let client = client.clone();
            async move {
                let r = client
                    .get(url)
                    .header("range", range)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let status = r.status().as_u16();
                let content_range = r
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = r.bytes().await.unwrap_or_else(|e| panic!("{e}"));
                (status, content_range, body.to_vec())
            }
        };
        let (status, content_range, body) = ranged("bytes=100000-").await;
        assert_eq!(
            (status, content_range.as_str()),
            (206, "bytes 100000-299999/300000")
        );
        assert_eq!(body, layer[100_000..]);
        let (status, _, body) = ranged("bytes=0-10").await;
        assert_eq!((status, body.len()), (200, layer.len()));
    });
}
