//! Property tests of every parser that reads untrusted input: image references, `nvidia/cuda`
//! tags, manifests and indexes, `WWW-Authenticate` challenges and `mirrors.toml`.
//!
//! Each parser is fed arbitrary strings or bytes, and inputs built near the valid ones (valid
//! parts with one part broken, or a valid input with a character inserted or removed), and
//! must: never panic; never put a raw control character in an error message; and, where a
//! printed form exists, read back what it printed (`parse(display(x)) == x`).
//!
//! The case counts are fixed and small so that the whole set runs in a few seconds in CI;
//! failures are not persisted to files (a failure found here becomes a named unit test next
//! to the parser it broke).

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use cudaimg_config::Config;
use cudaimg_cuda::CudaTag;
use cudaimg_oci::manifest;
use cudaimg_oci::reference::ImageRef;
use cudaimg_oci::text::has_unsafe;
use cudaimg_registry::auth::{read_challenge, Challenge};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any text, control characters and non-ASCII included, weighted towards the characters
/// the grammars give meaning to.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9:/@._\\-\\[\\]]{0,40}",
        "[a-z0-9.:/@\\[\\]\\x00-\\x1f\\x7fタ\u{202e}-]{0,24}",
    ]
}

/// Inserts `c` at, or removes the character at, `at` (taken modulo the length).
fn mutate(s: &str, at: usize, c: Option<char>) -> String {
    let chars: Vec<char> = s.chars().collect();
    let i = if chars.is_empty() {
        0
    } else {
        at % (chars.len() + 1)
    };
    let mut out = chars.clone();
    match c {
        Some(c) => out.insert(i, c),
        None if i < out.len() => {
            out.remove(i);
        }
        None => {}
    }
    out.into_iter().collect()
}

fn mutation() -> impl Strategy<Value = (usize, Option<char>)> {
    (
        any::<usize>(),
        prop_oneof![
            Just(None),
            any::<char>().prop_map(Some),
            proptest::sample::select(vec![':', '/', '@', '.', '-', '_', '[', ']', '\u{1b}', 'A'])
                .prop_map(Some),
        ],
    )
}

// ---------------------------------------------------------------------------------------
// references

fn check_reference(input: &str) {
    match ImageRef::parse(input) {
        Ok(r) => {
            let printed = r.to_string();
            assert_eq!(
                ImageRef::parse(&printed).ok().as_ref(),
                Some(&r),
                "{input:?} printed as {printed:?}"
            );
            assert!(printed.is_ascii(), "{input:?} -> {printed:?}");
        }
        Err(e) => assert!(!has_unsafe(&e.to_string()), "{input:?}: {e}"),
    }
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("localhost".to_owned()),
        "[a-z0-9]{1,8}(\\.[a-zA-Z0-9][a-zA-Z0-9-]{0,6}[a-zA-Z0-9]){1,3}",
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        any::<[u16; 8]>().prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s))),
        Just("[::1]".to_owned()),
    ]
}

