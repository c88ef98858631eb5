//! `doctor`'s `gpu-arch` findings: each GPU's compute capability against the CUDA images and
//! torch wheels it could run. With no image, what each GPU can run (CUDA 12 and 13 images,
//! the torch wheel variants with its kernels); with one, whether the image's CUDA toolkit
//! (CUDA 13 dropped Maxwell, Pascal and Volta) and, for an image `cudaimg build` made, its
//! torch wheel variant carry code for it. A GPU the image has no kernels for is a `fail`:
//! CUDA reports "no kernel image is available for execution on the device" at the first
//! kernel, long after the container started.

use cudaimg_build::arch::{variants_for, wheel_arch};
use cudaimg_build::compat::TorchVersion;
use cudaimg_cuda::arch::{self as cuda_arch, ComputeCap, ToolkitVerdict};
use cudaimg_cuda::CudaVersion;

use super::{finding, Finding, ImageSubject, Status};
use crate::probe::{DriverProbe, Gpu};

const CHECK: &str = "gpu-arch";

pub(super) fn findings(p: &super::Probes, image: Option<&ImageSubject>, out: &mut Vec<Finding>) {
    let DriverProbe::Smi {
        gpus,
        compute_cap_error,
        ..
    } = &p.driver
    else {
        return;
    };
    if let Some(why) = compute_cap_error {
        out.push(finding(
            CHECK,
            Status::Warn,
            format!(
                "the GPUs' compute capabilities are unknown ({why}): whether an image's CUDA and \
                 torch wheels carry code for them is not checked"
            ),
            Some(
                "drivers from R510 on report `compute_cap`; check by hand with \
                 `nvidia-smi --query-gpu=index,name,compute_cap --format=csv`"
                    .into(),
            ),
        ));
        return;
    }
    // One finding per kind of GPU: eight identical cards say it once.
    let mut kinds: Vec<(&Gpu, ComputeCap, Vec<u32>)> = Vec::new();
    for (i, g) in gpus.iter().enumerate() {
        let Some(cap) = g.compute_cap else { continue };
        let index = g.index.unwrap_or(u32::try_from(i).unwrap_or(u32::MAX));
        match kinds
            .iter_mut()
            .find(|(k, c, _)| k.name == g.name && *c == cap)
        {
            Some((_, _, indexes)) => indexes.push(index),
            None => kinds.push((g, cap, vec![index])),
        }
    }
    for (gpu, cap, indexes) in kinds {
        let who = who(gpu, cap, &indexes);
        match image {
            None => out.push(overview(&who, cap)),
            Some(i) => image_findings(&who, cap, i, out),
        }
    }
}

/// `GPU 0 (Tesla V100-SXM2-16GB, compute capability 7.0: sm_70, Volta)`.
fn who(gpu: &Gpu, cap: ComputeCap, indexes: &[u32]) -> String {
    let ids: Vec<String> = indexes.iter().map(ToString::to_string).collect();
    format!(
        "GPU{} {} ({}, compute capability {cap}: {})",
        if ids.len() == 1 { "" } else { "s" },
        ids.join(", "),
        gpu.name,
        cap.sm() + &cap.family().map(|f| format!(", {f}")).unwrap_or_default()
    )
}

/// What the GPU runs: CUDA 12 and 13 images, and the wheel variants with its kernels.
fn overview(who: &str, cap: ComputeCap) -> Finding {
    let majors: Vec<String> = [12, 13]
        .into_iter()
        .map(|m| format!("CUDA {m} images: {}", major_verdict(m, cap)))
        .collect();
    let newest = newest_torch();
    let wheels = variants_for(newest, cap);
    let torch = newest.map_or_else(String::new, |(a, b)| format!("torch {a}.{b}'s "));
    let wheels = if wheels.is_empty() {
        format!("no {torch}wheel variant has its kernels")
    } else {
        format!("{torch}wheels with its kernels: {}", wheels.join(", "))
    };
    let fails_13 = matches!(
        toolkit_of_major(13).map(|v| cuda_arch::toolkit_verdict(v, cap)),
        Some(ToolkitVerdict::TooOld { .. })
    );
    finding(
        CHECK,
        Status::Ok,
        format!("{who}: {}; {wheels}", majors.join("; ")),
        fails_13.then(|| fix_for_old_gpu(cap, newest)),
    )
}

/// `yes`, `yes, from 12.8`, or `no (...)` for CUDA `major`'s images on `cap`.
fn major_verdict(major: u32, cap: ComputeCap) -> String {
    let rows: Vec<_> = cudaimg_cuda::data::tables()
        .arch
        .iter()
        .filter(|a| a.from.0 == major)
        .collect();
    let Some(last) = rows.last() else {
        return "unknown (no row in cudaimg's table)".into();
    };
    let version = |a: (u32, u32)| CudaVersion::new(a.0, a.1, None);
    let first_ok = rows
        .iter()
        .find(|a| cuda_arch::toolkit_verdict(version(a.from), cap) == ToolkitVerdict::Supported);
    match (
        first_ok,
        cuda_arch::toolkit_verdict(version(last.from), cap),
    ) {
        (Some(a), _) if a.from == rows[0].from => "yes".into(),
        (Some(a), _) => format!("yes, from {}.{}", a.from.0, a.from.1),
        (None, ToolkitVerdict::TooOld { min }) => format!(
            "no: CUDA {major} serves {} and newer ({})",
            min.sm(),
            last.source
        ),
        (None, ToolkitVerdict::TooNew { max }) => {
            format!("only through PTX JIT (newest native code: {})", max.sm())
        }
        (None, _) => "unknown".into(),
    }
}

