//! Manifest shapes: Docker schema2 and OCI manifests, Docker manifest lists and OCI indexes.
//!
//! Manifests are parsed only to learn what they point to; the stored and hashed form is
//! always the bytes the registry sent. Parsing treats the input as hostile: every digest is
//! validated before it can name a file, sizes must be sane, and the body is size-capped
//! before it is read (see [`MAX_MANIFEST_BYTES`]).

use oci_client::manifest::{
    OciDescriptor, OciImageIndex, OciImageManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use serde::Deserialize;

use crate::digest::Digest;
use crate::platform::Platform;
use crate::text::shown;

pub const DOCKER_MANIFEST: &str = IMAGE_MANIFEST_MEDIA_TYPE;
pub const DOCKER_LIST: &str = IMAGE_MANIFEST_LIST_MEDIA_TYPE;
pub const OCI_MANIFEST: &str = OCI_IMAGE_MEDIA_TYPE;
pub const OCI_INDEX: &str = OCI_IMAGE_INDEX_MEDIA_TYPE;
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Uncompressed layers (the digest is the diff ID).
pub const DOCKER_LAYER_PLAIN: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const OCI_LAYER_PLAIN: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The OCI annotation that names an image in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The `Accept` header for manifest requests: every type cudaimg understands.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused unread, as containerd does: real ones are a few KB.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// A bound on descriptor sizes (1 TiB) that no real layer reaches but that keeps arithmetic
/// on hostile values from overflowing.
const MAX_BLOB_SIZE: u64 = 1 << 40;
const MAX_ENTRIES: usize = 4096;

/// A pointer to content: what it is, its digest, its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// A single-platform image manifest.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// Config plus layers, the bytes a full pull moves besides the manifest.
    pub fn content_size(&self) -> u64 {
        self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }

    /// Whether the manifest uses OCI media types (which skopeo 1.9 requires of OCI layouts).
    pub fn is_oci(&self) -> bool {
        self.media_type == OCI_MANIFEST
    }
}

/// One entry of a manifest list or OCI index.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub descriptor: Descriptor,
    pub platform: Option<Platform>,
}

/// A manifest list or OCI index.
#[derive(Debug, Clone)]
pub struct Index {
    pub media_type: String,
    pub manifests: Vec<IndexEntry>,
}

impl Index {
    /// The first entry that serves `want`, as docker and containerd choose.
    pub fn select(&self, want: &Platform) -> Option<&IndexEntry> {
        self.manifests
            .iter()
            .find(|e| e.platform.as_ref().is_some_and(|p| want.matches(p)))
    }

    /// The platforms on offer, for an error that lists them.
    pub fn platforms(&self) -> Vec<String> {
        self.manifests
            .iter()
            .filter_map(|e| e.platform.as_ref().map(ToString::to_string))
            .collect()
    }
}

#[derive(Debug, Clone)]
pub enum Manifest {
    Image(ImageManifest),
    Index(Index),
}

/// Why manifest bytes cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ManifestError {
    // The parser's and the registry's words are echoed through `shown`.
    #[error("manifest is not valid JSON of a known shape: {}", shown(.0))]
    Json(String),
    #[error("Docker schema 1 manifests are deprecated and not supported; push the image again with a current Docker or use another tag")]
    Schema1,
    #[error("media type `{}` is not an image manifest or index", shown(.0))]
    UnsupportedMediaType(String),
    #[error("{which}: {}", shown(reason))]
    BadDescriptor { which: String, reason: String },
    #[error("manifest is larger than {} bytes", MAX_MANIFEST_BYTES)]
    TooLarge,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
    layers: Option<serde::de::IgnoredAny>,
}

/// Parses manifest bytes. `content_type` is the response's `Content-Type`, used only when
/// the body does not name its own media type (OCI allows that).
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge);
    }
    let json = |e: serde_json::Error| ManifestError::Json(e.to_string());
    let probe: Probe = serde_json::from_slice(bytes).map_err(json)?;
    if probe.schema_version == Some(1) {
        return Err(ManifestError::Schema1);
    }
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "text/plain");
    let media_type = match (probe.media_type.as_deref(), header) {
        (Some(m), _) => m.to_owned(),
        (None, Some(h)) => h.to_owned(),
        (None, None) if probe.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) if probe.layers.is_some() => OCI_MANIFEST.to_owned(),
        (None, None) => {
            return Err(ManifestError::Json(
                "no mediaType, manifests or layers".into(),
            ))
        }
    };
    match media_type.as_str() {
        DOCKER_LIST | OCI_INDEX => {
            let raw: OciImageIndex = serde_json::from_slice(bytes).map_err(json)?;
            if raw.manifests.len() > MAX_ENTRIES {
                return Err(ManifestError::Json(format!(
                    "more than {MAX_ENTRIES} entries"
                )));
            }
            let manifests = raw
                .manifests
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let which = format!("manifests[{i}]");
                    Ok(IndexEntry {
                        descriptor: descriptor(&which, &e.media_type, &e.digest, e.size)?,
                        platform: e.platform.as_ref().map(|p| Platform {
                            os: p.os.to_string(),
                            architecture: p.architecture.to_string(),
                            variant: p.variant.clone(),
                        }),
                    })
                })
                .collect::<Result<_, ManifestError>>()?;
            Ok(Manifest::Index(Index {
                media_type,
                manifests,
            }))
        }
        DOCKER_MANIFEST | OCI_MANIFEST => {
            let raw: OciImageManifest = serde_json::from_slice(bytes).map_err(json)?;
            if raw.layers.len() > MAX_ENTRIES {
                return Err(ManifestError::Json(format!(
                    "more than {MAX_ENTRIES} layers"
                )));
            }
            let layers = raw
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| oci_descriptor(&format!("layers[{i}]"), l))
                .collect::<Result<_, _>>()?;
            Ok(Manifest::Image(ImageManifest {
                media_type,
                config: oci_descriptor("config", &raw.config)?,
                layers,
            }))
        }
        DOCKER_SCHEMA1 => Err(ManifestError::Schema1),
        other => Err(ManifestError::UnsupportedMediaType(other.to_owned())),
    }
}

