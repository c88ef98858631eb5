//! `serve --htpasswd`: access for a LAN, with real clients logging in. skopeo with
//! `--src-creds` (Basic, and the token flow over TLS), Docker 20.10's `docker login` and
//! `docker pull` in both modes, and cudaimg's own `pull` with credentials from docker's
//! config.json through the server as a mirror. Witnesses: the clients' own results and
//! serve's access log (which user each request was served for, and that no password shows).

use super::*;

use std::process::Output;

use common::{b64, connect_from, run_fails};

const USER: &str = "alice";
const PASS: &str = "s3cret-for-the-lab";

/// An htpasswd file with `alice` (bcrypt, `$2y$` as `htpasswd -B` writes) and `bob`.
fn htpasswd(sandbox: &Sandbox) -> PathBuf {
    let entry = |user: &str, pass: &str| {
        let hash = bcrypt::hash_with_result(pass, 5)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        format!("{user}:{hash}\n")
    };
    let text = format!(
        "# the lab\n{}{}",
        entry(USER, PASS),
        entry("bob", "builder")
    );
    sandbox.write("htpasswd", text)
}

/// Polls serve's log until a line holds every one of `needles`, or fails after 20 s.
fn wait_for_line(s: &Served, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = s.log();
        if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needles:?} in serve's log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request with Basic credentials from the loopback address `from`; the status and head.
