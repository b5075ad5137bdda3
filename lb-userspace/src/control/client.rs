//! A small blocking client for the control socket, used by `lbctl` and by
//! tests: connect, write one request line, read one response line.
//!
//! Every step shares one deadline (`timeout`), connecting included, so a
//! hung agent cannot hang the caller.

use std::{
    fmt,
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use super::protocol::{Request, Response};

/// Longest response line accepted, in bytes. The agent's answers are far
/// smaller; the bound only keeps a misbehaving peer from exhausting memory.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Why a request got no (usable) response. An agent that answers
/// `{"ok": false, ...}` is not a `ClientError`: that is a [`Response`].
#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be connected to.
    Connect { socket: PathBuf, source: io::Error },
    /// The agent did not answer within the timeout.
    Timeout { socket: PathBuf, timeout: Duration },
    /// Reading or writing failed after connecting.
    Io { socket: PathBuf, source: io::Error },
    /// The agent closed the connection without answering.
    Closed { socket: PathBuf },
    /// The answer is not a response line (not UTF-8, too long, not JSON, or
    /// not a response object).
    Malformed { socket: PathBuf, reason: String },
    /// The request could not be encoded as JSON.
    Encode(serde_json::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HINT: &str =
            "is lb-agent running? --socket PATH or LB_SOCKET=PATH names another socket";
        match self {
            ClientError::Connect { socket, source } => {
                let socket = socket.display();
                match source.kind() {
                    io::ErrorKind::NotFound => {
                        write!(f, "cannot connect to {socket}: no such socket ({HINT})")
                    }
                    io::ErrorKind::ConnectionRefused => write!(
                        f,
                        "cannot connect to {socket}: connection refused (nothing listens \
                         there; {HINT})"
                    ),
                    io::ErrorKind::PermissionDenied => write!(
                        f,
                        "cannot connect to {socket}: permission denied (run as root, or as a \
                         member of the group named by the agent's control.group)"
                    ),
                    _ => write!(f, "cannot connect to {socket}: {source} ({HINT})"),
                }
            }
            ClientError::Timeout { socket, timeout } => write!(
                f,
                "no response from lb-agent on {} within {}s (--timeout SECS waits longer)",
                socket.display(),
                timeout.as_secs_f64()
            ),
            ClientError::Io { socket, source } => {
                write!(f, "talking to lb-agent on {}: {source}", socket.display())
            }
            ClientError::Closed { socket } => write!(
                f,
                "lb-agent on {} closed the connection without a response",
                socket.display()
            ),
            ClientError::Malformed { socket, reason } => write!(
                f,
                "malformed response from lb-agent on {}: {reason}",
                socket.display()
            ),
            ClientError::Encode(e) => write!(f, "cannot encode the request: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } | ClientError::Io { source, .. } => Some(source),
            ClientError::Encode(e) => Some(e),
            _ => None,
        }
    }
}

/// Sends `req` to the agent listening on `socket` and returns its response
/// (which may be a refusal: check `ok`).
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let answer = request_raw(socket, &request_line(req)?, timeout)?;
    parse_response(socket, &answer)
}

/// The line for `req`, carrying the protocol version (`"v"`, last) so an
/// agent speaking another version refuses it instead of misreading it.
pub fn request_line(req: &Request) -> Result<String, ClientError> {
    let mut line = serde_json::to_string(req).map_err(ClientError::Encode)?;
    // A request is an object: its text ends with '}'.
    line.pop();
    line.push_str(&format!(",\"v\":{}}}", super::protocol::PROTOCOL_VERSION));
    Ok(line)
}

/// Sends `line` as given (followed by a newline unless it ends with one)
/// and returns the first line of the answer, without its newline. Meant for
/// tests that send arbitrary text; nothing is checked on either side.
///
/// If the agent closes the connection while the line is being written (as
/// it may for an oversized request), the answer it sent before closing is
/// still read and returned.
pub fn request_raw(socket: &Path, line: &str, timeout: Duration) -> Result<String, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(socket, deadline, timeout)?;
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    if !line.ends_with('\n') {
        bytes.push(b'\n');
    }
    let written = remaining(socket, deadline, timeout).and_then(|left| {
        stream
            .set_write_timeout(Some(left))
            .and_then(|()| stream.write_all(&bytes))
            .map_err(|e| io_error(socket, timeout, e))
    });
    match written {
        Ok(()) => read_line(&mut stream, socket, deadline, timeout),
        Err(ClientError::Io { source, .. })
            if matches!(
                source.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            // The agent gave up on the request; it may have said why.
            read_line(&mut stream, socket, deadline, timeout).map_err(|_| ClientError::Io {
                socket: socket.to_path_buf(),
                source,
            })
        }
        Err(e) => Err(e),
    }
}

