//! Deterministic generator of CUDA-like container images.
//!
//! The images are shaped like `nvidia/cuda:12.4.1-*-ubuntu22.04` (see `shared/docs/CUDA.md`):
//! a Docker manifest list (or OCI index) with linux/amd64 and linux/arm64, per-platform schema2
//! (or OCI) manifests pretty-printed with 3-space indentation like NVIDIA's, gzip layers that are
//! real tars, and image configs carrying NVIDIA's environment and labels.
//!
//! What the tests can rely on:
//! - Every byte is a function of the [`CudaSpec`] only: a seeded PRNG (written here, so no crate
//!   update can change it) drives all content, tar headers carry fixed metadata, gzip headers carry
//!   no time stamp. Digests are therefore stable across runs and machines (as long as the gzip
//!   backend of `flate2` produces the same stream, which `harness.rs` pins with a golden digest).
//! - Flavors are built FROM each other like NVIDIA's: `base` = layers 1-5, `runtime` = base + 6-9,
//!   `cudnn-runtime` = runtime + the cuDNN layer, `devel` = runtime + the devel layer. A layer that
//!   two flavors share has the same digest in both, so "pull B after A fetches only the new
//!   layers" is testable with [`Fixture::new_layers_since`].
//! - amd64 and arm64 layers differ, except the NGC license layer (#5), which is byte-identical on
//!   both arches (and across versions and rebuilds), as on NVIDIA's registry.
//! - [`Scale`] makes sizes proportional to the real compressed sizes; blobs are streamed to files
//!   in a directory, never held in memory, so a benchmark can ask for real (GB) sizes.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// Docker schema2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (what `nvidia/cuda` tags point at).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Time stamps of tar entries (plus up to a day, per layer) and configs: about when 12.4.1 was built.
const MTIME: u64 = 1_713_830_400; // 2024-04-23T00:00:00Z
const CREATED: &str = "2024-04-23T00:00:00Z";

// ---------------------------------------------------------------------------------------------
// Public vocabulary
// ---------------------------------------------------------------------------------------------

/// Image flavor, as in the `nvidia/cuda` tag grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    Base,
    Runtime,
    CudnnRuntime,
    Devel,
}

impl Flavor {
    /// The flavor's part of the tag: `base`, `runtime`, `cudnn-runtime`, `devel`.
    pub fn tag_part(self) -> &'static str {
        match self {
            Flavor::Base => "base",
            Flavor::Runtime => "runtime",
            Flavor::CudnnRuntime => "cudnn-runtime",
            Flavor::Devel => "devel",
        }
    }
}

/// Which family of media types the manifests, configs and layers are labelled with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaTypes {
    /// Docker schema2 manifests and a Docker manifest list, as NVIDIA publishes.
    Docker,
    /// OCI manifests and an OCI index (skopeo 1.9 reads only these from an OCI layout).
    Oci,
}

impl MediaTypes {
    pub fn manifest(self) -> &'static str {
        match self {
            MediaTypes::Docker => DOCKER_MANIFEST,
            MediaTypes::Oci => OCI_MANIFEST,
        }
    }
    pub fn index(self) -> &'static str {
        match self {
            MediaTypes::Docker => DOCKER_MANIFEST_LIST,
            MediaTypes::Oci => OCI_INDEX,
        }
    }
    pub fn config(self) -> &'static str {
        match self {
            MediaTypes::Docker => DOCKER_CONFIG,
            MediaTypes::Oci => OCI_CONFIG,
        }
    }
    pub fn layer(self) -> &'static str {
        match self {
            MediaTypes::Docker => DOCKER_LAYER,
            MediaTypes::Oci => OCI_LAYER,
        }
    }
}

/// CPU architecture of a platform image (always `os: linux`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// The OCI/Go architecture name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
    /// The platform variant NVIDIA's lists carry (`v8` on arm64).
    pub fn variant(self) -> Option<&'static str> {
        match self {
            Arch::Amd64 => None,
            Arch::Arm64 => Some("v8"),
        }
    }
    /// `NVARCH` of NVIDIA's images.
    pub fn nvarch(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "sbsa",
        }
    }
    fn lib_triple(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }
    fn cuda_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux",
            Arch::Arm64 => "sbsa-linux",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Size knob: every layer whose real compressed size is above 8 KiB gets `real * factor` bytes
/// (roughly: gzip output cannot be sized exactly); smaller layers keep their real size, which
/// is cheap and keeps e.g. the license layer's digest independent of the scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale(pub f64);

impl Scale {
    /// 1/1000 of the real sizes: runtime is ~1.5 MB per arch; the default for tests.
    pub const TINY: Scale = Scale(0.001);
    /// Real sizes: runtime is ~1.47 GB per arch (for benchmarks only).
    pub const REAL: Scale = Scale(1.0);
}

impl Default for Scale {
    fn default() -> Self {
        Scale::TINY
    }
}

/// Everything that determines a CUDA fixture's bytes.
#[derive(Clone, Debug)]
pub struct CudaSpec {
    /// Repository path, `nvidia/cuda` by default.
    pub repo: String,
    /// `X.Y.Z`; used as-is in `CUDA_VERSION` and the tag; package versions follow 12.4.1's.
    pub version: String,
    pub flavor: Flavor,
    /// OS part of the tag, `ubuntu22.04` by default.
    pub os: String,
    pub media: MediaTypes,
    pub scale: Scale,
    /// Platforms, amd64 and arm64 by default (the order of the index entries).
    pub arches: Vec<Arch>,
    /// When false and there is one arch, the tag points at the platform manifest directly.
    pub with_index: bool,
    /// A rebuild of the same tag: non-zero changes every layer but the license one, so the
    /// same tag gets new digests ("the tag moved").
    pub rebuild: u32,
    /// Sets `NVIDIA_CUDA_END_OF_LIFE=1`, as NVIDIA does on images of end-of-life tags.
    pub end_of_life: bool,
}

