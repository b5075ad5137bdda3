//! One probe: a TCP connect, or an HTTP/1.1 exchange, under one timeout.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use super::{unix_ms, CheckKind, ProbeResult, Target, BODY_LIMIT};

/// Longest status line plus header block accepted.
const HEADER_LIMIT: usize = 16 * 1024;

/// Probes `target` once; never fails, the outcome is in the result.
pub(super) async fn run(target: &Target) -> ProbeResult {
    let at_unix_ms = unix_ms();
    let start = Instant::now();
    let addr = SocketAddr::new(target.addr, target.check.port);
    let limit = Duration::from_millis(target.check.timeout_ms);
    let outcome = match tokio::time::timeout(limit, exchange(addr, &target.check.kind)).await {
        Ok(outcome) => outcome,
        Err(_) => Err("timeout".to_string()),
    };
    let latency_ms = start.elapsed().as_secs_f64() * 1e3;
    let (ok, reason) = match outcome {
        Ok(()) => (true, "ok".to_string()),
        Err(reason) => (false, reason),
    };
    ProbeResult {
        ok,
        reason,
        latency_ms,
        at_unix_ms,
    }
}

async fn exchange(addr: SocketAddr, kind: &CheckKind) -> Result<(), String> {
    match kind {
        CheckKind::None => Ok(()),
        CheckKind::Tcp => {
            // Connected is healthy; dropping the stream closes it.
            TcpStream::connect(addr).await.map_err(|e| classify(&e))?;
            Ok(())
        }
        CheckKind::Http {
            path,
            expect_status,
            host,
            body_contains,
        } => {
            let host = match host {
                Some(host) => host.clone(),
                None => default_host(addr),
            };
            http(
                addr,
                &request(path, &host),
                expect_status,
                body_contains.as_deref().map(str::as_bytes),
            )
            .await
        }
    }
}

/// The Host header when none is configured: the backend address (an IPv6
/// one in brackets, as RFC 3986 writes it in a URI's authority), with the
/// port unless it is 80.
pub(super) fn default_host(addr: SocketAddr) -> String {
    if addr.port() == 80 {
        match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }
    } else {
        addr.to_string()
    }
}

pub(super) fn request(path: &str, host: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-health/1\r\nConnection: close\r\n\r\n"
    )
}

async fn http(
    addr: SocketAddr,
    request: &str,
    expect_status: &[u16],
    body_contains: Option<&[u8]>,
) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| classify(&e))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| classify(&e))?;
    let mut reader = Reader {
        stream,
        buf: Vec::with_capacity(1024),
    };

    // The status line.
    let line_end = loop {
        if let Some(i) = find(&reader.buf, b"\r\n") {
            break i;
        }
        if reader.buf.len() > HEADER_LIMIT {
            return Err("bad response".to_string());
        }
        if reader.fill().await? == 0 {
            return Err(if reader.buf.is_empty() {
                "empty response".to_string()
            } else {
                "bad response".to_string()
            });
        }
    };
    let status = parse_status_line(&reader.buf[..line_end]).ok_or("bad response")?;
    if !expect_status.contains(&status) {
        return Err(format!("status {status}"));
    }
    let Some(needle) = body_contains else {
        return Ok(());
    };

    // The header block, then the body: raw bytes, no chunked decoding.
    let body_start = loop {
        if let Some(i) = find(&reader.buf, b"\r\n\r\n") {
            break i + 4;
        }
        if reader.buf.len() > HEADER_LIMIT || reader.fill().await? == 0 {
            return Err("bad response".to_string());
        }
    };
    let limit = content_length(&reader.buf[..body_start])
        .unwrap_or(BODY_LIMIT)
        .min(BODY_LIMIT);
    let mut searched = body_start;
    loop {
        let end = reader.buf.len().min(body_start + limit);
        let from = searched
            .saturating_sub(needle.len().saturating_sub(1))
            .max(body_start);
        if find(&reader.buf[from..end], needle).is_some() {
            return Ok(());
        }
        searched = end;
        if end - body_start >= limit || reader.fill().await? == 0 {
            return Err("body mismatch".to_string());
        }
    }
}

struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    /// Appends what the peer sent next; 0 at the end of the stream.
    async fn fill(&mut self) -> Result<usize, String> {
        let mut chunk = [0u8; 8192];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| classify(&e))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `HTTP/1.x NNN[ reason]` → NNN.
pub(super) fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (minor, rest) = rest.split_first()?;
    if !minor.is_ascii_digit() {
        return None;
    }
    let rest = rest.strip_prefix(b" ")?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || !matches!(rest.get(3), None | Some(b' ')) {
        return None;
    }
    let code = code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    (100..=599).contains(&code).then_some(code)
}

/// The Content-Length of a header block, unless the body is chunked (or
/// the header is absent or malformed).
pub(super) fn content_length(headers: &[u8]) -> Option<usize> {
    let mut length = None;
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return None;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value).ok()?.trim().parse().ok();
        }
    }
    length
}

/// An I/O error as a probe failure reason.
pub(super) fn classify(e: &io::Error) -> String {
    use io::ErrorKind as K;
    let reason = match e.kind() {
        K::ConnectionRefused => "refused",
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "reset",
        K::HostUnreachable | K::NetworkUnreachable | K::NetworkDown => "unreachable",
        K::TimedOut => "timeout",
        _ => match e.raw_os_error() {
            Some(libc::EHOSTDOWN | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ENETDOWN) => {
                "unreachable"
            }
            _ => return format!("error: {e}"),
        },
    };
    reason.to_string()
}
