//! Unit tests of [`super`] (tag.rs), kept beside it so that neither file runs long.

use super::*;

fn ok(tag: &str) -> CudaTag {
    CudaTag::parse(tag).unwrap_or_else(|e| panic!("{tag}: {e}"))
}

fn refused(tag: &str, says: &str) {
    match CudaTag::parse(tag) {
        Ok(t) => panic!("{tag} parsed as {t:?}"),
        Err(e) => assert!(e.to_string().contains(says), "{tag}: {e}"),
    }
}

/// Tags NVIDIA published, from its supported/unsupported tag lists and Dockerfiles
/// that built on them, across the forms the grammar has had.
const REAL: &[&str] = &[
    "12.4.1-base-ubuntu22.04",
    "12.4.1-runtime-ubuntu22.04",
    "12.4.1-devel-ubuntu22.04",
    "12.4.1-cudnn-runtime-ubuntu22.04",
    "12.4.1-cudnn-devel-ubuntu22.04",
    "12.4.1-cudnn-devel-rockylinux8",
    "13.0.1-cudnn-runtime-ubuntu24.04",
    "13.0.1-cudnn-devel-ubuntu24.04",
    "13.0.0-tensorrt-runtime-ubuntu24.04",
    "13.0.0-tensorrt-devel-ubuntu24.04",
    "13.2.1-cudnn-runtime-ubuntu22.04",
    "12.9.1-cudnn-runtime-ubuntu20.04",
    "12.9.0-base-azl3",
    "12.8.1-devel-oraclelinux9",
    "12.8.0-base-cm2",
    "12.8.2-runtime-amzn2023",
    "12.6.3-cudnn-devel-ubi9",
    "12.5.1-runtime-ubuntu24.04",
    "12.3.2-cudnn9-runtime-ubuntu22.04",
    "12.3.2-cudnn9-devel-ubuntu20.04",
    "12.2.2-cudnn8-devel-ubuntu22.04",
    "12.2.2-cudnn8-runtime-rockylinux8",
    "12.1.1-cudnn8-devel-ubuntu22.04",
    "12.1.0-base-ubuntu18.04",
    "12.0.1-cudnn8-runtime-ubuntu20.04",
    "12.0.0-cudnn8-devel-ubuntu18.04",
    "11.8.0-cudnn8-devel-ubuntu22.04",
    "11.8.0-cudnn8-runtime-ubi8",
    "11.7.1-cudnn8-runtime-ubuntu20.04",
    "11.4.3-cudnn8-devel-ubuntu20.04",
    "11.3.0-cudnn8-devel-ubuntu20.04",
    "11.2.2-base-ubuntu20.04",
    "11.2-base",
    "11.2-cudnn8-devel-ubuntu20.04",
    "11.1-cudnn8-runtime",
    "11.1-base-ubuntu18.04",
    "11.0-base",
    "11.0-cudnn8-devel-ubuntu18.04-rc",
    "11.0-devel-ubuntu18.04-rc",
    "11.0.3-cudnn8-devel-ubuntu18.04",
    "11.0.3-base-ubuntu20.04",
    "10.2-base",
    "10.2-runtime",
    "10.2-cudnn7-devel",
    "10.2-cudnn7-devel-ubuntu18.04",
    "10.2-cudnn8-runtime-ubuntu18.04",
    "10.1-cudnn8-devel-centos7",
    "10.1-cudnn7-runtime-ubuntu18.04",
    "10.0-cudnn7-devel-ubuntu16.04",
    "9.2-devel-ubuntu18.04",
    "9.0-cudnn7-devel",
    "9.0-cudnn7-runtime-ubuntu16.04",
    "9.0-base-ubuntu16.04",
    "8.0-cudnn5-devel",
    "8.0-cudnn6-devel",
    "8.0-cudnn5-devel-ubuntu14.04",
    "8.0-cudnn7-devel-ubuntu16.04",
    "8.0-runtime-centos6",
    "7.5-cudnn5-devel",
    "7.5-cudnn4-runtime",
    "7.0-cudnn4-devel",
    "7.0-cudnn4-devel-centos7",
    "7.0-cudnn3-devel",
    "7.0-cudnn2-devel",
    "6.5-devel",
    "6.5-devel-ubuntu14.04",
];

#[test]
fn real_tags_parse() {
    for tag in REAL {
        let t = ok(tag);
        assert_eq!(t.tag, *tag);
        // Printing it back from its parts gives the same tag.
        assert_eq!(t.with_flavor(t.flavor), *tag);
    }
}

