//! [`import_archive`] on `docker save` archives built here, in both layouts the Engine
//! writes (legacy before 25, OCI from 25): the same image from either gives the same
//! manifest; hostile archives (diff IDs that do not match, a layer whose bytes are not its
//! name, a config that is not the image's) are refused by name with nothing stored.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::io::Write as _;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::{import_archive, resolve, FromEngineError};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{Descriptor, OCI_MANIFEST};
use cudaimg_store::{NamedImage, Store, StoredImage};

const BASE: &str = "docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04";
const BUILT: &str = "docker.io/team/torch:test";

#[test]
fn links_resolve_relative_to_their_directory() {
    assert_eq!(resolve("b/layer.tar", "../a/layer.tar"), "a/layer.tar");
    assert_eq!(resolve("b/layer.tar", "./x"), "b/x");
}

/// A layer tar holding one file.
fn layer(name: &str, body: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, body).unwrap();
    b.into_inner().unwrap()
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["NVIDIA_REQUIRE_CUDA=cuda>=12.4"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    base: StoredImage,
    base_layer: Vec<u8>,
    new_layer: Vec<u8>,
}

/// A store holding a one-layer base (its layer gzipped as upstream would).
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let base_layer = layer("usr/lib/libcuda-stand-in.so", &vec![7u8; 300_000]);
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&base_layer).unwrap();
    let blob = gz.finish().unwrap();
    let cfg = config(&[Digest::of(&base_layer).to_string()]);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::of(&cfg).to_string(), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": Digest::of(&blob).to_string(), "size": blob.len()}],
    }))
    .unwrap();
    for bytes in [&blob, &cfg, &manifest] {
        store.put_bytes(&Digest::of(bytes), bytes).await.unwrap();
    }
    store
        .name(
            BASE,
            &NamedImage {
                manifest: Descriptor {
                    media_type: OCI_MANIFEST.into(),
                    digest: Digest::of(&manifest),
                    size: manifest.len() as u64,
                },
                platform: None,
                index_digest: None,
            },
        )
        .unwrap();
    let base = store.image(BASE, None).unwrap().unwrap();
    Fixture {
        _dir: dir,
        store,
        base,
        base_layer,
        new_layer: layer(
            "opt/venv/torch/version.py",
            b"__version__ = '2.5.1+cu124'\n",
        ),
    }
}

fn hex(bytes: &[u8]) -> String {
    Digest::of(bytes).hex().to_owned()
}

fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, body: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, path, body).unwrap();
}

/// The legacy layout (Engine < 25): `<id>/layer.tar`, `<config hex>.json`, and
/// `manifest.json` last.
fn legacy(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let id = format!("{i:064x}");
        file(&mut b, &format!("{id}/VERSION"), b"1.0");
        file(&mut b, &format!("{id}/json"), b"{}");
        file(&mut b, &format!("{id}/layer.tar"), l);
        paths.push(format!("{id}/layer.tar"));
    }
    let cfg = format!("{}.json", hex(config));
    file(&mut b, &cfg, config);
    let manifest = serde_json::json!([{"Config": cfg, "RepoTags": [BUILT], "Layers": paths}]);
    file(&mut b, "manifest.json", manifest.to_string().as_bytes());
    b.into_inner().unwrap()
}

/// The OCI layout (Engine >= 25): `blobs/sha256/<hex>` named by `hex_of` (the content's
/// hash, unless a test lies), `index.json`, `oci-layout`, and the legacy `manifest.json`.
fn oci(config: &[u8], layers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut paths = Vec::new();
    for (h, l) in layers {
        file(&mut b, &format!("blobs/sha256/{h}"), l);
        paths.push(format!("blobs/sha256/{h}"));
    }
    file(&mut b, &format!("blobs/sha256/{}", hex(config)), config);
    file(
        &mut b,
        "index.json",
        br#"{"schemaVersion":2,"manifests":[]}"#,
    );
    let manifest = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", hex(config)),
        "RepoTags": [BUILT],
        "Layers": paths,
    }]);
    file(&mut b, "manifest.json", manifest.to_string().as_bytes());
    file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    b.into_inner().unwrap()
}

/// The archive as the engine's body arrives: in pieces.
fn stream(archive: &[u8]) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    let pieces: Vec<std::io::Result<Bytes>> = archive
        .chunks(7000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(pieces)
}

