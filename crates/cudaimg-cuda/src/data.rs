//! The compiled-in CUDA tables, `data/cuda.toml`: minimum drivers, the newest patch of each
//! minor, OS families newer than the tag list, the GPU architectures of each toolkit; each
//! group of rows with its source and the date it was checked. A refresh is a data change.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

/// The data file, as compiled in.
pub const CUDA_TOML: &str = include_str!("../data/cuda.toml");

#[derive(Debug, Deserialize)]
struct File {
    date: String,
    sources: BTreeMap<String, String>,
    driver: Vec<Group<(String, String)>>,
    latest: Vec<Group<(String, u32)>>,
    os: Vec<Os>,
    arch: Vec<Arch>,
}

#[derive(Debug, Deserialize)]
struct Arch {
    from: String,
    min: String,
    max: String,
    source: String,
    checked: String,
}

#[derive(Debug, Deserialize)]
struct Group<T> {
    rows: Vec<T>,
    source: String,
    checked: String,
}

#[derive(Debug, Deserialize)]
struct Os {
    name: String,
    first: String,
    source: String,
    checked: String,
}

/// One fact with where it comes from.
#[derive(Debug, Clone)]
pub struct Row<T> {
    pub key: (u32, u32),
    pub value: T,
    /// The source's text, and the date it was checked.
    pub source: String,
}

/// The tables, parsed.
#[derive(Debug)]
pub struct Tables {
    pub date: String,
    pub sources: BTreeMap<String, String>,
    pub min_driver: Vec<Row<String>>,
    pub latest_patch: Vec<Row<u32>>,
    /// OS family → (first CUDA version, source).
    pub os: Vec<(String, String, String)>,
    /// The GPU architectures of each toolkit release, oldest release first.
    pub arch: Vec<crate::arch::ToolkitArch>,
}

fn minor(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not a CUDA minor");
    let (a, b) = s.split_once('.').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

fn rows<T: Clone>(
    groups: Vec<Group<(String, T)>>,
    sources: &BTreeMap<String, String>,
) -> Result<Vec<Row<T>>, String> {
    let mut out = Vec::new();
    for g in groups {
        let source = sources
            .get(&g.source)
            .ok_or_else(|| format!("unknown source `{}`", g.source))?;
        for (k, v) in g.rows {
            out.push(Row {
                key: minor(&k)?,
                value: v,
                source: format!("{source} (checked {})", g.checked),
            });
        }
    }
    out.sort_by_key(|r| r.key);
    Ok(out)
}

/// Parses a tables file.
pub fn parse(text: &str) -> Result<Tables, String> {
    let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut os = Vec::new();
    for o in f.os {
        let source = f
            .sources
            .get(&o.source)
            .ok_or_else(|| format!("unknown source `{}`", o.source))?;
        os.push((o.name, o.first, format!("{source} (checked {})", o.checked)));
    }
    let mut arch = Vec::new();
    for a in f.arch {
        let source = f
            .sources
            .get(&a.source)
            .ok_or_else(|| format!("unknown source `{}`", a.source))?;
        let cap = |s: &str| {
            crate::arch::ComputeCap::parse(s)
                .ok_or_else(|| format!("`{s}` is not a compute capability"))
        };
        arch.push(crate::arch::ToolkitArch {
            from: minor(&a.from)?,
            min: cap(&a.min)?,
            max: cap(&a.max)?,
            source: format!("{source} (checked {})", a.checked),
        });
    }
    arch.sort_by_key(|a| a.from);
    Ok(Tables {
        arch,
        min_driver: rows(f.driver, &f.sources)?,
        latest_patch: rows(f.latest, &f.sources)?,
        date: f.date,
        sources: f.sources,
        os,
    })
}

/// The compiled-in tables.
pub fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        parse(CUDA_TOML)
            .expect("data/cuda.toml is compiled in and parsed by the unit test `the_data_parses`")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_data_parses() {
        let t = super::parse(super::CUDA_TOML).unwrap_or_else(|e| panic!("{e}"));
        assert!(t.min_driver.windows(2).all(|w| w[0].key < w[1].key));
        assert_eq!(t.date, crate::eol::AS_OF);
        assert!(t.os.iter().any(|o| o.0 == "ubuntu26.04"));
        assert!(t.arch.iter().any(|a| a.from == (13, 0)));
    }
}
