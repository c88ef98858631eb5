//! The transfer engine: resolves an image through the sources and moves its blobs into the
//! store, verified, in typed steps (resolve, select, plan, fetch, commit) that `pull`, `lock`
//! and `copy` share (`copy` resolves and selects through them, then streams each blob into
//! its destination instead of the store). Commands drive it through one [`Session`] per run;
//! it prints nothing and reports through [`cudaimg_oci::progress::Reporter`].
//!
//! Modules depend one way: `session` and `error` at the bottom; `resolve` (a tag's digest, a
//! manifest by digest) and the blob movers (`blob`, `parallel`; which mirror a blob asks
//! first is the mirrors crate's `order`) on them; `steps` on those; the orchestrators
//! (`pull`, `pull_all`, `lock`, `copy`, `push`) on top. This root only declares them and
//! says what is public.

pub mod archive;
pub mod archive_in;
mod blob;
mod body_limits;
mod copy;
mod error;
mod lock;
mod parallel;
mod pull;
mod pull_all;
mod push;
mod resolve;
mod session;
mod steps;

pub use copy::{CopyTarget, PlatformChoice};
pub use error::{FetchError, PullError, SessionError};
pub use lock::Locked;
pub use pull::{ChosenImage, ImageSink, LayerReport, PullReport, UpstreamIndex};
pub use pull_all::{PlatformReport, PullAllReport};
pub use push::{
    push, send as send_plan, BlobReport, ChannelReader, Destination, DestinationFigures,
    Doc as PushDoc, Plan as PushPlan, PushError, PushOptions, PushReport, StoreSource,
};
pub use resolve::ResolvedBy;
pub use session::{HealthRecord, Session, Settings, DEFAULT_JOBS, DEFAULT_STALL_SECS};
pub use steps::{Committed, Downloaded, Plan, PullTarget, Resolved, Selected};
