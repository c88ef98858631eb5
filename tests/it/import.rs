//! Importing an OCI image layout another tool wrote (`skopeo copy --all … oci:DIR`) through
//! the store's library API (`Store::import_layout`), then reading it with the commands.

use cudaimg_test_support as common;

use common::{
    run_fails, run_ok, Arch, Fixture, Flavor, MediaTypes, Pusher, Sandbox, Scale, TestRegistry,
};
use cudaimg_store::{ImportError, Naming, Store};
use serde_json::Value;

const TAG: &str = "12.4.1-runtime-ubuntu22.04";

fn import(
    store: &Store,
    layout: &std::path::Path,
) -> Result<cudaimg_store::ImportReport, ImportError> {
    let naming = Naming::With(Box::new(|r| {
        r.ref_name.map(|t| format!("docker.io/nvidia/cuda:{t}"))
    }));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(store.import_layout(layout, &naming))
}

#[test]
fn a_layout_skopeo_wrote_is_imported_verified_and_the_commands_read_it() {
    let registry = TestRegistry::start();
    let fx = Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Oci, Scale::TINY);
    Pusher::new(&registry).push(&fx);
    let sandbox = Sandbox::new();
    let layout = sandbox.root().join("layout");
    run_ok(sandbox.skopeo().args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/{}", registry.host(), fx.reference()),
        &format!("oci:{}:{TAG}", layout.display()),
    ]));

    let store = Store::open(&sandbox.store_dir()).unwrap();
    let report = import(&store, &layout).unwrap();
    assert_eq!(report.images.len(), 2, "{report:?}");
    assert_eq!(report.blobs_present, 0, "{report:?}");

    let config = sandbox.write_hub_config(&registry.url(), &[]);
    let out = run_ok(&mut sandbox.cli(&config, &["--json", "images"]));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["name"] == format!("docker.io/nvidia/cuda:{TAG}") && r["broken"] == false),
        "{rows:?}"
    );

    let reference = format!("nvidia/cuda:{TAG}");
    let out = run_ok(&mut sandbox.cli(
        &config,
        &["--json", "inspect", "--platform", "linux/arm64", &reference],
    ));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["digest"], fx.platform(Arch::Arm64).manifest.digest);
    assert_eq!(info["index_digest"], fx.index.as_ref().unwrap().digest);
    run_ok(&mut sandbox.cli(&config, &["verify"]));

    // A layer changed in the layout: refused, nothing named, and the store stays sound.
    let other = Sandbox::new();
    let other_store = Store::open(&other.store_dir()).unwrap();
    let layer = &fx.platform(Arch::Amd64).layers[0].digest;
    let path = layout
        .join("blobs/sha256")
        .join(layer.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = import(&other_store, &layout).unwrap_err();
    assert!(
        matches!(&err, ImportError::Blob { digest, .. } if digest.as_str() == layer),
        "{err}"
    );
    assert!(err.hint().unwrap().contains("nothing"), "{err:?}");
    assert!(other_store.list().unwrap().is_empty());
    let other_config = other.write_hub_config(&registry.url(), &[]);
    run_ok(&mut other.cli(&other_config, &["verify"]));
    let out = run_fails(&mut other.cli(&other_config, &["inspect", &reference]));
    assert_eq!(out.status.code(), Some(4));
}
