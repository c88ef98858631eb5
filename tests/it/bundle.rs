//! Air-gapped sync, the carrying half: bundles written from a store (`Plan::from_sets` and
//! `bundle::write`, in-process, as `cudaimg sync --to DIR` will call them) and `cudaimg
//! import` on a far side that sees only the bundle and its own registry (htpasswd auth) or
//! store. The upstream registry is stopped before every import. Results are read back with
//! skopeo and the registry's own answers, never with the code under test.

use cudaimg_test_support as common;

use common::b64;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{
    run_fails, run_ok, Arch, CudaSpec, Fault, FaultProxy, Fixture, FixtureStore, Flavor,
    MediaTypes, Pusher, Sandbox, Scale, TestRegistry,
};
use cudaimg_store::Store;
use cudaimg_sync::bundle::{self, WriteOptions, WriteReport};
use cudaimg_sync::plan::{AssumedFrom, Exclusions, Plan};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const USER: &str = "far";
const PASS: &str = "pw-7c1";

struct Quiet;
impl cudaimg_oci::progress::Reporter for Quiet {}

fn runtime_multiarch() -> Fixture {
    FixtureStore::shared().cuda(&CudaSpec::new("12.4.1", Flavor::Runtime))
}

/// A single-platform image: the tag names the platform manifest itself (no index).
fn devel_amd64() -> Fixture {
    FixtureStore::shared().cuda(
        &CudaSpec::new("12.4.1", Flavor::Devel)
            .arches(&[Arch::Amd64])
            .without_index(),
    )
}

/// The near side: a store holding `fixtures` (whole images, every platform), pulled from
/// an upstream registry standing in for docker.io; the registry is stopped on `seal`.
struct Near {
    sandbox: Sandbox,
    names: Vec<String>,
    upstream: Option<TestRegistry>,
}

fn near(fixtures: &[&Fixture]) -> Near {
    let upstream = TestRegistry::start();
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&upstream.url(), &[]);
    let mut names = Vec::new();
    for fx in fixtures {
        Pusher::new(&upstream).push(fx);
        let out = run_ok(&mut sandbox.cli(
            &config,
            &["--json", "pull", "--all-platforms", &fx.reference()],
        ));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        names.push(
            v["canonical"]
                .as_str()
                .map_or_else(|| format!("docker.io/{}", fx.reference()), str::to_owned),
        );
    }
    Near {
        sandbox,
        names,
        upstream: Some(upstream),
    }
}

impl Near {
    fn plan(&self, exclude: &Exclusions) -> Plan {
        let store = Store::open(&self.sandbox.store_dir()).unwrap();
        let sets: Vec<_> = self
            .names
            .iter()
            .map(|n| {
                store
                    .image_set(n)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{n} not stored"))
            })
            .collect();
        Plan::from_sets(&sets, exclude)
    }
    fn write(&self, plan: &Plan, dir: &Path, part_size: Option<u64>) -> WriteReport {
        let store = Store::open(&self.sandbox.store_dir()).unwrap();
        bundle::write(
            &store,
            plan,
            dir,
            &WriteOptions {
                part_size,
                tmpdir: None,
            },
            &Quiet,
        )
        .unwrap()
    }
    /// Stops the upstream registry: from here on only the bundle holds the images.
    fn seal(&mut self) {
        self.upstream = None;
    }
}

/// The far side: its own sandbox (store, docker config) and an htpasswd registry.
struct Far {
    sandbox: Sandbox,
    config: PathBuf,
    registry: TestRegistry,
}

fn far() -> Far {
    let registry = TestRegistry::start_with_basic_auth(USER, PASS);
    far_with(registry, None)
}

/// `via`: the host cudaimg talks to (a fault proxy), when not the registry itself.
fn far_with(registry: TestRegistry, via: Option<&str>) -> Far {
    let sandbox = Sandbox::new();
    // No upstream at all: a hub config pointing at a dead endpoint.
    let config = sandbox.write_hub_config(&common::dead_endpoint(), &[]);
    let host = via.map_or_else(|| registry.host(), str::to_owned);
    sandbox.write_docker_config(&serde_json::json!({
        "auths": { host: { "auth": b64(&format!("{USER}:{PASS}")) } }
    }));
    Far {
        sandbox,
        config,
        registry,
    }
}

impl Far {
    /// `cudaimg --json import DIR --to TO`, which must succeed: its report.
    fn import(&self, dir: &Path, to: &str) -> Value {
        json(&run_ok(&mut self.cli(&[
            "--json",
            "import",
            dir.to_str().unwrap(),
            "--to",
            to,
        ])))
    }
    fn cli(&self, args: &[&str]) -> std::process::Command {
        self.sandbox.cli(&self.config, args)
    }
    /// `skopeo inspect --raw` of `reference` in the far registry.
    fn raw(&self, reference: &str) -> Vec<u8> {
        run_ok(self.sandbox.skopeo().args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("--creds={USER}:{PASS}"),
            &format!("docker://{}/{reference}", self.registry.host()),
        ]))
        .stdout
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `docker.io/nvidia/cuda:T` → `mirror/nvidia/cuda:T`.
fn under_prefix(name: &str) -> String {
    format!("mirror/{}", name.strip_prefix("docker.io/").unwrap())
}

