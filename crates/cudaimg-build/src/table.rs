//! The compiled torch table: `data/torch.toml`, each row with its source and the date it was
//! checked. A refresh is a data change. The package index a build uses wins over it (see
//! [`crate::index`]); the table is the offline fallback and the source of the reasons.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::compat::{Py, TorchRelease};

/// The data file, as compiled in.
pub const TORCH_TOML: &str = include_str!("../data/torch.toml");

#[derive(Debug, Deserialize)]
struct File {
    date: String,
    sources: BTreeMap<String, String>,
    torch: Vec<Row>,
}

#[derive(Debug, Deserialize)]
struct Row {
    minor: String,
    variants: Vec<String>,
    python: [String; 2],
    python_experimental: Option<String>,
    source: String,
    checked: String,
}

/// The table, parsed.
#[derive(Debug)]
pub struct Table {
    /// When the table as a whole was last brought up to date.
    pub date: String,
    /// Source key → what it is.
    pub sources: BTreeMap<String, String>,
    pub releases: Vec<TorchRelease>,
}

fn py(s: &str) -> Result<Py, String> {
    Py::parse(s).ok_or_else(|| format!("`{s}` is not a Python version"))
}

fn minor(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s
        .split_once('.')
        .ok_or_else(|| format!("`{s}` is not a torch minor"))?;
    Ok((
        a.parse()
            .map_err(|_| format!("`{s}` is not a torch minor"))?,
        b.parse()
            .map_err(|_| format!("`{s}` is not a torch minor"))?,
    ))
}

/// Parses a table file (the compiled-in one, or a test's).
pub fn parse(text: &str) -> Result<Table, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut releases = Vec::new();
    for r in file.torch {
        let source = file
            .sources
            .get(&r.source)
            .ok_or_else(|| format!("torch {}: unknown source `{}`", r.minor, r.source))?;
        releases.push(TorchRelease {
            minor: minor(&r.minor)?,
            variants: r.variants,
            python: (py(&r.python[0])?, py(&r.python[1])?),
            python_experimental: r.python_experimental.as_deref().map(py).transpose()?,
            source: format!("{source} (checked {})", r.checked),
        });
    }
    Ok(Table {
        date: file.date,
        sources: file.sources,
        releases,
    })
}

/// The compiled-in table.
pub fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        parse(TORCH_TOML)
            .expect("data/torch.toml is compiled in and parsed by the unit test `the_data_parses`")
    })
}

/// The torch rows, oldest first.
pub fn torch() -> &'static [TorchRelease] {
    &table().releases
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_data_parses() {
        let t = super::parse(super::TORCH_TOML).unwrap_or_else(|e| panic!("{e}"));
        assert!(t.releases.len() >= 12);
        assert!(t.releases.windows(2).all(|w| w[0].minor < w[1].minor));
    }
}
