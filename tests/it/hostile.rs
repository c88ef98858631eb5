//! Hostile files and peers (issue 23): files named by a user or a bundle that are not what
//! they must be (a FIFO, a link to `/dev/zero`, a directory), a `bundle.json` whose names,
//! platforms and media types lie, one with very many entries, and registries that redirect
//! writes elsewhere. Each attack runs through the real binary, under a time limit, against
//! real registries where one is needed.

use cudaimg_test_support as common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Sandbox;
use cudaimg_oci::digest::Digest;
use cudaimg_sync::bundle::{BlobLocation, BundleFile, PartRecord, PieceLocation, FORMAT};
use cudaimg_sync::plan::Plan;

/// Runs `command` for at most `limit`; a command still running then is killed and the test
/// fails (the attack made it block or read without end).
pub(crate) fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    // Drained on threads: a pipe that fills would stall the child, not the attack.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).ok();
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).ok();
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            panic!("{command:?} still ran after {limit:?}: it blocked or read without end");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Must end within 20 s, non-zero, with `path` and `says` in its message.
fn refused_quickly(command: &mut Command, path: &Path, says: &str) -> String {
    let out = run_bounded(command, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{command:?} succeeded: {err}");
    assert!(err.contains(&*path.to_string_lossy()), "{err}");
    assert!(err.contains(says), "{err}");
    err
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(ok.success(), "mkfifo {}", path.display());
}

fn empty_config(sandbox: &Sandbox) -> PathBuf {
    sandbox.write("mirrors.toml", "")
}

fn bundle_file(parts: Vec<PartRecord>, blobs: Vec<BlobLocation>) -> BundleFile {
    BundleFile {
        format: FORMAT.into(),
        id: "0".repeat(64),
        part_size: None,
        plan: Plan::default(),
        parts,
        blobs,
    }
}

fn write_bundle(dir: &Path, file: &BundleFile) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("bundle.json"), serde_json::to_vec(file).unwrap()).unwrap();
}

fn part(file: &str, size: u64, sha256: &str) -> PartRecord {
    PartRecord {
        file: file.into(),
        size,
        sha256: sha256.into(),
    }
}

/// `bundle.json` as a FIFO (no writer: the old read blocked forever) and as a link to
/// `/dev/zero` (which reports size 0, so the old size check passed and the read grew to GBs).
#[test]
fn a_bundle_json_that_is_a_fifo_or_links_to_dev_zero_is_refused_before_any_read() {
    let sandbox = Sandbox::new();
    let config = empty_config(&sandbox);
    let fifo_dir = sandbox.root().join("fifo-bundle");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    mkfifo(&fifo_dir.join("bundle.json"));
    let zero_dir = sandbox.root().join("zero-bundle");
    std::fs::create_dir_all(&zero_dir).unwrap();
    std::os::unix::fs::symlink("/dev/zero", zero_dir.join("bundle.json")).unwrap();
    for (dir, what) in [(&fifo_dir, "FIFO"), (&zero_dir, "character device")] {
        let err = refused_quickly(
            &mut sandbox.cli(&config, &["import", dir.to_str().unwrap()]),
            dir,
            what,
        );
        assert!(err.contains("not a regular file"), "{err}");
        assert!(err.contains("hint:"), "{err}");
    }
    // `sync --since DIR` reads the same file.
    let spec = sandbox.write("sync.toml", "[[images]]\nreferences = [\"x/y:1\"]\n");
    refused_quickly(
        &mut sandbox.cli(
            &config,
            &[
                "sync",
                spec.to_str().unwrap(),
                "--plan",
                "--since",
                zero_dir.to_str().unwrap(),
            ],
        ),
        &zero_dir,
        "character device",
    );
}

/// A part that is a FIFO, and one that links to `/dev/zero` listed with size 0 and the
/// empty sha256 (the old check compared the reported size, 0, then hashed forever). Both
/// are named as parts to send again, quickly.
#[test]
fn a_part_that_is_a_fifo_or_links_to_dev_zero_is_refused_before_any_read() {
    let sandbox = Sandbox::new();
    let config = empty_config(&sandbox);
    let empty_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b""));
    let fifo_dir = sandbox.root().join("fifo-part");
    write_bundle(
        &fifo_dir,
        &bundle_file(vec![part("part-0001.tar", 2048, &"0".repeat(64))], vec![]),
    );
    mkfifo(&fifo_dir.join("part-0001.tar"));
    let zero_dir = sandbox.root().join("zero-part");
    write_bundle(
        &zero_dir,
        &bundle_file(vec![part("part-0001.tar", 0, &empty_sha)], vec![]),
    );
    std::os::unix::fs::symlink("/dev/zero", zero_dir.join("part-0001.tar")).unwrap();
    for (dir, what) in [(&fifo_dir, "FIFO"), (&zero_dir, "character device")] {
        let err = refused_quickly(
            &mut sandbox.cli(&config, &["import", dir.to_str().unwrap()]),
            &dir.join("part-0001.tar"),
            what,
        );
        assert!(err.contains("part part-0001.tar cannot be used"), "{err}");
        assert!(err.contains("send it again"), "{err}");
    }
}

