//! `lbctl trace`: one `trace` request per packet (the described one, or
//! each of a capture), and its report for people.

use std::path::Path;

use lb_userspace::{
    control::protocol::{GlobalCounters, Request, ResponseData, TraceReport},
    trace::packet::{Headers, Ipv4Header},
};

use crate::{
    accepted,
    cli::{Cli, TraceArgs},
    exchange, malformed, pcap,
    table::{Align, Table},
    Exit, Outcome,
};

pub(crate) fn run(cli: &Cli, args: &TraceArgs, socket: &Path) -> Outcome {
    let Some(path) = &args.pcap else {
        let packet = match args.packet() {
            Ok(packet) => packet,
            Err(e) => return Outcome::failure(Exit::Usage, e),
        };
        let request = Request::Trace {
            packet: Some(packet),
            frame: None,
        };
        let mut out = Outcome::success(String::new());
        trace_one(cli, socket, &request, None, &mut out);
        return out;
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return Outcome::failure(Exit::Usage, format!("reading {}: {e}", path.display())),
    };
    let packets = match pcap::read(&bytes) {
        Ok(packets) => packets,
        Err(e) => return Outcome::failure(Exit::Usage, format!("{}: {e}", path.display())),
    };
    let mut out = Outcome::success(String::new());
    if packets.is_empty() && !cli.json {
        out.stdout = format!("{}: no packets\n", path.display());
    }
    for (i, p) in packets.iter().enumerate() {
        let mut title = format!("packet {} of {}", i + 1, packets.len());
        if p.original_len as usize > p.data.len() {
            title.push_str(&format!(
                " (captured {} of {} bytes)",
                p.data.len(),
                p.original_len
            ));
        }
        if !cli.json && i > 0 {
            out.stdout.push('\n');
        }
        trace_one(
            cli,
            socket,
            &TraceArgs::frame_request(&p.data),
            Some(&title),
            &mut out,
        );
        if out.exit == Exit::Unreachable {
            break;
        }
    }
    out
}

/// Sends one trace request and adds its answer to `out`: the response line
/// with `--json`, else the report. A refusal makes the run exit 1 (the
/// other packets are still traced); an unreachable agent, 3.
fn trace_one(cli: &Cli, socket: &Path, request: &Request, title: Option<&str>, out: &mut Outcome) {
    let prefix = title.map_or_else(String::new, |t| format!("{t}: "));
    let (answer, response) = match exchange(socket, request, cli.timeout) {
        Ok(exchanged) => exchanged,
        Err(failed) => {
            out.stderr.push_str(&failed.stderr);
            out.exit = failed.exit;
            return;
        }
    };
    if !response.ok {
        out.exit = Exit::Refused;
    }
    if cli.json {
        out.stdout.push_str(&answer);
        out.stdout.push('\n');
        return;
    }
    if let Err(refused) = accepted(&response) {
        out.stderr.push_str(&prefix);
        out.stderr.push_str(&refused.stderr);
        if out.exit != Exit::Refused {
            out.exit = refused.exit;
        }
        return;
    }
    match response.data {
        Some(ResponseData::Trace { trace }) => {
            if let Some(title) = title {
                out.stdout.push_str(title);
                out.stdout.push('\n');
            }
            out.stdout.push_str(&render(&trace));
        }
        _ => {
            let failed = malformed(socket, "the answer to trace does not carry \"trace\"");
            out.stderr.push_str(&failed.stderr);
            out.exit = failed.exit;
        }
    }
}

/// The packet in one line: `198.18.10.2:40000 -> 198.18.0.10:80 tcp syn,
/// 54 bytes`.
fn describe(h: &Headers) -> String {
    let Some(ip) = &h.ipv4 else {
        return format!(
            "{} bytes, {}",
            h.length,
            h.note.as_deref().unwrap_or("not IPv4")
        );
    };
    let what = match (&h.outer_ipv4, &h.tcp, &h.udp) {
        (Some(o), ..) => format!(
            "IP-in-IP {} -> {} carrying {} -> {}",
            o.source, o.destination, ip.source, ip.destination
        ),
        (None, Some(t), _) => format!(
            "{}:{} -> {}:{} tcp {}",
            ip.source,
            t.source_port,
            ip.destination,
            t.destination_port,
            flags(&t.flags)
        ),
        (None, None, Some(u)) => format!(
            "{}:{} -> {}:{} udp",
            ip.source, u.source_port, ip.destination, u.destination_port
        ),
        _ => format!(
            "{} -> {} protocol {}",
            ip.source, ip.destination, ip.protocol
        ),
    };
    format!("{what}, {} bytes", h.length)
}

