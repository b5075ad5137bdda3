//! `lbctl`: the operator's command line for a running `lb-agent`.
//!
//! Each subcommand sends one request over the agent's control socket and
//! prints the response, as tables or (`--json`) as the raw response line.
//! The request and response types are shared with the agent
//! (`lb_userspace::control::protocol`); the protocol is documented in
//! `docs/control-api.md`.

mod cli;
mod generate;
mod pcap;
mod render;
mod request;
mod table;
#[cfg(test)]
mod testutil;
mod top;
mod trace;

use std::{
    io::{self, Write},
    path::Path,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use lb_userspace::control::{
    client,
    protocol::{Request, Response},
};

use crate::{
    cli::{socket_path, Cli, Command, SOCKET_ENV},
    render::render,
};

/// Exit statuses (see `AFTER_HELP`). Usage errors (2) are clap's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Success = 0,
    Refused = 1,
    Usage = 2,
    Unreachable = 3,
}

/// What a run prints and how it exits.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) exit: Exit,
}

impl Outcome {
    pub(crate) fn success(stdout: String) -> Self {
        Self {
            stdout,
            stderr: String::new(),
            exit: Exit::Success,
        }
    }
    pub(crate) fn failure(exit: Exit, message: impl std::fmt::Display) -> Self {
        Self {
            stdout: String::new(),
            stderr: format!("error: {message}\n"),
            exit,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = socket_path(cli.socket.as_deref(), std::env::var_os(SOCKET_ENV));
    let outcome = match &cli.command {
        Command::Completions { shell } => generate::completions(*shell),
        Command::Man => generate::man(),
        Command::Top(args) => top::run(&cli, args, &socket, &mut io::stdout()),
        Command::Trace(args) => trace::run(&cli, args, &socket),
        _ => run(&cli, &socket),
    };
    // A closed stdout (`lbctl stats | head -1`) is not worth a panic.
    let _ = io::stdout().lock().write_all(outcome.stdout.as_bytes());
    let _ = io::stderr().lock().write_all(outcome.stderr.as_bytes());
    ExitCode::from(outcome.exit as u8)
}

/// One request, one response: every command but those dispatched in `main`.
pub(crate) fn run(cli: &Cli, socket: &Path) -> Outcome {
    let Some(request) = cli.command.request() else {
        return Outcome::failure(Exit::Usage, "this command sends no request");
    };
    let (answer, response) = match exchange(socket, &request, cli.timeout) {
        Ok(exchanged) => exchanged,
        Err(outcome) => return outcome,
    };
    if cli.json {
        return Outcome {
            stdout: format!("{answer}\n"),
            stderr: String::new(),
            exit: if response.ok {
                Exit::Success
            } else {
                Exit::Refused
            },
        };
    }
    if let Err(outcome) = accepted(&response) {
        return outcome;
    }
    match render(&cli.command, response, unix_now_ms()) {
        Ok(text) => Outcome::success(text),
        Err(reason) => malformed(socket, reason),
    }
}

/// Sends `request` and reads its response: the line as received and as
/// parsed. Failures are the outcome to exit with (3).
pub(crate) fn exchange(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<(String, Response), Outcome> {
    let line = client::request_line(request).map_err(|e| Outcome::failure(Exit::Unreachable, e))?;
    let answer = client::request_raw(socket, &line, timeout)
        .map_err(|e| Outcome::failure(Exit::Unreachable, e))?;
    let response = client::parse_response(socket, &answer)
        .map_err(|e| Outcome::failure(Exit::Unreachable, e))?;
    Ok((answer, response))
}

/// A refusal is exit 1 with its code and message.
pub(crate) fn accepted(response: &Response) -> Result<(), Outcome> {
    match (response.ok, &response.error) {
        (false, Some(error)) => Err(Outcome::failure(Exit::Refused, error)),
        // parse_response refuses `ok: false` without an error.
        (false, None) => Err(Outcome::failure(
            Exit::Unreachable,
            "refused without a reason",
        )),
        (true, _) => Ok(()),
    }
}

/// A well-formed response that does not answer the request.
pub(crate) fn malformed(socket: &Path, reason: impl std::fmt::Display) -> Outcome {
    Outcome::failure(
        Exit::Unreachable,
        format!(
            "malformed response from lb-agent on {}: {reason}",
            socket.display()
        ),
    )
}

/// Milliseconds since the Unix epoch: "now" for the SINCE columns.
pub(crate) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        os::unix::net::UnixListener,
        path::PathBuf,
        sync::atomic::{AtomicUsize, Ordering},
        thread,
    };

    use super::*;
    use crate::testutil::*;

    // --- whole runs against a fake agent: output and exit status

    struct TempSocket(PathBuf);

    impl TempSocket {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("lbctl-test-{}-{n}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            Self(path)
        }
    }

    impl Drop for TempSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Runs `args` against an agent that answers `answer`; returns the
    /// outcome and the request line the agent received.
    fn run_against(args: &[&str], answer: &'static str) -> (Outcome, String) {
        let socket = TempSocket::new();
        let listener = UnixListener::bind(&socket.0).expect("bind");
        let agent = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).expect("read");
            reader
                .get_mut()
                .write_all(format!("{answer}\n").as_bytes())
                .expect("write");
            line
        });
        let cli = parse(args).expect("parses");
        let outcome = run(&cli, &socket.0);
        let line = agent.join().expect("agent");
        // Every request carries the protocol version, last.
        let Some(request) = line.strip_suffix(",\"v\":1}\n") else {
            panic!("the request carries \"v\":1 last: {line}");
        };
        (outcome, format!("{request}}}\n"))
    }

    #[test]
    fn success_prints_to_stdout_and_exits_0() {
        let (outcome, line) = run_against(
            &["backend", "drain", "198.18.0.10:80/tcp", "198.19.1.2"],
            r#"{"ok":true,"changed":{"vips_added":[],"vips_removed":[],"rings_written":[{"address":"198.18.0.10","port":80,"protocol":"tcp"}],"backends_added":0,"backends_removed":0}}"#,
        );
        assert_eq!(
            line,
            "{\"op\":\"drain\",\"vip\":{\"address\":\"198.18.0.10\",\"port\":80,\"protocol\":\"tcp\"},\"backend\":\"198.19.1.2\"}\n"
        );
        assert_eq!(outcome, Outcome::success("ok: 1 ring rewritten\n".into()));
        assert_eq!(outcome.exit as u8, 0);
    }

    #[test]
    fn health_and_admin_commands_against_an_agent() {
        let v = "198.18.0.10:80/tcp";
        let wire_vip = r#""vip":{"address":"198.18.0.10","port":80,"protocol":"tcp"}"#;
        let unchanged = r#"{"ok":true,"changed":{"vips_added":[],"vips_removed":[],"rings_written":[],"backends_added":0,"backends_removed":0}}"#;
        let rewritten = r#"{"ok":true,"changed":{"vips_added":[],"vips_removed":[],"rings_written":[{"address":"198.18.0.10","port":80,"protocol":"tcp"}],"backends_added":0,"backends_removed":1}}"#;

        let (outcome, line) = run_against(
            &["health", "set", v, "--type", "http", "--path", "/health"],
            unchanged,
        );
        assert_eq!(
            line,
            format!("{{\"op\":\"set_health_check\",{wire_vip},\"health_check\":{{\"type\":\"http\",\"path\":\"/health\"}}}}\n")
        );
        assert_eq!(
            outcome,
            Outcome::success("ok: saved (no table rewritten)\n".into())
        );

        let (outcome, line) = run_against(&["health", "clear", v], unchanged);
        assert_eq!(
            line,
            format!("{{\"op\":\"set_health_check\",{wire_vip},\"health_check\":null}}\n")
        );
        assert_eq!(outcome.exit, Exit::Success);

        let (outcome, line) = run_against(&["vip", "fail-open", v, "off"], unchanged);
        assert_eq!(
            line,
            format!("{{\"op\":\"set_fail_open\",{wire_vip},\"fail_open\":false}}\n")
        );
        assert_eq!(
            outcome,
            Outcome::success("ok: saved (no table rewritten)\n".into())
        );

        let (outcome, line) = run_against(&["backend", "disable", v, "198.19.1.2"], rewritten);
        assert_eq!(
            line,
            format!("{{\"op\":\"disable\",{wire_vip},\"backend\":\"198.19.1.2\"}}\n")
        );
        assert_eq!(
            outcome,
            Outcome::success("ok: 1 ring rewritten, 1 backend removed\n".into())
        );
        let (_, line) = run_against(&["backend", "enable", v, "198.19.1.2"], rewritten);
        assert_eq!(
            line,
            format!("{{\"op\":\"enable\",{wire_vip},\"backend\":\"198.19.1.2\"}}\n")
        );

        // `health VIP` and `backends VIP` render the same list_backends answer.
        let answer = r#"{"ok":true,"backends":[{"address":"198.19.1.2","weight":1,"admin":"enabled","health":"healthy","check":{"kind":{"type":"tcp"},"port":80,"interval_ms":2000,"timeout_ms":1000,"rise":2,"fall":3},"last_probe":{"ok":true,"reason":"ok","latency_ms":0.4,"at_unix_ms":1700000000000},"consecutive_ok":3,"consecutive_fail":0,"last_transition_unix_ms":null,"ring_share":1.0}]}"#;
        let (outcome, line) = run_against(&["health", v], answer);
        assert_eq!(line, format!("{{\"op\":\"list_backends\",{wire_vip}}}\n"));
        assert_eq!(
            outcome,
            Outcome::success(
                "ADDRESS     ADMIN    CHECK  PORT  INTERVAL  TIMEOUT  RISE/FALL  HEALTH   LAST-PROBE  LATENCY  OK/FAIL  SINCE\n\
                 198.19.1.2  enabled  tcp      80    2000ms   1000ms        2/3  healthy  ok            0.4ms      3/0      -\n"
                    .into()
            )
        );
        let (outcome, _) = run_against(&["backends", v], answer);
        assert_eq!(
            outcome,
            Outcome::success(
                "ADDRESS     WEIGHT  ADMIN    HEALTH   LAST-PROBE  LATENCY  OK/FAIL  SINCE  RING-SHARE\n\
                 198.19.1.2       1  enabled  healthy  ok            0.4ms      3/0      -     100.00%\n"
                    .into()
            )
        );
    }

    #[test]
    fn refusals_exit_1_with_code_and_message() {
        let answer =
            r#"{"ok":false,"error":{"code":"unknown_vip","message":"no VIP 198.18.0.10:80/tcp"}}"#;
        let (outcome, _) = run_against(&["backends", "198.18.0.10:80/tcp"], answer);
        assert_eq!(
            outcome,
            Outcome {
                stdout: String::new(),
                stderr: "error: unknown_vip: no VIP 198.18.0.10:80/tcp\n".into(),
                exit: Exit::Refused
            }
        );
        assert_eq!(outcome.exit as u8, 1);
        let (outcome, _) = run_against(&["--json", "backends", "198.18.0.10:80/tcp"], answer);
        assert_eq!(
            outcome,
            Outcome {
                stdout: format!("{answer}\n"),
                stderr: String::new(),
                exit: Exit::Refused
            }
        );
    }

    #[test]
    fn json_prints_the_response_line_as_received() {
        let answer = r#"{"ok":true,"version":{"agent":"0.1.0","protocol":1}}"#;
        let (outcome, line) = run_against(&["version", "--json"], answer);
        assert_eq!(line, "{\"op\":\"version\"}\n");
        assert_eq!(outcome, Outcome::success(format!("{answer}\n")));
        let (outcome, _) = run_against(&["version"], answer);
        assert_eq!(outcome.exit, Exit::Success);
        assert!(outcome.stdout.contains("lb-agent  0.1.0 (protocol 1)"));
    }

    #[test]
    fn unusable_answers_exit_3() {
        for (args, answer) in [
            (&["vips"][..], "not json"),
            (&["vips"][..], r#"{"ok":false}"#),
            (&["vips"][..], r#"{"ok":true}"#),
            // A well-formed response, but not to this request.
            (&["vips"][..], r#"{"ok":true,"backends":[]}"#),
            (
                &["flow", "flush", "198.18.0.10:80/tcp"][..],
                r#"{"ok":true,"vips":[]}"#,
            ),
            (
                &["health", "198.18.0.10:80/tcp"][..],
                r#"{"ok":true,"vips":[]}"#,
            ),
            (
                &["health", "clear", "198.18.0.10:80/tcp"][..],
                r#"{"ok":true,"backends":[]}"#,
            ),
        ] {
            let (outcome, _) = run_against(args, answer);
            assert_eq!(outcome.exit, Exit::Unreachable, "{answer}: {outcome:?}");
            assert_eq!(outcome.exit as u8, 3);
            assert!(outcome.stdout.is_empty());
            assert!(
                outcome.stderr.starts_with("error: malformed response"),
                "{answer}: {}",
                outcome.stderr
            );
        }
    }

    #[test]
    fn no_agent_exits_3_naming_the_socket() {
        let socket = TempSocket::new();
        let cli = parse(&["vips"]).expect("parses");
        let outcome = run(&cli, &socket.0);
        assert_eq!(outcome.exit, Exit::Unreachable);
        assert!(outcome.stderr.contains(&socket.0.display().to_string()));
        assert!(outcome.stderr.contains("lb-agent running"));
    }
}
