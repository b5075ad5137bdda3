//! From the command line to the one control request it sends.

use lb_userspace::{
    control::protocol::Request, dataplane::Protocol, policy::Policy, trace::packet::PacketSpec,
};

use crate::cli::{BackendCommand, Command, FlowCommand, HealthCommand, TraceArgs, VipCommand};

impl TraceArgs {
    /// The described packet (without `--pcap`), or what is wrong with the
    /// flags beyond what clap checks.
    pub(crate) fn packet(&self) -> Result<PacketSpec, String> {
        let (Some(source), Some(destination)) = (self.source, self.destination) else {
            return Err("--source and --destination are required".into());
        };
        if source.protocol.is_some() {
            return Err("--source takes ADDRESS or ADDRESS:PORT, no protocol".into());
        }
        let source_port =
            one_of("--source-port", self.source_port, "--source", source.port)?.unwrap_or(40000);
        let destination_port = one_of(
            "--destination-port",
            self.destination_port,
            "--destination",
            destination.port,
        )?
        .ok_or("--destination-port is required (or a port in --destination ADDRESS:PORT)")?;
        let protocol = one_of(
            "--protocol",
            self.protocol,
            "--destination",
            destination.protocol,
        )?
        .unwrap_or(Protocol::Tcp);
        if protocol == Protocol::Udp && !self.tcp_flags.is_empty() {
            return Err("--tcp-flags is only for --protocol tcp".into());
        }
        let packet = PacketSpec {
            source: source.addr,
            source_port,
            destination: destination.addr,
            destination_port,
            protocol,
            tcp_flags: (!self.tcp_flags.is_empty()).then(|| self.tcp_flags.clone()),
            payload_len: self.payload_len,
        };
        // The agent refuses it too; saying so here names the flags.
        packet.check_families().map_err(|e| format!("--{e}"))?;
        Ok(packet)
    }

    /// The request for one frame of a capture.
    pub(crate) fn frame_request(frame: &[u8]) -> Request {
        Request::Trace {
            packet: None,
            frame: Some(lb_userspace::trace::packet::to_hex(frame)),
        }
    }
}

/// A value given by a flag of its own, or inside another flag's value
/// (`--destination-port 80`, `--destination 198.18.0.10:80`): either, or
/// both when they agree.
fn one_of<T: PartialEq + std::fmt::Display>(
    flag: &str,
    value: Option<T>,
    within: &str,
    inner: Option<T>,
) -> Result<Option<T>, String> {
    match (value, inner) {
        (Some(a), Some(b)) if a != b => {
            Err(format!("{flag} {a} contradicts the {b} given in {within}"))
        }
        (a, b) => Ok(a.or(b)),
    }
}

impl Command {
    /// The one request a command sends; `None` for commands that send
    /// none (`completions`, `man`) or several (`top`, `trace --pcap`).
    pub(crate) fn request(&self) -> Option<Request> {
        Some(match self {
            Command::Version => Request::Version {},
            Command::Vips | Command::Digest => Request::ListVips {},
            Command::Vip(VipCommand::Add {
                vip,
                table_size,
                policy,
                hash_source_only,
                no_icmp_echo,
                encap,
                gue_port,
            }) => Request::AddVip {
                vip: *vip,
                table_size: *table_size,
                policy: if *hash_source_only {
                    Policy::MaglevSource
                } else {
                    policy.policy.unwrap_or_default()
                },
                source_prefix: policy.source_prefix,
                affinity_timeout: policy.affinity_timeout,
                idle_timeout: policy.idle_timeout,
                // Unset means the agent's default (on).
                icmp_echo: no_icmp_echo.then_some(false),
                encap: *encap,
                gue_port: *gue_port,
            },
            Command::Vip(VipCommand::Policy { vip, policy }) => Request::SetPolicy {
                vip: *vip,
                policy: policy.policy.unwrap_or_default(),
                source_prefix: policy.source_prefix,
                affinity_timeout: policy.affinity_timeout,
                idle_timeout: policy.idle_timeout,
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
            } => return None,
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
            Command::Top(_) | Command::Trace(_) | Command::Completions { .. } | Command::Man => {
                return None
            }
        })
    }

    /// Whether the command changes settings whose effect on the tables
    /// may come later, or never (health checks, fail-open).
    pub(crate) fn changes_settings(&self) -> bool {
        matches!(
            self,
            Command::Health {
                action: Some(_),
                ..
            } | Command::Vip(VipCommand::FailOpen { .. })
        )
    }
}

/// The request's `op`, for messages.
pub(crate) fn op_name(request: &Request) -> String {
    serde_json::to_value(request)
        .ok()
        .and_then(|v| v.get("op").and_then(|op| op.as_str()).map(str::to_string))
        .unwrap_or_else(|| "the request".into())
}

