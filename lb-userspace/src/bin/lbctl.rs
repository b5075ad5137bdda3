//! `lbctl`: the operator's command line for a running `lb-agent`.
//!
//! Each subcommand sends one request over the agent's control socket and
//! prints the response, as tables or (`--json`) as the raw response line.
//! The request and response types are shared with the agent
//! (`lb_userspace::control::protocol`); the protocol is documented in
//! `docs/control-api.md`.

use std::{
    ffi::OsString,
    io::{self, Write},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::{
    builder::{PossibleValuesParser, TypedValueParser},
    Args, Parser, Subcommand,
};
use lb_userspace::{
    config::{AdminState, CheckType, HealthCheckConfig},
    control::{
        client,
        protocol::{
            self, BackendInfo, ChangeReport, FlowLookup, FlowSummary, GlobalCounters, Request,
            Response, ResponseData, StatsReport, VersionInfo, VipInfo,
        },
    },
    dataplane::VipAddr,
    health::{CheckKind, CheckSpec, Health},
};

const AFTER_HELP: &str = "\
VIP is written ADDRESS:PORT/PROTOCOL, for example 198.18.0.10:80/tcp.

Exit status:
  0  success
  1  the agent refused the request (\"error: <code>: <message>\" on stderr;
     with --json the response is printed on stdout)
  2  usage error (invalid arguments)
  3  cannot reach the agent (connect failed, timeout, malformed response)

The protocol is documented in docs/control-api.md.";

/// Environment variable naming the control socket (overridden by --socket).
const SOCKET_ENV: &str = "LB_SOCKET";

/// Control a running lb-agent through its control socket.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version, after_help = AFTER_HELP)]
struct Cli {
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help = format!(
            "Control socket of lb-agent [env: {SOCKET_ENV}] [default: {}]",
            protocol::DEFAULT_SOCKET
        )
    )]
    socket: Option<PathBuf>,
    /// Print the agent's response as it came: one JSON object on one line
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the agent (fractions allowed)
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        default_value = "5",
        value_parser = parse_timeout
    )]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the agent's and the protocol's versions
    Version,
    /// List the VIPs
    Vips,
    /// Add or remove a VIP, or set whether it fails open
    #[command(subcommand)]
    Vip(VipCommand),
    /// List a VIP's backends: weight, admin state, health, share of new flows
    Backends {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
    },
    /// Add, remove, reweight, drain, disable or enable a backend
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Show a VIP's health checks and probe results (`health VIP`), or set
    /// or clear a health check
    #[command(
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true,
        subcommand_value_name = "ACTION",
        subcommand_help_heading = "Actions"
    )]
    Health {
        /// The VIP whose backends to show: ADDRESS:PORT/PROTOCOL
        #[arg(value_parser = protocol::parse_vip, required = true)]
        vip: Option<VipAddr>,
        #[command(subcommand)]
        action: Option<HealthCommand>,
    },
    /// Show the running configuration (the config file's format)
    Config,
    /// Show the counters: global, per VIP and per backend
    Stats {
        /// Show every global counter, zero ones included
        #[arg(long)]
        all: bool,
    },
    /// Inspect or flush the connection table
    #[command(subcommand)]
    Flow(FlowCommand),
}

#[derive(Debug, Subcommand)]
enum VipCommand {
    /// Add a VIP (without backends)
    Add {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// Maglev table size, a prime (the agent's default: 65537)
        #[arg(long, value_name = "N")]
        table_size: Option<u32>,
        /// Hash on the client's address only: all its connections reach
        /// one backend
        #[arg(long)]
        hash_source_only: bool,
    },
    /// Remove a VIP and its backends
    Remove {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
    },
    /// Set whether the VIP keeps all its enabled backends when every one is
    /// unhealthy (on, the default) or drops its new flows (off)
    FailOpen {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// on or off
        #[arg(
            value_name = "on|off",
            action = clap::ArgAction::Set,
            value_parser = PossibleValuesParser::new(["on", "off"]).map(|s| s == "on")
        )]
        fail_open: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BackendCommand {
    /// Add a backend to a VIP
    Add {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's IPv4 address
        address: Ipv4Addr,
        /// Relative share of new flows (the agent's default: 1)
        #[arg(long, value_name = "N")]
        weight: Option<u32>,
    },
    /// Remove a backend; its established flows move to other backends
    Remove {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's IPv4 address
        address: Ipv4Addr,
    },
    /// Set a backend's weight (a drained backend stays drained)
    Weight {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's IPv4 address
        address: Ipv4Addr,
        /// The new weight, 0 to 10000 (0: no new flows)
        weight: u32,
    },
    /// Drain a backend: no new flows, established flows continue
    Drain {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's IPv4 address
        address: Ipv4Addr,
    },
    /// Undrain a backend: new flows again, at its weight (same as enable)
    Undrain {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's IPv4 address
        address: Ipv4Addr,
    },
    /// Disable a backend: out of the data path, its established flows are
    /// re-selected
    Disable {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's IPv4 address
        address: Ipv4Addr,
    },
    /// Enable a backend (draining or disabled): new flows again, at its weight
    Enable {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's IPv4 address
        address: Ipv4Addr,
    },
}

#[derive(Debug, Subcommand)]
enum HealthCommand {
    /// Set the health check of a VIP, or with --backend one backend's
    /// settings (overriding the VIP's field by field); only the options
    /// given are set, the agent's defaults apply to the others
    Set {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// Set this backend's settings instead of the VIP's
        #[arg(long, value_name = "ADDRESS")]
        backend: Option<Ipv4Addr>,
        #[command(flatten)]
        check: CheckArgs,
    },
    /// Remove the health check of a VIP, or with --backend one backend's
    /// settings (it then follows the VIP's)
    Clear {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// Clear this backend's settings instead of the VIP's
        #[arg(long, value_name = "ADDRESS")]
        backend: Option<Ipv4Addr>,
    },
}

/// The fields of a `HealthCheckConfig`, each optional.
#[derive(Debug, Args)]
#[command(next_help_heading = "Check settings (only those given are set)")]
struct CheckArgs {
    /// Probe: none (always healthy), tcp (connect) or http (GET) [agent's
    /// default: tcp]
    #[arg(
        long = "type",
        value_name = "TYPE",
        value_parser = PossibleValuesParser::new(["none", "tcp", "http"]).map(|s| parse_check_type(&s))
    )]
    kind: Option<CheckType>,
    /// Port probed on the backend [agent's default: the VIP's port]
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Milliseconds between probes [agent's default: 2000]
    #[arg(long, value_name = "N")]
    interval_ms: Option<u64>,
    /// Milliseconds a probe may take [agent's default: 1000]
    #[arg(long, value_name = "N")]
    timeout_ms: Option<u64>,
    /// Consecutive successes that make a backend healthy [agent's default: 2]
    #[arg(long, value_name = "N")]
    rise: Option<u32>,
    /// Consecutive failures that make a backend unhealthy [agent's default: 3]
    #[arg(long, value_name = "N")]
    fall: Option<u32>,
    /// HTTP: the path requested [agent's default: /]
    #[arg(long, value_name = "P")]
    path: Option<String>,
    /// HTTP: a healthy status; repeat or separate with commas for several
    /// [agent's default: 200]
    #[arg(long, value_name = "CODE", value_delimiter = ',')]
    expect_status: Vec<u16>,
    /// HTTP: the Host header [agent's default: the backend's address]
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// HTTP: text the response body must contain
    #[arg(long, value_name = "S")]
    body_contains: Option<String>,
}

