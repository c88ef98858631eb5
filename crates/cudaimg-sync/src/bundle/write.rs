//! Writing a bundle: the plan's blobs, read verified out of the store, into tar parts of
//! at most `--part-size` bytes, then `bundle.json` (module docs of [`crate::bundle`]).
//!
//! Every part is laid out before a byte is written (which blob or piece goes where, at
//! which offset), so each part's index can be its first entry. Blobs are read through
//! [`Store::open_blob`], which fails the read that would hand out the last byte of a blob
//! that no longer matches its digest: a corrupt blob never lands whole in a part. A part is
//! written under a temporary name (in the bundle directory, or `--tmpdir`) and renamed
//! into place when complete; `bundle.json` comes last, so a bundle without it is known
//! unfinished. Memory is one 1 MiB buffer, whatever the blobs' sizes.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{
    entry_path, padded, part_name, BlobLocation, BundleError, BundleFile, PartEntry, PartIndex,
    PartRecord, PieceLocation, BLOCK, BUNDLE_JSON, FORMAT, MIN_PART_SIZE, PART_FORMAT, PART_INDEX,
};
use crate::plan::Plan;
use cudaimg_oci::digest::{Digest, Hasher};
use cudaimg_oci::progress::Reporter;
use cudaimg_store::{Store, StoreError, VerifiedReader};

/// Room the part index takes: fixed by its number of entries, so offsets are known before
/// it is written. An entry serializes to under 400 bytes (paths of 83, two hashes of 64,
/// four numbers of at most 20 digits).
const INDEX_BASE: u64 = 1024;
const INDEX_PER_ENTRY: u64 = 512;
const BUF: usize = 1 << 20;

/// How a bundle is written.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// The largest part file, in bytes; `None`: one part.
    pub part_size: Option<u64>,
    /// Where parts are written before they are complete; `None`: the bundle directory.
    pub tmpdir: Option<PathBuf>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct WriteReport {
    pub dir: PathBuf,
    pub parts: Vec<PartRecord>,
    /// Bytes of the part files and `bundle.json` together.
    pub bytes_written: u64,
    /// Bytes of the blobs carried.
    pub blob_bytes: u64,
}

/// One blob, or piece of a blob, placed in a part.
#[derive(Debug, Clone)]
struct Slot {
    blob: usize,
    start: u64,
    size: u64,
    piece: Option<usize>,
}

fn index_len(entries: usize) -> u64 {
    padded(INDEX_BASE + entries as u64 * INDEX_PER_ENTRY)
}

/// A part's size: index header and index, `data` (headers and padded contents of its
/// entries), and the two zero blocks that end a tar.
fn part_bytes(entries: usize, data: u64) -> u64 {
    BLOCK
        .saturating_add(index_len(entries))
        .saturating_add(data)
        .saturating_add(2 * BLOCK)
}

/// Which blob or piece goes into which part, in the plan's (digest) order. A blob that fits
/// an empty part is never cut; one that does not fills the current part's room, then
/// whole parts, and ends where the next blobs continue.
fn layout(plan: &Plan, part_size: Option<u64>) -> Vec<Vec<Slot>> {
    let cap = part_size.unwrap_or(u64::MAX);
    let mut parts: Vec<Vec<Slot>> = vec![Vec::new()];
    let mut used = 0u64;
    for (i, b) in plan.blobs.iter().enumerate() {
        if part_bytes(1, BLOCK + padded(b.size)) <= cap {
            let current = parts.last().map_or(0, Vec::len);
            if part_bytes(current + 1, used + BLOCK + padded(b.size)) > cap {
                parts.push(Vec::new());
                used = 0;
            }
            used += BLOCK + padded(b.size);
            if let Some(p) = parts.last_mut() {
                p.push(Slot {
                    blob: i,
                    start: 0,
                    size: b.size,
                    piece: None,
                });
            }
            continue;
        }
        let (mut start, mut piece) = (0u64, 0usize);
        while start < b.size {
            let current = parts.last().map_or(0, Vec::len);
            let room = cap.saturating_sub(part_bytes(current + 1, used + BLOCK)) / BLOCK * BLOCK;
            if room == 0 {
                parts.push(Vec::new());
                used = 0;
                continue;
            }
            let size = room.min(b.size - start);
            used += BLOCK + padded(size);
            if let Some(p) = parts.last_mut() {
                p.push(Slot {
                    blob: i,
                    start,
                    size,
                    piece: Some(piece),
                });
            }
            start += size;
            piece += 1;
        }
    }
    parts
}

