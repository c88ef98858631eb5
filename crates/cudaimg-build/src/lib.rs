//! Building team images of `PyTorch` on an `nvidia/cuda` base, decided before anything runs:
//!
//! - [`compat`]: the one place with the torch → `cuXYZ` wheel variants → Python table and the
//!   OS → Python table, each row with its source; and the rules that refuse an impossible
//!   combination with the nearest valid ones.
//! - [`arch`]: the GPU architectures each `cuXYZ` wheel variant has kernels for.
//! - [`python`]: which Python a stored base already carries (read from its layers).
//! - [`plan`]: one build: the base pinned by digest, the template, its build args and labels,
//!   the resulting name, the driver it needs, the warnings.
//! - [`matrix`]: `builds.toml`, every cell planned or skipped with its reason, and the
//!   docker-bake file of the valid cells.
//! - [`urls`]: the pip index and apt mirror URLs, credentials held apart as `BuildKit`
//!   secrets so that none reaches a build arg, a command line or a plan.
//!
//! No network and no Docker here: the binary pulls, hands over and runs `docker build`.

pub mod arch;
pub mod compat;
pub mod index;
pub mod matrix;
pub mod plan;
pub mod python;
pub mod table;
pub mod urls;

/// The template every build uses, as shipped in `dockerfiles/` (one file, all flavors).
pub const TEMPLATE: &str = include_str!("../../../dockerfiles/pytorch.Dockerfile");
/// Its path in the repository, for messages and bake files.
pub const TEMPLATE_PATH: &str = "dockerfiles/pytorch.Dockerfile";

/// The template for the classic builder, which parses no `RUN --mount`: the same file with
/// its optional secret mounts taken out. It can then reach no credentials, so the binary
/// refuses them with the classic builder ([`urls`]).
pub fn classic_template() -> String {
    TEMPLATE
        .lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("RUN ") else {
                return line.to_owned();
            };
            let mut rest = rest.trim_start();
            while let Some(after) = rest.strip_prefix("--mount=type=secret,") {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                rest = after[end..].trim_start();
            }
            // A mount alone on the `RUN` line left only the continuation.
            if rest == "\\" {
                "RUN \\".to_owned()
            } else {
                format!("RUN {rest}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_classic_template_has_no_mounts_and_the_same_steps() {
        let classic = super::classic_template();
        assert!(super::TEMPLATE.contains("RUN --mount=type=secret,id=cudaimg_pip_index_url"));
        assert!(
            classic
                .lines()
                .filter(|l| !l.starts_with('#'))
                .all(|l| !l.contains("--mount")),
            "{classic}"
        );
        assert_eq!(
            classic.lines().count(),
            super::TEMPLATE.lines().count(),
            "{classic}"
        );
        assert_eq!(
            classic.matches("\nRUN ").count(),
            super::TEMPLATE.matches("\nRUN ").count()
        );
    }
}