fn parse_check_type(text: &str) -> CheckType {
    match text {
        "none" => CheckType::None,
        "http" => CheckType::Http,
        _ => CheckType::Tcp,
    }
}

impl CheckArgs {
    /// The settings with exactly the options given.
    fn config(&self) -> HealthCheckConfig {
        HealthCheckConfig {
            kind: self.kind,
            port: self.port,
            interval_ms: self.interval_ms,
            timeout_ms: self.timeout_ms,
            rise: self.rise,
            fall: self.fall,
            path: self.path.clone(),
            expect_status: (!self.expect_status.is_empty()).then(|| self.expect_status.clone()),
            host: self.host.clone(),
            body_contains: self.body_contains.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum FlowCommand {
    /// Show which backend a client's flow reaches (ring and connection table)
    Lookup {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The client's IPv4 address
        source: Ipv4Addr,
        /// The client's port
        source_port: u16,
    },
    /// Count a VIP's connection-table entries per backend
    Summary {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
    },
    /// Delete a VIP's connection-table entries (flows re-select a backend)
    Flush {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
    },
}

impl Command {
    fn request(&self) -> Request {
        match self {
            Command::Version => Request::Version {},
            Command::Vips => Request::ListVips {},
            Command::Vip(VipCommand::Add {
                vip,
                table_size,
                hash_source_only,
            }) => Request::AddVip {
                vip: *vip,
                table_size: *table_size,
                hash_source_only: *hash_source_only,
            },
            Command::Vip(VipCommand::Remove { vip }) => Request::RemoveVip { vip: *vip },
            Command::Vip(VipCommand::FailOpen { vip, fail_open }) => Request::SetFailOpen {
                vip: *vip,
                fail_open: *fail_open,
            },
            Command::Backends { vip } => Request::ListBackends { vip: *vip },
            Command::Backend(BackendCommand::Add {
                vip,
                address,
                weight,
            }) => Request::AddBackend {
                vip: *vip,
                backend: *address,
                weight: *weight,
            },
            Command::Backend(BackendCommand::Remove { vip, address }) => Request::RemoveBackend {
                vip: *vip,
                backend: *address,
            },
            Command::Backend(BackendCommand::Weight {
                vip,
                address,
                weight,
            }) => Request::SetWeight {
                vip: *vip,
                backend: *address,
                weight: *weight,
            },
            Command::Backend(BackendCommand::Drain { vip, address }) => Request::Drain {
                vip: *vip,
                backend: *address,
            },
            Command::Backend(BackendCommand::Undrain { vip, address }) => Request::Undrain {
                vip: *vip,
                backend: *address,
            },
            Command::Backend(BackendCommand::Disable { vip, address }) => Request::Disable {
                vip: *vip,
                backend: *address,
            },
            Command::Backend(BackendCommand::Enable { vip, address }) => Request::Enable {
                vip: *vip,
                backend: *address,
            },
            Command::Health {
                action:
                    Some(HealthCommand::Set {
                        vip,
                        backend,
                        check,
                    }),
                ..
            } => Request::SetHealthCheck {
                vip: *vip,
                backend: *backend,
                health_check: Some(check.config()),
            },
            Command::Health {
                action: Some(HealthCommand::Clear { vip, backend }),
                ..
            } => Request::SetHealthCheck {
                vip: *vip,
                backend: *backend,
                health_check: None,
            },
            Command::Health {
                vip: Some(vip),
                action: None,
            } => Request::ListBackends { vip: *vip },
            // clap requires the VIP when there is no action.
            Command::Health {
                vip: None,
                action: None,
            } => unreachable!("`lbctl health` without a VIP or an action"),
            Command::Config => Request::ShowConfig {},
            Command::Stats { .. } => Request::Stats {},
            Command::Flow(FlowCommand::Lookup {
                vip,
                source,
                source_port,
            }) => Request::LookupFlow {
                vip: *vip,
                source: *source,
                source_port: *source_port,
            },
            Command::Flow(FlowCommand::Summary { vip }) => Request::FlowSummary { vip: *vip },
            Command::Flow(FlowCommand::Flush { vip }) => Request::FlushFlows { vip: *vip },
        }
    }

    /// Whether the command changes settings whose effect on the tables
    /// may come later, or never (health checks, fail-open).
    fn changes_settings(&self) -> bool {
        matches!(
            self,
            Command::Health {
                action: Some(_),
                ..
            } | Command::Vip(VipCommand::FailOpen { .. })
        )
    }
}

/// `--socket`, else a non-empty `LB_SOCKET`, else the default.
fn socket_path(flag: Option<&Path>, env: Option<OsString>) -> PathBuf {
    match (flag, env) {
        (Some(path), _) => path.to_path_buf(),
        (None, Some(env)) if !env.is_empty() => PathBuf::from(env),
        _ => PathBuf::from(protocol::DEFAULT_SOCKET),
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("{text:?}: the timeout must be positive"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?}: the timeout is too large"))
}

/// Exit statuses (see `AFTER_HELP`). Usage errors (2) are clap's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Success = 0,
    Refused = 1,
    Unreachable = 3,
}

/// What a run prints and how it exits.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    stdout: String,
    stderr: String,
    exit: Exit,
}

impl Outcome {
    fn success(stdout: String) -> Self {
        Self {
            stdout,
            stderr: String::new(),
            exit: Exit::Success,
        }
    }
    fn failure(exit: Exit, message: impl std::fmt::Display) -> Self {
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
    let outcome = run(&cli, &socket);
    // A closed stdout (`lbctl stats | head -1`) is not worth a panic.
    let _ = io::stdout().lock().write_all(outcome.stdout.as_bytes());
    let _ = io::stderr().lock().write_all(outcome.stderr.as_bytes());
    ExitCode::from(outcome.exit as u8)
}

fn run(cli: &Cli, socket: &Path) -> Outcome {
    let request = cli.command.request();
    let line = match client::request_line(&request) {
        Ok(line) => line,
        Err(e) => return Outcome::failure(Exit::Unreachable, e),
    };
    let answer = match client::request_raw(socket, &line, cli.timeout) {
        Ok(answer) => answer,
        Err(e) => return Outcome::failure(Exit::Unreachable, e),
    };
    let response = match client::parse_response(socket, &answer) {
        Ok(response) => response,
        Err(e) => return Outcome::failure(Exit::Unreachable, e),
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
    match (response.ok, &response.error) {
        (false, Some(error)) => return Outcome::failure(Exit::Refused, error),
        // parse_response refuses `ok: false` without an error.
        (false, None) => return Outcome::failure(Exit::Unreachable, "refused without a reason"),
        (true, _) => {}
    }
    match render(&cli.command, response, unix_now_ms()) {
        Ok(text) => Outcome::success(text),
        Err(reason) => Outcome::failure(
            Exit::Unreachable,
            format!(
                "malformed response from lb-agent on {}: {reason}",
                socket.display()
            ),
        ),
    }
}

/// Milliseconds since the Unix epoch: "now" for the SINCE columns.
fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The human-readable output of a successful response, or why the response
/// does not fit the request. `now_unix_ms` dates the health transitions.
fn render(command: &Command, response: Response, now_unix_ms: u64) -> Result<String, String> {
    let Some(data) = response.data else {
        return Err("a success without data".into());
    };
    let mutation = command.request().is_mutation();
    match (command, data) {
        (Command::Version, ResponseData::Version { version }) => Ok(render_version(&version)),
        (Command::Vips, ResponseData::Vips { vips }) => Ok(render_vips(&vips)),
        (Command::Backends { .. }, ResponseData::Backends { backends }) => {
            Ok(render_backends(&backends, now_unix_ms))
        }
        (Command::Health { action: None, .. }, ResponseData::Backends { backends }) => {
            Ok(render_health(&backends, now_unix_ms))
        }
        (Command::Config, ResponseData::Config { config }) => serde_json::to_string_pretty(&config)
            .map(|text| text + "\n")
            .map_err(|e| format!("cannot print the configuration: {e}")),
        (Command::Stats { all }, ResponseData::Stats { stats }) => Ok(render_stats(&stats, *all)),
        (Command::Flow(FlowCommand::Lookup { .. }), ResponseData::Flow { flow }) => {
            Ok(render_lookup(&flow))
        }
        (Command::Flow(FlowCommand::Summary { .. }), ResponseData::FlowSummary { flows }) => {
            Ok(render_summary(&flows))
        }
        (_, ResponseData::Changed { changed }) if mutation => {
            Ok(summarize_change(&changed, command.changes_settings()) + "\n")
        }
        (command, _) => Err(format!(
            "the answer to {} does not carry {}",
            op_name(&command.request()),
            expected_key(command)
        )),
    }
}

/// The request's `op`, for messages.
fn op_name(request: &Request) -> String {
    serde_json::to_value(request)
        .ok()
        .and_then(|v| v.get("op").and_then(|op| op.as_str()).map(str::to_string))
        .unwrap_or_else(|| "the request".into())
}

/// The response key a command expects.
fn expected_key(command: &Command) -> &'static str {
    match command {
        Command::Version => "\"version\"",
        Command::Vips => "\"vips\"",
        Command::Backends { .. } | Command::Health { action: None, .. } => "\"backends\"",
        Command::Config => "\"config\"",
        Command::Stats { .. } => "\"stats\"",
        Command::Flow(FlowCommand::Lookup { .. }) => "\"flow\"",
        Command::Flow(FlowCommand::Summary { .. }) => "\"flows\"",
        _ => "\"changed\"",
    }
}

fn render_version(version: &VersionInfo) -> String {
    let mut table = Table::new(&[("PROGRAM", Align::Left), ("VERSION", Align::Left)]);
    table.header = false;
    table.row([
        "lbctl".to_string(),
        format!(
            "{} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            protocol::PROTOCOL_VERSION
        ),
    ]);
    table.row([
        "lb-agent".to_string(),
        format!("{} (protocol {})", version.agent, version.protocol),
    ]);
    table.render()
}

fn render_vips(vips: &[VipInfo]) -> String {
    if vips.is_empty() {
        return "no VIPs\n".into();
    }
    let mut table = Table::new(&[
        ("VIP", Align::Left),
        ("TABLE-SIZE", Align::Right),
        ("HASH", Align::Left),
        ("CHECK", Align::Left),
        ("FAIL-OPEN", Align::Left),
        ("BACKENDS", Align::Left),
    ]);
    for vip in vips {
        let count = |f: &dyn Fn(&BackendInfo) -> bool| vip.backends.iter().filter(|b| f(b)).count();
        let notes: Vec<String> = [
            (count(&|b| b.admin == AdminState::Draining), "draining"),
            (count(&|b| b.admin == AdminState::Disabled), "disabled"),
            (
                count(&|b| b.check.is_some() && b.health == Health::Unhealthy),
                "unhealthy",
            ),
        ]
        .into_iter()
        .filter(|&(n, _)| n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        let backends = if notes.is_empty() {
            vip.backends.len().to_string()
        } else {
            format!("{} ({})", vip.backends.len(), notes.join(", "))
        };
        // The VIP's own setting, resolved as the agent resolves it for a
        // backend without settings of its own.
        let check = match &vip.health_check {
            None => "-".to_string(),
            Some(config) => config
                .resolve(vip.vip.port)
                .map_or_else(|_| "invalid".to_string(), |spec| spec.kind.to_string()),
        };
        table.row([
            vip.vip.to_string(),
            vip.table_size.to_string(),
            if vip.hash_source_only {
                "source".to_string()
            } else {
                "5-tuple".to_string()
            },
            check,
            if vip.failing_open {
                "ACTIVE"
            } else if vip.fail_open {
                "on"
            } else {
                "off"
            }
            .to_string(),
            backends,
        ]);
    }
    table.render()
}

fn admin_name(admin: AdminState) -> &'static str {
    match admin {
        AdminState::Enabled => "enabled",
        AdminState::Draining => "draining",
        AdminState::Disabled => "disabled",
    }
}

/// The health columns shared by `backends` and `health`: HEALTH,
/// LAST-PROBE, LATENCY, OK/FAIL, SINCE.
const HEALTH_COLUMNS: [(&str, Align); 5] = [
    ("HEALTH", Align::Left),
    ("LAST-PROBE", Align::Left),
    ("LATENCY", Align::Right),
    ("OK/FAIL", Align::Right),
    ("SINCE", Align::Right),
];

fn health_cells(b: &BackendInfo, now_unix_ms: u64) -> [String; 5] {
    let dash = || "-".to_string();
    let Some(check) = &b.check else {
        // Not checked: the agent counts it healthy, there is nothing to show.
        return [dash(), dash(), dash(), dash(), dash()];
    };
    let probe = b.last_probe.as_ref();
    [
        b.health.to_string(),
        probe.map_or_else(dash, |p| p.reason.clone()),
        probe.map_or_else(dash, |p| format!("{:.1}ms", p.latency_ms)),
        if check.kind == CheckKind::None {
            // Never probed.
            dash()
        } else {
            format!("{}/{}", b.consecutive_ok, b.consecutive_fail)
        },
        b.last_transition_unix_ms
            .map_or_else(dash, |at| format_age(now_unix_ms.saturating_sub(at))),
    ]
}

/// A duration for people: `12s`, `3m04s`, `2h05m`, `3d04h`.
fn format_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn render_backends(backends: &[BackendInfo], now_unix_ms: u64) -> String {
    if backends.is_empty() {
        return "no backends\n".into();
    }
    let mut columns = vec![
        ("ADDRESS", Align::Left),
        ("WEIGHT", Align::Right),
        ("ADMIN", Align::Left),
    ];
    columns.extend(HEALTH_COLUMNS);
    columns.push(("RING-SHARE", Align::Right));
    let mut table = Table::new(&columns);
    for b in backends {
        let mut row = vec![
            b.address.to_string(),
            b.weight.to_string(),
            admin_name(b.admin).to_string(),
        ];
        row.extend(health_cells(b, now_unix_ms));
        row.push(format!("{:.2}%", b.ring_share * 100.0));
        table.rows.push(row);
    }
    table.render()
}

/// CHECK, PORT, INTERVAL, TIMEOUT, RISE/FALL of a resolved check.
fn check_cells(check: Option<&CheckSpec>) -> [String; 5] {
    let dash = || "-".to_string();
    match check {
        None => [dash(), dash(), dash(), dash(), dash()],
        Some(c) if c.kind == CheckKind::None => ["none".into(), dash(), dash(), dash(), dash()],
        Some(c) => [
            c.kind.to_string(),
            c.port.to_string(),
            format!("{}ms", c.interval_ms),
            format!("{}ms", c.timeout_ms),
            format!("{}/{}", c.rise, c.fall),
        ],
    }
}

/// The HTTP settings beyond the path: `expect 200,204 host app.example
/// body "ready"`; empty for other checks.
fn http_details(check: Option<&CheckSpec>) -> String {
    let Some(CheckSpec {
        kind:
            CheckKind::Http {
                expect_status,
                host,
                body_contains,
                ..
            },
        ..
    }) = check
    else {
        return String::new();
    };
    let codes: Vec<String> = expect_status.iter().map(u16::to_string).collect();
    let mut text = format!("expect {}", codes.join(","));
    if let Some(host) = host {
        text.push_str(&format!(" host {host}"));
    }
    if let Some(needle) = body_contains {
        text.push_str(&format!(" body {needle:?}"));
    }
    text
}

/// `lbctl health VIP`: each backend's resolved check and its probes.
fn render_health(backends: &[BackendInfo], now_unix_ms: u64) -> String {
    if backends.is_empty() {
        return "no backends\n".into();
    }
    let http = backends.iter().any(|b| {
        matches!(
            b.check,
            Some(CheckSpec {
                kind: CheckKind::Http { .. },
                ..
            })
        )
    });
    let mut columns = vec![
        ("ADDRESS", Align::Left),
        ("ADMIN", Align::Left),
        ("CHECK", Align::Left),
        ("PORT", Align::Right),
        ("INTERVAL", Align::Right),
        ("TIMEOUT", Align::Right),
        ("RISE/FALL", Align::Right),
    ];
    columns.extend(HEALTH_COLUMNS);
    if http {
        columns.push(("HTTP", Align::Left));
    }
    let mut table = Table::new(&columns);
    for b in backends {
        let mut row = vec![b.address.to_string(), admin_name(b.admin).to_string()];
        row.extend(check_cells(b.check.as_ref()));
        row.extend(health_cells(b, now_unix_ms));
        if http {
            row.push(http_details(b.check.as_ref()));
        }
        table.rows.push(row);
    }
    let mut out = table.render();
    if backends
        .iter()
        .any(|b| b.check.is_some() && b.health == Health::Unknown)
    {
        out.push_str("(unknown: not yet decided by the probes; counted as healthy)\n");
    }
    out
}

/// The global counters by name, in the protocol's order.
fn global_counters(g: &GlobalCounters) -> impl Iterator<Item = (&'static str, u64)> {
    GlobalCounters::NAMES.into_iter().zip(g.values())
}

fn render_stats(stats: &StatsReport, all: bool) -> String {
    let mut global = Table::new(&[("COUNTER", Align::Left), ("VALUE", Align::Right)]);
    for (name, value) in global_counters(&stats.global) {
        if all || value != 0 {
            global.row([name.to_string(), value.to_string()]);
        }
    }
    let mut out = if global.rows.is_empty() {
        "global counters: all zero (--all lists them)\n".to_string()
    } else {
        global.render()
    };
    out.push('\n');
    if stats.vips.is_empty() {
        out.push_str("no VIPs\n");
        return out;
    }
    let mut vips = Table::new(&[
        ("VIP / BACKEND", Align::Left),
        ("PACKETS", Align::Right),
        ("BYTES", Align::Right),
        ("NEW-FLOWS", Align::Right),
    ]);
    for vip in &stats.vips {
        vips.row([
            vip.vip.to_string(),
            vip.packets.to_string(),
            vip.bytes.to_string(),
            vip.new_flows.to_string(),
        ]);
        for b in &vip.backends {
            vips.row([
                format!("  {}", b.address),
                b.packets.to_string(),
                b.bytes.to_string(),
                String::new(),
            ]);
        }
    }
    out.push_str(&vips.render());
    out
}

fn render_lookup(flow: &FlowLookup) -> String {
    let mut table = Table::new(&[("WHAT", Align::Left), ("WHERE", Align::Left)]);
    table.header = false;
    table.row([
        "flow".to_string(),
        format!("{}:{} -> {}", flow.source, flow.source_port, flow.vip),
    ]);
    table.row([
        "ring backend".to_string(),
        flow.ring_backend.map_or_else(
            || "none (no backend takes new flows)".to_string(),
            |b| b.to_string(),
        ),
    ]);
    table.row([
        "pinned backend".to_string(),
        flow.pinned_backend.map_or_else(
            || "none (no connection-table entry)".to_string(),
            |b| b.to_string(),
        ),
    ]);
    table.render()
}

fn render_summary(flows: &FlowSummary) -> String {
    let mut out = format!(
        "{}: {} connection-table {}\n",
        flows.vip,
        flows.total,
        if flows.total == 1 { "entry" } else { "entries" }
    );
    if !flows.per_backend.is_empty() {
        let mut table = Table::new(&[("BACKEND", Align::Left), ("FLOWS", Align::Right)]);
        for b in &flows.per_backend {
            table.row([b.address.to_string(), b.flows.to_string()]);
        }
        out.push_str(&table.render());
    }
    out.push_str(&format!(
        "stale (backend no longer in the VIP): {}\n",
        flows.stale
    ));
    out
}

/// One line: `ok: 1 ring rewritten, 1 backend added`. `settings`: the
/// request changed a setting (health check, fail-open) that need not
/// rewrite any table, so an empty report still means something was saved.
fn summarize_change(change: &ChangeReport, settings: bool) -> String {
    fn count(n: usize, one: &str, many: &str) -> Option<String> {
        match n {
            0 => None,
            1 => Some(format!("1 {one}")),
            n => Some(format!("{n} {many}")),
        }
    }
    let a = &change.applied;
    let mut parts: Vec<String> = [
        count(a.vips_added.len(), "VIP added", "VIPs added"),
        count(a.vips_removed.len(), "VIP removed", "VIPs removed"),
        count(a.rings_written.len(), "ring rewritten", "rings rewritten"),
        count(a.backends_added, "backend added", "backends added"),
        count(a.backends_removed, "backend removed", "backends removed"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(flushed) = change.flows_flushed {
        // Shown even when zero: the answer to "how many were there".
        parts.push(match flushed {
            1 => "1 flow flushed".to_string(),
            n => format!("{n} flows flushed"),
        });
    }
    if parts.is_empty() && settings {
        "ok: saved (no table rewritten)".to_string()
    } else if parts.is_empty() {
        "ok: nothing changed".to_string()
    } else {
        format!("ok: {}", parts.join(", "))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// A text table: a header row, then rows, each column padded to its widest
/// cell and separated by two spaces. No trailing whitespace.
#[derive(Debug)]
struct Table {
    columns: Vec<(String, Align)>,
    /// Whether the header row is printed.
    header: bool,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            columns: columns
                .iter()
                .map(|&(name, align)| (name.to_string(), align))
                .collect(),
            header: true,
            rows: Vec::new(),
        }
    }

    fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into());
    }

    fn render(&self) -> String {
        let header: Vec<String> = self.columns.iter().map(|(name, _)| name.clone()).collect();
        let lines: Vec<&Vec<String>> = self
            .header
            .then_some(&header)
            .into_iter()
            .chain(&self.rows)
            .collect();
        let ncols = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut widths = vec![0; ncols];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = line.get(i).map_or("", String::as_str);
                let align = self.columns.get(i).map_or(Align::Left, |&(_, a)| a);
                if i > 0 {
                    text.push_str("  ");
                }
                let pad = " ".repeat(width - cell.chars().count());
                match align {
                    Align::Left => {
                        text.push_str(cell);
                        text.push_str(&pad);
                    }
                    Align::Right => {
                        text.push_str(&pad);
                        text.push_str(cell);
                    }
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        os::unix::net::UnixListener,
        sync::atomic::{AtomicUsize, Ordering},
        thread,
    };

    use clap::error::ErrorKind;
    use lb_userspace::{
        control::protocol::{BackendCounters, BackendFlows, VipCounters},
        dataplane::{ApplyReport, Protocol},
        health::ProbeResult,
    };

    use super::*;

    fn vip() -> VipAddr {
        VipAddr {
            addr: Ipv4Addr::new(198, 18, 0, 10),
            port: 80,
            proto: Protocol::Tcp,
        }
    }

    const B1: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 2);

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lbctl").chain(args.iter().copied()))
    }

    fn req(args: &[&str]) -> Request {
        match parse(args) {
            Ok(cli) => cli.command.request(),
            Err(e) => panic!("{args:?} must parse: {e}"),
        }
    }

    fn usage_error(args: &[&str]) -> clap::Error {
        match parse(args) {
            Ok(cli) => panic!("{args:?} must be refused, parsed as {cli:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{args:?}: usage errors exit with 2");
                e
            }
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    // --- the table formatter

    #[test]
    fn tables_pad_each_column_to_its_widest_cell() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("N", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(["a".into(), "1".into(), "x".into()]);
        t.row(["longer".into(), "12345".into(), "".into()]);
        assert_eq!(
            t.render(),
            "NAME        N  NOTE\n\
             a           1  x\n\
             longer  12345\n"
        );
    }

    #[test]
    fn tables_count_characters_not_bytes_and_may_omit_the_header() {
        let mut t = Table::new(&[("K", Align::Left), ("V", Align::Right)]);
        t.header = false;
        t.row(["é".into(), "1".into()]);
        t.row(["ab".into(), "22".into()]);
        assert_eq!(t.render(), "é    1\nab  22\n");
    }

    #[test]
    fn an_empty_table_is_its_header() {
        let t = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        assert_eq!(t.render(), "A  B\n");
        let mut t = Table::new(&[]);
        t.header = false;
        assert_eq!(t.render(), "");
    }

    // --- arguments to requests, one test per subcommand group

    #[test]
    fn version_and_lists() {
        assert_eq!(req(&["version"]), Request::Version {});
        assert_eq!(req(&["vips"]), Request::ListVips {});
        assert_eq!(
            req(&["backends", "198.18.0.10:80/tcp"]),
            Request::ListBackends { vip: vip() }
        );
        assert_eq!(req(&["config"]), Request::ShowConfig {});
        assert_eq!(req(&["stats"]), Request::Stats {});
        assert_eq!(req(&["stats", "--all"]), Request::Stats {});
        usage_error(&["vips", "extra"]);
        usage_error(&["backends"]);
    }

    #[test]
    fn vip_commands() {
        assert_eq!(
            req(&["vip", "add", "198.18.0.10:80/tcp"]),
            Request::AddVip {
                vip: vip(),
                table_size: None,
                hash_source_only: false
            }
        );
        assert_eq!(
            req(&[
                "vip",
                "add",
                "198.18.0.10:53/udp",
                "--table-size",
                "655373",
                "--hash-source-only"
            ]),
            Request::AddVip {
                vip: VipAddr {
                    port: 53,
                    proto: Protocol::Udp,
                    ..vip()
                },
                table_size: Some(655_373),
                hash_source_only: true
            }
        );
        assert_eq!(
            req(&["vip", "remove", "198.18.0.10:80/tcp"]),
            Request::RemoveVip { vip: vip() }
        );
        let e = usage_error(&["vip", "add", "198.18.0.10:80"]);
        assert!(e.to_string().contains("ADDRESS:PORT/PROTOCOL"), "{e}");
        usage_error(&["vip", "add", "198.18.0.10:80/sctp"]);
        usage_error(&["vip", "add", "198.18.0.10:80/tcp", "--table-size", "-1"]);
        usage_error(&["vip", "remove"]);
        usage_error(&["vip"]);
    }

    #[test]
    fn vip_fail_open() {
        let v = "198.18.0.10:80/tcp";
        assert_eq!(
            req(&["vip", "fail-open", v, "on"]),
            Request::SetFailOpen {
                vip: vip(),
                fail_open: true
            }
        );
        assert_eq!(
            req(&["vip", "fail-open", v, "off"]),
            Request::SetFailOpen {
                vip: vip(),
                fail_open: false
            }
        );
        for bad in ["true", "ON", "1", ""] {
            let e = usage_error(&["vip", "fail-open", v, bad]);
            assert!(e.to_string().contains("possible values: on, off"), "{e}");
        }
        usage_error(&["vip", "fail-open", v]);
        usage_error(&["vip", "fail-open", "on"]);
    }

    #[test]
    fn health_show_set_and_clear() {
        let v = "198.18.0.10:80/tcp";
        // `health VIP` shows; it is list_backends.
        assert_eq!(req(&["health", v]), Request::ListBackends { vip: vip() });
        // Only the options given are set: an empty object is a TCP check
        // with every default.
        assert_eq!(
            req(&["health", "set", v]),
            Request::SetHealthCheck {
                vip: vip(),
                backend: None,
                health_check: Some(HealthCheckConfig::default())
            }
        );
        assert_eq!(
            req(&[
                "health",
                "set",
                v,
                "--type",
                "http",
                "--port",
                "8080",
                "--interval-ms",
                "500",
                "--timeout-ms",
                "250",
                "--rise",
                "1",
                "--fall",
                "2",
                "--path",
                "/health",
                "--expect-status",
                "200",
                "--expect-status",
                "204,301",
                "--host",
                "app.example",
                "--body-contains",
                "ready ok",
            ]),
            Request::SetHealthCheck {
                vip: vip(),
                backend: None,
                health_check: Some(HealthCheckConfig {
                    kind: Some(CheckType::Http),
                    port: Some(8080),
                    interval_ms: Some(500),
                    timeout_ms: Some(250),
                    rise: Some(1),
                    fall: Some(2),
                    path: Some("/health".into()),
                    expect_status: Some(vec![200, 204, 301]),
                    host: Some("app.example".into()),
                    body_contains: Some("ready ok".into()),
                })
            }
        );
        assert_eq!(
            req(&[
                "health",
                "set",
                v,
                "--backend",
                "198.19.1.2",
                "--type",
                "none"
            ]),
            Request::SetHealthCheck {
                vip: vip(),
                backend: Some(B1),
                health_check: Some(HealthCheckConfig {
                    kind: Some(CheckType::None),
                    ..HealthCheckConfig::default()
                })
            }
        );
        assert_eq!(
            req(&["health", "set", v, "--type", "tcp", "--port", "9000"]),
            Request::SetHealthCheck {
                vip: vip(),
                backend: None,
                health_check: Some(HealthCheckConfig {
                    kind: Some(CheckType::Tcp),
                    port: Some(9000),
                    ..HealthCheckConfig::default()
                })
            }
        );
        assert_eq!(
            req(&["health", "clear", v]),
            Request::SetHealthCheck {
                vip: vip(),
                backend: None,
                health_check: None
            }
        );
        assert_eq!(
            req(&["health", "clear", v, "--backend", "198.19.1.2"]),
            Request::SetHealthCheck {
                vip: vip(),
                backend: Some(B1),
                health_check: None
            }
        );
        // What goes on the wire: fields not given are absent, clear is null.
        let wire = |args: &[&str]| serde_json::to_string(&req(args)).expect("serializes");
        assert_eq!(
            wire(&["health", "set", v, "--type", "http", "--path", "/health"]),
            r#"{"op":"set_health_check","vip":{"address":"198.18.0.10","port":80,"protocol":"tcp"},"health_check":{"type":"http","path":"/health"}}"#
        );
        assert_eq!(
            wire(&["health", "clear", v, "--backend", "198.19.1.2"]),
            r#"{"op":"set_health_check","vip":{"address":"198.18.0.10","port":80,"protocol":"tcp"},"backend":"198.19.1.2","health_check":null}"#
        );
        let e = usage_error(&["health", "set", v, "--type", "udp"]);
        assert!(
            e.to_string().contains("possible values: none, tcp, http"),
            "{e}"
        );
        usage_error(&["health"]);
        usage_error(&["health", "198.18.0.10:80"]);
        usage_error(&["health", v, "extra"]);
        usage_error(&["health", "set"]);
        usage_error(&["health", "set", v, "--port", "70000"]);
        usage_error(&["health", "set", v, "--rise", "-1"]);
        usage_error(&["health", "set", v, "--expect-status", "ok"]);
        usage_error(&["health", "set", v, "--backend", "198.19.1"]);
        usage_error(&["health", "set", v, "--weight", "3"]);
        usage_error(&["health", "clear"]);
        usage_error(&["health", "clear", v, "--type", "tcp"]);
        usage_error(&["health", "remove", v]);
    }

    #[test]
    fn backend_commands() {
        let v = "198.18.0.10:80/tcp";
        assert_eq!(
            req(&["backend", "add", v, "198.19.1.2"]),
            Request::AddBackend {
                vip: vip(),
                backend: B1,
                weight: None
            }
        );
        assert_eq!(
            req(&["backend", "add", v, "198.19.1.2", "--weight", "3"]),
            Request::AddBackend {
                vip: vip(),
                backend: B1,
                weight: Some(3)
            }
        );
        assert_eq!(
            req(&["backend", "remove", v, "198.19.1.2"]),
            Request::RemoveBackend {
                vip: vip(),
                backend: B1
            }
        );
        assert_eq!(
            req(&["backend", "weight", v, "198.19.1.2", "7"]),
            Request::SetWeight {
                vip: vip(),
                backend: B1,
                weight: 7
            }
        );
        assert_eq!(
            req(&["backend", "drain", v, "198.19.1.2"]),
            Request::Drain {
                vip: vip(),
                backend: B1
            }
        );
        assert_eq!(
            req(&["backend", "undrain", v, "198.19.1.2"]),
            Request::Undrain {
                vip: vip(),
                backend: B1
            }
        );
        assert_eq!(
            req(&["backend", "disable", v, "198.19.1.2"]),
            Request::Disable {
                vip: vip(),
                backend: B1
            }
        );
        assert_eq!(
            req(&["backend", "enable", v, "198.19.1.2"]),
            Request::Enable {
                vip: vip(),
                backend: B1
            }
        );
        usage_error(&["backend", "disable", v]);
        usage_error(&["backend", "enable", v, "198.19.1.2", "extra"]);
        usage_error(&["backend", "add", v, "198.19.1.300"]);
        usage_error(&["backend", "add", v, "backend.example"]);
        usage_error(&["backend", "weight", v, "198.19.1.2"]);
        usage_error(&["backend", "weight", v, "198.19.1.2", "-3"]);
        usage_error(&["backend", "drain", "198.19.1.2"]);
    }

    #[test]
    fn flow_commands() {
        let v = "198.18.0.10:80/tcp";
        assert_eq!(
            req(&["flow", "lookup", v, "203.0.113.7", "40000"]),
            Request::LookupFlow {
                vip: vip(),
                source: Ipv4Addr::new(203, 0, 113, 7),
                source_port: 40000
            }
        );
        assert_eq!(
            req(&["flow", "summary", v]),
            Request::FlowSummary { vip: vip() }
        );
        assert_eq!(
            req(&["flow", "flush", v]),
            Request::FlushFlows { vip: vip() }
        );
        usage_error(&["flow", "lookup", v, "203.0.113.7", "70000"]);
        usage_error(&["flow", "lookup", v, "203.0.113.7"]);
        usage_error(&["flow", "purge", v]);
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse(&[
            "--socket",
            "/tmp/x.sock",
            "stats",
            "--json",
            "--timeout",
            "0.25",
        ])
        .expect("parses");
        assert_eq!(cli.socket.as_deref(), Some(Path::new("/tmp/x.sock")));
        assert!(cli.json);
        assert_eq!(cli.timeout, Duration::from_millis(250));
        let cli = parse(&["vips"]).expect("parses");
        assert_eq!(cli.socket, None);
        assert!(!cli.json);
        assert_eq!(cli.timeout, Duration::from_secs(5));
        for bad in ["0", "-1", "NaN", "inf", "soon", ""] {
            usage_error(&["--timeout", bad, "vips"]);
        }
        usage_error(&[]);
        usage_error(&["explode"]);
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let help = match parse(&["--help"]) {
            Err(e) if e.kind() == ErrorKind::DisplayHelp => e.to_string(),
            other => panic!("--help: {other:?}"),
        };
        for needle in [
            "Exit status",
            "1  the agent refused",
            "2  usage error",
            "3  cannot reach the agent",
            "LB_SOCKET",
            protocol::DEFAULT_SOCKET,
        ] {
            assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
        }
    }

    #[test]
    fn the_socket_comes_from_the_flag_then_the_environment() {
        let flag = Path::new("/a.sock");
        assert_eq!(
            socket_path(Some(flag), Some("/b.sock".into())),
            PathBuf::from("/a.sock")
        );
        assert_eq!(
            socket_path(None, Some("/b.sock".into())),
            PathBuf::from("/b.sock")
        );
        assert_eq!(
            socket_path(None, Some("".into())),
            PathBuf::from(protocol::DEFAULT_SOCKET)
        );
        assert_eq!(
            socket_path(None, None),
            PathBuf::from(protocol::DEFAULT_SOCKET)
        );
    }

    // --- output

    /// A backend without health check.
    fn backend(address: Ipv4Addr, weight: u32, admin: AdminState, ring_share: f64) -> BackendInfo {
        BackendInfo {
            address,
            weight,
            admin,
            // What the agent reports for a backend without check.
            health: Health::Healthy,
            check: None,
            last_probe: None,
            consecutive_ok: 0,
            consecutive_fail: 0,
            last_transition_unix_ms: None,
            ring_share,
        }
    }

    /// "Now" in the rendering tests.
    const NOW: u64 = 1_700_000_000_000;

    fn probe(ok: bool, reason: &str, latency_ms: f64) -> Option<ProbeResult> {
        Some(ProbeResult {
            ok,
            reason: reason.into(),
            latency_ms,
            at_unix_ms: NOW - 500,
        })
    }

    fn http_check() -> CheckSpec {
        CheckSpec {
            kind: CheckKind::Http {
                path: "/health".into(),
                expect_status: vec![200, 204],
                host: Some("app.example".into()),
                body_contains: Some("ready ok".into()),
            },
            port: 8080,
            interval_ms: 500,
            timeout_ms: 250,
            rise: 1,
            fall: 2,
        }
    }

    /// One backend of each kind: healthy (tcp), unhealthy (http), not
    /// checked and draining, unknown and disabled, check type none.
    fn mixed_backends() -> Vec<BackendInfo> {
        let tcp = CheckSpec::new(CheckKind::Tcp, 80);
        vec![
            BackendInfo {
                check: Some(tcp.clone()),
                last_probe: probe(true, "ok", 0.42),
                consecutive_ok: 5,
                last_transition_unix_ms: Some(NOW - 12_000),
                ..backend(B1, 1, AdminState::Enabled, 1.0)
            },
            BackendInfo {
                health: Health::Unhealthy,
                check: Some(http_check()),
                last_probe: probe(false, "status 503", 3.27),
                consecutive_fail: 4,
                last_transition_unix_ms: Some(NOW - 184_000),
                ..backend(Ipv4Addr::new(198, 19, 2, 2), 3, AdminState::Enabled, 0.0)
            },
            backend(Ipv4Addr::new(198, 19, 3, 2), 10, AdminState::Draining, 0.0),
            BackendInfo {
                health: Health::Unknown,
                check: Some(tcp),
                ..backend(Ipv4Addr::new(198, 19, 4, 2), 1, AdminState::Disabled, 0.0)
            },
            BackendInfo {
                check: Some(CheckSpec::new(CheckKind::None, 80)),
                ..backend(Ipv4Addr::new(198, 19, 5, 2), 2, AdminState::Enabled, 0.0)
            },
        ]
    }

    #[test]
    fn backends_show_admin_state_and_health() {
        let backends = vec![
            backend(B1, 1, AdminState::Enabled, 0.25),
            backend(Ipv4Addr::new(198, 19, 2, 2), 3, AdminState::Enabled, 0.75),
            backend(Ipv4Addr::new(198, 19, 3, 2), 10, AdminState::Draining, 0.0),
        ];
        // Without checks every health column is "-".
        assert_eq!(
            render_backends(&backends, NOW),
            "ADDRESS     WEIGHT  ADMIN     HEALTH  LAST-PROBE  LATENCY  OK/FAIL  SINCE  RING-SHARE\n\
             198.19.1.2       1  enabled   -       -                 -        -      -      25.00%\n\
             198.19.2.2       3  enabled   -       -                 -        -      -      75.00%\n\
             198.19.3.2      10  draining  -       -                 -        -      -       0.00%\n"
        );
        assert_eq!(
            render_backends(&mixed_backends(), NOW),
            "ADDRESS     WEIGHT  ADMIN     HEALTH     LAST-PROBE  LATENCY  OK/FAIL  SINCE  RING-SHARE\n\
             198.19.1.2       1  enabled   healthy    ok            0.4ms      5/0    12s     100.00%\n\
             198.19.2.2       3  enabled   unhealthy  status 503    3.3ms      0/4  3m04s       0.00%\n\
             198.19.3.2      10  draining  -          -                 -        -      -       0.00%\n\
             198.19.4.2       1  disabled  unknown    -                 -      0/0      -       0.00%\n\
             198.19.5.2       2  enabled   healthy    -                 -        -      -       0.00%\n"
        );
        assert_eq!(render_backends(&[], NOW), "no backends\n");
    }

    #[test]
    fn vips_show_check_fail_open_and_backend_states() {
        let vips = vec![
            VipInfo {
                vip: vip(),
                table_size: 65537,
                hash_source_only: false,
                health_check: Some(HealthCheckConfig {
                    kind: Some(CheckType::Http),
                    path: Some("/health".into()),
                    ..HealthCheckConfig::default()
                }),
                fail_open: true,
                failing_open: false,
                backends: mixed_backends(),
            },
            VipInfo {
                vip: VipAddr {
                    port: 53,
                    proto: Protocol::Udp,
                    ..vip()
                },
                table_size: 7,
                hash_source_only: true,
                health_check: None,
                fail_open: false,
                failing_open: false,
                backends: vec![],
            },
            VipInfo {
                vip: VipAddr { port: 443, ..vip() },
                table_size: 65537,
                hash_source_only: false,
                // An empty object: tcp on the VIP's port.
                health_check: Some(HealthCheckConfig::default()),
                fail_open: true,
                failing_open: true,
                backends: vec![backend(B1, 1, AdminState::Enabled, 1.0)],
            },
        ];
        assert_eq!(
            render_vips(&vips),
            "VIP                  TABLE-SIZE  HASH     CHECK         FAIL-OPEN  BACKENDS\n\
             198.18.0.10:80/tcp        65537  5-tuple  http /health  on         5 (1 draining, 1 disabled, 1 unhealthy)\n\
             198.18.0.10:53/udp            7  source   -             off        0\n\
             198.18.0.10:443/tcp       65537  5-tuple  tcp           ACTIVE     1\n"
        );
        assert_eq!(render_vips(&[]), "no VIPs\n");
    }

    #[test]
    fn health_shows_the_resolved_check_of_each_backend() {
        assert_eq!(
            render_health(&mixed_backends(), NOW),
            "ADDRESS     ADMIN     CHECK         PORT  INTERVAL  TIMEOUT  RISE/FALL  HEALTH     LAST-PROBE  LATENCY  OK/FAIL  SINCE  HTTP\n\
             198.19.1.2  enabled   tcp             80    2000ms   1000ms        2/3  healthy    ok            0.4ms      5/0    12s\n\
             198.19.2.2  enabled   http /health  8080     500ms    250ms        1/2  unhealthy  status 503    3.3ms      0/4  3m04s  expect 200,204 host app.example body \"ready ok\"\n\
             198.19.3.2  draining  -                -         -        -          -  -          -                 -        -      -\n\
             198.19.4.2  disabled  tcp             80    2000ms   1000ms        2/3  unknown    -                 -      0/0      -\n\
             198.19.5.2  enabled   none             -         -        -          -  healthy    -                 -        -      -\n\
             (unknown: not yet decided by the probes; counted as healthy)\n"
        );
        // No HTTP check: no HTTP column; no unknown backend: no note.
        let tcp_only: Vec<BackendInfo> = mixed_backends()
            .into_iter()
            .filter(|b| b.health != Health::Unknown && b.address != Ipv4Addr::new(198, 19, 2, 2))
            .collect();
        let text = render_health(&tcp_only, NOW);
        assert!(
            text.starts_with("ADDRESS     ADMIN     CHECK  PORT"),
            "{text}"
        );
        assert!(
            !text.contains("HTTP") && !text.contains("unknown"),
            "{text}"
        );
        assert_eq!(render_health(&[], NOW), "no backends\n");
    }

    #[test]
    fn ages_are_short_and_readable() {
        for (ms, text) in [
            (0, "0s"),
            (12_999, "12s"),
            (59_999, "59s"),
            (60_000, "1m00s"),
            (184_000, "3m04s"),
            (3_599_999, "59m59s"),
            (3_600_000, "1h00m"),
            (7_500_000, "2h05m"),
            (86_400_000, "1d00h"),
            (3 * 86_400_000 + 4 * 3_600_000 + 59_000, "3d04h"),
        ] {
            assert_eq!(format_age(ms), text, "{ms}");
        }
        // A transition "in the future" (clocks disagree) shows as 0s.
        let b = BackendInfo {
            check: Some(CheckSpec::new(CheckKind::Tcp, 80)),
            last_transition_unix_ms: Some(NOW + 5_000),
            ..backend(B1, 1, AdminState::Enabled, 1.0)
        };
        assert_eq!(health_cells(&b, NOW)[4], "0s");
    }

    #[test]
    fn stats_show_nonzero_global_counters_unless_all() {
        let stats = StatsReport {
            global: GlobalCounters {
                flow_hits: 90,
                flow_misses: 10,
                tx: 100,
                ..GlobalCounters::default()
            },
            vips: vec![VipCounters {
                vip: vip(),
                packets: 100,
                bytes: 6400,
                new_flows: 10,
                backends: vec![BackendCounters {
                    address: B1,
                    packets: 100,
                    bytes: 6400,
                }],
            }],
        };
        assert_eq!(
            render_stats(&stats, false),
            "COUNTER      VALUE\n\
             flow_hits       90\n\
             flow_misses     10\n\
             tx             100\n\
             \n\
             VIP / BACKEND       PACKETS  BYTES  NEW-FLOWS\n\
             198.18.0.10:80/tcp      100   6400         10\n\
             \x20 198.19.1.2            100   6400\n"
        );
        let all = render_stats(&stats, true);
        assert!(all.contains("passed               0\n"), "{all}");
        assert_eq!(all.lines().take_while(|l| !l.is_empty()).count(), 15);
        let idle = render_stats(
            &StatsReport {
                global: GlobalCounters::default(),
                vips: vec![],
            },
            false,
        );
        assert_eq!(
            idle,
            "global counters: all zero (--all lists them)\n\nno VIPs\n"
        );
    }

    #[test]
    fn flows_lookup_and_summary() {
        let mut flow = FlowLookup {
            vip: vip(),
            source: Ipv4Addr::new(203, 0, 113, 7),
            source_port: 40000,
            ring_backend: Some(B1),
            pinned_backend: None,
        };
        assert_eq!(
            render_lookup(&flow),
            "flow            203.0.113.7:40000 -> 198.18.0.10:80/tcp\n\
             ring backend    198.19.1.2\n\
             pinned backend  none (no connection-table entry)\n"
        );
        flow.ring_backend = None;
        flow.pinned_backend = Some(B1);
        let text = render_lookup(&flow);
        assert!(text.contains("ring backend    none (no backend takes new flows)\n"));
        assert!(text.contains("pinned backend  198.19.1.2\n"));
        let summary = FlowSummary {
            vip: vip(),
            total: 5,
            per_backend: vec![BackendFlows {
                address: B1,
                flows: 4,
            }],
            stale: 1,
        };
        assert_eq!(
            render_summary(&summary),
            "198.18.0.10:80/tcp: 5 connection-table entries\n\
             BACKEND     FLOWS\n\
             198.19.1.2      4\n\
             stale (backend no longer in the VIP): 1\n"
        );
    }

    #[test]
    fn change_summaries() {
        let mut change = ChangeReport {
            applied: ApplyReport {
                rings_written: vec![vip()],
                backends_added: 1,
                ..ApplyReport::default()
            },
            flows_flushed: None,
        };
        assert_eq!(
            summarize_change(&change, false),
            "ok: 1 ring rewritten, 1 backend added"
        );
        assert_eq!(
            summarize_change(&change, true),
            "ok: 1 ring rewritten, 1 backend added"
        );
        change.applied = ApplyReport {
            vips_added: vec![vip(), vip()],
            vips_removed: vec![vip()],
            rings_written: vec![vip(), vip()],
            backends_added: 0,
            backends_removed: 3,
        };
        assert_eq!(
            summarize_change(&change, false),
            "ok: 2 VIPs added, 1 VIP removed, 2 rings rewritten, 3 backends removed"
        );
        change.applied = ApplyReport::default();
        assert_eq!(summarize_change(&change, false), "ok: nothing changed");
        // A health check or fail-open setting was saved even so.
        assert_eq!(
            summarize_change(&change, true),
            "ok: saved (no table rewritten)"
        );
        change.flows_flushed = Some(0);
        assert_eq!(summarize_change(&change, false), "ok: 0 flows flushed");
        change.flows_flushed = Some(1);
        assert_eq!(summarize_change(&change, false), "ok: 1 flow flushed");
    }

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

    // --- the protocol reference

    /// Every example line of docs/control-api.md is accepted by the agent's
    /// parser (requests) or by lbctl (responses), and is exactly what the
    /// shared types serialize to.
    #[test]
    fn the_protocol_reference_examples_are_exact() {
        let doc = include_str!("../../../docs/control-api.md");
        let (mut requests, mut responses) = (Vec::new(), 0);
        for line in doc.lines().map(str::trim) {
            // `echo '<request>' | socat ...`
            let line = line
                .strip_prefix("echo '")
                .and_then(|l| l.split_once("' |"))
                .map_or(line, |(request, _)| request);
            if line.starts_with("{\"op\":") {
                let request = lb_userspace::control::server::parse_request(line.as_bytes())
                    .unwrap_or_else(|e| panic!("{line}: {e}"));
                if !line.contains("\"v\":") {
                    assert_eq!(serde_json::to_string(&request).expect("serializes"), line);
                }
                requests.push(op_name(&request));
            } else if line.starts_with("{\"ok\":true") || line.starts_with("{\"ok\":false") {
                let response = client::parse_response(Path::new("docs"), line)
                    .unwrap_or_else(|e| panic!("{line}: {e}"));
                assert_eq!(serde_json::to_string(&response).expect("serializes"), line);
                responses += 1;
            }
        }
        for op in protocol::OPERATIONS {
            assert!(
                requests.iter().any(|r| r == op),
                "docs/control-api.md has no example request for {op}"
            );
            assert!(
                doc.contains(&format!("\n### {op}\n")),
                "docs/control-api.md has no section for {op}"
            );
        }
        assert!(responses >= protocol::OPERATIONS.len(), "{responses}");
    }

    /// Every subcommand (`vip add`, `health set`, ...) has a row in the
    /// lbctl table of docs/control-api.md.
    #[test]
    fn the_lbctl_reference_lists_every_subcommand() {
        use clap::CommandFactory;
        fn walk(prefix: &str, command: &clap::Command, doc: &str) -> usize {
            let mut seen = 0;
            for sub in command.get_subcommands().filter(|c| c.get_name() != "help") {
                let path = format!("{prefix} {}", sub.get_name());
                if sub.has_subcommands() {
                    seen += walk(&path, sub, doc);
                }
                // Leaves, and `health VIP` (a command with subcommands that
                // also stands alone).
                if !sub.has_subcommands() || sub.get_positionals().next().is_some() {
                    assert!(
                        doc.contains(&format!("| `{path}")),
                        "docs/control-api.md does not list `{path}`"
                    );
                    seen += 1;
                }
            }
            seen
        }
        let doc = include_str!("../../../docs/control-api.md");
        assert!(walk("lbctl", &Cli::command(), doc) >= 21);
    }

    #[test]
    fn the_protocol_reference_lists_every_error_code() {
        use lb_userspace::control::protocol::ErrorCode;
        let doc = include_str!("../../../docs/control-api.md");
        for code in ErrorCode::ALL {
            let name = serde_json::to_value(code).expect("serializes");
            let name = name.as_str().expect("a string");
            assert!(
                doc.contains(&format!("| `{name}` |")),
                "docs/control-api.md does not describe error code {name}"
            );
        }
        assert!(doc.contains(&protocol::MAX_REQUEST_BYTES.to_string()));
        assert!(doc.contains(protocol::DEFAULT_SOCKET));
    }
}
