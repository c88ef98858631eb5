//! Importing an OCI image layout: a directory as `skopeo copy … oci:DIR`, `docker save` or
//! `cudaimg export --format oci-archive` (extracted) write it. For `sync`/bundle import and
//! `build --push` to put what others wrote into the store.
//!
//! The layout is input, not trusted: every blob is streamed through a [`super::BlobWriter`]
//! (digest and size checked before it is committed), manifests are read size-capped and
//! checked before they are parsed or followed, and a link or special file where a blob
//! belongs is refused, never read through. Names are given last, once every blob of every
//! image is stored, so a failed import names nothing (its verified blobs stay for `gc`).
//!
//! Names follow the store's convention ([`Store::name`]): an index in the layout is taken
//! apart into one entry per platform, with the index recorded as the list it was chosen
//! from. Children the layout does not hold (other platforms `docker save` left out) and
//! children of an unknown platform (build attestations) are skipped and reported.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::index::{IndexFile, IndexPlatform};
use super::{CommitError, NamedImage, Store, StoreDir, StoreError, WriteError};
use cudaimg_oci::digest::Digest;
use cudaimg_oci::manifest::{self, Descriptor, Manifest, ManifestError, MAX_MANIFEST_BYTES};
use cudaimg_oci::platform::Platform;

/// The annotation Docker (25+) and `cudaimg export` put beside the ref name: the full name.
const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// Indexes nested deeper than this are not followed (real ones nest once, if at all).
const MAX_DEPTH: usize = 8;
/// `index.json` of a layout is read up to this size.
const MAX_INDEX_BYTES: u64 = 16 << 20;

/// How the images of a layout are named in the store.
pub enum Naming {
    /// Under each entry's `org.opencontainers.image.ref.name`; entries without one are
    /// imported (their blobs) but not named.
    AsRecorded,
    /// Every image under this name (its platforms side by side).
    As(String),
    /// Under whatever the function makes of what the entry records; `None`: not named.
    With(Box<NameFn>),
}

/// Makes a store name of what a layout's entry records; `None`: leave it unnamed.
pub type NameFn = dyn Fn(&RecordedName<'_>) -> Option<String> + Send + Sync;

/// What a layout's `index.json` entry records about its name.
#[derive(Debug, Clone, Copy)]
pub struct RecordedName<'a> {
    /// `org.opencontainers.image.ref.name`: often only a tag (`latest`).
    pub ref_name: Option<&'a str>,
    /// `io.containerd.image.name`: the full name, where Docker or cudaimg wrote it.
    pub image_name: Option<&'a str>,
}

impl Naming {
    fn name_for(&self, recorded: &RecordedName<'_>) -> Option<String> {
        match self {
            Naming::AsRecorded => recorded.ref_name.map(str::to_owned),
            Naming::As(name) => Some(name.clone()),
            Naming::With(f) => f(recorded),
        }
    }
}

/// One image an import stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// The name it was given; `None`: stored, not named.
    pub name: Option<String>,
    pub manifest: Descriptor,
    /// As the layout's index records it; `None`: the config's (see [`Store::name`]).
    pub platform: Option<Platform>,
    pub index_digest: Option<Digest>,
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub images: Vec<ImportedImage>,
    /// Blobs copied into the store, and their bytes.
    pub blobs_written: usize,
    pub bytes_written: u64,
    /// Blobs the store held already.
    pub blobs_present: usize,
    /// Index children not imported, and why.
    pub skipped: Vec<String>,
}

/// Why a layout could not be imported. Nothing was named; blobs already verified stay.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("`{}` is not an OCI image layout cudaimg can import: {reason}", path.display())]
    NotALayout { path: PathBuf, reason: String },
    #[error("blob {digest} at `{}` {reason}", path.display())]
    Blob {
        path: PathBuf,
        digest: Digest,
        reason: String,
    },
    #[error("manifest {digest} at `{}` cannot be used", path.display())]
    Manifest {
        path: PathBuf,
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ImportError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ImportError::NotALayout { .. } => Some(
                "give a directory holding `oci-layout`, `index.json` and `blobs/sha256/`, as \
                 `skopeo copy … oci:DIR` writes it (extract an oci-archive with `tar -x` first)"
                    .into(),
            ),
            ImportError::Blob { .. } | ImportError::Manifest { .. } => Some(
                "the layout is damaged or incomplete: write it again from its source; nothing \
                 from it was named in the store"
                    .into(),
            ),
            ImportError::Store(e) => e.hint(),
        }
    }
}

