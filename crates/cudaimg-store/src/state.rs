//! Small state files the tool keeps beside the images, under `state/` (today one: what the
//! runs learned about each mirror's health, so a silent mirror is not waited on again by the
//! next run). They are hints, never image data: a missing, unreadable or oversized one reads
//! as absent, and a write that fails costs the next run a little time, nothing else.
//!
//! They follow the store's confinement rules ([`crate::confine`]): `state` is opened without
//! following links, the file is read `O_NOFOLLOW` and must be a regular file, and a write goes
//! to a new temporary file (`O_EXCL`) that is fsynced and renamed over the name, so a reader
//! sees the old file or the new one, never half of either, and a planted link is replaced,
//! never written through.

use std::io::Read;

use super::confine::StoreDir;
use super::{Result, Store, StoreError};

/// The state directory below the store root.
const STATE_DIR: &str = "state";
/// A state file is a few KB; anything larger is not ours and is not read.
const MAX_STATE: u64 = 1 << 20;

/// Refuses a name that is not one plain file name (no `/`, no `..`, no leading dot).
fn checked(name: &str) -> Result<&str> {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with('.');
    if plain {
        Ok(name)
    } else {
        Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{name}` is not a state file name"),
        )))
    }
}

impl Store {
    /// The content of state file `name`, or `None` when there is none (or it is larger than
    /// a state file can be). A link or special file in its place is an error.
    pub fn read_state(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let name = checked(name)?;
        let dir = match StoreDir::open(self.root(), &[STATE_DIR], false) {
            Ok(d) => d,
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut f = match dir.open_read(name) {
            Ok(f) => f,
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        Read::by_ref(&mut f)
            .take(MAX_STATE + 1)
            .read_to_end(&mut buf)?;
        Ok((buf.len() as u64 <= MAX_STATE).then_some(buf))
    }

    /// Replaces state file `name` with `bytes`, atomically (temporary file, fsync, rename).
    /// Only in an existing store: the caller opened it, this never creates one.
    pub fn write_state(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let name = checked(name)?;
        let dir = StoreDir::open(self.root(), &[STATE_DIR], true)?;
        super::replace_file(&dir, name, name, bytes)
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn state_is_replaced_whole_and_never_through_a_link() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&tmp.path().join("store")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.read_state("health.json").ok(), Some(None));
        store
            .write_state("health.json", b"one")
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .write_state("health.json", b"two")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            store.read_state("health.json").ok().flatten().as_deref(),
            Some(&b"two"[..])
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("store/state"))
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, ["health.json"]);

        // A planted link is refused on read and replaced (not followed) on write.
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap_or_else(|e| panic!("{e}"));
        let link = tmp.path().join("store/state/other.json");
        std::os::unix::fs::symlink(&outside, &link).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            store.read_state("other.json"),
            Err(StoreError::Unsafe { .. })
        ));
        store
            .write_state("other.json", b"new")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&outside).unwrap_or_default(), b"keep");
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap_or_else(|e| panic!("{e}"))
            .file_type()
            .is_symlink());

        // `state` itself as a link is refused; names that leave the directory too.
        std::fs::remove_dir_all(tmp.path().join("store/state")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("store/state"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(store.write_state("health.json", b"x").is_err());
        assert!(store.read_state("health.json").is_err());
        assert!(store.read_state("../index.json").is_err());
        assert!(!tmp.path().join("health.json").exists());
    }
}
