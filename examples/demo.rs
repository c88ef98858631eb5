//! The main job, offline: what `docker pull MIRROR/nvidia/cuda:TAG && docker tag … && docker rmi …`
//! does by hand, done by `cudaimg pull` against registries this demo starts on 127.0.0.1.
//!
//! It starts a real CNCF distribution registry as "Docker Hub" holding CUDA-like images
//! (12.4.1 runtime and cudnn-runtime, amd64 and arm64), a mirror that has only the runtime
//! image, and a mirror that is down; writes a mirrors.toml naming them; then runs cudaimg.
//!
//! Run: `scripts/setup.sh && cargo build --release && cargo run --release --example demo`

#![allow(clippy::unwrap_used)]
// A demo: std::fs is fine where a failure stops it with its own message.
#![allow(clippy::disallowed_methods)]

use cudaimg_test_support as common;

use std::process::Command;

use common::{dead_endpoint, CudaSpec, FixtureStore, Flavor, Pusher, Sandbox, Scale, TestRegistry};

fn main() {
    let binary = common::cudaimg_binary();
    if !binary.exists() {
        eprintln!(
            "{} is missing: run `cargo build --release` first (or `cargo build` with a debug demo)",
            binary.display()
        );
        std::process::exit(1);
    }

    // ~2% of the real sizes: a 30 MB runtime image, so the demo takes seconds.
    let scale = Scale(0.02);
    let store = FixtureStore::shared();
    let runtime = store.cuda(&CudaSpec::new("12.4.1", Flavor::Runtime).scale(scale));
    let cudnn = store.cuda(&CudaSpec::new("12.4.1", Flavor::CudnnRuntime).scale(scale));

    let hub = TestRegistry::start();
    let mirror = TestRegistry::start();
    let dead = dead_endpoint();
    Pusher::new(&hub).push(&runtime);
    Pusher::new(&hub).push(&cudnn);
    Pusher::new(&mirror).push(&runtime);

    let sandbox = Sandbox::new();
    let config = sandbox.write(
        "mirrors.toml",
        format!(
            "[registries.\"docker.io\"]\n\
             endpoint = \"{}\"   # stands in for https://registry-1.docker.io\n\
             mirrors = [{{ url = \"{dead}\" }}, {{ url = \"{}\" }}]\n",
            hub.url(),
            mirror.url()
        ),
    );
    println!("== Registries on 127.0.0.1");
    println!(
        "   official (as docker.io): {}  holds runtime and cudnn-runtime",
        hub.url()
    );
    println!(
        "   mirror:                  {}  holds runtime only",
        mirror.url()
    );
    println!("   dead mirror:             {dead}");
    println!(
        "== {}:\n{}",
        config.display(),
        std::fs::read_to_string(&config).unwrap()
    );

    let run = |args: &[&str]| {
        println!("\n$ cudaimg {}", args.join(" "));
        let mut cmd: Command = sandbox.cudaimg();
        cmd.arg("--config")
            .arg(&config)
            .arg("--store")
            .arg(sandbox.store_dir());
        let status = cmd.args(args).status().unwrap();
        if !status.success() {
            eprintln!("demo step failed: {status}");
            std::process::exit(1);
        }
    };

    println!("\n== 1. Pull by the official name: the dead mirror is skipped, the mirror serves it");
    run(&["pull", &runtime.reference()]);

    println!("\n== 2. Pull a mirror-prefixed name the mirror lacks: it is stored under docker.io,");
    println!("==    the official registry serves it, and only the new cuDNN layer is downloaded");
    run(&["pull", &format!("{}/{}", mirror.host(), cudnn.reference())]);

    println!("\n== 3. The store: canonical names, and what the images share");
    run(&["images"]);
    run(&["inspect", &cudnn.reference()]);

    println!("\n== 4. Re-hash every blob and check every reference");
    run(&["verify"]);
    println!(
        "\nThe store is an OCI image layout at {}",
        sandbox.store_dir().display()
    );
    println!("(it is removed when the demo exits)");
}
