//! More of the pull suite: authentication (Basic through docker's config.json, Bearer),
//! the official endpoint's authority, multi-reference pulls, and what the store holds
//! afterwards (verify and repair, hostile or corrupt contents, missing blobs, read-only
//! commands).

use super::*;

#[test]
fn basic_auth_uses_docker_config_credentials_and_never_prints_them() {
    let official = TestRegistry::start_with_basic_auth("cuda-user", "s3cr3t-pw");
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let reference = fx.reference();

    let out = run_fails(&mut cli(&sandbox, &config, &["-v", "pull", &reference]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("docker login {}", official.host())),
        "{err}"
    );

    use cudaimg_test_support::b64 as encode;
    sandbox.write_docker_config(&serde_json::json!({
        "auths": { official.host(): { "auth": encode("cuda-user:s3cr3t-pw") } }
    }));
    let out = run_ok(&mut cli(
        &sandbox,
        &config,
        &[
            "-v",
            "--json",
            "pull",
            "--platform",
            "linux/amd64",
            &reference,
        ],
    ));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("s3cr3t-pw"), "a password was printed: {all}");

    // A credential helper named in credHelpers is used too.
    let helper_dir = sandbox.root().join("bin");
    std::fs::create_dir_all(&helper_dir).unwrap();
    let helper = helper_dir.join("docker-credential-cudaimgtest");
    std::fs::write(
        &helper,
        "#!/bin/sh\nread host\necho \"{\\\"ServerURL\\\":\\\"$host\\\",\\\"Username\\\":\\\"cuda-user\\\",\\\"Secret\\\":\\\"s3cr3t-pw\\\"}\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    sandbox.write_docker_config(
        &serde_json::json!({ "credHelpers": { official.host(): "cudaimgtest" } }),
    );
    let store2 = sandbox.root().join("store2");
    let mut cmd = sandbox.cudaimg();
    let path = format!(
        "{}:{}",
        helper_dir.display(),
        std::env::var("PATH").unwrap()
    );
    cmd.env("PATH", path)
        .arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(&store2);
    cmd.args(["pull", "--platform", "linux/amd64", &reference]);
    run_ok(&mut cmd);
}

#[test]
fn bearer_token_flow_anonymous_and_with_credentials() {
    let tokens = TokenServer::start("tok-user", "tok-pass");
    let official = TestRegistry::start_with_token_auth(&tokens);
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official)
        .with_basic_auth("tok-user", "tok-pass")
        .push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let reference = fx.reference();
    use cudaimg_test_support::b64 as encode;
    sandbox.write_docker_config(&serde_json::json!({
        "auths": { official.host(): { "auth": encode("tok-user:tok-pass") } }
    }));
    let pushed = tokens.requests().len();
    let r = pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/amd64", &reference],
    );
    assert_eq!(r["digest"], fx.platform(Arch::Amd64).manifest.digest);
    // The credentials went to the token realm, with the registry's service and a pull scope.
    let reqs = tokens.requests()[pushed..].to_vec();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(r.scopes, ["repository:nvidia/cuda:pull"], "{r:?}");
        assert!(r.service.is_some(), "{r:?}");
        assert!(
            r.authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Basic ")),
            "{r:?}"
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    // One token served the whole pull: it is cached per scope.
    assert_eq!(reqs.len(), 1, "{reqs:?}");

    // Without credentials this token service refuses, and the error says how to log in.
    let fresh = Sandbox::new();
    let config = fresh.write_hub_config(&official.url(), &[]);
    let out = run_fails(&mut cli(
        &fresh,
        &config,
        &["pull", "--platform", "linux/amd64", &reference],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused anonymous access") && err.contains("docker login"),
        "{err}"
    );
}

#[test]
fn anonymous_bearer_tokens_like_docker_hub() {
    let tokens = TokenServer::start_anonymous();
    let official = TestRegistry::start_with_token_auth(&tokens);
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let pushed = tokens.requests().len();
    let r = pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/amd64", &fx.reference()],
    );
    assert_eq!(r["digest"], fx.platform(Arch::Amd64).manifest.digest);
    let reqs = tokens.requests()[pushed..].to_vec();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0].authorization, None,
        "credentials were sent though none exist"
    );
}

