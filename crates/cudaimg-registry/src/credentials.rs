//! Credentials from docker's `config.json`: `auths`, `credsStore` and `credHelpers`,
//! looked up per endpoint host, so a mirror only ever gets its own credentials.
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