async fn import(
    f: &Fixture,
    archive: Vec<u8>,
    config: &[u8],
) -> Result<super::BuiltImage, FromEngineError> {
    import_archive(
        stream(&archive),
        &f.store,
        BUILT,
        &Digest::of(config),
        &f.base,
        BUILT,
    )
    .await
}

/// The blob files and the names in the store, and what `ingest/` holds.
fn contents(f: &Fixture) -> (usize, usize, usize) {
    let root = f.store.root();
    let count = |d: &str| std::fs::read_dir(root.join(d)).unwrap().count();
    (
        count("blobs/sha256"),
        f.store.list().unwrap().len(),
        count("ingest"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn both_layouts_give_the_same_image_with_the_base_blob_kept() {
    let f = fixture().await;
    let ids = [
        Digest::of(&f.base_layer).to_string(),
        Digest::of(&f.new_layer).to_string(),
    ];
    let cfg = config(&ids);
    let a = import(&f, legacy(&cfg, &[&f.base_layer, &f.new_layer]), &cfg)
        .await
        .unwrap();
    let b = import(
        &f,
        oci(
            &cfg,
            &[
                (&hex(&f.base_layer), &f.base_layer),
                (&hex(&f.new_layer), &f.new_layer),
            ],
        ),
        &cfg,
    )
    .await
    .unwrap();
    assert_eq!(a.digest, b.digest, "one image, whichever layout carried it");
    assert_eq!(a.reused, vec![f.base.manifest.layers[0].digest.clone()]);
    assert_eq!(a.compressed.len(), 1);
    assert_eq!(a.compressed[0].2, ids[1]);
    let stored = f.store.image(BUILT, None).unwrap().unwrap();
    assert_eq!(stored.manifest.layers[0], f.base.manifest.layers[0]);
    assert_eq!(stored.config.rootfs.diff_ids, ids);
    let report = f.store.fsck(false, &|_| {}).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(contents(&f).2, 0, "no scratch file is left in ingest/");
}

/// Each hostile archive is refused with `want` in its message, and nothing is stored.
async fn refused(f: &Fixture, archive: Vec<u8>, config: &[u8], want: &str) {
    let before = contents(f);
    let err = import(f, archive, config).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FromEngineError::Archive { .. }), "{text}");
    assert!(text.contains(want), "`{want}` not in: {text}");
    assert!(err.hint().unwrap().contains("nothing was stored"));
    assert_eq!(contents(f), before, "{text}");
    assert!(f.store.image(BUILT, None).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_archives_are_refused_by_name_with_nothing_stored() {
    let f = fixture().await;
    let (base, new) = (&f.base_layer[..], &f.new_layer[..]);
    let forged = layer("opt/venv/torch/version.py", b"__version__ = 'evil'\n");

    // Diff IDs that do not match the layers (legacy and OCI).
    let lying = config(&[
        Digest::of(base).to_string(),
        Digest::of(&forged).to_string(),
    ]);
    refused(&f, legacy(&lying, &[base, new]), &lying, "its config says").await;
    refused(
        &f,
        oci(&lying, &[(&hex(base), base), (&hex(new), new)]),
        &lying,
        "its config says",
    )
    .await;

    // A layer whose bytes are not the diff ID its path (and the config) name.
    let cfg = config(&[Digest::of(base).to_string(), Digest::of(new).to_string()]);
    refused(
        &f,
        oci(&cfg, &[(&hex(base), base), (&hex(new), &forged)]),
        &cfg,
        "hashes to",
    )
    .await;
    // Even where the path names a base layer (hashed only, never copied).
    let lying_base = layer("usr/lib/libcuda-stand-in.so", b"not the base");
    refused(
        &f,
        oci(&cfg, &[(&hex(base), &lying_base), (&hex(new), new)]),
        &cfg,
        "hashes to",
    )
    .await;

    // Fewer layers than the config lists.
    refused(&f, legacy(&cfg, &[base]), &cfg, "its config lists 2 layers").await;

    // A config that is not the image the engine named.
    let other = config(&[Digest::of(base).to_string()]);
    refused(&f, legacy(&other, &[base]), &cfg, "names the config").await;

    // Not a save archive at all.
    let mut junk = tar::Builder::new(Vec::new());
    file(&mut junk, "hello", b"world");
    refused(&f, junk.into_inner().unwrap(), &cfg, "no manifest.json").await;
}
