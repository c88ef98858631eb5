//! Confinement: every file the store opens, creates, renames or removes is reached through a
//! handle on one of the store's own directories, and no symbolic link is followed on the way.
//!
//! Anyone who can write into a shared store could otherwise plant a link (`ingest/X.partial`
//! -> `/etc/shadow`, `ingest` -> `/etc`) and aim a root pull at any file. So:
//! - the store root is the user's choice and may be reached through links, but each directory
//!   below it (`blobs`, `blobs/sha256`, `ingest`) is opened component by component with
//!   `O_NOFOLLOW | O_DIRECTORY`; a link or a file in its place is refused
//!   ([`StoreError::Unsafe`]);
//! - files are opened `openat(dir, name, O_NOFOLLOW | O_NONBLOCK)` and checked with `fstat`
//!   to be regular files (a planted FIFO neither blocks nor is read);
//! - temporary files are created `O_EXCL` under unpredictable names, renamed with
//!   `renameat` (which never follows the last component), and removals use `unlinkat`,
//!   which removes a link itself, never its target.
//!
//! A check and the use it guards go through the same directory handle, so swapping a
//! directory for a link between them gains nothing.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::StoreError;

/// A directory of the store, opened without following links, with its path for messages.
#[derive(Debug)]
pub(crate) struct StoreDir {
    fd: OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

/// What kind of thing sits at a name, in words for messages.
pub(crate) fn describe(t: FileType) -> &'static str {
    match t {
        FileType::Symlink => "a symbolic link",
        FileType::Directory => "a directory",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::RegularFile => "a regular file",
        FileType::Unknown => "an unknown kind of file",
    }
}

pub(crate) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

fn io_at(e: impl Into<std::io::Error>, path: &Path) -> StoreError {
    let e: std::io::Error = e.into();
    StoreError::from(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    ))
}

