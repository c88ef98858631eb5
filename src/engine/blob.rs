//! Moving one blob from the first source that serves it into the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;

use crate::manifest::Descriptor;
use crate::progress::Reporter;
use crate::registry::RegistryError;
use crate::sources::{FallbackError, Source, SourceSet};
use crate::store::{CommitError, Store};

/// Downloads `desc` through `sources` into `store`. Every byte received is added to
/// `received`, discarded ones included, so reports show the real network cost.
pub(super) async fn fetch(
    store: &Store,
    sources: &SourceSet,
    repo: &str,
    desc: &Descriptor,
    received: &AtomicU64,
    reporter: &dyn Reporter,
) -> Result<Arc<Source>, FallbackError> {
    let what = format!("blob {}", desc.digest);
    let (_, source) = sources
        .first_success(&what, reporter, |source| async move {
            let mut writer = store.blob_writer(&desc.digest, desc.size).await?;
            let resp = source.client.blob(repo, &desc.digest, 0).await?;
            let url = resp.url.clone();
            reporter.blob_started(&desc.digest, desc.size, resp.offset, source.label());
            let mut body = resp.response.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| RegistryError::from_reqwest_at(&url, e))?;
                received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                let so_far = writer.written() + chunk.len() as u64;
                writer
                    .write(&chunk)
                    .await
                    .map_err(|e| commit_error(e, &url, desc, so_far))?;
                reporter.blob_progress(&desc.digest, chunk.len() as u64);
            }
            let so_far = writer.written();
            writer
                .commit()
                .await
                .map_err(|e| commit_error(e, &url, desc, so_far))?;
            reporter.blob_finished(&desc.digest);
            Ok(())
        })
        .await?;
    Ok(source)
}

/// A bad blob is the source's fault (try the next one); a failed disk is ours (give up).
fn commit_error(e: CommitError, url: &str, desc: &Descriptor, received: u64) -> RegistryError {
    match e {
        CommitError::Mismatch {
            actual,
            actual_size,
            ..
        } if actual_size == desc.size => RegistryError::DigestMismatch {
            url: url.to_owned(),
            expected: desc.digest.clone(),
            actual,
        },
        CommitError::Mismatch { actual_size, .. } => RegistryError::SizeMismatch {
            url: url.to_owned(),
            expected: desc.size,
            actual: actual_size,
        },
        CommitError::TooLong { expected_size } => RegistryError::SizeMismatch {
            url: url.to_owned(),
            expected: expected_size,
            actual: received,
        },
        CommitError::Store(e) => RegistryError::Store(e),
    }
}
