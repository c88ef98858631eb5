//! The seed tutorial's three ways to run a CUDA image, written out for a stored image pinned
//! by digest:
//!
//! - `quick`: an interactive test that the GPU is visible (`docker run --rm -it --gpus all
//!   IMAGE nvidia-smi`);
//! - `workdir`: a long-lived container with the current directory mounted as its work
//!   directory, a name and a restart policy;
//! - `compose`: the same as a `docker-compose.yml` service, with the current GPU syntax
//!   (`deploy.resources.reservations.devices`, `driver: nvidia`, `capabilities: [gpu]`), not
//!   the legacy `runtime: nvidia`.
//!
//! Every value that reaches the output is validated or quoted, so the text is safe to paste
//! into a shell or a YAML file.

use std::fmt;
use std::str::FromStr;

/// Which scenario to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Quick,
    Workdir,
    Compose,
}

/// Which GPUs the container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpus {
    All,
    /// That many GPUs, whichever they are.
    Count(u32),
    /// These GPUs, by index (`0`) or UUID (`GPU-…`, `MIG-…`).
    Devices(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a GPU selection: write `all`, a count (`2`), or device indexes or UUIDs (`0,1`, `device=1`, `GPU-…`)")]
pub struct GpusError(String);

impl FromStr for Gpus {
    type Err = GpusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || GpusError(s.to_owned());
        if s == "all" {
            return Ok(Gpus::All);
        }
        let (explicit, list) = match s.strip_prefix("device=") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if !explicit && !list.contains(',') && list.bytes().all(|b| b.is_ascii_digit()) {
            // Docker's `--gpus 2`: a count.
            return match list.parse::<u32>() {
                Ok(n) if (1..=1024).contains(&n) => Ok(Gpus::Count(n)),
                _ => Err(err()),
            };
        }
        let ids: Vec<String> = list.split(',').map(str::to_owned).collect();
        let valid = |id: &String| {
            !id.is_empty()
                && id != "all"
                && id.len() <= 80
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/'))
        };
        if ids.is_empty() || !ids.iter().all(valid) {
            return Err(err());
        }
        Ok(Gpus::Devices(ids))
    }
}

impl fmt::Display for Gpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gpus::All => f.write_str("all"),
            Gpus::Count(n) => write!(f, "{n}"),
            Gpus::Devices(ids) => write!(f, "device={}", ids.join(",")),
        }
    }
}

/// A container name Docker accepts: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    s.len() <= 128
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A restart policy Docker and compose accept.
pub fn valid_restart(s: &str) -> bool {
    match s.strip_prefix("on-failure:") {
        Some(n) => !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()),
        None => matches!(s, "no" | "always" | "unless-stopped" | "on-failure"),
    }
}

/// What to write.
#[derive(Debug, Clone)]
pub struct Spec {
    /// `nvidia/cuda:TAG@sha256:…` (validated by the reference parser).
    pub image: String,
    pub gpus: Gpus,
    pub name: Option<String>,
    pub restart: String,
    /// The host directory mounted at `/workspace`: `None` for the current one.
    pub host_dir: Option<String>,
    /// The image has `nvcc` (devel); otherwise the output says where to get it.
    pub nvcc: Option<bool>,
    /// The tag of the devel flavor, for that note.
    pub devel_tag: Option<String>,
    /// A comment on how `image` is pinned (e.g. by tag, with the image ID it names), put
    /// before the command or the service, where it travels with what is pasted.
    pub pin_note: Option<String>,
}

/// Where the container's work directory is.
const WORKSPACE: &str = "/workspace";

/// A word safe for a POSIX shell: as is when it is plain, else single-quoted.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'/' | b'.' | b'_' | b'-' | b':' | b'@' | b'=' | b',')
        })
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A YAML double-quoted scalar: a JSON string is one.
fn yaml_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn gpus_flag(g: &Gpus) -> String {
    match g {
        Gpus::All => "--gpus all".into(),
        Gpus::Count(n) => format!("--gpus {n}"),
        // The CLI splits the value at commas unless the whole is quoted for it.
        Gpus::Devices(ids) if ids.len() == 1 => format!("--gpus device={}", ids[0]),
        Gpus::Devices(ids) => format!("--gpus '\"device={}\"'", ids.join(",")),
    }
}

