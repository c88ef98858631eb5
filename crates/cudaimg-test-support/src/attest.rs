//! Build attestations beside a fixture, as buildkit pushes them (`docker buildx build
//! --attest …`): for each platform image, an OCI manifest of platform `unknown/unknown`
//! whose one layer is an in-toto statement about it, listed in an OCI index after the
//! platforms with the `vnd.docker.reference.*` annotations. Registries require every child
//! of an index to exist when the index is pushed, so a byte-exact copy must carry these too.
//!
//! Deterministic like the fixtures: every byte is a function of the fixture.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::fixtures::{
    sha256_digest, BlobRef, Document, Fixture, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST,
};
use super::push::Pusher;

/// The in-toto statement's media type (buildkit's attestation layers).
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// One attestation manifest and its blobs.
#[derive(Clone, Debug)]
pub struct Attestation {
    /// The platform manifest it is about.
    pub subject: String,
    pub manifest: Document,
    pub config: Document,
    /// The in-toto statement.
    pub layer: Document,
}

/// A fixture with attestations: a new index listing the fixture's platform manifests, then
/// one attestation per platform.
#[derive(Clone, Debug)]
pub struct Attested {
    pub index: Document,
    pub attestations: Vec<Attestation>,
}

fn doc(media_type: &str, value: &serde_json::Value) -> Document {
    let bytes = serde_json::to_vec_pretty(value).unwrap();
    Document {
        media_type: media_type.to_string(),
        digest: sha256_digest(&bytes),
        bytes,
    }
}

/// Attestations for every platform of `fixture` (which must use OCI media types, as
/// buildkit's attested images do), and the index that lists them.
pub fn attest(fixture: &Fixture) -> Attested {
    let mut attestations = Vec::new();
    for p in &fixture.platforms {
        let layer = doc(
            IN_TOTO,
            &json!({
                "_type": "https://in-toto.io/Statement/v0.1",
                "predicateType": "https://spdx.dev/Document",
                "subject": [{"name": fixture.reference(), "digest": {"sha256": p.manifest.digest.trim_start_matches("sha256:")}}],
                "predicate": {"spdxVersion": "SPDX-2.3", "name": format!("sbom-{}", p.arch)},
            }),
        );
        let config = doc(
            OCI_CONFIG,
            &json!({"architecture": "unknown", "os": "unknown", "config": {}, "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}),
        );
        let manifest = doc(
            OCI_MANIFEST,
            &json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size()},
                "layers": [{
                    "mediaType": IN_TOTO,
                    "digest": layer.digest,
                    "size": layer.size(),
                    "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"},
                }],
            }),
        );
        attestations.push(Attestation {
            subject: p.manifest.digest.clone(),
            manifest,
            config,
            layer,
        });
    }
    let mut manifests: Vec<serde_json::Value> = fixture
        .platforms
        .iter()
        .map(|p| {
            let mut platform = json!({"architecture": p.arch.name(), "os": "linux"});
            if let Some(v) = p.arch.variant() {
                platform["variant"] = json!(v);
            }
            json!({
                "mediaType": p.manifest.media_type,
                "digest": p.manifest.digest,
                "size": p.manifest.size(),
                "platform": platform,
            })
        })
        .collect();
    for a in &attestations {
        manifests.push(json!({
            "mediaType": OCI_MANIFEST,
            "digest": a.manifest.digest,
            "size": a.manifest.size(),
            "annotations": {
                "vnd.docker.reference.digest": a.subject,
                "vnd.docker.reference.type": "attestation-manifest",
            },
            "platform": {"architecture": "unknown", "os": "unknown"},
        }));
    }
    let index = doc(
        OCI_INDEX,
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
    );
    Attested {
        index,
        attestations,
    }
}

impl Attested {
    /// Pushes the fixture's blobs and platform manifests, the attestations, and this index
    /// as `repo:tag`.
    pub fn push(&self, pusher: &Pusher, fixture: &Fixture, repo: &str, tag: &str) {
        for blob in fixture.blobs() {
            pusher.push_blob(repo, blob);
        }
        for p in &fixture.platforms {
            pusher.push_manifest(repo, &p.manifest.digest, &p.manifest);
        }
        for a in &self.attestations {
            for d in [&a.config, &a.layer] {
                pusher.push_blob(
                    repo,
                    BlobRef::Bytes {
                        digest: &d.digest,
                        bytes: &d.bytes,
                    },
                );
            }
            pusher.push_manifest(repo, &a.manifest.digest, &a.manifest);
        }
        pusher.push_manifest(repo, tag, &self.index);
    }
}