impl CudaSpec {
    /// `nvidia/cuda:<version>-<flavor>-ubuntu22.04`, Docker media types, tiny scale, both arches.
    pub fn new(version: &str, flavor: Flavor) -> Self {
        CudaSpec {
            repo: "nvidia/cuda".to_string(),
            version: version.to_string(),
            flavor,
            os: "ubuntu22.04".to_string(),
            media: MediaTypes::Docker,
            scale: Scale::TINY,
            arches: vec![Arch::Amd64, Arch::Arm64],
            with_index: true,
            rebuild: 0,
            end_of_life: false,
        }
    }
    pub fn media(mut self, media: MediaTypes) -> Self {
        self.media = media;
        self
    }
    pub fn scale(mut self, scale: Scale) -> Self {
        self.scale = scale;
        self
    }
    pub fn arches(mut self, arches: &[Arch]) -> Self {
        self.arches = arches.to_vec();
        self
    }
    /// Only meaningful with a single arch: the tag then names the platform manifest itself.
    pub fn without_index(mut self) -> Self {
        self.with_index = false;
        self
    }
    pub fn rebuild(mut self, rebuild: u32) -> Self {
        self.rebuild = rebuild;
        self
    }
    pub fn end_of_life(mut self, eol: bool) -> Self {
        self.end_of_life = eol;
        self
    }
    pub fn repo(mut self, repo: &str) -> Self {
        self.repo = repo.to_string();
        self
    }
    /// NVIDIA's tag, e.g. `12.4.1-cudnn-runtime-ubuntu22.04`.
    pub fn tag(&self) -> String {
        format!("{}-{}-{}", self.version, self.flavor.tag_part(), self.os)
    }
    /// `major.minor` of the version.
    fn major_minor(&self) -> String {
        self.version
            .split('.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// A JSON document (manifest, index or config) with its exact bytes and digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Document {
    fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Document {
            media_type: media_type.to_string(),
            digest: sha256_digest(&bytes),
            bytes,
        }
    }
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    /// The document parsed (for assertions; never re-serialize it to push).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes).expect("fixture documents are JSON")
    }
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.bytes).expect("fixture documents are UTF-8")
    }
}

/// One gzip layer blob, stored in a file of the fixture store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Row of the CUDA.md table: "1" .. "9", "10" (cuDNN) or "10'" (devel).
    pub number: &'static str,
    /// Short name, e.g. "ubuntu-rootfs", "ngc-license", "cudnn".
    pub name: &'static str,
    pub media_type: String,
    /// `sha256:<hex>` of the compressed bytes.
    pub digest: String,
    /// Compressed size.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
    pub uncompressed_size: u64,
    /// The blob's file (named by its hex digest).
    pub path: PathBuf,
}

impl Layer {
    /// The compressed bytes (reads the file; fine at tiny scale).
    pub fn bytes(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap()
    }
}

/// One platform's manifest, config and layers.
#[derive(Clone, Debug)]
pub struct PlatformImage {
    pub arch: Arch,
    pub manifest: Document,
    pub config: Document,
    pub layers: Vec<Layer>,
}

impl PlatformImage {
    /// The config's `config.Env`, e.g. `["PATH=...", "CUDA_VERSION=12.4.1", ...]`.
    pub fn env(&self) -> Vec<String> {
        self.config.json()["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }
    /// Value of one env variable of the config, if set.
    pub fn env_var(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.env()
            .into_iter()
            .find_map(|e| e.strip_prefix(&prefix).map(str::to_string))
    }
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }
    /// Layer by its CUDA.md row number ("5" is the license layer).
    pub fn layer(&self, number: &str) -> &Layer {
        self.layers
            .iter()
            .find(|l| l.number == number)
            .unwrap_or_else(|| panic!("no layer #{number} on {}", self.arch))
    }
    /// Sum of the compressed layer sizes.
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// A blob to upload: a config (bytes in memory) or a layer (file).
#[derive(Clone, Copy, Debug)]
pub enum BlobRef<'a> {
    Bytes {
        digest: &'a str,
        bytes: &'a [u8],
    },
    File {
        digest: &'a str,
        size: u64,
        path: &'a Path,
    },
}

impl BlobRef<'_> {
    pub fn digest(&self) -> &str {
        match self {
            BlobRef::Bytes { digest, .. } | BlobRef::File { digest, .. } => digest,
        }
    }
    pub fn size(&self) -> u64 {
        match self {
            BlobRef::Bytes { bytes, .. } => bytes.len() as u64,
            BlobRef::File { size, .. } => *size,
        }
    }
}

/// A generated image: what a tag of a registry should serve.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub repo: String,
    pub tag: String,
    pub media: MediaTypes,
    /// The manifest list / OCI index; `None` for single-platform images.
    pub index: Option<Document>,
    /// In index order.
    pub platforms: Vec<PlatformImage>,
    /// Keeps the blob files alive as long as any fixture using them.
    _store: Arc<StoreInner>,
}

