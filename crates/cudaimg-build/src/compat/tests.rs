#![allow(clippy::unwrap_used)]

use super::*;

fn req<'a>(
    tag: &'a CudaTag,
    torch: &'a str,
    py: Option<&'a str>,
    v: Option<&'a str>,
) -> Request<'a> {
    Request {
        torch,
        python: py,
        variant: v,
        base: tag,
        base_cuda: tag.version,
        base_pythons: &[],
        index: None,
    }
}

fn tag(s: &str) -> CudaTag {
    CudaTag::parse(s).unwrap()
}

#[test]
fn every_row_has_known_variants_and_a_source() {
    for r in crate::table::torch() {
        assert!(!r.source.is_empty());
        assert!(r.python.0 <= r.python.1);
        for v in &r.variants {
            let c = variant_cuda(v).unwrap();
            assert!(cudaimg_cuda::driver::min_driver(c).is_some(), "{v}");
        }
    }
    assert_eq!(variant_cuda("cu130"), Some(CudaVersion::new(13, 0, None)));
    assert_eq!(variant_cuda("cu118"), Some(CudaVersion::new(11, 8, None)));
}

#[test]
fn the_seed_case_is_refused_with_its_fix() {
    let t = tag("13.0.1-cudnn-runtime-ubuntu24.04");
    let e = check(&req(&t, "2.7.1", None, Some("cu118"))).unwrap_err();
    assert!(
        e.reason
            .contains("cu118 wheels (CUDA 11.8) on the CUDA 13.0.1 base"),
        "{e:?}"
    );
    assert!(
        e.nearest
            .iter()
            .any(|n| n.contains("--torch 2.14 --cuda-wheels cu130")),
        "{e:?}"
    );
    assert!(
        e.nearest
            .iter()
            .any(|n| n.contains("nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04")),
        "{e:?}"
    );
}

#[test]
fn auto_variant_follows_the_base_and_runtime_warns() {
    let t = tag("12.4.1-runtime-ubuntu22.04");
    let c = check(&req(&t, "2.5.1", None, None)).unwrap();
    assert_eq!(c.variant, "cu124");
    assert_eq!(c.python, Py(3, 10));
    assert_eq!(
        c.python_source,
        PythonSource::Os {
            os: "ubuntu22.04".into()
        }
    );
    assert!(
        c.warnings[0].contains("`12.4.1-base-ubuntu22.04` avoids it"),
        "{:?}",
        c.warnings
    );
    let c = check(&req(&tag("12.6.3-devel-ubuntu22.04"), "2.5.1", None, None)).unwrap();
    assert_eq!(c.variant, "cu124");
    assert!(c.warnings.is_empty());
}

#[test]
fn devel_major_mismatch_and_missing_variants_and_pythons_are_refused() {
    let t = tag("12.4.1-devel-ubuntu22.04");
    let e = check(&req(&t, "2.5.1", None, Some("cu118"))).unwrap_err();
    assert!(e.reason.contains("nvcc"), "{e:?}");
    assert_eq!(e.nearest[0], "--cuda-wheels cu124");
    let e = check(&req(&t, "2.8.0", None, Some("cu124"))).unwrap_err();
    assert!(
        e.reason.contains("torch 2.8.0 has no cu124 wheels"),
        "{e:?}"
    );
    let e = check(&req(&t, "2.3.1", Some("3.12"), None)).unwrap_err();
    assert!(e.reason.contains("supports 3.8 to 3.11"), "{e:?}");
    assert!(e.nearest.iter().any(|n| n == "--python 3.10"), "{e:?}");
    let e = check(&req(
        &tag("12.6.3-base-ubuntu24.04"),
        "2.5.1",
        Some("3.10"),
        None,
    ))
    .unwrap_err();
    assert!(e.reason.contains("neither in the base"), "{e:?}");
    let e = check(&req(&t, "1.13.1", None, None)).unwrap_err();
    assert!(e.reason.contains("not in cudaimg's table"), "{e:?}");
}

#[test]
fn a_python_in_the_base_wins() {
    let t = tag("12.4.1-runtime-ubuntu22.04");
    let mut r = req(&t, "2.5.1", Some("3.11"), None);
    let found = [Py(3, 11)];
    r.base_pythons = &found;
    let c = check(&r).unwrap();
    assert_eq!(c.python_source, PythonSource::Base);
}
