//! Building team images of `PyTorch` on an `nvidia/cuda` base, decided before anything runs:
//!
//! - [`compat`]: the one place with the torch → `cuXYZ` wheel variants → Python table and the
//!   OS → Python table, each row with its source; and the rules that refuse an impossible
//!   combination with the nearest valid ones.
//! - [`python`]: which Python a stored base already carries (read from its layers).
//! - [`plan`]: one build: the base pinned by digest, the template, its build args and labels,
//!   the resulting name, the driver it needs, the warnings.
//! - [`matrix`]: `builds.toml`, every cell planned or skipped with its reason, and the
//!   docker-bake file of the valid cells.
//!
//! No network and no Docker here: the binary pulls, hands over and runs `docker build`.

pub mod compat;
pub mod index;
pub mod matrix;
pub mod plan;
pub mod python;
pub mod table;

/// The template every build uses, as shipped in `dockerfiles/` (one file, all flavors).
pub const TEMPLATE: &str = include_str!("../../../dockerfiles/pytorch.Dockerfile");
/// Its path in the repository, for messages and bake files.
pub const TEMPLATE_PATH: &str = "dockerfiles/pytorch.Dockerfile";