impl Fixture {
    /// Shorthand, in the test binary's [`FixtureStore::shared`] store (so layers common to
    /// several tests are made once):
    /// `Fixture::cuda("12.4.1", Flavor::Runtime, MediaTypes::Docker, Scale::TINY)`.
    /// For other knobs (one arch, rebuild, end of life) use [`CudaSpec`] with a store.
    pub fn cuda(version: &str, flavor: Flavor, media: MediaTypes, scale: Scale) -> Fixture {
        FixtureStore::shared().cuda(&CudaSpec::new(version, flavor).media(media).scale(scale))
    }

    /// What the tag points at: the index if there is one, else the single platform manifest.
    pub fn top(&self) -> &Document {
        match &self.index {
            Some(index) => index,
            None => &self.platforms[0].manifest,
        }
    }
    /// `repo:tag`, e.g. `nvidia/cuda:12.4.1-runtime-ubuntu22.04`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }
    pub fn platform(&self, arch: Arch) -> &PlatformImage {
        self.platforms
            .iter()
            .find(|p| p.arch == arch)
            .unwrap_or_else(|| panic!("fixture {} has no {arch} image", self.reference()))
    }
    /// Every config and layer blob of every platform, each digest once, configs first.
    pub fn blobs(&self) -> Vec<BlobRef<'_>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for p in &self.platforms {
            if seen.insert(p.config.digest.as_str()) {
                out.push(BlobRef::Bytes {
                    digest: &p.config.digest,
                    bytes: &p.config.bytes,
                });
            }
        }
        for p in &self.platforms {
            for l in &p.layers {
                if seen.insert(l.digest.as_str()) {
                    out.push(BlobRef::File {
                        digest: &l.digest,
                        size: l.size,
                        path: &l.path,
                    });
                }
            }
        }
        out
    }
    /// The largest layer of `arch`'s image.
    pub fn largest_layer(&self, arch: Arch) -> &Layer {
        self.platform(arch)
            .layers
            .iter()
            .max_by_key(|l| l.size)
            .unwrap()
    }
    /// Config and layer bytes of `arch`'s image: what a full pull of it downloads.
    pub fn image_bytes(&self, arch: Arch) -> u64 {
        let p = self.platform(arch);
        p.layers_size() + p.config.size()
    }
    /// Layers of `arch` that `other` (e.g. an already pulled flavor) does not have on any
    /// platform: what a pull of `self` after `other` must download.
    pub fn new_layers_since(&self, other: &Fixture, arch: Arch) -> Vec<&Layer> {
        let known: HashSet<&str> = other
            .platforms
            .iter()
            .flat_map(|p| p.layers.iter().map(|l| l.digest.as_str()))
            .collect();
        self.platform(arch)
            .layers
            .iter()
            .filter(|l| !known.contains(l.digest.as_str()))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Store and generation
// ---------------------------------------------------------------------------------------------

/// Directory of generated blobs (`<dir>/sha256/<hex>`), remembering which layers it already made
/// so that generating several flavors makes the shared layers once.
#[derive(Clone)]
pub struct FixtureStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// Layer seed key -> generated layer (without media type, which depends on the fixture).
    made: Mutex<HashMap<String, Layer>>,
}

impl fmt::Debug for StoreInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FixtureStore({})", self.dir.display())
    }
}

impl Default for FixtureStore {
    fn default() -> Self {
        Self::new()
    }
}

