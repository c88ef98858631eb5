//! Issue 15 item 9, the conveniences skopeo, crane and regctl users reach for: `--mirror`
//! with no file, `mirrors init`, `manifest` (byte-exact) and `digest` resolved with pull's
//! trust rules, `--creds` (never sent to a mirror) and `login` writing docker's
//! config.json, and shell completions. Real registries on loopback; no mocks.

use cudaimg_test_support as common;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use common::{dead_endpoint, run_fails, run_ok, Arch, CudaSpec, Fixture, FixtureStore, Flavor};
use common::{Pusher, Sandbox, TestRegistry};
use sha2::Digest as _;

fn fixture() -> Fixture {
    FixtureStore::shared().cuda(&CudaSpec::new("12.4.1", Flavor::Base))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `cudaimg --store STORE ARGS` with no `--config`: no mirrors.toml anywhere in the sandbox.
fn bare(sandbox: &Sandbox, args: &[&str]) -> Command {
    let mut cmd = sandbox.cudaimg();
    cmd.arg("--store").arg(sandbox.store_dir()).args(args);
    cmd
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

#[test]
fn manifest_and_digest_are_byte_exact_and_resolved_as_pull_does() {
    let f = fixture();
    let official = TestRegistry::start();
    let mirror = TestRegistry::start();
    Pusher::new(&official).push(&f);
    Pusher::new(&mirror).push(&f);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[&mirror.url()]);
    let top = f.top();

    // Byte-exact: the registry's bytes, no newline added; they hash to `digest`'s answer.
    let out = run_ok(&mut sandbox.cli(&config, &["manifest", &f.reference()]));
    assert_eq!(out.stdout, top.bytes);
    let digest = run_ok(&mut sandbox.cli(&config, &["digest", &f.reference()]));
    assert_eq!(text(&digest.stdout).trim(), top.digest);
    assert_eq!(sha256(&out.stdout), top.digest);

    // One platform's manifest, chosen from the index.
    let amd64 = &f.platform(Arch::Amd64).manifest;
    let out = run_ok(&mut sandbox.cli(
        &config,
        &["manifest", "--platform", "linux/amd64", &f.reference()],
    ));
    assert_eq!(out.stdout, amd64.bytes);
    let out = run_ok(&mut sandbox.cli(
        &config,
        &[
            "--json",
            "digest",
            "--platform",
            "linux/amd64",
            &f.reference(),
        ],
    ));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["digest"], amd64.digest.as_str());
    assert_eq!(v["resolved_by"], "official");

    // `--mirror` with no file at all; the official registry (Docker Hub here) out of reach:
    // the mirror's answer, with pull's warning, and refused under --require-upstream. (A
    // fresh sandbox: the first one's mirrors.toml is in its working directory.)
    let sandbox = Sandbox::new();
    let out = run_ok(&mut bare(
        &sandbox,
        &[
            "--json",
            "--mirror",
            &mirror.url(),
            "digest",
            &f.reference(),
        ],
    ));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["digest"], top.digest.as_str(), "{v}");
    assert_eq!(v["resolved_by"], "mirrors", "{v}");
    assert!(v["warnings"].to_string().contains("mirror-asserted"), "{v}");
    assert!(
        text(&out.stderr).contains("mirror-asserted"),
        "{}",
        text(&out.stderr)
    );
    let out = run_fails(&mut bare(
        &sandbox,
        &[
            "--mirror",
            &mirror.url(),
            "digest",
            "--require-upstream",
            &f.reference(),
        ],
    ));
    assert!(
        text(&out.stderr).contains("official"),
        "{}",
        text(&out.stderr)
    );
    // Nothing was stored by either command.
    assert!(!sandbox.store_dir().join("index.json").exists());

    // A bad --mirror is refused by name, with the fix.
    let out = run_fails(&mut bare(
        &sandbox,
        &["--mirror", "ftp://x", "digest", "a:b"],
    ));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("--mirror `ftp://x`") && err.contains("hint:"),
        "{err}"
    );
}

