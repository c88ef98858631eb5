//! Unit tests of [`super`] (doctor.rs), kept beside it so that neither file runs long.

use super::*;
use crate::probe::Gpu;
use cudaimg_cuda::DriverVersion;
use std::path::PathBuf;

fn probes(driver: DriverProbe) -> Probes {
    Probes {
        driver,
        toolkit: vec![("nvidia-ctk".into(), PathBuf::from("/usr/bin/nvidia-ctk"))],
        daemon_json: DaemonJson::Read {
            path: "/etc/docker/daemon.json".into(),
            runtimes: vec!["nvidia".into()],
            default_runtime: None,
            registry_mirrors: vec![],
            cdi: false,
        },
        cdi: Cdi {
            dirs: vec![],
            nvidia_specs: vec![],
        },
        docker: DockerState::Up {
            host: "unix:///var/run/docker.sock".into(),
            api_version: "1.45".into(),
            runtimes: None,
        },
        config_path: None,
        pings: vec![],
    }
}

fn smi(driver: &str, name: &str) -> DriverProbe {
    let driver = DriverVersion::parse(driver).expect("driver");
    DriverProbe::Smi {
        path: "/usr/bin/nvidia-smi".into(),
        gpus: vec![Gpu {
            name: name.into(),
            driver: driver.clone(),
            index: Some(0),
            compute_cap: None,
        }],
        driver,
        compute_cap_error: None,
    }
}

fn image(tag: &str, env: Option<&[&str]>) -> ImageSubject {
    ImageSubject {
        name: format!("docker.io/nvidia/cuda:{tag}"),
        tag: CudaTag::parse(tag).ok(),
        env: env
            .map(|e| ImageEnv::from_env(&e.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())),
        source: if env.is_some() {
            ImageSource::Store
        } else {
            ImageSource::Tag
        },
        labels: std::collections::BTreeMap::new(),
    }
}

fn image_finding(f: &[Finding]) -> &Finding {
    f.iter()
        .find(|f| f.check == "image")
        .expect("an image finding")
}

#[test]
fn a_current_driver_runs_the_image() {
    let f = findings(
        &probes(smi("550.54.15", "NVIDIA A100")),
        Some(&image("12.4.1-devel-ubuntu22.04", None)),
    );
    assert_eq!(image_finding(&f).status, Status::Ok, "{f:#?}");
    assert!(f.iter().all(|f| f.status != Status::Fail), "{f:#?}");
}

#[test]
fn an_old_driver_fails_the_image() {
    let f = findings(
        &probes(smi("470.82.01", "NVIDIA GeForce RTX 3090")),
        Some(&image("12.4.1-runtime-ubuntu22.04", None)),
    );
    let i = image_finding(&f);
    assert_eq!(i.status, Status::Fail, "{f:#?}");
    assert!(i.message.contains("too old"), "{}", i.message);
    assert!(i.fix.as_deref().unwrap_or("").contains("550.54.14"));
    // And the runtime image's missing nvcc is explained.
    assert!(f.iter().any(|f| f.message.contains("no nvcc")));
}

#[test]
fn minor_version_compatibility_is_refused_by_the_runtime_on_a_geforce() {
    let env: &[&str] = &[
        "CUDA_VERSION=12.4.1",
        "NVIDIA_REQUIRE_CUDA=cuda>=12.4 brand=tesla,driver>=535,driver<536",
    ];
    let f = findings(
        &probes(smi("535.104.05", "NVIDIA GeForce RTX 4090")),
        Some(&image("12.4.1-runtime-ubuntu22.04", Some(env))),
    );
    let i = image_finding(&f);
    assert_eq!(i.status, Status::Fail, "{f:#?}");
    assert!(
        i.message.contains("minor-version compatibility"),
        "{}",
        i.message
    );
    assert!(i
        .fix
        .as_deref()
        .unwrap_or("")
        .contains("NVIDIA_DISABLE_REQUIRE=1"));
    // On a Tesla the forward-compatibility alternative holds.
    let f = findings(
        &probes(smi("535.104.05", "Tesla T4")),
        Some(&image("12.4.1-runtime-ubuntu22.04", Some(env))),
    );
    assert_eq!(image_finding(&f).status, Status::Warn, "{f:#?}");
}

#[test]
fn no_gpu_is_a_warning_not_a_failure() {
    let mut p = probes(DriverProbe::Nothing {
        smi: "`nvidia-smi` is not on PATH".into(),
        proc_path: "/proc/driver/nvidia/version".into(),
    });
    p.toolkit.clear();
    p.daemon_json = DaemonJson::Missing {
        path: "/etc/docker/daemon.json".into(),
    };
    let f = findings(&p, Some(&image("12.4.1-devel-ubuntu22.04", None)));
    assert!(f.iter().all(|f| f.status != Status::Fail), "{f:#?}");
    assert!(f
        .iter()
        .any(|f| f.check == "nvidia-runtime" && f.status == Status::Warn));
}

#[test]
fn a_gpu_without_toolkit_fails() {
    let mut p = probes(smi("550.54.15", "NVIDIA A100"));
    p.toolkit.clear();
    p.daemon_json = DaemonJson::Missing {
        path: "/etc/docker/daemon.json".into(),
    };
    let f = findings(&p, None);
    let r = f
        .iter()
        .find(|f| f.check == "nvidia-runtime")
        .expect("runtime finding");
    assert_eq!(r.status, Status::Fail);
    assert!(r
        .fix
        .as_deref()
        .unwrap_or("")
        .contains("nvidia-ctk runtime configure"));
}

#[test]
fn dead_registries_fail_dead_mirrors_warn() {
    let mut p = probes(smi("550.54.15", "NVIDIA A100"));
    p.config_path = Some("mirrors.toml".into());
    let ping = |url: &str, official, result| EndpointPing {
        registry: "docker.io".into(),
        url: url.into(),
        official,
        result,
        millis: 1,
    };
    p.pings = vec![
        ping("http://m", false, Err("connection refused".into())),
        ping("https://registry-1.docker.io", true, Ok(401)),
    ];
    let f = findings(&p, None);
    assert!(f
        .iter()
        .any(|f| f.check == "mirrors" && f.status == Status::Warn));
    assert!(f.iter().all(|f| f.status != Status::Fail), "{f:#?}");
    p.pings[1].result = Err("timeout".into());
    let f = findings(&p, None);
    assert!(
        f.iter()
            .any(|f| f.check == "mirrors" && f.status == Status::Fail),
        "{f:#?}"
    );
}