fn oci_descriptor(which: &str, d: &OciDescriptor) -> Result<Descriptor, ManifestError> {
    descriptor(which, &d.media_type, &d.digest, d.size)
}

fn descriptor(
    which: &str,
    media_type: &str,
    digest: &str,
    size: i64,
) -> Result<Descriptor, ManifestError> {
    let bad = |reason: String| ManifestError::BadDescriptor {
        which: which.to_owned(),
        reason,
    };
    let digest = Digest::parse(digest).map_err(|e| bad(e.to_string()))?;
    let size = u64::try_from(size)
        .ok()
        .filter(|s| *s <= MAX_BLOB_SIZE)
        .ok_or_else(|| bad(format!("size {size} is out of range")))?;
    // Only the empty blob has no bytes; any other digest with size 0 can never be met.
    if size == 0 && digest != Digest::of(b"") {
        return Err(bad(format!(
            "size 0 cannot hold content with digest {digest}"
        )));
    }
    Ok(Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
    })
}

/// The parts of an image config that `inspect` shows. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    pub variant: Option<String>,
    pub created: Option<String>,
    #[serde(default)]
    pub config: ContainerConfig,
    #[serde(default)]
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn parses_a_pretty_printed_docker_list() {
        let list = format!(
            r#"{{
   "manifests": [
      {{
         "digest": "{D1}",
         "mediaType": "{DOCKER_MANIFEST}",
         "platform": {{ "architecture": "amd64", "os": "linux" }},
         "size": 2000
      }},
      {{
         "digest": "{D2}",
         "mediaType": "{DOCKER_MANIFEST}",
         "platform": {{ "architecture": "arm64", "os": "linux", "variant": "v8" }},
         "size": 2001
      }}
   ],
   "mediaType": "{DOCKER_LIST}",
   "schemaVersion": 2
}}"#
        );
        let Manifest::Index(idx) = parse(list.as_bytes(), None).expect("parses") else {
            panic!("expected an index");
        };
        assert_eq!(idx.platforms(), ["linux/amd64", "linux/arm64/v8"]);
        let arm = idx
            .select(&"linux/arm64".parse().expect("platform"))
            .expect("arm64 entry");
        assert_eq!(arm.descriptor.digest.as_str(), D2);
        assert!(idx
            .select(&"linux/ppc64le".parse().expect("platform"))
            .is_none());
    }

    #[test]
    fn refuses_hostile_descriptors() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"x","digest":"sha256:../../etc/passwd","size":1}},"layers":[]}}"#
        );
        let e = parse(m.as_bytes(), None).expect_err("path traversal");
        assert!(e.to_string().starts_with("config:"), "{e}");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"x","digest":"{D1}","size":-5}},"layers":[]}}"#
        );
        assert!(parse(m.as_bytes(), None).is_err());
        assert!(matches!(
            parse(br#"{"schemaVersion":1,"name":"x"}"#, None),
            Err(ManifestError::Schema1)
        ));
        assert!(parse(b"not json", None).is_err());
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"x","digest":"{D1}","size":0}},"layers":[]}}"#
        );
        assert!(
            parse(m.as_bytes(), None).is_err(),
            "size 0 with a non-empty digest"
        );
        let huge = vec![b' '; usize::try_from(MAX_MANIFEST_BYTES + 1).expect("fits")];
        assert!(matches!(parse(&huge, None), Err(ManifestError::TooLarge)));
    }

    #[test]
    fn media_type_can_come_from_the_header() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{D1}","size":3}},
            "layers":[{{"mediaType":"l","digest":"{D2}","size":4}}]}}"#
        );
        let Manifest::Image(img) = parse(m.as_bytes(), Some(DOCKER_MANIFEST)).expect("parses")
        else {
            panic!("expected an image")
        };
        assert_eq!(img.media_type, DOCKER_MANIFEST);
        assert_eq!(img.content_size(), 7);
    }
}
