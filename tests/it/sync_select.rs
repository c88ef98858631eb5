//! `cudaimg sync SPEC --plan` and `cudaimg inventory` against real distribution registries:
//! spec errors with line:column, CUDA selectors and regex/semver over a registry with many
//! tags, a platforms subset, shared layers counted once, `--have` from an inventory of a
//! registry behind htpasswd auth, `--since` an earlier bundle, and `--json`.

use cudaimg_test_support as common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::{
    run_fails, run_ok, Arch, Fixture, Flavor, MediaTypes, Pusher, Sandbox, Scale, TestRegistry,
};
use serde_json::Value;

const REPO: &str = "nvidia/cuda";

fn fx(version: &str, flavor: Flavor) -> Fixture {
    Fixture::cuda(version, flavor, MediaTypes::Docker, Scale::TINY)
}

/// Configs and layers of every platform of `f`, digest -> size.
fn content(f: &Fixture) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for p in &f.platforms {
        out.insert(p.config.digest.clone(), p.config.size());
        for l in &p.layers {
            out.insert(l.digest.clone(), l.size);
        }
    }
    out
}

/// Everything a whole `f` is: [`content`], every child manifest, the index.
fn whole(f: &Fixture) -> BTreeMap<String, u64> {
    let mut out = content(f);
    for p in &f.platforms {
        out.insert(p.manifest.digest.clone(), p.manifest.size());
    }
    let top = f.top();
    out.insert(top.digest.clone(), top.size());
    out
}