/// The response key a command expects.
pub(crate) fn expected_key(command: &Command) -> &'static str {
    match command {
        Command::Version => "\"version\"",
        Command::Vips | Command::Digest => "\"vips\"",
        Command::Backends { .. } | Command::Health { action: None, .. } => "\"backends\"",
        Command::Config => "\"config\"",
        Command::Stats { .. } => "\"stats\"",
        Command::Flow(FlowCommand::Lookup { .. }) => "\"flow\"",
        Command::Flow(FlowCommand::Summary { .. }) => "\"flows\"",
        _ => "\"changed\"",
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::Path};

    use lb_userspace::{
        config::{CheckType, HealthCheckConfig},
        control::{client, protocol},
        dataplane::{Protocol, VipAddr},
        encap::EncapKind,
    };

    use super::*;
    use crate::testutil::*;

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
                policy: Policy::Maglev,
                source_prefix: None,
                affinity_timeout: None,
                idle_timeout: None,
                icmp_echo: None,
                encap: None,
                gue_port: None,
            }
        );
        assert_eq!(
            req(&[
                "vip",
                "add",
                "198.18.0.10:80/tcp",
                "--encap",
                "gue",
                "--gue-port",
                "9000"
            ]),
            Request::AddVip {
                vip: vip(),
                table_size: None,
                policy: Policy::Maglev,
                source_prefix: None,
                affinity_timeout: None,
                idle_timeout: None,
                icmp_echo: None,
                encap: Some(EncapKind::Gue),
                gue_port: Some(9000),
            }
        );
        let e = usage_error(&["vip", "add", "198.18.0.10:80/tcp", "--encap", "vxlan"]).to_string();
        assert!(e.contains("ipip or gue"), "{e}");
        usage_error(&["vip", "add", "198.18.0.10:80/tcp", "--gue-port", "9000"]);
        assert_eq!(
            req(&[
                "vip",
                "add",
                "198.18.0.10:53/udp",
                "--table-size",
                "655373",
                "--hash-source-only",
                "--no-icmp-echo"
            ]),
            Request::AddVip {
                vip: VipAddr {
                    port: 53,
                    proto: Protocol::Udp,
                    ..vip()
                },
                table_size: Some(655_373),
                policy: Policy::MaglevSource,
                source_prefix: None,
                affinity_timeout: None,
                idle_timeout: None,
                icmp_echo: Some(false),
                encap: None,
                gue_port: None,
            }
        );
        assert_eq!(
            req(&[
                "vip",
                "add",
                "198.18.0.10:80/tcp",
                "--policy",
                "least-conn",
                "--idle-timeout",
                "120",
                "--affinity-timeout",
                "30",
                "--source-prefix",
                "24"
            ]),
            Request::AddVip {
                vip: vip(),
                table_size: None,
                policy: Policy::LeastConn,
                source_prefix: Some(24),
                affinity_timeout: Some(30),
                idle_timeout: Some(120),
                icmp_echo: None,
                encap: None,
                gue_port: None,
            }
        );
        assert_eq!(
            req(&[
                "vip",
                "policy",
                "198.18.0.10:80/tcp",
                "--policy",
                "round-robin"
            ]),
            Request::SetPolicy {
                vip: vip(),
                policy: Policy::RoundRobin,
                source_prefix: None,
                affinity_timeout: None,
                idle_timeout: None,
            }
        );
        let e = usage_error(&["vip", "policy", "198.18.0.10:80/tcp", "--policy", "fastest"])
            .to_string();
        assert!(
            e.contains("unknown policy") && e.contains("least-conn"),
            "{e}"
        );
        usage_error(&[
            "vip",
            "add",
            "198.18.0.10:80/tcp",
            "--policy",
            "random",
            "--hash-source-only",
        ]);
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
        assert_eq!(
            req(&["backend", "add", "[2001:db8::10]:80/tcp", "2001:db8:1::2"]),
            Request::AddBackend {
                vip: vip6(),
                backend: B6,
                weight: None
            }
        );
        assert_eq!(
            req(&["backend", "drain", v, "2001:db8:1::2"]),
            Request::Drain {
                vip: vip(),
                backend: B6
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
                source: Ipv4Addr::new(203, 0, 113, 7).into(),
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
        assert_eq!(
            req(&[
                "flow",
                "lookup",
                "[2001:db8::10]:80/tcp",
                "2001:db8:ff::7",
                "40000"
            ]),
            Request::LookupFlow {
                vip: vip6(),
                source: "2001:db8:ff::7".parse().expect("an address"),
                source_port: 40000
            }
        );
        // Unbracketed, the port cannot be told from the address.
        usage_error(&["flow", "summary", "2001:db8::10:80/tcp"]);
        usage_error(&["flow", "lookup", v, "203.0.113.7", "70000"]);
        usage_error(&["flow", "lookup", v, "203.0.113.7"]);
        usage_error(&["flow", "purge", v]);
    }

    // --- the protocol reference

    /// Every example line of docs/control-api.md is accepted by the agent's
    /// parser (requests) or by lbctl (responses), and is exactly what the
    /// shared types serialize to.
    #[test]
    fn the_protocol_reference_examples_are_exact() {
        let doc = include_str!("../../../../docs/control-api.md");
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
    fn the_protocol_reference_lists_every_error_code() {
        use lb_userspace::control::protocol::ErrorCode;
        let doc = include_str!("../../../../docs/control-api.md");
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
