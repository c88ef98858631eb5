//! `index.json`, the layout's list of named images. Fields other tools wrote and cudaimg does
//! not know are kept as they were. Private to the store: other crates go through
//! [`crate::Store::name`], [`crate::Store::list`] and the other typed operations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use cudaimg_oci::digest::{Digest, DigestError};
use cudaimg_oci::manifest::{DOCKER_LIST, OCI_INDEX};
use cudaimg_oci::platform::Platform;

/// The OCI annotation that names an image in a layout; cudaimg writes canonical references.
pub(crate) use cudaimg_oci::manifest::REF_NAME;
/// The digest of the manifest list or index the entry's manifest was chosen from.
pub(crate) const INDEX_DIGEST_ANNOTATION: &str = "io.cudaimg.index.digest";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexFile {
    pub schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<IndexEntry>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Default for IndexFile {
    fn default() -> Self {
        IndexFile {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_owned()),
            manifests: Vec::new(),
            other: Map::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexEntry {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<IndexPlatform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl From<&Platform> for IndexPlatform {
    fn from(p: &Platform) -> Self {
        IndexPlatform {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone(),
            other: Map::new(),
        }
    }
}

impl IndexPlatform {
    pub(crate) fn to_platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }
}

impl IndexEntry {
    pub(crate) fn ref_name(&self) -> Option<&str> {
        self.annotations.get(REF_NAME).map(String::as_str)
    }

    pub(crate) fn digest(&self) -> Result<Digest, DigestError> {
        Digest::parse(&self.digest)
    }

    /// Whether the entry names a manifest list or index itself: a whole multi-platform
    /// image ([`crate::sets`]), not one platform of it.
    pub(crate) fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }

    pub(crate) fn index_digest(&self) -> Option<&str> {
        self.annotations
            .get(INDEX_DIGEST_ANNOTATION)
            .map(String::as_str)
    }
}

impl IndexFile {
    /// Adds `entry`, replacing any entry with the same name and platform: a tag that moved
    /// replaces the old image, while other platforms of the same tag stay.
    pub(crate) fn upsert(&mut self, entry: IndexEntry) {
        let name = entry.ref_name().map(str::to_owned);
        let platform = entry.platform.clone();
        self.manifests.retain(|e| {
            let same_name = e.ref_name().map(str::to_owned) == name;
            let same_platform = e.platform.as_ref().map(IndexPlatform::to_platform)
                == platform.as_ref().map(IndexPlatform::to_platform);
            !(same_name && same_platform)
        });
        self.manifests.push(entry);
    }

    /// Entries named `name`.
    pub(crate) fn find<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a IndexEntry> + 'a {
        self.manifests
            .iter()
            .filter(move |e| e.ref_name() == Some(name))
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn entry(name: &str, digest: &str, arch: &str) -> IndexEntry {
        IndexEntry {
            media_type: "m".into(),
            digest: digest.into(),
            size: 1,
            platform: Some(IndexPlatform::from(&Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: None,
            })),
            annotations: [(REF_NAME.to_owned(), name.to_owned())].into(),
            other: Map::new(),
        }
    }

    #[test]
    fn upsert_replaces_same_name_and_platform_only() {
        let mut idx = IndexFile::default();
        idx.upsert(entry("a:1", "old", "amd64"));
        idx.upsert(entry("a:1", "arm", "arm64"));
        idx.upsert(entry("b:1", "b", "amd64"));
        idx.upsert(entry("a:1", "new", "amd64"));
        let digests: Vec<_> = idx.manifests.iter().map(|e| e.digest.as_str()).collect();
        assert_eq!(digests, ["arm", "b", "new"]);
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let text = r#"{"schemaVersion":2,"manifests":[{"mediaType":"m","digest":"d","size":3,"x-tool":1}],"extra":true}"#;
        let idx: IndexFile = serde_json::from_str(text).expect("parses");
        let out = serde_json::to_string(&idx).expect("serializes");
        assert!(
            out.contains(r#""x-tool":1"#) && out.contains(r#""extra":true"#),
            "{out}"
        );
    }
}