impl FixtureStore {
    /// A store in a new temporary directory, removed when the store and its fixtures are gone.
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("cudaimg-fixtures-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        Self::with(dir, Some(tmp))
    }
    /// One store per test binary, in `$CARGO_TARGET_TMPDIR/cudaimg-fixtures`: tests that use it
    /// generate each layer once per run instead of once per test. Blobs are content-addressed
    /// and rewritten atomically, so files left by earlier runs (or a concurrent test binary)
    /// are harmless. Never modify its files: corrupt a copy (e.g. in a registry's storage).
    pub fn shared() -> Self {
        static SHARED: std::sync::OnceLock<FixtureStore> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Self::in_dir(&fixture_root())).clone()
    }
    /// A store in a directory that outlives the test (e.g. a benchmark's cache).
    pub fn in_dir(dir: &Path) -> Self {
        Self::with(dir.to_path_buf(), None)
    }
    fn with(dir: PathBuf, tmp: Option<tempfile::TempDir>) -> Self {
        fs::create_dir_all(dir.join("sha256")).unwrap();
        FixtureStore {
            inner: Arc::new(StoreInner {
                dir,
                _tmp: tmp,
                made: Mutex::new(HashMap::new()),
            }),
        }
    }
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Generates (or reuses) every blob of a CUDA image.
    pub fn cuda(&self, spec: &CudaSpec) -> Fixture {
        assert!(!spec.arches.is_empty(), "a fixture needs at least one arch");
        assert!(
            spec.with_index || spec.arches.len() == 1,
            "without_index() needs exactly one arch"
        );
        let steps = steps_for(spec.flavor);
        let platforms: Vec<PlatformImage> = spec
            .arches
            .iter()
            .map(|&arch| self.platform_image(spec, arch, &steps))
            .collect();
        let index = spec.with_index.then(|| make_index(spec.media, &platforms));
        Fixture {
            repo: spec.repo.clone(),
            tag: spec.tag(),
            media: spec.media,
            index,
            platforms,
            _store: self.inner.clone(),
        }
    }

    /// A tiny single-platform image without index: one small layer, `repo:latest`.
    /// Different `name`s give different digests.
    pub fn plain(&self, repo: &str, name: &str, media: MediaTypes) -> Fixture {
        let arch = Arch::Amd64;
        let def = LayerDef {
            number: "1",
            name: "plain",
            real_bytes: 2048,
            per_arch: true,
            dirs: &["app/"],
            files: &[("app/{name}.txt", 1)],
        };
        let vars = Vars {
            arch,
            mm: String::new(),
            name: name.to_string(),
        };
        let layer = self.layer(&def, &format!("plain/{name}"), Scale::REAL, &vars, media);
        let config = ConfigJson {
            architecture: "amd64",
            config: ContainerConfig {
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ],
                cmd: Some(vec!["/bin/sh".into()]),
                entrypoint: None,
                labels: BTreeMap::new(),
            },
            created: CREATED,
            history: vec![HistoryJson {
                created: CREATED,
                created_by: format!("ADD {name}.txt /app/ # buildkit"),
                comment: "buildkit.dockerfile.v0",
                empty_layer: None,
            }],
            os: "linux",
            rootfs: RootfsJson {
                kind: "layers",
                diff_ids: vec![layer.diff_id.clone()],
            },
            variant: None,
        };
        let config = Document::new(media.config(), serde_json::to_vec(&config).unwrap());
        let manifest = make_manifest(media, &config, std::slice::from_ref(&layer));
        Fixture {
            repo: repo.to_string(),
            tag: "latest".to_string(),
            media,
            index: None,
            platforms: vec![PlatformImage {
                arch,
                manifest,
                config,
                layers: vec![layer],
            }],
            _store: self.inner.clone(),
        }
    }

    fn platform_image(&self, spec: &CudaSpec, arch: Arch, steps: &[Step]) -> PlatformImage {
        let vars = Vars {
            arch,
            mm: spec.major_minor(),
            name: String::new(),
        };
        let mut layers = Vec::new();
        let mut env: Vec<(String, String)> = vec![(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        )];
        let mut labels = BTreeMap::new();
        let mut entrypoint = None;
        let mut history = Vec::new();
        let empty = |created_by: String| HistoryJson {
            created: CREATED,
            created_by,
            comment: "buildkit.dockerfile.v0",
            empty_layer: Some(true),
        };
        for step in steps {
            match step {
                Step::Layer(def) => {
                    let key = layer_key(spec, def, arch);
                    layers.push(self.layer(def, &key, spec.scale, &vars, spec.media));
                    history.push(HistoryJson {
                        created: CREATED,
                        created_by: format!("RUN /bin/sh -c # {} (layer {})", def.name, def.number),
                        comment: "buildkit.dockerfile.v0",
                        empty_layer: None,
                    });
                }
                Step::Env(name) => {
                    let value = env_value(name, spec, arch);
                    history.push(empty(format!("ENV {name}={value}")));
                    // Like Docker: ENV of an existing variable replaces it in place.
                    match env.iter_mut().find(|(k, _)| k == name) {
                        Some(slot) => slot.1 = value,
                        None => env.push((name.to_string(), value)),
                    }
                }
                Step::Label(name) => {
                    let value = label_value(name);
                    history.push(empty(format!("LABEL {name}={value}")));
                    labels.insert(name.to_string(), value);
                }
                Step::Entrypoint(path) => {
                    history.push(empty(format!("ENTRYPOINT [\"{path}\"]")));
                    entrypoint = Some(vec![path.to_string()]);
                }
            }
        }
        if spec.end_of_life {
            history.push(empty("ENV NVIDIA_CUDA_END_OF_LIFE=1".into()));
            env.push(("NVIDIA_CUDA_END_OF_LIFE".into(), "1".into()));
        }
        let config = ConfigJson {
            architecture: arch.name(),
            config: ContainerConfig {
                env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
                cmd: Some(vec!["/bin/bash".into()]),
                entrypoint,
                labels,
            },
            created: CREATED,
            history,
            os: "linux",
            rootfs: RootfsJson {
                kind: "layers",
                diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
            },
            variant: arch.variant(),
        };
        // Docker writes configs compact; only manifests are pretty-printed.
        let config = Document::new(spec.media.config(), serde_json::to_vec(&config).unwrap());
        let manifest = make_manifest(spec.media, &config, &layers);
        PlatformImage {
            arch,
            manifest,
            config,
            layers,
        }
    }

    /// Generates one layer (or returns the one already made under `key`).
    fn layer(
        &self,
        def: &LayerDef,
        key: &str,
        scale: Scale,
        vars: &Vars,
        media: MediaTypes,
    ) -> Layer {
        let target = target_size(def.real_bytes, scale);
        let key = format!("{key}@{target}");
        let mut made = self.inner.made.lock().unwrap();
        let layer = if let Some(layer) = made.get(&key) {
            layer.clone()
        } else {
            let layer = write_layer(&self.inner.dir, def, &key, target, vars).unwrap();
            made.insert(key, layer.clone());
            layer
        };
        Layer {
            media_type: media.layer().to_string(),
            ..layer
        }
    }
}

/// What seeds a layer: which inputs make its bytes differ.
fn layer_key(spec: &CudaSpec, def: &LayerDef, arch: Arch) -> String {
    if !def.per_arch {
        // The NGC license layer: the same bytes everywhere.
        return format!("shared/{}", def.name);
    }
    if def.number == "1" {
        // The ubuntu rootfs does not depend on the CUDA version.
        return format!("{}/{}/{}/r{}", spec.os, arch, def.name, spec.rebuild);
    }
    format!(
        "{}/{}/{}/{}/r{}",
        spec.os, spec.version, arch, def.name, spec.rebuild
    )
}