#[test]
fn parts() {
    let t = ok("12.4.1-cudnn-runtime-ubuntu22.04");
    assert_eq!(t.version.to_string(), "12.4.1");
    assert_eq!(t.cudnn, Cudnn::Unversioned);
    assert_eq!(t.cudnn.major(), Some(9));
    assert_eq!(t.flavor, Flavor::Runtime);
    assert_eq!(t.os.as_deref(), Some("ubuntu22.04"));
    assert!(!t.has_nvcc() && !t.rc && !t.tensorrt);

    let t = ok("9.0-cudnn7-devel");
    assert_eq!(t.version.to_string(), "9.0");
    assert_eq!(t.cudnn, Cudnn::Major(7));
    assert_eq!(t.flavor, Flavor::Devel);
    assert_eq!(t.os, None);
    assert!(t.has_nvcc());

    let t = ok("11.0-cudnn8-devel-ubuntu18.04-rc");
    assert!(t.rc);
    assert_eq!(t.os.as_deref(), Some("ubuntu18.04"));

    let t = ok("13.0.0-tensorrt-devel-ubuntu24.04");
    assert!(t.tensorrt);
    assert_eq!(t.flavor, Flavor::Devel);
    assert!(t.contents().iter().any(|c| c.contains("TensorRT")));

    assert_eq!(ok("10.2-base").os, None);
    assert_eq!(
        ok("12.3.2-cudnn9-runtime-ubuntu22.04").cudnn.to_string(),
        "cudnn9"
    );
}

#[test]
fn contents_say_where_nvcc_is() {
    let runtime = ok("12.4.1-runtime-ubuntu22.04");
    assert!(runtime.contents()[0].contains("no nvcc"));
    assert!(runtime
        .notes()
        .iter()
        .any(|n| n.contains("12.4.1-devel-ubuntu22.04")));
    let devel = ok("12.4.1-cudnn-devel-ubuntu22.04");
    assert!(devel.contents()[0].contains("nvcc"));
    assert!(devel.contents()[1].contains("cuDNN 9"));
    assert!(ok("12.4.1-base-ubuntu22.04").contents()[0].contains("libcudart"));
}

#[test]
fn invalid_tags_are_refused_with_the_reason() {
    refused("", "empty");
    refused("latest", "no `latest`");
    refused("12.4.1", "no flavor");
    refused("12.4.1-ubuntu22.04", "not a flavor");
    refused("runtime-ubuntu22.04", "must start with the CUDA version");
    refused(
        "v12.4.1-runtime-ubuntu22.04",
        "must start with the CUDA version",
    );
    refused("12-runtime-ubuntu22.04", "must start with the CUDA version");
    refused("12.4-runtime-ubuntu22.04", "patch release");
    refused("10.2.89-base", "`X.Y` only");
    refused(
        "12.4.1-cudnn8-runtime-ubuntu22.04",
        "from CUDA 12.4 on the cuDNN tags say `cudnn`",
    );
    refused("11.8.0-cudnn-runtime-ubuntu22.04", "CUDA 12.4 and later");
    refused("12.4.1-cudnn7-devel-ubuntu22.04", "CUDA 8.0 to 10.2");
    refused("9.0-cudnn8-devel", "CUDA 10.1 to 12.3");
    refused("10.2-cudnn5-devel", "CUDA 8.0 and older");
    refused("12.4.1-cudnn1-runtime-ubuntu22.04", "older than any cuDNN");
    refused("12.4.1-cudnnx-runtime-ubuntu22.04", "not a cuDNN variant");
    refused("12.4.1-cudnn-base-ubuntu22.04", "no cuDNN variant");
    refused("7.5-base", "from CUDA 8.0");
    refused("12.4.1-tensorrt-runtime-ubuntu22.04", "from CUDA 13.0.0 on");
    refused("13.0.0-tensorrt-base-ubuntu24.04", "tensorrt-runtime");
    refused("13.0.0-cudnn-tensorrt-runtime-ubuntu24.04", "no cuDNN part");
    refused("12.4.1-runtime-ubuntu22.04-extra", "unexpected `extra`");
    refused("12.4.1-runtime-Ubuntu22.04", "not an OS");
    refused("12.4.1-runtime-ubuntu", "not an OS");
    refused("12.4.1-runtime-22.04", "not an OS");
    refused("12.4.1-runtime-ubuntu22..04", "not an OS");
    refused("12.4.1-runtime-ubuntu22.04_x", "not an OS");
    refused("12.4.1-runtime-ubuntu22.04 ", "at most 128");
    refused("12.4.1-runtime-ubuntu22.04@sha256", "at most 128");
    refused("5.5-devel", "start at CUDA 6.5");
    refused("12.4.1--runtime", "not a flavor");
    // Ubuntu's versions are YY.MM: these are typos, not releases the tables lack.
    refused("12.4.1-runtime-ubuntu22.4", "not an Ubuntu release");
    refused("12.4.1-runtime-ubuntu2204", "YY.MM");
    refused(&"1".repeat(200), "at most 128");
}

/// Every tag in NVIDIA's supported and unsupported lists, over their whole history.
const PUBLISHED: &str = include_str!("../../data/nvidia-cuda-tags.txt");

