//! One build, decided: the base pinned by digest, the checked combination, the template's
//! build args, the resulting image name, what it needs of the driver, and its warnings.
//!
//! Naming scheme of the result (`--tag REPO` sets the repository, default `cudaimg/torch`):
//!
//! ```text
//! REPO:{torch}-{cuXYZ}-py{X.Y}-[cudnn-]{flavor}-{os}
//! team/torch:2.5.1-cu124-py3.11-runtime-ubuntu22.04
//! ```
//!
//! `--tag` with a tag of its own (`team/torch:dev`) names the result as given.

use cudaimg_cuda::{driver, CudaTag, CudaVersion, Flavor};
use serde::Serialize;

use crate::compat::{self, Checked, Py, Refusal, Request};
use crate::urls::{BuildUrl, Secret};

/// The repository results go to when `--tag` names none.
pub const DEFAULT_REPOSITORY: &str = "cudaimg/torch";

/// `PyTorch`'s own indexes: `{PYTORCH_INDEX}/cuXYZ` per variant, `{PYTORCH_INDEX}/torch/` lists
/// every variant's wheels.
pub const PYTORCH_INDEX: &str = "https://download.pytorch.org/whl";

/// pip's index for a wheel variant, under `root` (default [`PYTORCH_INDEX`]).
pub fn pytorch_index(root: Option<&str>, variant: &str) -> String {
    format!(
        "{}/{variant}",
        root.unwrap_or(PYTORCH_INDEX).trim_end_matches('/')
    )
}

/// The base as known before the build.
#[derive(Debug, Clone)]
pub struct Base {
    /// The canonical name, `docker.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04`.
    pub name: String,
    /// The platform manifest's digest, once pulled (`None` in a plan made from tags alone).
    pub digest: Option<String>,
    pub tag: CudaTag,
    /// `CUDA_VERSION` from the image's environment, else the tag's version.
    pub cuda: CudaVersion,
    /// The CUDA the image's own `NVIDIA_REQUIRE_CUDA` asks of the driver (`cuda>=X.Y`), once
    /// the image is read; it beats `cuda` for what the driver must support.
    pub requires_cuda: Option<CudaVersion>,
    /// Pythons found in its layers.
    pub pythons: Vec<Py>,
}

impl Base {
    /// `FROM` for a plain `docker build` or bake: the name pinned by digest.
    pub fn pinned(&self) -> String {
        match &self.digest {
            Some(d) => format!("{}@{d}", self.name),
            None => self.name.clone(),
        }
    }
}

/// What a build is asked to do beyond the combination.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--tag`: a repository, or a full name with its tag.
    pub tag: Option<String>,
    /// Extra pip packages, space-separated.
    pub extra_packages: String,
    /// `--pip-index-url`, credentials held apart ([`crate::urls`]).
    pub pip_index_url: Option<BuildUrl>,
    /// `--apt-mirror`, likewise.
    pub apt_mirror: Option<BuildUrl>,
    /// Install from the wheelhouse (the build context) only.
    pub wheelhouse: bool,
    /// `PyTorch`'s index root when not [`PYTORCH_INDEX`] (`CUDAIMG_PYTORCH_INDEX`).
    pub pytorch_index: Option<String>,
    /// What the index (or wheelhouse) the build will use holds, when it could be read.
    pub index: Option<crate::index::Listing>,
}

/// The driver the result needs.
#[derive(Debug, Clone, Serialize)]
pub struct DriverNeed {
    /// For the CUDA the wheels carry (and, on `devel`, the base's nvcc), fully compatible.
    pub minimum: Option<String>,
    /// What the container runtime checks.
    pub nvidia_require_cuda: String,
    pub text: String,
}

/// A build, ready to run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub image: String,
    pub base: String,
    pub base_digest: Option<String>,
    pub base_cuda: String,
    #[serde(flatten)]
    pub checked: Checked,
    pub driver: DriverNeed,
    pub template: &'static str,
    /// No credentials in any value ([`crate::urls`]): they are printed, passed on the command
    /// line and recorded in the image's history.
    pub build_args: Vec<(String, String)>,
    /// What reaches the build as a `BuildKit` secret, as it may be shown: `pip index
    /// http://user:***@host/simple/ (secret cudaimg_pip_index_url)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// Their contents, for `docker build --secret` only: never serialized or printed.
    #[serde(skip)]
    pub secrets: Vec<Secret>,
    /// The GPU architectures checked (`--gpu-arch`, or the host's GPUs): one line each, as
    /// [`crate::arch::check_cell`] says it; filled in by the caller, which knows the GPUs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpu_arch: Vec<String>,
}