/// `(reference, whether it must parse)`.
fn near_valid_reference() -> impl Strategy<Value = (String, bool)> {
    let port = prop_oneof![Just(None), (0u32..=99_999).prop_map(Some)];
    let path =
        proptest::collection::vec("[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}", 1..4);
    let tag = prop_oneof![
        Just(None),
        "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}".prop_map(Some)
    ];
    let digest = prop_oneof![
        Just(None),
        "[0-9a-f]{64}".prop_map(|h| Some(format!("sha256:{h}")))
    ];
    (proptest::option::of(host()), port, path, tag, digest).prop_map(
        |(host, port, path, tag, digest)| {
            let mut s = String::new();
            let mut valid = true;
            if let Some(h) = &host {
                s.push_str(h);
                if let Some(p) = port {
                    s.push_str(&format!(":{p}"));
                    valid &= (1..=65535).contains(&p);
                }
                s.push('/');
            }
            s.push_str(&path.join("/"));
            if let Some(t) = &tag {
                s.push(':');
                s.push_str(t);
            }
            if let Some(d) = &digest {
                s.push('@');
                s.push_str(d);
            }
            // Without a host, a first part with a `.` is taken as one, and must be one.
            if host.is_none() && path.len() > 1 && path[0].contains('.') {
                valid &= cudaimg_oci::reference::registry_host(&path[0]).is_ok();
            }
            valid &= path.join("/").len() + 8 <= 255;
            (s, valid)
        },
    )
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn references_never_panic_and_errors_are_printable(input in text()) {
        check_reference(&input);
    }

    #[test]
    fn near_valid_references_parse_and_round_trip(
        (input, valid) in near_valid_reference(),
        (at, c) in mutation(),
    ) {
        if valid {
            let r = ImageRef::parse(&input);
            prop_assert!(r.is_ok(), "{input:?}: {:?}", r.err().map(|e| e.to_string()));
        } else {
            prop_assert!(ImageRef::parse(&input).is_err(), "{input:?} must be refused");
        }
        check_reference(&input);
        check_reference(&mutate(&input, at, c));
    }
}

// ---------------------------------------------------------------------------------------
// nvidia/cuda tags

/// Checks one tag input; whether it parsed (and so took the round trip).
fn check_tag(input: &str) -> bool {
    match CudaTag::parse(input) {
        Ok(t) => {
            assert_eq!(t.with_flavor(t.flavor), input);
            assert_eq!(CudaTag::parse(&t.with_flavor(t.flavor)).ok(), Some(t));
            true
        }
        Err(e) => {
            assert!(!has_unsafe(&e.to_string()), "{input:?}: {e}");
            false
        }
    }
}

/// Every tag NVIDIA has listed for nvidia/cuda: the data the tag tables were written
/// from, read here as a list of real, valid inputs.
const LISTED_TAGS: &str = include_str!("../../crates/cudaimg-cuda/data/nvidia-cuda-tags.txt");

fn listed_tags() -> Vec<&'static str> {
    LISTED_TAGS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Runs `check` on `cases` inputs from `strategy` (a failure panics with the shrunk input)