/// A ustar header with nothing of the host in it.
fn header(path: &str, size: u64) -> io::Result<[u8; 512]> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(*h.as_bytes())
}

/// Hashes and counts what passes to the file.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The blob being read, kept open across parts for the pieces of a cut blob.
struct Open {
    digest: Digest,
    reader: VerifiedReader,
    pos: u64,
}

/// A read error of a verifying reader as the store error it stands for.
fn read_error(r: &VerifiedReader, e: io::Error) -> BundleError {
    match r.mismatch() {
        Some(m) => BundleError::Store(StoreError::BlobCorrupt {
            digest: m.digest.clone(),
            image: None,
            reason: m.reason.clone(),
        }),
        None => BundleError::Io(e),
    }
}

/// The sha256 of each piece of the cut blobs (a part's index, written first, lists them).
/// One verified read of each cut blob.
fn piece_hashes(
    store: &Store,
    plan: &Plan,
    parts: &[Vec<Slot>],
) -> Result<BTreeMap<(usize, usize), String>, BundleError> {
    let mut by_blob: BTreeMap<usize, Vec<(usize, u64)>> = BTreeMap::new();
    for s in parts.iter().flatten() {
        if let Some(n) = s.piece {
            by_blob.entry(s.blob).or_default().push((n, s.size));
        }
    }
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; BUF];
    for (blob, pieces) in by_blob {
        let b = &plan.blobs[blob];
        let mut r = store.open_blob(&b.digest, b.size)?;
        for (n, size) in pieces {
            let mut h = Hasher::new();
            let mut left = size;
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(BUF).min(BUF);
                let got = r.read(&mut buf[..want]).map_err(|e| read_error(&r, e))?;
                if got == 0 {
                    return Err(BundleError::Changed {
                        digest: b.digest.clone(),
                        reason: "it ended early".into(),
                    });
                }
                h.update(&buf[..got]);
                left -= got as u64;
            }
            let (d, _) = h.finish();
            out.insert((blob, n), d.hex().to_owned());
        }
        // Reads the (empty) rest, which fails if the whole blob is not what it says.
        r.check()?;
    }
    Ok(out)
}

/// Moves a finished file into the bundle directory: a rename, or a copy when `--tmpdir`
/// is on another file system.
fn place(tmp: &Path, dest: &Path) -> Result<(), BundleError> {
    if fs_err::rename(tmp, dest).is_err() {
        let partial = dest.with_extension("tar.partial");
        fs_err::copy(tmp, &partial)?;
        fs_err::rename(&partial, dest)?;
        fs_err::remove_file(tmp)?;
    }
    Ok(())
}

/// Writes a file under a temporary name, then renames it into place.
fn write_file(
    tmpdir: &Path,
    dest: &Path,
    fill: impl FnOnce(&mut HashingWriter<io::BufWriter<fs_err::File>>) -> Result<(), BundleError>,
) -> Result<(u64, String), BundleError> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tmpdir.join(format!(".{name}.partial"));
    let file = fs_err::File::create(&tmp)?;
    let mut w = HashingWriter {
        inner: io::BufWriter::with_capacity(BUF, file),
        hasher: Hasher::new(),
    };
    let done = fill(&mut w).and_then(|()| {
        w.flush()?;
        w.inner.get_ref().sync_all()?;
        Ok(())
    });
    if let Err(e) = done {
        drop(w);
        let _ = fs_err::remove_file(&tmp);
        return Err(e);
    }
    let (digest, len) = w.hasher.finish();
    drop(w.inner);
    place(&tmp, dest)?;
    Ok((len, digest.hex().to_owned()))
}

