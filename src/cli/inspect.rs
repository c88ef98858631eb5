//! `cudaimg inspect REF`: environment, labels and layers of a stored image.

use serde::Serialize;

use crate::error::Error;

use super::{emit, emit_json, human_bytes, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    image: super::ImageArgs,
}

#[derive(Debug, Serialize)]
struct Inspection {
    name: String,
    digest: String,
    index_digest: Option<String>,
    media_type: String,
    platform: String,
    created: Option<String>,
    env: Vec<String>,
    labels: std::collections::BTreeMap<String, String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    config_digest: String,
    layers: Vec<Layer>,
    size: u64,
}

#[derive(Debug, Serialize)]
struct Layer {
    digest: String,
    size: u64,
    media_type: String,
    diff_id: Option<String>,
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    let config = ctx.config()?;
    let (name, want) = args.image.resolve(config)?;
    let store = ctx.existing_store()?;
    let Some(image) = store.image(&name, want.as_ref())? else {
        let stored: Vec<String> = store
            .list()?
            .into_iter()
            .filter(|e| e.name.as_deref() == Some(name.as_str()))
            .filter_map(|e| e.platform.map(|p| p.to_string()))
            .collect();
        if let (Some(w), false) = (&want, stored.is_empty()) {
            // The hint's commands must run as printed: the name and the platform apart.
            return Err(Error::WithHint {
                inner: Box::new(Error::NotInStore(format!(
                    "{name} for {w} (stored platforms: {})",
                    stored.join(", ")
                ))),
                hint: format!(
                    "`cudaimg pull --platform {w} {name}` fetches it; `cudaimg inspect --platform {} {name}` \
                     shows a stored one",
                    stored[0]
                ),
            });
        }
        return Err(Error::NotInStore(name));
    };
    let (digest, m, cfg) = (&image.digest, &image.manifest, &image.config);
    let out = Inspection {
        name: name.clone(),
        digest: digest.to_string(),
        index_digest: image.index_digest.as_ref().map(ToString::to_string),
        media_type: image.media_type.clone(),
        platform: image.platform().to_string(),
        created: cfg.created.clone(),
        env: cfg.config.env.clone().unwrap_or_default(),
        labels: cfg.config.labels.clone().unwrap_or_default(),
        entrypoint: cfg.config.entrypoint.clone(),
        cmd: cfg.config.cmd.clone(),
        working_dir: cfg.config.working_dir.clone().filter(|w| !w.is_empty()),
        user: cfg.config.user.clone().filter(|u| !u.is_empty()),
        config_digest: m.config.digest.to_string(),
        size: m.content_size(),
        layers: m
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| Layer {
                digest: l.digest.to_string(),
                size: l.size,
                media_type: l.media_type.clone(),
                diff_id: cfg.rootfs.diff_ids.get(i).cloned(),
            })
            .collect(),
    };
    if ctx.json {
        emit_json(&out);
    } else {
        print(&out, ctx.columns);
    }
    Ok(())
}

/// The image as text, fitted to `columns`: long values (`NVIDIA_REQUIRE_CUDA`) wrap,
/// digests go whole under their label.
fn print(i: &Inspection, columns: Option<usize>) {
    let emit = |line: &str| {
        for l in super::width::fit_line(line, columns) {
            emit(&l);
        }
    };
    emit(&i.name);
    emit(&format!("  digest:     {}", i.digest));
    if let Some(d) = &i.index_digest {
        emit(&format!("  index:      {d}"));
    }
    emit(&format!("  platform:   {}", i.platform));
    emit(&format!("  media type: {}", i.media_type));
    if let Some(c) = &i.created {
        emit(&format!("  created:    {c}"));
    }
    if let Some(e) = &i.entrypoint {
        emit(&format!("  entrypoint: {}", e.join(" ")));
    }
    if let Some(c) = &i.cmd {
        emit(&format!("  cmd:        {}", c.join(" ")));
    }
    emit("  env:");
    for e in &i.env {
        emit(&format!("    {e}"));
    }
    if !i.labels.is_empty() {
        emit("  labels:");
        for (k, v) in &i.labels {
            emit(&format!("    {k}={v}"));
        }
    }
    emit(&format!(
        "  layers ({}, {}; blob digest, compressed size, diff ID = digest of the uncompressed tar):",
        i.layers.len(),
        human_bytes(i.size)
    ));
    for l in &i.layers {
        emit(&format!(
            "    {}  {:>10}  diff ID {}",
            l.digest,
            human_bytes(l.size),
            l.diff_id.as_deref().unwrap_or("(none in the config)")
        ));
    }
}
