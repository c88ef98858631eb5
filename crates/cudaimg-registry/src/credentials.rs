//! Credentials from docker's `config.json`: `auths`, `credsStore` and `credHelpers`,
//! looked up per endpoint host, so a mirror only ever gets its own credentials; and stored
//! there by `cudaimg login` ([`store`]) as `docker login` stores them.
//!
//! The secret material never reaches `Debug`, `Display`, logs or errors.

use std::fmt;

use docker_credential::{CredentialRetrievalError, DockerCredential};

#[derive(Clone)]
pub enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An `OAuth2` refresh token, as `docker login` stores for some registries.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => {
                write!(f, "Basic({username}, <redacted>)")
            }
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// The key docker uses for a host in `config.json`.
fn docker_key(host: &str) -> String {
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://index.docker.io/v1/".to_owned()
        }
        other => other.to_owned(),
    }
}

/// Looks up credentials for `host` (`host[:port]`). `Ok(None)` means anonymous.
///
/// Helpers are separate processes, so this blocks; callers run it off the async threads.
pub fn lookup(host: &str) -> Result<Option<Credential>, String> {
    match docker_credential::get_credential(&docker_key(host)) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credential::Basic { username, password }))
        }
        Ok(DockerCredential::IdentityToken(t)) => Ok(Some(Credential::IdentityToken(t))),
        Err(
            CredentialRetrievalError::NoCredentialConfigured
            | CredentialRetrievalError::ConfigNotFound
            | CredentialRetrievalError::ConfigReadError,
        ) => Ok(None),
        // Helpers report a missing entry as a failure with this conventional text.
        Err(CredentialRetrievalError::HelperFailure { stdout, .. })
            if stdout.contains("credentials not found") =>
        {
            Ok(None)
        }
        // Only the helper's name: its output could hold secrets.
        Err(CredentialRetrievalError::HelperFailure { helper, .. }) => {
            Err(format!("credential helper `{helper}` failed"))
        }
        Err(CredentialRetrievalError::HelperCommunicationError) => Err(
            "a credential helper named in docker's config.json could not be run; is it on PATH?"
                .to_owned(),
        ),
        Err(CredentialRetrievalError::MalformedHelperResponse) => {
            Err("a credential helper answered with malformed JSON".to_owned())
        }
        Err(CredentialRetrievalError::CredentialDecodingError) => Err(
            "an `auth` entry in docker's config.json is not valid base64 `user:password`"
                .to_owned(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

/// Where docker keeps its configuration: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`.
pub fn docker_config_path() -> Option<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(std::path::PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| {
        std::path::PathBuf::from(h)
            .join(".docker")
            .join("config.json")
    })
}

/// Where [`store`] put a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// In `config.json`'s `auths`, at this path.
    File(std::path::PathBuf),
    /// Through the credential helper `docker-credential-NAME` that `config.json` names
    /// for the host (`credHelpers`) or for all hosts (`credsStore`).
    Helper(String),
}

/// Stores `username`/`password` for `host` as `docker login` does: through the credential
/// helper docker's `config.json` names for it, if any, else base64 in its `auths` (the file
/// rewritten whole by rename, mode 0600, its other keys kept). Errors never hold the secret.
pub fn store(host: &str, username: &str, password: &str) -> Result<Stored, String> {
    use base64::Engine as _;
    // `auth` is base64 of `user:password`, split at the first `:` by every reader (docker,
    // skopeo, containerd, cudaimg): a user name with `:` would read back as another user.
    if username.contains(':') {
        return Err(
            "a user name with `:` cannot be stored: docker's config.json keeps `user:password` \
             and readers split it at the first `:` (use the registry's token user, or `--creds`)"
                .into(),
        );
    }
    let (path, mut config) = read_config()?;
    let key = docker_key(host);
    let helper = helper_for(&config, host, &key);
    if let Some(helper) = helper {
        store_with_helper(&helper, &key, username, password)?;
        return Ok(Stored::Helper(helper));
    }
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let auths = config
        .entry("auths")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    let Some(auths) = auths.as_object_mut() else {
        return Err(format!(
            "`auths` in {} is not an object; fix or move the file",
            path.display()
        ));
    };
    auths.insert(key, serde_json::json!({ "auth": auth }));
    let text = serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?;
    cudaimg_static::regular::replace(&path, &text, 0o600).map_err(|e| e.to_string())?;
    Ok(Stored::File(path))
}