fn nvcc_note(spec: &Spec) -> Option<String> {
    match (spec.nvcc, &spec.devel_tag) {
        (Some(false), Some(devel)) => Some(format!(
            "# no nvcc in this image (a base or runtime flavor): to compile CUDA code use the `{devel}` tag"
        )),
        (Some(false), None) => {
            Some("# no nvcc in this image: compile CUDA code in a devel image".into())
        }
        _ => None,
    }
}

/// The `docker run` command (and follow-up lines as comments) for `quick` or `workdir`.
pub fn docker_run(spec: &Spec, scenario: Scenario) -> String {
    let mut out = Vec::new();
    let gpus = gpus_flag(&spec.gpus);
    let image = shell_word(&spec.image);
    if let Some(pin) = &spec.pin_note {
        out.push(format!("# {pin}"));
    }
    match scenario {
        Scenario::Quick => {
            out.push(
                "# quick test: the container lists the GPUs it sees, then is removed; drop \
                 `nvidia-smi` for a shell"
                    .to_owned(),
            );
            let name = spec
                .name
                .as_deref()
                .map(|n| format!(" --name {}", shell_word(n)))
                .unwrap_or_default();
            out.push(format!(
                "docker run --rm -it{name} {gpus} {image} nvidia-smi"
            ));
        }
        Scenario::Workdir | Scenario::Compose => {
            let name = spec.name.clone().unwrap_or_else(|| "cuda-work".into());
            let dir = match &spec.host_dir {
                Some(d) => shell_word(d),
                None => "\"$PWD\"".into(),
            };
            out.push(format!(
                "# work container: {} on the host is {WORKSPACE} inside; it keeps running (and restarts: {})",
                spec.host_dir.as_deref().unwrap_or("the current directory"),
                spec.restart
            ));
            out.push(format!(
                "docker run -d --name {} {gpus} --restart {} \\",
                shell_word(&name),
                spec.restart
            ));
            out.push(format!("  -v {dir}:{WORKSPACE} -w {WORKSPACE} \\"));
            out.push(format!("  {image} \\"));
            out.push("  sleep infinity".into());
            out.push(format!(
                "# then: docker exec -it {} bash",
                shell_word(&name)
            ));
        }
    }
    out.extend(nvcc_note(spec));
    out.join("\n") + "\n"
}

