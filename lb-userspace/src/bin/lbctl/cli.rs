//! The command line: every subcommand, option and flag (clap). Shell
//! completions and the manual page are generated from these definitions.

use std::{
    ffi::OsString,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{
    builder::{PossibleValuesParser, TypedValueParser},
    Args, Parser, Subcommand,
};
use lb_userspace::{
    config::{CheckType, HealthCheckConfig},
    control::protocol,
    dataplane::{Protocol, VipAddr},
    encap::EncapKind,
    policy::Policy,
    trace::packet::TcpFlag,
};

pub(crate) const AFTER_HELP: &str = "\
VIP is written ADDRESS:PORT/PROTOCOL, for example 198.18.0.10:80/tcp or,
with an IPv6 address in brackets, [2001:db8::10]:80/tcp.

Exit status:
  0  success
  1  the agent refused the request (\"error: <code>: <message>\" on stderr;
     with --json the response is printed on stdout)
  2  usage error (invalid arguments)
  3  cannot reach the agent (connect failed, timeout, malformed response)

The protocol is documented in docs/control-api.md.";

/// Environment variable naming the control socket (overridden by --socket).
pub(crate) const SOCKET_ENV: &str = "LB_SOCKET";

/// Control a running lb-agent through its control socket.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help = format!(
            "Control socket of lb-agent [env: {SOCKET_ENV}] [default: {}]",
            protocol::DEFAULT_SOCKET
        )
    )]
    pub(crate) socket: Option<PathBuf>,
    /// Print the agent's response as it came: one JSON object on one line
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Seconds to wait for the agent (fractions allowed)
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        default_value = "5",
        value_parser = parse_timeout
    )]
    pub(crate) timeout: Duration,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Show the agent's and the protocol's versions
    Version,
    /// List the VIPs
    Vips,
    /// Print each VIP's table digest (compare LB nodes: equal digests, same
    /// backend for every new flow)
    Digest,
    /// Add or remove a VIP, or set whether it fails open
    #[command(subcommand)]
    Vip(VipCommand),
    /// List a VIP's backends: weight, admin state, health, share of new flows
    Backends {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
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
    /// Live packets/s, bytes/s and new flows/s per VIP and per backend,
    /// from successive `stats` requests (Ctrl-C stops)
    Top(TopArgs),
    /// Run a packet, IPv4 or IPv6, through a trace instance of the
    /// balancer (the live tables, scratch connection tables and counters):
    /// verdict, backend, output headers. Production state is not touched
    Trace(TraceArgs),
    /// Print a shell completion script for lbctl to stdout
    Completions {
        /// The shell to complete in
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print lbctl's manual page (roff, for man(1)) to stdout
    Man,
}

#[derive(Debug, Subcommand)]
pub(crate) enum VipCommand {
    /// Add a VIP (without backends)
    Add {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// Maglev table size, a prime (the agent's default: 65537)
        #[arg(long, value_name = "N")]
        table_size: Option<u32>,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Old name of --policy maglev-source
        #[arg(long, conflicts_with = "policy")]
        hash_source_only: bool,
        /// Do not let the balancer answer ICMP echo requests (ping) to the
        /// VIP's address (it still does if another VIP there allows it)
        #[arg(long)]
        no_icmp_echo: bool,
        /// How packets travel to the backends: ipip (the agent's default)
        /// or gue (UDP, spread over the backend's receive queues)
        #[arg(long, value_name = "ipip|gue", value_parser = parse_encap)]
        encap: Option<EncapKind>,
        /// gue: the outer UDP destination port (the agent's default: 6080)
        #[arg(long, value_name = "PORT", requires = "encap")]
        gue_port: Option<u16>,
    },
    /// Remove a VIP and its backends
    Remove {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
    },
    /// Change the VIP's scheduling policy (established connections stay on
    /// their backends); settings left out take their defaults
    Policy {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Set whether the VIP keeps all its enabled backends when every one is
    /// unhealthy (on, the default) or drops its new flows (off)
    FailOpen {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
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

/// A VIP's scheduling policy and its settings (docs/policies.md).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PolicyArgs {
    /// How new flows pick a backend: maglev (default), maglev-source,
    /// random, round-robin or least-conn
    #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
    pub(crate) policy: Option<Policy>,
    /// maglev-source and affinity: clients sharing this many leading
    /// address bits count as one (1-32)
    #[arg(long, value_name = "BITS")]
    pub(crate) source_prefix: Option<u8>,
    /// Source-IP affinity: a client returns to its last backend for this
    /// many seconds after its last packet
    #[arg(long, value_name = "SECONDS")]
    pub(crate) affinity_timeout: Option<u32>,
    /// least-conn: a connection silent for this many seconds stops counting
    #[arg(long, value_name = "SECONDS")]
    pub(crate) idle_timeout: Option<u32>,
}

fn parse_policy(text: &str) -> Result<Policy, String> {
    text.parse().map_err(|e: anyhow::Error| e.to_string())
}

fn parse_encap(text: &str) -> Result<EncapKind, String> {
    text.parse().map_err(|e: anyhow::Error| e.to_string())
}

#[derive(Debug, Subcommand)]
pub(crate) enum BackendCommand {
    /// Add a backend to a VIP
    Add {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's address (IPv4 or IPv6)
        address: IpAddr,
        /// Relative share of new flows (the agent's default: 1)
        #[arg(long, value_name = "N")]
        weight: Option<u32>,
    },
    /// Remove a backend; its established flows move to other backends
    Remove {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's address (IPv4 or IPv6)
        address: IpAddr,
    },
    /// Set a backend's weight (a drained backend stays drained)
    Weight {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's address (IPv4 or IPv6)
        address: IpAddr,
        /// The new weight, 0 to 10000 (0: no new flows)
        weight: u32,
    },
    /// Drain a backend: no new flows, established flows continue
    Drain {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's address (IPv4 or IPv6)
        address: IpAddr,
    },
    /// Undrain a backend: new flows again, at its weight (same as enable)
    Undrain {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's address (IPv4 or IPv6)
        address: IpAddr,
    },
    /// Disable a backend: out of the data path, its established flows are
    /// re-selected
    Disable {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's address (IPv4 or IPv6)
        address: IpAddr,
    },
    /// Enable a backend (draining or disabled): new flows again, at its weight
    Enable {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The backend's address (IPv4 or IPv6)
        address: IpAddr,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum HealthCommand {
    /// Set the health check of a VIP, or with --backend one backend's
    /// settings (overriding the VIP's field by field); only the options
    /// given are set, the agent's defaults apply to the others
    Set {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// Set this backend's settings instead of the VIP's
        #[arg(long, value_name = "ADDRESS")]
        backend: Option<IpAddr>,
        #[command(flatten)]
        check: CheckArgs,
    },
    /// Remove the health check of a VIP, or with --backend one backend's
    /// settings (it then follows the VIP's)
    Clear {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// Clear this backend's settings instead of the VIP's
        #[arg(long, value_name = "ADDRESS")]
        backend: Option<IpAddr>,
    },
}

/// The fields of a `HealthCheckConfig`, each optional.
#[derive(Debug, Args)]
#[command(next_help_heading = "Check settings (only those given are set)")]
pub(crate) struct CheckArgs {
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

pub(crate) fn parse_check_type(text: &str) -> CheckType {
    match text {
        "none" => CheckType::None,
        "http" => CheckType::Http,
        _ => CheckType::Tcp,
    }
}

impl CheckArgs {
    /// The settings with exactly the options given.
    pub(crate) fn config(&self) -> HealthCheckConfig {
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
pub(crate) enum FlowCommand {
    /// Show which backend a client's flow reaches (ring and connection table)
    Lookup {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
        /// The client's address (of the VIP's family)
        source: IpAddr,
        /// The client's port
        source_port: u16,
    },
    /// Count a VIP's connection-table entries per backend
    Summary {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
    },
    /// Delete a VIP's connection-table entries (flows re-select a backend)
    Flush {
        /// The VIP: ADDRESS:PORT/PROTOCOL, e.g. 198.18.0.10:80/tcp or [2001:db8::10]:80/tcp
        #[arg(value_parser = protocol::parse_vip)]
        vip: VipAddr,
    },
}

/// `--socket`, else a non-empty `LB_SOCKET`, else the default.
pub(crate) fn socket_path(flag: Option<&Path>, env: Option<OsString>) -> PathBuf {
    match (flag, env) {
        (Some(path), _) => path.to_path_buf(),
        (None, Some(env)) if !env.is_empty() => PathBuf::from(env),
        _ => PathBuf::from(protocol::DEFAULT_SOCKET),
    }
}

pub(crate) fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_seconds(text, "the timeout")
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    parse_seconds(text, "the interval")
}

/// A positive number of seconds, fractions allowed.
fn parse_seconds(text: &str, what: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("{text:?}: {what} must be positive"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?}: {what} is too large"))
}

/// `lbctl trace`: a packet described by flags, or the packets of a capture.
#[derive(Debug, Args)]
pub(crate) struct TraceArgs {
    /// The packet's source (the client): ADDRESS, IPv4 or IPv6, or
    /// ADDRESS:PORT ([ADDRESS]:PORT for IPv6)
    #[arg(
        long,
        value_name = "ADDRESS",
        required_unless_present = "pcap",
        value_parser = parse_endpoint
    )]
    pub(crate) source: Option<Endpoint>,
    /// The packet's source port [default: 40000, or the port in --source]
    #[arg(long, value_name = "PORT")]
    pub(crate) source_port: Option<u16>,
    /// The packet's destination (a VIP, or any other address) of the
    /// source's family: ADDRESS, ADDRESS:PORT or a VIP ADDRESS:PORT/PROTOCOL
    /// (IPv6 in brackets before a port: [2001:db8::10]:80/tcp)
    #[arg(
        long,
        value_name = "ADDRESS",
        required_unless_present = "pcap",
        value_parser = parse_endpoint
    )]
    pub(crate) destination: Option<Endpoint>,
    /// The packet's destination port (required unless --destination has one)
    #[arg(long, value_name = "PORT")]
    pub(crate) destination_port: Option<u16>,
    /// tcp or udp [default: tcp, or the protocol in --destination]
    #[arg(
        long,
        value_name = "PROTOCOL",
        value_parser = PossibleValuesParser::new(["tcp", "udp"]).map(|s| parse_protocol(&s))
    )]
    pub(crate) protocol: Option<Protocol>,
    /// TCP flags, comma-separated: fin, syn, rst, psh, ack, urg, ece, cwr
    /// [default: syn]
    #[arg(long, value_name = "FLAGS", value_delimiter = ',', value_parser = parse_tcp_flag)]
    pub(crate) tcp_flags: Vec<TcpFlag>,
    /// Bytes of payload (zeros) after the TCP or UDP header
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) payload_len: u16,
    /// Trace every packet of a capture file instead (classic pcap,
    /// Ethernet link type; IPv4 and IPv6)
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "source",
            "source_port",
            "destination",
            "destination_port",
            "protocol",
            "tcp_flags",
        ]
    )]
    pub(crate) pcap: Option<PathBuf>,
}

