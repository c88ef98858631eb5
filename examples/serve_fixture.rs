//! Serves a CUDA-like image from a local registry for the benchmarks in `bench/`.
//!
//! Generates `nvidia/cuda:12.4.1-<flavor>-ubuntu22.04` at `--scale` of the real layer sizes
//! (1.0 is the real 12.4.1 runtime: ~1.47 GB), pushes it to a `docker-registry` it starts on
//! 127.0.0.1, prints one JSON line (`registry`, `reference`, `bytes`), and serves until its
//! standard input closes. With `--runnable`, the amd64 image is single-platform and gains a
//! layer with a static busybox whose default command prints `ready`, so `docker run` works.
//! With `--proxies N --throttle BYTES_PER_SEC`, N fault-injecting proxies throttled to that
//! rate stand in front of the registry, as mirrors of a known speed.
//! With `--cutting`, one more proxy at that rate (`cutting`) cuts each blob once at half its
//! size (FIN) each time it is armed: a line `arm` on standard input arms it (the reply is a
//! line `armed` on standard output), so each benchmark run meets the same cuts.
//! With `--destination`, an empty registry is started too (its `host:port` as `destination`).
//! With `--destination-throttle BYTES_PER_SEC` as well, a fault proxy throttled to that rate
//! both ways stands in front of it (`destination_proxy`), and with `--cut-uploads` that proxy
//! cuts every upload session once, at half of its first body ([`Fault::CutEachUpload`]; a
//! chunked body, which has no length, at half the largest layer: skopeo sends each blob as one).
//! A line `publish` on standard input pushes a new tag, 12.4.2 (reply: `published REFERENCE`).
//! Generated layers are cached under `target/bench-fixtures`.

#![allow(clippy::unwrap_used)]
// A demo: std::fs is fine where a failure stops it with its own message.
#![allow(clippy::disallowed_methods)]

use cudaimg_test_support as common;

use common::docker::{busybox, Runnable};
use common::{
    Arch, CudaSpec, Fault, FaultProxy, FixtureStore, Flavor, MediaTypes, Pusher, Scale,
    TestRegistry,
};

/// The command line (see the module docs).
// Independent on/off switches of a benchmark tool; no state machine hides in them.
#[allow(clippy::struct_excessive_bools)]
struct Opts {
    scale: f64,
    flavor: Flavor,
    media: MediaTypes,
    runnable: bool,
    proxies: usize,
    throttle: u64,
    destination: bool,
    cutting: bool,
    destination_throttle: u64,
    cut_uploads: bool,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            scale: 0.2,
            flavor: Flavor::Runtime,
            media: MediaTypes::Docker,
            runnable: false,
            proxies: 0,
            throttle: 0,
            destination: false,
            cutting: false,
            destination_throttle: 0,
            cut_uploads: false,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                "--scale" => {
                    i += 1;
                    o.scale = args[i].parse().expect("--scale takes a number");
                }
                "--flavor" => {
                    i += 1;
                    o.flavor = match args[i].as_str() {
                        "base" => Flavor::Base,
                        "runtime" => Flavor::Runtime,
                        "cudnn-runtime" => Flavor::CudnnRuntime,
                        "devel" => Flavor::Devel,
                        other => panic!("unknown flavor {other}"),
                    };
                }
                "--oci" => o.media = MediaTypes::Oci,
                "--destination" => o.destination = true,
                "--cutting" => o.cutting = true,
                "--runnable" => o.runnable = true,
                "--destination-throttle" => {
                    i += 1;
                    o.destination_throttle = args[i]
                        .parse()
                        .expect("--destination-throttle takes bytes per second");
                }
                "--cut-uploads" => o.cut_uploads = true,
                "--proxies" => {
                    i += 1;
                    o.proxies = args[i].parse().expect("--proxies takes a count");
                }
                "--throttle" => {
                    i += 1;
                    o.throttle = args[i].parse().expect("--throttle takes bytes per second");
                }
                other => panic!("unknown argument {other}"),
            }
            i += 1;
        }
        o
    }
}

