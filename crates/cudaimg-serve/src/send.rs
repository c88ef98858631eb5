//! Response bodies, and how a blob leaves the store:
//! - plain TCP, default: `sendfile(2)` from the blob file to the socket, driven by the
//!   socket's write readiness (`try_io`), so the bytes never pass through user space;
//! - TLS: the kernel cannot encrypt, so a buffered copy (256 KiB at a time);
//! - `--verify-reads`: the store's hashing reader, on a blocking thread, chunk by chunk. It
//!   fails the read that would hand out a corrupt blob's last bytes, and for a range that
//!   ends earlier the last piece sent is held back until the whole blob has matched, so a
//!   client never receives a complete body from a corrupt blob: the connection is aborted.
//!
//! Every write waits at most `client_timeout` for progress; a client that stops reading is
//! dropped, with its file handle.

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use tokio::io::Interest;

use super::store::BlobFile;
use super::{Body, Conn, Options, Response};

const CHUNK: usize = 256 * 1024;

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")
}

async fn write(conn: &mut Conn, bytes: &[u8], timeout: Duration) -> std::io::Result<()> {
    tokio::time::timeout(timeout, conn.write_all(bytes))
        .await
        .map_err(|_| timed_out())?
}

/// Sends a response; `Err` means the connection must close (a client gone, a corrupt blob).
pub(crate) async fn send(
    conn: &mut Conn,
    resp: Response,
    head_only: bool,
    close: bool,
    opts: &Options,
) -> std::io::Result<()> {
    let timeout = opts.client_timeout;
    let Response {
        head, length, body, ..
    } = resp;
    let head = head.finish(length, close);
    match body {
        Body::Bytes(b) if !head_only => {
            // One write for small bodies: a head and a manifest in one segment.
            let mut all = head;
            all.extend_from_slice(&b);
            write(conn, &all, timeout).await
        }
        Body::Bytes(_) => write(conn, &head, timeout).await,
        Body::File(_, _) | Body::Stream(_) if head_only => write(conn, &head, timeout).await,
        Body::Stream(mut s) => {
            write(conn, &head, timeout).await?;
            let mut sent = 0u64;
            while let Some(piece) = s.next().await {
                let piece = piece?;
                write(conn, &piece, timeout).await?;
                sent += piece.len() as u64;
            }
            // Short means the follower stopped without an error (never expected): the
            // connection must not carry on as if the body were complete.
            if sent < length {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the blob's download ended early",
                ));
            }
            Ok(())
        }
        Body::File(file, start) => {
            write(conn, &head, timeout).await?;
            match (file, &mut *conn) {
                (BlobFile::Plain(f), Conn::Plain(tcp)) => {
                    sendfile(tcp, &f, start, length, timeout).await
                }
                (BlobFile::Plain(f), _) => copy(conn, f, start, length, timeout).await,
                (BlobFile::Verified(r), _) => verified(conn, *r, (start, length), opts).await,
            }
        }
    }
}

async fn sendfile(
    tcp: &tokio::net::TcpStream,
    file: &std::fs::File,
    start: u64,
    length: u64,
    timeout: Duration,
) -> std::io::Result<()> {
    let end = start + length;
    let mut offset = start;
    while offset < end {
        tokio::time::timeout(timeout, tcp.writable())
            .await
            .map_err(|_| timed_out())??;
        // Linux sends at most ~2 GiB per call.
        let count = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        let res = tcp.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(tcp, file, Some(&mut offset), count).map_err(std::io::Error::from)
        });
        match res {
            // The file is shorter than the blob it was checked to be: never for a blob
            // committed by rename; refuse to pad it.
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the blob file ended early",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn copy(
    conn: &mut Conn,
    file: std::fs::File,
    start: u64,
    length: u64,
    timeout: Duration,
) -> std::io::Result<()> {
    let mut file = Some(file);
    let mut buf = Some(vec![0u8; CHUNK]);
    let mut pos = start;
    let end = start + length;
    while pos < end {
        let (Some(mut f), Some(mut b)) = (file.take(), buf.take()) else {
            break;
        };
        let want = usize::try_from(end - pos).unwrap_or(CHUNK).min(CHUNK);
        let (f, b, n) = tokio::task::spawn_blocking(move || {
            let n = f
                .seek(SeekFrom::Start(pos))
                .and_then(|_| f.read(&mut b[..want]));
            (f, b, n)
        })
        .await
        .map_err(std::io::Error::other)?;
        let n = n?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the blob file ended early",
            ));
        }
        write(conn, &b[..n], timeout).await?;
        pos += n as u64;
        file = Some(f);
        buf = Some(b);
    }
    Ok(())
}

async fn verified(
    conn: &mut Conn,
    reader: cudaimg_store::VerifiedReader,
    (start, length): (u64, u64),
    opts: &Options,
) -> std::io::Result<()> {
    let timeout = opts.client_timeout;
    let end = start + length;
    let mut reader = Some(reader);
    let mut pos = 0u64;
    let mut held: Option<Vec<u8>> = None;
    loop {
        let Some(mut r) = reader.take() else { break };
        let (r, buf, res) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; CHUNK];
            let res = r.read(&mut buf);
            (r, buf, res)
        })
        .await
        .map_err(std::io::Error::other)?;
        let n = match res {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                if let Some(m) = r.mismatch() {
                    (opts.log)(&format!(
                        "error: {m}; the connection was aborted before the blob was complete\n\
                         hint: `cudaimg verify --repair` removes the corrupt blob; pull it again"
                    ));
                }
                return Err(e);
            }
        };
        let (a, b) = (pos, pos + n as u64);
        if b > start && a < end {
            let from = (start.max(a) - a) as usize;
            let to = (end.min(b) - a) as usize;
            if let Some(prev) = held.replace(buf[from..to].to_vec()) {
                write(conn, &prev, timeout).await?;
            }
        }
        pos = b;
        reader = Some(r);
    }
    // The whole blob matched its digest and size: the last piece may go.
    if let Some(last) = held {
        write(conn, &last, timeout).await?;
    }
    Ok(())
}