fn statuses(report: &Value) -> Vec<String> {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap().to_owned())
        .collect()
}

fn sum(report: &Value, field: &str) -> u64 {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[field].as_u64().unwrap())
        .sum()
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_bundle_imports_byte_exact_into_an_htpasswd_registry_and_into_a_store() {
    let (runtime, devel) = (runtime_multiarch(), devel_amd64());
    let mut near = near(&[&runtime, &devel]);
    let plan = near.plan(&Exclusions::default());
    let dir = near.sandbox.root().join("bundle");
    let written = near.write(&plan, &dir, None);
    near.seal();
    assert_eq!(written.parts.len(), 1, "default: one part");
    // Shared layers are carried once.
    let per_image: usize = plan.images.iter().map(|i| i.blobs.len()).sum();
    assert!(plan.blobs.len() < per_image, "{plan:#?}");

    let far = far();
    let to = format!("{}/mirror", far.registry.host());
    let out = run_ok(&mut far.cli(&["--json", "import", dir.to_str().unwrap(), "--to", &to]));
    let report = json(&out);
    assert_eq!(statuses(&report), ["imported", "imported"], "{report:#}");
    assert!(sum(&report, "bytes") > 0);

    for image in &plan.images {
        let reference = under_prefix(&image.name);
        let raw = far.raw(&reference);
        assert_eq!(sha256(&raw), image.digest.to_string(), "{reference}");
    }
    // The multi-arch image: the index and every child, byte-exact.
    let top = runtime.top();
    assert_eq!(
        far.raw(&under_prefix(&format!("docker.io/{}", runtime.reference()))),
        top.bytes
    );
    for p in &runtime.platforms {
        let child = far.raw(&format!("mirror/nvidia/cuda@{}", p.manifest.digest));
        assert_eq!(child, p.manifest.bytes);
    }
    // skopeo copies it all back out of the far registry.
    let copied = far.sandbox.root().join("copied");
    run_ok(far.sandbox.skopeo().args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("--src-creds={USER}:{PASS}"),
        &format!(
            "docker://{}/mirror/{}",
            far.registry.host(),
            runtime.reference()
        ),
        &format!("oci:{}:x", copied.display()),
    ]));

    // Again: everything is there, nothing is sent.
    let again = far.import(&dir, &to);
    assert_eq!(sum(&again, "bytes"), 0, "{again:#}");
    assert_eq!(sum(&again, "blobs_sent"), 0, "{again:#}");

    // Into a store: the names, verified.
    let store_side = far_with(TestRegistry::start(), None);
    let report = json(&run_ok(&mut store_side.cli(&[
        "--json",
        "import",
        dir.to_str().unwrap(),
    ])));
    assert_eq!(statuses(&report), ["imported", "imported"], "{report:#}");
    run_ok(&mut store_side.cli(&["verify"]));
    // The store's index.json names each image by its top digest (skopeo's oci: transport
    // reads only OCI media types, and these are Docker's), and the blob is those bytes.
    let store = store_side.sandbox.store_dir();
    let index: Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap()).unwrap();
    for image in &plan.images {
        let entry = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == image.name.as_str())
            .unwrap_or_else(|| panic!("{} not named: {index:#}", image.name));
        assert_eq!(entry["digest"], image.digest.as_str());
        let blob = std::fs::read(store.join("blobs/sha256").join(image.digest.hex())).unwrap();
        assert_eq!(sha256(&blob), image.digest.to_string());
    }
    let images = json(&run_ok(&mut store_side.cli(&["--json", "images"])));
    let listed = images.to_string();
    for image in &plan.images {
        assert!(listed.contains(&image.name), "{listed}");
    }
}

