//! The HTTP/1.1 of a read-only registry: request heads parsed by `httparse` within fixed
//! bounds, response heads written by hand, and `Range`.
//!
//! Bounds: a head is at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers, and must
//! arrive within the client timeout (the caller's); a request with a body is answered and
//! the connection closed, so no body is ever read or buffered.

use std::fmt::Write as _;

/// The largest request head read; larger is a 431 and the connection closes.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most headers a request may have.
pub const MAX_HEADERS: usize = 64;

/// What the server needs of a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// HTTP/1.0 without `keep-alive`, or `Connection: close`.
    pub close: bool,
    /// `Content-Length` > 0 or any `Transfer-Encoding`: a body this server does not read.
    pub has_body: bool,
    pub range: Option<String>,
    /// `Host`, for the token realm's URL.
    pub host: Option<String>,
    /// `Authorization`, redacted from `Debug`.
    pub authorization: Option<Secret>,
}

/// A credential from a request: its `Debug` prints nothing of it, so no log or panic
/// message can carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete head of `len` bytes.
    Done(Request, usize),
    Partial,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error(
        "the request head is larger than {MAX_HEAD} bytes or has more than {MAX_HEADERS} headers"
    )]
    TooLarge,
    #[error("the request is not HTTP/1.x: {0}")]
    Malformed(String),
}

/// Parses the head at the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Result<Parsed, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        httparse::Status::Partial => return Ok(Parsed::Partial),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let mut close = req.version != Some(1);
    let mut has_body = false;
    let mut range = None;
    let (mut host, mut authorization) = (None, None);
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("connection") {
            let tokens = value.to_ascii_lowercase();
            if tokens.split(',').any(|t| t.trim() == "close") {
                close = true;
            } else if tokens.split(',').any(|t| t.trim() == "keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            has_body |= value != "0";
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            has_body = true;
        } else if h.name.eq_ignore_ascii_case("range") {
            // Two Range headers are one too many: answer the whole blob (RFC 9110 allows
            // ignoring Range) rather than pick one.
            range = if range.is_none() {
                Some(value.to_owned())
            } else {
                Some(String::new())
            };
        } else if h.name.eq_ignore_ascii_case("host") {
            host = Some(value.to_owned());
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(Secret(value.to_owned()));
        }
    }
    Ok(Parsed::Done(
        Request {
            method: req.method.unwrap_or_default().to_owned(),
            target: req.path.unwrap_or_default().to_owned(),
            close,
            has_body,
            range: range.filter(|r| !r.is_empty()),
            host,
            authorization,
        },
        len,
    ))
}

/// A byte range of a blob of known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// No usable `Range`: the whole blob (200).
    Whole,
    /// `start..=end` (206).
    Part(u64, u64),
    /// Cannot be met: inverted, past the end, or not numbers that fit (416).
    Unsatisfiable,
}

/// Reads a `Range` header against a blob of `size` bytes. Only a single `bytes=` range is
/// honoured; another unit or a list is ignored (a 200, as RFC 9110 allows).
// h: the header; a, b: the two ends as written; s, e, n: start, end and suffix length parsed.
#[allow(clippy::many_single_char_names)]
pub fn parse_range(header: Option<&str>, size: u64) -> RangeSpec {
    let Some(h) = header else {
        return RangeSpec::Whole;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeSpec::Whole;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Unsatisfiable;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match num(b) {
            Some(n) if n > 0 && size > 0 => RangeSpec::Part(size.saturating_sub(n), size - 1),
            _ => RangeSpec::Unsatisfiable,
        },
        // `bytes=A-`.
        (false, true) => match num(a) {
            Some(s) if s < size => RangeSpec::Part(s, size - 1),
            _ => RangeSpec::Unsatisfiable,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e && s < size => RangeSpec::Part(s, e.min(size - 1)),
            _ => RangeSpec::Unsatisfiable,
        },
        (true, true) => RangeSpec::Unsatisfiable,
    }
}

/// A response head under construction.
pub struct Head {
    text: String,
}

impl Head {
    pub fn new(status: u16) -> Head {
        let reason = match status {
            200 => "OK",
            206 => "Partial Content",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Content Too Large",
            416 => "Range Not Satisfiable",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Unknown",
        };
        let mut text = format!("HTTP/1.1 {status} {reason}\r\n");
        text.push_str("Docker-Distribution-API-Version: registry/2.0\r\n");
        Head { text }
    }

    pub fn header(mut self, name: &str, value: &str) -> Head {
        // Values are the server's own (digests, media types from the store's manifests,
        // numbers); a CR or LF would split the head, so none passes.
        let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        let _ = write!(self.text, "{name}: {value}\r\n");
        self
    }

    /// The head of a body whose length is not known yet: `Transfer-Encoding: chunked`.
    pub fn finish_chunked(mut self) -> Vec<u8> {
        self.text.push_str("Transfer-Encoding: chunked\r\n\r\n");
        self.text.into_bytes()
    }

    pub fn finish(mut self, content_length: u64, close: bool) -> Vec<u8> {
        let _ = write!(self.text, "Content-Length: {content_length}\r\n");
        if close {
            self.text.push_str("Connection: close\r\n");
        }
        self.text.push_str("\r\n");
        self.text.into_bytes()
    }
}

/// The OCI error body: `{"errors":[{"code":…,"message":…,"detail":…}]}`.
pub fn error_body(code: &str, message: &str, detail: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "errors": [{"code": code, "message": message, "detail": detail}]
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_bounded_and_inverted_or_huge_ones_refused() {
        use RangeSpec::*;
        assert_eq!(parse_range(None, 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Part(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Part(8, 9));
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(
            parse_range(Some("bytes=99999999999999999999999-"), 10),
            Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=0-99999999999999999999999"), 10),
            Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=+1-2"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
    }

    #[test]
    fn a_chunked_head_says_so_and_gives_no_length() {
        let head = Head::new(200)
            .header("A", "b\r\nInjected: yes")
            .finish_chunked();
        let text = String::from_utf8(head).unwrap_or_default();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.ends_with("\r\nA: bInjected: yes\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "{text}"
        );
        assert!(!text.contains("Content-Length"), "{text}");
    }

    #[test]
    fn heads_are_parsed_within_bounds() {
        let ok = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\nGET";
        match parse_head(ok) {
            Ok(Parsed::Done(r, len)) => {
                assert_eq!(len, ok.len() - 3);
                assert_eq!(r.target, "/v2/");
                assert_eq!(r.range.as_deref(), Some("bytes=0-1"));
                assert!(!r.close && !r.has_body);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_head(b"GET /v2/ HTTP/1.1\r\nHo"), Ok(Parsed::Partial));
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse_head(big.as_bytes()), Err(HeadError::TooLarge));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(parse_head(many.as_bytes()), Err(HeadError::TooLarge));
        assert!(matches!(
            parse_head(b"\x00\x01garbage\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        match parse_head(b"PUT /v2/a/manifests/b HTTP/1.0\r\nContent-Length: 5\r\n\r\n") {
            Ok(Parsed::Done(r, _)) => assert!(r.close && r.has_body),
            other => panic!("{other:?}"),
        }
    }
}