fn main() {
    let Opts {
        scale,
        flavor,
        media,
        runnable,
        proxies,
        throttle,
        destination,
        cutting,
        destination_throttle,
        cut_uploads,
    } = Opts::parse();
    let store = FixtureStore::in_dir(std::path::Path::new("target/bench-fixtures"));
    let fx = store.cuda(
        &CudaSpec::new("12.4.1", flavor)
            .media(media)
            .scale(Scale(scale)),
    );
    let registry = TestRegistry::start();
    let pusher = Pusher::new(&registry);
    let amd64 = fx.platform(Arch::Amd64);
    // Every blob of the amd64 image, as (digest, size), for the cuts.
    let mut blobs: Vec<(String, u64)> = amd64
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.size))
        .collect();
    let (reference, bytes) = if runnable {
        let image = Runnable::build(amd64, "ready", &busybox());
        image.push(&pusher, amd64, &fx.repo, &fx.tag);
        blobs.push((image.layer.0.clone(), image.layer.1.len() as u64));
        blobs.push((image.config.digest.clone(), image.config.size()));
        let bytes = amd64.layers_size() + image.layer.1.len() as u64 + image.config.size();
        (format!("{}/{}", registry.host(), fx.reference()), bytes)
    } else {
        pusher.push(&fx);
        blobs.push((amd64.config.digest.clone(), amd64.config.size()));
        (
            format!("{}/{}", registry.host(), fx.reference()),
            amd64.layers_size() + amd64.config.size(),
        )
    };
    // Throttled proxies in front of the registry: mirrors of a given speed.
    let fronts: Vec<FaultProxy> = (0..proxies)
        .map(|_| mirror(&registry, throttle, &[]))
        .collect();
    // A throttled proxy that cuts each blob once at half, each time it is armed.
    let cutter = cutting.then(|| mirror(&registry, throttle, &blobs));
    // An empty registry to push into (`bench/push.sh`).
    let dest = destination.then(TestRegistry::start);
    // The destination behind a slow link that cuts each upload once (`bench/push.sh`).
    let dest_proxy = dest
        .as_ref()
        .filter(|_| destination_throttle > 0 || cut_uploads)
        .map(|d| {
            let unsized_at = fx.largest_layer(Arch::Amd64).size / 2;
            slow_link(d, destination_throttle, cut_uploads.then_some(unsized_at))
        });
    println!(
        "{}",
        serde_json::json!({
            "destination": dest.as_ref().map(TestRegistry::host),
            "destination_proxy": dest_proxy.as_ref().map(FaultProxy::host),
            "registry": registry.url(),
            "reference": reference,
            "repository_tag": fx.reference(),
            "bytes": bytes,
            "proxies": fronts.iter().map(FaultProxy::url).collect::<Vec<_>>(),
            "cutting": cutter.as_ref().map(FaultProxy::url),
        })
    );
    // Serve until the benchmark closes our stdin; `arm` lines re-arm the cuts, `sent` prints
    // the body bytes the `--proxies` have sent so far, a `publish`
    // line pushes one new tag (12.4.2 of the same flavor: its OS layer shared, its CUDA
    // layers new), as upstream does between two syncs (`bench/sync.sh`).
    for line in std::io::stdin().lines().map_while(Result::ok) {
        match (&cutter, line.trim()) {
            (Some(p), "arm") => {
                arm(p, throttle, &blobs);
                println!("armed");
            }
            (_, "sent") => {
                // What the proxies have sent so far (`bench/pull-through.sh`'s bytes taken
                // from upstream).
                let sent: u64 = fronts.iter().map(FaultProxy::body_bytes_sent).sum();
                println!("sent {sent}");
            }
            (_, "publish") => {
                let next = store.cuda(
                    &CudaSpec::new("12.4.2", flavor)
                        .media(media)
                        .scale(Scale(scale)),
                );
                pusher.push(&next);
                println!("published {}/{}", registry.host(), next.reference());
            }
            _ => {}
        }
    }
}

/// A fault proxy before `registry`, throttled both ways (0: not), cutting each upload once
/// when `cut_unsized_at` is given ([`Fault::CutEachUpload`]).
fn slow_link(registry: &TestRegistry, throttle: u64, cut_unsized_at: Option<u64>) -> FaultProxy {
    let p = mirror(registry, throttle, &[]);
    if let Some(unsized_at) = cut_unsized_at {
        p.add(Fault::CutEachUpload {
            percent: 50,
            unsized_at,
        });
    }
    p
}

/// A proxy in front of `registry`, armed with [`arm`].
fn mirror(registry: &TestRegistry, throttle: u64, blobs: &[(String, u64)]) -> FaultProxy {
    let p = FaultProxy::start(&registry.url());
    arm(&p, throttle, blobs);
    p
}

/// Paces `p` to `throttle` (0: no pacing) and makes it cut each of `blobs` once at half its
/// size.
fn arm(p: &FaultProxy, throttle: u64, blobs: &[(String, u64)]) {
    p.clear();
    if throttle > 0 {
        p.add(Fault::Throttle {
            bytes_per_sec: throttle,
        });
    }
    for (digest, size) in blobs {
        p.add(Fault::CutAfter {
            path_contains: digest.clone(),
            bytes: size / 2,
            reset: false,
            times: 1,
        });
    }
}
