//! What `pull` knows before asking the network, and what it says after a "no such tag":
//! an `nvidia/cuda` tag the grammar says cannot exist (`12.4-runtime-…` with no patch,
//! `ubuntu22.4`, `latest`), or no tag at all (which means `latest`, a tag nvidia/cuda no longer has), fails at once
//! with `explain`'s cause and the nearest tags NVIDIA published; a tag the registry does
//! not have gets the nearest tags of the registry's own list.

use cudaimg_config::Canonical;
use cudaimg_cuda::choose::{self, Filter};
use cudaimg_cuda::{eol, known, CudaTag};

use crate::error::Error;

/// Whether `name` is NVIDIA's CUDA repository, whose tags follow the grammar.
fn is_cuda(name: &Canonical) -> bool {
    name.image.repository == "nvidia/cuda"
}

/// Whether the reference as written names a tag (`host:port/name` has a colon, but in the
/// host, not in the last path segment).
fn has_tag(input: &str) -> bool {
    input
        .rsplit('/')
        .next()
        .is_some_and(|last| last.split('@').next().unwrap_or_default().contains(':'))
}

/// "did you mean `nvidia/cuda:A` or `nvidia/cuda:B`?" for `tags`, empty without any.
fn did_you_mean(repository: &str, tags: &[&str]) -> Option<String> {
    let quoted: Vec<String> = tags.iter().map(|t| format!("`{repository}:{t}`")).collect();
    match quoted.as_slice() {
        [] => None,
        [one] => Some(format!("did you mean {one}?")),
        [init @ .., last] => Some(format!("did you mean {} or {last}?", init.join(", "))),
    }
}

/// Refuses, before any request, a reference to `nvidia/cuda` whose tag cannot exist.
pub(crate) fn precheck(input: &str, name: &Canonical) -> Result<(), Error> {
    if !is_cuda(name) || name.image.digest.is_some() {
        return Ok(());
    }
    let shown = name.image.without_digest();
    let repository = cudaimg_oci::reference::ImageRef {
        tag: None,
        ..shown.clone()
    }
    .docker_form();
    if !has_tag(input) {
        // The tags NVIDIA published, and the runtime of each minor's newest patch on the
        // current Ubuntu releases: the published list is a snapshot, while the version
        // table (which `explain` reads too) knows the releases since.
        let newest_runtimes: Vec<String> = eol::latest_patches()
            .flat_map(|v| ["ubuntu24.04", "ubuntu22.04"].map(|os| format!("{v}-runtime-{os}")))
            .collect();
        let mut published: Vec<CudaTag> = known::published()
            .filter_map(|t| CudaTag::parse(t).ok())
            .collect();
        published.extend(
            newest_runtimes
                .iter()
                .filter_map(|t| CudaTag::parse(t).ok()),
        );
        let mut newest = published;
        choose::sort(&mut newest);
        let recommended = choose::recommend(&newest, &Filter::default());
        let suggestion = recommended
            .as_ref()
            .and_then(|r| did_you_mean(&repository, &[r.tag.as_str()]))
            .map(|s| format!("{s} "))
            .unwrap_or_default();
        return Err(Error::WithHint {
            inner: Box::new(Error::Usage(format!(
                "`{input}` names no tag, so it means `{repository}:latest`, and nvidia/cuda has no \
                 `latest` tag any more"
            ))),
            hint: format!(
                "{suggestion}name a CUDA version and flavor (NVIDIA's newest supported runtime as of \
                 {}); `cudaimg tags {repository}` lists what exists now and recommends one",
                eol::AS_OF
            ),
        });
    }
    let Some(tag) = shown.tag.as_deref() else {
        return Ok(());
    };
    match CudaTag::parse(tag) {
        // Not certainly wrong (a flavor NVIDIA may add, a private tag): the registry decides.
        Ok(_) => Ok(()),
        Err(e) if !e.is_certain() => Ok(()),
        Err(e) => {
            let near = known::nearest(tag, known::published(), 3);
            let hint = match did_you_mean(&repository, &near) {
                Some(s) => format!(
                    "{s} (from the tags NVIDIA published, as of {}); `cudaimg tags {repository}` \
                     lists what exists now",
                    eol::AS_OF
                ),
                None => e.hint(),
            };
            Err(Error::WithHint {
                inner: Box::new(Error::Tag(e)),
                hint,
            })
        }
    }
}

/// After a "no such tag": the nearest tags of the registry's own list, as a hint that
/// replaces the generic one; `None` when the list cannot be had or nothing is near.
pub(crate) async fn not_found_hint(ctx: &super::Ctx, name: &Canonical) -> Option<String> {
    let tag = name.image.tag.as_deref()?;
    if name.image.digest.is_some() {
        return None;
    }
    let set = ctx.session.sources(name).ok()?;
    let repository = cudaimg_oci::reference::ImageRef {
        tag: None,
        digest: None,
        ..name.image.clone()
    }
    .docker_form();
    let what = format!("the tag list of {repository}");
    let listed = set
        .tag_list(
            &name.image.repository,
            1000,
            &what,
            &cudaimg_oci::progress::Silent,
        )
        .await
        .ok()?;
    let (list, source) = (listed.list, listed.source);
    let near = known::nearest(tag, list.tags.iter().map(String::as_str), 3);
    let mean = did_you_mean(&repository, &near)?;
    Some(format!(
        "{mean} (from the tag list of {}); `cudaimg tags {repository}` lists them all",
        source.label()
    ))
}