fn target_size(real: u64, scale: Scale) -> u64 {
    let scaled = (real as f64 * scale.0).round() as u64;
    scaled.max(real.min(8192))
}

// ---------------------------------------------------------------------------------------------
// Layer table (CUDA.md, 12.4.1 ubuntu22.04 amd64)
// ---------------------------------------------------------------------------------------------

struct LayerDef {
    number: &'static str,
    name: &'static str,
    /// Real compressed size in bytes.
    real_bytes: u64,
    /// False only for the license layer, identical on every arch.
    per_arch: bool,
    /// Directory entries (templated, ending in '/').
    dirs: &'static [&'static str],
    /// Files (templated path, weight of the layer's bytes).
    files: &'static [(&'static str, u64)],
}

/// Template variables of layer paths: `{lib}`, `{tgt}`, `{mm}`, `{name}`.
struct Vars {
    arch: Arch,
    mm: String,
    name: String,
}

impl Vars {
    fn expand(&self, template: &str) -> String {
        template
            .replace("{lib}", self.arch.lib_triple())
            .replace("{tgt}", self.arch.cuda_target())
            .replace("{mm}", &self.mm)
            .replace("{name}", &self.name)
    }
}

const L1_ROOTFS: LayerDef = LayerDef {
    number: "1",
    name: "ubuntu-rootfs",
    real_bytes: 29_533_419,
    per_arch: true,
    dirs: &[
        "bin/",
        "etc/",
        "usr/",
        "usr/bin/",
        "usr/lib/",
        "usr/lib/{lib}/",
        "var/lib/dpkg/",
    ],
    files: &[
        ("etc/os-release", 1),
        ("usr/bin/bash", 10),
        ("usr/lib/{lib}/libc.so.6", 20),
        ("usr/lib/{lib}/libstdc++.so.6.0.30", 20),
        ("var/lib/dpkg/status", 49),
    ],
};
const L2_KEYRING: LayerDef = LayerDef {
    number: "2",
    name: "cuda-keyring",
    real_bytes: 4_623_694,
    per_arch: true,
    dirs: &[
        "etc/apt/sources.list.d/",
        "usr/share/keyrings/",
        "var/lib/apt/lists/",
    ],
    files: &[
        ("usr/share/keyrings/cuda-archive-keyring.gpg", 1),
        ("etc/apt/sources.list.d/cuda-ubuntu2204-{lib}.list", 1),
        (
            "var/lib/apt/lists/developer.download.nvidia.com_Packages",
            98,
        ),
    ],
};
const L3_CUDART: LayerDef = LayerDef {
    number: "3",
    name: "cudart",
    real_bytes: 57_593_640,
    per_arch: true,
    dirs: &[
        "usr/local/cuda-{mm}/",
        "usr/local/cuda-{mm}/targets/{tgt}/lib/",
        "usr/local/cuda-{mm}/compat/",
    ],
    files: &[
        (
            "usr/local/cuda-{mm}/targets/{tgt}/lib/libcudart.so.{mm}.127",
            10,
        ),
        ("usr/local/cuda-{mm}/compat/libcuda.so.550.54.15", 70),
        (
            "usr/local/cuda-{mm}/compat/libnvidia-ptxjitcompiler.so.550.54.15",
            20,
        ),
    ],
};
const L4_CONF: LayerDef = LayerDef {
    number: "4",
    name: "nvidia.conf",
    real_bytes: 185,
    per_arch: true,
    dirs: &["etc/ld.so.conf.d/"],
    files: &[("etc/ld.so.conf.d/nvidia.conf", 1)],
};
const L5_LICENSE: LayerDef = LayerDef {
    number: "5",
    name: "ngc-license",
    real_bytes: 6_886,
    per_arch: false,
    dirs: &[],
    files: &[("NGC-DL-CONTAINER-LICENSE", 1)],
};
const L6_LIBRARIES: LayerDef = LayerDef {
    number: "6",
    name: "cuda-libraries",
    real_bytes: 1_374_295_401,
    per_arch: true,
    dirs: &["usr/local/cuda-{mm}/targets/{tgt}/lib/", "usr/lib/{lib}/"],
    files: &[
        (
            "usr/local/cuda-{mm}/targets/{tgt}/lib/libcublasLt.so.12.4.5.8",
            40,
        ),
        (
            "usr/local/cuda-{mm}/targets/{tgt}/lib/libcublas.so.12.4.5.8",
            8,
        ),
        (
            "usr/local/cuda-{mm}/targets/{tgt}/lib/libcusparse.so.12.3.1.170",
            20,
        ),
        (
            "usr/local/cuda-{mm}/targets/{tgt}/lib/libnppig.so.12.2.5.30",
            10,
        ),
        (
            "usr/local/cuda-{mm}/targets/{tgt}/lib/libnvToolsExt.so.1.0.0",
            1,
        ),
        ("usr/lib/{lib}/libnccl.so.2.21.5", 21),
    ],
};
const L7_HOLD: LayerDef = LayerDef {
    number: "7",
    name: "apt-mark-hold",
    real_bytes: 64_047,
    per_arch: true,
    dirs: &["var/lib/dpkg/"],
    files: &[("var/lib/dpkg/status", 1)],
};
const L8_ENTRYPOINT_D: LayerDef = LayerDef {
    number: "8",
    name: "entrypoint.d",
    real_bytes: 1_684,
    per_arch: true,
    dirs: &["opt/nvidia/", "opt/nvidia/entrypoint.d/"],
    files: &[
        ("opt/nvidia/entrypoint.d/10-banner.sh", 1),
        ("opt/nvidia/entrypoint.d/12-banner.sh", 1),
        ("opt/nvidia/entrypoint.d/15-container-copyright.txt", 1),
        ("opt/nvidia/entrypoint.d/50-gpu-driver-check.sh", 2),
    ],
};
const L9_ENTRYPOINT: LayerDef = LayerDef {
    number: "9",
    name: "entrypoint.sh",
    real_bytes: 1_523,
    per_arch: true,
    dirs: &["opt/nvidia/"],
    files: &[("opt/nvidia/nvidia_entrypoint.sh", 1)],
};
const L10_CUDNN: LayerDef = LayerDef {
    number: "10",
    name: "cudnn",
    real_bytes: 670_103_963,
    per_arch: true,
    dirs: &["usr/lib/{lib}/"],
    files: &[
        ("usr/lib/{lib}/libcudnn.so.9.1.0", 1),
        ("usr/lib/{lib}/libcudnn_engines_precompiled.so.9.1.0", 60),
        ("usr/lib/{lib}/libcudnn_adv.so.9.1.0", 25),
        ("usr/lib/{lib}/libcudnn_ops.so.9.1.0", 14),
    ],
};
const L10_DEVEL: LayerDef = LayerDef {
    number: "10'",
    name: "devel",
    real_bytes: 2_650_000_000, // "~2.65 GB" in CUDA.md: an estimate
    per_arch: true,
    dirs: &[
        "usr/local/cuda-{mm}/bin/",
        "usr/local/cuda-{mm}/targets/{tgt}/include/",
        "usr/local/cuda-{mm}/targets/{tgt}/lib/",
    ],
    files: &[
        ("usr/local/cuda-{mm}/bin/nvcc", 5),
        ("usr/local/cuda-{mm}/bin/ptxas", 5),
        (
            "usr/local/cuda-{mm}/targets/{tgt}/include/cuda_runtime.h",
            1,
        ),
        (
            "usr/local/cuda-{mm}/targets/{tgt}/lib/libcublasLt_static.a",
            50,
        ),
        (
            "usr/local/cuda-{mm}/targets/{tgt}/lib/libcusparse_static.a",
            39,
        ),
    ],
};

