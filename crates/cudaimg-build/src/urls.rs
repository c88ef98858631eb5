//! The URLs a build is given (`--pip-index-url`, `--apt-mirror`), split into what may be
//! written down and what may not.
//!
//! Whatever becomes a build arg ends up in the image (its history records every arg a `RUN`
//! used, and an `ARG`'s value can become `ENV`), in the `docker build` command line (any
//! user's `ps`) and in the printed plan. So a URL's `user:password@` is taken out here:
//! - [`BuildUrl::public`] (no credentials) is the build arg;
//! - [`BuildUrl::shown`] (`user:***@`) is what plans and messages print;
//! - the credentials reach the build only as `BuildKit` secrets ([`Secret`], mounted for one
//!   `RUN` at `/run/secrets/ID`, never in a layer): the whole index URL for pip, which reads
//!   it from `PIP_INDEX_URL` in that `RUN`'s environment, and an `apt_auth.conf(5)` line for
//!   apt, which reads it through `-o Dir::Etc::netrc=`.
//!
//! The apt mirror is also checked strictly as a URL: the template writes it into apt's
//! sources, where a `#` starts a comment and white space starts another field, so those are
//! refused here rather than handled there.

use url::Url;

/// The secret ids the template mounts (`RUN --mount=type=secret,id=…`).
pub const PIP_SECRET: &str = "cudaimg_pip_index_url";
pub const APT_SECRET: &str = "cudaimg_apt_auth";

/// Why a URL given to the build cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{what} `{shown}` cannot be used: {reason}")]
pub struct UrlError {
    pub what: &'static str,
    /// The input with any password replaced.
    pub shown: String,
    pub reason: String,
    pub hint: String,
}

/// A secret the build needs: its id in the template and its content. The content never
/// reaches a build arg, a command line, a plan or a `Debug` print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub id: &'static str,
    pub value: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}, {} bytes)", self.id, self.value.len())
    }
}

/// A URL given to the build, credentials held apart.
#[derive(Clone)]
pub struct BuildUrl {
    /// Without `user:password@`: the build arg.
    pub public: String,
    /// With the password as `***`: for plans and messages.
    pub shown: String,
    /// As given, credentials included (pip's secret; the index read before the build).
    full: String,
    /// User and password, percent-decoded (apt's netrc wants them as they are).
    login: Option<(String, String)>,
    /// `scheme://host[:port]/path` without credentials, for apt's `machine` line.
    machine: String,
}

impl std::fmt::Debug for BuildUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BuildUrl({})", self.shown)
    }
}

/// `input` with any password replaced by `***`, for messages about URLs that may not even
/// parse (the userinfo is what precedes the last `@` of the authority).
pub fn redacted(input: &str) -> String {
    let Some((scheme, rest)) = input.split_once("://") else {
        return input.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let password = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{password}@{host}{}", &rest[end..])
        }
        None => input.to_owned(),
    }
}