/// What [`erase`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erased {
    /// The `auths` entry of `config.json`, at this path.
    File(std::path::PathBuf),
    /// Through the credential helper `docker-credential-NAME erase`.
    Helper(String),
    /// `config.json` held no credential for the host (nothing was written).
    Nothing(std::path::PathBuf),
}

/// Removes the credential for `host` as `docker logout` does: through its credential helper,
/// else from `auths` (the file rewritten by rename, its other keys kept).
pub fn erase(host: &str) -> Result<Erased, String> {
    let (path, mut config) = read_config()?;
    let key = docker_key(host);
    if let Some(helper) = helper_for(&config, host, &key) {
        tell_helper(&helper, "erase", key.as_bytes())?;
        return Ok(Erased::Helper(helper));
    }
    let removed = config
        .get_mut("auths")
        .and_then(serde_json::Value::as_object_mut)
        .is_some_and(|auths| {
            // Docker Hub is written under its legacy URL key; older files use the host.
            let a = auths.remove(&key).is_some();
            let b = auths.remove(host).is_some();
            a || b
        });
    if !removed {
        return Ok(Erased::Nothing(path));
    }
    let text = serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?;
    cudaimg_static::regular::replace(&path, &text, 0o600).map_err(|e| e.to_string())?;
    Ok(Erased::File(path))
}

/// docker's `config.json` as an object (empty when missing), and where it is.
fn read_config() -> Result<
    (
        std::path::PathBuf,
        serde_json::Map<String, serde_json::Value>,
    ),
    String,
> {
    let path = docker_config_path()
        .ok_or("neither DOCKER_CONFIG nor HOME is set: there is no docker config.json to write")?;
    let config =
        match cudaimg_static::regular::read_capped(&path, cudaimg_static::regular::MAX_TEXT_FILE) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => serde_json::Map::new(),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{} is not a JSON object ({e}); fix or move it",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Map::new(),
            Err(e) => return Err(e.to_string()),
        };
    Ok((path, config))
}

/// The credential helper `config.json` names for the host (`credHelpers`), else for every
/// host (`credsStore`).
fn helper_for(
    config: &serde_json::Map<String, serde_json::Value>,
    host: &str,
    key: &str,
) -> Option<String> {
    config
        .get("credHelpers")
        .and_then(|h| h.get(key).or_else(|| h.get(host)))
        .or_else(|| config.get("credsStore"))
        .and_then(serde_json::Value::as_str)
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

/// `docker-credential-NAME store`, the credential on its stdin as the helper protocol says.
fn store_with_helper(
    helper: &str,
    key: &str,
    username: &str,
    password: &str,
) -> Result<(), String> {
    let body = serde_json::json!({ "ServerURL": key, "Username": username, "Secret": password });
    tell_helper(helper, "store", body.to_string().as_bytes())
}

/// `docker-credential-NAME VERB` with `input` on its stdin (the helper protocol's `store`
/// and `erase`), its output discarded: only its exit status is reported, since its output
/// could hold the secret.
fn tell_helper(helper: &str, verb: &str, input: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    let program = format!("docker-credential-{helper}");
    let mut child = std::process::Command::new(&program)
        .arg(verb)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run `{program}` (docker's config.json names it): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| format!("cannot talk to `{program}`: {e}"))?;
    }
    let status = child
        .wait()
        .map_err(|e| format!("`{program}` failed: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {verb}` failed ({status})"))
    }
}

#[cfg(test)]
// Tests: std::fs is fine where a failure stops the test with its own message.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let t = Credential::IdentityToken("tok-123".into());
        assert!(!format!("{t:?}").contains("tok-123"));
    }

    #[test]
    fn docker_hub_uses_dockers_own_key() {
        assert_eq!(docker_key("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(
            docker_key("registry-1.docker.io"),
            "https://index.docker.io/v1/"
        );
        assert_eq!(docker_key("nvcr.io"), "nvcr.io");
    }
}
