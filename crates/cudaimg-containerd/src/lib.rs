//! containerd's gRPC API, just enough to hand an image over, as `cudaimg-docker` is for the
//! Docker Engine: the daemon's version, a pull through its transfer service, and an image
//! record looked up or deleted.
//!
//! containerd is reached on its unix socket ([`DEFAULT_ADDRESS`] unless told otherwise).
//! Every request names one namespace in the `containerd-namespace` gRPC metadata: Kubernetes'
//! CRI keeps its images in `k8s.io` ([`DEFAULT_NAMESPACE`]), `ctr` and `nerdctl` in
//! `default`. [`Containerd::pull`] needs the transfer service
//! (`containerd.services.transfer.v1.Transfer`), which containerd 1.7 added and 2.x keeps; an
//! older containerd answers [`ContainerdError::Unimplemented`], whose hint gives the way
//! around it (an OCI archive for `ctr images import`). The other calls work with 1.6 too.
//!
//! containerd itself fetches what it pulls, so the registry must be reachable from
//! containerd's network namespace (a registry on 127.0.0.1 is, for a containerd on the host).
//! A pull stores the image under the name the caller gives, whatever the reference it came
//! from, and unpacks it into the default snapshotter for the platform asked for; it returns
//! only when both are done, and reports no progress on the way.
//!
//! Nothing here prints. Errors are one typed enum, [`ContainerdError`], with hints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::{
    images_client::ImagesClient, transfer_client::TransferClient, version_client::VersionClient,
    DeleteImageRequest, GetImageRequest, TransferOptions, TransferRequest,
};
use containerd_client::tonic::{
    self, metadata::AsciiMetadataValue, transport::Channel, Code, Request, Status,
};
use containerd_client::types::transfer::{
    ImageStore, OciRegistry, RegistryResolver, UnpackConfiguration,
};
use cudaimg_oci::platform::Platform;

/// containerd's own default socket (`[grpc] address` in its `config.toml`).
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";

/// The namespace Kubernetes' CRI keeps its images in (`crictl images` lists this one).
pub const DEFAULT_NAMESPACE: &str = "k8s.io";

/// The gRPC metadata key containerd reads a request's namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace";

/// How long a call that moves no image (version, image lookup, delete) may take.
const SHORT_CALL: Duration = Duration::from_secs(30);

/// The longest namespace containerd accepts (its `identifiers.Validate`).
const NAMESPACE_MAX: usize = 76;

/// What containerd records for one image (its Images service's `Image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// The name it is stored under (`docker.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04`).
    pub name: String,
    /// The media type of the root descriptor: an index, or a single manifest.
    pub target_media_type: String,
    /// `sha256:…` of the root descriptor: the digest a registry serves the image under.
    pub target_digest: String,
    pub target_size: u64,
    pub labels: BTreeMap<String, String>,
}

/// One containerd, one namespace. Cloning shares the connection.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    address: PathBuf,
    namespace: String,
    namespace_value: AsciiMetadataValue,
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("no containerd answers at `{address}`: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("containerd's socket `{address}` may not be opened by this user: {reason}")]
    Denied { address: String, reason: String },
    #[error("`{0}` is not a containerd namespace: it takes letters, digits and `.`, `_`, `-` between them, at most 76 characters")]
    Namespace(String),
    #[error("an image handed to containerd needs a name to be stored under")]
    NoName,
    #[error("containerd at `{address}` does not implement the {service} service: {message}")]
    Unimplemented {
        address: String,
        namespace: String,
        service: &'static str,
        message: String,
    },
    #[error("containerd at `{address}` refused {what}: {message}")]
    Refused {
        address: String,
        what: String,
        message: String,
    },
}

impl ContainerdError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ContainerdError::Unreachable { .. } => Some(format!(
                "start containerd ({}), or pass `--containerd-address` with the socket it serves \
                 (`[grpc] address` in its config.toml); the image stays in the cudaimg store, so \
                 it can be handed over later",
                start_command()
            )),
            ContainerdError::Denied { .. } => Some(
                "containerd's socket belongs to root: run cudaimg as root (`sudo`), or pass \
                 `--containerd-address` with a rootless containerd's socket"
                    .into(),
            ),
            ContainerdError::Namespace(_) => Some(format!(
                "Kubernetes (CRI, `crictl`) uses `{DEFAULT_NAMESPACE}`; `ctr` and `nerdctl` use \
                 `default`"
            )),
            ContainerdError::NoName => None,
            ContainerdError::Unimplemented {
                namespace, service, ..
            } if *service == TRANSFER => Some(format!(
                "the transfer service came with containerd 1.7 (`containerd --version` tells \
                 this one's); upgrade it, or hand the image over as a file: `cudaimg export REF \
                 --format oci-archive -o - | ctr -n {namespace} images import -`"
            )),
            ContainerdError::Unimplemented { .. } => None,
            ContainerdError::Refused { .. } => Some(
                "containerd's log says more (`journalctl -u containerd`); `cudaimg verify` checks \
                 the stored image"
                    .into(),
            ),
        }
    }
}