fn flags(flags: &[lb_userspace::trace::packet::TcpFlag]) -> String {
    if flags.is_empty() {
        return "(no flags)".into();
    }
    flags.iter().map(|f| f.name()).collect::<Vec<_>>().join(",")
}

/// `checksum 0x1c46 ok` or `checksum 0x1c46 BAD`.
fn checksum(value: u16, ok: bool) -> String {
    format!("checksum {value:#06x} {}", if ok { "ok" } else { "BAD" })
}

fn ipv4_row(label: &str, ip: &Ipv4Header) -> [String; 3] {
    let mut details = format!(
        "proto {}, len {}, header {}, ttl {}, tos {:#04x}, id {}",
        ip.protocol, ip.total_length, ip.header_length, ip.ttl, ip.tos, ip.id
    );
    if ip.dont_fragment {
        details.push_str(", DF");
    }
    if ip.fragment {
        details.push_str(", fragment");
    }
    details.push_str(&format!(", {}", checksum(ip.checksum, ip.checksum_ok)));
    [
        label.to_string(),
        format!("{} > {}", ip.source, ip.destination),
        details,
    ]
}

/// Every header of a frame, one per row: layer, addresses, details.
fn header_table(h: &Headers) -> String {
    let mut table = Table::new(&[
        ("LAYER", Align::Left),
        ("FROM > TO", Align::Left),
        ("DETAILS", Align::Left),
    ]);
    table.header = false;
    if let Some(e) = &h.ethernet {
        let mut details = format!("type {:#06x}", e.ethertype);
        if let Some(vlan) = e.vlan {
            details.push_str(&format!(", vlan {vlan}"));
        }
        table.row([
            "  ethernet".to_string(),
            format!("{} > {}", e.source, e.destination),
            details,
        ]);
    }
    if let Some(outer) = &h.outer_ipv4 {
        table.row(ipv4_row("  outer ipv4", outer));
    }
    if let Some(ip) = &h.ipv4 {
        let label = if h.outer_ipv4.is_some() {
            "  inner ipv4"
        } else {
            "  ipv4"
        };
        table.row(ipv4_row(label, ip));
    }
    if let Some(t) = &h.tcp {
        table.row([
            "  tcp".to_string(),
            format!("{} > {}", t.source_port, t.destination_port),
            format!(
                "flags {}, header {}, {}",
                flags(&t.flags),
                t.header_length,
                checksum(t.checksum, t.checksum_ok)
            ),
        ]);
    }
    if let Some(u) = &h.udp {
        table.row([
            "  udp".to_string(),
            format!("{} > {}", u.source_port, u.destination_port),
            format!("len {}, {}", u.length, checksum(u.checksum, u.checksum_ok)),
        ]);
    }
    if let Some(note) = &h.note {
        table.row(["  note".to_string(), note.clone(), String::new()]);
    }
    table.render()
}

/// The non-zero counters: `flow_misses 1, tx 1`.
fn counters(g: &GlobalCounters) -> String {
    let touched: Vec<String> = GlobalCounters::NAMES
        .into_iter()
        .zip(g.values())
        .filter(|&(_, v)| v != 0)
        .map(|(name, v)| format!("{name} {v}"))
        .collect();
    if touched.is_empty() {
        "none".into()
    } else {
        touched.join(", ")
    }
}