/// A Dockerfile step of NVIDIA's build.
enum Step {
    Layer(&'static LayerDef),
    Env(&'static str),
    Label(&'static str),
    Entrypoint(&'static str),
}

fn steps_for(flavor: Flavor) -> Vec<Step> {
    use Step::{Entrypoint, Env, Label, Layer};
    // base: ubuntu rootfs, then NVIDIA's base Dockerfile.
    let mut steps = vec![
        Layer(&L1_ROOTFS),
        Label("org.opencontainers.image.ref.name"),
        Label("org.opencontainers.image.version"),
        Env("NVARCH"),
        Env("NVIDIA_REQUIRE_CUDA"),
        Env("NV_CUDA_CUDART_VERSION"),
        Env("NV_CUDA_COMPAT_PACKAGE"),
        Label("maintainer"),
        Layer(&L2_KEYRING),
        Env("CUDA_VERSION"),
        Layer(&L3_CUDART),
        Layer(&L4_CONF),
        Env("PATH"),
        Env("LD_LIBRARY_PATH"),
        Layer(&L5_LICENSE),
        Env("NVIDIA_VISIBLE_DEVICES"),
        Env("NVIDIA_DRIVER_CAPABILITIES"),
    ];
    if flavor == Flavor::Base {
        return steps;
    }
    steps.extend([
        Env("NV_CUDA_LIB_VERSION"),
        Env("NV_LIBCUBLAS_VERSION"),
        Env("NV_LIBNCCL_PACKAGE_VERSION"),
        Env("NCCL_VERSION"),
        Layer(&L6_LIBRARIES),
        Layer(&L7_HOLD),
        Layer(&L8_ENTRYPOINT_D),
        Layer(&L9_ENTRYPOINT),
        Env("NVIDIA_PRODUCT_NAME"),
        Entrypoint("/opt/nvidia/nvidia_entrypoint.sh"),
    ]);
    match flavor {
        Flavor::CudnnRuntime => steps.extend([
            Env("NV_CUDNN_VERSION"),
            Env("NV_CUDNN_PACKAGE_NAME"),
            Env("NV_CUDNN_PACKAGE"),
            Label("com.nvidia.cudnn.version"),
            Layer(&L10_CUDNN),
        ]),
        Flavor::Devel => steps.extend([
            Env("NV_CUDA_CUDART_DEV_VERSION"),
            Env("NV_NVCC_VERSION"),
            Layer(&L10_DEVEL),
            Env("LIBRARY_PATH"),
        ]),
        Flavor::Base | Flavor::Runtime => {}
    }
    steps
}

fn env_value(name: &str, spec: &CudaSpec, arch: Arch) -> String {
    let mm = spec.major_minor();
    let dash = mm.replace('.', "-");
    match name {
        "NVARCH" => arch.nvarch().to_string(),
        // NVIDIA lists driver brands only on x86_64; sbsa images require just the toolkit.
        "NVIDIA_REQUIRE_CUDA" => match arch {
            Arch::Amd64 => format!(
                "cuda>={mm} brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471 \
                 brand=nvidia,driver>=470,driver<471 brand=tesla,driver>=525,driver<526 \
                 brand=tesla,driver>=535,driver<536"
            ),
            Arch::Arm64 => format!("cuda>={mm}"),
        },
        "NV_CUDA_CUDART_VERSION" => format!("{mm}.127-1"),
        "NV_CUDA_COMPAT_PACKAGE" => format!("cuda-compat-{dash}"),
        "CUDA_VERSION" => spec.version.clone(),
        "PATH" => "/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:\
                   /usr/sbin:/usr/bin:/sbin:/bin"
            .to_string(),
        "LD_LIBRARY_PATH" => "/usr/local/nvidia/lib:/usr/local/nvidia/lib64".to_string(),
        "NVIDIA_VISIBLE_DEVICES" => "all".to_string(),
        "NVIDIA_DRIVER_CAPABILITIES" => "compute,utility".to_string(),
        "NV_CUDA_LIB_VERSION" => format!("{}-1", spec.version),
        "NV_LIBCUBLAS_VERSION" => "12.4.5.8-1".to_string(),
        "NV_LIBNCCL_PACKAGE_VERSION" => "2.21.5-1".to_string(),
        "NCCL_VERSION" => "2.21.5-1".to_string(),
        "NVIDIA_PRODUCT_NAME" => "CUDA".to_string(),
        "NV_CUDNN_VERSION" => "9.1.0.70-1".to_string(),
        "NV_CUDNN_PACKAGE_NAME" => format!("libcudnn9-cuda-{}", major(&mm)),
        "NV_CUDNN_PACKAGE" => format!("libcudnn9-cuda-{}=9.1.0.70-1", major(&mm)),
        "NV_CUDA_CUDART_DEV_VERSION" => format!("{mm}.127-1"),
        "NV_NVCC_VERSION" => format!("{mm}.131-1"),
        "LIBRARY_PATH" => "/usr/local/cuda/lib64/stubs".to_string(),
        other => unreachable!("no value for ENV {other}"),
    }
}

fn major(mm: &str) -> &str {
    mm.split('.').next().unwrap_or(mm)
}

fn label_value(name: &str) -> String {
    match name {
        "maintainer" => "NVIDIA CORPORATION <cudatools@nvidia.com>",
        "org.opencontainers.image.ref.name" => "ubuntu",
        "org.opencontainers.image.version" => "22.04",
        "com.nvidia.cudnn.version" => "9.1.0.70-1",
        other => unreachable!("no value for LABEL {other}"),
    }
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// JSON shapes (structs, not json!(), so key order never depends on serde_json features)
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct ConfigJson<'a> {
    architecture: &'a str,
    config: ContainerConfig,
    created: &'a str,
    history: Vec<HistoryJson<'a>>,
    os: &'a str,
    rootfs: RootfsJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

#[derive(Serialize)]
struct ContainerConfig {
    #[serde(rename = "Env")]
    env: Vec<String>,
    #[serde(rename = "Entrypoint", skip_serializing_if = "Option::is_none")]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", skip_serializing_if = "Option::is_none")]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Labels")]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct HistoryJson<'a> {
    created: &'a str,
    created_by: String,
    comment: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    empty_layer: Option<bool>,
}

#[derive(Serialize)]
struct RootfsJson<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct ManifestJson<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: DescriptorJson<'a>,
    layers: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
struct IndexJson<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
struct DescriptorJson<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    size: u64,
    digest: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<PlatformJson<'a>>,
}

#[derive(Serialize)]
struct PlatformJson<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

/// Serializes like NVIDIA's manifests: pretty-printed, 3-space indentation, no final newline.
fn pretty3<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut ser).unwrap();
    out
}

fn make_manifest(media: MediaTypes, config: &Document, layers: &[Layer]) -> Document {
    let manifest = ManifestJson {
        schema_version: 2,
        media_type: media.manifest(),
        config: DescriptorJson {
            media_type: &config.media_type,
            size: config.size(),
            digest: &config.digest,
            platform: None,
        },
        layers: layers
            .iter()
            .map(|l| DescriptorJson {
                media_type: &l.media_type,
                size: l.size,
                digest: &l.digest,
                platform: None,
            })
            .collect(),
    };
    Document::new(media.manifest(), pretty3(&manifest))
}

fn make_index(media: MediaTypes, platforms: &[PlatformImage]) -> Document {
    let index = IndexJson {
        schema_version: 2,
        media_type: media.index(),
        manifests: platforms
            .iter()
            .map(|p| DescriptorJson {
                media_type: &p.manifest.media_type,
                size: p.manifest.size(),
                digest: &p.manifest.digest,
                platform: Some(PlatformJson {
                    architecture: p.arch.name(),
                    os: "linux",
                    variant: p.arch.variant(),
                }),
            })
            .collect(),
    };
    Document::new(media.index(), pretty3(&index))
}

// ---------------------------------------------------------------------------------------------
// Streaming layer writer
// ---------------------------------------------------------------------------------------------

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Passes writes through while hashing and counting them.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Content is generated in blocks of this size, half random, half text.
const BLOCK: usize = 4096;
/// Share of random (incompressible) bytes in file content.
const RANDOM_SHARE: f64 = 0.5;
/// Measured compressed/uncompressed ratio of the text halves at `Compression::fast()`.
const TEXT_RATIO: f64 = 0.42;
/// Tar and gzip overhead per layer and per entry, roughly, once compressed.
const ENTRY_OVERHEAD: u64 = 60;

/// Streams one layer tar through gzip to `<dir>/sha256/<hex>`, hashing both sides.
fn write_layer(
    dir: &Path,
    def: &LayerDef,
    key: &str,
    target: u64,
    vars: &Vars,
) -> io::Result<Layer> {
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    let file = BufWriter::with_capacity(1 << 16, tmp.as_file().try_clone()?);
    let compressed = HashingWriter::new(file);
    // fast(): the content's compressibility is what matters, not the ratio; and it is the
    // cheapest level in unoptimized test builds.
    let gz = GzEncoder::new(compressed, Compression::fast());
    let mut tar = tar::Builder::new(HashingWriter::new(gz));

    let mut rng = Prng::from_key(key);
    // Builds differ in file times even where the content does not (nvidia.conf): so does the
    // same layer of two arches or two rebuilds, as in real images.
    let mtime = MTIME + rng.next_u64() % 86_400;
    for d in def.dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0, mtime);
        tar.append_data(&mut h, vars.expand(d), io::empty())?;
    }
    // Bytes of uncompressed content that should compress to about `target`.
    let entries = (def.dirs.len() + def.files.len()) as u64 + 1;
    let budget = target.saturating_sub(ENTRY_OVERHEAD * entries);
    let per_byte = RANDOM_SHARE + (1.0 - RANDOM_SHARE) * TEXT_RATIO;
    let content = (budget as f64 / per_byte) as u64;
    let total_weight: u64 = def.files.iter().map(|f| f.1).sum();
    for (i, (path, weight)) in def.files.iter().enumerate() {
        let path = vars.expand(path);
        if def.name == "nvidia.conf" {
            // Literal content, as in NVIDIA's Dockerfile.
            let text = b"/usr/local/nvidia/lib\n/usr/local/nvidia/lib64\n";
            let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64, mtime);
            tar.append_data(&mut h, &path, &text[..])?;
            continue;
        }
        let size = content * weight / total_weight;
        let mode = if path.contains(".so") || path.contains("/bin/") || path.ends_with(".sh") {
            0o755
        } else {
            0o644
        };
        let mut h = header(tar::EntryType::Regular, mode, size, mtime);
        let reader = Content::new(Prng(rng.next_u64() ^ i as u64), size);
        tar.append_data(&mut h, &path, reader)?;
    }

    let uncompressed = tar.into_inner()?;
    let (gz, diff_id, uncompressed_size) = uncompressed.finish();
    let compressed = gz.finish()?;
    let (mut file, digest, size) = compressed.finish();
    file.flush()?;
    drop(file);
    let path = dir.join("sha256").join(&digest["sha256:".len()..]);
    // Same key -> same bytes: if another store user already wrote it, keep theirs.
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(Layer {
        number: def.number,
        name: def.name,
        media_type: String::new(),
        digest,
        size,
        diff_id,
        uncompressed_size,
        path,
    })
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

