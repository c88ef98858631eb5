//! The mirror policy: which endpoints to ask for a registry, in which order, what the run has
//! learned about each (backoff) ([`sources`]), what earlier runs learned ([`health`]), and
//! the one fallback loop that moves from one to the next ([`fallback`]); measuring and ranking the configured mirrors ([`check`]), and writing them
//! as Docker's or containerd's own configuration ([`emit`]).

pub mod check;
pub mod emit;
pub mod fallback;
pub mod health;
pub mod sources;

pub use check::{check, Measured, Options, RegistryCheck};