/// A layout being read: its root, `blobs/sha256`, and `index.json`.
struct Layout {
    path: PathBuf,
    blobs: StoreDir,
    index: IndexFile,
}

impl Layout {
    fn open(path: &Path) -> Result<Layout, ImportError> {
        let not_a_layout = |reason: String| ImportError::NotALayout {
            path: path.to_owned(),
            reason,
        };
        let describe = |e: StoreError| match e {
            StoreError::Missing(_) => "there is no such directory".to_owned(),
            e => e.to_string(),
        };
        let root = StoreDir::open(path, &[], false).map_err(|e| not_a_layout(describe(e)))?;
        let read = |name: &str, limit: u64| -> Result<Vec<u8>, ImportError> {
            let file = root
                .open_read(name)
                .map_err(|e| not_a_layout(format!("`{name}`: {}", describe(e))))?;
            let mut bytes = Vec::new();
            file.take(limit)
                .read_to_end(&mut bytes)
                .map_err(|e| not_a_layout(format!("`{name}`: {e}")))?;
            Ok(bytes)
        };
        let layout: serde_json::Value = serde_json::from_slice(&read("oci-layout", 1 << 16)?)
            .map_err(|e| not_a_layout(format!("`oci-layout` is not JSON ({e})")))?;
        let version = layout["imageLayoutVersion"].as_str().unwrap_or("");
        if !version.starts_with("1.") {
            return Err(not_a_layout(format!(
                "unsupported imageLayoutVersion `{version}`"
            )));
        }
        let index: IndexFile = serde_json::from_slice(&read("index.json", MAX_INDEX_BYTES)?)
            .map_err(|e| not_a_layout(format!("`index.json` is not an OCI index ({e})")))?;
        let blobs = StoreDir::open(path, &["blobs", "sha256"], false)
            .map_err(|e| not_a_layout(format!("`blobs/sha256`: {}", describe(e))))?;
        Ok(Layout {
            path: path.to_owned(),
            blobs,
            index,
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.path.join("blobs/sha256").join(digest.hex())
    }

    fn has(&self, digest: &Digest) -> bool {
        self.blobs.stat(digest.hex()).is_ok()
    }

    /// Opens a blob of the layout; it must be a regular file.
    fn open_blob(&self, digest: &Digest) -> Result<std::fs::File, ImportError> {
        self.blobs.open_read(digest.hex()).map_err(|e| {
            let reason = match e {
                StoreError::Unsafe { found, .. } => format!("is {found}, not a regular file"),
                StoreError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    "is not in the layout".to_owned()
                }
                e => format!("cannot be read: {e}"),
            };
            self.blob_error(digest, reason)
        })
    }

    fn blob_error(&self, digest: &Digest, reason: String) -> ImportError {
        ImportError::Blob {
            path: self.blob_path(digest),
            digest: digest.clone(),
            reason,
        }
    }

    /// A manifest's bytes, checked against its descriptor, and parsed.
    fn manifest(&self, desc: &Descriptor) -> Result<(Vec<u8>, Manifest), ImportError> {
        let mut bytes = Vec::new();
        self.open_blob(&desc.digest)?
            .take(MAX_MANIFEST_BYTES.min(desc.size) + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.blob_error(&desc.digest, format!("cannot be read: {e}")))?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest || bytes.len() as u64 != desc.size {
            return Err(self.blob_error(
                &desc.digest,
                format!(
                    "does not match its descriptor: it hashes to {actual} ({} bytes), {} bytes \
                     were expected",
                    bytes.len(),
                    desc.size
                ),
            ));
        }
        let parsed = manifest::parse(&bytes, Some(&desc.media_type)).map_err(|source| {
            ImportError::Manifest {
                path: self.blob_path(&desc.digest),
                digest: desc.digest.clone(),
                source,
            }
        })?;
        Ok((bytes, parsed))
    }
}

/// A manifest to import: what it is, its platform, the index it came from, its name.
struct Work {
    desc: Descriptor,
    platform: Option<Platform>,
    index: Option<Digest>,
    name: Option<String>,
    depth: usize,
}

impl Store {
    /// Imports the OCI image layout at `layout`: every blob its entries reach, verified as
    /// it streams in, then names its images as `naming` says (see the module docs).
    pub async fn import_layout(
        &self,
        layout: &Path,
        naming: &Naming,
    ) -> Result<ImportReport, ImportError> {
        // Blobs committed but not yet named must survive a concurrent `gc`.
        let _gc = self.hold_against_gc()?;
        let src = Layout::open(layout)?;
        let mut work = Vec::new();
        for (i, entry) in src.index.manifests.iter().enumerate() {
            let recorded = RecordedName {
                ref_name: entry.ref_name(),
                image_name: entry
                    .annotations
                    .get(IMAGE_NAME_ANNOTATION)
                    .map(String::as_str),
            };
            let digest = entry.digest().map_err(|e| ImportError::NotALayout {
                path: layout.to_owned(),
                reason: format!("`index.json` manifests[{i}]: {e}"),
            })?;
            work.push(Work {
                desc: Descriptor {
                    media_type: entry.media_type.clone(),
                    digest,
                    size: entry.size,
                },
                platform: entry.platform.as_ref().map(IndexPlatform::to_platform),
                index: None,
                name: naming.name_for(&recorded),
                depth: 0,
            });
        }
        // Taken in the layout's order.
        work.reverse();
        let mut report = ImportReport::default();
        let mut done = BTreeSet::new();
        while let Some(w) = work.pop() {
            self.import_manifest(&src, w, &mut work, &mut done, &mut report)
                .await?;
        }
        for image in &report.images {
            let Some(name) = &image.name else { continue };
            let named = NamedImage {
                manifest: image.manifest.clone(),
                platform: image.platform.clone(),
                index_digest: image.index_digest.clone(),
            };
            self.name(name, &named)?;
        }
        Ok(report)
    }

