//! One request through the proxy: read it, decide its faults, relay it upstream (or answer
//! locally), and relay the response with the body faults applied.

use super::{
    body_faults, copy_chunked_until, copy_counted, copy_request_body, framing, hop_by_hop, io,
    read_head, request_faults, respond_local, rewrite_location, thread, without_signature,
    write_head, BodyFaults, BodyReader, BodyWriter, BufReader, Duration, Ending, Fault, Framing,
    Instant, Local, ProxyRequest, Read, Shared, Shutdown, TcpStream, Write, CONNECT_TIMEOUT,
    IO_TIMEOUT, PIECE, RESET_GRACE,
};

pub(super) fn handle(shared: &Shared, connection: u64, client: &TcpStream) -> io::Result<Ending> {
    let mut reader = BufReader::new(client.try_clone()?);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(Ending::Close);
    };
    let mut start = head.start.split_whitespace();
    let method = start.next().unwrap_or("").to_string();
    let mut target = start.next().unwrap_or("/").to_string();
    // Absolute form (a client using us as its HTTP proxy): keep path and query.
    if let Some(rest) = target.strip_prefix("http://") {
        target = rest.find('/').map_or("/".into(), |i| rest[i..].to_string());
    }
    let index = shared.record(ProxyRequest {
        method: method.clone(),
        path: target.clone(),
        status: None,
        range: head.get("range").map(String::from),
        authorization: head.get("authorization").map(String::from),
        body_bytes: 0,
        request_bytes: 0,
        faults: Vec::new(),
        received_at: Instant::now(),
    });
    // Request bodies are counted as they arrive, and paced under a throttle.
    let count = |n: u64| {
        shared.update(index, |r| r.request_bytes += n);
        shared.pace(
            &shared.request_pacer,
            usize::try_from(n).unwrap_or(usize::MAX),
        );
    };
    if head
        .get("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        // Expect is not forwarded; the client may send its body now.
        let mut out = client;
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let request_body = framing(&head, Framing::None);

    let delay = shared.take(|fault| match fault {
        Fault::Delay {
            path_contains,
            millis,
            ..
        } if target.contains(path_contains.as_str()) => Some(*millis),
        _ => None,
    });
    if let Some(millis) = delay {
        shared.update(index, |r| r.faults.push("Delay"));
        shared.sleep_until(Instant::now() + Duration::from_millis(millis));
    }
    let (local, drop_range) = request_faults(shared, &method, &target, &head);
    if drop_range {
        shared.update(index, |r| r.faults.push("IgnoreRange"));
    }
    if let Some(local) = local {
        // Read the request body first: closing with unread input would reset the connection
        // and could destroy the answer before the client reads it.
        copy_request_body(&mut reader, request_body, &mut io::sink(), &count)?;
        return respond_local(shared, index, client, &method, local);
    }
    let cut = match request_body {
        Framing::Length(length) => shared.take_skipping(|fault| match fault {
            Fault::CutRequestAfter {
                method: m,
                path_contains,
                skip,
                bytes,
                forward,
                ..
            } if *m == method && target.contains(path_contains.as_str()) && length > *bytes => {
                Some((*skip, (*bytes, *forward)))
            }
            _ => None,
        }),
        _ => None,
    };
    if cut.is_some() {
        shared.update(index, |r| r.faults.push("CutRequestAfter"));
    }
    if let Some((bytes, false)) = cut {
        copy_counted(&mut reader, bytes, &mut io::sink(), &count)?;
        return Ok(Ending::Reset);
    }
    let upload_cut = match cut {
        None => shared.upload_cut(&method, &target, request_body),
        Some(_) => None,
    };
    if upload_cut.is_some() {
        shared.update(index, |r| r.faults.push("CutEachUpload"));
    }
    if let Some((bytes, true)) = upload_cut {
        copy_counted(&mut reader, bytes, &mut io::sink(), &count)?;
        return Ok(Ending::Reset);
    }

    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) else {
        copy_request_body(&mut reader, request_body, &mut io::sink(), &count)?;
        return respond_local(shared, index, client, &method, Local::error(502, None));
    };
    upstream.set_read_timeout(Some(IO_TIMEOUT))?;
    upstream.set_write_timeout(Some(IO_TIMEOUT))?;
    upstream.set_nodelay(true)?;
    shared.register(connection, &upstream);

    // Request to upstream: same method, target (less the CDN signature) and headers (Host
    // included, so that registry-made URLs such as upload Locations point back at us).
    let mut request = format!("{method} {} HTTP/1.1\r\n", without_signature(&target));
    for (name, value) in &head.headers {
        if hop_by_hop(name) || (drop_range && name.eq_ignore_ascii_case("range")) {
            continue;
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if request_body == Framing::Chunked {
        request.push_str("Transfer-Encoding: chunked\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut upstream_out = &upstream;
    upstream_out.write_all(request.as_bytes())?;
    if let Some((bytes, true)) = cut {
        copy_counted(&mut reader, bytes, &mut upstream_out, &count)?;
        upstream_out.flush()?;
        // The registry has part of the body; now both sides of the connection break.
        thread::sleep(RESET_GRACE);
        let _ = socket2::SockRef::from(&upstream).set_linger(Some(Duration::ZERO));
        let _ = upstream.shutdown(Shutdown::Both);
        return Ok(Ending::Reset);
    }
    if let Some((limit, false)) = upload_cut {
        if copy_chunked_until(&mut reader, &mut upstream_out, &count, limit)? {
            upstream_out.flush()?;
            thread::sleep(RESET_GRACE);
            let _ = socket2::SockRef::from(&upstream).set_linger(Some(Duration::ZERO));
            let _ = upstream.shutdown(Shutdown::Both);
            return Ok(Ending::Reset);
        }
    } else {
        copy_request_body(&mut reader, request_body, &mut upstream_out, &count)?;
    }
    upstream_out.flush()?;

    let mut upstream_in = BufReader::with_capacity(PIECE, &upstream);
    // Interim 1xx responses are skipped (a bounded few); the final one is forwarded.
    let mut response = None;
    for _ in 0..8 {
        let Some(head) = read_head(&mut upstream_in)? else {
            break;
        };
        let status: u16 = head
            .start
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(502);
        if !(100..200).contains(&status) {
            response = Some((status, head));
            break;
        }
    }
    let Some((status, response)) = response else {
        return respond_local(shared, index, client, &method, Local::error(502, None));
    };
    let body = if method == "HEAD" || status == 204 || status == 304 {
        Framing::None
    } else {
        framing(&response, Framing::Close)
    };
    let faults = if method == "GET" && (200..300).contains(&status) {
        body_faults(shared, &target, status, &response, body)
    } else {
        BodyFaults::default()
    };

    // Response to the client: upstream's status line and headers, but our own connection
    // handling; a chunked body stays chunked (re-framed), so a cut is visible to the client.
    // Bytes appended past the body cannot be announced by upstream's length: re-framed chunked.
    let chunked = body == Framing::Chunked || faults.append.is_some();
    let mut headers: Vec<(String, String)> = response
        .headers
        .iter()
        .filter(|(name, _)| !hop_by_hop(name))
        .filter(|(name, _)| faults.append.is_none() || !name.eq_ignore_ascii_case("content-length"))
        .cloned()
        .collect();
    let moved_to = shared.take(|fault| match fault {
        Fault::RewriteLocation { to } => Some(to.clone()),
        _ => None,
    });
    if let Some(to) = moved_to {
        for (name, value) in &mut headers {
            if name.eq_ignore_ascii_case("location") {
                *value = rewrite_location(value, &to);
                shared.update(index, |r| r.faults.push("RewriteLocation"));
            }
        }
    }
    let pin = method == "PATCH"
        && target.contains("/blobs/uploads/")
        && shared
            .take(|fault| matches!(fault, Fault::PinUploadRange).then_some(()))
            .is_some();
    if pin {
        for (name, value) in &mut headers {
            if name.eq_ignore_ascii_case("range") {
                *value = "0-0".into();
                shared.update(index, |r| r.faults.push("PinUploadRange"));
            }
        }
    }
    if chunked {
        headers.push(("Transfer-Encoding".into(), "chunked".into()));
    }
    shared.update(index, |r| {
        r.status = Some(status);
        r.faults.extend(faults.names.iter().copied());
    });
    write_head(client, &response.start, &headers)?;

    let mut writer = BodyWriter {
        shared,
        index,
        out: client,
        chunked,
    };
    let mut reader = BodyReader::new(&mut upstream_in, body);
    let mut piece = vec![0; PIECE];
    let mut position = 0u64;
    // Ends with the upstream body (finite), an I/O error, or a fault.
    loop {
        if let Some((at, reset)) = faults.cut {
            if position == at {
                let mut out = client;
                out.flush()?;
                return Ok(if reset { Ending::Reset } else { Ending::Close });
            }
        }
        if let Some((at, seconds)) = faults.stall {
            if position == at {
                let mut out = client;
                out.flush()?;
                shared.sleep_until(Instant::now() + Duration::from_secs(seconds));
                return Ok(Ending::Close);
            }
        }
        // Stop each piece at the next fault position, so it falls on the exact byte.
        let mut size = writer.piece_size() as u64;
        for at in [faults.cut.map(|c| c.0), faults.stall.map(|s| s.0)]
            .into_iter()
            .flatten()
            .filter(|&at| at > position)
        {
            size = size.min(at - position);
        }
        let n = reader.read(&mut piece[..size as usize])?;
        if n == 0 {
            break;
        }
        if let Some(at) = faults.flip {
            if (position..position + n as u64).contains(&at) {
                piece[(at - position) as usize] ^= 0xFF;
            }
        }
        writer.send(&piece[..n])?;
        position += n as u64;
    }
    if let Some(extra) = faults.append {
        let filler = vec![0xAB; PIECE];
        let mut left = extra;
        while left > 0 {
            let n = left.min(PIECE as u64);
            writer.send(&filler[..n as usize])?;
            left -= n;
        }
    }
    writer.finish()?;
    Ok(Ending::Close)
}
