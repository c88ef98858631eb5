//! What each fault does to a request or a response body.

use super::{
    basic_matches, content_range_start, io, is_blob_path, reason, sha256_digest, BufReader, Ending,
    Fault, Framing, HashMap, Head, Local, Read, Shared, TcpStream, Write, CDN_SIGNATURE, PIECE,
};

/// Faults decided on the request alone: a local answer, or the Range to drop.
pub(super) fn request_faults(
    shared: &Shared,
    method: &str,
    target: &str,
    head: &Head,
) -> (Option<Local>, bool) {
    if shared.cdn
        && is_blob_path(target)
        && !target
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|p| p == CDN_SIGNATURE))
    {
        let body =
            b"<Error><Code>AccessDenied</Code><Message>missing or bad signature</Message></Error>";
        return (
            Some(Local::new(403, "application/xml", body.to_vec(), None)),
            false,
        );
    }
    let authorization = head.get("authorization");
    let local = shared.take(|fault| match fault {
        Fault::RequireBasic { user, pass } if !basic_matches(authorization, user, pass) => Some(
            Local::error(401, Some(fault.name()))
                .header("WWW-Authenticate", "Basic realm=\"proxy\"".into()),
        ),
        Fault::Status {
            path_contains,
            status,
            retry_after,
            ..
        } if target.contains(path_contains.as_str()) => {
            let mut local = Local::error(*status, Some(fault.name()));
            if let Some(seconds) = retry_after {
                local = local.header("Retry-After", seconds.to_string());
            }
            Some(local)
        }
        Fault::RedirectBlobs { to } if method == "GET" && is_blob_path(target) => {
            let separator = if target.contains('?') { '&' } else { '?' };
            let location = format!(
                "{}{target}{separator}{CDN_SIGNATURE}",
                to.trim_end_matches('/')
            );
            Some(
                Local::new(307, "text/plain", Vec::new(), Some(fault.name()))
                    .header("Location", location),
            )
        }
        Fault::RedirectWrites {
            method: m,
            path_contains,
            to,
        } if m == method && target.contains(path_contains.as_str()) => Some(
            Local::new(307, "text/plain", Vec::new(), Some(fault.name()))
                .header("Location", format!("{}{target}", to.trim_end_matches('/'))),
        ),
        Fault::ServeManifest {
            path_contains,
            body,
            media_type,
        } if (method == "GET" || method == "HEAD")
            && target.contains("/manifests/")
            && target.contains(path_contains.as_str()) =>
        {
            Some(
                Local::new(200, media_type, body.clone(), Some(fault.name()))
                    .header("Docker-Content-Digest", sha256_digest(body)),
            )
        }
        _ => None,
    });
    if local.is_some() {
        return (local, false);
    }
    let status_on = shared.take_skipping(|fault| match fault {
        Fault::StatusOn {
            method: m,
            path_contains,
            skip,
            status,
            retry_after,
            www_authenticate,
            ..
        } if m == method && target.contains(path_contains.as_str()) => {
            let mut local = Local::error(*status, Some(fault.name()));
            if let Some(seconds) = retry_after {
                local = local.header("Retry-After", seconds.to_string());
            }
            if let Some(challenge) = www_authenticate {
                local = local.header("WWW-Authenticate", challenge.clone());
            }
            Some((*skip, local))
        }
        _ => None,
    });
    if status_on.is_some() {
        return (status_on, false);
    }
    if method == "GET"
        && target
            .split('?')
            .next()
            .unwrap_or("")
            .ends_with("/tags/list")
    {
        let max_page = shared.take(|fault| match fault {
            Fault::PaginateTags { max_page } => Some(*max_page),
            _ => None,
        });
        if let Some(max_page) = max_page {
            return (Some(tag_page(shared, target, max_page)), false);
        }
    }
    let drop_range = head.get("range").is_some()
        && shared
            .take(|fault| match fault {
                Fault::IgnoreRange { path_contains, .. }
                    if target.contains(path_contains.as_str()) =>
                {
                    Some(())
                }
                _ => None,
            })
            .is_some();
    (None, drop_range)
}