#[test]
fn mirrors_init_writes_a_starter_that_works_and_never_overwrites_without_force() {
    let f = fixture();
    let mirror = TestRegistry::start();
    Pusher::new(&mirror).push(&f);
    let sandbox = Sandbox::new();
    let out = run_ok(&mut bare(
        &sandbox,
        &["--mirror", &mirror.url(), "mirrors", "init"],
    ));
    // Issue 22 item 9: the user-wide file, not ./mirrors.toml, so every directory uses it.
    let path = sandbox.config_home().join("cudaimg/mirrors.toml");
    assert!(
        text(&out.stdout).contains(&format!("wrote {}", path.display()))
            && text(&out.stdout).contains("used from every directory"),
        "{}",
        text(&out.stdout)
    );
    assert!(!sandbox.root().join("mirrors.toml").exists());
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(
        written.contains(&format!("{{ url = \"{}\" }}", mirror.url())),
        "{written}"
    );
    // The README section it cites exists.
    let cited = written
        .split("README, \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the starter cites a README section");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme
            .lines()
            .any(|l| l.starts_with('#')
                && l.trim_start_matches('#').trim().trim_matches('`') == cited),
        "README has no section `{cited}`"
    );

    // It is found from another directory and used: the mirror answers with Docker Hub out
    // of reach.
    let elsewhere = sandbox.root().join("elsewhere/deeper");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = run_ok(bare(&sandbox, &["digest", &f.reference()]).current_dir(&elsewhere));
    assert_eq!(text(&out.stdout).trim(), f.top().digest);

    // A second init changes nothing without --force.
    std::fs::write(&path, "# mine\n").unwrap();
    let out = run_fails(&mut bare(&sandbox, &["mirrors", "init"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");
    run_ok(&mut bare(&sandbox, &["mirrors", "init", "--force"]));
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("[registries.\"docker.io\"]"));

    // `--here`: a project's own file, read before the user-wide one from this directory only.
    let out = run_ok(&mut bare(&sandbox, &["mirrors", "init", "--here"]));
    assert!(
        text(&out.stdout).contains("used from this directory only"),
        "{}",
        text(&out.stdout)
    );
    assert!(sandbox.root().join("mirrors.toml").is_file());
}

/// Issue 22 item 12: `mirrors add` edits the file runs read, keeps its comments, and is
/// checked as the file is.
#[test]
fn mirrors_add_edits_the_file_in_use_keeping_comments_and_is_used() {
    let f = fixture();
    let mirror = TestRegistry::start();
    Pusher::new(&mirror).push(&f);
    let sandbox = Sandbox::new();
    // No file at all: the user-wide one is created, and the next run uses it.
    let out = run_ok(&mut bare(&sandbox, &["mirrors", "add", &mirror.url()]));
    let path = sandbox.config_home().join("cudaimg/mirrors.toml");
    assert!(
        text(&out.stdout).contains(&path.display().to_string()),
        "{}",
        text(&out.stdout)
    );
    let out = run_ok(&mut bare(&sandbox, &["digest", &f.reference()]));
    assert_eq!(text(&out.stdout).trim(), f.top().digest);

    // A hand-written file: comments and order survive; `--first` goes before the rest.
    let hand = "# my mirrors\n[registries.\"docker.io\"]\n# the fast one\nmirrors = [\n    \"https://a.example\",  # kept\n]\n\n[registries.\"nvcr.io\"]\nmirrors = []\n";
    std::fs::write(&path, hand).unwrap();
    run_ok(&mut bare(
        &sandbox,
        &["mirrors", "add", "https://b.example"],
    ));
    run_ok(&mut bare(
        &sandbox,
        &["mirrors", "add", "--first", "--pull-only", &mirror.url()],
    ));
    run_ok(&mut bare(
        &sandbox,
        &[
            "mirrors",
            "add",
            "--insecure",
            "ghcr.io=https://g.example:5000",
        ],
    ));
    let edited = std::fs::read_to_string(&path).unwrap();
    for kept in [
        "# my mirrors",
        "# the fast one",
        "# kept",
        "[registries.\"nvcr.io\"]",
    ] {
        assert!(edited.contains(kept), "{kept}: {edited}");
    }
    let parsed: toml::Value = toml::from_str(&edited).unwrap_or_else(|e| panic!("{e}: {edited}"));
    let hub = parsed["registries"]["docker.io"]["mirrors"]
        .as_array()
        .unwrap();
    let urls: Vec<String> = hub
        .iter()
        .map(|m| {
            m.as_str()
                .map_or_else(|| m["url"].as_str().unwrap().to_owned(), str::to_owned)
        })
        .collect();
    assert_eq!(
        urls,
        [
            mirror.url().as_str(),
            "https://a.example",
            "https://b.example"
        ],
        "{edited}"
    );
    assert_eq!(
        hub[0]["capabilities"],
        toml::Value::Array(vec!["pull".into()])
    );
    let ghcr = &parsed["registries"]["ghcr.io"];
    assert_eq!(
        ghcr["endpoint"].as_str(),
        Some("https://ghcr.io"),
        "{edited}"
    );
    assert_eq!(
        ghcr["mirrors"][0]["insecure"].as_bool(),
        Some(true),
        "{edited}"
    );

    // Again: nothing changes, and it says so.
    let out = run_ok(&mut bare(
        &sandbox,
        &["mirrors", "add", "https://b.example/"],
    ));
    assert!(
        text(&out.stdout).contains("nothing changed"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);

    // Mistakes: a usage error naming the problem, and the file untouched.
    for (bad, says) in [
        ("ftp://m.example", "https://"),
        ("https://user:secret@m.example", "credentials"),
        ("not a host=https://m.example", "registry host"),
    ] {
        let out = run_fails(&mut bare(&sandbox, &["mirrors", "add", bad]));
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(says),
            "{bad}: {}",
            text(&out.stderr)
        );
        assert!(
            !text(&out.stderr).contains("secret"),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
    }
    // A broken file is named, not rewritten.
    std::fs::write(&path, "[registries.docker.io]\n").unwrap();
    let out = run_fails(&mut bare(
        &sandbox,
        &["mirrors", "add", "https://c.example"],
    ));
    assert!(
        text(&out.stderr).contains("mirrors.toml:1"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "[registries.docker.io]\n"
    );

    // A linked file (dotfiles in a repository) is edited where it lives; the link stays.
    let real = sandbox.root().join("dotfiles/mirrors.toml");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(&real, "# dotfile\n").unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&real, &path).unwrap();
    run_ok(&mut bare(
        &sandbox,
        &["mirrors", "add", "https://d.example"],
    ));
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    let dotfile = std::fs::read_to_string(&real).unwrap();
    assert!(
        dotfile.contains("# dotfile\n") && dotfile.contains("https://d.example"),
        "{dotfile}"
    );
}

fn login(sandbox: &Sandbox, host: &str, user: &str, password: &str) -> Output {
    let mut child = bare(sandbox, &["login", host, "-u", user, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn creds_and_login_reach_the_registry_but_never_a_mirror() {
    const SECRET: &str = "s3cr3t-Tok3n";
    let f = fixture();
    let private = TestRegistry::start_with_basic_auth("team", SECRET);
    Pusher::new(&private).push(&f);
    let image = format!("{}/{}", private.host(), f.reference());
    let sandbox = Sandbox::new();

    // Anonymous: refused by the registry.
    run_fails(&mut bare(&sandbox, &["digest", &image]));
    // --creds for this run.
    let creds = format!("team:{SECRET}");
    let out = run_ok(&mut bare(&sandbox, &["--creds", &creds, "digest", &image]));
    assert_eq!(text(&out.stdout).trim(), f.top().digest);

    // --creds never goes to a mirror: the same registry as a mirror of Docker Hub (official
    // out of reach) gets no credential, so it refuses.
    let config = sandbox.write_hub_config(&dead_endpoint(), &[&private.url()]);
    let out = run_fails(&mut sandbox.cli(&config, &["--creds", &creds, "digest", &f.reference()]));
    assert!(!text(&out.stderr).contains(SECRET));

    // login: the password on stdin only; docker's config.json gets it, the output does not.
    let out = run_fails(&mut bare(
        &sandbox,
        &["login", &private.host(), "-u", "team"],
    ));
    assert!(
        text(&out.stderr).contains("--password-stdin"),
        "{}",
        text(&out.stderr)
    );
    let out = login(&sandbox, &private.host(), "team", SECRET);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains(SECRET) && !text(&out.stderr).contains(SECRET));
    let path = sandbox.docker_config_dir().join("config.json");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    use base64::Engine as _;
    let auth = config["auths"][private.host()]["auth"].as_str().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .unwrap();
    assert_eq!(text(&decoded), format!("team:{SECRET}"));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // And cudaimg (and docker, skopeo) now find it.
    let out = run_ok(&mut bare(&sandbox, &["digest", &image]));
    assert_eq!(text(&out.stdout).trim(), f.top().digest);
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish_from_the_commands() {
    let sandbox = Sandbox::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = run_ok(&mut bare(&sandbox, &["completions", shell]));
        let script = text(&out.stdout);
        for command in ["pull", "manifest", "login", "completions"] {
            assert!(script.contains(command), "{shell}: no `{command}`");
        }
    }
    // The bash script is valid bash.
    let script = sandbox.write(
        "cudaimg.bash",
        run_ok(&mut bare(&sandbox, &["completions", "bash"])).stdout,
    );
    run_ok(Command::new("bash").arg("-n").arg(&script));
    let out = run_fails(&mut bare(&sandbox, &["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn inspect_text_shows_each_layer_with_its_diff_id() {
    let f = fixture();
    let official = TestRegistry::start();
    Pusher::new(&official).push(&f);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    run_ok(&mut sandbox.cli(
        &config,
        &["-q", "pull", "--platform", "linux/amd64", &f.reference()],
    ));
    let out = run_ok(&mut sandbox.cli(
        &config,
        &["inspect", "--platform", "linux/amd64", &f.reference()],
    ));
    let text = text(&out.stdout);
    let layers = &f.platform(Arch::Amd64).layers;
    for l in layers {
        assert!(
            text.lines().any(|line| line.contains(&l.digest)
                && line.ends_with(&format!("diff ID {}", l.diff_id))),
            "{} with {} not in:\n{text}",
            l.digest,
            l.diff_id
        );
    }
}

/// README's skopeo route for Docker-typed images (nvidia/cuda is schema2): an oci-archive.
#[test]
fn skopeo_reads_a_docker_typed_image_through_an_oci_archive_export() {
    let f = fixture();
    assert!(
        f.top().media_type.contains("docker"),
        "{}",
        f.top().media_type
    );
    let official = TestRegistry::start();
    Pusher::new(&official).push(&f);
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&official.url(), &[]);
    run_ok(&mut sandbox.cli(
        &config,
        &["-q", "pull", "--platform", "linux/amd64", &f.reference()],
    ));
    let archive = sandbox.root().join("cuda.tar");
    run_ok(&mut sandbox.cli(
        &config,
        &[
            "export",
            &f.reference(),
            "--format",
            "oci-archive",
            "-o",
            archive.to_str().unwrap(),
        ],
    ));
    let out = run_ok(sandbox.skopeo().args([
        "inspect",
        "--raw",
        &format!("oci-archive:{}", archive.display()),
    ]));
    assert_eq!(out.stdout, f.platform(Arch::Amd64).manifest.bytes);
    // And on to a registry, as README says.
    let dest = TestRegistry::start();
    run_ok(sandbox.skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci-archive:{}", archive.display()),
        &format!("docker://{}/nvidia/cuda:copied", dest.host()),
    ]));
    let out = run_ok(&mut bare(
        &sandbox,
        &["digest", &format!("{}/nvidia/cuda:copied", dest.host())],
    ));
    assert!(text(&out.stdout).starts_with("sha256:"));
}

/// `login` with a `credsStore` in docker's config.json goes through that helper, as docker
/// does, and the next run reads the credential back through it. The helper is a small
/// program speaking docker's credential-helper protocol (`store` / `get` on stdin/stdout).
#[test]
fn login_uses_the_credential_helper_docker_is_configured_with() {
    const SECRET: &str = "h3lper-S3cret";
    let f = fixture();
    let private = TestRegistry::start_with_basic_auth("team", SECRET);
    Pusher::new(&private).push(&f);
    let image = format!("{}/{}", private.host(), f.reference());
    let sandbox = Sandbox::new();
    let bin = sandbox.root().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let vault = sandbox.root().join("vault.json");
    let helper = sandbox.write(
        "bin/docker-credential-cudaimgtest",
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  store) cat > '{v}' ;;\n  get) read key; \
             [ -f '{v}' ] && cat '{v}' || {{ echo 'credentials not found in native keychain'; exit 1; }} ;;\n  \
             *) exit 1 ;;\nesac\n",
            v = vault.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    sandbox.write_docker_config(&serde_json::json!({ "credsStore": "cudaimgtest" }));
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    let mut child = bare(
        &sandbox,
        &["login", &private.host(), "-u", "team", "--password-stdin"],
    )
    .env("PATH", &path)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    write!(child.stdin.take().unwrap(), "{SECRET}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("docker-credential-cudaimgtest"),
        "{}",
        text(&out.stdout)
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&vault).unwrap()).unwrap();
    assert_eq!(stored["ServerURL"], private.host());
    assert_eq!(stored["Username"], "team");
    assert_eq!(stored["Secret"], SECRET);
    // Not written into config.json itself.
    let config = std::fs::read_to_string(sandbox.docker_config_dir().join("config.json")).unwrap();
    assert!(
        !config.contains("auths") && !config.contains(SECRET),
        "{config}"
    );
    // Read back through the helper.
    let out = run_ok(bare(&sandbox, &["digest", &image]).env("PATH", &path));
    assert_eq!(text(&out.stdout).trim(), f.top().digest);
}

/// `script` runs `cudaimg ARGS` on a pseudo-terminal; each `(wait_for, answer)` is typed once
/// the terminal shows `wait_for`. Returns the terminal's transcript and the exit status.
fn on_a_terminal(
    sandbox: &Sandbox,
    args: &[&str],
    dialogue: &[(&str, &str)],
) -> (String, std::process::ExitStatus) {
    use std::io::Read as _;
    use std::sync::{Arc, Mutex};
    let line = std::iter::once(common::cudaimg_binary().display().to_string())
        .chain(["--store".into(), sandbox.store_dir().display().to_string()])
        .chain(args.iter().map(|a| (*a).to_owned()))
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = sandbox
        .command("script")
        .args(["-qefc", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let mut stdin = child.stdin.take().unwrap();
    for (wait_for, answer) in dialogue {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !seen.lock().unwrap().contains(wait_for) {
            assert!(
                std::time::Instant::now() < deadline,
                "no `{wait_for}` on the terminal: {}",
                seen.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        write!(stdin, "{answer}\r").unwrap();
        stdin.flush().unwrap();
    }
    let status = child.wait().unwrap();
    drop(stdin);
    reader.join().unwrap();
    let transcript = seen.lock().unwrap().clone();
    (transcript, status)
}

/// Issue 22 item 12 and issue 23 item 14: `login` on a terminal asks for the user and the
/// password (not echoed), `logout` removes the credential, a user name with `:` is refused,
/// and a linked config.json stays a link.
#[test]
fn login_asks_on_a_terminal_logout_removes_and_links_and_colons_are_handled() {
    const SECRET: &str = "tty-S3cret";
    let f = fixture();
    let private = TestRegistry::start_with_basic_auth("team", SECRET);
    Pusher::new(&private).push(&f);
    let image = format!("{}/{}", private.host(), f.reference());
    let sandbox = Sandbox::new();
    // A config.json kept elsewhere and linked, as dotfiles are.
    let real = sandbox.root().join("dotfiles/docker.json");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(&real, "{\"credsStore\": \"\"}\n").unwrap();
    std::fs::create_dir_all(sandbox.docker_config_dir()).unwrap();
    let link = sandbox.docker_config_dir().join("config.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let (transcript, status) = on_a_terminal(
        &sandbox,
        &["login", &private.host()],
        &[("Username for", "team"), ("Password for", SECRET)],
    );
    assert!(status.success(), "{transcript}");
    assert!(
        transcript.contains("stored the credential of team"),
        "{transcript}"
    );
    assert!(
        !transcript.contains(SECRET),
        "the password was echoed: {transcript}"
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read_to_string(&real).unwrap().contains("auths"));
    // The stored credential works.
    run_ok(&mut bare(
        &sandbox,
        &["pull", "--platform", "linux/amd64", &image],
    ));

    // logout: gone from the file (the link kept), and pulls are refused again.
    let out = run_ok(&mut bare(&sandbox, &["logout", &private.host()]));
    assert!(
        text(&out.stdout).contains("removed the credential"),
        "{}",
        text(&out.stdout)
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&real).unwrap()).unwrap();
    assert_eq!(config["auths"], serde_json::json!({}), "{config}");
    assert_eq!(config["credsStore"], "", "other keys are kept: {config}");
    let out = run_ok(&mut bare(&sandbox, &["logout", &private.host()]));
    assert!(
        text(&out.stdout).contains("nothing changed"),
        "{}",
        text(&out.stdout)
    );
    let out = run_fails(&mut bare(&sandbox, &["manifest", &image]));
    assert_ne!(out.status.code(), Some(0));

    // A user name with `:` would read back as another user: refused, nothing written.
    let before = std::fs::read(&real).unwrap();
    let out = login(&sandbox, &private.host(), "te:am", SECRET);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("`:`"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&real).unwrap(), before);
}