#[test]
fn bundles_are_reproducible_parts_stay_under_the_size_and_large_blobs_travel_in_pieces() {
    let runtime = runtime_multiarch();
    let mut near = near(&[&runtime]);
    let plan = near.plan(&Exclusions::default());
    let part_size = 256 << 10;
    let largest = plan.blobs.iter().map(|b| b.size).max().unwrap();
    assert!(
        largest > part_size,
        "the fixture needs a blob over {part_size}: {largest}"
    );

    let a = near.sandbox.root().join("a");
    let b = near.sandbox.root().join("b");
    near.write(&plan, &a, Some(part_size));
    // The second from a fresh plan, with its temporary files elsewhere.
    let store = Store::open(&near.sandbox.store_dir()).unwrap();
    bundle::write(
        &store,
        &near.plan(&Exclusions::default()),
        &b,
        &WriteOptions {
            part_size: Some(part_size),
            tmpdir: Some(near.sandbox.root().join("tmp")),
        },
        &Quiet,
    )
    .unwrap();
    near.seal();
    let leftovers = files_of(&near.sandbox.root().join("tmp"));
    assert!(leftovers.is_empty(), "temporary files left behind");
    let (fa, fb) = (files_of(&a), files_of(&b));
    assert!(
        fa.len() > 2,
        "{:?}",
        fa.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(fa, fb, "two writes of the same plan differ");

    let meta: Value =
        serde_json::from_slice(&std::fs::read(a.join("bundle.json")).unwrap()).unwrap();
    assert_eq!(meta["format"], "cudaimg-bundle/v1");
    for part in meta["parts"].as_array().unwrap() {
        let file = part["file"].as_str().unwrap();
        let bytes = std::fs::read(a.join(file)).unwrap();
        assert!(bytes.len() as u64 <= part_size, "{file}: {}", bytes.len());
        assert_eq!(bytes.len() as u64, part["size"].as_u64().unwrap());
        assert_eq!(
            sha256(&bytes),
            format!("sha256:{}", part["sha256"].as_str().unwrap())
        );
        // A plain tar whose first entry is the part's own index, which lists the rest.
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entries = archive.entries().unwrap();
        let mut first = entries.next().unwrap().unwrap();
        assert_eq!(first.path().unwrap().to_str().unwrap(), "cudaimg-part.json");
        assert_eq!(first.header().mtime().unwrap(), 0);
        let mut index = String::new();
        std::io::Read::read_to_string(&mut first, &mut index).unwrap();
        let index: Value = serde_json::from_str(&index).unwrap();
        assert_eq!(index["file"], file);
        let listed = index["entries"].as_array().unwrap();
        let mut n = 0;
        for (entry, want) in entries.zip(listed) {
            let mut entry = entry.unwrap();
            assert_eq!(
                entry.path().unwrap().to_str().unwrap(),
                want["path"].as_str().unwrap()
            );
            assert_eq!(entry.raw_file_position(), want["offset"].as_u64().unwrap());
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            assert_eq!(
                sha256(&data),
                format!("sha256:{}", want["sha256"].as_str().unwrap())
            );
            n += 1;
        }
        assert_eq!(n, listed.len());
    }
    // Written again into the same directory as one part: the old parts are gone.
    near.write(&plan, &b, None);
    let names: Vec<String> = files_of(&b).into_iter().map(|f| f.0).collect();
    assert_eq!(names, ["bundle.json", "part-0001.tar"]);

    let cut = meta["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["pieces"].as_array().unwrap().len() > 1)
        .count();
    assert!(cut >= 1, "no blob was cut into pieces");

    // The pieces are joined and verified on import.
    let far = far();
    let to = far.registry.host();
    let report = far.import(&a, &to);
    assert_eq!(statuses(&report), ["imported"], "{report:#}");
    assert_eq!(
        far.raw(&runtime.reference()),
        runtime.top().bytes,
        "the index at the destination"
    );
    let store_side = far_with(TestRegistry::start(), None);
    run_ok(&mut store_side.cli(&["import", a.to_str().unwrap()]));
    run_ok(&mut store_side.cli(&["verify"]));
}

#[test]
fn a_damaged_and_a_missing_part_are_named_and_sending_them_again_finishes_the_import() {
    let runtime = runtime_multiarch();
    let mut near = near(&[&runtime]);
    let plan = near.plan(&Exclusions::default());
    let dir = near.sandbox.root().join("bundle");
    near.write(&plan, &dir, Some(256 << 10));
    near.seal();
    let (p2, p3) = (dir.join("part-0002.tar"), dir.join("part-0003.tar"));
    let (good2, good3) = (std::fs::read(&p2).unwrap(), std::fs::read(&p3).unwrap());
    let mut bad = good2.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0xff;
    std::fs::write(&p2, &bad).unwrap();
    std::fs::remove_file(&p3).unwrap();

    let far = far();
    let to = far.registry.host();
    let out = run_fails(&mut far.cli(&["import", dir.to_str().unwrap(), "--to", &to]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("part part-0002.tar cannot be used: its sha256 is"),
        "{err}"
    );
    assert!(
        err.contains(&format!("send it again: {}", p2.display())),
        "{err}"
    );
    assert!(
        err.contains("part part-0003.tar cannot be used: it is missing"),
        "{err}"
    );
    assert!(
        err.contains(&format!("send it again: {}", p3.display())),
        "{err}"
    );
    // Nothing of a damaged part reached the registry as a manifest.
    let tagged = common::push::http_client()
        .head(format!(
            "{}/v2/nvidia/cuda/manifests/{}",
            far.registry.url(),
            runtime.tag
        ))
        .basic_auth(USER, Some(PASS))
        .send()
        .unwrap();
    assert_eq!(tagged.status().as_u16(), 404);

    // The same into a store.
    let store_side = far_with(TestRegistry::start(), None);
    let out = run_fails(&mut store_side.cli(&["import", dir.to_str().unwrap()]));
    assert!(stderr(&out).contains("part-0002.tar"), "{}", stderr(&out));

    // The two parts sent again: the import finishes.
    std::fs::write(&p2, &good2).unwrap();
    std::fs::write(&p3, &good3).unwrap();
    let report = far.import(&dir, &to);
    assert_eq!(statuses(&report), ["imported"], "{report:#}");
    assert_eq!(far.raw(&runtime.reference()), runtime.top().bytes);
}

#[test]
fn one_failing_image_does_not_stop_the_others_and_a_second_run_finishes_it() {
    let (runtime, devel) = (runtime_multiarch(), devel_amd64());
    let mut near = near(&[&runtime, &devel]);
    let plan = near.plan(&Exclusions::default());
    let dir = near.sandbox.root().join("bundle");
    near.write(&plan, &dir, None);
    near.seal();

    let registry = TestRegistry::start_with_basic_auth(USER, PASS);
    let proxy = FaultProxy::start(&registry.url());
    let far = far_with(registry, Some(&proxy.host()));
    // The runtime image's tag cannot be put (a 400: not retried).
    proxy.add(Fault::StatusOn {
        method: "PUT".into(),
        path_contains: format!("/manifests/{}", runtime.tag),
        skip: 0,
        status: 400,
        retry_after: None,
        www_authenticate: None,
        times: 1,
    });
    let to = proxy.host();
    let out = run_fails(&mut far.cli(&["--json", "import", dir.to_str().unwrap(), "--to", &to]));
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    let by_name = |r: &Value, name: &str| -> Value {
        r["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"].as_str().unwrap().ends_with(name))
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_name(&report, &runtime.tag)["status"],
        "failed",
        "{report:#}"
    );
    assert_eq!(
        by_name(&report, &devel.tag)["status"],
        "imported",
        "{report:#}"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!("docker.io/nvidia/cuda:{}", runtime.tag)),
        "{err}"
    );
    assert!(err.contains("1 of 2 images failed"), "{err}");
    let devel_image = plan
        .images
        .iter()
        .find(|i| i.name.ends_with(&devel.tag))
        .unwrap();
    assert_eq!(
        sha256(&far.raw(&devel.reference())),
        devel_image.digest.to_string()
    );

    // Run again: the runtime image's blobs, uploaded the first time, are not sent again.
    let report = far.import(&dir, &to);
    assert_eq!(statuses(&report), ["imported", "imported"], "{report:#}");
    assert_eq!(sum(&report, "blobs_sent"), 0, "{report:#}");
    assert_eq!(far.raw(&runtime.reference()), runtime.top().bytes);

    // The plain summary names the image to retry.
    proxy.add(Fault::StatusOn {
        method: "PUT".into(),
        path_contains: format!("/manifests/{}", devel.tag),
        skip: 0,
        status: 400,
        retry_after: None,
        www_authenticate: None,
        times: 1,
    });
    let out = run_fails(&mut far.cli(&["import", dir.to_str().unwrap(), "--to", &to]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("imported 1 of 2 images"), "{text}");
    assert!(text.contains("to retry"), "{text}");
    assert!(
        text.contains(&format!("  docker.io/nvidia/cuda:{}", devel.tag)),
        "{text}"
    );
}

#[test]
fn an_import_killed_midway_continues_where_it_stopped() {
    let runtime = runtime_multiarch();
    let mut near = near(&[&runtime]);
    let plan = near.plan(&Exclusions::default());
    let dir = near.sandbox.root().join("bundle");
    near.write(&plan, &dir, None);
    near.seal();

    let registry = TestRegistry::start_with_basic_auth(USER, PASS);
    let proxy = FaultProxy::start(&registry.url());
    let far = far_with(registry, Some(&proxy.host()));
    proxy.add(Fault::Throttle {
        bytes_per_sec: 256 << 10,
    });
    let to = proxy.host();
    let mut child = far
        .cli(&["import", dir.to_str().unwrap(), "--to", &to, "--jobs", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until some blob, not all, is at the destination; then kill the import.
    let layers: Vec<_> = plan
        .blobs
        .iter()
        .filter(|b| b.kind == cudaimg_sync::plan::BlobKind::Layer)
        .collect();
    let at_dest = |d: &str| {
        common::push::http_client()
            .head(format!("{}/v2/nvidia/cuda/blobs/{d}", far.registry.url()))
            .basic_auth(USER, Some(PASS))
            .send()
            .unwrap()
            .status()
            .is_success()
    };
    let started = std::time::Instant::now();
    loop {
        let there = layers.iter().filter(|b| at_dest(b.digest.as_str())).count();
        if there >= 1 {
            assert!(
                there < layers.len(),
                "the import finished before it was killed"
            );
            break;
        }
        assert!(started.elapsed().as_secs() < 60, "no blob arrived");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended early"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    proxy.clear();

    let report = far.import(&dir, &to);
    assert_eq!(statuses(&report), ["imported"], "{report:#}");
    assert!(sum(&report, "blobs_present") >= 1, "{report:#}");
    assert!(sum(&report, "bytes") < plan.carried_bytes(), "{report:#}");
    assert_eq!(far.raw(&runtime.reference()), runtime.top().bytes);
}

#[test]
fn a_bundle_assuming_blobs_the_far_side_lacks_is_refused_before_anything_is_pushed() {
    let (runtime, devel) = (runtime_multiarch(), devel_amd64());
    let mut near = near(&[&runtime, &devel]);
    let full = near.plan(&Exclusions::default());
    let first_dir = near.sandbox.root().join("bundle-2026-01");
    near.write(&full, &first_dir, None);
    // A second bundle, as `--since bundle-2026-01` makes it: the runtime image's blobs are
    // assumed on the far side.
    let mut exclude = Exclusions::default();
    let runtime_image = full
        .images
        .iter()
        .find(|i| i.name.ends_with(&runtime.tag))
        .unwrap();
    exclude.add(
        AssumedFrom::Bundle {
            sha256: "0".repeat(64),
            name: "bundle-2026-01".into(),
        },
        runtime_image.blobs.iter().cloned(),
    );
    let second = near.plan(&exclude);
    assert!(!second.assumed.is_empty());
    let second_dir = near.sandbox.root().join("bundle-2026-02");
    near.write(&second, &second_dir, None);
    near.seal();

    let far = far();
    let to = far.registry.host();
    let out = run_fails(&mut far.cli(&["import", second_dir.to_str().unwrap(), "--to", &to]));
    let err = stderr(&out);
    assert!(
        err.contains("the bundle assumes the destination holds"),
        "{err}"
    );
    assert!(err.contains("bundle-2026-01"), "{err}");
    assert!(err.contains(second.assumed[0].digest.as_str()), "{err}");
    assert!(err.contains("hint: import"), "{err}");
    let writes: Vec<_> = far
        .registry
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET" && r.method != "HEAD")
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    // Into a store likewise.
    let store_side = far_with(TestRegistry::start(), None);
    let out = run_fails(&mut store_side.cli(&["import", second_dir.to_str().unwrap()]));
    assert!(stderr(&out).contains("bundle-2026-01"), "{}", stderr(&out));

    // Once the first bundle is imported, the second goes in, carrying only what is new.
    run_ok(&mut far.cli(&["import", first_dir.to_str().unwrap(), "--to", &to]));
    let report = far.import(&second_dir, &to);
    assert_eq!(statuses(&report), ["imported", "imported"], "{report:#}");
    assert_eq!(far.raw(&runtime.reference()), runtime.top().bytes);
    run_ok(&mut store_side.cli(&["import", first_dir.to_str().unwrap()]));
    run_ok(&mut store_side.cli(&["import", second_dir.to_str().unwrap()]));
    run_ok(&mut store_side.cli(&["verify"]));
}

/// The whole cycle through the commands a user runs: `sync SPEC --to DIR` (twice: the same
/// bytes), `import DIR --to` a far registry behind htpasswd auth with the upstream gone, then
/// one new tag upstream, `sync SPEC --to DIR2 --since DIR` carrying only the new blobs, and
/// its import; the second bundle alone is refused by an empty registry, naming the first.
#[test]
fn sync_to_a_bundle_then_since_it_carries_only_the_new_tag_and_both_import() {
    let upstream = TestRegistry::start();
    let pusher = Pusher::new(&upstream);
    let first = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale::TINY);
    pusher.push(&first);
    let near = Sandbox::new();
    let config = near.write_hub_config(&upstream.url(), &[]);
    let spec = near.write(
        "sync.toml",
        "[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"12.4\"\nflavors = [\"runtime\"]\n",
    );
    let sync_to = |dir: &Path, extra: &[&str]| -> Value {
        let mut args = vec![
            "--json",
            "sync",
            spec.to_str().unwrap(),
            "--to",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        json(&run_ok(&mut near.cli(&config, &args)))
    };
    let b1 = near.root().join("bundle-1");
    let out = sync_to(&b1, &[]);
    assert_eq!(
        out["bundle"]["parts"].as_array().unwrap().len(),
        1,
        "{out:#}"
    );
    // Reproducible through the command as well: a second directory, the same bytes.
    let b1_again = near.root().join("bundle-1-again");
    sync_to(&b1_again, &[]);
    assert_eq!(files_of(&b1), files_of(&b1_again));
    // A part size no part can have: a usage error with the fix, and no bundle written.
    let tiny = near.root().join("bundle-tiny");
    let out = run_fails(&mut near.cli(
        &config,
        &[
            "sync",
            spec.to_str().unwrap(),
            "--to",
            tiny.to_str().unwrap(),
            "--part-size",
            "4K",
        ],
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--part-size 4096 is too small")
            && err.contains("hint: use e.g. `--part-size 4G`"),
        "{err}"
    );
    assert!(!tiny.join("bundle.json").exists());

    let far = far();
    let to = format!("{}/site", far.registry.host());
    let report = far.import(&b1, &to);
    assert_eq!(statuses(&report), ["imported"], "{report:#}");
    assert_eq!(
        far.raw(&format!("site/{}", first.reference())),
        first.top().bytes
    );

    // One new tag upstream; the second bundle carries its blobs only.
    let second = Fixture::cuda("12.4.2", Flavor::Runtime, MediaTypes::Docker, Scale::TINY);
    pusher.push(&second);
    let b2 = near.root().join("bundle-2");
    let out = sync_to(&b2, &["--since", b1.to_str().unwrap()]);
    let bundle: Value =
        serde_json::from_slice(&std::fs::read(b2.join("bundle.json")).unwrap()).unwrap();
    let carried: BTreeSet<String> = bundle["plan"]["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap().to_owned())
        .collect();
    let mut old: BTreeSet<String> = BTreeSet::new();
    let mut new: BTreeSet<String> = BTreeSet::new();
    for (f, set) in [(&first, &mut old), (&second, &mut new)] {
        set.insert(f.top().digest.clone());
        for p in &f.platforms {
            set.insert(p.manifest.digest.clone());
            set.insert(p.config.digest.clone());
            set.extend(p.layers.iter().map(|l| l.digest.clone()));
        }
    }
    let want: BTreeSet<String> = new.difference(&old).cloned().collect();
    assert_eq!(carried, want, "{out:#}");
    assert!(carried.is_disjoint(&old));

    // An empty registry lacks what the first bundle carried: refused, naming it.
    let empty = far_with(TestRegistry::start_with_basic_auth(USER, PASS), None);
    let out = run_fails(&mut empty.cli(&[
        "import",
        b2.to_str().unwrap(),
        "--to",
        &empty.registry.host(),
    ]));
    assert!(stderr(&out).contains("bundle-1"), "{}", stderr(&out));

    // The far registry that imported the first takes the second.
    let report = far.import(&b2, &to);
    assert!(
        statuses(&report).iter().all(|s| s == "imported"),
        "{report:#}"
    );
    assert_eq!(
        far.raw(&format!("site/{}", second.reference())),
        second.top().bytes
    );
}

/// `skopeo inspect` (`copy` with `to`) of `mirror/REFERENCE` in the far registry.
fn far_skopeo(far: &Far, args: &[&str], reference: &str, to: Option<&str>) -> Output {
    let src = if to.is_some() { "src-" } else { "" };
    let mut cmd = far.sandbox.skopeo();
    cmd.args(args).args([
        &format!("--{src}tls-verify=false"),
        &format!("--{src}creds={USER}:{PASS}"),
        &format!("docker://{}/mirror/{reference}", far.registry.host()),
    ]);
    cmd.args(to);
    run_ok(&mut cmd)
}

/// The README's air-gapped example: `sync` one platform of a multi-arch tag into a bundle,
/// import it into distribution 2.8 (which refuses an index naming manifests it lacks, see
/// `sync_select::a_registry_refuses_an_index_without_its_children`) and into a store.
#[test]
fn a_bundle_of_one_platform_of_a_multiarch_tag_imports_into_distribution_and_a_store() {
    let upstream = TestRegistry::start();
    let runtime = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale::TINY);
    Pusher::new(&upstream).push(&runtime);
    let near = Sandbox::new();
    let config = near.write_hub_config(&upstream.url(), &[]);
    let spec = near.write(
        "sync.toml",
        format!(
            "[[images]]\nreferences = [\"nvidia/cuda:{}\"]\nplatforms = [\"linux/amd64\"]\n",
            runtime.tag
        ),
    );
    let dir = near.root().join("bundle-1");
    let out = json(&run_ok(&mut near.cli(
        &config,
        &[
            "--json",
            "sync",
            spec.to_str().unwrap(),
            "--to",
            dir.to_str().unwrap(),
        ],
    )));
    let amd = runtime.platform(Arch::Amd64);
    // The tag is carried as the platform's own manifest; upstream's index stays visible.
    let image = &out["plan"]["images"][0];
    assert_eq!(image["digest"], amd.manifest.digest.as_str(), "{out:#}");
    assert_eq!(image["upstream"]["digest"], runtime.top().digest.as_str());
    assert_eq!(image["upstream"]["carried_as"], "platform-manifest");
    drop(upstream);

    let far = far();
    let to = format!("{}/mirror", far.registry.host());
    let report = far.import(&dir, &to);
    assert_eq!(statuses(&report), ["imported"], "{report:#}");
    assert_eq!(
        report["images"][0]["upstream"]["digest"],
        runtime.top().digest.as_str()
    );
    let reference = runtime.reference();
    assert_eq!(far.raw(&format!("mirror/{reference}")), amd.manifest.bytes);
    // skopeo reads the tag as the chosen platform, and copies it out whole.
    // (An index would answer arm64 here: the tag is the amd64 manifest alone.)
    let inspect = json(&far_skopeo(
        &far,
        &["--override-arch", "arm64", "inspect"],
        &reference,
        None,
    ));
    assert_eq!(
        (&inspect["Os"], &inspect["Architecture"]),
        (&Value::from("linux"), &Value::from("amd64")),
        "{inspect:#}"
    );
    let copied = far.sandbox.root().join("copied");
    let to = format!("dir:{}", copied.display());
    far_skopeo(&far, &["copy"], &reference, Some(&to));
    assert_eq!(
        std::fs::read(copied.join("manifest.json")).unwrap(),
        amd.manifest.bytes
    );
    assert!(copied
        .join(amd.config.digest.strip_prefix("sha256:").unwrap())
        .exists());

    // Into a store: the platform named, upstream's index beside it, and `verify` passes.
    let store_side = far_with(TestRegistry::start(), None);
    let report = json(&run_ok(&mut store_side.cli(&[
        "--json",
        "import",
        dir.to_str().unwrap(),
    ])));
    assert_eq!(statuses(&report), ["imported"], "{report:#}");
    run_ok(&mut store_side.cli(&["verify"]));
    let images = json(&run_ok(&mut store_side.cli(&["--json", "images"])));
    let rows = images.as_array().unwrap_or_else(|| panic!("{images:#}"));
    assert_eq!(rows.len(), 1, "{images:#}");
    assert_eq!(rows[0]["digest"], amd.manifest.digest.as_str());
    assert_eq!(rows[0]["platform"], "linux/amd64");
    assert_eq!(rows[0]["index_digest"], runtime.top().digest.as_str());
    assert_eq!(rows[0]["broken"], false);
}

/// A single-platform bundle written to `dir` from a sealed near side, and its bundle.json.
fn one_image_bundle(dir_name: &str) -> (Near, PathBuf, Value) {
    let devel = devel_amd64();
    let mut near = near(&[&devel]);
    let plan = near.plan(&Exclusions::default());
    let dir = near.sandbox.root().join(dir_name);
    near.write(&plan, &dir, None);
    near.seal();
    let file: Value =
        serde_json::from_slice(&std::fs::read(dir.join("bundle.json")).unwrap()).unwrap();
    (near, dir, file)
}

fn rewrite_bundle_json(dir: &Path, file: &Value) {
    std::fs::write(dir.join("bundle.json"), serde_json::to_vec(file).unwrap()).unwrap();
}

/// Issue 23: `import` stored whatever names bundle.json gave. A name that is not an image
/// reference (`/etc/passwd`, one with `..` and terminal escapes) is refused before anything
/// is stored, with the name escaped in the message.
#[test]
fn import_refuses_names_that_are_not_image_references_and_stores_nothing() {
    let (_near, dir, file) = one_image_bundle("bundle");
    for bad in ["/etc/passwd", "../../../x:\x1b[31mRED\x1b[0m\x07"] {
        let mut lying = file.clone();
        lying["plan"]["images"][0]["name"] = Value::from(bad);
        rewrite_bundle_json(&dir, &lying);
        let store_side = far_with(TestRegistry::start(), None);
        let out = run_fails(&mut store_side.cli(&["import", dir.to_str().unwrap()]));
        let err = stderr(&out);
        assert!(err.contains("is not a valid image reference"), "{err}");
        assert!(err.contains("hint:"), "{err}");
        assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains('\x1b'));
        let index = store_side.sandbox.store_dir().join("index.json");
        if let Ok(bytes) = std::fs::read(&index) {
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["manifests"].as_array().map_or(0, Vec::len), 0, "{v:#}");
        }
        // Into a registry likewise: nothing is pushed.
        let far = far();
        let out = run_fails(&mut far.cli(&[
            "import",
            dir.to_str().unwrap(),
            "--to",
            &far.registry.host(),
        ]));
        let err = stderr(&out);
        assert!(err.contains("is not a valid image reference"), "{err}");
        assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
        let writes: Vec<_> = far
            .registry
            .requests()
            .into_iter()
            .filter(|r| r.method != "GET" && r.method != "HEAD")
            .collect();
        assert!(writes.is_empty(), "{writes:?}");
    }
}

/// Issue 23: platforms and media types come from the verified manifest and config, never
/// from bundle.json. A bundle.json that says `windows/s390x` for a linux/amd64 image, and
/// calls its image manifest an index (image and blob), imports into a store and a registry
/// as what the bytes are.
#[test]
fn import_takes_platforms_and_media_types_from_the_manifest_not_bundle_json() {
    let (_near, dir, file) = one_image_bundle("bundle");
    let top = file["plan"]["images"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let name = file["plan"]["images"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let manifest = {
        let bundle = cudaimg_sync::bundle::Bundle::open(&dir).unwrap();
        bundle
            .read_small(&cudaimg_oci::digest::Digest::parse(&top).unwrap(), 1 << 22)
            .unwrap()
    };
    let real_type = serde_json::from_slice::<Value>(&manifest).unwrap()["mediaType"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut lying = file.clone();
    lying["plan"]["images"][0]["platforms"] = serde_json::json!(["windows/s390x"]);
    lying["plan"]["images"][0]["media_type"] =
        Value::from("application/vnd.oci.image.index.v1+json");
    for b in lying["plan"]["blobs"].as_array_mut().unwrap() {
        if b["digest"] == top.as_str() {
            b["kind"] = Value::from("index");
            b["media_type"] = Value::from("application/vnd.oci.image.index.v1+json");
        }
    }
    rewrite_bundle_json(&dir, &lying);

    let store_side = far_with(TestRegistry::start(), None);
    let report = json(&run_ok(&mut store_side.cli(&[
        "--json",
        "import",
        dir.to_str().unwrap(),
    ])));
    assert_eq!(statuses(&report), ["imported"], "{report:#}");
    assert_eq!(
        report["images"][0]["platforms"],
        serde_json::json!(["linux/amd64"]),
        "{report:#}"
    );
    let index_json =
        std::fs::read_to_string(store_side.sandbox.store_dir().join("index.json")).unwrap();
    assert!(
        !index_json.contains("windows") && !index_json.contains("s390x"),
        "{index_json}"
    );
    let index: Value = serde_json::from_str(&index_json).unwrap();
    let entries: Vec<&Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["annotations"]["org.opencontainers.image.ref.name"] == name.as_str())
        .collect();
    assert_eq!(entries.len(), 1, "{index:#}");
    assert_eq!(entries[0]["mediaType"], real_type.as_str(), "{index:#}");
    assert_eq!(entries[0]["platform"]["os"], "linux", "{index:#}");
    assert_eq!(entries[0]["platform"]["architecture"], "amd64", "{index:#}");
    run_ok(&mut store_side.cli(&["verify"]));

    // Into a registry: the manifest goes in as its own media type, byte-exact.
    let far = far();
    let report = far.import(&dir, &far.registry.host());
    assert_eq!(statuses(&report), ["imported"], "{report:#}");
    let reference = name.strip_prefix("docker.io/").unwrap();
    assert_eq!(far.raw(reference), manifest);
    let (repo, tag) = reference.split_once(':').unwrap();
    let resp = reqwest::blocking::Client::new()
        .get(format!("{}/v2/{repo}/manifests/{tag}", far.registry.url()))
        .basic_auth(USER, Some(PASS))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.oci.image.manifest.v1+json, \
             application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        real_type,
        "the registry keeps the type the manifest was PUT with"
    );
}

/// Issue 23: a registry (the fault proxy in front of a real one) that answers every blob
/// `HEAD` with `200` and a `Content-Length` that is not the blob's. The blobs a bundle
/// assumes the far side holds are looked for by size as well: they are missing, and the
/// import stops before anything is pushed, as push does
/// (`push::a_head_with_the_wrong_size_does_not_skip_the_blob`).
#[test]
fn an_import_does_not_take_a_head_with_the_wrong_size_as_an_assumed_blob_being_there() {
    use cudaimg_sync::plan::BlobKind;
    let devel = devel_amd64();
    let mut near = near(&[&devel]);
    let full = near.plan(&Exclusions::default());
    // The far side is said (by an inventory) to hold the config and layers.
    let mut exclude = Exclusions::default();
    exclude.add(
        AssumedFrom::Inventory {
            sha256: "0".repeat(64),
            of: "the far registry".into(),
        },
        full.blobs
            .iter()
            .filter(|b| matches!(b.kind, BlobKind::Config | BlobKind::Layer))
            .map(|b| b.digest.clone()),
    );
    let plan = near.plan(&exclude);
    assert!(!plan.assumed.is_empty());
    let dir = near.sandbox.root().join("bundle");
    near.write(&plan, &dir, None);
    near.seal();

    let registry = TestRegistry::start_with_basic_auth(USER, PASS);
    let proxy = FaultProxy::start(&registry.url());
    proxy.add(Fault::Status {
        path_contains: "/blobs/sha256:".into(),
        status: 200,
        retry_after: None,
        times: common::proxy::ALWAYS,
    });
    let far = far_with(registry, Some(&proxy.host()));
    let out = run_fails(&mut far.cli(&["import", dir.to_str().unwrap(), "--to", &proxy.host()]));
    let err = stderr(&out);
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.method == "HEAD" && r.faults == ["Status"]),
        "the fault never fired"
    );
    assert!(
        err.contains("the bundle assumes the destination holds"),
        "{err}"
    );
    assert!(err.contains(plan.assumed[0].digest.as_str()), "{err}");
    let writes: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET" && r.method != "HEAD")
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
}
