//! HTTP/1.1 as the proxy reads and writes it: request heads, body framing, local answers.

use super::*;

/// A request or response head: start line and headers in order.
pub(super) struct Head {
    pub(super) start: String,
    pub(super) headers: Vec<(String, String)>,
}

impl Head {
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a head (up to the empty line). `None` at a clean EOF before any byte.
pub(super) fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut limited = reader.take(MAX_HEAD);
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        if limited.read_until(b'\n', &mut line)? == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "head cut short",
            ));
        }
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF before a request line is allowed (RFC 9112 2.2)
            }
            break;
        }
        lines.push(line);
    }
    let start = lines.remove(0);
    let headers = lines
        .into_iter()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_string(), value.trim().to_string()))
        })
        .collect();
    Ok(Some(Head { start, headers }))
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

pub(super) fn framing(head: &Head, default: Framing) -> Framing {
    if head
        .get("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        Framing::Chunked
    } else if let Some(length) = head.get("content-length").and_then(|v| v.parse().ok()) {
        Framing::Length(length)
    } else {
        default
    }
}

/// Headers that describe one connection, not the message: never forwarded either way.
pub(super) fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Decodes a response body of the given framing, reading no further than its end.
pub(super) struct BodyReader<'a, R> {
    pub(super) inner: &'a mut R,
    pub(super) framing: Framing,
    /// Length: bytes left. Chunked: bytes left in the current chunk.
    pub(super) left: u64,
    pub(super) started: bool,
    pub(super) done: bool,
}

impl<'a, R: BufRead> BodyReader<'a, R> {
    pub(super) fn new(inner: &'a mut R, framing: Framing) -> Self {
        let (left, done) = match framing {
            Framing::None => (0, true),
            Framing::Length(n) => (n, n == 0),
            Framing::Chunked | Framing::Close => (0, false),
        };
        BodyReader {
            inner,
            framing,
            left,
            started: false,
            done,
        }
    }

    pub(super) fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        Read::take(&mut *self.inner, 4096).read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunk framing",
            ));
        }
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    }

    /// Moves to the next chunk; false after the last one (trailers consumed).
    pub(super) fn next_chunk(&mut self) -> io::Result<bool> {
        if self.started {
            self.line()?; // CRLF after the previous chunk's data
        }
        self.started = true;
        let line = self.line()?;
        let size = line.split(';').next().unwrap_or("").trim();
        self.left = u64::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
        if self.left == 0 {
            // Trailers: bounded by the 4 KiB line limit and by the peer ending the response.
            while !self.line()?.is_empty() {}
            return Ok(false);
        }
        Ok(true)
    }
}

impl<R: BufRead> Read for BodyReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.framing == Framing::Close {
            let n = self.inner.read(buf)?;
            self.done = n == 0;
            return Ok(n);
        }
        if self.framing == Framing::Chunked && self.left == 0 && !self.next_chunk()? {
            self.done = true;
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body cut short",
            ));
        }
        self.left -= n as u64;
        if self.framing != Framing::Chunked && self.left == 0 {
            self.done = true;
        }
        Ok(n)
    }
}

/// Copies a request body from client to upstream as it is framed (chunked bytes verbatim).
pub(super) fn copy_request_body(
    reader: &mut BufReader<TcpStream>,
    framing: Framing,
    out: &mut impl Write,
    count: &dyn Fn(u64),
) -> io::Result<()> {
    match framing {
        Framing::None | Framing::Close => Ok(()),
        Framing::Length(n) => copy_counted(reader, n, out, count),
        Framing::Chunked => {
            // Decoded then re-encoded in one chunk per piece: the same body, simpler framing.
            let mut body = BodyReader::new(reader, Framing::Chunked);
            let mut piece = vec![0; PIECE];
            loop {
                let n = body.read(&mut piece)?;
                if n == 0 {
                    return out.write_all(b"0\r\n\r\n");
                }
                count(n as u64);
                write!(out, "{n:x}\r\n")?;
                out.write_all(&piece[..n])?;
                out.write_all(b"\r\n")?;
            }
        }
    }
}

/// Copies a chunked request body to upstream like [`copy_request_body`], but stops once
/// `limit` bytes have passed: `true` when it stopped there (the body was longer).
pub(super) fn copy_chunked_until(
    reader: &mut BufReader<TcpStream>,
    out: &mut impl Write,
    count: &dyn Fn(u64),
    limit: u64,
) -> io::Result<bool> {
    let mut body = BodyReader::new(reader, Framing::Chunked);
    let mut piece = vec![0; PIECE];
    let mut passed = 0u64;
    loop {
        let want = usize::try_from(limit - passed).unwrap_or(PIECE).min(PIECE);
        if want == 0 {
            return Ok(true);
        }
        let n = body.read(&mut piece[..want])?;
        if n == 0 {
            out.write_all(b"0\r\n\r\n")?;
            return Ok(false);
        }
        count(n as u64);
        passed += n as u64;
        write!(out, "{n:x}\r\n")?;
        out.write_all(&piece[..n])?;
        out.write_all(b"\r\n")?;
    }
}

/// `bytes N-M/T` -> N
pub(super) fn content_range_start(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes")?.trim();
    rest.split('-').next()?.trim().parse().ok()
}

/// The target without the CDN signature parameter.
pub(super) fn without_signature(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(SIGNATURE_PARAM))
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

pub(super) fn is_blob_path(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    path.contains("/blobs/") && !path.contains("/blobs/uploads")
}

pub(super) fn basic_matches(authorization: Option<&str>, user: &str, pass: &str) -> bool {
    let Some((scheme, credentials)) = authorization.and_then(|a| a.trim().split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("basic")
        && base64::engine::general_purpose::STANDARD
            .decode(credentials.trim())
            .is_ok_and(|decoded| decoded == format!("{user}:{pass}").as_bytes())
}

pub(super) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected",
    }
}

/// distribution's error body: `{"errors":[{"code":..,"message":..,"detail":null}]}`.
pub(super) fn registry_error(status: u16) -> Vec<u8> {
    let code = match status {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NOT_FOUND",
        429 => "TOOMANYREQUESTS",
        500..=599 => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    let message = format!("{} (injected by FaultProxy)", reason(status).to_lowercase());
    serde_json::to_vec(&serde_json::json!({
        "errors": [{"code": code, "message": message, "detail": null}]
    }))
    .unwrap()
}

/// A response the proxy makes itself.
pub(super) struct Local {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
    pub(super) fault: Option<&'static str>,
}

impl Local {
    pub(super) fn new(
        status: u16,
        content_type: &str,
        body: Vec<u8>,
        fault: Option<&'static str>,
    ) -> Self {
        Local {
            status,
            headers: vec![
                ("Content-Type".into(), content_type.into()),
                (
                    "Docker-Distribution-Api-Version".into(),
                    "registry/2.0".into(),
                ),
            ],
            body,
            fault,
        }
    }
    pub(super) fn error(status: u16, fault: Option<&'static str>) -> Self {
        Local::new(status, "application/json", registry_error(status), fault)
    }
    pub(super) fn header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.into(), value));
        self
    }
}