/// Parses a response line as received from the agent at `socket`.
pub fn parse_response(socket: &Path, line: &str) -> Result<Response, ClientError> {
    let malformed = |reason: String| ClientError::Malformed {
        socket: socket.to_path_buf(),
        reason,
    };
    let response: Response =
        serde_json::from_str(line).map_err(|e| malformed(format!("{e}: {}", excerpt(line))))?;
    if !response.ok && response.error.is_none() {
        return Err(malformed(format!(
            "\"ok\" is false but there is no \"error\": {}",
            excerpt(line)
        )));
    }
    Ok(response)
}

/// The beginning of a line, for error messages.
fn excerpt(line: &str) -> String {
    const MAX: usize = 200;
    match line.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line.to_string(),
    }
}

/// Connects within the deadline. `UnixStream::connect` blocks while the
/// listener's backlog is full (a hung agent), so it runs on its own thread.
fn connect(socket: &Path, deadline: Instant, timeout: Duration) -> Result<UnixStream, ClientError> {
    let left = remaining(socket, deadline, timeout)?;
    let (tx, rx) = mpsc::channel();
    let path = socket.to_path_buf();
    thread::Builder::new()
        .name("control-connect".into())
        .spawn(move || {
            // The receiver is gone only if the caller timed out already.
            let _ = tx.send(UnixStream::connect(path));
        })
        .map_err(|source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    match rx.recv_timeout(left) {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        }),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(ClientError::Timeout {
            socket: socket.to_path_buf(),
            timeout,
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(ClientError::Connect {
            socket: socket.to_path_buf(),
            source: io::Error::other("the connecting thread failed"),
        }),
    }
}

/// Time left before the deadline (never zero: a zero socket timeout means
/// "block forever" to the OS and is refused by std).
fn remaining(socket: &Path, deadline: Instant, timeout: Duration) -> Result<Duration, ClientError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
        .ok_or_else(|| ClientError::Timeout {
            socket: socket.to_path_buf(),
            timeout,
        })
}

fn io_error(socket: &Path, timeout: Duration, source: io::Error) -> ClientError {
    match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
            socket: socket.to_path_buf(),
            timeout,
        },
        _ => ClientError::Io {
            socket: socket.to_path_buf(),
            source,
        },
    }
}

/// Reads up to the first newline (or the end of the stream).
fn read_line(
    stream: &mut UnixStream,
    socket: &Path,
    deadline: Instant,
    timeout: Duration,
) -> Result<String, ClientError> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = remaining(socket, deadline, timeout)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| io_error(socket, timeout, e))?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(socket, timeout, e)),
        };
        let received = &chunk[..n];
        let newline = received.iter().position(|&b| b == b'\n');
        line.extend_from_slice(&received[..newline.unwrap_or(n)]);
        if line.len() > MAX_RESPONSE_BYTES {
            return Err(ClientError::Malformed {
                socket: socket.to_path_buf(),
                reason: format!("the response line exceeds {MAX_RESPONSE_BYTES} bytes"),
            });
        }
        if newline.is_some() {
            return utf8(socket, line);
        }
    }
    if line.is_empty() {
        Err(ClientError::Closed {
            socket: socket.to_path_buf(),
        })
    } else {
        // The agent closed the connection after a line without a newline.
        utf8(socket, line)
    }
}

