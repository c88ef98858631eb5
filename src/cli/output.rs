//! Files a command writes outside the store (`export -o PATH`, and later bundles and
//! inventories), and stdout as an output stream.
//!
//! [`Output::create`] decides once, from what `PATH` is now, how to write it:
//! - `-`: stdout. A reader that goes away (`| head -c 100`) is not an error: the write
//!   fails with [`OutputError::StdoutClosed`], which ends the command quietly with exit 0.
//! - an existing special file (character or block device, FIFO): opened and written
//!   through, never replaced, as a shell redirection does. `/dev/null` stays `/dev/null`.
//! - a directory: refused before anything is written.
//! - a regular file or a new path: written to a new, uniquely named temporary file in the
//!   same directory (`O_CREAT|O_EXCL|O_NOFOLLOW`, so a link planted under that name is never
//!   written through), fsynced, and renamed over the path only by [`Output::finish`] after
//!   the whole content was written. A failure, an early return or a panic removes the
//!   temporary file (on drop); the path keeps its old content or stays absent.
//! - a symbolic link: followed, as `cp` does; what it finally points to is written as
//!   above, and the link itself stays. The temporary file is created beside the final
//!   target, never through a link.
//!
//! Write errors are remembered by the [`Output`] itself, so that a caller whose writer
//! (a tar builder) turned one into its own error still reports the output's path and cause.

// std::fs, not fs-err, on purpose: what an output path is (a device, a FIFO, a link loop)
// is read from the raw OS error (`ELOOP`, `EINVAL`), which fs-err's wrapped errors hide;
// every error this module returns names the path itself.
#![allow(clippy::disallowed_methods)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stdout found its reader gone.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether stdout's reader went away (EPIPE) during this run.
pub(crate) fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Notes a write error on stdout; true when it was a closed pipe.
pub(crate) fn note_stdout_error(e: &io::Error) -> bool {
    let closed = e.kind() == io::ErrorKind::BrokenPipe;
    if closed {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
    closed
}

/// Symbolic links followed from the path given to the file written, as the kernel allows.
const MAX_LINKS: usize = 40;
/// Buffer between the producer and the file: archives are written in tar-record pieces.
const BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("`{}` is a directory; nothing was written", .path.display())]
    IsDirectory { path: PathBuf, suggested: String },
    #[error("`{}` is a socket, which cannot be written as a file; nothing was written", .0.display())]
    IsSocket(PathBuf),
    #[error("cannot write `{}`", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// stdout's reader went away: not a failure (see [`stdout_closed`]).
    #[error("stdout was closed by its reader")]
    StdoutClosed,
}

impl OutputError {
    fn io(path: &Path, source: io::Error) -> Self {
        OutputError::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            OutputError::IsDirectory { .. } | OutputError::IsSocket(_)
        )
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            OutputError::IsDirectory { path, suggested } => Some(format!(
                "name a file inside it, e.g. `-o {}`",
                path.join(suggested).display()
            )),
            OutputError::IsSocket(_) => Some("name a file, a device or a FIFO".into()),
            OutputError::Io { source, .. } => match source.kind() {
                io::ErrorKind::StorageFull => {
                    Some("free some space where the output goes, or write it elsewhere".into())
                }
                io::ErrorKind::PermissionDenied => Some(
                    "choose a path you can write to; a file is replaced by a new one in its \
                     directory, so the directory must be writable too"
                        .into(),
                ),
                io::ErrorKind::NotFound => {
                    Some("the directory the output goes into must exist".into())
                }
                _ => None,
            },
            OutputError::StdoutClosed => None,
        }
    }
}

/// Where the bytes go.
enum Sink {
    Stdout(io::Stdout),
    /// A device or FIFO, written in place.
    Special(File),
    /// A temporary file, renamed over `dest` by [`Output::finish`].
    Replace {
        file: File,
        tmp: PathBuf,
        dest: PathBuf,
        /// Set once the rename happened: nothing to clean up then.
        done: bool,
    },
}

/// An output being written; see the module docs.
pub struct Output {
    sink: io::BufWriter<SinkWriter>,
    /// The path as the user gave it, for messages.
    shown: PathBuf,
}

/// The sink, counting bytes and keeping the first write error.
struct SinkWriter {
    sink: Sink,
    written: u64,
    failed: Option<io::Error>,
}

impl Output {
    /// Opens `path` for writing (`-` is stdout). A directory is refused with a hint that
    /// suggests `suggested` (a file name) inside it.
    pub fn create(path: &Path, suggested: &str) -> Result<Output, OutputError> {
        let sink = if path.as_os_str() == "-" {
            Sink::Stdout(io::stdout())
        } else {
            open(path, suggested)?
        };
        Ok(Output {
            sink: io::BufWriter::with_capacity(
                BUFFER,
                SinkWriter {
                    sink,
                    written: 0,
                    failed: None,
                },
            ),
            shown: path.to_owned(),
        })
    }

