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
    time::Duration,
};

use clap::{Parser, Subcommand};
use lb_userspace::{
    control::{
        client,
        protocol::{
            self, BackendInfo, ChangeReport, FlowLookup, FlowSummary, GlobalCounters, Request,
            Response, ResponseData, StatsReport, VersionInfo, VipInfo,
        },
    },
    dataplane::VipAddr,
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
    /// Add or remove a VIP
    #[command(subcommand)]
    Vip(VipCommand),
    /// List a VIP's backends with their weight, state and share of new flows
    Backends {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
    },
    /// Add, remove, reweight, drain or undrain a backend
    #[command(subcommand)]
    Backend(BackendCommand),
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
    /// Undrain a backend: new flows again, at its weight
    Undrain {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's IPv4 address
        address: Ipv4Addr,
    },
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
        match *self {
            Command::Version => Request::Version {},
            Command::Vips => Request::ListVips {},
            Command::Vip(VipCommand::Add {
                vip,
                table_size,
                hash_source_only,
            }) => Request::AddVip {
                vip,
                table_size,
                hash_source_only,
            },
            Command::Vip(VipCommand::Remove { vip }) => Request::RemoveVip { vip },
            Command::Backends { vip } => Request::ListBackends { vip },
            Command::Backend(BackendCommand::Add {
                vip,
                address,
                weight,
            }) => Request::AddBackend {
                vip,
                backend: address,
                weight,
            },
            Command::Backend(BackendCommand::Remove { vip, address }) => Request::RemoveBackend {
                vip,
                backend: address,
            },
            Command::Backend(BackendCommand::Weight {
                vip,
                address,
                weight,
            }) => Request::SetWeight {
                vip,
                backend: address,
                weight,
            },
            Command::Backend(BackendCommand::Drain { vip, address }) => Request::Drain {
                vip,
                backend: address,
            },
            Command::Backend(BackendCommand::Undrain { vip, address }) => Request::Undrain {
                vip,
                backend: address,
            },
            Command::Config => Request::ShowConfig {},
            Command::Stats { .. } => Request::Stats {},
            Command::Flow(FlowCommand::Lookup {
                vip,
                source,
                source_port,
            }) => Request::LookupFlow {
                vip,
                source,
                source_port,
            },
            Command::Flow(FlowCommand::Summary { vip }) => Request::FlowSummary { vip },
            Command::Flow(FlowCommand::Flush { vip }) => Request::FlushFlows { vip },
        }
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
    let line = match serde_json::to_string(&request) {
        Ok(line) => line,
        Err(e) => return Outcome::failure(Exit::Unreachable, client::ClientError::Encode(e)),
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
    match render(&cli.command, response) {
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

/// The human-readable output of a successful response, or why the response
/// does not fit the request.
fn render(command: &Command, response: Response) -> Result<String, String> {
    let Some(data) = response.data else {
        return Err("a success without data".into());
    };
    let mutation = command.request().is_mutation();
    match (command, data) {
        (Command::Version, ResponseData::Version { version }) => Ok(render_version(&version)),
        (Command::Vips, ResponseData::Vips { vips }) => Ok(render_vips(&vips)),
        (Command::Backends { .. }, ResponseData::Backends { backends }) => {
            Ok(render_backends(&backends))
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
        (_, ResponseData::Changed { changed }) if mutation => Ok(summarize_change(&changed) + "\n"),
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
        Command::Backends { .. } => "\"backends\"",
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
        ("BACKENDS", Align::Left),
    ]);
    for vip in vips {
        let drained = vip.backends.iter().filter(|b| b.drained).count();
        let backends = if drained > 0 {
            format!("{} ({drained} draining)", vip.backends.len())
        } else {
            vip.backends.len().to_string()
        };
        table.row([
            vip.vip.to_string(),
            vip.table_size.to_string(),
            if vip.hash_source_only {
                "source".to_string()
            } else {
                "5-tuple".to_string()
            },
            backends,
        ]);
    }
    table.render()
}

fn render_backends(backends: &[BackendInfo]) -> String {
    if backends.is_empty() {
        return "no backends\n".into();
    }
    let mut table = Table::new(&[
        ("ADDRESS", Align::Left),
        ("WEIGHT", Align::Right),
        ("STATE", Align::Left),
        ("RING-SHARE", Align::Right),
    ]);
    for b in backends {
        table.row([
            b.address.to_string(),
            b.weight.to_string(),
            if b.drained { "draining" } else { "active" }.to_string(),
            format!("{:.2}%", b.ring_share * 100.0),
        ]);
    }
    table.render()
}

/// The global counters by name, in the protocol's order.
fn global_counters(g: &GlobalCounters) -> [(&'static str, u64); 14] {
    // Destructured so that a new counter cannot be forgotten here.
    let GlobalCounters {
        passed,
        malformed,
        flow_hits,
        flow_misses,
        flow_reselected,
        flow_pin_errors,
        drop_fragment,
        drop_too_big,
        drop_no_backend,
        encap_errors,
        fib_failures,
        fib_no_neigh,
        tx,
        redirected,
    } = *g;
    [
        ("passed", passed),
        ("malformed", malformed),
        ("flow_hits", flow_hits),
        ("flow_misses", flow_misses),
        ("flow_reselected", flow_reselected),
        ("flow_pin_errors", flow_pin_errors),
        ("drop_fragment", drop_fragment),
        ("drop_too_big", drop_too_big),
        ("drop_no_backend", drop_no_backend),
        ("encap_errors", encap_errors),
        ("fib_failures", fib_failures),
        ("fib_no_neigh", fib_no_neigh),
        ("tx", tx),
        ("redirected", redirected),
    ]
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

/// One line: `ok: 1 ring rewritten, 1 backend added`.
fn summarize_change(change: &ChangeReport) -> String {
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
    if parts.is_empty() {
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

    fn backend(address: Ipv4Addr, weight: u32, drained: bool, ring_share: f64) -> BackendInfo {
        BackendInfo {
            address,
            weight,
            drained,
            ring_share,
        }
    }

    #[test]
    fn vips_and_backends_as_tables() {
        let backends = vec![
            backend(B1, 1, false, 0.25),
            backend(Ipv4Addr::new(198, 19, 2, 2), 3, false, 0.75),
            backend(Ipv4Addr::new(198, 19, 3, 2), 10, true, 0.0),
        ];
        assert_eq!(
            render_backends(&backends),
            "ADDRESS     WEIGHT  STATE     RING-SHARE\n\
             198.19.1.2       1  active        25.00%\n\
             198.19.2.2       3  active        75.00%\n\
             198.19.3.2      10  draining       0.00%\n"
        );
        assert_eq!(render_backends(&[]), "no backends\n");
        let vips = vec![
            VipInfo {
                vip: vip(),
                table_size: 65537,
                hash_source_only: false,
                backends,
            },
            VipInfo {
                vip: VipAddr {
                    port: 53,
                    proto: Protocol::Udp,
                    ..vip()
                },
                table_size: 7,
                hash_source_only: true,
                backends: vec![],
            },
        ];
        assert_eq!(
            render_vips(&vips),
            "VIP                 TABLE-SIZE  HASH     BACKENDS\n\
             198.18.0.10:80/tcp       65537  5-tuple  3 (1 draining)\n\
             198.18.0.10:53/udp           7  source   0\n"
        );
        assert_eq!(render_vips(&[]), "no VIPs\n");
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
            summarize_change(&change),
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
            summarize_change(&change),
            "ok: 2 VIPs added, 1 VIP removed, 2 rings rewritten, 3 backends removed"
        );
        change.applied = ApplyReport::default();
        assert_eq!(summarize_change(&change), "ok: nothing changed");
        change.flows_flushed = Some(0);
        assert_eq!(summarize_change(&change), "ok: 0 flows flushed");
        change.flows_flushed = Some(1);
        assert_eq!(summarize_change(&change), "ok: 1 flow flushed");
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
        (outcome, line)
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

    #[test]
    fn the_protocol_reference_lists_every_error_code() {
        use lb_userspace::control::protocol::ErrorCode::{self, *};
        // The match makes a new code fail to compile until it is listed.
        let listed = |code: ErrorCode| match code {
            BadJson | BadRequest | UnknownOp | UnsupportedVersion | InvalidAddress
            | InvalidValue | DuplicateVip | DuplicateBackend | UnknownVip | UnknownBackend
            | Capacity | RequestTooLarge | Internal => code,
        };
        let doc = include_str!("../../../docs/control-api.md");
        for code in [
            BadJson,
            BadRequest,
            UnknownOp,
            UnsupportedVersion,
            InvalidAddress,
            InvalidValue,
            DuplicateVip,
            DuplicateBackend,
            UnknownVip,
            UnknownBackend,
            Capacity,
            RequestTooLarge,
            Internal,
        ] {
            let name = serde_json::to_value(listed(code)).expect("serializes");
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