fn percent_decoded(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl BuildUrl {
    fn parse(what: &'static str, input: &str, hint: &str) -> Result<BuildUrl, UrlError> {
        let err = |reason: String| UrlError {
            what,
            shown: printable(&redacted(input)),
            reason,
            hint: hint.to_owned(),
        };
        if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(format!(
                "it holds `{}`: a URL has no white space or control characters (percent-encode \
                 them: `%20`)",
                c.escape_debug()
            )));
        }
        let url = Url::parse(input).map_err(|e| err(format!("it is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err(format!(
                "the scheme `{}` is not http or https",
                url.scheme()
            )));
        }
        let Some(host) = url.host_str() else {
            return Err(err("it names no host".into()));
        };
        let login = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            Some((
                percent_decoded(url.username()),
                percent_decoded(url.password().unwrap_or_default()),
            ))
        };
        let mut public = url.clone();
        // Infallible for http(s) URLs with a host, which this is.
        let _ = public.set_username("");
        let _ = public.set_password(None);
        let shown = match &login {
            Some(_) => {
                let mut s = url.clone();
                if url.password().is_some() {
                    let _ = s.set_password(Some("***"));
                }
                s.to_string()
            }
            None => public.to_string(),
        };
        let machine = format!(
            "{}://{host}{}{}",
            url.scheme(),
            url.port().map_or_else(String::new, |p| format!(":{p}")),
            url.path()
        );
        Ok(BuildUrl {
            public: public.to_string(),
            shown,
            full: input.to_owned(),
            login,
            machine,
        })
    }

    /// `--pip-index-url`: an http(s) URL; its credentials become pip's secret.
    pub fn pip_index(input: &str) -> Result<BuildUrl, UrlError> {
        BuildUrl::parse(
            "the pip index",
            input,
            "give the index as http(s)://[USER:PASSWORD@]HOST[:PORT]/PATH, e.g. \
             `https://pypi.corp.example/simple`; its credentials reach pip as a BuildKit secret",
        )
    }

    /// `--apt-mirror`: an http(s) URL with no query or fragment (apt's sources would read
    /// a `#` as a comment); its credentials become apt's secret.
    pub fn apt_mirror(input: &str) -> Result<BuildUrl, UrlError> {
        let hint = "give the mirror as http(s)://[USER:PASSWORD@]HOST[:PORT]/PATH, e.g. \
                    `http://mirror.corp.example/ubuntu`; its credentials reach apt as a BuildKit \
                    secret";
        let u = BuildUrl::parse("the apt mirror", input, hint)?;
        let parsed = Url::parse(input).ok();
        let bad = |reason: &str| UrlError {
            what: "the apt mirror",
            shown: u.shown.clone(),
            reason: reason.to_owned(),
            hint: hint.to_owned(),
        };
        if parsed.as_ref().is_some_and(|p| p.fragment().is_some()) {
            return Err(bad(
                "it has a fragment (`#…`): apt's sources would read it as a comment",
            ));
        }
        if parsed.as_ref().is_some_and(|p| p.query().is_some()) {
            return Err(bad(
                "it has a query (`?…`): apt appends `dists/…` to a mirror's path, so a query \
                 cannot name a mirror",
            ));
        }
        if let Some((user, password)) = &u.login {
            // apt_auth.conf(5) is a netrc: white space separates its tokens, with no quoting.
            if user.contains(char::is_whitespace) || password.contains(char::is_whitespace) {
                return Err(bad(
                    "its user or password holds white space once percent-decoded, which apt's \
                     auth.conf cannot express",
                ));
            }
        }
        Ok(u)
    }

    /// Whether it carries credentials (which then need a `BuildKit` secret).
    pub fn has_credentials(&self) -> bool {
        self.login.is_some()
    }

    /// As given, credentials included: only for cudaimg's own request to the index.
    pub fn full(&self) -> &str {
        &self.full
    }

    /// The host as written (`127.0.0.1`, `[::1]`, `pypi.corp.example`) and the port.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let url = Url::parse(&self.public).ok()?;
        Some((url.host_str()?.to_owned(), url.port_or_known_default()?))
    }

    /// pip's secret: the whole index URL, when it has credentials.
    pub fn pip_secret(&self) -> Option<Secret> {
        self.login.as_ref().map(|_| Secret {
            id: PIP_SECRET,
            value: self.full.clone(),
        })
    }

    /// apt's secret: one `apt_auth.conf(5)` entry for the mirror, when it has credentials.
    /// The protocol is written out: without it, apt uses an entry for https only.
    pub fn apt_secret(&self) -> Option<Secret> {
        self.login.as_ref().map(|(user, password)| Secret {
            id: APT_SECRET,
            value: format!(
                "machine {} login {user} password {password}\n",
                self.machine
            ),
        })
    }
}

/// Control characters are refused before anything is printed, and the rest is printable:
/// this keeps the message on one line when the URL did not even parse.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_held_apart() {
        let u = BuildUrl::pip_index("http://al%40ice:s3cr%2Ft@127.0.0.1:8080/simple/").unwrap();
        assert_eq!(u.public, "http://127.0.0.1:8080/simple/");
        assert_eq!(u.shown, "http://al%40ice:***@127.0.0.1:8080/simple/");
        assert!(!format!("{u:?}").contains("s3cr"));
        assert_eq!(u.pip_secret().unwrap().value, u.full());
        let a = BuildUrl::apt_mirror("http://al%40ice:s3cr%2Ft@m.example/a&b/ubuntu").unwrap();
        assert_eq!(a.public, "http://m.example/a&b/ubuntu");
        assert_eq!(
            a.apt_secret().unwrap().value,
            "machine http://m.example/a&b/ubuntu login al@ice password s3cr/t\n"
        );
        assert!(!format!("{:?}", a.apt_secret()).contains("s3cr"));
    }

    #[test]
    fn an_apt_mirror_is_a_plain_url() {
        for bad in [
            "http://m/ubuntu#g; e id >&2 #",
            "http://m/ubuntu?x=1",
            "http://m/ub untu",
            "ftp://m/ubuntu",
            "m/ubuntu",
            "http://u:p%20q@m/ubuntu",
        ] {
            let e = BuildUrl::apt_mirror(bad).unwrap_err();
            assert!(!e.to_string().contains("p%20q"), "{e}");
        }
        assert_eq!(
            redacted("http://u:pw@h/x@y"),
            "http://u:***@h/x@y",
            "only the authority's userinfo"
        );
    }
}