/// The `docker-compose.yml` for `compose`.
pub fn compose(spec: &Spec) -> String {
    let mut y = Vec::new();
    y.push("# docker compose up -d; then: docker compose exec cuda bash".to_owned());
    y.extend(nvcc_note(spec));
    y.push("services:".into());
    y.push("  cuda:".into());
    if let Some(pin) = &spec.pin_note {
        y.push(format!("    # {pin}"));
    }
    y.push(format!("    image: {}", yaml_str(&spec.image)));
    if let Some(n) = &spec.name {
        y.push(format!("    container_name: {}", yaml_str(n)));
    }
    y.push("    command: [\"sleep\", \"infinity\"]".into());
    y.push(format!("    working_dir: {}", yaml_str(WORKSPACE)));
    y.push("    volumes:".into());
    let dir = spec.host_dir.as_deref().unwrap_or("./work");
    y.push(format!(
        "      - {}",
        yaml_str(&format!("{dir}:{WORKSPACE}"))
    ));
    y.push(format!("    restart: {}", yaml_str(&spec.restart)));
    y.push("    deploy:".into());
    y.push("      resources:".into());
    y.push("        reservations:".into());
    y.push("          devices:".into());
    y.push("            - driver: nvidia".into());
    match &spec.gpus {
        Gpus::All => y.push("              count: all".into()),
        Gpus::Count(n) => y.push(format!("              count: {n}")),
        Gpus::Devices(ids) => {
            let ids: Vec<String> = ids.iter().map(|i| yaml_str(i)).collect();
            y.push(format!("              device_ids: [{}]", ids.join(", ")));
        }
    }
    y.push("              capabilities: [gpu]".into());
    y.join("\n") + "\n"
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    const IMAGE: &str = "nvidia/cuda:12.4.1-runtime-ubuntu22.04@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn spec(gpus: &str) -> Spec {
        Spec {
            image: IMAGE.into(),
            gpus: gpus.parse().expect("gpus"),
            name: None,
            restart: "unless-stopped".into(),
            host_dir: None,
            nvcc: Some(false),
            devel_tag: Some("12.4.1-devel-ubuntu22.04".into()),
            pin_note: None,
        }
    }

    #[test]
    fn gpu_selections() {
        assert_eq!("all".parse(), Ok(Gpus::All));
        assert_eq!("2".parse(), Ok(Gpus::Count(2)));
        assert_eq!(
            "0,1".parse(),
            Ok(Gpus::Devices(vec!["0".into(), "1".into()]))
        );
        assert_eq!("device=1".parse(), Ok(Gpus::Devices(vec!["1".into()])));
        assert_eq!(
            "GPU-8f1c0b2a-1d2e-4f3a-9b8c-7d6e5f4a3b2c"
                .parse::<Gpus>()
                .map(|g| g.to_string()),
            Ok("device=GPU-8f1c0b2a-1d2e-4f3a-9b8c-7d6e5f4a3b2c".into())
        );
        for bad in ["0", "", "1,,2", "x y", "$(rm -rf /)", "'", "all,1"] {
            assert!(bad.parse::<Gpus>().is_err(), "{bad}");
        }
    }

    #[test]
    fn quick_is_the_seed_test() {
        let out = docker_run(&spec("all"), Scenario::Quick);
        assert!(
            out.contains(&format!(
                "docker run --rm -it --gpus all {IMAGE} nvidia-smi\n"
            )),
            "{out}"
        );
        assert!(out.contains("12.4.1-devel-ubuntu22.04"), "{out}");
        let out = docker_run(&spec("0,1"), Scenario::Quick);
        assert!(out.contains(r#"--gpus '"device=0,1"'"#), "{out}");
    }

    #[test]
    fn workdir_mounts_the_current_directory() {
        let out = docker_run(&spec("2"), Scenario::Workdir);
        assert!(
            out.contains("docker run -d --name cuda-work --gpus 2 --restart unless-stopped \\"),
            "{out}"
        );
        assert!(
            out.contains(r#"-v "$PWD":/workspace -w /workspace \"#),
            "{out}"
        );
        assert!(out.contains("sleep infinity"), "{out}");
        let mut s = spec("all");
        s.host_dir = Some("/data/my work's".into());
        let out = docker_run(&s, Scenario::Workdir);
        assert!(out.contains(r"-v '/data/my work'\''s':/workspace"), "{out}");
    }

    #[test]
    fn compose_uses_device_reservations() {
        let y = compose(&spec("all"));
        assert!(y.contains(&format!("    image: \"{IMAGE}\"")), "{y}");
        assert!(y.contains("            - driver: nvidia\n              count: all\n              capabilities: [gpu]\n"), "{y}");
        assert!(!y.contains("runtime: nvidia"));
        let y = compose(&spec("0,1"));
        assert!(y.contains(r#"device_ids: ["0", "1"]"#), "{y}");
        let y = compose(&spec("3"));
        assert!(y.contains("count: 3"), "{y}");
    }

    #[test]
    fn names_and_restart_policies() {
        assert!(valid_name("cuda-work"));
        assert!(valid_name("a.b_c-1"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(""));
        assert!(valid_restart("unless-stopped"));
        assert!(valid_restart("on-failure:3"));
        assert!(!valid_restart("on-failure:"));
        assert!(!valid_restart("sometimes"));
    }
}