/// `sync SPEC` and `sync --have FILE` with a FIFO: refused at once, naming the path.
#[test]
fn a_sync_spec_or_inventory_that_is_a_fifo_is_refused_without_blocking() {
    let sandbox = Sandbox::new();
    let config = empty_config(&sandbox);
    let fifo = sandbox.root().join("sync.toml");
    mkfifo(&fifo);
    let out_dir = sandbox.root().join("out");
    refused_quickly(
        &mut sandbox.cli(
            &config,
            &[
                "sync",
                fifo.to_str().unwrap(),
                "--to",
                out_dir.to_str().unwrap(),
            ],
        ),
        &fifo,
        "FIFO",
    );
    let spec = sandbox.write("real.toml", "[[images]]\nreferences = [\"x/y:1\"]\n");
    let have = sandbox.root().join("have.json");
    mkfifo(&have);
    refused_quickly(
        &mut sandbox.cli(
            &config,
            &[
                "sync",
                spec.to_str().unwrap(),
                "--plan",
                "--have",
                have.to_str().unwrap(),
            ],
        ),
        &have,
        "FIFO",
    );
}

/// `serve --tls-cert /dev/zero` (the old read grew to 2.2 GB, then aborted) and a FIFO as
/// `--tls-key` after a real certificate (the old read blocked forever).
#[test]
fn serve_refuses_a_tls_cert_of_dev_zero_and_a_tls_key_that_is_a_fifo() {
    let sandbox = Sandbox::new();
    let config = empty_config(&sandbox);
    cudaimg_store::Store::open(&sandbox.store_dir()).unwrap();
    let dir = sandbox.root().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(made.status.success(), "openssl: {made:?}");
    let cert = dir.join("cert.pem");
    let fifo_key = dir.join("key.fifo");
    mkfifo(&fifo_key);
    for (cert, key, named, what) in [
        (
            Path::new("/dev/zero"),
            dir.join("key.pem"),
            PathBuf::from("/dev/zero"),
            "character device",
        ),
        (cert.as_path(), fifo_key.clone(), fifo_key.clone(), "FIFO"),
    ] {
        let err = refused_quickly(
            &mut sandbox.cli(
                &config,
                &[
                    "serve",
                    "--addr",
                    "127.0.0.1:0",
                    "--tls-cert",
                    cert.to_str().unwrap(),
                    "--tls-key",
                    key.to_str().unwrap(),
                ],
            ),
            &named,
            what,
        );
        assert!(err.contains("not a regular file"), "{err}");
    }
}

/// Issue 23: opening a bundle checked every piece against every part (30k/60k/120k
/// entries: 1.4/4.7/16.3 s). 100k parts and 100k blobs, the last of which lies in a part
/// that is not listed: the whole file is checked, and refused, in far less than the
/// quadratic check took (10 s leaves room for a slow shared machine).
#[test]
fn a_bundle_json_with_200k_entries_is_checked_in_linear_time() {
    let sandbox = Sandbox::new();
    let config = empty_config(&sandbox);
    let n = 100_000u32;
    let parts: Vec<PartRecord> = (0..n)
        .map(|i| part(&format!("part-{i:06}.tar"), 2048, &"0".repeat(64)))
        .collect();
    let blobs: Vec<BlobLocation> = (0..n)
        .map(|i| {
            let name = if i == n - 1 {
                "unlisted.tar".to_owned()
            } else {
                format!("part-{i:06}.tar")
            };
            BlobLocation {
                digest: Digest::of(&i.to_le_bytes()),
                size: 10,
                pieces: vec![PieceLocation {
                    part: name,
                    offset: 1536,
                    size: 10,
                    start: 0,
                    sha256: "0".repeat(64),
                }],
            }
        })
        .collect();
    let dir = sandbox.root().join("big");
    write_bundle(&dir, &bundle_file(parts, blobs));
    let start = Instant::now();
    let err = refused_quickly(
        &mut sandbox.cli(&config, &["import", dir.to_str().unwrap()]),
        &dir,
        "`unlisted.tar`, which is not one of its parts",
    );
    let took = start.elapsed();
    // Linear, a debug build took 11 to 13 s on a 2-core machine under a load of 13;
    // quadratic, 10^10 name comparisons, it would take minutes.
    assert!(took < Duration::from_secs(40), "{took:?}: {err}");
}

/// `images` prints names, digests and platforms from index.json, which any tool may have
/// written: a terminal escape or a bell in any of them reaches the terminal escaped.
#[test]
fn images_prints_control_characters_of_a_hostile_index_escaped() {
    let sandbox = Sandbox::new();
    let store = sandbox.store_dir();
    std::fs::create_dir_all(store.join("blobs/sha256")).unwrap();
    std::fs::write(
        store.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:\u{1b}[2J\u{7}",
            "size": 3,
            "platform": {"os": "linux\u{1b}]0;pwned\u{7}", "architecture": "amd64"},
            "annotations": {
                "org.opencontainers.image.ref.name": "x/y:\u{1b}[31mRED\u{1b}[0m"
            }
        }]
    });
    std::fs::write(store.join("index.json"), index.to_string()).unwrap();
    let mut cmd = sandbox.cudaimg();
    cmd.arg("--store").arg(&store).arg("images");
    let out = run_bounded(&mut cmd, Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("x/y:\\u{1b}[31mRED"), "{text}");
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
}