fn sync_plan(sandbox: &Sandbox, config: &Path, spec: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--json", "sync", spec.to_str().unwrap(), "--plan"];
    args.extend_from_slice(extra);
    let out = run_ok(&mut sandbox.cli(config, &args));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sync --plan --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn names(plan: &Value) -> Vec<String> {
    plan["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

fn digests(list: &Value) -> BTreeMap<String, u64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["digest"].as_str().unwrap().to_owned(),
                b["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn hub(tags: &[&str]) -> Vec<String> {
    tags.iter()
        .map(|t| format!("docker.io/{REPO}:{t}"))
        .collect()
}

#[test]
fn spec_errors_name_file_line_and_column_with_a_hint() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config("http://127.0.0.1:9", &[]);
    for (text, at, says) in [
        (
            "[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"12.4\"\nflavour = [\"runtime\"]\n",
            "sync.toml:4:1:",
            "unknown field",
        ),
        (
            "[[images]]\nrepository = \"org/app\"\ntags = \"v(1\"\n",
            "sync.toml:3:8:",
            "not a regular expression",
        ),
        (
            "[[images]]\nrepository = \"org/app\"\nsemver = \"~>1.2\"\n",
            "sync.toml:3:10:",
            "not a version range",
        ),
        (
            "[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \">=12.4, <12.6\"\nsemver = \">=1\"\n",
            "sync.toml:4:10:",
            "mixes a CUDA selector",
        ),
    ] {
        let spec = sandbox.write("sync.toml", text);
        let out = run_fails(&mut sandbox.cli(&config, &["sync", spec.to_str().unwrap(), "--plan"]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(at) && err.contains(says), "{text}\n{err}");
        assert!(err.contains("\nhint: "), "{err}");
    }
}

#[test]
fn cuda_selector_picks_exactly_the_matching_tags_and_counts_shared_layers_once() {
    let official = TestRegistry::start();
    let pusher = Pusher::new(&official);
    let runtime = fx("12.4.1", Flavor::Runtime);
    let devel = fx("12.4.1", Flavor::Devel);
    let cudnn = fx("12.4.1", Flavor::CudnnRuntime);
    let base = fx("12.4.1", Flavor::Base);
    let newer = fx("12.5.0", Flavor::Runtime);
    let too_new = fx("12.6.0", Flavor::Runtime);
    for f in [&runtime, &devel, &cudnn, &base, &newer, &too_new] {
        pusher.push(f);
    }
    // Many more tags, all naming the 12.6.0 image's index: only their names can match.
    let others = [
        "12.4.1-runtime-ubuntu24.04",
        "12.4.1-runtime-ubuntu20.04",
        "12.4.1-devel-ubuntu24.04",
        "12.4.1-cudnn-devel-ubuntu22.04",
        "12.3.2-runtime-ubuntu22.04",
        "12.3.2-devel-ubuntu22.04",
        "12.6.3-devel-ubuntu22.04",
        "12.8.1-runtime-ubuntu22.04",
        "13.0.0-tensorrt-runtime-ubuntu22.04",
        "11.8.0-runtime-ubuntu22.04",
        "12.5.1-base-ubuntu22.04",
        "12.5.1-cudnn-runtime-ubuntu22.04",
        "12.5.1-runtime-ubi9",
        "12.4.1-runtime-ubuntu22.04-rc",
        "latest",
        "my-own-build",
    ];
    for t in others {
        pusher.push_manifest(REPO, t, too_new.top());
    }
    // Two more that do match, naming the 12.5.0 image: carried, but no blob twice.
    for t in ["12.5.1-runtime-ubuntu22.04", "12.4.0-devel-ubuntu22.04"] {
        pusher.push_manifest(REPO, t, newer.top());
    }

    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let spec = sandbox.write(
        "sync.toml",
        "[[images]]\nrepository = \"docker.io/nvidia/cuda\"\ncuda = \">=12.4, <12.6\"\n\
         flavors = [\"runtime\", \"devel\"]\ncudnn = false\nos = [\"ubuntu22.04\"]\n",
    );
    let plan = sync_plan(&sandbox, &config, &spec, &[]);
    let want = hub(&[
        "12.4.0-devel-ubuntu22.04",
        "12.4.1-devel-ubuntu22.04",
        "12.4.1-runtime-ubuntu22.04",
        "12.5.0-runtime-ubuntu22.04",
        "12.5.1-runtime-ubuntu22.04",
    ]);
    assert_eq!(names(&plan), want);
    assert_eq!(plan["entries"][0]["tags_listed"], 24);
    assert_eq!(plan["entries"][0]["line"], 1);

    // Every blob once: runtime and devel share base and runtime layers, the license layer is
    // in every image, and two tags name the 12.5.0 image.
    let mut expected = BTreeMap::new();
    for f in [&runtime, &devel, &newer] {
        expected.extend(whole(f));
    }
    let carried = digests(&plan["plan"]["blobs"]);
    assert_eq!(carried, expected);
    assert_eq!(plan["blobs"], expected.len());
    assert_eq!(plan["bytes"], expected.values().sum::<u64>());
    let per_image: u64 = [&runtime, &devel, &newer, &newer, &devel]
        .iter()
        .map(|f| whole(f).values().sum::<u64>())
        .sum();
    assert!(plan["bytes"].as_u64().unwrap() < per_image);
    let first = &plan["images"][2];
    assert_eq!(first["digest"], runtime.top().digest.as_str());
    assert_eq!(
        first["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64/v8"])
    );
    assert_eq!(plan["assumed_blobs"], 0);

    // The text form says the same.
    let out = run_ok(&mut sandbox.cli(&config, &["sync", spec.to_str().unwrap(), "--plan"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("carry: 5 images, {} blobs", expected.len())),
        "{text}"
    );
    assert!(text.contains(&runtime.top().digest), "{text}");
    assert!(text.contains("assumed on the far side: nothing"), "{text}");
}

#[test]
fn regex_and_semver_select_from_any_repository() {
    let official = TestRegistry::start();
    let pusher = Pusher::new(&official);
    let app = fx("12.4.1", Flavor::Base);
    pusher.push_untagged(&app, "org/app");
    for t in [
        "v1.0.0",
        "v1.2.0",
        "v1.10.3",
        "v2.0.0",
        "1.3",
        "v1.2.0-rc.1",
        "latest",
        "v1.x",
    ] {
        pusher.push_manifest("org/app", t, app.top());
    }
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let spec = sandbox.write(
        "sync.toml",
        "[[images]]\nrepository = \"org/app\"\ntags = \"v.*\"\nsemver = \">=1.2, <2\"\n\n\
         [[images]]\nrepository = \"org/app\"\ntags = \"latest|1\\\\.3\"\n",
    );
    let plan = sync_plan(&sandbox, &config, &spec, &[]);
    assert_eq!(
        names(&plan),
        [
            "docker.io/org/app:1.3",
            "docker.io/org/app:latest",
            "docker.io/org/app:v1.10.3",
            "docker.io/org/app:v1.2.0",
        ]
    );
    // One image under four names: its blobs once.
    assert_eq!(digests(&plan["plan"]["blobs"]), whole(&app));

    // A repository the official registry does not have: not found (exit 4), with a hint.
    let spec = sandbox.write(
        "missing.toml",
        "[[images]]\nrepository = \"org/nothing\"\ntags = \".*\"\n",
    );
    let out = run_fails(&mut sandbox.cli(&config, &["sync", spec.to_str().unwrap(), "--plan"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("org/nothing") && err.contains("hint:"),
        "{err}"
    );
    // And a spec file that is not there: a usage error.
    let out = run_fails(&mut sandbox.cli(&config, &["sync", "absent.toml", "--plan"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn platforms_subset_carries_the_chosen_platform_with_upstreams_index_beside_it() {
    let official = TestRegistry::start();
    let runtime = fx("12.4.1", Flavor::Runtime);
    Pusher::new(&official).push(&runtime);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let spec = sandbox.write(
        "sync.toml",
        format!(
            "[[images]]\nreferences = [\"{REPO}:{}\"]\nplatforms = [\"linux/arm64\"]\n",
            runtime.tag
        ),
    );
    let plan = sync_plan(&sandbox, &config, &spec, &[]);
    let image = &plan["images"][0];
    // One platform of the index: its own manifest under the tag (a registry refuses
    // upstream's index without the other children), upstream's index carried beside it.
    let arm = runtime.platform(Arch::Arm64);
    assert_eq!(image["digest"], arm.manifest.digest.as_str());
    assert_eq!(image["upstream"]["digest"], runtime.top().digest.as_str());
    assert_eq!(image["upstream"]["carried_as"], "platform-manifest");
    // As the index records it: `linux/arm64` asks for any variant.
    assert_eq!(image["platforms"], serde_json::json!(["linux/arm64/v8"]));
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    expected.insert(arm.config.digest.clone(), arm.config.size());
    for l in &arm.layers {
        expected.insert(l.digest.clone(), l.size);
    }
    expected.insert(arm.manifest.digest.clone(), arm.manifest.size());
    expected.insert(runtime.top().digest.clone(), runtime.top().size());
    assert_eq!(digests(&plan["plan"]["blobs"]), expected);
    // Nothing of amd64 was downloaded but the license layer both arches share.
    let amd = runtime.platform(Arch::Amd64);
    let fetched: BTreeSet<String> = official.blob_downloads().into_iter().collect();
    for l in &amd.layers {
        if !arm.layers.iter().any(|a| a.digest == l.digest) {
            assert!(
                !fetched.contains(&l.digest),
                "amd64 layer {} fetched",
                l.digest
            );
        }
    }
}

/// What a registry (CNCF distribution, as installed) makes of an index whose children it
/// lacks: the reason a platforms subset is carried as its platform's manifest or a filtered
/// index, not as upstream's index (see cudaimg-store's `sets` module docs).
#[test]
fn a_registry_refuses_an_index_without_its_children() {
    let reg = TestRegistry::start();
    let pusher = Pusher::new(&reg);
    let runtime = fx("12.4.1", Flavor::Runtime);
    pusher.push_platform(REPO, runtime.platform(Arch::Arm64));
    let index = runtime.top();
    let response = common::push::http_client()
        .put(format!("{}/v2/{REPO}/manifests/{}", reg.url(), runtime.tag))
        .header("content-type", &index.media_type)
        .body(index.bytes.clone())
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("MANIFEST_BLOB_UNKNOWN"), "{body}");
    assert!(
        body.contains(&runtime.platform(Arch::Amd64).manifest.digest),
        "{body}"
    );
    // With every child there, the same bytes are accepted.
    pusher.push_platform(REPO, runtime.platform(Arch::Amd64));
    pusher.push_manifest(REPO, &runtime.tag, index);
}

/// A far-side registry behind htpasswd auth, holding `held` under `site/`, and its
/// inventory written by `cudaimg inventory` with credentials from docker's config.json.
fn far_inventory(held: &[&Fixture]) -> (TestRegistry, Sandbox, PathBuf) {
    let far = TestRegistry::start_with_basic_auth("site-admin", "f4r-s1de");
    let pusher = Pusher::new(&far);
    for f in held {
        pusher.push_as(f, &format!("site/{REPO}"), &f.tag);
    }
    let far_side = Sandbox::new();
    let config = far_side.write("mirrors.toml", "");
    let target = format!("{}/site", far.host());
    // Without credentials: refused, with how to log in.
    let out = run_fails(&mut far_side.cli(
        &config,
        &["inventory", "--registry", &target, "-o", "have.json"],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("docker login {}", far.host())),
        "{err}"
    );
    far_side.write_docker_config(&serde_json::json!({
        "auths": { far.host(): { "auth": common::b64("site-admin:f4r-s1de") } }
    }));
    let have = far_side.root().join("have.json");
    let out = run_ok(&mut far_side.cli(
        &config,
        &[
            "inventory",
            "--registry",
            &target,
            "-o",
            have.to_str().unwrap(),
        ],
    ));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("f4r-s1de"),
        "a password was printed"
    );
    (far, far_side, have)
}

#[test]
fn have_from_an_inventory_of_a_registry_with_htpasswd_auth_leaves_those_blobs_out() {
    let runtime = fx("12.4.1", Flavor::Runtime);
    let devel = fx("12.4.1", Flavor::Devel);
    let (far, _far_side, have) = far_inventory(&[&runtime]);
    let inv: Value = serde_json::from_slice(&std::fs::read(&have).unwrap()).unwrap();
    assert_eq!(inv["format"], "cudaimg-inventory/1");
    assert_eq!(inv["of"], format!("registry {}/site", far.host()));
    assert_eq!(digests(&inv["blobs"]), content(&runtime));
    let listed: Vec<&str> = inv["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    assert_eq!(listed, sorted, "an inventory is sorted");
    assert_eq!(
        inv["manifests"],
        serde_json::json!([{
            "name": format!("site/{REPO}:{}", runtime.tag),
            "digest": runtime.top().digest,
        }])
    );

    let official = TestRegistry::start();
    let pusher = Pusher::new(&official);
    pusher.push(&runtime);
    pusher.push(&devel);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let spec = sandbox.write(
        "sync.toml",
        "[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"12.4.1\"\nflavors = [\"runtime\", \"devel\"]\n",
    );
    let plan = sync_plan(
        &sandbox,
        &config,
        &spec,
        &["--have", have.to_str().unwrap()],
    );
    assert_eq!(names(&plan).len(), 2);
    let assumed = digests(&plan["plan"]["assumed"]);
    // What the far side holds and devel needs: all of runtime's configs and layers, as
    // devel is built FROM runtime... but for runtime's configs, which devel does not use.
    let needed: BTreeMap<String, u64> = whole(&devel).into_iter().chain(whole(&runtime)).collect();
    let held = content(&runtime);
    let want_assumed: BTreeMap<String, u64> = needed
        .iter()
        .filter(|(d, _)| held.contains_key(*d))
        .map(|(d, s)| (d.clone(), *s))
        .collect();
    assert_eq!(assumed, want_assumed);
    let want_carried: BTreeMap<String, u64> = needed
        .into_iter()
        .filter(|(d, _)| !held.contains_key(d))
        .collect();
    assert_eq!(digests(&plan["plan"]["blobs"]), want_carried);
    assert_eq!(plan["assumed_bytes"], want_assumed.values().sum::<u64>());
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(std::fs::read(&have).unwrap()))
    };
    assert_eq!(
        plan["plan"]["assumed_from"],
        serde_json::json!([{"type": "inventory", "sha256": sha, "of": format!("registry {}/site", far.host())}])
    );
    let out = run_ok(&mut sandbox.cli(
        &config,
        &[
            "sync",
            spec.to_str().unwrap(),
            "--plan",
            "--have",
            have.to_str().unwrap(),
        ],
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("assumed on the far side:"), "{text}");
    assert!(
        text.contains(&format!("the inventory of registry {}/site", far.host())),
        "{text}"
    );

    // An inventory of another format is refused before any network work, with a hint.
    let bad = sandbox.write(
        "old-have.json",
        r#"{"format":"cudaimg-inventory/0","of":"x","blobs":[],"manifests":[]}"#,
    );
    let out = run_fails(&mut sandbox.cli(
        &config,
        &[
            "sync",
            spec.to_str().unwrap(),
            "--plan",
            "--have",
            bad.to_str().unwrap(),
        ],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cudaimg-inventory/0")
            && err.contains("hint: give the file `cudaimg inventory"),
        "{err}"
    );
}

#[test]
fn since_an_earlier_bundle_and_after_one_new_tag_only_the_new_blobs_are_carried() {
    let official = TestRegistry::start();
    let pusher = Pusher::new(&official);
    let first = fx("12.4.1", Flavor::Runtime);
    pusher.push(&first);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let spec = sandbox.write(
        "sync.toml",
        "[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"12.4\"\nflavors = [\"runtime\"]\n",
    );
    let one = sync_plan(&sandbox, &config, &spec, &[]);
    assert_eq!(digests(&one["plan"]["blobs"]), whole(&first));
    // An earlier bundle as the bundle writer records it: its plan under "plan".
    let old = sandbox.root().join("bundle-1");
    std::fs::create_dir_all(&old).unwrap();
    let bundle_json = serde_json::to_vec(&serde_json::json!({
        "format": "cudaimg-bundle/1",
        "plan": one["plan"],
        "parts": [],
    }))
    .unwrap();
    std::fs::write(old.join("bundle.json"), &bundle_json).unwrap();

    // One new tag upstream.
    let second = fx("12.4.2", Flavor::Runtime);
    pusher.push(&second);
    let blobs_before = official.blob_downloads().len();
    let two = sync_plan(
        &sandbox,
        &config,
        &spec,
        &["--since", old.to_str().unwrap()],
    );
    assert_eq!(
        names(&two),
        hub(&[&first.tag, &second.tag]),
        "both tags are selected"
    );
    let old_blobs = whole(&first);
    let new_only: BTreeMap<String, u64> = whole(&second)
        .into_iter()
        .filter(|(d, _)| !old_blobs.contains_key(d))
        .collect();
    assert!(
        new_only.len() < whole(&second).len(),
        "the license layer is shared"
    );
    assert_eq!(digests(&two["plan"]["blobs"]), new_only);
    assert_eq!(digests(&two["plan"]["assumed"]), old_blobs);
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&bundle_json))
    };
    assert_eq!(
        two["plan"]["assumed_from"],
        serde_json::json!([{"type": "bundle", "sha256": sha, "name": "bundle-1"}])
    );
    // A plan reads manifests only: not one blob was fetched for it.
    let fetched = official.blob_downloads().len() - blobs_before;
    assert_eq!(fetched, 0);

    // A directory without a bundle.json is a usage error naming the file.
    let out = run_fails(&mut sandbox.cli(
        &config,
        &[
            "sync",
            spec.to_str().unwrap(),
            "--plan",
            "--since",
            sandbox.root().to_str().unwrap(),
        ],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bundle.json") && err.contains("hint:"),
        "{err}"
    );
}

#[test]
fn inventory_of_a_store_lists_what_it_holds() {
    let official = TestRegistry::start();
    let runtime = fx("12.4.1", Flavor::Runtime);
    Pusher::new(&official).push(&runtime);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    run_ok(&mut sandbox.cli(
        &config,
        &[
            "pull",
            "--all-platforms",
            &format!("{REPO}:{}", runtime.tag),
        ],
    ));
    let out = run_ok(&mut sandbox.cli(&config, &["inventory", "-o", "-"]));
    let inv: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inv["of"], "store");
    assert_eq!(digests(&inv["blobs"]), content(&runtime));
    assert_eq!(inv["manifests"][0]["digest"], runtime.top().digest.as_str());
}

#[test]
fn tag_lists_come_from_the_official_registry_and_from_a_mirror_only_when_it_is_out_of_reach() {
    let official = TestRegistry::start();
    let mirror = TestRegistry::start();
    let runtime = fx("12.4.1", Flavor::Runtime);
    let older = fx("12.4.0", Flavor::Runtime);
    Pusher::new(&official).push(&runtime);
    // The mirror still lists a tag the official registry deleted.
    Pusher::new(&mirror).push(&runtime);
    Pusher::new(&mirror).push(&older);
    let sandbox = Sandbox::new();
    let spec = sandbox.write(
        "sync.toml",
        "[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"12.4\"\n",
    );
    let config = sandbox.write_hub_config(&official.url(), &[&mirror.url()]);
    let plan = sync_plan(&sandbox, &config, &spec, &[]);
    assert_eq!(names(&plan), hub(&[&runtime.tag]));
    assert_eq!(
        plan["entries"][0]["source"],
        official.url().trim_end_matches('/')
    );
    assert_eq!(plan["warnings"], serde_json::json!([]));

    // The official registry out of reach: the mirror's list, with a warning.
    let other = Sandbox::new();
    let spec = other.write(
        "sync.toml",
        "[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"12.4\"\n",
    );
    let config = other.write_hub_config(&common::dead_endpoint(), &[&mirror.url()]);
    let plan = sync_plan(&other, &config, &spec, &[]);
    assert_eq!(names(&plan), hub(&[&older.tag, &runtime.tag]));
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains("came from the mirror") && warnings.contains("can lag"),
        "{warnings}"
    );
}

/// `sync --plan` reads manifests only and counts bytes from them; an entry that selects no
/// tag is a usage error naming the real values, unless `--allow-empty`.
#[test]
fn plan_reads_manifests_only_and_an_entry_selecting_nothing_is_an_error() {
    let official = TestRegistry::start();
    let runtime = fx("12.4.1", Flavor::Runtime);
    Pusher::new(&official).push(&runtime);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let spec = sandbox.write(
        "sync.toml",
        "[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"12.4\"\n",
    );
    let pushed = official.requests().len();
    let plan = sync_plan(&sandbox, &config, &spec, &[]);
    assert_eq!(digests(&plan["plan"]["blobs"]), whole(&runtime), "{plan:#}");
    assert_eq!(plan["bytes"], whole(&runtime).values().sum::<u64>());
    // The registry's (settled) log: every child manifest was read, and no blob.
    let log = &official.requests()[pushed..];
    for p in &runtime.platforms {
        assert!(
            log.iter().any(|r| r.method == "GET"
                && r.path
                    .ends_with(&format!("/manifests/{}", p.manifest.digest))),
            "the registry never served the child manifest {}: {log:?}",
            p.manifest.digest
        );
    }
    let blobs: Vec<_> = log
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .collect();
    assert!(blobs.is_empty(), "--plan downloaded blobs: {blobs:?}");
    // Nothing was stored for a plan.
    assert!(!sandbox
        .store_dir()
        .join("blobs/sha256")
        .join(
            runtime.platforms[0].layers[0]
                .digest
                .trim_start_matches("sha256:")
        )
        .exists());

    // `os = ["ubuntu2204"]` is no OS of the tags: exit 2 with the real one and the fix.
    let empty = sandbox.write(
        "empty.toml",
        "[[images]]\nrepository = \"nvidia/cuda\"\ncuda = \"12.4\"\nos = [\"ubuntu2204\"]\n",
    );
    let out = run_fails(&mut sandbox.cli(&config, &["sync", empty.to_str().unwrap(), "--plan"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("empty.toml:1")
            && err.contains("ubuntu22.04")
            && err.contains("--allow-empty"),
        "{err}"
    );
    let plan = sync_plan(&sandbox, &config, &empty, &["--allow-empty"]);
    assert_eq!(plan["images"], serde_json::json!([]), "{plan:#}");
    assert!(
        plan["warnings"].to_string().contains("matches none"),
        "{plan:#}"
    );
}