fn toolkit_of_major(major: u32) -> Option<CudaVersion> {
    cudaimg_cuda::data::tables()
        .arch
        .iter()
        .rev()
        .find(|a| a.from.0 == major)
        .map(|a| CudaVersion::new(a.from.0, a.from.1, None))
}

fn newest_torch() -> Option<(u32, u32)> {
    cudaimg_build::table::torch().last().map(|r| r.minor)
}

/// For a GPU the newest CUDA dropped: the newest CUDA major that serves it, and the wheels.
fn fix_for_old_gpu(cap: ComputeCap, torch: Option<(u32, u32)>) -> String {
    let major = cuda_arch::newest_major_for(cap);
    let base = major.map_or_else(
        || "no CUDA release in cudaimg's table serves it".to_owned(),
        |m| format!("use a CUDA {m}.x base (`cudaimg tags nvidia/cuda --cuda {m}`)"),
    );
    let wheels = variants_for(torch, cap);
    let torch_text = torch.map_or_else(String::new, |(a, b)| format!("torch {a}.{b}'s "));
    if wheels.is_empty() {
        base
    } else {
        format!(
            "{base}, and {torch_text}{} wheels (`cudaimg build --cuda-wheels {}`)",
            wheels.join(" or "),
            wheels.last().map_or("", String::as_str)
        )
    }
}

fn image_findings(who: &str, cap: ComputeCap, image: &ImageSubject, out: &mut Vec<Finding>) {
    let name = &image.name;
    let torch = image.torch();
    let torch_minor = torch
        .as_ref()
        .and_then(|(v, _)| TorchVersion::parse(v))
        .map(|t| t.minor);
    if let Some(version) = image.version() {
        let source = cuda_arch::toolkit(version).map(|t| t.source.clone());
        let source = source.unwrap_or_default();
        match cuda_arch::toolkit_verdict(version, cap) {
            ToolkitVerdict::Supported => out.push(finding(
                CHECK,
                Status::Ok,
                format!("{who}: CUDA {version} ({name}) has code for it"),
                None,
            )),
            ToolkitVerdict::TooOld { min } => out.push(finding(
                CHECK,
                Status::Fail,
                format!(
                    "{who}: CUDA {version} ({name}) has no code for it: CUDA {} serves {} and \
                     newer (CUDA 13 dropped Maxwell, Pascal and Volta, sm_50 to sm_72, from its \
                     compiler and libraries); CUDA programs fail with \"no kernel image is \
                     available for execution on the device\" (from {source})",
                    version.major,
                    min.sm()
                ),
                Some(fix_for_old_gpu(cap, torch_minor.or_else(newest_torch))),
            )),
            ToolkitVerdict::TooNew { max } => out.push(finding(
                CHECK,
                Status::Warn,
                format!(
                    "{who}: CUDA {version} ({name}) has native code up to {} only: on this GPU \
                     runs only what the driver JIT-compiles from PTX (slow first start; a library \
                     without PTX fails) (from {source})",
                    max.sm()
                ),
                Some(
                    "use a base of a CUDA release that knows the GPU (`cudaimg tags nvidia/cuda`)"
                        .into(),
                ),
            )),
            ToolkitVerdict::Unknown => out.push(finding(
                CHECK,
                Status::Warn,
                format!(
                    "{who}: CUDA {version} is not in cudaimg's architecture table: not checked"
                ),
                None,
            )),
        }
    }
    wheel_findings(who, cap, image, torch, torch_minor, out);
}

/// A torch image's wheel variant against the GPU.
fn wheel_findings(
    who: &str,
    cap: ComputeCap,
    image: &ImageSubject,
    torch: Option<(String, String)>,
    torch_minor: Option<(u32, u32)>,
    out: &mut Vec<Finding>,
) {
    let name = &image.name;
    let Some((torch_version, variant)) = torch else {
        return;
    };
    let Some(wheels) = wheel_arch(&variant, torch_minor) else {
        out.push(finding(
            CHECK,
            Status::Warn,
            format!(
                "{who}: torch {torch_version}'s {variant} wheels are not in cudaimg's \
                 architecture table: not checked"
            ),
            None,
        ));
        return;
    };
    if wheels.runs_on(cap) {
        out.push(finding(
            CHECK,
            Status::Ok,
            format!(
                "{who}: torch {torch_version}'s {variant} wheels carry kernels for it ({})",
                wheels.describe()
            ),
            None,
        ));
        return;
    }
    let can = variants_for(torch_minor, cap);
    let fix = if can.is_empty() {
        let any = variants_for(None, cap);
        format!(
            "torch {torch_version} has no wheels for it; wheels of other torch releases that \
             do: {}",
            any.join(", ")
        )
    } else {
        format!(
            "rebuild with wheels that carry its kernels: `cudaimg build --torch {torch_version} \
             --cuda-wheels {}` (torch {torch_version}: {}), on a base of the same CUDA major",
            can[0],
            can.join(", ")
        )
    };
    out.push(finding(
        CHECK,
        Status::Fail,
        format!(
            "{who}: torch {torch_version}'s {variant} wheels ({name}) have no kernels for it: they \
             carry {} (from {}); torch fails with \"no kernel image is available for execution \
             on the device\"",
            wheels.describe(),
            wheels.source
        ),
        Some(fix),
    ));
}