    /// Completes the output after the producer returned `produced`: the output's own write
    /// error comes first (a full disk, a closed pipe), then the producer's; only when both
    /// succeeded is a file made durable and renamed into place. On any error a temporary
    /// file is removed.
    pub fn finish<E>(mut self, produced: Result<(), E>) -> Result<u64, FinishError<E>> {
        let flushed = self.sink.flush();
        if let Some(e) = self.failed() {
            return Err(FinishError::Output(e));
        }
        produced.map_err(FinishError::Producer)?;
        if let Err(e) = flushed {
            return Err(FinishError::Output(self.classify(e)));
        }
        let shown = self.shown.clone();
        let writer = self.sink.get_mut();
        let written = writer.written;
        if let Sink::Special(file) = &writer.sink {
            // A block device (a USB stick) holds the archive only once synced; character
            // devices and FIFOs cannot be synced and say so, which is no failure.
            match file.sync_all() {
                Err(e) if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EROFS)) => {
                    return Err(FinishError::Output(OutputError::io(&shown, e)));
                }
                _ => {}
            }
        }
        if let Sink::Replace {
            file,
            tmp,
            dest,
            done,
        } = &mut writer.sink
        {
            let at = |e| FinishError::Output(OutputError::io(&shown, e));
            file.sync_all().map_err(at)?;
            std::fs::rename(&*tmp, &*dest).map_err(at)?;
            *done = true;
            // The rename is durable once the directory is; some filesystems cannot sync a
            // directory, and the file's bytes are already safe, so that is not an error.
            if let Ok(d) = File::open(parent_dir(dest)) {
                let _ = d.sync_all();
            }
        }
        Ok(written)
    }

    /// The remembered write error, as an [`OutputError`].
    fn failed(&mut self) -> Option<OutputError> {
        let e = self.sink.get_mut().failed.take()?;
        Some(self.classify(e))
    }

    fn classify(&self, e: io::Error) -> OutputError {
        match &self.sink.get_ref().sink {
            Sink::Stdout(_) if note_stdout_error(&e) => OutputError::StdoutClosed,
            Sink::Stdout(_) => OutputError::io(Path::new("stdout"), e),
            _ => OutputError::io(&self.shown, e),
        }
    }
}

/// Why [`Output::finish`] failed: the output, or what produced its content.
#[derive(Debug)]
pub enum FinishError<E> {
    Output(OutputError),
    Producer(E),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sink.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            // The producer may try again after an error; the output is already lost.
            return Err(io::Error::new(e.kind(), "an earlier write failed"));
        }
        let res = match &mut self.sink {
            Sink::Stdout(out) => out.write(buf),
            Sink::Special(file) | Sink::Replace { file, .. } => file.write(buf),
        };
        match res {
            Ok(n) => {
                self.written += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(copy)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let res = match &mut self.sink {
            Sink::Stdout(out) => out.flush(),
            Sink::Special(file) | Sink::Replace { file, .. } => file.flush(),
        };
        if let Err(e) = &res {
            if self.failed.is_none() {
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
            }
        }
        res
    }
}

impl Drop for SinkWriter {
    fn drop(&mut self) {
        if let Sink::Replace {
            tmp, done: false, ..
        } = &self.sink
        {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Decides how to write `path` (not `-`).
fn open(path: &Path, suggested: &str) -> Result<Sink, OutputError> {
    let dest = follow_links(path).map_err(|e| OutputError::io(path, e))?;
    let existing = match std::fs::symlink_metadata(&dest) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(OutputError::io(path, e)),
    };
    if let Some(m) = &existing {
        let t = m.file_type();
        if t.is_dir() {
            return Err(OutputError::IsDirectory {
                path: path.to_owned(),
                suggested: suggested.to_owned(),
            });
        }
        if t.is_socket() {
            return Err(OutputError::IsSocket(path.to_owned()));
        }
        if t.is_char_device() || t.is_block_device() || t.is_fifo() {
            return open_special(path, &dest, m);
        }
    }
    // A regular file, or nothing yet (a symlink cannot be left after `follow_links`).
    create_temp(path, &dest, existing.as_ref())
}

/// Writes a device or FIFO in place. Opening a FIFO waits for a reader, as `>` does.
fn open_special(shown: &Path, dest: &Path, seen: &std::fs::Metadata) -> Result<Sink, OutputError> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(|e| OutputError::io(shown, e))?;
    // What was opened must be what was looked at: not a file swapped in meanwhile, which
    // would be written in place instead of replaced whole.
    let now = file.metadata().map_err(|e| OutputError::io(shown, e))?;
    if now.dev() != seen.dev() || now.ino() != seen.ino() {
        return Err(OutputError::io(
            shown,
            io::Error::other("it was replaced while being opened"),
        ));
    }
    Ok(Sink::Special(file))
}

/// A new temporary file beside `dest`, never opened through a link.
fn create_temp(
    shown: &Path,
    dest: &Path,
    existing: Option<&std::fs::Metadata>,
) -> Result<Sink, OutputError> {
    let dir = parent_dir(dest);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| OutputError::io(shown, io::Error::other("the path does not name a file")))?;
    let mut attempts = 0;
    loop {
        let tmp = dir.join(format!(
            ".{name}.{}-{:08x}.cudaimg-partial",
            std::process::id(),
            fastrand::u32(..)
        ));
        // create_new is O_CREAT|O_EXCL: it fails on any existing name, a link included.
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp);
        match opened {
            Ok(file) => {
                let sink = Sink::Replace {
                    file,
                    tmp,
                    dest: dest.to_owned(),
                    done: false,
                };
                // A replaced file keeps its permission bits (not set-id ones), as `cp` would.
                if let (Some(m), Sink::Replace { file, .. }) = (existing, &sink) {
                    let mode = m.permissions().mode() & 0o777;
                    file.set_permissions(std::fs::Permissions::from_mode(mode))
                        .map_err(|e| OutputError::io(shown, e))?;
                }
                return Ok(sink);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 16 => attempts += 1,
            Err(e) => return Err(OutputError::io(shown, e)),
        }
    }
}

