//! `cudaimg mirrors add [HOST=]URL [--first] [--insecure] [--pull-only]`: adds a mirror to
//! the mirrors.toml that runs read (`--config`/`CUDAIMG_CONFIG`, else `./mirrors.toml`,
//! else the user-wide file, created when there is none), keeping the file's comments and
//! layout. The URL takes `--mirror`'s form and rules; the edited text must load as a run
//! would load it before it replaces the file (by rename, so a reader never sees half).

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, Value};

use crate::error::Error;
use cudaimg_config::Config;
use cudaimg_oci::reference::registry_host;

use super::{emit, emit_json, Ctx};

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The mirror: `URL` mirrors Docker Hub, `HOST=URL` another registry (as `--mirror`)
    #[arg(value_name = "[HOST=]URL")]
    mirror: String,
    /// Try it before the registry's other mirrors (default: after them)
    #[arg(long)]
    first: bool,
    /// Skip TLS certificate checks for it (a self-signed certificate)
    #[arg(long)]
    insecure: bool,
    /// Use it for content by digest only, never to say which digest a tag names
    #[arg(long)]
    pull_only: bool,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    path: &'a str,
    registry: &'a str,
    url: &'a str,
    /// False when the file listed it already (nothing was written).
    added: bool,
    position: usize,
}

pub fn run(ctx: &Ctx, args: &AddArgs) -> Result<(), Error> {
    // The flag's own checks: a registry host, and a URL by the file's rules.
    let mut parsed = Config::default();
    parsed.add_mirror_flags(std::slice::from_ref(&args.mirror))?;
    let (host, reg) = parsed
        .registries()
        .next()
        .map(|(h, r)| (h.to_owned(), r.clone()))
        .ok_or_else(|| Error::Usage(format!("`{}` names no mirror", args.mirror)))?;
    let url = reg.mirrors[0].url.as_str().trim_end_matches('/').to_owned();
    let path = file_to_edit(ctx)?;
    let text = match fs_err::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::Setup(e.to_string())),
    };
    // The file must load before it is edited: its own errors are the user's to fix first.
    Config::parse(&text, &path)?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| Error::Setup(format!("{}: cannot be edited: {e}", path.display())))?;
    let mirrors = mirrors_of(&mut doc, &host, reg.endpoint.url.as_str(), &path)?;
    let listed = mirrors
        .iter()
        .position(|v| entry_url(v).as_deref() == Some(url.as_str()));
    let (added, position) = if let Some(at) = listed {
        (false, at)
    } else {
        let mut entry = InlineTable::new();
        entry.insert("url", Value::from(url.as_str()));
        if args.insecure {
            entry.insert("insecure", Value::from(true));
        }
        if args.pull_only {
            entry.insert("capabilities", Value::Array(Array::from_iter(["pull"])));
        }
        let at = if args.first { 0 } else { mirrors.len() };
        // One entry a line, as the starter writes them. What followed the last entry
        // (`"https://a",  # the fast one`) stays on that entry's line.
        let trailing = mirrors.trailing().as_str().unwrap_or_default().to_owned();
        let prefix = if at == mirrors.len() && trailing.contains('\n') {
            mirrors.set_trailing("\n");
            format!("{trailing}    ")
        } else {
            if !trailing.contains('\n') {
                mirrors.set_trailing("\n");
            }
            "\n    ".to_owned()
        };
        mirrors.insert_formatted(at, Value::InlineTable(entry).decorated(prefix, ""));
        mirrors.set_trailing_comma(true);
        (true, at)
    };
    if added {
        let edited = doc.to_string();
        // What is written must load as a run loads it; a failure here is a bug of this edit.
        Config::parse(&edited, &path)?;
        cudaimg_static::regular::replace(&path, edited.as_bytes(), 0o666)
            .map_err(|e| Error::Setup(format!("cannot write {}: {e}", path.display())))?;
    }
    if ctx.json {
        emit_json(&Report {
            path: &path.display().to_string(),
            registry: &host,
            url: &url,
            added,
            position: position + 1,
        });
    } else if added {
        emit(&format!(
            "added {url} to {host}'s mirrors in {} (tried {}); `cudaimg mirrors check` ranks them",
            path.display(),
            ordinal(position + 1)
        ));
    } else {
        emit(&format!(
            "{url} is already {host}'s {} mirror in {}; nothing changed",
            ordinal(position + 1),
            path.display()
        ));
    }
    Ok(())
}

/// The file runs read, or the user-wide one when none exists yet.
fn file_to_edit(ctx: &Ctx) -> Result<PathBuf, Error> {
    if let Some(p) = &ctx.session.settings.config_path {
        return Ok(p.clone());
    }
    if let Some(found) = cudaimg_config::searched_locations()
        .into_iter()
        .find(|p| p.is_file())
    {
        return Ok(found);
    }
    let path = cudaimg_config::user_config_path().ok_or_else(|| {
        Error::Usage(
            "no mirrors.toml exists, and neither XDG_CONFIG_HOME nor HOME is set for a \
             user-wide one\nhint: name the file with `--config PATH`"
                .into(),
        )
    })?;
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir).map_err(|e| Error::Setup(e.to_string()))?;
    }
    Ok(path)
}

/// `registries."HOST".mirrors` of the document, created when missing (with the registry's
/// official endpoint written out, so the file says what is asked last). A table whose key
/// names the same registry in another spelling (`index.docker.io`) is that registry's.
fn mirrors_of<'d>(
    doc: &'d mut DocumentMut,
    host: &str,
    endpoint: &str,
    path: &Path,
) -> Result<&'d mut Array, Error> {
    let not_table = |what: &str| {
        Error::Setup(format!(
            "{}: `{what}` is not a table, so cudaimg cannot add to it; edit the file by hand",
            path.display()
        ))
    };
    let registries = doc
        .entry("registries")
        .or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_mut()
        .ok_or_else(|| not_table("registries"))?;
    let key = registries
        .iter()
        .map(|(k, _)| k.to_owned())
        .find(|k| registry_host(k).is_ok_and(|h| h == host))
        .unwrap_or_else(|| host.to_owned());
    if !registries.contains_key(&key) {
        let mut t = Table::new();
        t.insert("endpoint", toml_edit::value(endpoint.trim_end_matches('/')));
        registries.insert(&key, Item::Table(t));
    }
    let registry = registries
        .get_mut(&key)
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| not_table(&format!("registries.\"{key}\"")))?;
    if registry.get("mirrors").is_none() {
        registry.insert("mirrors", toml_edit::value(Array::new()));
    }
    registry
        .get_mut("mirrors")
        .and_then(Item::as_array_mut)
        .ok_or_else(|| not_table(&format!("registries.\"{key}\".mirrors")))
}

/// A mirror entry's URL, as a table (`{ url = … }`) or a bare string names it.
fn entry_url(v: &Value) -> Option<String> {
    let raw = match v {
        Value::String(s) => s.value().clone(),
        Value::InlineTable(t) => t.get("url")?.as_str()?.to_owned(),
        _ => return None,
    };
    Some(raw.trim_end_matches('/').to_owned())
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}