/// The name of the result, by the scheme above.
pub fn image_name(tag: Option<&str>, base: &CudaTag, c: &Checked) -> String {
    let repo = tag.unwrap_or(DEFAULT_REPOSITORY);
    let last = repo.rsplit('/').next().unwrap_or(repo);
    if last.contains(':') || repo.contains('@') {
        return repo.to_owned();
    }
    let cudnn = if base.cudnn.is_some() { "cudnn-" } else { "" };
    let os = base
        .os
        .as_deref()
        .map_or(String::new(), |o| format!("-{o}"));
    format!(
        "{repo}:{}-{}-py{}-{cudnn}{}{os}",
        c.torch, c.variant, c.python, c.flavor
    )
}

fn driver_need(base: &Base, c: &Checked) -> DriverNeed {
    let mut need = c.wheels_cuda.minor_only();
    // A devel image's nvcc builds for the base's CUDA, which the runtime checks through the
    // base's own requirement when it has one.
    let base_needs = base.requires_cuda.unwrap_or(base.cuda).minor_only();
    let mut from_base = false;
    if c.flavor == Flavor::Devel && base_needs > need {
        need = base_needs;
        from_base = base.requires_cuda.is_some();
    }
    let minimum = driver::min_driver(need).map(|d| d.as_str().to_owned());
    let require = format!("cuda>={need}");
    let text = match (&minimum, driver::minor_compat_driver(need)) {
        (Some(m), Some(compat)) => format!(
            "needs an NVIDIA driver >= {m} (CUDA {need}); {} runs it with minor-version \
             compatibility only with NVIDIA_DISABLE_REQUIRE=1, since NVIDIA_REQUIRE_CUDA={require} \
             makes the container runtime check it (`cudaimg doctor IMAGE` checks this host)",
            compat.as_str()
        ),
        (Some(m), None) => format!("needs an NVIDIA driver >= {m} (CUDA {need})"),
        _ => format!("needs a driver for CUDA {need} (not in cudaimg's driver table)"),
    };
    let text = if from_base {
        format!("{text}; CUDA {need} is what the base image's NVIDIA_REQUIRE_CUDA asks")
    } else {
        text
    };
    DriverNeed {
        minimum,
        nvidia_require_cuda: require,
        text,
    }
}

/// Checks and plans one build.
pub fn plan(
    base: &Base,
    torch: &str,
    python: Option<&str>,
    variant: Option<&str>,
    opts: &Options,
) -> Result<Plan, Refusal> {
    let checked = compat::check(&Request {
        torch,
        python,
        variant,
        base: &base.tag,
        base_cuda: base.cuda,
        base_pythons: &base.pythons,
        index: opts.index.as_ref(),
    })?;
    let driver = driver_need(base, &checked);
    let image = image_name(opts.tag.as_deref(), &base.tag, &checked);
    let index = opts.pip_index_url.as_ref().map_or_else(
        || pytorch_index(opts.pytorch_index.as_deref(), &checked.variant),
        |u| u.public.clone(),
    );
    let mut credentials = Vec::new();
    let mut secrets = Vec::new();
    // With a wheelhouse, pip reads no index: its credentials are not needed.
    let pip = opts
        .pip_index_url
        .as_ref()
        .filter(|_| !opts.wheelhouse)
        .and_then(|u| Some((u, u.pip_secret()?)));
    let apt = opts
        .apt_mirror
        .as_ref()
        .and_then(|u| Some((u, u.apt_secret()?)));
    for (what, (url, secret)) in [("pip index", pip), ("apt mirror", apt)]
        .into_iter()
        .filter_map(|(w, x)| Some((w, x?)))
    {
        credentials.push(format!("{what} {} (secret {})", url.shown, secret.id));
        secrets.push(secret);
    }
    let build_args = vec![
        ("BASE_IMAGE".to_owned(), base.pinned()),
        ("BASE_NAME".to_owned(), base.name.clone()),
        (
            "BASE_DIGEST".to_owned(),
            base.digest.clone().unwrap_or_default(),
        ),
        ("BASE_CUDA".to_owned(), base.cuda.to_string()),
        ("CUDA_FLAVOR".to_owned(), checked.flavor.to_string()),
        ("PYTHON".to_owned(), checked.python.to_string()),
        ("TORCH".to_owned(), checked.torch.clone()),
        ("TORCH_PIN".to_owned(), checked.pin.clone()),
        ("TORCH_VARIANT".to_owned(), checked.variant.clone()),
        ("TORCH_CUDA".to_owned(), checked.wheels_cuda.to_string()),
        (
            "NVIDIA_REQUIRE_CUDA".to_owned(),
            driver.nvidia_require_cuda.clone(),
        ),
        ("EXTRA_PACKAGES".to_owned(), opts.extra_packages.clone()),
        ("PIP_INDEX_URL".to_owned(), index),
        (
            "PIP_NO_INDEX".to_owned(),
            if opts.wheelhouse { "1" } else { "0" }.to_owned(),
        ),
        (
            "APT_MIRROR".to_owned(),
            opts.apt_mirror
                .as_ref()
                .map(|u| u.public.clone())
                .unwrap_or_default(),
        ),
    ];
    Ok(Plan {
        image,
        base: base.name.clone(),
        base_digest: base.digest.clone(),
        base_cuda: base.cuda.to_string(),
        checked,
        driver,
        template: crate::TEMPLATE_PATH,
        build_args,
        credentials,
        secrets,
        gpu_arch: Vec::new(),
    })
}