const VERSION: &str = "version";
const IMAGES: &str = "images";
const TRANSFER: &str = "transfer";

/// How to start the daemon on this host: `systemctl` only where systemd runs (it does when
/// `/run/systemd/system` exists, as `sd_booted` checks).
fn start_command() -> &'static str {
    if Path::new("/run/systemd/system").is_dir() {
        "`sudo systemctl start containerd`"
    } else if Path::new("/etc/init.d/containerd").exists() {
        "`sudo service containerd start`"
    } else {
        "`sudo containerd &`"
    }
}

/// Whether containerd takes `name` as a namespace: its identifier rule, letters and digits
/// with single `.`, `_` or `-` between them, at most 76 characters.
fn valid_namespace(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    !name.is_empty()
        && name.len() <= NAMESPACE_MAX
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.windows(2).all(|w| alnum(&w[0]) || alnum(&w[1]))
        && bytes
            .iter()
            .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
}

/// Packs a message as containerd's transfer service reads it: the type URL is the message's
/// bare protobuf name (`containerd.types.transfer.OCIRegistry`), as Go's `typeurl.TypeURL`
/// names an unregistered proto message and as the service's registry of transfer types keys
/// them (exactly; prost's default `/`-prefixed URL would not match).
fn pack<M: prost::Message + prost::Name>(message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::full_name(),
        value: message.encode_to_vec(),
    }
}

/// The transfer request that pulls `reference` into the image store as `name`, keeping and
/// unpacking `platform` only.
fn pull_request(
    reference: &str,
    name: &str,
    platform: &Platform,
    plain_http: bool,
) -> TransferRequest {
    let platform = containerd_client::types::Platform {
        os: platform.os.clone(),
        architecture: platform.architecture.clone(),
        variant: platform.variant.clone().unwrap_or_default(),
        os_version: String::new(),
    };
    let source = OciRegistry {
        reference: reference.to_owned(),
        resolver: Some(RegistryResolver {
            default_scheme: if plain_http { "http" } else { "" }.to_owned(),
            ..RegistryResolver::default()
        }),
    };
    let destination = ImageStore {
        name: name.to_owned(),
        platforms: vec![platform.clone()],
        unpacks: vec![UnpackConfiguration {
            platform: Some(platform),
            // The default snapshotter for the platform (overlayfs on Linux).
            snapshotter: String::new(),
        }],
        ..ImageStore::default()
    };
    TransferRequest {
        source: Some(pack(&source)),
        destination: Some(pack(&destination)),
        options: Some(TransferOptions::default()),
    }
}

/// The innermost cause of an error: "No such file or directory (os error 2)" rather than
/// "transport error".
fn root_cause<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> &'e (dyn std::error::Error + 'static) {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur
}

/// What a gRPC status means here: a connection that broke (or was never made) is
/// `Unreachable`; a service the daemon lacks is `Unimplemented`; anything else is the daemon
/// refusing `what`.
fn status_error(
    address: &Path,
    namespace: &str,
    service: &'static str,
    what: &str,
    status: &Status,
) -> ContainerdError {
    let address = address.display().to_string();
    match status.code() {
        Code::Unavailable => ContainerdError::Unreachable {
            address,
            reason: std::error::Error::source(status)
                .map(|e| root_cause(e).to_string())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| status.message().to_owned()),
        },
        // containerd's own "method Transfer not implemented for SOURCE to DESTINATION": the
        // service is there but takes no such pair (no plugin for it, or a type URL it does
        // not know). Anything else unimplemented is a service this daemon lacks (grpc-go's
        // "unknown service …").
        Code::Unimplemented if status.message().contains("not implemented for") => {
            ContainerdError::Refused {
                address,
                what: what.to_owned(),
                message: status.message().to_owned(),
            }
        }
        Code::Unimplemented => ContainerdError::Unimplemented {
            address,
            namespace: namespace.to_owned(),
            service,
            message: status.message().to_owned(),
        },
        _ => ContainerdError::Refused {
            address,
            what: what.to_owned(),
            message: status.message().to_owned(),
        },
    }
}

