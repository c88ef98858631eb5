//! What a CUDA image says about itself in its config's environment: `CUDA_VERSION`,
//! `NVIDIA_REQUIRE_CUDA`, `NVIDIA_CUDA_END_OF_LIFE`, `NV_CUDNN_VERSION`. For an image in the
//! store these beat anything derived from its tag.

use serde::Serialize;

use super::driver::Requirement;
use super::version::CudaVersion;

/// The CUDA facts of an image's environment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageEnv {
    /// `CUDA_VERSION` as written (`12.4.1`).
    pub cuda_version: Option<String>,
    /// `NVIDIA_REQUIRE_CUDA` as written.
    pub require_cuda: Option<String>,
    /// `NVIDIA_CUDA_END_OF_LIFE=1`.
    pub end_of_life: bool,
    /// `NV_CUDNN_VERSION` (`9.1.0.70-1`).
    pub cudnn_version: Option<String>,
    /// `nvcc` is present (`NV_NVCC_VERSION` is set by devel images only).
    pub nvcc: bool,
}

impl ImageEnv {
    /// Reads `KEY=VALUE` entries; the last one of a key wins, as in Docker.
    pub fn from_env(env: &[String]) -> Self {
        let get = |key: &str| {
            env.iter()
                .rev()
                .find_map(|e| e.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        ImageEnv {
            cuda_version: get("CUDA_VERSION"),
            require_cuda: get("NVIDIA_REQUIRE_CUDA"),
            end_of_life: get("NVIDIA_CUDA_END_OF_LIFE").is_some_and(|v| v.trim() == "1"),
            cudnn_version: get("NV_CUDNN_VERSION"),
            // NVIDIA's devel images set no NVCC variable; what devel adds to the
            // environment is the stubs directory on LIBRARY_PATH (and the dev packages).
            nvcc: get("NV_NVCC_VERSION").is_some()
                || get("NV_CUDA_CUDART_DEV_VERSION").is_some()
                || get("LIBRARY_PATH").is_some_and(|p| p.contains("/usr/local/cuda/lib64/stubs")),
        }
    }

    /// Whether this looks like a CUDA image at all.
    pub fn is_cuda(&self) -> bool {
        self.cuda_version.is_some() || self.require_cuda.is_some()
    }

    /// `CUDA_VERSION`, parsed.
    pub fn version(&self) -> Option<CudaVersion> {
        self.cuda_version.as_deref().and_then(CudaVersion::parse)
    }

    /// `NVIDIA_REQUIRE_CUDA`, parsed.
    pub fn requirement(&self) -> Option<Requirement> {
        self.require_cuda.as_deref().and_then(Requirement::parse)
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    #[test]
    fn devel_images_are_recognised_by_what_nvidia_sets() {
        let env = vec![
            "CUDA_VERSION=12.4.1".to_owned(),
            "LIBRARY_PATH=/usr/local/cuda/lib64/stubs".to_owned(),
        ];
        assert!(super::ImageEnv::from_env(&env).nvcc);
        let runtime = vec![
            "CUDA_VERSION=12.4.1".to_owned(),
            "NCCL_VERSION=2.21.5-1".to_owned(),
        ];
        assert!(!super::ImageEnv::from_env(&runtime).nvcc);
    }

    use super::*;

    #[test]
    fn reads_nvidias_variables() {
        let env: Vec<String> = [
            "PATH=/usr/local/nvidia/bin:/usr/bin",
            "NVIDIA_REQUIRE_CUDA=cuda>=12.4 brand=tesla,driver>=470,driver<471",
            "CUDA_VERSION=12.4.1",
            "NV_CUDNN_VERSION=9.1.0.70-1",
            "NVIDIA_CUDA_END_OF_LIFE=1",
        ]
        .map(String::from)
        .to_vec();
        let e = ImageEnv::from_env(&env);
        assert_eq!(
            e.version().map(|v| v.to_string()).as_deref(),
            Some("12.4.1")
        );
        assert_eq!(
            e.requirement()
                .and_then(|r| r.cuda())
                .map(|v| v.to_string())
                .as_deref(),
            Some("12.4")
        );
        assert!(e.end_of_life && e.is_cuda() && !e.nvcc);
        assert_eq!(e.cudnn_version.as_deref(), Some("9.1.0.70-1"));
        assert!(!ImageEnv::from_env(&["PATH=/bin".into()]).is_cuda());
        assert!(!ImageEnv::from_env(&["NVIDIA_CUDA_END_OF_LIFE=0".into()]).end_of_life);
        // `CUDA_VERSION_X` is not `CUDA_VERSION`.
        assert!(ImageEnv::from_env(&["CUDA_VERSION_X=1".into()])
            .cuda_version
            .is_none());
    }
}
