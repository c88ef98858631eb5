//! The one integration test binary: every suite is a module here, so the shared harness
//! (`cudaimg-test-support`) and the fixtures compile once. Each suite runs the real
//! `cudaimg` binary against real registries, skopeo and (as root) a real dockerd.

// Tests stop at the first failed step, with its message.
#![allow(clippy::unwrap_used)]
// Test code: std::fs is fine where a failure stops the test with its own message.
#![allow(clippy::disallowed_methods)]
// Test code: casts of small test sizes, long scenario functions, helper items next to the
// step that uses them, and big fixtures on the stack are fine here.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::too_many_lines,
    clippy::items_after_statements,
    clippy::large_stack_arrays,
    clippy::needless_pass_by_value,
    clippy::case_sensitive_file_extension_comparisons
)]

mod air_gap;
mod archive_import;
mod build;
mod build_index;
mod build_inputs;
mod bundle;
mod cli_output;
mod conveniences;
mod cuda;
mod docker;
mod engines;
mod engines_handover;
mod faults;
mod first_hour;
mod getting_started;
mod harness;
mod hostile;
mod import;
mod input_safety;
mod loaded;
mod mirror_health;
mod multiarch;
mod parallel;
mod proptests;
mod proxy_harness;
mod pull;
mod push;
mod resilience;
mod serve;
mod source_policy;
mod sync_select;
mod trust;
mod upload;