#[test]
fn every_tag_nvidia_published_parses_and_is_known() {
    let tags: Vec<&str> = PUBLISHED
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(tags.len() > 2000, "{} tags", tags.len());
    for tag in [
        "8.0-runtime",
        "8.0-cudnn5-devel-ubuntu16.04",
        "13.0.0-tensorrt-devel-ubuntu24.04",
    ] {
        assert!(tags.contains(&tag), "{tag} is missing from the list");
    }
    for tag in tags {
        if tag == "latest" {
            // A removed alias: refused on purpose, with a hint naming a real tag.
            let e = CudaTag::parse(tag).expect_err("latest is refused");
            assert!(e.to_string().contains("no `latest`"), "{e}");
            assert!(e.hint().contains("12.4.1-runtime-ubuntu22.04"));
            continue;
        }
        let t = ok(tag);
        assert_eq!(t.with_flavor(t.flavor), tag, "{tag} prints back");
        assert!(t.unknown.is_empty(), "{tag}: {:?}", t.unknown);
    }
}

#[test]
fn what_the_tables_do_not_know_is_marked_not_refused() {
    for (tag, says) in [
        (
            "12.8.1-runtime-debian12",
            "OS `debian12` is not in cudaimg's table",
        ),
        ("13.1.0-base-amzn2025", "OS `amzn2025`"),
        ("13.1.0-base-ubuntu28.04", "OS `ubuntu28.04`"),
        ("13.1.0-devel-ubi10.1", "OS `ubi10.1`"),
        (
            "12.4.1-cudnn10-runtime-ubuntu22.04",
            "cuDNN 10 is not in cudaimg's table",
        ),
        (
            "13.1.0-tensorrt-devel-ubuntu24.04",
            "a TensorRT image of CUDA 13.1.0",
        ),
        (
            "99.0.0-runtime-ubuntu30.04",
            "CUDA 99.0 is not in cudaimg's table",
        ),
    ] {
        let t = ok(tag);
        assert!(
            t.unknown
                .iter()
                .any(|u| u.contains(says) && u.contains("treated as unknown")),
            "{tag}: {:?}",
            t.unknown
        );
        assert!(t.unknown.iter().all(|u| u.contains(eol::AS_OF)));
        // The notes `explain` prints carry the marks.
        assert!(t.notes().iter().any(|n| n.contains(says)), "{tag}");
        assert_eq!(t.with_flavor(t.flavor), tag);
    }
    assert!(ok("12.4.1-runtime-ubuntu22.04").unknown.is_empty());
}

#[test]
fn errors_escape_what_they_echo() {
    let e = CudaTag::parse("12.4.1-runtime\x1b[2J").expect_err("not a tag");
    assert!(!cudaimg_oci::text::has_unsafe(&e.to_string()), "{e}");
    assert!(e.to_string().contains("\\u{1b}"), "{e}");
}

#[test]
fn os_names() {
    assert_eq!(os_name("ubuntu22.04").as_deref(), Some("Ubuntu 22.04"));
    assert_eq!(os_name("ubi9").as_deref(), Some("Red Hat UBI 9"));
    assert_eq!(os_name("cm2").as_deref(), Some("CBL-Mariner 2"));
    assert_eq!(os_name("centos7").as_deref(), Some("CentOS 7"));
    assert_eq!(os_name("amzn2023").as_deref(), Some("Amazon Linux 2023"));
    assert_eq!(os_name("ubuntu"), None);
    assert_eq!(os_name("ubi"), None);
    assert_eq!(os_name("windows"), None);
}

#[test]
fn os_availability_is_a_note_not_an_error() {
    let t = ok("12.4.1-runtime-ubuntu24.04");
    assert!(
        t.notes().iter().any(|n| n.contains("from CUDA 12.5.1 on")),
        "{:?}",
        t.notes()
    );
    let t = ok("13.0.1-runtime-ubuntu20.04");
    assert!(t.notes().iter().any(|n| n.contains("up to CUDA 12.9.1")));
    assert!(ok("12.5.1-runtime-ubuntu24.04")
        .notes()
        .iter()
        .all(|n| !n.contains("probably never existed")));
}

/// Found by the property tests: `10.00` was read as CUDA 10.0 and printed back as `10.0`.
#[test]
fn a_version_with_a_leading_zero_is_not_a_tag_version() {
    assert!(CudaTag::parse("10.00-devel-ubuntu22.04").is_err());
    assert!(CudaTag::parse("12.04.1-runtime-ubuntu22.04").is_err());
    assert!(CudaTag::parse("10.0-devel-ubuntu18.04").is_ok());
}

#[test]
fn the_ubuntu26_04_family_is_known_from_13_3_on() {
    let t = ok("13.4.1-devel-ubuntu26.04");
    assert!(t.unknown.is_empty(), "{:?}", t.unknown);
    let t = ok("13.1.0-base-ubuntu26.04");
    assert!(
        t.notes().iter().any(|n| n.contains("from CUDA 13.3.0 on")),
        "{:?}",
        t.notes()
    );
}
