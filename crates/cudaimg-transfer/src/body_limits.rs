//! What runs learned about each destination registry's path for request bodies: when a cut
//! body left the registry nothing (a proxy in front buffers bodies, as nginx does by
//! default), later pushes start with small bodies there instead of losing a large one to
//! the first cut. A hint under the store's `state/`, as mirror health is: a missing or
//! unreadable file is no lesson, never an error.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cudaimg_registry::UploadOptions;
use cudaimg_store::Store;

/// The file under `state/`.
pub const STATE_FILE: &str = "upload-limits.json";

/// A lesson is retried after this long: the proxy may have been reconfigured or removed.
const KEPT_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy)]
struct Limit {
    /// The largest request body that a cut costs in full there.
    max_body: u64,
    /// When it was learned (seconds since the epoch).
    learned_at: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read(store: &Store) -> BTreeMap<String, Limit> {
    store
        .read_state(STATE_FILE)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Lowers `options`' body cap to what earlier runs learned of `registry`, if anything.
pub fn apply(store: &Store, registry: &str, options: &UploadOptions) {
    if let Some(limit) = read(store).get(registry) {
        if now().saturating_sub(limit.learned_at) < KEPT_FOR.as_secs() {
            options
                .body_cap
                .fetch_min(limit.max_body, Ordering::Relaxed);
        }
    }
}

/// Keeps what this run learned of `registry` (nothing, when it learned nothing).
pub fn remember(store: &Store, registry: &str, options: &UploadOptions) {
    let Some(max_body) = options.learned_cap() else {
        return;
    };
    let mut all = read(store);
    all.insert(
        registry.to_owned(),
        Limit {
            max_body,
            learned_at: now(),
        },
    );
    if let Ok(bytes) = serde_json::to_vec_pretty(&all) {
        // A hint: a store that cannot take it loses the lesson, not the push.
        let _ = store.write_state(STATE_FILE, &bytes);
    }
}
