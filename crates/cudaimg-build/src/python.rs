//! Which Python a base image already has: its layers are read (as tar streams, gzip or not)
//! for `usr/bin/python3.X` or `usr/local/bin/python3.X`. NVIDIA's images have none
//! (`docs/CUDA.md`); a team's own base may. A later layer's whiteout of the binary
//! (`.wh.python3.X`) takes it away again.

use std::collections::BTreeSet;
use std::io::Read;

use crate::compat::Py;

/// The Pythons an image's layers (in order, bottom first) leave in place.
#[derive(Debug, Default)]
pub struct Finder {
    found: BTreeSet<Py>,
}

/// `usr/bin/python3.11` → 3.11 (also under `usr/local/bin`, with or without `./`).
fn python_of(path: &str) -> Option<(Py, bool)> {
    let path = path.trim_start_matches("./");
    let name = path
        .strip_prefix("usr/bin/")
        .or_else(|| path.strip_prefix("usr/local/bin/"))?;
    let (name, whiteout) = match name.strip_prefix(".wh.") {
        Some(n) => (n, true),
        None => (name, false),
    };
    let version = name.strip_prefix("python")?;
    // `python3.11` only: `python3.11-config`, `python3` and `python3.11m` are not the binary.
    if version.bytes().filter(|b| *b == b'.').count() != 1
        || !version.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return None;
    }
    Py::parse(version).map(|p| (p, whiteout))
}

impl Finder {
    /// Reads one layer; `gzip` says whether it is compressed.
    pub fn layer(&mut self, reader: impl Read, gzip: bool) -> std::io::Result<()> {
        let reader: Box<dyn Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(reader))
        } else {
            Box::new(reader)
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            let entry = entry?;
            let path = entry.path()?;
            if let Some((py, whiteout)) = path.to_str().and_then(python_of) {
                if whiteout {
                    self.found.remove(&py);
                } else {
                    self.found.insert(py);
                }
            }
        }
        Ok(())
    }

    pub fn found(&self) -> Vec<Py> {
        self.found.iter().copied().collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_told_from_their_neighbours() {
        assert_eq!(python_of("./usr/bin/python3.11"), Some((Py(3, 11), false)));
        assert_eq!(
            python_of("usr/local/bin/python3.12"),
            Some((Py(3, 12), false))
        );
        assert_eq!(python_of("usr/bin/.wh.python3.10"), Some((Py(3, 10), true)));
        assert_eq!(python_of("usr/bin/python3"), None);
        assert_eq!(python_of("usr/bin/python3.11-config"), None);
        assert_eq!(python_of("usr/lib/python3.11"), None);
    }

    #[test]
    fn a_layer_is_read_and_a_whiteout_removes() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        tar.append_data(&mut h, "usr/bin/python3.11", &[][..])
            .unwrap();
        let raw = tar.into_inner().unwrap();
        let mut f = Finder::default();
        f.layer(raw.as_slice(), false).unwrap();
        assert_eq!(f.found(), vec![Py(3, 11)]);
        let mut tar = tar::Builder::new(Vec::new());
        tar.append_data(&mut h, "usr/bin/.wh.python3.11", &[][..])
            .unwrap();
        f.layer(tar.into_inner().unwrap().as_slice(), false)
            .unwrap();
        assert!(f.found().is_empty());
    }
}
