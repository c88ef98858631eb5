//! Reading a bundle: `bundle.json`, the check of every part (present, its size, its
//! sha256), a part's own index, and blobs as byte ranges of the part files.
//!
//! Nothing is extracted: a blob is read where it lies in its part (or parts, for a cut
//! blob), from any offset. What reads a blob verifies it as it streams: an upload hashes
//! what it sends and refuses to commit other bytes, a store write commits only a blob that
//! matches its digest, and [`Bundle::read_small`] checks manifests before they are used.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

use super::{
    BlobLocation, BundleError, BundleFile, PartIndex, PartRecord, BLOCK, BUNDLE_JSON, FORMAT,
    MAX_BUNDLE_JSON, PART_FORMAT, PART_INDEX,
};
use cudaimg_oci::digest::{Digest, Hasher};
use cudaimg_oci::text::shown;
use cudaimg_registry::BlobSource;
use cudaimg_static::regular::{self, FileError};

/// An opened bundle directory.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub file: BundleFile,
    located: BTreeMap<Digest, usize>,
}

/// A part that cannot be used, and why; [`PartProblem::path`] is the file to send again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartProblem {
    pub file: String,
    pub path: PathBuf,
    pub reason: String,
}

impl Bundle {
    /// Reads `DIR/bundle.json`: a regular file (a FIFO or a link to a device is refused
    /// before any read) of at most [`MAX_BUNDLE_JSON`] bytes read.
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        let path = dir.join(BUNDLE_JSON);
        let not = |reason: String| BundleError::NotABundle {
            path: path.clone(),
            reason,
        };
        let bytes = match regular::read_capped(&path, MAX_BUNDLE_JSON) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not(format!("there is no {BUNDLE_JSON}")))
            }
            Err(FileError::NotRegular { what, .. }) => {
                return Err(not(format!(
                    "its {BUNDLE_JSON} is {what}, not a regular file, and is not read"
                )))
            }
            Err(FileError::TooLarge { .. }) => {
                return Err(not(format!(
                    "it holds more than a bundle.json can be ({MAX_BUNDLE_JSON} bytes)"
                )))
            }
            Err(FileError::Io(e)) => return Err(e.into()),
        };
        Self::from_json(dir, &bytes)
    }

    /// A bundle in `dir` whose `bundle.json` holds `bytes`: parsed and checked (part names
    /// are plain file names, pieces lie in listed parts and cover their blob), nothing read.
    /// Linear in the number of entries: a hostile `bundle.json` is large, not slow.
    pub fn from_json(dir: &Path, bytes: &[u8]) -> Result<Bundle, BundleError> {
        let path = dir.join(BUNDLE_JSON);
        let not = |reason: String| BundleError::NotABundle {
            path: path.clone(),
            reason,
        };
        let format: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| not(format!("it is not JSON ({e})")))?;
        if format["format"] != FORMAT {
            return Err(not(format!(
                "its format is {}, this cudaimg reads {FORMAT}",
                shown(&format["format"].to_string())
            )));
        }
        let file: BundleFile =
            serde_json::from_slice(bytes).map_err(|e| not(shown(&e.to_string()).to_string()))?;
        let mut parts = HashSet::with_capacity(file.parts.len());
        for r in &file.parts {
            if r.file.contains('/') || r.file.starts_with('.') || r.file.is_empty() {
                return Err(not(format!(
                    "part name `{}` is not a plain file name",
                    shown(&r.file)
                )));
            }
            parts.insert(r.file.as_str());
        }
        // Pieces name listed parts only (never a path of their own), and cover their blob
        // from its first byte to its last, in order.
        for b in &file.blobs {
            let mut at = 0u64;
            for p in &b.pieces {
                if !parts.contains(p.part.as_str()) {
                    return Err(not(format!(
                        "blob {} lies in `{}`, which is not one of its parts",
                        b.digest,
                        shown(&p.part)
                    )));
                }
                if p.start != at {
                    return Err(not(format!("the pieces of blob {} leave a gap", b.digest)));
                }
                at = at.checked_add(p.size).ok_or_else(|| {
                    not(format!("the pieces of blob {} overflow its size", b.digest))
                })?;
            }
            if at != b.size {
                return Err(not(format!(
                    "the pieces of blob {} hold {at} bytes, not {}",
                    b.digest, b.size
                )));
            }
        }
        let located = file
            .blobs
            .iter()
            .enumerate()
            .map(|(i, b)| (b.digest.clone(), i))
            .collect();
        Ok(Bundle {
            dir: dir.to_path_buf(),
            file,
            located,
        })
    }

    pub fn part_path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn location(&self, digest: &Digest) -> Option<&BlobLocation> {
        self.located.get(digest).map(|&i| &self.file.blobs[i])
    }

    /// Checks every part: there, of its size, of its sha256, and of this bundle. `on_bytes`
    /// is told of each piece hashed. Returns the parts that cannot be used.
    pub fn check_parts(&self, on_bytes: &(dyn Fn(u64) + Sync)) -> Vec<PartProblem> {
        self.file
            .parts
            .iter()
            .filter_map(|r| {
                self.check_part(r, on_bytes)
                    .err()
                    .map(|reason| PartProblem {
                        file: r.file.clone(),
                        path: self.part_path(&r.file),
                        reason,
                    })
            })
            .collect()
    }

    fn check_part(&self, r: &PartRecord, on_bytes: &(dyn Fn(u64) + Sync)) -> Result<(), String> {
        let path = self.part_path(&r.file);
        let f = match regular::open_regular(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("it is missing".into()),
            Err(FileError::NotRegular { what, .. }) => {
                return Err(format!(
                    "it is {what}, not a regular file, and is not read (send it again as a \
                     plain file)"
                ))
            }
            Err(e) => return Err(format!("it cannot be read ({e})")),
        };
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        match read_part_index(&path) {
            Ok(i) if i.bundle != self.file.id => {
                return Err(format!(
                    "it is part {} of another bundle ({}), not of this one",
                    shown(&i.file),
                    shown(&i.bundle)
                ))
            }
            _ => {}
        }
        if len != r.size {
            return Err(format!(
                "it is {len} bytes, bundle.json says {} (cut short or damaged in transfer)",
                r.size
            ));
        }
        // What is read is counted, whatever the size said: a file can grow while it is read.
        let mut h = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut read = 0u64;
        let mut f = f.take(r.size.saturating_add(1));
        loop {
            let n = f.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            read += n as u64;
            if read > r.size {
                return Err(format!(
                    "it holds more than the {} bytes bundle.json says (it changed while it was \
                     read)",
                    r.size
                ));
            }
            h.update(&buf[..n]);
            on_bytes(n as u64);
        }
        let (d, _) = h.finish();
        if d.hex() != r.sha256 {
            return Err(format!(
                "its sha256 is {}, bundle.json says {} (damaged in transfer)",
                d.hex(),
                shown(&r.sha256)
            ));
        }
        Ok(())
    }

    /// A blob of at most `limit` bytes (a manifest), read whole and checked against its
    /// digest.
    pub fn read_small(&self, digest: &Digest, limit: u64) -> io::Result<Vec<u8>> {
        let loc = self.location(digest).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("blob {digest} is not in the bundle"),
            )
        })?;
        if loc.size > limit {
            return Err(io::Error::other(format!(
                "blob {digest} is {} bytes, more than {limit}",
                loc.size
            )));
        }
        let mut out = Vec::new();
        for p in &loc.pieces {
            let mut f = regular::open_regular(&self.part_path(&p.part))?;
            f.seek(SeekFrom::Start(p.offset))?;
            f.take(p.size).read_to_end(&mut out)?;
        }
        if Digest::of(&out) != *digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {digest} in the bundle does not match its digest"),
            ));
        }
        Ok(out)
    }

    /// The blob as a source an upload or a store write reads from, at any offset.
    pub fn source(&self, digest: &Digest) -> Option<PartSource> {
        self.location(digest).map(|loc| PartSource {
            pieces: loc
                .pieces
                .iter()
                .map(|p| (self.part_path(&p.part), p.offset, p.start, p.size))
                .collect(),
        })
    }
}