/// Writes the bundle of `plan` into `dir` (created if needed), reading blobs from `store`.
// Parts in order, each laid out, indexed, filled and placed: one loop over shared state
// (the blob reader kept open across parts, the locations being gathered).
#[allow(clippy::too_many_lines)]
pub fn write(
    store: &Store,
    plan: &Plan,
    dir: &Path,
    options: &WriteOptions,
    reporter: &dyn Reporter,
) -> Result<WriteReport, BundleError> {
    if let Some(size) = options.part_size.filter(|s| *s < MIN_PART_SIZE) {
        return Err(BundleError::PartSizeTooSmall { size });
    }
    fs_err::create_dir_all(dir)?;
    // A bundle written here before: its bundle.json goes first, so that a write cut short
    // is a directory without one (unfinished), never an old index over new parts.
    match fs_err::remove_file(dir.join(BUNDLE_JSON)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let tmpdir = options.tmpdir.clone().unwrap_or_else(|| dir.to_path_buf());
    fs_err::create_dir_all(&tmpdir)?;
    let id = hex_sha256(&serde_json::to_vec(plan).map_err(io::Error::other)?);
    let parts = layout(plan, options.part_size);
    let hashes = piece_hashes(store, plan, &parts)?;

    let mut records = Vec::new();
    let mut locations: Vec<BlobLocation> = plan
        .blobs
        .iter()
        .map(|b| BlobLocation {
            digest: b.digest.clone(),
            size: b.size,
            pieces: Vec::new(),
        })
        .collect();
    let mut open: Option<Open> = None;
    let mut buf = vec![0u8; BUF];
    let mut bytes_written = 0u64;
    for (n, slots) in parts.iter().enumerate() {
        let file = part_name(n + 1);
        let ilen = index_len(slots.len());
        let mut pos = BLOCK + ilen;
        let mut entries = Vec::new();
        for s in slots {
            let b = &plan.blobs[s.blob];
            let sha256 = match s.piece {
                None => b.digest.hex().to_owned(),
                Some(p) => hashes.get(&(s.blob, p)).cloned().unwrap_or_default(),
            };
            entries.push(PartEntry {
                path: entry_path(&b.digest, s.piece),
                digest: b.digest.clone(),
                blob_size: b.size,
                start: s.start,
                offset: pos + BLOCK,
                size: s.size,
                sha256,
            });
            pos += BLOCK + padded(s.size);
        }
        let index = PartIndex {
            format: PART_FORMAT.into(),
            bundle: id.clone(),
            file: file.clone(),
            number: n + 1,
            of: parts.len(),
            entries,
        };
        let mut index_bytes = serde_json::to_vec(&index).map_err(io::Error::other)?;
        let Ok(fill) = usize::try_from(ilen) else {
            return Err(io::Error::other("part index too large").into());
        };
        if index_bytes.len() > fill {
            return Err(io::Error::other(format!(
                "the index of {file} is {} bytes, more than the {fill} laid out for it",
                index_bytes.len()
            ))
            .into());
        }
        // JSON allows trailing whitespace; the padding keeps the offsets laid out above.
        index_bytes.resize(fill, b' ');
        if let Some(last) = index_bytes.last_mut() {
            *last = b'\n';
        }

        let (size, sha256) = write_file(&tmpdir, &dir.join(&file), |w| {
            w.write_all(&header(PART_INDEX, ilen)?)?;
            w.write_all(&index_bytes)?;
            for (s, e) in slots.iter().zip(&index.entries) {
                let b = &plan.blobs[s.blob];
                w.write_all(&header(&e.path, s.size)?)?;
                if open
                    .as_ref()
                    .is_none_or(|o| o.digest != b.digest || o.pos != s.start)
                {
                    let mut reader = store.open_blob(&b.digest, b.size)?;
                    // Only a cut blob's later piece starts past 0, and its earlier pieces
                    // were just read through this reader; this is a fallback.
                    io::copy(&mut (&mut reader).take(s.start), &mut io::sink())
                        .map_err(|e| read_error(&reader, e))?;
                    open = Some(Open {
                        digest: b.digest.clone(),
                        reader,
                        pos: s.start,
                    });
                }
                let Some(o) = open.as_mut() else {
                    continue;
                };
                if s.start == 0 {
                    reporter.blob_started(&b.digest, b.size, 0, "store");
                }
                let mut h = Hasher::new();
                let mut left = s.size;
                while left > 0 {
                    let want = usize::try_from(left).unwrap_or(BUF).min(BUF);
                    let got = o
                        .reader
                        .read(&mut buf[..want])
                        .map_err(|e| read_error(&o.reader, e))?;
                    if got == 0 {
                        return Err(BundleError::Changed {
                            digest: b.digest.clone(),
                            reason: "it ended early".into(),
                        });
                    }
                    h.update(&buf[..got]);
                    w.write_all(&buf[..got])?;
                    reporter.blob_progress(&b.digest, got as u64);
                    left -= got as u64;
                }
                o.pos += s.size;
                if s.piece.is_some() && h.finish().0.hex() != e.sha256 {
                    return Err(BundleError::Changed {
                        digest: b.digest.clone(),
                        reason: format!("piece {} hashed differently on the second read", e.path),
                    });
                }
                if o.pos == b.size {
                    reporter.blob_finished(&b.digest);
                }
                let pad = padded(s.size) - s.size;
                w.write_all(&vec![0u8; usize::try_from(pad).unwrap_or(0)])?;
            }
            w.write_all(&[0u8; 1024])?;
            Ok(())
        })?;
        debug_assert!(options.part_size.is_none_or(|cap| size <= cap));
        for (s, e) in slots.iter().zip(&index.entries) {
            locations[s.blob].pieces.push(PieceLocation {
                part: file.clone(),
                offset: e.offset,
                size: e.size,
                start: e.start,
                sha256: e.sha256.clone(),
            });
        }
        bytes_written += size;
        records.push(PartRecord { file, size, sha256 });
    }

    let bundle = BundleFile {
        format: FORMAT.into(),
        id,
        part_size: options.part_size,
        plan: plan.clone(),
        parts: records.clone(),
        blobs: locations,
    };
    let mut json = serde_json::to_vec_pretty(&bundle).map_err(io::Error::other)?;
    json.push(b'\n');
    let (size, _) = write_file(&tmpdir, &dir.join(BUNDLE_JSON), |w| {
        w.write_all(&json)?;
        Ok(())
    })?;
    remove_stale_parts(dir, &records)?;
    Ok(WriteReport {
        dir: dir.to_path_buf(),
        parts: records,
        bytes_written: bytes_written + size,
        blob_bytes: plan.carried_bytes(),
    })
}

/// Removes `part-NNNN.tar` files an earlier, larger bundle left in `dir`: a directory holds
/// one bundle, and a stray part would be carried across for nothing.
fn remove_stale_parts(dir: &Path, records: &[PartRecord]) -> Result<(), BundleError> {
    for entry in fs_err::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let ours = name
            .strip_prefix("part-")
            .and_then(|n| n.strip_suffix(".tar"))
            .is_some_and(|n| n.len() >= 4 && n.bytes().all(|b| b.is_ascii_digit()));
        if ours && !records.iter().any(|r| r.file == name) {
            fs_err::remove_file(dir.join(&name))?;
        }
    }
    Ok(())
}

pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    Digest::of(bytes).hex().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{BlobKind, PlannedBlob};

    fn plan_of(sizes: &[u64]) -> Plan {
        Plan {
            blobs: sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| PlannedBlob {
                    digest: Digest::of(&i.to_le_bytes()),
                    size,
                    kind: BlobKind::Layer,
                    media_type: "x".into(),
                })
                .collect(),
            ..Plan::default()
        }
    }

    fn part_size_of(slots: &[Slot]) -> u64 {
        part_bytes(
            slots.len(),
            slots.iter().map(|s| BLOCK + padded(s.size)).sum(),
        )
    }

    #[test]
    fn no_part_size_is_one_part() {
        let parts = layout(&plan_of(&[10, 1 << 30, 0]), None);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].len(), 3);
        assert!(parts[0].iter().all(|s| s.piece.is_none()));
    }

    #[test]
    fn parts_never_exceed_the_size_and_only_large_blobs_are_cut() {
        let cap = 100_000;
        let sizes = [40_000, 40_000, 30_000, 250_000, 5, 70_000];
        let plan = plan_of(&sizes);
        let parts = layout(&plan, Some(cap));
        for p in &parts {
            assert!(part_size_of(p) <= cap, "{}", part_size_of(p));
        }
        // Every byte of every blob is placed once, in order.
        for (i, &size) in sizes.iter().enumerate() {
            let slots: Vec<&Slot> = parts.iter().flatten().filter(|s| s.blob == i).collect();
            let mut at = 0;
            for s in &slots {
                assert_eq!(s.start, at);
                at += s.size;
            }
            assert_eq!(at, size);
            let cut = slots.len() > 1;
            assert_eq!(cut, i == 3, "blob {i}: {slots:?}");
        }
    }
}
