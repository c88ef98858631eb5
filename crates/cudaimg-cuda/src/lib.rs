//! What cudaimg knows about CUDA images, with no I/O: the `nvidia/cuda` tag grammar
//! ([`tag`]), which driver runs which toolkit ([`driver`]), and NVIDIA's end-of-life policy
//! as of a stated date ([`eol`]), what an image's own environment says ([`image`]), and
//! how to pick one tag among many ([`choose`]), which GPU architectures a toolkit
//! serves ([`arch`]), and every tag NVIDIA published, for a
//! "did you mean" ([`known`]). `explain`, `tags`, `doctor` and `run-config` are built on it.
//!
//! Every table says where its figures come from; a fact the tables do not hold is reported
//! as unknown, never guessed.

pub mod arch;
pub mod choose;
pub mod data;
pub mod driver;
pub mod eol;
pub mod image;
pub mod known;
pub mod tag;
pub mod version;

pub use tag::{CudaTag, Cudnn, Flavor, TagError};
pub use version::{CudaVersion, DriverVersion};