impl Plan {
    /// The value of one build arg.
    pub fn arg(&self, name: &str) -> Option<&str> {
        self.build_args
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The same plan with `FROM` set to a name the engine holds locally (after the hand-over:
    /// an engine that got the base from the store has no registry digest for it).
    pub fn with_local_base(mut self, local: &str) -> Plan {
        for (k, v) in &mut self.build_args {
            if k == "BASE_IMAGE" {
                local.clone_into(v);
            }
        }
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn base(tag: &str) -> Base {
        let t = CudaTag::parse(tag).unwrap();
        Base {
            name: format!("docker.io/nvidia/cuda:{tag}"),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
            cuda: t.version,
            requires_cuda: None,
            tag: t,
            pythons: vec![],
        }
    }

    #[test]
    fn a_devel_bases_own_requirement_sets_the_driver_it_needs() {
        // A 12.4.1 devel base whose NVIDIA_REQUIRE_CUDA asks for 12.6: 560.28.03 (NVIDIA's
        // release notes), not 12.4's 550.54.14.
        let mut b = base("12.4.1-cudnn-devel-ubuntu22.04");
        b.requires_cuda = CudaVersion::parse("12.6");
        let p = plan(&b, "2.5.1", None, None, &Options::default()).unwrap();
        assert_eq!(p.driver.minimum.as_deref(), Some("560.28.03"));
        assert_eq!(p.arg("NVIDIA_REQUIRE_CUDA"), Some("cuda>=12.6"));
        assert!(
            p.driver.text.contains("base image's NVIDIA_REQUIRE_CUDA"),
            "{}",
            p.driver.text
        );
        // A runtime base: torch brings its own CUDA, so the wheels' decide.
        let mut b = base("12.4.1-runtime-ubuntu22.04");
        b.requires_cuda = CudaVersion::parse("12.6");
        let p = plan(&b, "2.5.1", Some("3.11"), None, &Options::default()).unwrap();
        assert_eq!(p.driver.minimum.as_deref(), Some("550.54.14"));
    }

    #[test]
    fn names_args_and_driver_follow_the_scheme() {
        let b = base("12.4.1-runtime-ubuntu22.04");
        let opts = Options {
            tag: Some("team/torch".into()),
            ..Options::default()
        };
        let p = plan(&b, "2.5.1", Some("3.11"), None, &opts).unwrap();
        assert_eq!(p.image, "team/torch:2.5.1-cu124-py3.11-runtime-ubuntu22.04");
        assert_eq!(p.arg("NVIDIA_REQUIRE_CUDA"), Some("cuda>=12.4"));
        assert_eq!(p.driver.minimum.as_deref(), Some("550.54.14"));
        assert!(p.arg("BASE_IMAGE").unwrap().ends_with(&"a".repeat(64)));
        assert_eq!(
            p.arg("PIP_INDEX_URL"),
            Some("https://download.pytorch.org/whl/cu124")
        );
        let b = base("12.4.1-cudnn-devel-ubuntu22.04");
        let p = plan(&b, "2.5.1", None, None, &Options::default()).unwrap();
        assert_eq!(
            p.image,
            "cudaimg/torch:2.5.1-cu124-py3.10-cudnn-devel-ubuntu22.04"
        );
        let opts = Options {
            tag: Some("registry:5000/team/torch:dev".into()),
            ..Options::default()
        };
        assert_eq!(
            plan(&b, "2.5.1", None, None, &opts).unwrap().image,
            "registry:5000/team/torch:dev"
        );
    }
}
