//! What can go wrong talking to a registry, and what to do about it.
//!
//! [`RegistryError::next`] is the one place that decides between trying another source and
//! giving up; the fallback loop and the exit code both follow it.

use std::time::Duration;

use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::ManifestError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url} did not answer in time: {reason}")]
    Timeout { url: String, reason: String },
    #[error("{url} sent nothing for {secs} s")]
    Stalled { url: String, secs: u64 },
    #[error("the transfer from {url} broke off: {reason}")]
    Transfer { url: String, reason: String },
    #[error("{url} answered HTTP {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("{url} has no such {what}{detail}")]
    NotFound {
        url: String,
        what: &'static str,
        detail: String,
    },
    #[error("{url} refused access: {reason}")]
    Denied { url: String, reason: String },
    #[error("{url} sent content whose digest is {actual}, not the expected {expected}")]
    DigestMismatch {
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{url} sent {actual} bytes where {expected} were expected")]
    SizeMismatch {
        url: String,
        expected: u64,
        actual: u64,
    },
    /// A body that went on past the descriptor's size (counted as it arrived: a chunked or
    /// close-delimited body announces no length).
    #[error("{url} sent more than the {expected} bytes expected (at least {at_least})")]
    TooLong {
        url: String,
        expected: u64,
        at_least: u64,
    },
    #[error("{url} cannot serve the blob: {reason}")]
    BadRange { url: String, reason: String },
    #[error("{url} sent an unusable manifest")]
    BadManifest {
        url: String,
        #[source]
        source: ManifestError,
    },
    #[error("{url} sent an unusable answer: {reason}")]
    BadResponse { url: String, reason: String },
    /// A URL built from the configuration or a server's answer does not parse.
    #[error("{url} is not a valid URL")]
    InvalidUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("reading credentials for `{host}` failed: {reason}")]
    Credentials { host: String, reason: String },
    /// An upload request was refused with a 401 (a token expired mid-upload); a fresh one is
    /// in place. Nothing was sent again: ask the session's status and continue from there.
    #[error("{url} asked for credentials again during an upload; they were renewed")]
    TokenRenewed { url: String },
    /// The registry no longer knows the upload session (404, or distribution's
    /// `BLOB_UPLOAD_INVALID`/`BLOB_UPLOAD_UNKNOWN`): that blob starts over in a new session.
    #[error("{url} lost the upload session{detail}")]
    UploadSessionLost { url: String, detail: String },
}

/// What the caller should do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A passing fault (refused or cut connection, timeout, stall, 5xx, 429): ask another
    /// source now, and this one again after a backoff.
    Retry,
    /// This source cannot serve this item (404, refused access, wrong bytes, a bad manifest):
    /// ask the next source, and not this one again for the same item.
    NextSource,
    /// No source can help (the local disk failed): stop. No protocol error says this; the
    /// callers' own error types do (a store error inside a transfer).
    GiveUp,
}

impl RegistryError {
    /// The one decision between retrying, moving on, and giving up.
    pub fn next(&self) -> Next {
        match self {
            RegistryError::Connect { .. }
            | RegistryError::Timeout { .. }
            | RegistryError::Stalled { .. }
            | RegistryError::Transfer { .. }
            | RegistryError::TokenRenewed { .. }
            | RegistryError::UploadSessionLost { .. } => Next::Retry,
            RegistryError::Status { status, .. }
                if matches!(*status, 408 | 429) || *status >= 500 =>
            {
                Next::Retry
            }
            RegistryError::Status { .. }
            | RegistryError::NotFound { .. }
            | RegistryError::Denied { .. }
            | RegistryError::DigestMismatch { .. }
            | RegistryError::SizeMismatch { .. }
            | RegistryError::TooLong { .. }
            | RegistryError::BadRange { .. }
            | RegistryError::BadManifest { .. }
            | RegistryError::BadResponse { .. }
            | RegistryError::InvalidUrl { .. }
            | RegistryError::Credentials { .. } => Next::NextSource,
        }
    }

    /// How long the server asked us to stay away (`Retry-After` on a 429 or 503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }

    /// A short label of the failure kind, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::Connect { .. } => "connect",
            RegistryError::Timeout { .. } => "timeout",
            RegistryError::Transfer { .. } => "transfer",
            RegistryError::Stalled { .. } => "stall",
            RegistryError::Status { status: 429, .. } => "rate-limited",
            RegistryError::Status { status, .. } if *status >= 500 => "server-error",
            RegistryError::Status { .. } => "http-error",
            RegistryError::NotFound { .. } => "not-found",
            RegistryError::Denied { .. } => "denied",
            RegistryError::DigestMismatch { .. } => "digest-mismatch",
            RegistryError::SizeMismatch { .. } | RegistryError::TooLong { .. } => "size-mismatch",
            RegistryError::BadRange { .. } => "bad-range",
            RegistryError::BadManifest { .. } => "bad-manifest",
            RegistryError::BadResponse { .. } => "bad-response",
            RegistryError::InvalidUrl { .. } => "invalid-url",
            RegistryError::Credentials { .. } => "credentials",
            RegistryError::TokenRenewed { .. } => "token-renewed",
            RegistryError::UploadSessionLost { .. } => "upload-session-lost",
        }
    }

    /// A reqwest failure as a typed error, for a URL already redacted for messages.
    pub fn from_reqwest_at(url: &str, source: reqwest::Error) -> Self {
        let source = source.without_url();
        let reason = root_cause_of(&source);
        let url = url.to_owned();
        if source.is_timeout() {
            RegistryError::Timeout { url, reason }
        } else if source.is_connect() {
            RegistryError::Connect { url, reason }
        } else {
            RegistryError::Transfer { url, reason }
        }
    }

    pub(crate) fn from_reqwest(url: &reqwest::Url, source: reqwest::Error) -> Self {
        Self::from_reqwest_at(&redact_url(url), source)
    }
}

/// The innermost cause (`Connection refused (os error 111)`): reqwest's outer layers repeat
/// the URL and say nothing a user can act on.
fn root_cause_of(e: &reqwest::Error) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A URL fit for messages: no user info, no query (blob CDNs sign URLs in the query).
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_signed_queries_and_userinfo() {
        let u = reqwest::Url::parse("https://user:pw@cdn.example/blob?X-Amz-Signature=abc#f")
            .expect("url");
        assert_eq!(redact_url(&u), "https://cdn.example/blob");
    }
}
