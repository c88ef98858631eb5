//! A Docker Engine for the benchmarks, started by the test harness: Debian 12's 20.10
//! (`stable`) or Debian testing's 28.5 from the cached chroot (`current`, with
//! `--containerd-store` for the containerd image store), with its own data root and socket
//! on this host's network. Prints `{"host": "unix://…"}` once it answers, then runs until
//! its standard input closes, and stops it (and everything it mounted).
//!
//! ```text
//! cargo run --example engine -- current --containerd-store \
//!     --config '{"registry-mirrors": ["http://127.0.0.1:5001"]}' <&3
//! ```
//!
//! Needs root and the packages of `scripts/setup.sh` (which builds the chroot).

use std::io::Read;

use cudaimg_test_support::docker::{EngineKind, TestDocker};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let containerd_store = args.iter().any(|a| a == "--containerd-store");
    let kind = match args.first().map(String::as_str) {
        Some("stable") => EngineKind::Stable,
        Some("current") => EngineKind::Current { containerd_store },
        _ => {
            eprintln!("usage: engine stable|current [--containerd-store] [--config JSON]");
            std::process::exit(2);
        }
    };
    let config = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .map_or_else(
            || Ok(serde_json::json!({})),
            |c| serde_json::from_str::<serde_json::Value>(c),
        )
        .unwrap_or_else(|e| {
            eprintln!("engine: --config is not JSON: {e}");
            std::process::exit(2);
        });
    let engine = TestDocker::try_start_kind(kind, &config).unwrap_or_else(|why| {
        eprintln!("engine: {why}");
        std::process::exit(1);
    });
    println!("{}", serde_json::json!({ "host": engine.host() }));
    // Until the caller closes our stdin; then the engine stops on drop.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(engine);
}
