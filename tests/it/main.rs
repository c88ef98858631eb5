//! The one integration test binary: every suite is a module here, so the shared harness
//! (`cudaimg-test-support`) and the fixtures compile once. Each suite runs the real
//! `cudaimg` binary against real registries, skopeo and (as root) a real dockerd.

// Tests stop at the first failed step, with its message.
#![allow(clippy::unwrap_used)]

mod cuda;
mod docker;
mod faults;
mod harness;
mod input_safety;
mod parallel;
mod proptests;
mod proxy_harness;
mod pull;
mod push;
mod resilience;
mod trust;
mod upload;