impl Containerd {
    /// Connects to the containerd serving `address` (a unix socket), for requests in
    /// `namespace`. The connection is made here, so a missing socket or a stopped daemon is
    /// this call's [`ContainerdError::Unreachable`].
    pub async fn connect(address: &Path, namespace: &str) -> Result<Self, ContainerdError> {
        let namespace_value = valid_namespace(namespace)
            .then(|| namespace.parse::<AsciiMetadataValue>().ok())
            .flatten()
            .ok_or_else(|| ContainerdError::Namespace(namespace.to_owned()))?;
        let channel = containerd_client::connect(address).await.map_err(|e| {
            let cause = root_cause(&e);
            let denied = cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied);
            let address = address.display().to_string();
            let reason = cause.to_string();
            if denied {
                ContainerdError::Denied { address, reason }
            } else {
                ContainerdError::Unreachable { address, reason }
            }
        })?;
        Ok(Containerd {
            channel,
            address: address.to_owned(),
            namespace: namespace.to_owned(),
            namespace_value,
        })
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `message` as a request in this namespace.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(NAMESPACE_HEADER, self.namespace_value.clone());
        request
    }

    fn status_error(&self, service: &'static str, what: &str, status: &Status) -> ContainerdError {
        status_error(&self.address, &self.namespace, service, what, status)
    }

    /// Runs a call that moves no image, within [`SHORT_CALL`].
    async fn short<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<Result<T, Status>, ContainerdError> {
        match tokio::time::timeout(SHORT_CALL, call).await {
            Ok(answer) => Ok(answer.map(tonic::Response::into_inner)),
            Err(_) => Err(ContainerdError::Unreachable {
                address: self.address.display().to_string(),
                reason: format!("no answer within {} s", SHORT_CALL.as_secs()),
            }),
        }
    }

    /// The daemon's version (`2.1.9`, `1.6.20~ds1`: as its packager spelled it).
    pub async fn version(&self) -> Result<String, ContainerdError> {
        let mut client = VersionClient::new(self.channel.clone());
        self.short(client.version(self.request(())))
            .await?
            .map(|v| v.version)
            .map_err(|s| self.status_error(VERSION, "its version", &s))
    }

    /// Has containerd pull `reference` (`HOST[:PORT]/REPO:TAG` or `…@sha256:…`) and store it
    /// as `name` (a full name, `docker.io/nvidia/cuda:TAG`), created or, when `name` exists,
    /// moved to the new image. The record's target is `reference`'s root descriptor (an
    /// index stays an index); only `platform`'s manifest and blobs are fetched, and they are
    /// unpacked into the default snapshotter. `plain_http`: the registry speaks HTTP, not
    /// HTTPS. No time limit: a CUDA image is gigabytes.
    pub async fn pull(
        &self,
        reference: &str,
        name: &str,
        platform: &Platform,
        plain_http: bool,
    ) -> Result<(), ContainerdError> {
        // containerd would fetch everything first, then refuse: "no image name found".
        if name.is_empty() {
            return Err(ContainerdError::NoName);
        }
        let mut client = TransferClient::new(self.channel.clone());
        let request = pull_request(reference, name, platform, plain_http);
        client
            .transfer(self.request(request))
            .await
            .map(drop)
            .map_err(|s| self.status_error(TRANSFER, &format!("to pull `{reference}`"), &s))
    }

    /// The image recorded as `name`; `None` if there is none.
    pub async fn image(&self, name: &str) -> Result<Option<ImageRecord>, ContainerdError> {
        let mut client = ImagesClient::new(self.channel.clone());
        let request = self.request(GetImageRequest {
            name: name.to_owned(),
        });
        let image = match self.short(client.get(request)).await? {
            Ok(answer) => answer.image,
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => {
                return Err(self.status_error(IMAGES, &format!("to look up `{name}`"), &status))
            }
        };
        Ok(image.map(|image| {
            let target = image.target.unwrap_or_default();
            ImageRecord {
                name: image.name,
                target_media_type: target.media_type,
                target_digest: target.digest,
                target_size: u64::try_from(target.size).unwrap_or(0),
                labels: image.labels.into_iter().collect(),
            }
        }))
    }

    /// Deletes the record `name` (the name only: its content and snapshots go when
    /// containerd's garbage collector finds nothing else uses them). Returns whether there
    /// was one.
    pub async fn delete_image(&self, name: &str) -> Result<bool, ContainerdError> {
        let mut client = ImagesClient::new(self.channel.clone());
        let request = self.request(DeleteImageRequest {
            name: name.to_owned(),
            sync: false,
            target: None,
        });
        match self.short(client.delete(request)).await? {
            Ok(()) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(self.status_error(IMAGES, &format!("to delete `{name}`"), &status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    #[test]
    fn transfer_types_are_named_as_containerd_registers_them() {
        let request = pull_request("127.0.0.1:5000/x:1", "docker.io/a/b:1", &amd64(), true);
        let source = request.source.expect("source");
        let destination = request.destination.expect("destination");
        assert_eq!(source.type_url, "containerd.types.transfer.OCIRegistry");
        assert_eq!(destination.type_url, "containerd.types.transfer.ImageStore");
    }

    #[test]
    fn pull_request_carries_reference_name_platform_and_scheme() {
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        let request = pull_request("127.0.0.1:5000/x:1", "docker.io/a/b:1", &arm, true);
        let source =
            OciRegistry::decode(request.source.expect("source").value.as_slice()).expect("decode");
        assert_eq!(source.reference, "127.0.0.1:5000/x:1");
        assert_eq!(source.resolver.expect("resolver").default_scheme, "http");
        let store = ImageStore::decode(request.destination.expect("dest").value.as_slice())
            .expect("decode");
        assert_eq!(store.name, "docker.io/a/b:1");
        assert_eq!(store.platforms.len(), 1);
        assert_eq!(store.platforms[0].architecture, "arm64");
        assert_eq!(store.platforms[0].variant, "v8");
        assert_eq!(store.unpacks.len(), 1);
        assert_eq!(store.unpacks[0].snapshotter, "");
        assert_eq!(
            store.unpacks[0].platform.as_ref().map(|p| p.os.as_str()),
            Some("linux")
        );

        let tls = pull_request(
            "nvcr.io/nvidia/cuda:1",
            "nvcr.io/nvidia/cuda:1",
            &amd64(),
            false,
        );
        let source =
            OciRegistry::decode(tls.source.expect("source").value.as_slice()).expect("decode");
        assert_eq!(source.resolver.expect("resolver").default_scheme, "");
    }

    #[test]
    fn namespaces_follow_containerds_identifier_rule() {
        for good in ["k8s.io", "default", "moby", "a", "a-b_c.d", &"x".repeat(76)] {
            assert!(valid_namespace(good), "{good}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a-.b",
            "a b",
            "a/b",
            "ä",
            &"x".repeat(77),
        ] {
            assert!(!valid_namespace(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_with_the_os_reason() {
        let dir = std::env::temp_dir().join(format!("cudaimg-containerd-{}", std::process::id()));
        let err = Containerd::connect(&dir.join("nothing.sock"), DEFAULT_NAMESPACE)
            .await
            .err()
            .expect("no socket there");
        match &err {
            ContainerdError::Unreachable { address, reason } => {
                assert!(address.ends_with("nothing.sock"), "{address}");
                assert!(reason.contains("No such file"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err
            .hint()
            .is_some_and(|h| h.contains("--containerd-address")));
    }

    #[tokio::test]
    async fn a_bad_namespace_is_refused_before_connecting() {
        let err = Containerd::connect(Path::new(DEFAULT_ADDRESS), "not a namespace")
            .await
            .err()
            .expect("refused");
        assert!(matches!(err, ContainerdError::Namespace(_)), "{err:?}");
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        let address = Path::new(DEFAULT_ADDRESS);
        let map = |status| status_error(address, "k8s.io", TRANSFER, "to pull `x`", &status);
        let old = map(Status::unimplemented(
            "unknown service containerd.services.transfer.v1.Transfer",
        ));
        assert!(
            matches!(
                old,
                ContainerdError::Unimplemented {
                    service: TRANSFER,
                    ..
                }
            ),
            "{old:?}"
        );
        let hint = old.hint().expect("hint");
        assert!(hint.contains("1.7"), "{hint}");
        assert!(hint.contains("ctr -n k8s.io images import -"), "{hint}");

        let refused = map(Status::not_found(
            "failed to resolve reference \"x\": not found",
        ));
        assert_eq!(
            refused.to_string(),
            "containerd at `/run/containerd/containerd.sock` refused to pull `x`: failed to \
             resolve reference \"x\": not found"
        );
        let pair = map(Status::unimplemented(
            "method Transfer not implemented for /containerd.types.transfer.OCIRegistry to \
             /containerd.types.transfer.ImageStore",
        ));
        assert!(matches!(pair, ContainerdError::Refused { .. }), "{pair:?}");
        let gone = map(Status::unavailable("connection closed"));
        assert!(
            matches!(gone, ContainerdError::Unreachable { .. }),
            "{gone:?}"
        );
    }
}
