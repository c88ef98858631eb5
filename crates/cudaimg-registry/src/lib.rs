//! The distribution protocol against one endpoint: authentication, manifests and blobs, read
//! and written (uploads: [`RegistryClient::push_blob`] and its parts).
//!
//! Nothing here knows about mirrors or the store: a [`RegistryClient`] talks to exactly one
//! endpoint, and its [`RegistryError`]s say whether another source could do better
//! ([`RegistryError::next`]). The mirror policy that acts on that lives in [`cudaimg_mirrors::sources`].

pub mod auth;
mod client;
pub mod credentials;
mod error;
mod upload;

pub use client::{
    api_and_prefix, BlobResponse, FetchedManifest, HttpClients, RegistryClient, TagList,
};
pub use credentials::Credential;
pub use error::{redact_url, Next, RegistryError};
pub use upload::{
    BlobSource, BytesSource, FileSource, Mount, Pushed, UploadError, UploadOptions, UploadSession,
    BUFFERED_CHUNK,
};