/// One page of `target`'s tag list, from upstream's full list (see [`Fault::PaginateTags`]).
pub(super) fn tag_page(shared: &Shared, target: &str, max_page: usize) -> Local {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: HashMap<&str, &str> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    let upstream = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}{path}", shared.upstream))
        .send()
        .unwrap();
    if !upstream.status().is_success() {
        return Local::error(upstream.status().as_u16(), Some("PaginateTags"));
    }
    let full: serde_json::Value = upstream.json().unwrap();
    let mut tags: Vec<String> = full["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    if let Some(last) = params.get("last") {
        tags.retain(|t| t.as_str() > *last);
    }
    let n = params
        .get("n")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(max_page)
        .min(max_page);
    let more = tags.len() > n;
    tags.truncate(n);
    let body = serde_json::json!({ "name": full["name"], "tags": tags });
    let mut local = Local::new(
        200,
        "application/json",
        serde_json::to_vec(&body).unwrap(),
        Some("PaginateTags"),
    );
    if let (true, Some(last)) = (more, tags.last()) {
        local = local.header("Link", format!("<{path}?n={n}&last={last}>; rel=\"next\""));
    }
    local
}

/// Faults applied to a body while it streams: positions in the response body.
#[derive(Default)]
pub(super) struct BodyFaults {
    /// (position, reset)
    pub(super) cut: Option<(u64, bool)>,
    /// (position, seconds)
    pub(super) stall: Option<(u64, u64)>,
    pub(super) flip: Option<u64>,
    /// Bytes to send after the body.
    pub(super) append: Option<u64>,
    pub(super) names: Vec<&'static str>,
}

/// Faults decided once upstream's response head is known (2xx GET bodies only).
pub(super) fn body_faults(
    shared: &Shared,
    target: &str,
    status: u16,
    head: &Head,
    body: Framing,
) -> BodyFaults {
    let mut faults = BodyFaults::default();
    let length = match body {
        Framing::Length(n) => Some(n),
        Framing::None => Some(0),
        Framing::Chunked | Framing::Close => None,
    };
    let within = |position: u64| length.is_none_or(|n| position < n);
    let start = if status == 206 {
        head.get("content-range")
            .and_then(content_range_start)
            .unwrap_or(0)
    } else {
        0
    };
    // A cut and a stall both end the body: only the first applicable of the two fires.
    let ending = shared.take(|fault| match fault {
        Fault::CutAfter {
            path_contains,
            bytes,
            reset,
            ..
        } if target.contains(path_contains.as_str()) && within(*bytes) => {
            Some((fault.name(), Some((*bytes, *reset)), None))
        }
        Fault::Stall {
            path_contains,
            after_bytes,
            for_secs,
            ..
        } if target.contains(path_contains.as_str()) && within(*after_bytes) => {
            Some((fault.name(), None, Some((*after_bytes, *for_secs))))
        }
        _ => None,
    });
    if let Some((name, cut, stall)) = ending {
        faults.names.push(name);
        faults.cut = cut;
        faults.stall = stall;
    }
    faults.flip = shared.take(|fault| match fault {
        Fault::FlipByte {
            path_contains,
            offset,
            ..
        } if target.contains(path_contains.as_str())
            && *offset >= start
            && within(*offset - start) =>
        {
            Some(*offset - start)
        }
        _ => None,
    });
    if faults.flip.is_some() {
        faults.names.push("FlipByte");
    }
    // Only on a body that ends as upstream sent it: after a cut or stall there is no end.
    if faults.cut.is_none() && faults.stall.is_none() {
        faults.append = shared.take(|fault| match fault {
            Fault::AppendBytes {
                path_contains,
                bytes,
                ..
            } if target.contains(path_contains.as_str()) => Some(*bytes),
            _ => None,
        });
        if faults.append.is_some() {
            faults.names.push("AppendBytes");
        }
    }
    faults
}