/// and returns in how many cases it said the interesting branch was taken.
fn cases_taking<S: Strategy>(cases: u32, strategy: S, check: impl Fn(S::Value) -> bool) -> u32 {
    let taken = std::cell::Cell::new(0u32);
    proptest::test_runner::TestRunner::new(config(cases))
        .run(&strategy, |v| {
            if check(v) {
                taken.set(taken.get() + 1);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    taken.get()
}

fn near_valid_tag() -> impl Strategy<Value = String> {
    let version = prop_oneof![
        (6u32..=14, 0u32..=10).prop_map(|(a, b)| format!("{a}.{b}")),
        (10u32..=14, 0u32..=10, 0u32..=3).prop_map(|(a, b, c)| format!("{a}.{b}.{c}")),
    ];
    let cudnn = prop_oneof![
        Just(String::new()),
        Just("cudnn-".to_owned()),
        (0u32..=12).prop_map(|n| format!("cudnn{n}-")),
    ];
    let flavor = proptest::sample::select(vec!["base", "runtime", "devel", "tensorrt-runtime"]);
    let os = prop_oneof![
        Just(String::new()),
        Just("-ubuntu22.04".to_owned()),
        "-[a-z]{1,10}[0-9]{1,4}(\\.[0-9]{1,2})?",
    ];
    let rc = prop_oneof![Just(""), Just("-rc")];
    (version, cudnn, flavor, os, rc).prop_map(|(v, c, f, o, rc)| format!("{v}-{c}{f}{o}{rc}"))
}

/// Any text, a real tag, or one built near the valid ones: a quarter or more parse, so the
/// round trip is exercised, not only the refusals.
#[test]
fn tags_never_panic_and_round_trip() {
    let input = prop_oneof![
        text(),
        proptest::sample::select(listed_tags()).prop_map(str::to_owned),
        near_valid_tag(),
    ];
    let parsed = cases_taking(512, input, |input| check_tag(&input));
    assert!(parsed >= 512 / 4, "only {parsed} of 512 inputs parsed");
}

/// Near-valid and real tags, and each with one character inserted or removed.
#[test]
fn near_valid_tags_round_trip() {
    let input = prop_oneof![
        near_valid_tag(),
        proptest::sample::select(listed_tags()).prop_map(str::to_owned),
    ];
    let parsed = cases_taking(512, (input, mutation()), |(input, (at, c))| {
        check_tag(&mutate(&input, at, c));
        check_tag(&input)
    });
    assert!(parsed >= 512 / 3, "only {parsed} of 512 inputs parsed");
}

/// The OSes of NVIDIA's tag list, taken from the list itself (the last part that names a
/// family and a version), plus `ubuntu26.04`, which CUDA.md records as appearing with 13.3.0
/// after the list was read: what cudaimg should know, not what its table says it knows.
fn listed_oses() -> Vec<String> {
    let mut oses: Vec<String> = listed_tags()
        .iter()
        .filter_map(|t| {
            let last = t.trim_end_matches("-rc").rsplit('-').next()?;
            let letters = last.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
            (!letters.is_empty() && letters.len() < last.len()).then(|| last.to_owned())
        })
        .collect();
    oses.push("ubuntu26.04".to_owned());
    oses.sort();
    oses.dedup();
    oses
}

/// The OS is never a reason to refuse a tag of the right form: one of the list's is taken
/// as known, any other is marked unknown.
#[test]
fn an_unknown_os_is_marked_never_refused() {
    let listed = listed_oses();
    assert!(listed.len() >= 20, "{listed:?}");
    let os = prop_oneof![
        proptest::sample::select(listed.clone()),
        "[a-z]{1,12}[0-9]{1,4}(\\.[0-9]{1,2})?",
    ];
    let known = cases_taking(256, os, |os| {
        let tag = format!("12.8.1-cudnn-runtime-{os}");
        let t = CudaTag::parse(&tag).unwrap_or_else(|e| panic!("{tag} refused: {e}"));
        let in_list = listed.contains(&os);
        assert_eq!(t.unknown.is_empty(), in_list, "{tag}: {:?}", t.unknown);
        in_list
    });
    assert!(
        known >= 256 / 4,
        "only {known} of 256 OSes were listed ones"
    );
}

// ---------------------------------------------------------------------------------------
// manifests and indexes

fn check_manifest(bytes: &[u8], content_type: Option<&str>) {
    if let Err(e) = manifest::parse(bytes, content_type) {
        assert!(!has_unsafe(&e.to_string()), "{e}");
    }
}

/// A JSON string literal of `s`, escapes and all, so control characters reach the parser.
fn json(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn near_valid_manifest() -> impl Strategy<Value = String> {
    let media = prop_oneof![
        Just(manifest::OCI_MANIFEST.to_owned()),
        Just(manifest::DOCKER_MANIFEST.to_owned()),
        Just(manifest::OCI_INDEX.to_owned()),
        Just(manifest::DOCKER_LIST.to_owned()),
        text(),
    ];
    let digest = prop_oneof![
        "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
        text(),
        Just("sha256:../../../etc/passwd".to_owned()),
    ];
    let size = prop_oneof![any::<i64>(), 0i64..4096, Just(-1i64), Just(i64::MAX)];
    let descriptor = (media.clone(), digest, size).prop_map(|(m, d, s)| {
        format!(
            r#"{{"mediaType":{},"digest":{},"size":{s},"platform":{{"os":"linux","architecture":{}}}}}"#,
            json(&m),
            json(&d),
            json(&m)
        )
    });
    let list = proptest::collection::vec(descriptor.clone(), 0..4);
    (media, descriptor, list, any::<bool>()).prop_map(|(m, config, list, as_index)| {
        let body = list.join(",");
        if as_index {
            format!(
                r#"{{"schemaVersion":2,"mediaType":{},"manifests":[{body}]}}"#,
                json(&m)
            )
        } else {
            format!(
                r#"{{"schemaVersion":2,"mediaType":{},"config":{config},"layers":[{body}]}}"#,
                json(&m)
            )
        }
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn manifests_never_panic_on_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        content_type in proptest::option::of(text()),
    ) {
        check_manifest(&bytes, content_type.as_deref());
    }

    #[test]
    fn near_valid_manifests_never_panic(
        body in near_valid_manifest(),
        (at, c) in mutation(),
        content_type in proptest::option::of(text()),
    ) {
        check_manifest(body.as_bytes(), content_type.as_deref());
        check_manifest(mutate(&body, at, c).as_bytes(), None);
    }
}

// ---------------------------------------------------------------------------------------
// WWW-Authenticate

fn check_challenge(header: &str) {
    match read_challenge(Some(header)) {
        Ok(Challenge::Bearer { realm, .. }) => {
            assert!(matches!(realm.scheme(), "http" | "https"), "{header:?}");
        }
        Ok(Challenge::Basic) => {}
        Err(e) => assert!(!has_unsafe(&e), "{header:?}: {e}"),
    }
}

fn near_valid_challenge() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("https://auth.docker.io/token".to_owned()),
        Just("http://127.0.0.1:5000/token".to_owned()),
        Just("file:///etc/passwd".to_owned()),
        text(),
    ];
    let scheme = proptest::sample::select(vec!["Bearer", "bearer", "Basic", "Negotiate", ""]);
    (scheme, value, text(), text(), any::<bool>()).prop_map(
        |(scheme, realm, service, scope, quote)| {
            let q = |s: &str| {
                if quote {
                    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
                } else {
                    s.to_owned()
                }
            };
            format!(
                "{scheme} realm={},service={},scope={}",
                q(&realm),
                q(&service),
                q(&scope)
            )
        },
    )
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn challenges_never_panic(header in text()) {
        check_challenge(&header);
    }

    #[test]
    fn near_valid_challenges_never_panic(header in near_valid_challenge(), (at, c) in mutation()) {
        check_challenge(&header);
        check_challenge(&mutate(&header, at, c));
    }
}

// ---------------------------------------------------------------------------------------
// mirrors.toml

fn check_config(text: &str) {
    match Config::parse(text, Path::new("mirrors.toml")) {
        Ok(c) => {
            for (host, reg) in c.registries() {
                // Keys are stored canonical: reading one again gives itself.
                assert_eq!(
                    cudaimg_oci::reference::registry_host(host).as_deref(),
                    Ok(host),
                    "{text:?}"
                );
                assert!(matches!(reg.endpoint.url.scheme(), "http" | "https"));
            }
        }
        Err(e) => assert!(!has_unsafe(&e.to_string()), "{text:?}: {e}"),
    }
}

fn near_valid_config() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("docker.io".to_owned()),
        host(),
        (host(), 0u32..=99_999).prop_map(|(h, p)| format!("{h}:{p}")),
        text(),
    ];
    let url = prop_oneof![
        Just("https://mirror.example".to_owned()),
        host().prop_map(|h| format!("http://{h}:5000")),
        text(),
    ];
    let caps = proptest::collection::vec(
        prop_oneof![Just("pull".to_owned()), Just("resolve".to_owned()), text()],
        0..3,
    );
    (key, url.clone(), url, caps, any::<bool>()).prop_map(|(key, endpoint, mirror, caps, insecure)| {
        let caps: Vec<String> = caps.iter().map(|c| json(c.as_str())).collect();
        format!(
            "[registries.{}]\nendpoint = {}\ninsecure = {insecure}\nmirrors = [{{ url = {}, capabilities = [{}] }}]\n",
            json(&key),
            json(&endpoint),
            json(&mirror),
            caps.join(", ")
        )
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn configs_never_panic(input in text()) {
        check_config(&input);
    }

    #[test]
    fn near_valid_configs_never_panic(input in near_valid_config(), (at, c) in mutation()) {
        check_config(&input);
        check_config(&mutate(&input, at, c));
    }
}
