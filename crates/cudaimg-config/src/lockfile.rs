//! `cudaimg.lock`: canonical references pinned to the digests they named when locked, so CI
//! pulls exactly what it built on, from any source, with or without the official registry.
//!
//! The file is TOML, sorted by reference, one table per image, so a re-lock that changes
//! nothing changes no byte and a moved tag is a two-line diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use cudaimg_oci::digest::Digest;

pub const DEFAULT_LOCKFILE: &str = "cudaimg.lock";
const VERSION: u32 = 1;
const HEADER: &str = "# cudaimg.lock: image references pinned to digests.\n\
# Written by `cudaimg lock REF...`; read by `cudaimg pull --locked`. Commit it.\n\n";

/// One locked image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// What the reference named when locked: the manifest list / index, or the manifest.
    pub digest: Digest,
    pub media_type: String,
    /// Platform (`linux/arm64/v8`) to that platform's manifest, for lists and indexes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub platforms: BTreeMap<String, Digest>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default)]
    images: BTreeMap<String, Pin>,
}

/// A lockfile, loaded or new.
#[derive(Debug, Clone)]
pub struct Lockfile {
    pub path: PathBuf,
    pub images: BTreeMap<String, Pin>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read lockfile `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write lockfile `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{reference}` is not in the lockfile `{}`", path.display())]
    NotLocked { reference: String, path: PathBuf },
}

impl LockError {
    pub fn hint(&self) -> String {
        match self {
            LockError::NotLocked { reference, .. } => format!(
                "`pull --locked` pulls only locked images; add it with `cudaimg lock {reference}` and commit the lockfile"
            ),
            LockError::Invalid { .. } => {
                "the lockfile is written by `cudaimg lock`; restore it from version control, or delete it and lock again".into()
            }
            LockError::Read { .. } => "create it with `cudaimg lock REF...`, or name it with `--lockfile PATH`".into(),
            LockError::Write { .. } => "check that the directory exists and is writable, or use `--lockfile PATH`".into(),
        }
    }
}

impl Lockfile {
    /// Loads `path`; a missing file is an empty lockfile when `missing_ok`.
    pub fn load(path: &Path, missing_ok: bool) -> Result<Self, LockError> {
        let text = match cudaimg_static::regular::read_capped_to_string(
            path,
            cudaimg_static::regular::MAX_TEXT_FILE,
        ) {
            Ok(t) => t,
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Lockfile {
                    path: path.to_owned(),
                    images: BTreeMap::new(),
                })
            }
            Err(e) => {
                return Err(LockError::Read {
                    path: path.to_owned(),
                    source: e.into(),
                })
            }
        };
        let invalid = |message: String| LockError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: File = toml::from_str(&text).map_err(|e| {
            let (line, col) = e.span().map_or((1, 1), |s| crate::line_col(&text, s.start));
            invalid(format!("{line}:{col}: {}", e.message().trim()))
        })?;
        if file.version != VERSION {
            return Err(invalid(format!(
                "lockfile version {} is not supported (this cudaimg writes version {VERSION})",
                file.version
            )));
        }
        Ok(Lockfile {
            path: path.to_owned(),
            images: file.images,
        })
    }

    pub fn get(&self, reference: &str) -> Result<&Pin, LockError> {
        self.images
            .get(reference)
            .ok_or_else(|| LockError::NotLocked {
                reference: reference.to_owned(),
                path: self.path.clone(),
            })
    }

    /// Writes the lockfile atomically (temp file and rename).
    pub fn save(&self) -> Result<(), LockError> {
        let write = |source| LockError::Write {
            path: self.path.clone(),
            source,
        };
        let body = toml::to_string(&File {
            version: VERSION,
            images: self.images.clone(),
        })
        .map_err(|e| write(std::io::Error::other(e)))?;
        let tmp = self
            .path
            .with_extension(format!("lock.tmp-{}", std::process::id()));
        fs_err::write(&tmp, format!("{HEADER}{body}")).map_err(write)?;
        fs_err::rename(&tmp, &self.path).map_err(write)
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).expect("digest")
    }

    #[test]
    fn round_trip_is_stable_and_sorted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cudaimg.lock");
        let mut lock = Lockfile::load(&path, true).expect("missing is empty");
        lock.images.insert(
            "docker.io/nvidia/cuda:b".into(),
            Pin {
                digest: d('b'),
                media_type: "x".into(),
                platforms: [
                    ("linux/arm64/v8".to_owned(), d('c')),
                    ("linux/amd64".to_owned(), d('d')),
                ]
                .into(),
            },
        );
        lock.images.insert(
            "docker.io/nvidia/cuda:a".into(),
            Pin {
                digest: d('a'),
                media_type: "y".into(),
                platforms: BTreeMap::new(),
            },
        );
        lock.save().expect("saves");
        let first = std::fs::read_to_string(&path).expect("read");
        let again = Lockfile::load(&path, false).expect("loads");
        assert_eq!(again.images, lock.images);
        again.save().expect("saves");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), first);
        assert!(
            first.find("cuda:a").expect("a") < first.find("cuda:b").expect("b"),
            "{first}"
        );
        assert!(first.find("linux/amd64").expect("amd") < first.find("linux/arm64").expect("arm"));
    }

    #[test]
    fn errors_name_the_file_and_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cudaimg.lock");
        std::fs::write(
            &path,
            "version = 1\n[images.\"x\"]\ndigest = \"sha256:nope\"\nmedia_type = \"m\"\n",
        )
        .expect("write");
        let e = Lockfile::load(&path, false).expect_err("bad digest");
        assert!(e.to_string().contains("cudaimg.lock: 3:"), "{e}");
        std::fs::write(&path, "version = 9\n").expect("write");
        assert!(Lockfile::load(&path, false)
            .expect_err("version")
            .to_string()
            .contains("version 9"));
        assert!(matches!(
            Lockfile::load(&dir.path().join("none"), false),
            Err(LockError::Read { .. })
        ));
    }
}