    /// Stores one manifest and what it points to; an index's children go onto `work`.
    async fn import_manifest(
        &self,
        src: &Layout,
        w: Work,
        work: &mut Vec<Work>,
        done: &mut BTreeSet<Digest>,
        report: &mut ImportReport,
    ) -> Result<(), ImportError> {
        let (bytes, parsed) = src.manifest(&w.desc)?;
        match parsed {
            Manifest::Image(m) => {
                for blob in std::iter::once(&m.config).chain(&m.layers) {
                    if done.insert(blob.digest.clone()) {
                        self.import_blob(src, blob, report).await?;
                    }
                }
                self.put_bytes(&w.desc.digest, &bytes).await?;
                report.images.push(ImportedImage {
                    name: w.name,
                    manifest: w.desc,
                    platform: w.platform,
                    index_digest: w.index,
                });
            }
            Manifest::Index(i) => {
                self.put_bytes(&w.desc.digest, &bytes).await?;
                for child in i.manifests.iter().rev() {
                    let c = &child.descriptor;
                    let unknown = child.platform.as_ref().is_some_and(|p| p.os == "unknown");
                    let why = if unknown {
                        Some("its platform is unknown (a build attestation)")
                    } else if !src.has(&c.digest) {
                        Some("the layout does not hold it")
                    } else if w.depth >= MAX_DEPTH {
                        Some("indexes nest too deep")
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        report
                            .skipped
                            .push(format!("{} in {}: {why}", c.digest, w.desc.digest));
                        continue;
                    }
                    work.push(Work {
                        desc: c.clone(),
                        platform: child.platform.clone(),
                        index: Some(w.desc.digest.clone()),
                        name: w.name.clone(),
                        depth: w.depth + 1,
                    });
                }
            }
        }
        Ok(())
    }