/// `SplitMix64`: a few lines, good enough, and fixed forever (digests depend on it).
struct Prng(u64);

impl Prng {
    /// Seeds from a string with FNV-1a.
    fn from_key(key: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Prng(h)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Words of the compressible part (symbol-table-like text, as in real shared libraries).
const WORDS: [&str; 32] = [
    "cuda",
    "cublas",
    "Lt",
    "Matmul",
    "Algo",
    "Get",
    "Heuristic",
    "nccl",
    "AllReduce",
    "Init",
    "Comm",
    "cusparse",
    "Sp",
    "MV",
    "npp",
    "Resize",
    "Kernel",
    "Launch",
    "Stream",
    "Event",
    "Create",
    "Destroy",
    "Memcpy",
    "Async",
    "Device",
    "Host",
    "_v2",
    "_internal",
    "Handle",
    "Desc",
    "Tensor",
    "Op",
];

/// File content: blocks of random bytes and symbol-table-like text lines.
struct Content {
    rng: Prng,
    remaining: u64,
    block: Vec<u8>,
    pos: usize,
}

impl Content {
    fn new(rng: Prng, size: u64) -> Self {
        Content {
            rng,
            remaining: size,
            block: Vec::with_capacity(BLOCK),
            pos: 0,
        }
    }
    /// Each 4 KiB block is half random bytes, half text, so that every file (and every part of
    /// a big one) compresses alike and sizes are predictable.
    fn refill(&mut self) {
        self.block.clear();
        self.pos = 0;
        while self.block.len() < BLOCK / 2 {
            self.block
                .extend_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        while self.block.len() < BLOCK {
            let r = self.rng.next_u64();
            for i in 0..4 {
                self.block
                    .extend_from_slice(WORDS[((r >> (i * 5)) & 31) as usize].as_bytes());
            }
            self.block.push(b'\n');
        }
        self.block.truncate(BLOCK);
    }
}

impl Read for Content {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        if self.pos == self.block.len() {
            self.refill();
        }
        let n = buf
            .len()
            .min(self.block.len() - self.pos)
            .min(self.remaining.try_into().unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Where shared fixtures live: `target/tmp` (cargo's `CARGO_TARGET_TMPDIR`), found from the
/// running test or example (`target/<profile>/{deps,examples}/NAME`), so tests and the demo
/// share them; the system temp dir if the executable is elsewhere.
fn fixture_root() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("tmp")))
        .filter(|t| {
            t.parent()
                .is_some_and(|target| target.join("CACHEDIR.TAG").exists())
        })
        .unwrap_or_else(std::env::temp_dir)
        .join("cudaimg-fixtures")
}
