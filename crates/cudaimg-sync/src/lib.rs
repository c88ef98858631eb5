//! Air-gapped sync (`sync`, `inventory`, `import`): carrying chosen images across a gap into
//! a registry or store on the far side, with as few bytes as possible.
//!
//! The flow, and the module that owns each step:
//! - [`bundle`]: writing a plan's blobs into tar parts with `bundle.json`, and importing a
//!   bundle into a registry (through the push path) or the store.
//! - [`plan`]: what a bundle carries, whatever chose it: images (name, top digest,
//!   platforms), the blobs to carry (each once, shared layers counted once), and the blobs
//!   the far side is assumed to hold, with where that assumption comes from. `sync --plan`
//!   prints it; `bundle.json` records it.
//!
//! The crate sits above the store and below the binary: selection resolves tags through the
//! transfer layer, the bundle writer reads blobs out of the store verified, and import sends
//! them through the push path.

pub mod bundle;
pub mod plan;
