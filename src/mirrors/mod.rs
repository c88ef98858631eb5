//! `mirrors check`: measuring and ranking the configured mirrors of each registry
//! ([`check`]), and writing them as Docker's or containerd's own configuration ([`emit`]).

pub mod check;
pub mod emit;

pub use check::{check, Measured, Options, RegistryCheck};
