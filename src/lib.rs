//! cudaimg: get NVIDIA CUDA container images where they are needed, fast and verified.
//!
//! The crate is layered the way the tree is laid out:
//! - [`reference`], [`digest`], [`platform`], [`manifest`]: the vocabulary (names, content
//!   addresses, platforms, manifest shapes), with no I/O.
//! - [`config`]: `mirrors.toml`, the user's mirror policy.
//! - [`cuda`]: knowledge of CUDA images (tag grammar, drivers, end of life), with no I/O.
//! - [`registry`]: the distribution protocol against one endpoint (auth, manifests, blobs),
//!   with typed errors that say whether to try another source.
//! - [`sources`]: the mirror policy at run time: which endpoints to ask, in which order, and the
//!   one loop that falls from one to the next.
//! - [`store`]: the local OCI image layout; the only code that writes image data to disk.
//! - [`engine`]: the transfer engine that resolves an image and moves its blobs into the store.
//! - [`progress`]: the reporter trait through which the engine tells what it is doing.
//! - [`mirrors`]: measuring and ranking mirrors, and emitting them as daemon configuration.
//! - [`run_config`]: `docker run` lines and compose files for the seed tutorial's scenarios.
//! - [`host`] and [`doctor`]: probes of the machine (driver, GPUs, container toolkit) and
//!   the findings `cudaimg doctor` draws from them.
//! - [`cli`]: the commands; the only layer that prints or draws progress bars.

// Output goes through `cli::emit` (stdout) and `note!` (stderr), which handle a closed pipe;
// the print macros would panic there.
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod archive;
pub mod cli;
pub mod config;
pub mod cuda;
pub mod digest;
pub mod docker;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod host;
pub mod lockfile;
pub mod manifest;
pub mod mirrors;
pub mod platform;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod run_config;
pub mod sources;
pub mod store;
