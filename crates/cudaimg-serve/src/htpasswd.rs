//! An htpasswd file, as `htpasswd -B` writes it and Debian's distribution registry reads it:
//! one `user:HASH` a line, bcrypt hashes only (`$2y$`, `$2b$`, `$2a$`), `#` comments and
//! blank lines skipped. Any other line is an error naming the file and the line, at start,
//! so a typo is found when `serve` starts, not when a node first fails to log in.
//!
//! The file is read once: a changed file takes a restart, as distribution's does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Why an htpasswd file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("cannot read the htpasswd file `{}`: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("`{}` line {line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
        /// The hash is of a kind other than bcrypt (MD5, SHA-1, crypt).
        not_bcrypt: bool,
    },
    #[error("`{}` names no user", path.display())]
    Empty { path: PathBuf },
}

impl HtpasswdError {
    pub fn hint(&self) -> String {
        match self {
            HtpasswdError::Line {
                not_bcrypt: true, ..
            } => "serve reads bcrypt hashes only, as distribution does: `htpasswd -B FILE USER` \
                  writes one"
                .into(),
            _ => "each line is `USER:HASH` with a bcrypt hash; `htpasswd -B -c FILE USER` \
                  creates such a file"
                .into(),
        }
    }
}

/// The users of an htpasswd file and their bcrypt hashes.
#[derive(Clone)]
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Htpasswd {
    /// Reads and checks `path` (a regular file of bounded size: a FIFO or `/dev/zero` is
    /// refused, not read until memory runs out).
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let bytes =
            cudaimg_static::regular::read_capped(path, cudaimg_static::regular::MAX_TEXT_FILE)
                .map_err(|e| HtpasswdError::Read {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
        let text = String::from_utf8(bytes).map_err(|_| HtpasswdError::Read {
            path: path.to_owned(),
            reason: "it is not UTF-8 text".into(),
        })?;
        Self::parse(&text)
            .map_err(|(line, reason, not_bcrypt)| HtpasswdError::Line {
                path: path.to_owned(),
                line,
                reason,
                not_bcrypt,
            })?
            .ok_or_else(|| HtpasswdError::Empty {
                path: path.to_owned(),
            })
    }

    /// `None` when no line names a user; `Err((line, reason, not_bcrypt))` for a bad line.
    pub(crate) fn parse(text: &str) -> Result<Option<Htpasswd>, (usize, String, bool)> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let Some((user, hash)) = line.split_once(':') else {
                return Err((n, "no `:` between the user and the hash".into(), false));
            };
            if user.is_empty() {
                return Err((n, "the user name is empty".into(), false));
            }
            let shown = cudaimg_oci::text::shown(user);
            if !hash.starts_with("$2") {
                let kind = if hash.starts_with("$apr1$") {
                    "an Apache MD5 hash"
                } else if hash.starts_with("{SHA}") {
                    "a SHA-1 hash"
                } else {
                    "not a bcrypt hash"
                };
                return Err((n, format!("the password of `{shown}` is {kind}"), true));
            }
            if bcrypt::HashParts::from_str(hash).is_err() {
                return Err((
                    n,
                    format!("the bcrypt hash of `{shown}` is malformed"),
                    false,
                ));
            }
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err((n, format!("`{shown}` is named twice"), false));
            }
        }
        Ok((!users.is_empty()).then_some(Htpasswd { users }))
    }

    pub fn has(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Whether `password` is `user`'s. Slow on purpose (bcrypt): call it off the async
    /// threads. An unknown user costs the same as a known one, so timing does not tell
    /// which names exist.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        if let Some(hash) = self.users.get(user) {
            return bcrypt::verify(password, hash).unwrap_or(false);
        }
        // Some user's hash, whose answer is ignored: the same cost as a real check.
        if let Some(hash) = self.users.values().next() {
            let _ = bcrypt::verify(password, hash);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, pass: &str, version: bcrypt::Version) -> String {
        let parts = bcrypt::hash_with_result(pass, 4).map_err(|e| e.to_string());
        format!(
            "{user}:{}",
            parts
                .unwrap_or_else(|e| panic!("{e}"))
                .format_for_version(version)
        )
    }

    #[test]
    fn bcrypt_lines_of_every_version_verify_and_others_do_not() {
        let text = format!(
            "# site users\n\n{}\n{}\n",
            entry("alice", "wonder land", bcrypt::Version::TwoY),
            entry("bob", "builder", bcrypt::Version::TwoB),
        );
        let h = Htpasswd::parse(&text).ok().flatten().expect("two users");
        assert!(h.verify("alice", "wonder land"));
        assert!(h.verify("bob", "builder"));
        assert!(!h.verify("alice", "builder"));
        assert!(!h.verify("carol", "wonder land"));
        assert!(h.has("bob") && !h.has("carol"));
    }

    #[test]
    fn bad_lines_are_named_by_number_and_reason() {
        let good = entry("alice", "x", bcrypt::Version::TwoY);
        for (text, line, reason, not_bcrypt) in [
            (format!("{good}\nbob\n"), 2, "no `:`", false),
            (
                format!("{good}\n\nbob:$apr1$abc$def\n"),
                3,
                "Apache MD5",
                true,
            ),
            (format!("bob:{{SHA}}abc=\n{good}"), 1, "SHA-1", true),
            (format!("bob:plain\n{good}"), 1, "not a bcrypt", true),
            (format!("{good}\nbob:$2y$05$short\n"), 2, "malformed", false),
            (format!("{good}\n{good}\n"), 2, "named twice", false),
            (format!(":{}\n", &good[6..]), 1, "empty", false),
        ] {
            match Htpasswd::parse(&text) {
                Err((n, why, b)) => {
                    assert_eq!(n, line, "{text}: {why}");
                    assert!(why.contains(reason), "{text}: {why}");
                    assert_eq!(b, not_bcrypt, "{text}");
                }
                Ok(_) => panic!("accepted: {text}"),
            }
        }
        assert!(matches!(Htpasswd::parse("# nobody\n\n"), Ok(None)));
    }
}