/// Writes body bytes to the client: throttled, chunk-framed if asked, counted in the record
/// before they are written (so the count is complete once the client has them).
pub(super) struct BodyWriter<'a> {
    pub(super) shared: &'a Shared,
    pub(super) index: usize,
    pub(super) out: &'a TcpStream,
    pub(super) chunked: bool,
}

impl BodyWriter<'_> {
    /// Largest piece to send at once: small under a throttle, so pacing is smooth.
    pub(super) fn piece_size(&self) -> usize {
        match self.shared.throttle() {
            Some(rate) => usize::try_from(rate / 50).unwrap_or(PIECE).clamp(1, PIECE),
            None => PIECE,
        }
    }

    pub(super) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.shared.pace(&self.shared.pacer, bytes.len());
        // Counted first, so that a client holding the bytes finds them counted; taken back if
        // the write fails (the piece may then have arrived in part).
        let n = bytes.len() as u64;
        self.shared.update(self.index, |r| r.body_bytes += n);
        let mut out = self.out;
        let written = if self.chunked {
            write!(out, "{:x}\r\n", bytes.len())
                .and_then(|()| out.write_all(bytes))
                .and_then(|()| out.write_all(b"\r\n"))
        } else {
            out.write_all(bytes)
        };
        if written.is_err() {
            self.shared.update(self.index, |r| r.body_bytes -= n);
        }
        written
    }

    pub(super) fn finish(&mut self) -> io::Result<()> {
        let mut out = self.out;
        if self.chunked {
            out.write_all(b"0\r\n\r\n")?;
        }
        out.flush()
    }
}

/// Copies exactly `n` body bytes, counting them as they arrive.
pub(super) fn copy_counted(
    reader: &mut BufReader<TcpStream>,
    n: u64,
    out: &mut impl Write,
    count: &dyn Fn(u64),
) -> io::Result<()> {
    let mut piece = vec![0; PIECE];
    let mut left = n;
    while left > 0 {
        let want = left.min(PIECE as u64) as usize;
        let got = reader.read(&mut piece[..want])?;
        if got == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "request body"));
        }
        count(got as u64);
        out.write_all(&piece[..got])?;
        left -= got as u64;
    }
    Ok(())
}

/// `location` moved to the origin `to`, path and query kept.
pub(super) fn rewrite_location(location: &str, to: &str) -> String {
    let path = ["http://", "https://"]
        .iter()
        .find_map(|scheme| location.strip_prefix(scheme))
        .map_or(location, |rest| rest.find('/').map_or("/", |i| &rest[i..]));
    format!("{}{path}", to.trim_end_matches('/'))
}

pub(super) fn write_head(
    out: &TcpStream,
    status_line: &str,
    headers: &[(String, String)],
) -> io::Result<()> {
    let mut head = format!("{status_line}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut out = out;
    out.write_all(head.as_bytes())
}

pub(super) fn respond_local(
    shared: &Shared,
    index: usize,
    client: &TcpStream,
    method: &str,
    local: Local,
) -> io::Result<Ending> {
    let mut headers = local.headers;
    headers.push(("Content-Length".into(), local.body.len().to_string()));
    shared.update(index, |r| {
        r.status = Some(local.status);
        r.faults.extend(local.fault);
    });
    write_head(
        client,
        &format!("HTTP/1.1 {} {}", local.status, reason(local.status)),
        &headers,
    )?;
    if method != "HEAD" {
        let mut writer = BodyWriter {
            shared,
            index,
            out: client,
            chunked: false,
        };
        for piece in local.body.chunks(writer.piece_size()) {
            writer.send(piece)?;
        }
        writer.finish()?;
    }
    Ok(Ending::Close)
}
