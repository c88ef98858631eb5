//! The host cudaimg runs on: probes of the machine (driver, GPUs, NVIDIA Container Toolkit,
//! `daemon.json`, CDI) in [`probe`], the findings `cudaimg doctor` draws from them in
//! [`doctor`], and the `docker run` lines and compose files of the seed tutorial's scenarios
//! in [`run_config`].

pub mod doctor;
pub mod probe;
pub mod run_config;
