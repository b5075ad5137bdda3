//! `lbctl trace`: one `trace` request per packet (the described one, or
//! each of a capture), and its report for people.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use lb_userspace::{
    control::protocol::{GlobalCounters, Request, ResponseData, TraceReport},
    trace::packet::{Headers, Ipv4Header, Ipv6Header, UdpHeader},
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

/// The addresses of a frame's outer IP header, if it is a tunnel, and of
/// its only (or inner) one, with the name of each header's family.
type Addresses = ((IpAddr, IpAddr), &'static str);

fn outer_addresses(h: &Headers) -> Option<Addresses> {
    match (&h.outer_ipv4, &h.outer_ipv6) {
        (Some(o), _) => Some(((o.source.into(), o.destination.into()), "IPv4")),
        (None, Some(o)) => Some(((o.source.into(), o.destination.into()), "IPv6")),
        _ => None,
    }
}

fn inner_addresses(h: &Headers) -> Option<Addresses> {
    match (&h.ipv4, &h.ipv6) {
        (Some(ip), _) => Some(((ip.source.into(), ip.destination.into()), "IPv4")),
        (None, Some(ip)) => Some(((ip.source.into(), ip.destination.into()), "IPv6")),
        _ => None,
    }
}

/// The packet in one line: `198.18.10.2:40000 -> 198.18.0.10:80 tcp syn,
/// 54 bytes`, `[2001:db8::7]:40000 -> [2001:db8::10]:80 tcp syn, 74 bytes`.
fn describe(h: &Headers) -> String {
    let Some(((src, dst), family)) = inner_addresses(h) else {
        return format!(
            "{} bytes, {}",
            h.length,
            h.note.as_deref().unwrap_or("not IP")
        );
    };
    let what = match (outer_addresses(h), &h.tcp, &h.udp) {
        (Some(((osrc, odst), outer_family)), ..) => {
            // IPv4 in IPv4 keeps the name everyone knows it by.
            let tunnel = if let Some(u) = &h.outer_udp {
                format!("GUE over {outer_family} (udp port {})", u.destination_port)
            } else if (family, outer_family) == ("IPv4", "IPv4") {
                "IP-in-IP".to_string()
            } else {
                format!("{family}-in-{outer_family}")
            };
            format!("{tunnel} {osrc} -> {odst} carrying {src} -> {dst}")
        }
        (None, Some(t), _) => format!(
            "{} -> {} tcp {}",
            SocketAddr::new(src, t.source_port),
            SocketAddr::new(dst, t.destination_port),
            flags(&t.flags)
        ),
        (None, None, Some(u)) => format!(
            "{} -> {} udp",
            SocketAddr::new(src, u.source_port),
            SocketAddr::new(dst, u.destination_port)
        ),
        _ => {
            let protocol = h
                .ipv4
                .as_ref()
                .map(|ip| ip.protocol)
                .or(h.ipv6.as_ref().map(|ip| ip.protocol))
                .unwrap_or(0);
            format!("{src} -> {dst} protocol {protocol}")
        }
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

/// IPv6 has no header checksum: the transport header's, under the IPv6
/// pseudo-header, is on its own row.
fn ipv6_row(label: &str, ip: &Ipv6Header) -> [String; 3] {
    let mut details = format!(
        "proto {}, payload {}, hop limit {}, class {:#04x}, flow label {:#07x}",
        ip.protocol, ip.payload_length, ip.hop_limit, ip.traffic_class, ip.flow_label
    );
    if !ip.extension_headers.is_empty() {
        let chain: Vec<String> = ip.extension_headers.iter().map(u8::to_string).collect();
        details.push_str(&format!(", after extension headers {}", chain.join(" ")));
    }
    if ip.fragment {
        details.push_str(", fragment");
    }
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
    if let Some(outer) = &h.outer_ipv6 {
        table.row(ipv6_row("  outer ipv6", outer));
    }
    if let Some(u) = &h.outer_udp {
        table.row(udp_row("  outer udp (gue)", u));
    }
    let tunnel = h.outer_ipv4.is_some() || h.outer_ipv6.is_some();
    if let Some(ip) = &h.ipv4 {
        table.row(ipv4_row(if tunnel { "  inner ipv4" } else { "  ipv4" }, ip));
    }
    if let Some(ip) = &h.ipv6 {
        table.row(ipv6_row(if tunnel { "  inner ipv6" } else { "  ipv6" }, ip));
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
        table.row(udp_row("  udp", u));
    }
    if let Some(note) = &h.note {
        table.row(["  note".to_string(), note.clone(), String::new()]);
    }
    table.render()
}

fn udp_row(label: &str, u: &UdpHeader) -> [String; 3] {
    [
        label.to_string(),
        format!("{} > {}", u.source_port, u.destination_port),
        format!("len {}, {}", u.length, checksum(u.checksum, u.checksum_ok)),
    ]
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
    use std::net::{Ipv4Addr, Ipv6Addr};

    use lb_userspace::{
        control::protocol::{BackendCounters, StatsReport, VipCounters},
        dataplane::Protocol,
        trace::packet::{self, PacketSpec, TcpFlag},
    };

    use super::*;
    use crate::testutil::{parse, usage_error, vip, vip6, B1, B6};

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
                source: Ipv4Addr::new(198, 18, 10, 2).into(),
                source_port: 40000,
                destination: Ipv4Addr::new(198, 18, 0, 10).into(),
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

    /// The described SYN from `source`:40000 to `destination`:80.
    fn syn(source: IpAddr, destination: IpAddr) -> Vec<u8> {
        PacketSpec {
            source,
            source_port: 40000,
            destination,
            destination_port: 80,
            protocol: Protocol::Tcp,
            tcp_flags: None,
            payload_len: 0,
        }
        .frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .expect("builds")
    }

    /// A report as the agent makes it for a SYN sent to B1.
    fn report() -> TraceReport {
        let input = syn(
            Ipv4Addr::new(198, 18, 10, 2).into(),
            Ipv4Addr::new(198, 18, 0, 10).into(),
        );
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
        assert_eq!(describe(&arp), "42 bytes, not IP (ethertype 0x0000)");
    }

    fn packet_of(args: &[&str]) -> Result<PacketSpec, String> {
        trace_args(&[&["trace"][..], args].concat()).packet()
    }

    #[test]
    fn ipv6_packets_and_addresses_with_ports() {
        let client6: IpAddr = "2001:db8:ff::7".parse().expect("address");
        let vip6: IpAddr = "2001:db8::10".parse().expect("address");
        // Plain addresses, as for IPv4.
        let p = packet_of(&[
            "--source",
            "2001:db8:ff::7",
            "--destination",
            "2001:db8::10",
            "--destination-port",
            "80",
        ])
        .expect("valid");
        assert_eq!(
            p,
            PacketSpec {
                source: client6,
                source_port: 40000,
                destination: vip6,
                destination_port: 80,
                protocol: Protocol::Tcp,
                tcp_flags: None,
                payload_len: 0,
            }
        );
        let wire = serde_json::to_string(&Request::Trace {
            packet: Some(p.clone()),
            frame: None,
        })
        .expect("serializes");
        assert_eq!(
            wire,
            r#"{"op":"trace","packet":{"source":"2001:db8:ff::7","source_port":40000,"destination":"2001:db8::10","destination_port":80,"protocol":"tcp"}}"#
        );
        // The VIP as lbctl writes it everywhere, and a bracketed source
        // with its port.
        let vip = packet_of(&[
            "--source",
            "[2001:db8:ff::7]:41000",
            "--destination",
            "[2001:db8::10]:80/tcp",
        ])
        .expect("valid");
        assert_eq!(
            vip,
            PacketSpec {
                source_port: 41000,
                ..p.clone()
            }
        );
        let udp = packet_of(&[
            "--source",
            "2001:db8:ff::7",
            "--destination",
            "[2001:db8::10]:53/udp",
        ])
        .expect("valid");
        assert_eq!((udp.protocol, udp.destination_port), (Protocol::Udp, 53));
        let bare = packet_of(&[
            "--source",
            "[2001:db8:ff::7]",
            "--destination",
            "[2001:db8::10]:80",
        ])
        .expect("valid");
        assert_eq!(bare, p);
        // IPv4 takes the same forms.
        let v4 = packet_of(&[
            "--source",
            "198.18.10.2:5000",
            "--destination",
            "198.18.0.10:80/udp",
        ])
        .expect("valid");
        assert_eq!(
            (v4.source_port, v4.destination_port, v4.protocol),
            (5000, 80, Protocol::Udp)
        );
        // Given twice: fine when equal, refused when not.
        assert!(packet_of(&[
            "--source",
            "2001:db8:ff::7",
            "--destination",
            "[2001:db8::10]:80/tcp",
            "--destination-port",
            "80",
            "--protocol",
            "tcp",
        ])
        .is_ok());
        // Refused, with the reason (each line: --source, --destination,
        // then the other flags).
        let mixed = "--destination: 2001:db8::10 is IPv6 but the source 198.18.10.2 is IPv4: \
                     a packet's addresses are of one family";
        for (args, needle) in [
            (
                "2001:db8:ff::7 [2001:db8::10]:80/tcp --destination-port 81",
                "--destination-port 81 contradicts the 80 given in --destination",
            ),
            (
                "2001:db8:ff::7 [2001:db8::10]:80/udp --protocol tcp",
                "--protocol tcp contradicts the udp given in --destination",
            ),
            (
                "2001:db8:ff::7 [2001:db8::10]:80/udp --tcp-flags ack",
                "--tcp-flags is only for --protocol tcp",
            ),
            (
                "2001:db8:ff::7 2001:db8::10",
                "--destination-port is required",
            ),
            (
                "[2001:db8:ff::7]:5000 [2001:db8::10]:80 --source-port 5001",
                "--source-port 5001 contradicts the 5000 given in --source",
            ),
            ("[2001:db8:ff::7]:1/tcp [2001:db8::10]:80", "no protocol"),
            // Mixed families: refused before anything is sent.
            ("198.18.10.2 [2001:db8::10]:80/tcp", mixed),
        ] {
            let words: Vec<&str> = args.split(' ').collect();
            let flags = [
                &["--source", words[0], "--destination", words[1]][..],
                &words[2..],
            ]
            .concat();
            let e = packet_of(&flags).unwrap_err();
            assert!(e.contains(needle), "{args}: {e}");
        }
        // An IPv6 address before a port needs its brackets; junk is junk.
        for bad in [
            "2001:db8::10:80/tcp",
            "[2001:db8::10]:http",
            "[198.18.0.10]:80",
            "vip",
        ] {
            let e = usage_error(&["trace", "--source", "2001:db8:ff::7", "--destination", bad]);
            assert!(e.to_string().contains("--destination"), "{bad}: {e}");
        }
        usage_error(&["trace", "--pcap", "x.pcap", "--protocol", "udp"]);
    }

    /// What the agent reports for an IPv6 SYN sent to an IPv6 backend:
    /// IP6IP6 from the LB, flow label from the flow hash.
    fn report6() -> TraceReport {
        let input = syn(
            "2001:db8:ff::7".parse().expect("address"),
            "2001:db8::10".parse().expect("address"),
        );
        let mut output = input[..12].to_vec();
        output.extend_from_slice(&[0x86, 0xdd, 0x60, 0x0a, 0xbc, 0xde, 0, 60, 41, 64]);
        output.extend_from_slice(&"2001:db8:1::1".parse::<Ipv6Addr>().expect("LB").octets());
        output.extend_from_slice(&"2001:db8:1::2".parse::<Ipv6Addr>().expect("B6").octets());
        output.extend_from_slice(&input[14..]);
        let mut r = report();
        r.vip = Some(vip6());
        r.backend = Some(B6);
        r.ring_backend = Some(B6);
        r.stats.vips[0].vip = vip6();
        r.stats.vips[0].bytes = 74;
        r.stats.vips[0].backends[0].address = B6;
        r.stats.vips[0].backends[0].bytes = 74;
        r.input = packet::parse(&input);
        r.output = packet::parse(&output);
        r.output_frame = packet::to_hex(&output);
        r
    }

    #[test]
    fn an_ipv6_report_shows_the_outer_and_inner_ipv6_headers() {
        let r = report6();
        let text = render(&r);
        let tcp = r.output.tcp.as_ref().expect("tcp");
        assert!(tcp.checksum_ok);
        assert_eq!(
            text,
            format!(
                "packet        [2001:db8:ff::7]:40000 -> [2001:db8::10]:80 tcp syn, 74 bytes\n\
                 verdict       XDP_TX\n\
                 vip           [2001:db8::10]:80/tcp\n\
                 backend       2001:db8:1::2 (new flow: from the ring)\n\
                 ring backend  2001:db8:1::2 (the agent's model)\n\
                 live pin      none (no live connection-table entry)\n\
                 counters      flow_misses 1, tx 1\n\
                 \x20             VIP [2001:db8::10]:80/tcp: 1 packet(s), 74 bytes, 1 new flow(s)\n\
                 \x20             backend 2001:db8:1::2: 1 packet(s), 74 bytes\n\
                 output (114 bytes)\n\
                 \x20 ethernet    02:00:00:00:00:01 > 02:00:00:00:00:02  type 0x86dd\n\
                 \x20 outer ipv6  2001:db8:1::1 > 2001:db8:1::2          proto 41, payload 60, hop limit 64, class 0x00, flow label 0xabcde\n\
                 \x20 inner ipv6  2001:db8:ff::7 > 2001:db8::10          proto 6, payload 20, hop limit 64, class 0x00, flow label 0x00000\n\
                 \x20 tcp         40000 > 80                             flags syn, header 20, checksum {:#06x} ok\n",
                tcp.checksum
            )
        );
        // IPv4 inside IPv6 (an IPv4 VIP's IPv6 backend) is named so: the
        // IPv4 report's output with its outer IPv4 header (bytes 14-33)
        // replaced by an IPv6 one, next header 4.
        let mut bytes = packet::from_hex(&report().output_frame).expect("hex");
        bytes[12..14].copy_from_slice(&[0x86, 0xdd]);
        let mut outer6 = vec![0x60, 0, 0, 0, 0, 40, 4, 64];
        outer6.extend_from_slice(&"2001:db8:1::1".parse::<Ipv6Addr>().expect("LB").octets());
        outer6.extend_from_slice(&"2001:db8:1::2".parse::<Ipv6Addr>().expect("B6").octets());
        bytes.splice(14..34, outer6);
        let h = packet::parse(&bytes);
        assert_eq!(
            describe(&h),
            "IPv4-in-IPv6 2001:db8:1::1 -> 2001:db8:1::2 carrying 198.18.10.2 -> 198.18.0.10, 94 bytes"
        );
        let table = header_table(&h);
        assert!(
            table.contains("  outer ipv6  2001:db8:1::1 > 2001:db8:1::2"),
            "{table}"
        );
        assert!(
            table.contains("  inner ipv4  198.18.10.2 > 198.18.0.10"),
            "{table}"
        );
        assert!(!table.contains("BAD"), "{table}");
    }
}