    /// Streams one blob of the layout into the store, verified.
    async fn import_blob(
        &self,
        src: &Layout,
        desc: &Descriptor,
        report: &mut ImportReport,
    ) -> Result<(), ImportError> {
        let Some(mut writer) = self.blob_writer(&desc.digest, desc.size).await? else {
            report.blobs_present += 1;
            return Ok(());
        };
        let bad = |reason: String| src.blob_error(&desc.digest, reason);
        let mut file = tokio::fs::File::from_std(src.open_blob(&desc.digest)?);
        // A partial download of the same blob is resumed: its bytes are checked like these.
        let from = writer.written();
        file.seek(std::io::SeekFrom::Start(from))
            .await
            .map_err(|e| bad(format!("cannot be read: {e}")))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| bad(format!("cannot be read: {e}")))?;
            if n == 0 {
                break;
            }
            match writer.write(&buf[..n]).await {
                Ok(()) => {}
                Err(WriteError::TooLong { expected_size }) => {
                    writer.reset().await?;
                    return Err(bad(format!(
                        "is larger than the {expected_size} bytes its descriptor says"
                    )));
                }
                Err(WriteError::Store(e)) => return Err(e.into()),
            }
        }
        match writer.commit().await {
            Ok(()) => {
                report.blobs_written += 1;
                report.bytes_written += desc.size - from;
                Ok(())
            }
            Err(CommitError::Mismatch { .. }) if from > 0 => {
                // The earlier partial bytes may be the wrong ones: once more from the start.
                writer.reset().await?;
                drop(writer);
                Box::pin(self.import_blob(src, desc, report)).await
            }
            Err(CommitError::Mismatch {
                actual,
                actual_size,
                ..
            }) => {
                writer.reset().await?;
                Err(bad(format!(
                    "does not match its descriptor: it hashes to {actual} ({actual_size} bytes), \
                     {} bytes were expected",
                    desc.size
                )))
            }
            Err(CommitError::Store(e)) => Err(e.into()),
        }
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
            .block_on(f)
    }

    /// A layout on disk, written by hand as skopeo or `docker save` would.
    struct Written {
        dir: PathBuf,
        index: Descriptor,
        amd: Descriptor,
        layer: Digest,
    }

    fn put(dir: &Path, bytes: &[u8]) -> Digest {
        let d = Digest::of(bytes);
        std::fs::write(dir.join("blobs/sha256").join(d.hex()), bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        d
    }

    fn image(dir: &Path, arch: &str, layer: &[u8]) -> Descriptor {
        let layer_d = put(dir, layer);
        let config = format!(r#"{{"architecture":"{arch}","os":"linux"}}"#);
        let config_d = put(dir, config.as_bytes());
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_d}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_d}","size":{}}}]}}"#,
            manifest::OCI_MANIFEST,
            config.len(),
            layer.len()
        );
        Descriptor {
            media_type: manifest::OCI_MANIFEST.into(),
            digest: put(dir, m.as_bytes()),
            size: m.len() as u64,
        }
    }

    /// An index of amd64, arm64 (whose manifest is left out) and an attestation.
    fn layout(root: &Path) -> Written {
        let dir = root.join("layout");
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let amd = image(&dir, "amd64", b"amd64 layer");
        let entry = |d: &Descriptor, os: &str, arch: &str| {
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"os":"{os}","architecture":"{arch}"}}}}"#,
                d.media_type, d.digest, d.size
            )
        };
        let missing = Descriptor {
            digest: Digest::of(b"not written"),
            ..amd.clone()
        };
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{},{},{}]}}"#,
            manifest::OCI_INDEX,
            entry(&amd, "linux", "amd64"),
            entry(&missing, "linux", "arm64"),
            entry(&amd, "unknown", "unknown"),
        );
        let index_d = put(&dir, index.as_bytes());
        let top = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{index_d}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"12.4"}}}}]}}"#,
            manifest::OCI_INDEX,
            index.len()
        );
        std::fs::write(dir.join("index.json"), top).unwrap_or_else(|e| panic!("{e}"));
        Written {
            dir,
            index: Descriptor {
                media_type: manifest::OCI_INDEX.into(),
                digest: index_d,
                size: index.len() as u64,
            },
            amd,
            layer: Digest::of(b"amd64 layer"),
        }
    }

    fn store(root: &Path) -> Store {
        Store::open(&root.join("store")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_index_is_imported_verified_and_named_per_platform() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let l = layout(tmp.path());
        let store = store(tmp.path());
        let naming = Naming::With(Box::new(|r| r.ref_name.map(|t| format!("x/cuda:{t}"))));
        let report =
            block_on(store.import_layout(&l.dir, &naming)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.images.len(), 1, "{report:?}");
        assert_eq!(report.skipped.len(), 2, "{report:?}");
        assert_eq!((report.blobs_written, report.blobs_present), (2, 0));
        let listed = store.list().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name.as_deref(), Some("x/cuda:12.4"));
        assert_eq!(listed[0].manifest.as_ref(), Some(&l.amd));
        assert_eq!(listed[0].index_digest.as_ref(), Some(&l.index.digest));
        let image = store
            .image("x/cuda:12.4", None)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("not named"));
        assert_eq!(image.platform().architecture, "amd64");
        assert!(store
            .fsck(false, &|_| {})
            .is_ok_and(|r| r.problems.is_empty()));

        // Again: everything is there already, and the name is not doubled.
        let again = block_on(store.import_layout(&l.dir, &Naming::As("y/z:1".into())))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((again.blobs_written, again.blobs_present), (0, 2));
        assert_eq!(store.list().unwrap_or_else(|e| panic!("{e}")).len(), 2);
    }

    #[test]
    fn a_corrupt_or_linked_blob_fails_the_import_and_names_nothing() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let l = layout(tmp.path());
        let store = store(tmp.path());
        let layer = l.dir.join("blobs/sha256").join(l.layer.hex());
        std::fs::write(&layer, b"amd64 layeR").unwrap_or_else(|e| panic!("{e}"));
        let err = block_on(store.import_layout(&l.dir, &Naming::AsRecorded))
            .expect_err("a corrupt layer");
        assert!(
            matches!(&err, ImportError::Blob { digest, reason, .. }
                if *digest == l.layer && reason.contains("hashes to")),
            "{err}"
        );
        assert!(err.hint().is_some());
        assert!(store.list().unwrap_or_else(|e| panic!("{e}")).is_empty());
        assert!(!store.has_blob(&l.layer, 11));

        // A link where the blob belongs is refused, not read through.
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"amd64 layer").unwrap_or_else(|e| panic!("{e}"));
        std::fs::remove_file(&layer).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&outside, &layer).unwrap_or_else(|e| panic!("{e}"));
        let err =
            block_on(store.import_layout(&l.dir, &Naming::AsRecorded)).expect_err("a linked layer");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(store.list().unwrap_or_else(|e| panic!("{e}")).is_empty());

        // Too long: refused as well.
        std::fs::remove_file(&layer).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&layer, b"amd64 layer!").unwrap_or_else(|e| panic!("{e}"));
        let err =
            block_on(store.import_layout(&l.dir, &Naming::AsRecorded)).expect_err("a long layer");
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn what_is_not_a_layout_is_refused_with_a_hint() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = store(tmp.path());
        let err = block_on(store.import_layout(&tmp.path().join("none"), &Naming::AsRecorded))
            .expect_err("no directory");
        assert!(matches!(err, ImportError::NotALayout { .. }), "{err}");
        assert!(err.hint().is_some_and(|h| h.contains("oci-layout")));
        let l = layout(tmp.path());
        std::fs::write(l.dir.join("oci-layout"), r#"{"imageLayoutVersion":"2.0"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let err = block_on(store.import_layout(&l.dir, &Naming::AsRecorded))
            .expect_err("a future layout");
        assert!(err.to_string().contains("2.0"), "{err}");
    }
}
