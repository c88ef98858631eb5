//! The mirror policy: which endpoints to ask for a registry and what the run has learned
//! about each (backoff) ([`sources`]), what earlier runs learned ([`health`]), which source
//! an item asks next ([`order`]), the one fallback loop that moves from one to the next
//! ([`fallback`]), and the one rule for a repository's tag list ([`tag_list`]); measuring
//! and ranking the configured mirrors ([`check`]), and writing them as Docker's or
//! containerd's own configuration ([`emit`]).
//!
//! Modules depend one way: `health` at the bottom, then `sources`, `order`, `fallback`,
//! `tag_list`; `check` and `emit` beside them.

pub mod check;
pub mod emit;
pub mod fallback;
pub mod health;
pub mod order;
pub mod sources;
pub mod tag_list;

pub use check::{check, Measured, Options, RegistryCheck};