fn utf8(socket: &Path, line: Vec<u8>) -> Result<String, ClientError> {
    String::from_utf8(line).map_err(|e| ClientError::Malformed {
        socket: socket.to_path_buf(),
        reason: format!("not UTF-8 ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        os::unix::net::UnixListener,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::control::protocol::{
        ApiError, ErrorCode, ResponseData, VersionInfo, PROTOCOL_VERSION,
    };

    /// A socket path of its own for each test (removed on drop).
    struct TempSocket(PathBuf);

    impl TempSocket {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("lb-client-test-{}-{n}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            Self(path)
        }
    }

    impl Drop for TempSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Accepts one connection, reads one line, answers with `answer(line)`
    /// (nothing if `None`) and returns the line it read.
    fn serve_once(
        socket: &Path,
        answer: impl FnOnce(&str) -> Option<Vec<u8>> + Send + 'static,
    ) -> thread::JoinHandle<String> {
        let listener = UnixListener::bind(socket).expect("bind");
        thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).expect("read request");
            if let Some(bytes) = answer(&line) {
                reader.get_mut().write_all(&bytes).expect("write answer");
            } else {
                // Keep the connection open past the client's timeout.
                thread::sleep(Duration::from_millis(500));
            }
            line
        })
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn a_request_and_its_response() {
        let socket = TempSocket::new();
        let server = serve_once(&socket.0, |_| {
            Some(b"{\"ok\":true,\"version\":{\"agent\":\"0.1.0\",\"protocol\":1}}\n".to_vec())
        });
        let response = request(&socket.0, &Request::Version {}, T).expect("answered");
        assert_eq!(
            response,
            Response::success(ResponseData::Version {
                version: VersionInfo {
                    agent: "0.1.0".into(),
                    protocol: PROTOCOL_VERSION
                }
            })
        );
        assert_eq!(
            server.join().expect("server"),
            "{\"op\":\"version\",\"v\":1}\n",
            "the request carries the protocol version"
        );
    }

    #[test]
    fn refusals_are_responses() {
        let socket = TempSocket::new();
        let _server = serve_once(&socket.0, |_| {
            Some(b"{\"ok\":false,\"error\":{\"code\":\"unknown_op\",\"message\":\"x\"}}\n".to_vec())
        });
        let response = request(&socket.0, &Request::Stats {}, T).expect("answered");
        assert_eq!(
            response,
            Response::failure(ApiError::new(ErrorCode::UnknownOp, "x"))
        );
    }

    #[test]
    fn raw_lines_get_one_newline() {
        let socket = TempSocket::new();
        let server = serve_once(&socket.0, |line| Some(format!("{line}extra").into_bytes()));
        let answer = request_raw(&socket.0, "not json", T).expect("answered");
        assert_eq!(answer, "not json");
        assert_eq!(server.join().expect("server"), "not json\n");

        let socket = TempSocket::new();
        let server = serve_once(&socket.0, |_| Some(b"last".to_vec()));
        let answer = request_raw(&socket.0, "{}\n", T).expect("answered");
        assert_eq!(answer, "last", "a final line without newline is accepted");
        assert_eq!(server.join().expect("server"), "{}\n");
    }

    #[test]
    fn a_missing_socket_names_the_path_and_the_way_out() {
        let socket = TempSocket::new();
        let err = request(&socket.0, &Request::Version {}, T).expect_err("nobody listens");
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&socket.0.display().to_string()), "{text}");
        assert!(text.contains("lb-agent running"), "{text}");
        assert!(text.contains("--socket"), "{text}");
    }

    #[test]
    fn silence_is_a_timeout() {
        let socket = TempSocket::new();
        let _server = serve_once(&socket.0, |_| None);
        let started = Instant::now();
        let err = request(&socket.0, &Request::Version {}, Duration::from_millis(100))
            .expect_err("no answer");
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_hung_listener_is_a_timeout() {
        // Bound and listening, never accepting: connect succeeds (backlog)
        // and the read times out.
        let socket = TempSocket::new();
        let _listener = UnixListener::bind(&socket.0).expect("bind");
        let err = request(&socket.0, &Request::Version {}, Duration::from_millis(100))
            .expect_err("no answer");
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    }

    #[test]
    fn closing_without_answer() {
        let socket = TempSocket::new();
        let _server = serve_once(&socket.0, |_| Some(Vec::new()));
        let err = request(&socket.0, &Request::Version {}, T).expect_err("no answer");
        assert!(matches!(err, ClientError::Closed { .. }), "{err:?}");
    }

    #[test]
    fn malformed_answers() {
        for answer in [
            &b"hello\n"[..],
            b"[1,2]\n",
            b"{\"ok\":false}\n",
            b"{\"ok\":true,\"error\":{\"code\":\"nonsense\",\"message\":\"\"}}\n",
            b"\xff\xfe\n",
        ] {
            let socket = TempSocket::new();
            let bytes = answer.to_vec();
            let _server = serve_once(&socket.0, move |_| Some(bytes));
            let err = request(&socket.0, &Request::Version {}, T).expect_err("malformed");
            assert!(
                matches!(err, ClientError::Malformed { .. }),
                "{:?}: {err:?}",
                String::from_utf8_lossy(answer)
            );
            assert!(err.to_string().contains("malformed response"));
        }
    }

    #[test]
    fn an_answer_before_the_agent_hangs_up_is_read() {
        // The agent refuses an oversized request after reading part of it
        // and closes: the client's write fails, the refusal still arrives.
        let socket = TempSocket::new();
        let listener = UnixListener::bind(&socket.0).expect("bind");
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut first = [0u8; 1024];
            stream.read_exact(&mut first).expect("read the beginning");
            stream
                .write_all(
                    b"{\"ok\":false,\"error\":{\"code\":\"request_too_large\",\"message\":\"m\"}}\n",
                )
                .expect("answer");
        });
        let huge = "x".repeat(8 << 20);
        let answer = request_raw(&socket.0, &huge, T).expect("the refusal is read");
        assert!(answer.contains("request_too_large"), "{answer}");
        server.join().expect("server");
    }

    #[test]
    fn excerpts_are_short_and_char_safe() {
        let long = "é".repeat(1000);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), 203);
        assert_eq!(excerpt("short"), "short");
    }
}
