//! Whole multi-platform images in the store (`pull --all-platforms`): the index and every
//! child (attestations included) byte-exact, and `images`, `inspect`, `verify`, `gc`, `rm`
//! and `export` on such a name, checked with skopeo against real registries.

use cudaimg_test_support as common;

use std::path::{Path, PathBuf};

use common::attest::{attest, Attested};
use common::{
    run_fails, run_ok, Arch, CudaSpec, Fixture, FixtureStore, Flavor, MediaTypes, Pusher, Sandbox,
    TestRegistry,
};
use serde_json::Value;

const RUNTIME: &str = "nvidia/cuda:12.4.1-runtime-ubuntu22.04";
const CANONICAL: &str = "docker.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04";

/// An OCI fixture with attestations, pushed to a fresh official registry as RUNTIME.
fn attested_registry() -> (TestRegistry, Fixture, Attested) {
    let official = TestRegistry::start();
    let fx = Fixture::cuda(
        "12.4.1",
        Flavor::Runtime,
        MediaTypes::Oci,
        common::Scale::TINY,
    );
    let att = attest(&fx);
    att.push(&Pusher::new(&official), &fx, &fx.repo, &fx.tag);
    (official, fx, att)
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn cli_json(sandbox: &Sandbox, config: &Path, args: &[&str]) -> Value {
    let mut cmd = sandbox.cli(config, &["--json"]);
    cmd.args(args);
    json(&run_ok(&mut cmd))
}

fn blob_path(sandbox: &Sandbox, digest: &str) -> PathBuf {
    sandbox
        .store_dir()
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn entries_named(sandbox: &Sandbox, name: &str) -> Vec<Value> {
    let idx: Value =
        serde_json::from_slice(&std::fs::read(sandbox.store_dir().join("index.json")).unwrap())
            .unwrap();
    idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["annotations"]["org.opencontainers.image.ref.name"] == name)
        .cloned()
        .collect()
}

/// The digest a registry names `repo:tag` by (what a client pulling it gets).
fn registry_digest(registry: &TestRegistry, repo: &str, tag: &str) -> String {
    let response = common::push::http_client()
        .head(format!("{}/v2/{repo}/manifests/{tag}", registry.url()))
        .header(
            "Accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.headers()["Docker-Content-Digest"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn all_platforms_keeps_the_index_and_every_child_for_skopeo_images_verify_gc_export_and_rm() {
    let (official, fx, att) = attested_registry();
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);

    let r = cli_json(&sandbox, &config, &["pull", "--all-platforms", RUNTIME]);
    assert_eq!(r["canonical"], CANONICAL);
    assert_eq!(r["index_digest"], att.index.digest);
    let platforms = r["platforms"].as_array().unwrap();
    let shown: Vec<(&str, &str, bool)> = platforms
        .iter()
        .map(|p| {
            (
                p["platform"].as_str().unwrap(),
                p["digest"].as_str().unwrap(),
                p["named"].as_bool().unwrap(),
            )
        })
        .collect();
    let (amd, arm) = (fx.platform(Arch::Amd64), fx.platform(Arch::Arm64));
    assert_eq!(
        shown,
        [
            ("linux/amd64", amd.manifest.digest.as_str(), true),
            ("linux/arm64/v8", arm.manifest.digest.as_str(), true),
            (
                "unknown/unknown",
                att.attestations[0].manifest.digest.as_str(),
                false
            ),
            (
                "unknown/unknown",
                att.attestations[1].manifest.digest.as_str(),
                false
            ),
        ]
    );
    // The license layer both arches share came once.
    let all_bytes: u64 = fx
        .blobs()
        .iter()
        .map(common::fixtures::BlobRef::size)
        .sum::<u64>()
        + att
            .attestations
            .iter()
            .map(|a| a.config.size() + a.layer.size())
            .sum::<u64>();
    assert_eq!(r["bytes_downloaded"], all_bytes);
    assert_eq!(r["total_bytes"], all_bytes);

    // Byte-exact: the index, every child manifest, the attestations' blobs.
    assert_eq!(
        std::fs::read(blob_path(&sandbox, &att.index.digest)).unwrap(),
        att.index.bytes
    );
    for doc in [&amd.manifest, &arm.manifest].into_iter().chain(
        att.attestations
            .iter()
            .flat_map(|a| [&a.manifest, &a.config, &a.layer]),
    ) {
        assert_eq!(
            std::fs::read(blob_path(&sandbox, &doc.digest)).unwrap(),
            doc.bytes
        );
    }
    // An independent reader of the layout sees the whole index under the name.
    let layout = format!("oci:{}:{CANONICAL}", sandbox.store_dir().display());
    let raw = run_ok(sandbox.skopeo().args(["inspect", "--raw", &layout]));
    assert_eq!(raw.stdout, att.index.bytes);

    // images --json: the index row, then one row per platform with the shared index digest.
    let rows = cli_json(&sandbox, &config, &["images"]);
    let rows: Vec<&Value> = rows.as_array().unwrap().iter().collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0]["index"], true);
    assert_eq!(rows[0]["digest"], att.index.digest);
    assert_eq!(rows[0]["manifests"], 4);
    assert_eq!(rows[0]["broken"], false);
    assert_eq!(rows[0]["size"], all_bytes);
    for (row, (platform, digest)) in rows[1..].iter().zip([
        ("linux/amd64", &amd.manifest.digest),
        ("linux/arm64/v8", &arm.manifest.digest),
    ]) {
        assert_eq!(row["platform"], platform);
        assert_eq!(row["digest"], *digest);
        assert_eq!(row["index_digest"], att.index.digest);
        assert_eq!(row["index"], false);
    }
    let table = run_ok(&mut sandbox.cli(&config, &["images"]));
    let table = String::from_utf8_lossy(&table.stdout);
    // The table: one row for the whole image, its platforms listed (issue 22 item 10).
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(
        table.contains("linux/amd64,linux/arm64/v8") && table.contains("4 manifests"),
        "{table}"
    );

    // inspect --platform: each platform; an attestation is not an image of its own.
    let inspected = cli_json(
        &sandbox,
        &config,
        &["inspect", "--platform", "linux/arm64", RUNTIME],
    );
    assert_eq!(inspected["digest"], arm.manifest.digest);
    assert_eq!(inspected["index_digest"], att.index.digest);
    let inspected = cli_json(
        &sandbox,
        &config,
        &["inspect", "--platform", "linux/amd64", RUNTIME],
    );
    assert_eq!(inspected["digest"], amd.manifest.digest);
    run_fails(&mut sandbox.cli(
        &config,
        &["inspect", "--platform", "unknown/unknown", RUNTIME],
    ));

    // verify reaches the children no entry names: an attestation's layer that goes missing
    // is a problem.
    let verified = cli_json(&sandbox, &config, &["verify"]);
    assert_eq!(
        verified["problems"].as_array().unwrap().len(),
        0,
        "{verified}"
    );
    let attestation_layer = blob_path(&sandbox, &att.attestations[1].layer.digest);
    std::fs::remove_file(&attestation_layer).unwrap();
    let out = run_fails(&mut sandbox.cli(&config, &["verify"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&att.attestations[1].layer.digest),
        "{stderr}"
    );
    std::fs::write(&attestation_layer, &att.attestations[1].layer.bytes).unwrap();
    run_ok(&mut sandbox.cli(&config, &["verify"]));

    // gc keeps every child and blob of the index (and removes a stray blob).
    let stray = sandbox
        .store_dir()
        .join("blobs/sha256")
        .join(hex_of(b"stray"));
    std::fs::write(&stray, b"stray").unwrap();
    let gced = cli_json(&sandbox, &config, &["gc"]);
    assert_eq!(gced["blobs_removed"], 1, "{gced}");
    assert!(!stray.exists());
    for a in &att.attestations {
        for d in [&a.manifest, &a.config, &a.layer] {
            assert!(
                blob_path(&sandbox, &d.digest).exists(),
                "gc removed {}",
                d.digest
            );
        }
    }
    assert!(blob_path(&sandbox, &att.index.digest).exists());

    // skopeo copies the whole image out of the store: the same index digest at the registry.
    let dest = TestRegistry::start();
    run_ok(sandbox.skopeo().args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &layout,
        &format!("docker://{}/copies/cuda:all", dest.host()),
    ]));
    assert_eq!(
        registry_digest(&dest, "copies/cuda", "all"),
        att.index.digest
    );

    // export: an oci-archive holds the whole image, and skopeo reads the same index back.
    let archive = sandbox.root().join("all.oci.tar");
    let exported = cli_json(
        &sandbox,
        &config,
        &[
            "export",
            "--format",
            "oci-archive",
            "-o",
            archive.to_str().unwrap(),
            RUNTIME,
        ],
    );
    assert_eq!(exported["digest"], att.index.digest);
    run_ok(sandbox.skopeo().args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci-archive:{}", archive.display()),
        &format!("docker://{}/exported/cuda:all", dest.host()),
    ]));
    assert_eq!(
        registry_digest(&dest, "exported/cuda", "all"),
        att.index.digest
    );
    // A docker-archive holds one platform, and says so.
    let tarball = sandbox.root().join("one.tar");
    let out = run_ok(&mut sandbox.cli(
        &config,
        &[
            "export",
            "--platform",
            "linux/arm64",
            "-o",
            tarball.to_str().unwrap(),
            RUNTIME,
        ],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("one platform") && stderr.contains("linux/arm64"),
        "{stderr}"
    );
    let one = run_ok(sandbox.skopeo().args([
        "inspect",
        "--raw",
        &format!("docker-archive:{}", tarball.display()),
    ]));
    let one: Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(one["layers"].as_array().unwrap().len(), arm.layers.len());

    // rm --platform: that platform goes, and the name is no longer the whole index.
    let rm = cli_json(
        &sandbox,
        &config,
        &["rm", "--platform", "linux/arm64", RUNTIME],
    );
    assert_eq!(rm["removed"], 1);
    let left = entries_named(&sandbox, CANONICAL);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["digest"], amd.manifest.digest);
    let gced = cli_json(&sandbox, &config, &["gc"]);
    assert!(
        !blob_path(&sandbox, &arm.manifest.digest).exists(),
        "{gced}"
    );
    assert!(!blob_path(&sandbox, &att.attestations[0].layer.digest).exists());

    // Pulled whole again (only what gc removed comes back), then rm removes every platform.
    let r = cli_json(&sandbox, &config, &["pull", "--all-platforms", RUNTIME]);
    assert!(r["bytes_downloaded"].as_u64().unwrap() < all_bytes, "{r}");
    assert_eq!(entries_named(&sandbox, CANONICAL).len(), 3);
    let rm = cli_json(&sandbox, &config, &["rm", RUNTIME]);
    assert_eq!(rm["removed"], 2, "two platforms");
    assert!(entries_named(&sandbox, CANONICAL).is_empty());
    cli_json(&sandbox, &config, &["gc"]);
    assert_eq!(
        std::fs::read_dir(sandbox.store_dir().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

fn hex_of(bytes: &[u8]) -> String {
    common::fixtures::sha256_digest(bytes)
        .trim_start_matches("sha256:")
        .to_owned()
}

#[test]
fn a_plain_pull_beside_an_all_platforms_pull_is_unchanged() {
    let (official, fx, att) = attested_registry();
    let amd = fx.platform(Arch::Amd64);

    // A plain pull into a fresh store: what it reports and stores.
    let plain = Sandbox::new();
    let config = plain.write_hub_config(&official.url(), &[]);
    let alone = cli_json(
        &plain,
        &config,
        &["pull", "--platform", "linux/amd64", RUNTIME],
    );
    assert_eq!(alone["digest"], amd.manifest.digest);
    assert_eq!(alone["index_digest"], att.index.digest);
    let alone_entries = entries_named(&plain, CANONICAL);
    assert_eq!(alone_entries.len(), 1);

    // The same pull after an all-platforms pull: the same report, nothing downloaded, and
    // the whole image stays whole (the platform came from the same index).
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    cli_json(&sandbox, &config, &["pull", "--all-platforms", RUNTIME]);
    let after = cli_json(
        &sandbox,
        &config,
        &["pull", "--platform", "linux/amd64", RUNTIME],
    );
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&after), keys(&alone));
    for k in [
        "digest",
        "index_digest",
        "platform",
        "canonical",
        "total_bytes",
    ] {
        assert_eq!(after[k], alone[k], "{k}");
    }
    assert_eq!(after["bytes_downloaded"], 0);
    let entries = entries_named(&sandbox, CANONICAL);
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert_eq!(entries[0]["digest"], att.index.digest);
    let raw = run_ok(sandbox.skopeo().args([
        "inspect",
        "--raw",
        &format!("oci:{}:{CANONICAL}", sandbox.store_dir().display()),
    ]));
    assert_eq!(raw.stdout, att.index.bytes);

    // The tag moves: a plain pull of one platform from the new index ends the whole image
    // (its index entry goes; the other platform stays as it was).
    let moved = FixtureStore::shared().cuda(
        &CudaSpec::new("12.4.1", Flavor::Runtime)
            .media(MediaTypes::Oci)
            .rebuild(1),
    );
    Pusher::new(&official).push(&moved);
    let r = cli_json(
        &sandbox,
        &config,
        &["pull", "--platform", "linux/amd64", RUNTIME],
    );
    assert_eq!(r["digest"], moved.platform(Arch::Amd64).manifest.digest);
    let entries = entries_named(&sandbox, CANONICAL);
    let digests: Vec<&str> = entries
        .iter()
        .map(|e| e["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        digests,
        [
            fx.platform(Arch::Arm64).manifest.digest.as_str(),
            moved.platform(Arch::Amd64).manifest.digest.as_str()
        ]
    );
    let images = cli_json(&sandbox, &config, &["images"]);
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["index"] == false),
        "{images}"
    );

    // The two ways of choosing platforms do not mix.
    let out = run_fails(&mut sandbox.cli(
        &config,
        &[
            "pull",
            "--all-platforms",
            "--platform",
            "linux/amd64",
            RUNTIME,
        ],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--platform") && stderr.contains("cannot be used with"),
        "{stderr}"
    );

    // A single-platform image pulled with --all-platforms is stored as a plain pull would.
    let single = FixtureStore::shared().cuda(
        &CudaSpec::new("12.4.1", Flavor::Base)
            .media(MediaTypes::Oci)
            .arches(&[Arch::Amd64])
            .without_index(),
    );
    Pusher::new(&official).push(&single);
    let base = "nvidia/cuda:12.4.1-base-ubuntu22.04";
    let r = cli_json(&sandbox, &config, &["pull", "--all-platforms", base]);
    assert_eq!(r["index_digest"], Value::Null);
    assert_eq!(
        r["platforms"][0]["digest"],
        single.platforms[0].manifest.digest
    );
    assert_eq!(r["platforms"][0]["platform"], "linux/amd64");
    let entries = entries_named(&sandbox, &format!("docker.io/{base}"));
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["digest"], single.platforms[0].manifest.digest);
}