impl StoreDir {
    /// Opens `root/rel[0]/rel[1]/…`, creating missing directories below `root` when
    /// `create` is set. Each component below `root` must be a real directory.
    pub(crate) fn open(root: &Path, rel: &[&str], create: bool) -> Result<StoreDir, StoreError> {
        let mut fd = rfs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => StoreError::Missing(root.to_owned()),
            e => io_at(e, root),
        })?;
        let mut path = root.to_owned();
        for name in rel {
            path.push(name);
            let next = match rfs::openat(&fd, *name, DIR_FLAGS, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(&fd, *name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io_at(e, &path)),
                    }
                    rfs::openat(&fd, *name, DIR_FLAGS, Mode::empty())
                }
                r => r,
            };
            fd = match next {
                Ok(d) => d,
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let found = rfs::statat(&fd, *name, AtFlags::SYMLINK_NOFOLLOW)
                        .map_or("not a directory", |st| describe(file_type(&st)));
                    return Err(StoreError::Unsafe {
                        path,
                        found: found.to_owned(),
                        expected: "a directory",
                    });
                }
                Err(e) => return Err(io_at(e, &path)),
            };
        }
        Ok(StoreDir { fd, path })
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// What is at `name`, without following a link.
    pub(crate) fn stat(&self, name: &str) -> std::io::Result<Stat> {
        Ok(rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)?)
    }

    /// Opens `name` for reading; it must be a regular file.
    pub(crate) fn open_read(&self, name: &str) -> Result<File, StoreError> {
        self.open_file(name, OFlags::RDONLY)
    }

    /// Opens `name` for reading and writing, creating it if it is missing; an existing one
    /// must be a regular file.
    pub(crate) fn open_rw(&self, name: &str) -> Result<File, StoreError> {
        self.open_file(name, OFlags::RDWR | OFlags::CREATE)
    }

    fn open_file(&self, name: &str, flags: OFlags) -> Result<File, StoreError> {
        let path = self.join(name);
        let fd = rfs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| match e {
            Errno::LOOP => StoreError::Unsafe {
                path: path.clone(),
                found: "a symbolic link".into(),
                expected: "a regular file",
            },
            e => io_at(e, &path),
        })?;
        let t = file_type(&rfs::fstat(&fd).map_err(|e| io_at(e, &path))?);
        if t != FileType::RegularFile {
            return Err(StoreError::Unsafe {
                path,
                found: describe(t).into(),
                expected: "a regular file",
            });
        }
        Ok(File::from(fd))
    }

    /// Creates a new file `PREFIX<random>` that no one else can have prepared (`O_EXCL`:
    /// an existing name, a link included, is never opened); returns it and its name.
    pub(crate) fn create_temp(&self, prefix: &str) -> Result<(File, String), StoreError> {
        let mut last = None;
        for _ in 0..16 {
            let name = format!("{prefix}{}-{:016x}", std::process::id(), fastrand::u64(..));
            match rfs::openat(
                &self.fd,
                name.as_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_bits_truncate(0o644),
            ) {
                Ok(fd) => return Ok((File::from(fd), name)),
                Err(Errno::EXIST) => last = Some(Errno::EXIST),
                Err(e) => return Err(io_at(e, &self.join(&name))),
            }
        }
        Err(io_at(
            last.unwrap_or(Errno::EXIST),
            &self.join(&format!("{prefix}*")),
        ))
    }

    /// Renames `name` here to `new` in `to`; a link at either name is moved or replaced
    /// itself, never followed.
    pub(crate) fn rename_to(&self, name: &str, to: &StoreDir, new: &str) -> Result<(), StoreError> {
        rfs::renameat(&self.fd, name, &to.fd, new).map_err(|e| io_at(e, &to.join(new)))
    }

    /// Removes `name` (a link itself, never its target).
    pub(crate) fn remove(&self, name: &str) -> Result<(), StoreError> {
        rfs::unlinkat(&self.fd, name, AtFlags::empty()).map_err(|e| io_at(e, &self.join(name)))
    }

    /// Makes the directory's entries durable.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        rfs::fsync(&self.fd).map_err(|e| io_at(e, &self.path))
    }

    /// The names in the directory, sorted, with what each is (not following links).
    pub(crate) fn entries(&self) -> Result<Vec<(String, Stat)>, StoreError> {
        let dir = rfs::Dir::read_from(&self.fd).map_err(|e| io_at(e, &self.path))?;
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| io_at(e, &self.path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            // Gone meanwhile (a pull committed or gc removed it): not an entry any more.
            let Ok(st) = self.stat(&name) else { continue };
            out.push((name, st));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Whether `file` is the file `st` describes.
pub(crate) fn same_file(file: &File, st: &Stat) -> bool {
    rfs::fstat(file).is_ok_and(|f| f.st_dev == st.st_dev && f.st_ino == st.st_ino)
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn links_are_never_followed_for_files_or_directories() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap_or_else(|e| panic!("{e}"));
        let root = tmp.path().join("store");
        let dir = StoreDir::open(&root.clone(), &[], false);
        assert!(matches!(dir, Err(StoreError::Missing(_))), "{dir:?}");
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("{e}"));
        let dir = StoreDir::open(&root, &[], false).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap_or_else(|e| panic!("{e}"));

        for res in [dir.open_rw("link"), dir.open_read("link")] {
            assert!(
                matches!(&res, Err(StoreError::Unsafe { found, .. }) if found == "a symbolic link"),
                "{res:?}"
            );
        }
        // A directory link is refused, not created through.
        std::os::unix::fs::symlink(tmp.path(), root.join("ingest"))
            .unwrap_or_else(|e| panic!("{e}"));
        let res = StoreDir::open(&root, &["ingest"], true);
        assert!(matches!(res, Err(StoreError::Unsafe { .. })), "{res:?}");

        // Temporary files are new files; removing a link leaves its target.
        let (_, name) = dir
            .create_temp("index.tmp-")
            .unwrap_or_else(|e| panic!("{e}"));
        let (_, other) = dir
            .create_temp("index.tmp-")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(name, other, "temporary names must not repeat");
        dir.remove("link").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&outside).unwrap_or_default(), b"keep");
    }
}