/// The path that following `path`'s symbolic links leads to (the last component only:
/// directories on the way are the user's to choose). A dangling link leads to a new file.
fn follow_links(path: &Path) -> io::Result<PathBuf> {
    let mut p = path.to_owned();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)?;
                // A relative target is relative to the link's directory; joining an
                // absolute one replaces the base.
                p = parent_dir(&p).join(target);
            }
            _ => return Ok(p),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ELOOP))
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_failed_producer_leaves_the_old_file_and_no_temp() {
        let d = dir();
        let path = d.path().join("out.tar");
        std::fs::write(&path, b"old").expect("write");
        let mut out = Output::create(&path, "x.tar").expect("create");
        out.write_all(&vec![7u8; 3 << 20]).expect("write");
        let res = out.finish(Err::<(), _>("corrupt blob"));
        assert!(matches!(res, Err(FinishError::Producer("corrupt blob"))));
        assert_eq!(std::fs::read(&path).expect("read"), b"old");
        assert_eq!(entries(d.path()), ["out.tar"]);
    }

    #[test]
    fn a_dropped_output_leaves_no_temp_and_a_finished_one_replaces_the_file() {
        let d = dir();
        let path = d.path().join("out.tar");
        let mut out = Output::create(&path, "x.tar").expect("create");
        out.write_all(b"half").expect("write");
        drop(out);
        assert!(entries(d.path()).is_empty());

        std::fs::write(&path, b"old").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let mut out = Output::create(&path, "x.tar").expect("create");
        out.write_all(b"new content").expect("write");
        assert_eq!(out.finish(Ok::<(), ()>(())).ok(), Some(11));
        assert_eq!(std::fs::read(&path).expect("read"), b"new content");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(entries(d.path()), ["out.tar"]);
    }

    #[test]
    fn a_link_is_followed_and_stays_a_link() {
        let d = dir();
        let target = d.path().join("real.tar");
        std::fs::write(&target, b"old").expect("write");
        let link = d.path().join("link.tar");
        std::os::unix::fs::symlink("real.tar", &link).expect("symlink");
        let mut out = Output::create(&link, "x.tar").expect("create");
        out.write_all(b"new").expect("write");
        out.finish(Ok::<(), ()>(())).expect("finish");
        assert!(std::fs::symlink_metadata(&link)
            .expect("lstat")
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).expect("read"), b"new");
        assert_eq!(entries(d.path()), ["link.tar", "real.tar"]);
    }

    #[test]
    fn a_directory_is_refused_with_a_file_name_inside_it() {
        let d = dir();
        let Err(e) = Output::create(d.path(), "cuda.tar") else {
            panic!("a directory was accepted");
        };
        assert!(e.is_usage());
        let hint = e.hint().expect("hint");
        assert!(
            hint.contains(&format!("{}/cuda.tar", d.path().display())),
            "{hint}"
        );
        assert!(entries(d.path()).is_empty());
    }

    #[test]
    fn a_link_loop_is_an_error_not_a_hang() {
        let d = dir();
        let a = d.path().join("a");
        std::os::unix::fs::symlink("b", &a).expect("symlink");
        std::os::unix::fs::symlink("a", d.path().join("b")).expect("symlink");
        let Err(OutputError::Io { source, .. }) = Output::create(&a, "x") else {
            panic!("a link loop was accepted");
        };
        assert_eq!(source.raw_os_error(), Some(libc::ELOOP));
    }
}
