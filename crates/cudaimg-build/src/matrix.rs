//! Matrix builds: `builds.toml` names bases, torch versions and optionally Pythons and wheel
//! variants; their product is enumerated, each cell planned or skipped with its reason (the
//! exclusions `docker buildx bake`'s `matrix` lacks), and the valid cells can be written as a
//! docker-bake file (HCL, or JSON when the file name ends in `.json`).
//!
//! ```toml
//! repository = "team/torch"                 # optional, default cudaimg/torch
//! bases = ["nvidia/cuda:12.4.1-runtime-ubuntu22.04", "nvidia/cuda:12.6.3-devel-ubuntu24.04"]
//! torch = ["2.5.1", "2.6.0"]
//! python = ["3.10", "3.12"]                 # optional: per base, the one it has or its OS ships
//! cuda_wheels = ["cu124", "cu126"]          # optional: per base, the variant of its CUDA
//! extra_packages = "numpy"                  # optional, pip packages
//! pip_index_url = "https://pypi.corp.example/simple"   # optional
//! apt_mirror = "http://mirror.corp.example/ubuntu"      # optional
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::plan::Plan;

/// `builds.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    pub repository: Option<String>,
    pub bases: Vec<String>,
    pub torch: Vec<String>,
    #[serde(default)]
    pub python: Vec<String>,
    #[serde(default)]
    pub cuda_wheels: Vec<String>,
    #[serde(default)]
    pub extra_packages: String,
    pub pip_index_url: Option<String>,
    pub apt_mirror: Option<String>,
}

/// Why `builds.toml` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("`{}` is not a usable builds.toml: {reason}", .path.display())]
pub struct MatrixError {
    pub path: std::path::PathBuf,
    pub reason: String,
}

impl MatrixError {
    pub fn hint(&self) -> String {
        "it needs `bases = [\"nvidia/cuda:TAG\", …]` and `torch = [\"2.5.1\", …]`; optional \
         `python`, `cuda_wheels`, `repository`, `extra_packages`, `pip_index_url`, `apt_mirror` \
         (README.md, `cudaimg build --matrix`)"
            .into()
    }
}

/// One cell of the product, before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub base: String,
    pub torch: String,
    pub python: Option<String>,
    pub variant: Option<String>,
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} torch {}", self.base, self.torch)?;
        if let Some(p) = &self.python {
            write!(f, " python {p}")?;
        }
        if let Some(v) = &self.variant {
            write!(f, " {v}")?;
        }
        Ok(())
    }
}

impl Matrix {
    pub fn load(path: &Path) -> Result<Matrix, MatrixError> {
        let err = |reason: String| MatrixError {
            path: path.to_owned(),
            reason,
        };
        let text = fs_err::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Matrix::parse(&text).map_err(err)
    }

    pub fn parse(text: &str) -> Result<Matrix, String> {
        let m: Matrix = toml::from_str(text).map_err(|e| e.to_string())?;
        if m.bases.is_empty() || m.torch.is_empty() {
            return Err("`bases` and `torch` must each name at least one".into());
        }
        Ok(m)
    }

    /// Every cell of the product, in file order (bases outermost).
    pub fn cells(&self) -> Vec<Cell> {
        let opt = |v: &[String]| -> Vec<Option<String>> {
            if v.is_empty() {
                vec![None]
            } else {
                v.iter().cloned().map(Some).collect()
            }
        };
        let mut out = Vec::new();
        for base in &self.bases {
            for torch in &self.torch {
                for python in opt(&self.python) {
                    for variant in opt(&self.cuda_wheels) {
                        out.push(Cell {
                            base: base.clone(),
                            torch: torch.clone(),
                            python: python.clone(),
                            variant,
                        });
                    }
                }
            }
        }
        out
    }
}

/// A bake target name from an image tag: letters, digits, `-` and `_` only.
fn target_name(plan: &Plan) -> String {
    let tag = plan.image.rsplit(':').next().unwrap_or(&plan.image);
    let name: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("torch-{name}")
}

fn hcl_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            // `${` starts an interpolation in HCL.
            '$' => out.push_str("$$"),
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The template's file name beside a bake file.
pub const BAKE_TEMPLATE: &str = "pytorch.Dockerfile";
/// The empty build context's directory beside a bake file.
pub const BAKE_CONTEXT: &str = "context";
/// The variable a bake file's paths are under; its default is the file's directory.
pub const BAKE_DIR_VAR: &str = "CUDAIMG_BAKE_DIR";

/// Where the build context of a bake file is.
#[derive(Debug, Clone)]
pub enum BakeContext {
    /// The empty [`BAKE_CONTEXT`] beside the file.
    BesideFile,
    /// A wheelhouse, by its absolute path.
    Absolute(String),
}