fn get_from(s: &Served, from: [u8; 4], target: &str, user: &str, pass: &str) -> (u16, String) {
    let mut c = connect_from(from.into(), &s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = b64(&format!("{user}:{pass}"));
    c.write_all(
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut all = Vec::new();
    let _ = c.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

fn skopeo_copy(sandbox: &Sandbox, src: &str, creds: Option<&str>, dest: &Path) -> Output {
    let mut cmd = sandbox.skopeo();
    cmd.args([
        "copy",
        "-q",
        "--src-tls-verify=false",
        "--override-arch",
        "amd64",
    ]);
    if let Some(c) = creds {
        cmd.args(["--src-creds", c]);
    }
    cmd.arg(src)
        .arg(format!("dir:{}", dest.display()))
        .output()
        .unwrap()
}

/// skopeo refused: it failed, and said the server wanted a login.
fn assert_refused(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success(), "{what}: skopeo copied");
    assert!(
        err.contains("unauthorized") || err.contains("authentication required"),
        "{what}: {err}"
    );
}

/// skopeo copied the amd64 image: every layer is there with its digest.
fn assert_copied(out: &Output, dir: &Path, f: &Filled) {
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for l in &f.fx.platform(Arch::Amd64).layers {
        let bytes = std::fs::read(dir.join(l.digest.strip_prefix("sha256:").unwrap())).unwrap();
        assert_eq!(sha256_digest(&bytes), l.digest);
    }
}

#[test]
fn serve_basic_auth_lets_skopeo_in_with_credentials_only_and_limits_failed_logins() {
    let f = filled(runtime());
    let file = htpasswd(&f.sandbox);
    let s = Served::start(&f.sandbox, &["--htpasswd", file.to_str().unwrap()]);
    let (st, head, body) = s.get("/v2/", "");
    assert_eq!((st, error_code(&body)), (401, "UNAUTHORIZED".into()));
    assert_eq!(
        header(&head, "WWW-Authenticate"),
        Some("Basic realm=\"cudaimg\"")
    );

    let src = format!("docker://{}/nvidia/cuda:{}", s.addr, f.fx.tag);
    let root = f.sandbox.root();
    assert_refused(
        &skopeo_copy(&f.sandbox, &src, None, &root.join("a")),
        "no creds",
    );
    let wrong = format!("{USER}:not-the-password");
    assert_refused(
        &skopeo_copy(&f.sandbox, &src, Some(&wrong), &root.join("b")),
        "wrong creds",
    );
    wait_for_line(&s, &["failed login from 127.0.0.1 as `alice`"]);
    let creds = format!("{USER}:{PASS}");
    let dir = root.join("c");
    assert_copied(&skopeo_copy(&f.sandbox, &src, Some(&creds), &dir), &dir, &f);
    let layer = f.fx.largest_layer(Arch::Amd64);
    wait_for_line(
        &s,
        &[
            &format!("GET /v2/nvidia/cuda/blobs/{} 200", layer.digest),
            "user=alice",
        ],
    );

    // Failed logins from 127.0.0.2: refused with 429 once there are 10, even with the right
    // password, while 127.0.0.3 still gets in.
    for i in 0..10 {
        let (st, text) = get_from(&s, [127, 0, 0, 2], "/v2/", USER, &format!("guess{i}"));
        assert_eq!(st, 401, "guess {i}: {text}");
    }
    let (st, text) = get_from(&s, [127, 0, 0, 2], "/v2/", USER, PASS);
    assert_eq!(st, 429, "{text}");
    let retry: u64 = header(&text, "Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{text}");
    assert_eq!(get_from(&s, [127, 0, 0, 3], "/v2/", USER, PASS).0, 200);
    assert_eq!(get_from(&s, [127, 0, 0, 3], "/v2/", "nobody", PASS).0, 401);
    wait_for_line(&s, &["10 failed logins from 127.0.0.2"]);
    wait_for_line(
        &s,
        &["failed login from 127.0.0.3 as a user the htpasswd file does not name"],
    );
    wait_for_line(&s, &["GET /v2/ 429"]);
    assert!(
        !s.log().contains(PASS),
        "a password was logged:\n{}",
        s.log()
    );
    assert!(
        !s.log().contains("guess"),
        "a password was logged:\n{}",
        s.log()
    );
}

#[test]
fn serve_token_auth_over_tls_lets_skopeo_in_through_its_own_token_endpoint() {
    let f = filled(runtime());
    let file = htpasswd(&f.sandbox);
    let (cert, key) = test_cert(&f.sandbox);
    let s = Served::start(
        &f.sandbox,
        &[
            "--htpasswd",
            file.to_str().unwrap(),
            "--auth",
            "token",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let src = format!("docker://{}/nvidia/cuda:{}", s.addr, f.fx.tag);
    let root = f.sandbox.root();
    assert_refused(
        &skopeo_copy(&f.sandbox, &src, None, &root.join("a")),
        "no creds",
    );
    wait_for_line(&s, &["GET /v2/ 401"]);
    let wrong = format!("{USER}:not-the-password");
    assert_refused(
        &skopeo_copy(&f.sandbox, &src, Some(&wrong), &root.join("b")),
        "wrong creds",
    );
    wait_for_line(&s, &["GET /token?", " 401 "]);
    let creds = format!("{USER}:{PASS}");
    let dir = root.join("c");
    assert_copied(&skopeo_copy(&f.sandbox, &src, Some(&creds), &dir), &dir, &f);
    // skopeo took a token from /token and used it for the blobs.
    wait_for_line(
        &s,
        &["GET /token?", "service=cudaimg", " 200 ", "user=alice"],
    );
    let layer = f.fx.largest_layer(Arch::Amd64);
    wait_for_line(
        &s,
        &[
            &format!("GET /v2/nvidia/cuda/blobs/{} 200", layer.digest),
            "user=alice",
        ],
    );
    assert!(
        !s.log().contains(PASS),
        "a password was logged:\n{}",
        s.log()
    );
}

#[test]
fn serve_token_challenge_names_its_realm_and_scope_and_refuses_forged_tokens() {
    let f = filled(runtime());
    let file = htpasswd(&f.sandbox);
    let s = Served::start(
        &f.sandbox,
        &["--htpasswd", file.to_str().unwrap(), "--auth", "token"],
    );
    let (st, head, _) = s.get("/v2/", "");
    assert_eq!(st, 401);
    assert_eq!(
        header(&head, "WWW-Authenticate"),
        Some("Bearer realm=\"http://x/token\",service=\"cudaimg\"")
    );
    let (st, head, _) = s.get(&format!("/v2/nvidia/cuda/manifests/{}", f.fx.tag), "");
    assert_eq!(st, 401);
    assert!(
        header(&head, "WWW-Authenticate")
            .unwrap()
            .ends_with(",scope=\"repository:nvidia/cuda:pull\""),
        "{head}"
    );
    // A token from /token opens the manifest; the same with one byte changed does not.
    let basic = format!(
        "Authorization: Basic {}\r\n",
        b64(&format!("{USER}:{PASS}"))
    );
    let (st, _, body) = s.get(
        "/token?service=cudaimg&scope=repository:nvidia/cuda:pull",
        &basic,
    );
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    assert_eq!(v["expires_in"], 300);
    let target = format!("/v2/nvidia/cuda/manifests/{}", f.fx.tag);
    let (st, _, body) = s.get(&target, &format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(st, 200);
    assert_eq!(body, f.fx.index.as_ref().unwrap().bytes);
    let mut forged = token.into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (st, head, _) = s.get(&target, &format!("Authorization: Bearer {forged}\r\n"));
    assert_eq!(st, 401);
    assert!(header(&head, "WWW-Authenticate")
        .unwrap()
        .contains("invalid_token"));
    // Basic credentials are for /token only in this mode.
    assert_eq!(s.get(&target, &basic).0, 401);
    let (st, _, _) = s.get(
        "/token?service=cudaimg",
        "Authorization: Basic Ym9iOm5vcGU=\r\n",
    );
    assert_eq!(st, 401);
    wait_for_line(&s, &["failed login from 127.0.0.1 as `bob`"]);
}

#[test]
fn serve_bad_htpasswd_is_a_clear_error_naming_the_file_and_line() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_hub_config(&dead_endpoint(), &[]);
    let bcrypt_line = {
        let h = bcrypt::hash_with_result("x", 4).unwrap();
        format!("alice:{}", h.format_for_version(bcrypt::Version::TwoY))
    };
    for (text, expect, hint) in [
        (
            format!("# users\n{bcrypt_line}\nbob:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n"),
            "line 3: the password of `bob` is an Apache MD5 hash",
            "htpasswd -B",
        ),
        (
            format!("{bcrypt_line}\nbob\n"),
            "line 2: no `:`",
            "USER:HASH",
        ),
        ("# nobody yet\n".to_owned(), "names no user", "USER:HASH"),
    ] {
        let file = sandbox.write("bad-htpasswd", text);
        let out = run_fails(&mut sandbox.cli(
            &config,
            &[
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--htpasswd",
                file.to_str().unwrap(),
            ],
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(file.to_str().unwrap()), "{err}");
        assert!(err.contains(expect), "{err}");
        assert!(err.contains(hint), "{err}");
    }
    let missing = sandbox.root().join("no-such-htpasswd");
    let out =
        run_fails(&mut sandbox.cli(&config, &["serve", "--htpasswd", missing.to_str().unwrap()]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read the htpasswd file"), "{err}");
    // `--auth` without users to check is refused by the argument parser.
    let out = run_fails(&mut sandbox.cli(&config, &["serve", "--auth", "token"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--htpasswd"));
}

#[test]
fn serve_warns_when_passwords_would_cross_the_network_in_plain_http() {
    let f = filled(runtime());
    let file = htpasswd(&f.sandbox);
    let s = Served::start_at(
        &f.sandbox,
        "0.0.0.0:0",
        &["--htpasswd", file.to_str().unwrap()],
    );
    wait_for_line(
        &s,
        &["warning: passwords will cross the network in the clear"],
    );
    let quiet = Served::start(&f.sandbox, &["--htpasswd", file.to_str().unwrap()]);
    assert_eq!(quiet.get("/v2/", "").0, 401);
    assert!(!quiet.log().contains("in the clear"), "{}", quiet.log());
}

#[test]
fn serve_docker_logs_in_and_pulls_with_basic_and_with_token_auth() {
    if !docker_or_skip() {
        return;
    }
    let f = filled(runtime());
    let file = htpasswd(&f.sandbox);
    let d = TestDocker::start_with_config(&serde_json::json!({}));
    let amd = f.fx.platform(Arch::Amd64);
    for mode in ["basic", "token"] {
        let s = Served::start(
            &f.sandbox,
            &["--htpasswd", file.to_str().unwrap(), "--auth", mode],
        );
        let image = format!("{}/nvidia/cuda:{}", s.addr, f.fx.tag);
        // No login: refused.
        let anon = f.sandbox.root().join(format!("docker-anon-{mode}"));
        let out = docker_as(&d, &anon, &["pull", &image]);
        assert!(!out.status.success(), "{mode}: pulled without a login");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            err.contains("unauthorized") || err.contains("no basic auth credentials"),
            "{mode}: {err}"
        );
        // A wrong password: login refused.
        let cfg = f.sandbox.root().join(format!("docker-{mode}"));
        let out = docker_login(&d, &cfg, &s.addr, "wrong");
        assert!(!out.status.success(), "{mode}: a wrong password logged in");
        // The right one: login, pull, and the image is upstream's.
        let out = docker_login(&d, &cfg, &s.addr, PASS);
        assert!(
            out.status.success(),
            "{mode}: docker login: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            s.log()
        );
        let out = docker_as(&d, &cfg, &["pull", &image]);
        assert!(
            out.status.success(),
            "{mode}: docker pull: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.log(),
            s.log()
        );
        assert_eq!(d.inspect(&image)["Id"], amd.config.digest, "{mode}");
        wait_for_line(
            &s,
            &[
                &format!("GET /v2/nvidia/cuda/blobs/{} 200", amd.config.digest),
                "user=alice",
            ],
        );
        if mode == "token" {
            wait_for_line(&s, &["GET /token?", " 200 ", "user=alice"]);
        }
        assert!(
            !s.log().contains(PASS),
            "a password was logged:\n{}",
            s.log()
        );
        run_ok(&mut d.docker(&["rmi", &image]));
    }
}

/// `docker --config DIR ARGS`: the CLI with its own config.json (where login writes).
fn docker_as(d: &TestDocker, config: &Path, args: &[&str]) -> Output {
    std::fs::create_dir_all(config).unwrap();
    d.docker(&["--config", config.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

fn docker_login(d: &TestDocker, config: &Path, addr: &str, pass: &str) -> Output {
    std::fs::create_dir_all(config).unwrap();
    let mut child = d
        .docker(&["--config", config.to_str().unwrap()])
        .args(["login", addr, "-u", USER, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pass.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn serve_cudaimg_pulls_through_an_auth_mirror_with_docker_config_credentials() {
    let f = filled(runtime());
    let file = htpasswd(&f.sandbox);
    let amd = f.fx.platform(Arch::Amd64);
    for mode in ["basic", "token"] {
        let s = Served::start(
            &f.sandbox,
            &["--htpasswd", file.to_str().unwrap(), "--auth", mode],
        );
        // No official endpoint alive: only the mirror, with a login, can answer.
        let other = Sandbox::new();
        let config = other.write_hub_config(&dead_endpoint(), &[&s.url()]);
        let pull = [
            "--json",
            "pull",
            "--platform",
            "linux/amd64",
            &f.fx.reference(),
        ];
        run_fails(&mut other.cli(&config, &pull));
        wait_for_line(&s, &[" 401 "]);
        let mut auths = serde_json::Map::new();
        auths.insert(
            s.addr.clone(),
            serde_json::json!({ "auth": b64(&format!("{USER}:{PASS}")) }),
        );
        other.write_docker_config(&serde_json::json!({ "auths": auths }));
        let out = run_ok(&mut other.cli(&config, &pull));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["digest"], amd.manifest.digest, "{mode}");
        run_ok(&mut other.cli(&config, &["verify"]));
        let layer = f.fx.largest_layer(Arch::Amd64);
        wait_for_line(
            &s,
            &[
                &format!("GET /v2/nvidia/cuda/blobs/{} 200", layer.digest),
                "user=alice",
            ],
        );
        assert!(
            !s.log().contains(PASS),
            "a password was logged:\n{}",
            s.log()
        );
    }
}
