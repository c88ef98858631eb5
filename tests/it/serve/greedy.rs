//! `serve` against one greedy client: many keep-alive connections that each ask for
//! something now and then; a 1-byte `Range` asked over and over with `--verify-reads`; a
//! descriptor limit lower than the connection cap.

use super::*;

/// Opens `n` connections from 127.0.0.1 and keeps each alive with a `GET /v2/` now and
/// then, until `stop`; returns how many it opened and how many were ever answered.
fn greedy(
    addr: &str,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize) {
    use std::sync::atomic::Ordering;
    let mut conns: Vec<TcpStream> = (0..n)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let mut answered = std::collections::HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        for (i, c) in conns.iter_mut().enumerate() {
            let _ = c.set_read_timeout(Some(Duration::from_millis(5)));
            let _ = c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buf = [0u8; 512];
            if matches!(c.read(&mut buf), Ok(k) if k > 0 && buf.starts_with(b"HTTP/1.1 200")) {
                answered.insert(i);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    (conns.len(), answered.len())
}

/// How long a client at 127.0.0.2 waits for a blob while the greedy one holds on.
fn victim_wait(s: &Served, blob: &str, digest: &str) -> Option<Duration> {
    let t = Instant::now();
    let mut c = common::connect_from(std::net::Ipv4Addr::new(127, 0, 0, 2), &s.addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    c.write_all(format!("GET {blob} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut all = Vec::new();
    let _ = c.read_to_end(&mut all);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    (all.starts_with(b"HTTP/1.1 200") && sha256_digest(&all[split + 4..]) == digest)
        .then(|| t.elapsed())
}

/// The tests here open hundreds of sockets in this process: one at a time, so that two of
/// them never share a descriptor limit that a CI machine may set as low as 1024.
static DESCRIPTOR_HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the lock above and raises this process's soft descriptor limit to its hard one,
/// as `serve` does for itself.
fn descriptor_heavy() -> std::sync::MutexGuard<'static, ()> {
    let guard = DESCRIPTOR_HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        // Not raised, the test still runs; the counts it asserts say what fell short.
        let _ = setrlimit(Resource::Nofile, raised);
    }
    guard
}

#[test]
fn serve_one_greedy_client_cannot_starve_another() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let _one_at_a_time = descriptor_heavy();
    let f = filled(runtime());
    let layer = f.fx.largest_layer(Arch::Amd64).clone();
    let blob = format!("/v2/nvidia/cuda/blobs/{}", layer.digest);
    // The server's cap is set here (128 connections), not left to the default of 512 and to
    // whatever the machine's descriptor limit lowers that to.
    const SLOTS: usize = 128;
    // The control: without a per-client cap, SLOTS + 8 connections hold every slot and the
    // other client waits in the accept queue.
    for (cap, starved) in [("1000", true), ("32", false)] {
        let s = Served::start(
            &f.sandbox,
            &[
                "--max-connections",
                &SLOTS.to_string(),
                "--max-connections-per-client",
                cap,
            ],
        );
        let stop = Arc::new(AtomicBool::new(false));
        let attack = {
            let (addr, stop) = (s.addr.clone(), Arc::clone(&stop));
            std::thread::spawn(move || greedy(&addr, SLOTS + 8, stop))
        };
        // Until the attack holds what it can.
        std::thread::sleep(Duration::from_secs(2));
        let waited = victim_wait(&s, &blob, &layer.digest);
        stop.store(true, Ordering::Relaxed);
        let (opened, answered) = attack.join().unwrap();
        assert_eq!(
            opened,
            SLOTS + 8,
            "the attack could open only {opened} connections"
        );
        if starved {
            assert!(
                answered >= SLOTS,
                "the attack held only {answered} connections:\n{}",
                s.log()
            );
            assert_eq!(
                waited, None,
                "the other client was served: the attack was no attack"
            );
        } else {
            assert!(answered <= 32, "one client held {answered} connections");
            let waited = waited.unwrap_or_else(|| panic!("not served:\n{}", s.log()));
            assert!(waited < Duration::from_secs(1), "served after {waited:?}");
        }
    }
}

/// CPU seconds `pid` has used (user and system), from `/proc/PID/stat`.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn serve_verify_reads_hashes_a_blob_once_for_many_small_ranges_and_again_when_it_changes() {
    let f = filled(Fixture::cuda(
        "12.4.1",
        Flavor::Runtime,
        MediaTypes::Docker,
        Scale(0.1),
    ));
    let s = Served::start(&f.sandbox, &["--verify-reads"]);
    let layer = f.fx.largest_layer(Arch::Amd64).clone();
    assert!(layer.size > 30_000_000, "{}", layer.size);
    let blob = format!("/v2/nvidia/cuda/blobs/{}", layer.digest);
    let pid = s.child.id();
    let first_byte = || {
        let (st, _, body) = s.get(&blob, "Range: bytes=0-0\r\n");
        assert_eq!((st, body.len()), (206, 1));
    };
    let before = cpu_secs(pid);
    first_byte();
    let one = cpu_secs(pid) - before;
    let before = cpu_secs(pid);
    for _ in 0..15 {
        first_byte();
    }
    let fifteen = cpu_secs(pid) - before;
    // Hashed each time, the 15 would cost about 15 times the first.
    assert!(
        fifteen < one * 4.0 + 0.05,
        "15 one-byte ranges took {fifteen:.2} CPU s, the first {one:.2} s"
    );
    // A blob changed in place is a new file to the memo: hashed again, and refused.
    let path = f
        .sandbox
        .store_dir()
        .join("blobs/sha256")
        .join(layer.digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (st, _, _) = s.get(&blob, "Range: bytes=0-0\r\n");
    assert_eq!(st, 500, "a corrupt blob was served:\n{}", s.log());
}

#[test]
fn serve_fits_its_connections_to_the_descriptor_limit() {
    let _one_at_a_time = descriptor_heavy();
    let f = filled(runtime());
    let layer = f.fx.largest_layer(Arch::Amd64).clone();
    let blob = format!("/v2/nvidia/cuda/blobs/{}", layer.digest);
    // systemd's default: a soft and hard limit of 1024 descriptors.
    let log = f.sandbox.root().join("serve-nofile.log");
    let mut child = Command::new("prlimit")
        .arg("--nofile=1024:1024")
        .arg(common::cudaimg_binary())
        .arg("--store")
        .arg(f.sandbox.store_dir())
        .args(["--json", "serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = serde_json::from_str::<Value>(&line).unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        said.contains("descriptor limit allows 480 connections"),
        "{said}"
    );
    // 512 clients at once, from 8 addresses (the per-client cap is 64): none gets an error;
    // those past the cap wait their turn.
    let threads: Vec<_> = (0..512u32)
        .map(|i| {
            let (addr, blob) = (addr.clone(), blob.clone());
            std::thread::spawn(move || {
                let from = std::net::Ipv4Addr::new(127, 0, 1, (i % 8 + 1) as u8);
                let mut c = common::connect_from(from, &addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                c.write_all(
                    format!("GET {blob} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .unwrap();
                let mut all = Vec::new();
                let _ = c.read_to_end(&mut all);
                String::from_utf8_lossy(&all[..all.len().min(12)]).into_owned()
            })
        })
        .collect();
    let statuses: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let _ = child.kill();
    let _ = child.wait();
    let bad: Vec<&String> = statuses.iter().filter(|s| *s != "HTTP/1.1 200").collect();
    assert!(
        bad.is_empty(),
        "{} failed, e.g. {:?}",
        bad.len(),
        bad.first()
    );
}
