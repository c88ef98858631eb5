//! The measured mirrors as the daemons' own configurations, for users who want `docker pull`
//! or containerd to use them too:
//!
//! - Docker's `daemon.json`: `registry-mirrors` (Docker Hub only, by Docker's design), with
//!   plain-HTTP or unverified mirrors also under `insecure-registries`. Docker trusts a
//!   mirror's answer for what a tag means, so stale mirrors are left out.
//! - containerd's `hosts.toml`, one per registry (`/etc/containerd/certs.d/<registry>/`):
//!   `server` is the official endpoint, each mirror a `[host."…"]` with the capabilities it has
//!   in mirrors.toml; a stale mirror keeps `pull` only, so it serves content by digest but is
//!   never asked what a tag means.
//!
//! Mirrors that do not answer, or sent wrong bytes, are left out; each omission is reported.

use super::check::{Measured, RegistryCheck};
use crate::sources::Role;
use cudaimg_oci::reference::DOCKER_HUB;

/// A file to write and what it is for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Emitted {
    /// Where the daemon reads it: `/etc/docker/daemon.json`, or
    /// `/etc/containerd/certs.d/docker.io/hosts.toml`.
    pub path: String,
    pub content: String,
    /// Mirrors left out, and why.
    pub omitted: Vec<String>,
}

fn omission(m: &Measured) -> Option<String> {
    if !m.reachable {
        Some(format!("{}: does not answer", m.url))
    } else if m.blob_error.is_some() {
        Some(format!("{}: failed the blob check", m.url))
    } else {
        None
    }
}

/// `daemon.json` keys for Docker Hub's mirrors, best first. Merge them into the existing
/// file: Docker reads only one.
pub fn daemon_json(checks: &[RegistryCheck]) -> Emitted {
    let mut mirrors = Vec::new();
    let mut insecure = Vec::new();
    let mut omitted = Vec::new();
    if let Some(hub) = checks.iter().find(|c| c.registry == DOCKER_HUB) {
        for m in hub.endpoints.iter().filter(|m| m.role == Role::Mirror) {
            if let Some(why) = omission(m) {
                omitted.push(why);
                continue;
            }
            if !m.endpoint.url.path().trim_matches('/').is_empty() {
                omitted.push(format!(
                    "{}: Docker's registry-mirrors take no path (pull HOST/PATH/REPO:TAG by \
                     that name, or use containerd's hosts.toml)",
                    m.url
                ));
                continue;
            }
            if m.fresh == Some(false) {
                omitted.push(format!(
                    "{}: stale or lacks the tag (Docker would trust its tags)",
                    m.url
                ));
                continue;
            }
            if !m.endpoint.capabilities.resolve {
                omitted.push(format!(
                    "{}: pull-only in mirrors.toml, and Docker asks mirrors for tags too",
                    m.url
                ));
                continue;
            }
            if m.endpoint.url.scheme() == "http" || m.insecure {
                insecure.push(serde_json::Value::String(m.endpoint.authority()));
            }
            mirrors.push(serde_json::Value::String(m.url.clone()));
        }
    }
    for c in checks.iter().filter(|c| c.registry != DOCKER_HUB) {
        omitted.push(format!(
            "{}: Docker's registry-mirrors apply to Docker Hub only (use containerd's hosts.toml)",
            c.registry
        ));
    }
    let mut doc = serde_json::Map::new();
    doc.insert("registry-mirrors".into(), serde_json::Value::Array(mirrors));
    if !insecure.is_empty() {
        doc.insert(
            "insecure-registries".into(),
            serde_json::Value::Array(insecure),
        );
    }
    let content = serde_json::to_string_pretty(&serde_json::Value::Object(doc))
        .unwrap_or_else(|_| "{}".into());
    Emitted {
        path: "/etc/docker/daemon.json".into(),
        content: content + "\n",
        omitted,
    }
}

/// A TOML basic string: JSON's string escapes are TOML's.
fn toml_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// One `hosts.toml` per registry.
pub fn containerd(checks: &[RegistryCheck]) -> Vec<Emitted> {
    checks
        .iter()
        .map(|c| {
            let mut omitted = Vec::new();
            let official = c.endpoints.iter().find(|m| m.role == Role::Official);
            let mut text = format!(
                "# containerd registry hosts for {} (written by `cudaimg mirrors check --emit containerd`)\n",
                c.registry
            );
            if let Some(o) = official {
                text.push_str(&format!("server = {}\n", toml_str(&o.url)));
            }
            for m in c.endpoints.iter().filter(|m| m.role == Role::Mirror) {
                if let Some(why) = omission(m) {
                    omitted.push(why);
                    continue;
                }
                let mut caps: Vec<&str> = Vec::new();
                if m.endpoint.capabilities.pull {
                    caps.push("pull");
                }
                let stale = m.fresh == Some(false);
                if m.endpoint.capabilities.resolve && !stale {
                    caps.push("resolve");
                }
                if caps.is_empty() {
                    omitted.push(format!(
                        "{}: resolve-only in mirrors.toml, and stale: nothing left to use it for",
                        m.url
                    ));
                    continue;
                }
                // A mirror under a path (or with its API elsewhere than /v2) is named by
                // where its API and namespace are, and `override_path` keeps containerd
                // from adding its own /v2.
                let (api, prefix) = cudaimg_registry::api_and_prefix(&m.endpoint.url);
                let plain = format!("{}/v2", m.endpoint.url.origin().ascii_serialization());
                let overridden = !prefix.is_empty() || api != plain;
                let host = if overridden {
                    format!("{api}/{}", prefix.trim_end_matches('/'))
                        .trim_end_matches('/')
                        .to_owned()
                } else {
                    m.url.clone()
                };
                text.push_str(&format!("\n[host.{}]\n", toml_str(&host)));
                if stale && m.endpoint.capabilities.resolve {
                    text.push_str("  # stale or lacks the tag: content by digest only\n");
                }
                let caps: Vec<String> = caps.iter().map(|c| toml_str(c)).collect();
                text.push_str(&format!("  capabilities = [{}]\n", caps.join(", ")));
                if overridden {
                    text.push_str("  override_path = true\n");
                }
                if m.insecure {
                    text.push_str("  skip_verify = true\n");
                }
            }
            Emitted {
                path: format!("/etc/containerd/certs.d/{}/hosts.toml", c.registry),
                content: text,
                omitted,
            }
        })
        .collect()
}