/// The report of one trace.
pub(crate) fn render(t: &TraceReport) -> String {
    let none = |why: &str| format!("none ({why})");
    let mut summary = Table::new(&[("WHAT", Align::Left), ("VALUE", Align::Left)]);
    summary.header = false;
    summary.row(["packet".to_string(), describe(&t.input)]);
    summary.row(["verdict".to_string(), t.verdict.clone()]);
    summary.row([
        "vip".to_string(),
        t.vip
            .map_or_else(|| none("no VIP of this agent"), |v| v.to_string()),
    ]);
    let how = match t.flow.as_deref() {
        Some("pinned") => "pinned: the live connection table's entry",
        Some("new") => "new flow: from the ring",
        Some("reselected") => "re-selected from the ring: the live pin is stale",
        _ => "",
    };
    summary.row([
        "backend".to_string(),
        match t.backend {
            Some(b) if how.is_empty() => b.to_string(),
            Some(b) => format!("{b} ({how})"),
            None => none("no backend selected"),
        },
    ]);
    if t.vip.is_some() {
        summary.row([
            "ring backend".to_string(),
            t.ring_backend.map_or_else(
                || none("no backend takes new flows"),
                |b| format!("{b} (the agent's model)"),
            ),
        ]);
        summary.row([
            "live pin".to_string(),
            t.live_pin
                .map_or_else(|| none("no live connection-table entry"), |b| b.to_string()),
        ]);
    }
    summary.row(["counters".to_string(), counters(&t.stats.global)]);
    for vip in &t.stats.vips {
        summary.row([
            String::new(),
            format!(
                "VIP {}: {} packet(s), {} bytes, {} new flow(s)",
                vip.vip, vip.packets, vip.bytes, vip.new_flows
            ),
        ]);
        for b in &vip.backends {
            summary.row([
                String::new(),
                format!(
                    "backend {}: {} packet(s), {} bytes",
                    b.address, b.packets, b.bytes
                ),
            ]);
        }
    }
    let mut out = summary.render();
    out.push_str(&format!("output ({} bytes)\n", t.output.length));
    out.push_str(&header_table(&t.output));
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_userspace::{
        control::protocol::{BackendCounters, StatsReport, VipCounters},
        dataplane::Protocol,
        trace::packet::{self, PacketSpec, TcpFlag},
    };

    use super::*;
    use crate::testutil::{parse, usage_error, vip, B1};

    fn trace_args(args: &[&str]) -> TraceArgs {
        match parse(args).map(|cli| cli.command) {
            Ok(crate::cli::Command::Trace(t)) => t,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn flags_describe_the_packet() {
        let t = trace_args(&[
            "trace",
            "--source",
            "198.18.10.2",
            "--destination",
            "198.18.0.10",
            "--destination-port",
            "80",
        ]);
        assert_eq!(
            t.packet().expect("valid"),
            PacketSpec {
                source: Ipv4Addr::new(198, 18, 10, 2),
                source_port: 40000,
                destination: Ipv4Addr::new(198, 18, 0, 10),
                destination_port: 80,
                protocol: Protocol::Tcp,
                tcp_flags: None,
                payload_len: 0,
            }
        );
        let t = trace_args(&[
            "trace",
            "--source",
            "198.18.10.2",
            "--source-port",
            "5000",
            "--destination",
            "198.18.0.10",
            "--destination-port",
            "80",
            "--tcp-flags",
            "ack,PSH",
            "--payload-len",
            "100",
        ]);
        let p = t.packet().expect("valid");
        assert_eq!(p.tcp_flags, Some(vec![TcpFlag::Ack, TcpFlag::Psh]));
        assert_eq!((p.source_port, p.payload_len), (5000, 100));
        let wire = serde_json::to_string(&Request::Trace {
            packet: Some(p),
            frame: None,
        })
        .expect("serializes");
        assert_eq!(
            wire,
            r#"{"op":"trace","packet":{"source":"198.18.10.2","source_port":5000,"destination":"198.18.0.10","destination_port":80,"protocol":"tcp","tcp_flags":["ack","psh"],"payload_len":100}}"#
        );
        // UDP takes no flags: refused before anything is sent.
        let t = trace_args(&[
            "trace",
            "--source",
            "198.18.10.2",
            "--destination",
            "198.18.0.10",
            "--destination-port",
            "53",
            "--protocol",
            "udp",
            "--tcp-flags",
            "syn",
        ]);
        assert!(t.packet().is_err());
        let v6 = trace_args(&[
            "trace",
            "--source",
            "2001:db8:ff::7",
            "--destination",
            "2001:db8::10",
            "--destination-port",
            "80",
        ]);
        let e = v6.packet().unwrap_err();
        assert!(e.contains("trace does not support IPv6 VIPs yet"), "{e}");
        let d = ["--destination", "198.18.0.10", "--destination-port", "80"];
        usage_error(&["trace"]);
        usage_error(&[&["trace", "--source", "198.18.10"][..], &d].concat());
        usage_error(
            &[
                &["trace", "--source", "198.18.10.2", "--protocol", "icmp"][..],
                &d,
            ]
            .concat(),
        );
        usage_error(
            &[
                &["trace", "--source", "198.18.10.2", "--tcp-flags", "nope"][..],
                &d,
            ]
            .concat(),
        );
        usage_error(
            &[
                &["trace", "--source", "198.18.10.2", "--source-port", "70000"][..],
                &d,
            ]
            .concat(),
        );
        usage_error(&["trace", "--pcap", "x.pcap", "--source", "198.18.10.2"]);
        assert!(trace_args(&["trace", "--pcap", "x.pcap"]).pcap.is_some());
    }

    /// A report as the agent makes it for a SYN sent to B1.
    fn report() -> TraceReport {
        let spec = PacketSpec {
            source: Ipv4Addr::new(198, 18, 10, 2),
            source_port: 40000,
            destination: Ipv4Addr::new(198, 18, 0, 10),
            destination_port: 80,
            protocol: Protocol::Tcp,
            tcp_flags: None,
            payload_len: 0,
        };
        let input = spec
            .frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .expect("builds");
        // The balancer's output: the same Ethernet header, an outer IPv4
        // header to B1, the packet.
        let mut outer = [
            0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 4, 0, 0, 198, 18, 1, 1, 198, 19, 1, 2,
        ];
        let sum = packet::internet_checksum(&outer);
        outer[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut output = input[..14].to_vec();
        output.extend_from_slice(&outer);
        output.extend_from_slice(&input[14..]);
        let global = GlobalCounters {
            flow_misses: 1,
            tx: 1,
            ..GlobalCounters::default()
        };
        TraceReport {
            verdict: "XDP_TX".into(),
            vip: Some(vip()),
            backend: Some(B1),
            flow: Some("new".into()),
            live_pin: None,
            ring_backend: Some(B1),
            stats: StatsReport {
                global,
                vips: vec![VipCounters {
                    vip: vip(),
                    packets: 1,
                    bytes: 54,
                    new_flows: 1,
                    backends: vec![BackendCounters {
                        address: B1,
                        packets: 1,
                        bytes: 54,
                    }],
                }],
            },
            input: packet::parse(&input),
            output: packet::parse(&output),
            output_frame: packet::to_hex(&output),
        }
    }

    #[test]
    fn a_report_shows_verdict_backend_counters_and_headers() {
        let text = render(&report());
        let sum = |h: &Headers| h.ipv4.as_ref().map(|i| i.checksum).unwrap_or(0);
        let r = report();
        let outer = r.output.outer_ipv4.as_ref().expect("outer").checksum;
        let tcp = r.output.tcp.as_ref().expect("tcp").checksum;
        assert_eq!(
            text,
            format!(
                "packet        198.18.10.2:40000 -> 198.18.0.10:80 tcp syn, 54 bytes\n\
                 verdict       XDP_TX\n\
                 vip           198.18.0.10:80/tcp\n\
                 backend       198.19.1.2 (new flow: from the ring)\n\
                 ring backend  198.19.1.2 (the agent's model)\n\
                 live pin      none (no live connection-table entry)\n\
                 counters      flow_misses 1, tx 1\n\
                 \x20             VIP 198.18.0.10:80/tcp: 1 packet(s), 54 bytes, 1 new flow(s)\n\
                 \x20             backend 198.19.1.2: 1 packet(s), 54 bytes\n\
                 output (74 bytes)\n\
                 \x20 ethernet    02:00:00:00:00:01 > 02:00:00:00:00:02  type 0x0800\n\
                 \x20 outer ipv4  198.18.1.1 > 198.19.1.2                proto 4, len 60, header 20, ttl 64, tos 0x00, id 0, DF, checksum {outer:#06x} ok\n\
                 \x20 inner ipv4  198.18.10.2 > 198.18.0.10              proto 6, len 40, header 20, ttl 64, tos 0x00, id 0, DF, checksum {:#06x} ok\n\
                 \x20 tcp         40000 > 80                             flags syn, header 20, checksum {tcp:#06x} ok\n",
                sum(&r.output)
            )
        );
    }

    #[test]
    fn a_packet_to_no_vip_and_bad_checksums() {
        let mut r = report();
        r.verdict = "XDP_PASS".into();
        r.vip = None;
        r.backend = None;
        r.flow = None;
        r.stats = StatsReport {
            global: GlobalCounters {
                passed: 1,
                ..GlobalCounters::default()
            },
            vips: vec![],
        };
        if let Some(ip) = r.output.ipv4.as_mut() {
            ip.checksum_ok = false;
        }
        let text = render(&r);
        assert!(
            text.contains("vip       none (no VIP of this agent)\n"),
            "{text}"
        );
        assert!(
            text.contains("backend   none (no backend selected)\n"),
            "{text}"
        );
        assert!(text.contains("counters  passed 1\n"), "{text}");
        assert!(!text.contains("ring backend"), "{text}");
        assert!(text.contains(" BAD\n"), "{text}");
        let arp = packet::parse(&[0; 42]);
        assert_eq!(describe(&arp), "42 bytes, not IPv4 (ethertype 0x0000)");
    }
}