/// A whole multi-platform image pushed from the store arrives as the same index: children
/// and attestations first, then the index byte-exact, so the registry names it by the
/// upstream index digest; skopeo reads the index and copies every platform back out.
#[test]
fn push_of_a_whole_image_sends_every_child_then_the_index_byte_exact() {
    let (official, _fx, att) = attested_registry();
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    cli_json(&sandbox, &config, &["pull", "--all-platforms", RUNTIME]);

    let dest = TestRegistry::start();
    let target = format!("{}/team/cuda:12.4.1-runtime", dest.host());
    let r = cli_json(&sandbox, &config, &["push", RUNTIME, &target]);
    assert_eq!(r["digest"], att.index.digest, "{r}");
    assert_eq!(
        registry_digest(&dest, "team/cuda", "12.4.1-runtime"),
        att.index.digest
    );
    // The index bytes at the destination are the upstream ones.
    let raw = run_ok(sandbox.skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{target}"),
    ]));
    assert_eq!(
        common::fixtures::sha256_digest(&raw.stdout),
        att.index.digest
    );
    // Every platform, attestations included, is there: skopeo copies the whole image out.
    let out = sandbox.root().join("copied");
    run_ok(sandbox.skopeo().args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{target}"),
        &format!("oci:{}:x", out.display()),
    ]));
}