/// What a bake file's paths and secrets are made of.
#[derive(Debug, Clone)]
pub struct BakeLayout<'a> {
    /// The bake file's directory, absolute: the default of [`BAKE_DIR_VAR`].
    pub dir: &'a str,
    pub context: BakeContext,
    /// The environment variables bake reads the secrets from when it runs.
    pub pip_env: &'a str,
    pub apt_env: &'a str,
}

/// A bake string: HCL's and JSON's own escapes, and `$${` for a literal `${`, which both
/// would otherwise read as an interpolation (bake's JSON is HCL's JSON syntax).
fn bake_literal(s: &str) -> String {
    s.replace("${", "$${").replace("%{", "%%{")
}

/// The valid cells as a docker-bake file (`json`: bake's JSON form, else HCL). Paths are
/// `${CUDAIMG_BAKE_DIR}/…`: bake resolves relative paths against the directory it runs
/// in, not the file's. A cell with credentials gets `secret` entries read from the
/// environment when bake runs: the file holds no credential.
pub fn bake(plans: &[Plan], layout: &BakeLayout<'_>, json: bool) -> String {
    let var = |rest: &str| format!("${{{BAKE_DIR_VAR}}}/{rest}");
    let context = match &layout.context {
        BakeContext::BesideFile => var(BAKE_CONTEXT),
        BakeContext::Absolute(p) => bake_literal(p),
    };
    let dockerfile = var(BAKE_TEMPLATE);
    let secrets = |p: &Plan| -> Vec<String> {
        p.secrets
            .iter()
            .map(|s| {
                let env = if s.id == crate::urls::PIP_SECRET {
                    layout.pip_env
                } else {
                    layout.apt_env
                };
                format!("id={},env={env}", s.id)
            })
            .collect()
    };
    if json {
        let mut targets = serde_json::Map::new();
        for p in plans {
            let args: serde_json::Map<String, serde_json::Value> = p
                .build_args
                .iter()
                .map(|(k, v)| (k.clone(), bake_literal(v).into()))
                .collect();
            let mut target = serde_json::json!({
                "context": context,
                "dockerfile": dockerfile,
                "tags": [bake_literal(&p.image)],
                "args": args,
            });
            let s = secrets(p);
            if !s.is_empty() {
                target["secret"] = s.into();
            }
            targets.insert(target_name(p), target);
        }
        let names: Vec<String> = plans.iter().map(target_name).collect();
        let doc = serde_json::json!({
            "variable": {BAKE_DIR_VAR: {"default": bake_literal(layout.dir)}},
            "group": {"default": {"targets": names}},
            "target": targets,
        });
        return serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
    }
    let mut out = format!(
        "# Written by `cudaimg build --matrix … --bake`: every valid cell of the matrix, each\n\
         # base pinned by digest. Invalid cells are left out (cudaimg's summary says why).\n\
         # The template and the build context are beside this file; `docker buildx bake -f\n\
         # FILE` runs from any directory (set {BAKE_DIR_VAR} if this directory moves).\n\n\
         variable \"{BAKE_DIR_VAR}\" {{\n  default = {}\n}}\n\n",
        hcl_string(layout.dir)
    );
    let names: Vec<String> = plans.iter().map(|p| hcl_string(&target_name(p))).collect();
    out.push_str(&format!(
        "group \"default\" {{\n  targets = [{}]\n}}\n",
        names.join(", ")
    ));
    // The paths are interpolations on purpose: only the variable's name is unescaped.
    let interpolated = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    for p in plans {
        out.push_str(&format!(
            "\ntarget {} {{\n  context    = {}\n  dockerfile = {}\n  tags       = [{}]\n",
            hcl_string(&target_name(p)),
            interpolated(&context),
            interpolated(&dockerfile),
            hcl_string(&p.image)
        ));
        let s = secrets(p);
        if !s.is_empty() {
            let s: Vec<String> = s.iter().map(|x| hcl_string(x)).collect();
            out.push_str(&format!("  secret     = [{}]\n", s.join(", ")));
        }
        out.push_str("  args = {\n");
        for (k, v) in &p.build_args {
            out.push_str(&format!("    {k} = {}\n", hcl_string(v)));
        }
        out.push_str("  }\n}\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_product_is_enumerated_and_unknown_keys_refused() {
        let m = Matrix::parse(
            "bases = [\"nvidia/cuda:12.4.1-runtime-ubuntu22.04\"]\ntorch = [\"2.5.1\", \"2.8.0\"]\npython = [\"3.10\", \"3.11\"]\n",
        )
        .unwrap();
        assert_eq!(m.cells().len(), 4);
        assert!(Matrix::parse("bases = [\"x\"]\ntorch = [\"2.5\"]\nexclude = []\n").is_err());
        assert!(Matrix::parse("bases = []\ntorch = [\"2.5\"]\n").is_err());
    }

    #[test]
    fn hcl_strings_do_not_interpolate() {
        assert_eq!(hcl_string("a${b}\"c"), "\"a$${b}\\\"c\"");
    }
}