/// An address on the trace command line, with the port and protocol it may
/// carry (`198.18.0.10`, `198.18.0.10:80`, `[2001:db8::10]:80/tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) addr: IpAddr,
    pub(crate) port: Option<u16>,
    pub(crate) protocol: Option<Protocol>,
}

/// ADDRESS, ADDRESS:PORT or ADDRESS:PORT/PROTOCOL, an IPv6 address in
/// brackets when a port follows (as VIPs are written everywhere else).
/// An IPv6 address without brackets is only an address: its last group
/// cannot be told from a port.
fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let address = |addr| Endpoint {
        addr,
        port: None,
        protocol: None,
    };
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(address(addr));
    }
    if let Some(addr) = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse::<std::net::Ipv6Addr>().ok())
    {
        return Ok(address(addr.into()));
    }
    if text.contains('/') {
        // VipAddr's own messages say what is wrong with which part.
        let vip: VipAddr = text.parse()?;
        return Ok(Endpoint {
            addr: vip.addr,
            port: Some(vip.port),
            protocol: Some(vip.proto),
        });
    }
    match text.parse::<std::net::SocketAddr>() {
        Ok(socket) => Ok(Endpoint {
            addr: socket.ip(),
            port: Some(socket.port()),
            protocol: None,
        }),
        Err(_) => Err(format!(
            "{text:?}: expected ADDRESS, ADDRESS:PORT or ADDRESS:PORT/PROTOCOL \
             (IPv6 before a port in brackets: [2001:db8::10]:80)"
        )),
    }
}

