//! The vocabulary every other cudaimg crate speaks, with no I/O: image references and their
//! Docker normalization ([`reference`]), validated sha256 digests and the streaming hasher
//! ([`digest`]), platforms ([`platform`]), manifest and index shapes parsed as hostile input
//! ([`manifest`]), and the [`progress::Reporter`] trait through which the libraries say what
//! they are doing (only the binary turns that into bars or lines).

pub mod digest;
pub mod manifest;
pub mod platform;
pub mod progress;
pub mod reference;
pub mod text;