#[test]
fn the_official_endpoint_listed_as_a_mirror_keeps_its_authority() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[&official.url(), &official.url()]);
    let r = pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/amd64", &fx.reference()],
    );
    assert_eq!(r["resolved_by"], "official");
    assert_eq!(
        r["sources"].as_array().unwrap().len(),
        1,
        "{}",
        r["sources"]
    );
}

#[test]
fn verify_repair_removes_corrupt_blobs_so_a_pull_fetches_them_again() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let args = ["--platform", "linux/amd64", &fx.reference()];
    pull_json(&sandbox, &config, &args);
    let layer = &fx.platform(Arch::Amd64).layers[0];
    let path = sandbox
        .store_dir()
        .join("blobs/sha256")
        .join(&layer.digest[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    // A directory where a blob should be: reported, and the check goes on.
    let bogus = "e".repeat(64);
    std::fs::create_dir(sandbox.store_dir().join("blobs/sha256").join(&bogus)).unwrap();

    let out = run_fails(&mut cli(&sandbox, &config, &["verify"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("sha256:{bogus} cannot be read")),
        "{err}"
    );
    assert!(
        err.contains(&format!("blob {} is corrupt", layer.digest)),
        "{err}"
    );
    assert!(err.contains("--repair"), "{err}");

    std::fs::remove_dir(sandbox.store_dir().join("blobs/sha256").join(&bogus)).unwrap();
    let out = run_fails(&mut cli(&sandbox, &config, &["verify", "--repair"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed"));
    let r = pull_json(&sandbox, &config, &args);
    assert_eq!(r["bytes_downloaded"], layer.size);
    run_ok(&mut cli(&sandbox, &config, &["verify"]));
}

#[test]
fn read_only_commands_never_create_a_store() {
    let sandbox = Sandbox::new();
    let missing = sandbox.root().join("typo");
    for args in [vec!["verify"], vec!["inspect", RUNTIME]] {
        let mut cmd = sandbox.cudaimg();
        cmd.arg("--store").arg(&missing).args(&args);
        let out = run_fails(&mut cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {err}");
        assert!(err.contains("no store at"), "{err}");
    }
    let mut cmd = sandbox.cudaimg();
    cmd.arg("--store").arg(&missing).args(["--json", "images"]);
    assert_eq!(run_ok(&mut cmd).stdout, b"[]\n");
    assert!(!missing.exists(), "a read-only command created the store");
}

#[test]
fn images_survives_a_hostile_index_and_marks_broken_entries() {
    let sandbox = Sandbox::new();
    let store = sandbox.store_dir();
    std::fs::create_dir_all(store.join("blobs/sha256")).unwrap();
    std::fs::write(
        store.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        store.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[{"mediaType":"m","digest":"sha256:aéé","size":3,
            "annotations":{"org.opencontainers.image.ref.name":"x/y:z"}}]}"#,
    )
    .unwrap();
    let mut cmd = sandbox.cudaimg();
    cmd.arg("--store").arg(&store).arg("images");
    let out = run_ok(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("x/y:z") && text.contains("BROKEN"), "{text}");
}

#[test]
fn a_multi_reference_pull_goes_past_a_failure_and_exits_with_its_code() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let out = run_fails(&mut cli(
        &sandbox,
        &config,
        &[
            "pull",
            "--platform",
            "linux/amd64",
            "nvidia/cuda:0.0-nope",
            &fx.reference(),
        ],
    ));
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let idx = index_json(&sandbox);
    assert_eq!(
        idx["manifests"].as_array().unwrap().len(),
        1,
        "the second reference was not pulled"
    );
}

#[test]
fn an_explicit_platform_a_single_platform_image_lacks_is_an_error() {
    let official = TestRegistry::start();
    let single = FixtureStore::shared().cuda(
        &CudaSpec::new("12.4.1", Flavor::Base)
            .arches(&[Arch::Arm64])
            .without_index(),
    );
    Pusher::new(&official).push(&single);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let out = run_fails(&mut cli(
        &sandbox,
        &config,
        &["pull", "--platform", "linux/amd64", &single.reference()],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("linux/arm64"), "{err}");
    // Without --platform it is pulled, with a warning, as docker does.
    let r = pull_json(&sandbox, &config, &[&single.reference()]);
    assert_eq!(r["platform"], "linux/arm64/v8");
}

#[test]
fn a_dead_mirror_is_remembered_across_the_references_of_one_pull() {
    let official = TestRegistry::start();
    let base = fixture(Flavor::Base, MediaTypes::Docker);
    let runtime = fixture(Flavor::Runtime, MediaTypes::Docker);
    Pusher::new(&official).push(&base);
    Pusher::new(&official).push(&runtime);
    let sandbox = Sandbox::new();
    let dead = dead_endpoint();
    let config = sandbox.write_hub_config(&official.url(), &[&dead]);
    let out = run_ok(&mut cli(
        &sandbox,
        &config,
        &[
            "--json",
            "pull",
            "--platform",
            "linux/amd64",
            &base.reference(),
            &runtime.reference(),
        ],
    ));
    let reports: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2);
    assert!(
        reports[0]["warnings"].to_string().contains(&dead),
        "{}",
        reports[0]["warnings"]
    );
    // Still in backoff for the second reference: not asked again, so nothing to report.
    assert!(
        !reports[1]["warnings"].to_string().contains(&dead),
        "{}",
        reports[1]["warnings"]
    );
}

#[test]
fn a_blob_flipped_in_place_fails_export_until_pull_verify_existing_fetches_it_again() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let args = ["--platform", "linux/amd64", &fx.reference()];
    pull_json(&sandbox, &config, &args);
    let layer = fx
        .platform(Arch::Amd64)
        .layers
        .iter()
        .max_by_key(|l| l.size)
        .unwrap();
    let path = sandbox
        .store_dir()
        .join("blobs/sha256")
        .join(&layer.digest[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();

    let file = sandbox.root().join("out.tar");
    let out = run_fails(cli(&sandbox, &config, &["export", &fx.reference(), "-o"]).arg(&file));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("blob {}", layer.digest)), "{err}");
    assert!(err.contains("docker.io/nvidia/cuda:"), "{err}");
    assert!(
        err.contains("hint:") && err.contains("cudaimg verify --repair"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(sandbox.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("out"))
        .collect();
    assert!(left.is_empty(), "export left {left:?}");
    // To stdout: the archive stops short, without the end-of-archive blocks.
    let out = run_fails(&mut cli(
        &sandbox,
        &config,
        &["export", &fx.reference(), "-o", "-"],
    ));
    assert_eq!(out.status.code(), Some(3));
    assert!(
        !out.stdout.ends_with(&[0u8; 1024]),
        "a failed export ended like a whole archive"
    );

    // A plain pull trusts the stored size; --verify-existing re-hashes and fetches again.
    let r = pull_json(&sandbox, &config, &args);
    assert_eq!(r["bytes_downloaded"], 0, "{r}");
    let r = pull_json(
        &sandbox,
        &config,
        &[
            "--verify-existing",
            "--platform",
            "linux/amd64",
            &fx.reference(),
        ],
    );
    assert_eq!(r["bytes_downloaded"], layer.size, "{r}");
    assert!(
        r["warnings"].to_string().contains(&layer.digest),
        "{}",
        r["warnings"]
    );
    assert_eq!(stored_blob(&sandbox, &layer.digest), layer.bytes());
    run_ok(&mut cli(&sandbox, &config, &["verify"]));
    run_ok(cli(&sandbox, &config, &["export", &fx.reference(), "-o"]).arg(&file));
}

#[test]
fn verify_reports_a_linked_blob_and_repair_removes_the_link_not_its_target() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    let args = ["--platform", "linux/amd64", &fx.reference()];
    pull_json(&sandbox, &config, &args);
    let layer = &fx.platform(Arch::Amd64).layers[0];
    let blob = sandbox
        .store_dir()
        .join("blobs/sha256")
        .join(&layer.digest[7..]);
    // The right bytes, but through a link: still not a blob cudaimg stored.
    let outside = sandbox.root().join("outside-blob");
    std::fs::rename(&blob, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &blob).unwrap();
    let partial = sandbox.store_dir().join("ingest/x.partial");
    std::os::unix::fs::symlink(&outside, &partial).unwrap();

    let out = run_fails(&mut cli(&sandbox, &config, &["verify"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "blobs/sha256/{}` is a symbolic link",
            &layer.digest[7..]
        )),
        "{err}"
    );
    assert!(
        err.contains("`ingest/x.partial` is a symbolic link"),
        "{err}"
    );

    let out = run_fails(&mut cli(&sandbox, &config, &["verify", "--repair"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("removed it (not its target)"), "{err}");
    assert!(std::fs::symlink_metadata(&blob).is_err(), "the link stayed");
    assert!(
        std::fs::symlink_metadata(&partial).is_err(),
        "the link stayed"
    );
    assert_eq!(std::fs::read(&outside).unwrap(), layer.bytes());

    let r = pull_json(&sandbox, &config, &args);
    assert_eq!(r["bytes_downloaded"], layer.size, "{r}");
    run_ok(&mut cli(&sandbox, &config, &["verify"]));
}

#[test]
fn verify_of_an_index_that_is_not_json_exits_3_and_says_how_to_recover() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/amd64", &fx.reference()],
    );
    let index = sandbox.store_dir().join("index.json");
    std::fs::write(&index, b"this is not JSON\n").unwrap();

    let out = run_fails(&mut cli(&sandbox, &config, &["verify"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("`{}` cannot be read", index.display()))
            && err.contains("not a valid OCI index"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "hint: `index.json` only lists the stored names: move it aside (`mv {}",
            index.display()
        )),
        "{err}"
    );

    // The fix it names works: the pull finds every blob stored and fetches only manifests.
    std::fs::rename(&index, sandbox.store_dir().join("index.json.broken")).unwrap();
    let r = pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/amd64", &fx.reference()],
    );
    assert_eq!(r["bytes_downloaded"], 0, "{r}");
    run_ok(&mut cli(&sandbox, &config, &["verify"]));
}

#[test]
fn inspect_and_export_of_an_image_whose_manifest_is_missing_say_so_and_how_to_fix_it() {
    let official = TestRegistry::start();
    let fx = fixture(Flavor::Base, MediaTypes::Docker);
    Pusher::new(&official).push(&fx);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    pull_json(
        &sandbox,
        &config,
        &["--platform", "linux/arm64", &fx.reference()],
    );
    let manifest = &fx.platform(Arch::Arm64).manifest.digest;
    std::fs::remove_file(
        sandbox
            .store_dir()
            .join("blobs/sha256")
            .join(&manifest[7..]),
    )
    .unwrap();
    let name = format!("docker.io/{}", fx.reference());
    let file = sandbox.root().join("image.tar");
    for args in [
        vec!["inspect", fx.reference().as_str()],
        vec![
            "export",
            fx.reference().as_str(),
            "-o",
            file.to_str().unwrap(),
        ],
    ] {
        let out = run_fails(&mut cli(&sandbox, &config, &args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "the store names `{name}` but its manifest blob {manifest} is missing"
            )),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("`cudaimg verify`")
                && err.contains(&format!("`cudaimg pull --platform linux/arm64/v8 {name}`")),
            "{args:?}: {err}"
        );
        assert!(!err.contains("os error"), "{args:?}: {err}");
    }
    assert!(!file.exists());
    // And that pull does fetch it again.
    pull_json(&sandbox, &config, &["--platform", "linux/arm64", &name]);
    run_ok(&mut cli(&sandbox, &config, &["inspect", &fx.reference()]));
}
