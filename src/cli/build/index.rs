//! What the package index a build will use holds of torch (see [`cudaimg_build::index`]).

use std::path::Path;

use cudaimg_build::plan::{self, Options};
use cudaimg_build::urls::redacted;

/// The build's platform's architecture as wheel names spell it.
fn wheel_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "aarch64",
        _ => "x86_64",
    }
}

/// What the index the build will install from holds of torch: the wheelhouse's files, else
/// the PEP 503 page `INDEX/torch/` of `--pip-index-url`, else `PyTorch`'s own index (every
/// variant's wheels are listed at `https://download.pytorch.org/whl/torch/`). `None`, with a
/// note, when it cannot be read: the compiled table decides then.
pub(super) async fn read_index(
    wheelhouse: Option<&Path>,
    opts: &Options,
) -> Option<cudaimg_build::index::Listing> {
    use cudaimg_build::index::Listing;
    if let Some(dir) = wheelhouse {
        let names: Vec<String> = fs_err::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let source = format!("--wheelhouse {}", dir.display());
        return Some(Listing::from_names(
            &source,
            names.iter().map(String::as_str),
            wheel_arch(),
        ));
    }
    // cudaimg's own request carries the index's credentials (reqwest sends a URL's
    // `user:password@` as Basic auth); what is shown has the password as `***`.
    let root = opts.pip_index_url.as_ref().map_or_else(
        || {
            opts.pytorch_index
                .clone()
                .unwrap_or_else(|| plan::PYTORCH_INDEX.to_owned())
        },
        |u| u.full().to_owned(),
    );
    let url = format!("{}/torch/", root.trim_end_matches('/'));
    let shown = redacted(&url);
    let fetched = async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(20))
            .build()?;
        client
            .get(&url)
            .header(reqwest::header::ACCEPT, "text/html")
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    }
    .await;
    match fetched {
        Ok(html) => Some(Listing::from_html(&shown, &html, wheel_arch())),
        Err(e) => {
            note!(
                "note: cannot read the package index {shown} ({}): checking torch against \
                 cudaimg's compiled table (dated {})",
                redacted(&e.without_url().to_string()),
                cudaimg_build::table::table().date
            );
            None
        }
    }
}
