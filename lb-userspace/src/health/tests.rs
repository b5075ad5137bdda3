use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        atomic::{AtomicI64, AtomicU16, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc::{unbounded_channel, UnboundedReceiver},
    task::JoinHandle,
};

use super::*;

const WAIT: Duration = Duration::from_secs(5);

fn spec(kind: CheckKind, port: u16, interval_ms: u64, rise: u32, fall: u32) -> CheckSpec {
    CheckSpec {
        kind,
        port,
        interval_ms,
        timeout_ms: interval_ms,
        rise,
        fall,
    }
}

fn http(path: &str) -> CheckKind {
    CheckKind::Http {
        path: path.to_string(),
        expect_status: vec![200],
        host: None,
        body_contains: None,
    }
}

fn local(check: CheckSpec) -> Target {
    Target {
        addr: Ipv4Addr::LOCALHOST.into(),
        check,
    }
}

async fn next_transition(rx: &mut UnboundedReceiver<Transition>) -> Transition {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no transition within 5 s")
        .expect("transition channel closed")
}

/// Waits until `checker` has done at least `n` probes of `target`.
async fn wait_probes(checker: &HealthChecker, target: &Target, n: u64) -> TargetStatus {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let status = checker.status_of(target).expect("target is probed");
        if status.probes >= n {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} probes of {target}",
            status.probes
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP listener that accepts and closes, counting connections.
struct TcpServer {
    port: u16,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TcpServer {
    async fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Self {
            port,
            connections,
            task,
        }
    }

    /// Closes the listening socket.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

#[derive(Default, Clone, Copy)]
enum Behaviour {
    /// Answers with the current status.
    #[default]
    Answer,
    /// Alternates the current status and 503, connection by connection.
    Toggle,
    /// Reads the request and never answers.
    Silent,
}

#[derive(Default)]
struct ServerState {
    connections: AtomicU64,
    active: AtomicI64,
    max_active: AtomicI64,
    hosts: Mutex<Vec<String>>,
}

/// A tiny HTTP server: its status can be switched; it records Host
/// headers and how many connections it had at once.
struct HttpServer {
    port: u16,
    status: Arc<AtomicU16>,
    state: Arc<ServerState>,
    task: JoinHandle<()>,
}

impl HttpServer {
    async fn start(behaviour: Behaviour, body: &'static str, delay: Duration) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(200));
        let state = Arc::new(ServerState::default());
        let (s, st) = (Arc::clone(&status), Arc::clone(&state));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let index = st.connections.fetch_add(1, Ordering::SeqCst);
                let active = st.active.fetch_add(1, Ordering::SeqCst) + 1;
                st.max_active.fetch_max(active, Ordering::SeqCst);
                let code = match behaviour {
                    Behaviour::Toggle if index % 2 == 1 => 503,
                    _ => s.load(Ordering::SeqCst),
                };
                tokio::spawn(serve(stream, Arc::clone(&st), behaviour, code, body, delay));
            }
        });
        Self {
            port,
            status,
            state,
            task,
        }
    }

    fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    state: Arc<ServerState>,
    behaviour: Behaviour,
    code: u16,
    body: &'static str,
    delay: Duration,
) {
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    if let Some(host) = text.lines().find_map(|line| line.strip_prefix("Host: ")) {
        state.hosts.lock().unwrap().push(host.to_string());
    }
    if let Behaviour::Silent = behaviour {
        // Hold the connection until the client gives up.
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
        state.active.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    tokio::time::sleep(delay).await;
    // Before the answer: the client cannot start its next probe before this
    // connection stops counting as active.
    state.active.fetch_sub(1, Ordering::SeqCst);
    let response = format!(
        "HTTP/1.1 {code} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn checker_is_send_sync() {
    assert_send_sync::<HealthChecker>();
}

fn result(ok: bool) -> ProbeResult {
    ProbeResult {
        ok,
        reason: if ok { "ok" } else { "refused" }.to_string(),
        latency_ms: 0.1,
        at_unix_ms: 1,
    }
}

#[test]
fn state_machine() {
    // (probe outcomes, expected health after each) with rise 2, fall 3.
    let cases: &[(&str, &[bool], &[Health])] = {
        use Health::*;
        &[
            (
                "rise from unknown",
                &[true, true, true],
                &[Unknown, Healthy, Healthy],
            ),
            (
                "fall from unknown",
                &[false, false, false],
                &[Unknown, Unknown, Unhealthy],
            ),
            (
                "fall from healthy, rise back",
                &[
                    true, true, false, false, true, false, false, false, true, true,
                ],
                &[
                    Unknown, Healthy, Healthy, Healthy, Healthy, Healthy, Healthy, Unhealthy,
                    Unhealthy, Healthy,
                ],
            ),
            (
                "flapping keeps the state",
                &[true, false, true, false, true, false, true, false],
                &[Unknown; 8],
            ),
        ]
    };
    for (name, outcomes, expected) in cases {
        let mut status = TargetStatus::new(Health::Unknown);
        for (i, (&ok, &want)) in outcomes.iter().zip(expected.iter()).enumerate() {
            let before = status.health;
            let changed = step(&mut status, 2, 3, result(ok));
            assert_eq!(status.health, want, "{name}: after probe {i}");
            assert_eq!(changed, (before != want).then_some(before), "{name}: {i}");
            assert_eq!(status.probes, i as u64 + 1);
            if ok {
                assert_eq!(status.consecutive_fail, 0);
            } else {
                assert_eq!(status.consecutive_ok, 0);
            }
        }
    }
}

#[test]
fn status_lines_and_headers() {
    assert_eq!(probe::parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
    assert_eq!(probe::parse_status_line(b"HTTP/1.0 503"), Some(503));
    assert_eq!(probe::parse_status_line(b"HTTP/1.1 204 "), Some(204));
    for bad in [
        &b""[..],
        b"HTTP/1.1",
        b"HTTP/1.1 20",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 abc OK",
        b"HTTP/2 200 OK",
        b"SSH-2.0-OpenSSH_9.2",
        b"HTTP/1.1 099 Low",
    ] {
        assert_eq!(
            probe::parse_status_line(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        probe::content_length(b"HTTP/1.1 200 OK\r\ncontent-LENGTH:  12 \r\n\r\n"),
        Some(12)
    );
    assert_eq!(
        probe::content_length(
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        None
    );
    assert_eq!(probe::content_length(b"HTTP/1.1 200 OK\r\n\r\n"), None);
    assert_eq!(
        probe::request("/health", "svc"),
        "GET /health HTTP/1.1\r\nHost: svc\r\nUser-Agent: lb-health/1\r\nConnection: close\r\n\r\n"
    );
    let addr = |port| SocketAddrV4::new(Ipv4Addr::new(198, 19, 1, 2), port).into();
    assert_eq!(probe::default_host(addr(80)), "198.19.1.2");
    assert_eq!(probe::default_host(addr(8080)), "198.19.1.2:8080");
    // RFC 3986: an IPv6 literal in the authority is bracketed, port or not.
    let v6: std::net::Ipv6Addr = "2001:db8:1::2".parse().expect("an IPv6 address");
    let addr6 = |port| std::net::SocketAddr::new(v6.into(), port);
    assert_eq!(probe::default_host(addr6(80)), "[2001:db8:1::2]");
    assert_eq!(probe::default_host(addr6(8080)), "[2001:db8:1::2]:8080");
}

#[test]
fn error_reasons() {
    use std::io::{Error, ErrorKind};
    assert_eq!(
        probe::classify(&Error::from(ErrorKind::ConnectionRefused)),
        "refused"
    );
    assert_eq!(
        probe::classify(&Error::from(ErrorKind::ConnectionReset)),
        "reset"
    );
    assert_eq!(
        probe::classify(&Error::from(ErrorKind::TimedOut)),
        "timeout"
    );
    for errno in [libc::EHOSTUNREACH, libc::ENETUNREACH, libc::EHOSTDOWN] {
        assert_eq!(
            probe::classify(&Error::from_raw_os_error(errno)),
            "unreachable"
        );
    }
    assert!(probe::classify(&Error::from_raw_os_error(libc::EMFILE)).starts_with("error: "));
}

/// 1. TCP: healthy after `rise` probes; refused once the listener is gone.
#[tokio::test(flavor = "current_thread")]
async fn tcp_rise_and_fall() {
    let server = TcpServer::start().await;
    let (tx, mut rx) = unbounded_channel();
    let checker = HealthChecker::new(tx);
    let target = local(spec(CheckKind::Tcp, server.port, 100, 2, 2));
    checker.set_targets(std::slice::from_ref(&target));
    assert_eq!(checker.status_of(&target).unwrap().health, Health::Unknown);

    let t = next_transition(&mut rx).await;
    assert_eq!(
        (t.from, t.to, t.reason.as_str()),
        (Health::Unknown, Health::Healthy, "ok")
    );
    assert_eq!(t.target, target);
    assert!(server.connections.load(Ordering::SeqCst) >= 2);
    let status = checker.status_of(&target).unwrap();
    assert_eq!(status.health, Health::Healthy);
    assert!(status.probes >= 2 && status.consecutive_ok >= 2);
    assert!(status.last_transition_unix_ms.is_some());

    server.stop().await;
    let t = next_transition(&mut rx).await;
    assert_eq!(
        (t.from, t.to, t.reason.as_str()),
        (Health::Healthy, Health::Unhealthy, "refused")
    );
    let status = checker.status_of(&target).unwrap();
    assert_eq!(status.health, Health::Unhealthy);
    assert_eq!(status.consecutive_ok, 0);
    assert!(status.consecutive_fail >= 2);
    assert_eq!(status.last.unwrap().reason, "refused");
    assert!(rx.try_recv().is_err(), "one transition per change");
}

/// 2. HTTP: 200 → healthy, 503 → unhealthy (port open), 200 → healthy.
#[tokio::test(flavor = "current_thread")]
async fn http_status_switch() {
    status_switch().await;
}

/// The same on a multi-thread runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_status_switch_multi_thread() {
    status_switch().await;
}

async fn status_switch() {
    let server = HttpServer::start(Behaviour::Answer, "up", Duration::ZERO).await;
    let (tx, mut rx) = unbounded_channel();
    let checker = HealthChecker::new(tx);
    let target = local(spec(http("/health"), server.port, 100, 2, 2));
    checker.set_targets(std::slice::from_ref(&target));

    let t = next_transition(&mut rx).await;
    assert_eq!((t.from, t.to), (Health::Unknown, Health::Healthy));

    server.status.store(503, Ordering::SeqCst);
    let t = next_transition(&mut rx).await;
    assert_eq!(
        (t.from, t.to, t.reason.as_str()),
        (Health::Healthy, Health::Unhealthy, "status 503")
    );
    assert_eq!(
        checker.status_of(&target).unwrap().last.unwrap().reason,
        "status 503"
    );

    server.status.store(200, Ordering::SeqCst);
    let t = next_transition(&mut rx).await;
    assert_eq!(
        (t.from, t.to, t.reason.as_str()),
        (Health::Unhealthy, Health::Healthy, "ok")
    );
    let status = checker.status_of(&target).unwrap();
    assert!(status.consecutive_ok >= 2);
    assert!(rx.try_recv().is_err());
}

/// 3. body_contains and the Host header.
#[tokio::test(flavor = "current_thread")]
async fn http_body_and_host() {
    let server = HttpServer::start(Behaviour::Answer, "hello world", Duration::ZERO).await;
    let (tx, mut rx) = unbounded_channel();
    let checker = HealthChecker::new(tx);
    let mismatch = local(spec(
        CheckKind::Http {
            path: "/ready".to_string(),
            expect_status: vec![200],
            host: Some("svc.example".to_string()),
            body_contains: Some("ready".to_string()),
        },
        server.port,
        100,
        1,
        1,
    ));
    let matching = local(spec(
        CheckKind::Http {
            path: "/".to_string(),
            expect_status: vec![200, 204],
            host: None,
            body_contains: Some("o w".to_string()),
        },
        server.port,
        100,
        1,
        1,
    ));
    checker.set_targets(&[mismatch.clone(), matching.clone()]);

    let mut seen = Vec::new();
    for _ in 0..2 {
        let t = next_transition(&mut rx).await;
        seen.push((t.target, t.to, t.reason));
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![
        (mismatch, Health::Unhealthy, "body mismatch".to_string()),
        (matching, Health::Healthy, "ok".to_string()),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen, want);

    let hosts = server.state.hosts.lock().unwrap().clone();
    assert!(hosts.iter().any(|h| h == "svc.example"), "{hosts:?}");
    let default = format!("127.0.0.1:{}", server.port);
    assert!(hosts.contains(&default), "{hosts:?}");
    assert!(
        hosts.iter().all(|h| h == "svc.example" || *h == default),
        "{hosts:?}"
    );
}

/// 4. A server that never answers: timeout.
#[tokio::test(flavor = "current_thread")]
async fn http_timeout() {
    let server = HttpServer::start(Behaviour::Silent, "", Duration::ZERO).await;
    let (tx, mut rx) = unbounded_channel();
    let checker = HealthChecker::new(tx);
    let mut check = spec(http("/"), server.port, 200, 1, 2);
    check.timeout_ms = 100;
    let target = local(check);
    checker.set_targets(std::slice::from_ref(&target));

    let t = next_transition(&mut rx).await;
    assert_eq!(
        (t.from, t.to, t.reason.as_str()),
        (Health::Unknown, Health::Unhealthy, "timeout")
    );
    let last = checker.status_of(&target).unwrap().last.unwrap();
    assert!(!last.ok);
    assert!(last.latency_ms >= 99.0, "{last:?}");
}

/// 5. Alternating success and failure: no transition.
#[tokio::test(flavor = "current_thread")]
async fn flapping_keeps_state() {
    let server = HttpServer::start(Behaviour::Toggle, "", Duration::ZERO).await;
    let (tx, mut rx) = unbounded_channel();
    let checker = HealthChecker::new(tx);
    let target = local(spec(http("/"), server.port, 100, 2, 2));
    checker.set_targets(std::slice::from_ref(&target));

    let status = wait_probes(&checker, &target, 20).await;
    let mut transitions = Vec::new();
    while let Ok(t) = rx.try_recv() {
        transitions.push(t);
    }
    assert!(transitions.len() <= 1, "{transitions:?}");
    assert!(
        status.consecutive_ok <= 1 && status.consecutive_fail <= 1,
        "{status:?}"
    );
    assert_eq!(status.health, Health::Unknown);
}

/// 6. The same target twice is one task; a probe slower than the interval
/// is never overlapped by the next.
#[tokio::test(flavor = "current_thread")]
async fn dedup_and_no_overlap() {
    let server = HttpServer::start(Behaviour::Answer, "", Duration::from_millis(300)).await;
    let (tx, _rx) = unbounded_channel();
    let checker = HealthChecker::new(tx);
    let mut check = spec(http("/"), server.port, 100, 2, 2);
    // Longer than the interval on purpose (validate would refuse it): the
    // engine must still never run two probes of a target at once.
    check.timeout_ms = 1000;
    let target = local(check);
    checker.set_targets(&[target.clone(), target.clone()]);
    assert_eq!(checker.status().len(), 1);

    let status = wait_probes(&checker, &target, 4).await;
    assert_eq!(server.state.max_active.load(Ordering::SeqCst), 1);
    assert!(status.last.unwrap().ok);
    assert_eq!(
        server.connections(),
        status.probes.max(server.connections())
    );
    assert!(server.connections() <= status.probes + 1);
}

/// 7. Removing a target stops its probes and keeps the others' state.
#[tokio::test(flavor = "current_thread")]
async fn removal_stops_probes() {
    let a = HttpServer::start(Behaviour::Answer, "", Duration::ZERO).await;
    let b = HttpServer::start(Behaviour::Answer, "", Duration::ZERO).await;
    let (tx, mut rx) = unbounded_channel();
    let checker = HealthChecker::new(tx);
    let ta = local(spec(http("/"), a.port, 100, 1, 1));
    let tb = local(spec(CheckKind::Tcp, b.port, 100, 1, 1));
    let none = local(spec(CheckKind::None, 0, 100, 1, 1));
    checker.set_targets(&[ta.clone(), tb.clone(), none.clone()]);
    assert_eq!(checker.status_of(&none).unwrap().health, Health::Healthy);

    for _ in 0..2 {
        let t = next_transition(&mut rx).await;
        assert_eq!(t.to, Health::Healthy);
        assert_ne!(t.target, none, "no transition for a None check");
    }
    wait_probes(&checker, &ta, 3).await;
    let before = checker.status_of(&tb).unwrap();

    checker.set_targets(&[tb.clone(), none.clone()]);
    assert_eq!(checker.status_of(&ta), None);
    // A connection already under way when the target was removed may still
    // reach the server; nothing after that.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let connections = a.connections();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.connections(), connections, "probes after removal");

    let after = checker.status_of(&tb).unwrap();
    assert_eq!(after.health, Health::Healthy);
    assert_eq!(
        after.last_transition_unix_ms,
        before.last_transition_unix_ms
    );
    assert!(after.probes > before.probes, "{before:?} {after:?}");
    assert!(after.consecutive_ok > before.consecutive_ok);
    assert_eq!(checker.status_of(&none).unwrap().probes, 0);
    assert!(rx.try_recv().is_err(), "no transition after removal");

    // Added again: a fresh start.
    checker.set_targets(&[ta.clone(), tb.clone()]);
    assert_eq!(checker.status_of(&ta).unwrap().health, Health::Unknown);
    assert_eq!(checker.status_of(&ta).unwrap().probes, 0);
    assert_eq!(checker.status_of(&none), None);
    let t = next_transition(&mut rx).await;
    assert_eq!((t.target, t.to), (ta, Health::Healthy));

    // Dropping the checker stops everything.
    drop(checker);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (ca, cb) = (a.connections(), b.connections());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((a.connections(), b.connections()), (ca, cb));
}

/// 8. Validation names the field; serde round trips with defaults.
#[test]
fn validate_and_serde() {
    let good = CheckSpec::new(http("/health"), 8080);
    assert_eq!(good.validate(), Ok(()));
    assert_eq!(CheckSpec::new(CheckKind::None, 0).validate(), Ok(()));
    assert_eq!(CheckSpec::new(CheckKind::Tcp, 22).validate(), Ok(()));

    let with_kind = |kind: CheckKind| CheckSpec {
        kind,
        ..good.clone()
    };
    let http_with = |f: &dyn Fn(&mut CheckKind)| {
        let mut kind = http("/health");
        f(&mut kind);
        with_kind(kind)
    };
    let set_path = |p: &'static str| {
        move |k: &mut CheckKind| {
            if let CheckKind::Http { path, .. } = k {
                *path = p.to_string();
            }
        }
    };
    let cases: Vec<(CheckSpec, &str)> = vec![
        (
            CheckSpec {
                interval_ms: 99,
                ..good.clone()
            },
            "interval_ms",
        ),
        (
            CheckSpec {
                interval_ms: 3_600_001,
                ..good.clone()
            },
            "interval_ms",
        ),
        (
            CheckSpec {
                timeout_ms: 0,
                ..good.clone()
            },
            "timeout_ms",
        ),
        (
            CheckSpec {
                timeout_ms: 2001,
                ..good.clone()
            },
            "timeout_ms",
        ),
        (
            CheckSpec {
                rise: 0,
                ..good.clone()
            },
            "rise",
        ),
        (
            CheckSpec {
                rise: 101,
                ..good.clone()
            },
            "rise",
        ),
        (
            CheckSpec {
                fall: 0,
                ..good.clone()
            },
            "fall",
        ),
        (
            CheckSpec {
                port: 0,
                ..good.clone()
            },
            "port",
        ),
        (
            CheckSpec {
                port: 0,
                kind: CheckKind::Tcp,
                ..good.clone()
            },
            "port",
        ),
        (http_with(&set_path("health")), "path"),
        (http_with(&set_path("/a\r\nX-Evil: 1")), "path"),
        (http_with(&set_path("/a b")), "path"),
        (
            http_with(&|k| {
                if let CheckKind::Http { expect_status, .. } = k {
                    expect_status.clear();
                }
            }),
            "expect_status",
        ),
        (
            http_with(&|k| {
                if let CheckKind::Http { expect_status, .. } = k {
                    *expect_status = vec![200, 600];
                }
            }),
            "expect_status",
        ),
        (
            http_with(&|k| {
                if let CheckKind::Http { host, .. } = k {
                    *host = Some("a\nb".to_string());
                }
            }),
            "host",
        ),
        (
            http_with(&|k| {
                if let CheckKind::Http { body_contains, .. } = k {
                    *body_contains = Some(String::new());
                }
            }),
            "body_contains",
        ),
    ];
    for (spec, field) in cases {
        let err = spec.validate().expect_err(field);
        assert!(err.starts_with(&format!("{field}: ")), "{field}: {err}");
    }

    let kind: CheckKind = serde_json::from_str(r#"{"type":"http","path":"/health"}"#).unwrap();
    assert_eq!(kind, http("/health"));
    let kind: CheckKind = serde_json::from_str(r#"{"type":"http"}"#).unwrap();
    assert_eq!(kind, http("/"));
    let kind: CheckKind = serde_json::from_str(r#"{"type":"tcp"}"#).unwrap();
    assert_eq!(kind, CheckKind::Tcp);
    let kind: CheckKind = serde_json::from_str(r#"{"type":"none"}"#).unwrap();
    assert_eq!(kind, CheckKind::None);
    let full: CheckKind = serde_json::from_str(
        r#"{"type":"http","path":"/h","expect_status":[200,204],"host":"svc","body_contains":"up"}"#,
    )
    .unwrap();
    assert_eq!(
        full,
        CheckKind::Http {
            path: "/h".to_string(),
            expect_status: vec![200, 204],
            host: Some("svc".to_string()),
            body_contains: Some("up".to_string()),
        }
    );
    for bad in [
        r#"{"type":"http","path":"/","bogus":1}"#,
        r#"{"type":"udp"}"#,
        r#"{"path":"/"}"#,
    ] {
        assert!(serde_json::from_str::<CheckKind>(bad).is_err(), "{bad}");
    }

    for spec in [
        good.clone(),
        CheckSpec::new(CheckKind::Tcp, 1),
        with_kind(full),
    ] {
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            serde_json::from_str::<CheckSpec>(&json).unwrap(),
            spec,
            "{json}"
        );
    }
    let json = serde_json::to_value(&good).unwrap();
    assert_eq!(json["kind"]["type"], "http");
    assert_eq!(json["interval_ms"], 2000);
    assert_eq!(
        serde_json::to_value(Health::Unhealthy).unwrap(),
        "unhealthy"
    );
}

/// 9. The scale benchmark, small: sane figures.
#[tokio::test(flavor = "current_thread")]
async fn bench_scale_small() {
    let report = bench_scale(200, 500, Duration::from_secs(3)).await.unwrap();
    println!("bench_scale(200, 500 ms, 3 s): {report:?}");
    assert_eq!(report.backends, 200);
    assert!(report.probes > 0);
    assert!(report.worst_lag_ms.is_finite() && report.worst_lag_ms >= 0.0);
    assert!(report.cpu_share.is_finite() && report.cpu_share >= 0.0);
    assert!(bench_scale(1, 500, Duration::from_millis(500))
        .await
        .is_err());
}