/// Reads a part's own index (its first entry), checking it is one.
pub fn read_part_index(path: &Path) -> Result<PartIndex, BundleError> {
    let not = |reason: String| BundleError::NotABundle {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = regular::open_regular(path).map_err(io::Error::from)?;
    let mut head = [0u8; 512];
    f.read_exact(&mut head)
        .map_err(|_| not("it is shorter than a tar header".into()))?;
    let h = tar::Header::from_byte_slice(&head);
    let name = h.path().map_err(|e| not(e.to_string()))?;
    if name != Path::new(PART_INDEX) {
        return Err(not(format!(
            "its first entry is `{}`, not {PART_INDEX}",
            name.display()
        )));
    }
    let size = h.size().map_err(|e| not(e.to_string()))?;
    if size > 64 << 20 {
        return Err(not(format!("its index is {size} bytes")));
    }
    let mut bytes = Vec::new();
    (&mut f).take(size).read_to_end(&mut bytes)?;
    let index: PartIndex =
        serde_json::from_slice(&bytes).map_err(|e| not(format!("its index: {e}")))?;
    if index.format != PART_FORMAT {
        return Err(not(format!("its index's format is {}", index.format)));
    }
    debug_assert!(index.entries.iter().all(|e| e.offset >= 2 * BLOCK));
    Ok(index)
}

/// A blob in a bundle: the byte ranges of part files that hold it, in order.
#[derive(Debug, Clone)]
pub struct PartSource {
    /// Part path, offset in it, start in the blob, length.
    pieces: Vec<(PathBuf, u64, u64, u64)>,
}

type Reader = Pin<Box<dyn AsyncRead + Send>>;

impl PartSource {
    async fn reader(&self, offset: u64) -> io::Result<Reader> {
        let mut out: Reader = Box::pin(tokio::io::empty());
        for (path, at, start, size) in &self.pieces {
            let end = start + size;
            if end <= offset {
                continue;
            }
            let skip = offset.saturating_sub(*start);
            // Opened without blocking (a FIFO is refused): the part was checked, but it is
            // opened again here and may have been swapped since.
            let mut f = tokio::fs::File::from_std(regular::open_regular(path)?.into_file());
            f.seek(SeekFrom::Start(at + skip)).await?;
            out = Box::pin(out.chain(f.take(size - skip)));
        }
        Ok(out)
    }
}

impl BlobSource for PartSource {
    type Reader = Reader;
    async fn open(&self, offset: u64) -> io::Result<Reader> {
        self.reader(offset).await
    }
}

#[cfg(test)]
// Tests stop at the first failed step, with its message.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::bundle::PieceLocation;
    use crate::plan::Plan;

    fn bundle_with(blobs: Vec<BlobLocation>) -> BundleFile {
        BundleFile {
            format: FORMAT.into(),
            id: "0".repeat(64),
            part_size: None,
            plan: Plan::default(),
            parts: vec![PartRecord {
                file: "part-0001.tar".into(),
                size: 2048,
                sha256: "0".repeat(64),
            }],
            blobs,
        }
    }

    fn open_with(file: &BundleFile) -> Result<Bundle, BundleError> {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(
            dir.path().join(BUNDLE_JSON),
            serde_json::to_vec(file).unwrap(),
        )
        .unwrap();
        Bundle::open(dir.path())
    }

    fn blob(part: &str, pieces: &[(u64, u64)], size: u64) -> BlobLocation {
        BlobLocation {
            digest: Digest::of(b"x"),
            size,
            pieces: pieces
                .iter()
                .map(|&(start, size)| PieceLocation {
                    part: part.into(),
                    offset: 1536,
                    size,
                    start,
                    sha256: "0".repeat(64),
                })
                .collect(),
        }
    }

    #[test]
    fn a_directory_without_bundle_json_is_not_a_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let err = Bundle::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("there is no bundle.json"), "{err}");
        assert!(err.hint().unwrap().contains("bundle.json"));
    }

    #[test]
    fn pieces_must_lie_in_listed_parts_and_cover_their_blob() {
        let ok = bundle_with(vec![blob("part-0001.tar", &[(0, 10), (10, 5)], 15)]);
        open_with(&ok).unwrap();
        for (bad, why) in [
            (
                blob("../../etc/passwd", &[(0, 15)], 15),
                "not one of its parts",
            ),
            (blob("part-0001.tar", &[(0, 10), (11, 4)], 15), "gap"),
            (blob("part-0001.tar", &[(0, 10)], 15), "hold 10 bytes"),
        ] {
            let err = open_with(&bundle_with(vec![bad])).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
        let mut wrong = ok.clone();
        wrong.format = "cudaimg-bundle/v9".into();
        let err = open_with(&wrong).unwrap_err();
        assert!(err.to_string().contains("this cudaimg reads"), "{err}");
    }
}