fn parse_protocol(text: &str) -> Protocol {
    match text {
        "udp" => Protocol::Udp,
        _ => Protocol::Tcp,
    }
}

fn parse_tcp_flag(text: &str) -> Result<TcpFlag, String> {
    TcpFlag::ALL
        .into_iter()
        .find(|f| f.name().eq_ignore_ascii_case(text.trim()))
        .ok_or_else(|| {
            let names: Vec<&str> = TcpFlag::ALL.iter().map(|f| f.name()).collect();
            format!("{text:?} is not a TCP flag ({})", names.join(", "))
        })
}

/// `lbctl top`: how often and how many times.
#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    /// Seconds between two updates (fractions allowed)
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    pub(crate) interval: Duration,
    /// Print one update (one interval's rates) and exit
    #[arg(long, conflicts_with = "count")]
    pub(crate) once: bool,
    /// Print N updates and exit (default: until interrupted)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
}

impl TopArgs {
    /// How many updates to print; `None`: until interrupted.
    pub(crate) fn updates(&self) -> Option<u64> {
        if self.once {
            Some(1)
        } else {
            self.count
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;
    use crate::testutil::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
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
        let doc = include_str!("../../../../docs/control-api.md");
        assert!(walk("lbctl", &Cli::command(), doc) >= 21);
    }
}
