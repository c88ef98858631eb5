//! The one way cudaimg opens a file that a user or a peer names (`mirrors.toml`, a lockfile,
//! a sync spec, `--have`, `--tls-cert`/`--tls-key`, a bundle's `bundle.json` and parts):
//! as a regular file, checked before a byte is read, and read through a cap on the bytes
//! actually read.
//!
//! Why each rule:
//! - The file is opened with `O_NONBLOCK`: opening a FIFO for reading otherwise waits for a
//!   writer, forever if none comes. For a regular file the flag changes nothing.
//! - What it is comes from `fstat` of the opened descriptor, not from the path (which may be
//!   swapped between a check and the open): a FIFO, a device (`/dev/zero`, `/dev/urandom`), a
//!   socket or a directory is refused before any read, with the path and what to give
//!   instead. A symlink is followed: one to a regular file is fine.
//! - The cap counts the bytes read, not the size `fstat` reports: files in `/proc` and `/sys`
//!   are regular files that report size 0 and still hold bytes, and a file can grow while it
//!   is read.

use fs_err::os::unix::fs::OpenOptionsExt;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Why a named file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The open or a read failed; fs-err's message names the path.
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(
        "`{}` is {what}, not a regular file: cudaimg reads only regular files here (a FIFO, \
         a device or a directory can block or never end); give the path of a regular file, \
         e.g. a copy of its content",
        path.display()
    )]
    NotRegular { path: PathBuf, what: &'static str },
    #[error(
        "`{}` holds more than {cap} bytes, more than it can be; give the right file",
        path.display()
    )]
    TooLarge { path: PathBuf, cap: u64 },
}

impl FileError {
    /// The I/O error kind, for callers that treat a missing file as "none given".
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            FileError::Io(e) => e.kind(),
            FileError::NotRegular { .. } => io::ErrorKind::InvalidInput,
            FileError::TooLarge { .. } => io::ErrorKind::InvalidData,
        }
    }
}

impl From<FileError> for io::Error {
    fn from(e: FileError) -> io::Error {
        match e {
            FileError::Io(e) => e,
            other => io::Error::new(other.kind(), other),
        }
    }
}

/// What a non-regular file is, in words.
fn what(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a named pipe (FIFO)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

/// Opens `path` for reading if it is a regular file (symlinks followed), without blocking
/// on a FIFO. The descriptor keeps `O_NONBLOCK`, which regular files ignore.
pub fn open_regular(path: &Path) -> Result<fs_err::File, FileError> {
    let file = fs_err::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let t = file.metadata()?.file_type();
    if !t.is_file() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
            what: what(t),
        });
    }
    Ok(file)
}

/// Reads all of `reader` (opened from `path`), refusing more than `cap` bytes.
pub fn read_all_capped(reader: impl Read, path: &Path, cap: u64) -> Result<Vec<u8>, FileError> {
    let mut out = Vec::new();
    reader.take(cap.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            cap,
        });
    }
    Ok(out)
}

/// The bytes of the regular file `path`, at most `cap` of them.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, FileError> {
    let file = open_regular(path)?;
    read_all_capped(file, path, cap)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_capped_to_string(path: &Path, cap: u64) -> Result<String, FileError> {
    let bytes = read_capped(path, cap)?;
    String::from_utf8(bytes).map_err(|e| {
        FileError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "`{}` is not UTF-8 text (at byte {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ),
        ))
    })
}

/// The cap for small text files a user writes (configuration, specs, lockfiles, PEM files):
/// far above any real one, far below what would exhaust memory.
pub const MAX_TEXT_FILE: u64 = 64 << 20;

/// Replaces the file at `path` with `bytes`, as a user's configuration is rewritten: the
/// bytes go to a sibling temporary file created with `mode` (masked by the umask, as any
/// create is), synced, then renamed over, so a reader sees the old file or the new, never
/// half. A symlink is written where it points (dotfiles kept in a repository, as docker
/// follows a linked `config.json`): the rename would otherwise replace the link with a file.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write as _;
    let resolved;
    let path = if fs_err::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        resolved = fs_err::canonicalize(path)?;
        resolved.as_path()
    } else {
        path
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs_err::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.cudaimg-{}", std::process::id()));
    let written = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs_err::rename(&tmp, path));
    if written.is_err() {
        let _ = fs_err::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn devices_directories_and_fifos_are_refused_before_any_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let fifo = dir.join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let start = Instant::now();
        for (path, word) in [
            (Path::new("/dev/zero"), "character device"),
            (dir.as_path(), "directory"),
            (fifo.as_path(), "FIFO"),
        ] {
            let err = read_capped(path, 10).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(word) && msg.contains(&*path.to_string_lossy()),
                "{msg}"
            );
            assert!(msg.contains("give the path of a regular file"), "{msg}");
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_cap_counts_bytes_read_not_the_reported_size() {
        // /proc files report size 0 and hold bytes.
        let path = Path::new("/proc/self/status");
        assert_eq!(fs_err::metadata(path).unwrap().len(), 0);
        let err = read_capped(path, 8).unwrap_err();
        assert!(matches!(err, FileError::TooLarge { cap: 8, .. }), "{err}");
        assert!(!read_capped(path, 1 << 20).unwrap().is_empty());
    }
}
