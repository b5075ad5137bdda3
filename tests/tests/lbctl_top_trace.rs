//! The real `lbctl top` and `lbctl trace` against a running agent in the
//! test bed.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{agent_config, vip_config, wait_or_kill, Bed, TEST_VIP, TEST_VIP6},
    packet::internet_checksum,
    topology::locate_bin,
};
use lb_userspace::{
    control::client,
    dataplane::{Protocol, RingModel, VipAddr, VipSpec},
    trace::packet::PacketSpec,
};
use serde_json::Value;

fn lbctl_bin() -> PathBuf {
    locate_bin("lbctl", "LBCTL").unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs lbctl against the bed's agent; panics unless it exits 0.
fn lbctl(bed: &Bed, args: &[&str]) -> String {
    let output = lbctl_output(bed, args);
    assert!(
        output.status.success(),
        "lbctl {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("lbctl prints UTF-8")
}

fn lbctl_output(bed: &Bed, args: &[&str]) -> Output {
    Command::new(lbctl_bin())
        .arg("--socket")
        .arg(bed.agent.socket())
        .args(args)
        .output()
        .expect("running lbctl")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn top_reports_rates_for_the_backends_that_took_traffic() {
    let bed = Bed::start(3, &[Some(1), Some(1), Some(1)], "native");
    let spawn = |args: &[&str]| {
        Command::new(lbctl_bin())
            .arg("--socket")
            .arg(bed.agent.socket())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting lbctl top")
    };
    let mut top = spawn(&["top", "--count", "2", "--json", "--interval", "0.5"]);
    let mut human = spawn(&["top", "--once", "--interval", "0.5"]);
    // Traffic for as long as top samples: every interval sees some.
    let mut names = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (matches!(top.try_wait(), Ok(None)) || matches!(human.try_wait(), Ok(None)))
        && Instant::now() < deadline
    {
        for (name, _) in bed.open(6) {
            names.insert(name);
        }
    }
    let status = wait_or_kill(&mut top, Duration::from_secs(5))
        .expect("waiting for lbctl top")
        .expect("lbctl top --count 2 ends by itself");
    let output = top.wait_with_output().expect("reading lbctl top");
    assert!(
        status.success(),
        "lbctl top: {status}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let updates: Vec<Value> = text.lines().map(json).collect();
    assert_eq!(updates.len(), 2, "--count 2 prints two updates:\n{text}");
    assert_eq!(
        names.len(),
        3,
        "the traffic reached every backend: {names:?}"
    );
    for update in &updates {
        assert!(
            update["interval_s"].as_f64().is_some_and(|s| s > 0.3),
            "{update}"
        );
        let tcp = update["vips"]
            .as_array()
            .and_then(|vips| {
                vips.iter().find(|v| {
                    v["vip"]["protocol"] == "tcp" && v["vip"]["address"] == TEST_VIP.to_string()
                })
            })
            .unwrap_or_else(|| panic!("no TCP VIP in {update}"));
        assert!(
            tcp["packets_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "{tcp}"
        );
        assert!(
            tcp["bytes_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "{tcp}"
        );
        assert!(
            tcp["new_flows_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "{tcp}"
        );
        let backends = tcp["backends"].as_array().expect("backends");
        assert_eq!(backends.len(), 3, "{tcp}");
        for j in 0..3 {
            let address = bed.topo.backend_addr(j).to_string();
            let b = backends
                .iter()
                .find(|b| b["address"] == address.as_str())
                .unwrap_or_else(|| panic!("no backend {address} in {tcp}"));
            for key in ["packets_per_s", "bytes_per_s"] {
                assert!(
                    b[key].as_f64().is_some_and(|r| r > 0.0),
                    "{address} {key}: {b}"
                );
            }
        }
        // The UDP VIP took no traffic: zero, not negative.
        let udp = update["vips"]
            .as_array()
            .and_then(|vips| vips.iter().find(|v| v["vip"]["protocol"] == "udp"))
            .unwrap_or_else(|| panic!("no UDP VIP in {update}"));
        assert_eq!(udp["packets_per_s"].as_f64(), Some(0.0), "{udp}");
    }
    // The human form: a table with the per-second columns.
    wait_or_kill(&mut human, Duration::from_secs(5))
        .expect("waiting for lbctl top --once")
        .expect("lbctl top --once ends by itself");
    let output = human.wait_with_output().expect("reading lbctl top --once");
    assert!(
        output.status.success(),
        "lbctl top --once: {}",
        output.status
    );
    let once = String::from_utf8(output.stdout).expect("UTF-8");
    eprintln!("lbctl top --once:\n{once}");
    assert!(
        once.contains("PACKETS/S") && once.contains("NEW-FLOWS/S"),
        "{once}"
    );
    for j in 0..3 {
        assert!(
            once.contains(&format!("  {}", bed.topo.backend_addr(j))),
            "{once}"
        );
    }
    assert!(
        !once.contains('\x1b'),
        "no terminal, no escape codes: {once:?}"
    );
}

fn from_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The TCP checksum under the pseudo-header of the IPv4 header `ip`.
fn tcp_checksum_ok(ip: &[u8], segment: &[u8]) -> bool {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    internet_checksum(&pseudo) == 0
}

/// The TCP or UDP (`proto`) checksum under the pseudo-header of the IPv6
/// header `ip` (RFC 8200: addresses, 32-bit length, zeros, next header).
fn l4_checksum6_ok(ip: &[u8], proto: u8, segment: &[u8]) -> bool {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[8..40]);
    pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, proto]);
    pseudo.extend_from_slice(segment);
    internet_checksum(&pseudo) == 0
}

/// Checks the outer IPv4 header of an encapsulated frame (from the LB to
/// `backend`, protocol `proto`, its checksum and length right); returns
/// the packet inside.
fn outer_ipv4(frame: &[u8], lb: Ipv4Addr, backend: Ipv4Addr, proto: u8) -> &[u8] {
    assert_eq!(&frame[12..14], &[0x08, 0x00], "IPv4 ethertype");
    let outer = &frame[14..34];
    assert_eq!(outer[0], 0x45);
    assert_eq!(outer[9], proto, "outer protocol");
    assert_eq!(internet_checksum(outer), 0, "outer IPv4 checksum");
    assert_eq!(&outer[12..16], &lb.octets(), "outer source");
    assert_eq!(&outer[16..20], &backend.octets(), "outer destination");
    assert_eq!(
        u16::from_be_bytes([outer[2], outer[3]]) as usize,
        frame.len() - 14,
        "outer total length"
    );
    &frame[34..]
}

/// Checks the outer IPv6 header of an encapsulated frame (from the LB's
/// IPv6 source to `backend`, next header `next`, hop limit 64, payload
/// length right); returns the packet inside.
fn outer_ipv6(frame: &[u8], lb: Ipv6Addr, backend: Ipv6Addr, next: u8) -> &[u8] {
    assert_eq!(&frame[12..14], &[0x86, 0xdd], "IPv6 ethertype");
    let outer = &frame[14..54];
    assert_eq!(outer[0] >> 4, 6, "outer version");
    assert_eq!(outer[6], next, "outer next header");
    assert_eq!(outer[7], 64, "outer hop limit");
    assert_eq!(&outer[8..24], &lb.octets(), "outer source");
    assert_eq!(&outer[24..40], &backend.octets(), "outer destination");
    assert_eq!(
        u16::from_be_bytes([outer[4], outer[5]]) as usize,
        frame.len() - 54,
        "outer payload length"
    );
    &frame[54..]
}

/// Checks an inner IPv4 packet (to `dst`, header checksum, TCP checksum);
/// returns its TCP segment.
fn inner_ipv4_tcp(packet: &[u8], dst: Ipv4Addr) -> Vec<u8> {
    let inner = &packet[..20];
    assert_eq!(internet_checksum(inner), 0, "inner IPv4 checksum");
    assert_eq!(&inner[16..20], &dst.octets(), "inner destination");
    let segment = &packet[20..];
    assert!(tcp_checksum_ok(inner, segment), "inner TCP checksum");
    segment.to_vec()
}

/// Checks an inner IPv6 packet without extension headers (from `src` to
/// `dst`, protocol `proto`, its checksum); returns its TCP or UDP segment.
fn inner_ipv6(packet: &[u8], src: Ipv6Addr, dst: Ipv6Addr, proto: u8) -> Vec<u8> {
    let inner = &packet[..40];
    assert_eq!(inner[0] >> 4, 6, "inner version");
    assert_eq!(inner[6], proto, "inner next header");
    assert_eq!(&inner[8..24], &src.octets(), "inner source");
    assert_eq!(&inner[24..40], &dst.octets(), "inner destination");
    let segment = &packet[40..];
    assert_eq!(
        u16::from_be_bytes([inner[4], inner[5]]) as usize,
        segment.len(),
        "inner payload length"
    );
    assert!(l4_checksum6_ok(inner, proto, segment), "inner checksum");
    segment.to_vec()
}

/// Checks an encapsulated frame byte by byte, with this crate's own
/// checksum: outer IPv4 from the LB to `backend`, the client's packet
/// inside, every checksum right. Returns the inner TCP segment.
fn check_encapsulated(
    frame: &[u8],
    lb: Ipv4Addr,
    backend: Ipv4Addr,
    inner_dst: Ipv4Addr,
) -> Vec<u8> {
    inner_ipv4_tcp(outer_ipv4(frame, lb, backend, 4), inner_dst)
}

fn trace_json(bed: &Bed, args: &[&str]) -> Value {
    let mut all = vec!["--json", "trace"];
    all.extend_from_slice(args);
    let text = lbctl(bed, &all);
    let response = json(text.trim());
    assert_eq!(response["ok"], true, "{response}");
    response["trace"].clone()
}

#[test]
fn trace_follows_the_agents_model_and_leaves_the_live_state_alone() {
    let bed = Bed::start(3, &[Some(1), Some(1), Some(1)], "native");
    let vip = format!("{TEST_VIP}:{}/tcp", bed.port);
    let port = bed.port.to_string();
    let dst = TEST_VIP.to_string();
    // Real traffic first: the LB resolves its next hops (a trace then
    // shows XDP_TX rather than the kernel fallback).
    bed.count_new(6);
    let (pinned_name, kept) = bed.open(1).pop().expect("one connection");
    let kept_addr = match kept.local_addr().expect("local address") {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    // The closed connections' last segments pass before the snapshot.
    std::thread::sleep(Duration::from_secs(1));
    let stats_before = lbctl(&bed, &["--json", "stats"]);
    let flows_before = lbctl(&bed, &["--json", "flow", "summary", &vip]);

    // New flows: the trace's backend is the agent's ring choice. Traced
    // ports are below Linux's ephemeral range (32768 and up), so no real
    // connection of the bed holds the tuple and has a live pin.
    for sport in [21000u16, 21001, 21002, 21003, 21004, 21005] {
        let sport = sport.to_string();
        let source = "198.18.10.2";
        let t = trace_json(
            &bed,
            &[
                "--source",
                source,
                "--source-port",
                &sport,
                "--destination",
                &dst,
                "--destination-port",
                &port,
            ],
        );
        let lookup = json(lbctl(&bed, &["--json", "flow", "lookup", &vip, source, &sport]).trim());
        let ring = lookup["flow"]["ring_backend"]
            .as_str()
            .expect("a ring backend");
        assert_eq!(t["verdict"], "XDP_TX", "{t}");
        assert_eq!(t["backend"], ring, "{t}");
        assert_eq!(t["ring_backend"], ring, "{t}");
        assert_eq!(t["flow"], "new", "{t}");
        assert_eq!(t["live_pin"], Value::Null, "{t}");
        assert_eq!(t["vip"]["port"], bed.port, "{t}");
        let global = &t["stats"]["global"];
        assert_eq!(
            (global["flow_misses"].as_u64(), global["tx"].as_u64()),
            (Some(1), Some(1)),
            "{t}"
        );
        assert_eq!(global["passed"].as_u64(), Some(0), "{t}");
        let counted = &t["stats"]["vips"][0];
        assert_eq!(
            (counted["packets"].as_u64(), counted["new_flows"].as_u64()),
            (Some(1), Some(1)),
            "{t}"
        );
        assert_eq!(counted["backends"][0]["address"], ring, "{t}");
        let frame = from_hex(t["output_frame"].as_str().expect("hex"));
        let backend: Ipv4Addr = ring.parse().expect("address");
        let segment = check_encapsulated(&frame, bed.topo.lb_addr(), backend, TEST_VIP);
        assert_eq!(segment[13], 0x02, "a SYN");
        assert_eq!(
            u16::from_be_bytes([segment[0], segment[1]]).to_string(),
            sport
        );
        // The agent's own reading of the output agrees.
        let out = &t["output"];
        assert_eq!(out["outer_ipv4"]["checksum_ok"], true, "{out}");
        assert_eq!(out["ipv4"]["checksum_ok"], true, "{out}");
        assert_eq!(out["tcp"]["checksum_ok"], true, "{out}");
        assert_eq!(out["length"].as_u64(), Some(frame.len() as u64));
    }

    // An established flow is traced to the backend it is pinned to.
    let pinned_addr = bed
        .topo
        .backend_addr(bed.topo.backend_index(&pinned_name).expect("a backend"))
        .to_string();
    let (csrc, cport) = (kept_addr.ip().to_string(), kept_addr.port().to_string());
    let t = trace_json(
        &bed,
        &[
            "--source",
            &csrc,
            "--source-port",
            &cport,
            "--destination",
            &dst,
            "--destination-port",
            &port,
            "--tcp-flags",
            "ack",
            "--payload-len",
            "10",
        ],
    );
    assert_eq!(t["flow"], "pinned", "{t}");
    assert_eq!(t["backend"], pinned_addr.as_str(), "{t}");
    assert_eq!(t["live_pin"], pinned_addr.as_str(), "{t}");
    assert_eq!(t["stats"]["global"]["flow_hits"].as_u64(), Some(1), "{t}");
    let frame = from_hex(t["output_frame"].as_str().expect("hex"));
    check_encapsulated(
        &frame,
        bed.topo.lb_addr(),
        pinned_addr.parse().expect("address"),
        TEST_VIP,
    );

    // A packet to no VIP is a valid trace: it passes.
    let t = trace_json(
        &bed,
        &[
            "--source",
            "198.18.10.2",
            "--destination",
            "198.18.0.99",
            "--destination-port",
            "80",
        ],
    );
    assert_eq!(t["verdict"], "XDP_PASS", "{t}");
    assert_eq!(t["vip"], Value::Null, "{t}");
    assert_eq!(t["backend"], Value::Null, "{t}");
    assert_eq!(t["stats"]["global"]["passed"].as_u64(), Some(1), "{t}");

    // The human form.
    let text = lbctl(
        &bed,
        &[
            "trace",
            "--source",
            "198.18.10.2",
            "--source-port",
            "21000",
            "--destination",
            &dst,
            "--destination-port",
            &port,
        ],
    );
    eprintln!("lbctl trace:\n{text}");
    eprintln!(
        "lbctl --json trace:\n{}",
        lbctl(
            &bed,
            &[
                "--json",
                "trace",
                "--source",
                "198.18.10.2",
                "--source-port",
                "21000",
                "--destination",
                &dst,
                "--destination-port",
                &port
            ]
        )
    );
    for needle in [
        "verdict       XDP_TX",
        "(new flow: from the ring)",
        "outer ipv4",
        "inner ipv4",
        "checksum",
        " ok\n",
    ] {
        assert!(
            text.contains(needle),
            "lbctl trace lacks {needle:?}:\n{text}"
        );
    }
    assert!(!text.contains("BAD"), "{text}");

    // A capture: every packet is traced, in order.
    let syn = PacketSpec {
        source: Ipv4Addr::new(198, 18, 10, 2).into(),
        source_port: 21000,
        destination: TEST_VIP.into(),
        destination_port: bed.port,
        protocol: Protocol::Tcp,
        tcp_flags: None,
        payload_len: 0,
    }
    .frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
    .expect("builds");
    let arp = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.resize(42, 0);
        f
    };
    let dir = std::env::temp_dir().join(format!("lbctl-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pcap = dir.join("two.pcap");
    std::fs::write(&pcap, pcap_file(&[&syn, &arp])).expect("writing the capture");
    let pcap_arg = pcap.to_str().expect("UTF-8 path");
    let lines = lbctl(&bed, &["--json", "trace", "--pcap", pcap_arg]);
    let traces: Vec<Value> = lines.lines().map(json).collect();
    assert_eq!(traces.len(), 2, "{lines}");
    assert_eq!(traces[0]["trace"]["verdict"], "XDP_TX");
    assert_eq!(traces[1]["trace"]["verdict"], "XDP_PASS");
    assert_eq!(
        traces[1]["trace"]["stats"]["global"]["passed"].as_u64(),
        Some(1)
    );
    let text = lbctl(&bed, &["trace", "--pcap", pcap_arg]);
    assert!(
        text.starts_with("packet 1 of 2\n") && text.contains("\npacket 2 of 2\n"),
        "{text}"
    );
    let bad = dir.join("bad.pcap");
    std::fs::write(&bad, b"not a capture at all, not even close").expect("writing");
    let output = lbctl_output(&bed, &["trace", "--pcap", bad.to_str().expect("UTF-8")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a pcap file"));
    let _ = std::fs::remove_dir_all(&dir);

    // Bad input, from lbctl and on the wire.
    let output = lbctl_output(
        &bed,
        &[
            "trace",
            "--source",
            "198.18.10",
            "--destination",
            &dst,
            "--destination-port",
            &port,
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let output = lbctl_output(
        &bed,
        &[
            "trace",
            "--source",
            "198.18.10.2",
            "--destination",
            &dst,
            "--destination-port",
            &port,
            "--protocol",
            "icmp",
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let ask = |line: &str| error_code(&bed, line);
    assert_eq!(ask(r#"{"op":"trace"}"#), "bad_request");
    assert_eq!(ask(r#"{"op":"trace","frame":"zz"}"#), "invalid_value");
    assert_eq!(ask(r#"{"op":"trace","frame":"00"}"#), "invalid_value");
    assert_eq!(
        ask(
            r#"{"op":"trace","packet":{"source":"198.18.10","source_port":1,"destination":"198.18.0.10","destination_port":80,"protocol":"tcp"}}"#
        ),
        "invalid_address"
    );
    assert_eq!(
        ask(
            r#"{"op":"trace","packet":{"source":"198.18.10.2","source_port":1,"destination":"198.18.0.10","destination_port":80,"protocol":"icmp"}}"#
        ),
        "bad_request"
    );
    assert_eq!(
        ask(
            r#"{"op":"trace","packet":{"source":"198.18.10.2","source_port":1,"destination":"198.18.0.10","destination_port":80,"protocol":"tcp","payload_len":2000}}"#
        ),
        "invalid_value"
    );

    // Nothing of this reached the live connection table or counters (but
    // `passed`, see `without_passed`).
    assert_eq!(
        without_passed(&lbctl(&bed, &["--json", "stats"])),
        without_passed(&stats_before),
        "live counters moved"
    );
    assert_eq!(
        lbctl(&bed, &["--json", "flow", "summary", &vip]),
        flows_before,
        "live connection table changed"
    );
    let lookup = json(
        lbctl(
            &bed,
            &["--json", "flow", "lookup", &vip, "198.18.10.2", "21000"],
        )
        .trim(),
    );
    assert_eq!(
        lookup["flow"]["pinned_backend"],
        Value::Null,
        "a traced SYN pinned a live flow"
    );
    drop(kept);
}

/// The address of the string `field` of a trace report.
fn addr_of(t: &Value, field: &str) -> IpAddr {
    t[field]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {field}: {t}"))
}

fn v6(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V6(a) => a,
        other => panic!("{other} is not IPv6"),
    }
}

fn v4(addr: IpAddr) -> Ipv4Addr {
    match addr {
        IpAddr::V4(a) => a,
        other => panic!("{other} is not IPv4"),
    }
}

/// IPv6 through the trace instance: an IPv6 VIP with IPv6 backends
/// (IP6IP6), an IPv4 VIP with IPv6 backends (IPv4 in IPv6: `balancer`
/// hands the packet to `balancer6` through HANDOFF and PROGRAMS, the
/// instance's own) and an IPv6 UDP VIP with IPv4 backends (IPv6 in IPv4).
/// Each new flow goes where the agent's model says, every output header
/// and checksum is right (checked here with this crate's own sums), an
/// established IPv6 flow follows its live FLOWS6 pin, and afterwards the
/// live connection tables and counters are as before.
#[test]
fn trace_of_ipv6_follows_the_model_and_leaves_the_live_state_alone() {
    let port = 8080u16;
    // Source ports of traced tuples: below the ephemeral range (32768 up),
    // so that no real connection of the bed has one of these tuples.
    const TRACED: u16 = 20000;
    const PORTS: std::ops::Range<u16> = TRACED..TRACED + 6;
    let mut bed = Bed::start_with(3, "native", |topo| {
        let b6: Vec<(IpAddr, u32)> = (0..3).map(|j| (topo.backend_addr6(j).into(), 1)).collect();
        let b4: Vec<(IpAddr, u32)> = (0..3).map(|j| (topo.backend_addr(j).into(), 1)).collect();
        agent_config(
            topo,
            "native",
            vec![
                vip_config(TEST_VIP6, port, "tcp", &b6),
                vip_config(TEST_VIP6, port, "udp", &b4),
                vip_config(TEST_VIP, port, "tcp", &b6),
                {
                    // GUE over IPv6.
                    let mut gue = vip_config(TEST_VIP6, port + 1, "tcp", &b6);
                    gue["encap"] = "gue".into();
                    gue["gue_port"] = lb_common::DEFAULT_GUE_PORT.into();
                    gue
                },
            ],
        )
    });
    bed.vip = TEST_VIP6.into();
    let vip6 = VipAddr {
        addr: TEST_VIP6.into(),
        port,
        proto: Protocol::Tcp,
    };
    let vip6_udp = VipAddr {
        proto: Protocol::Udp,
        ..vip6
    };
    let vip4 = VipAddr {
        addr: TEST_VIP.into(),
        ..vip6
    };
    let backends6: Vec<(IpAddr, u32)> = (0..3)
        .map(|j| (bed.topo.backend_addr6(j).into(), 1))
        .collect();
    let backends4: Vec<(IpAddr, u32)> = (0..3)
        .map(|j| (bed.topo.backend_addr(j).into(), 1))
        .collect();
    // The agent's model, built here independently of the agent.
    let model = |vip: VipAddr, backends: &[(IpAddr, u32)]| {
        RingModel::new(&VipSpec::new(vip, backends)).expect("a model")
    };
    let (model6, model6_udp, model4) = (
        model(vip6, &backends6),
        model(vip6_udp, &backends4),
        model(vip4, &backends6),
    );
    let (lb4, lb6) = (bed.topo.lb_addr(), bed.topo.lb_addr6());
    let client6 = bed.topo.client_addr6(0);
    let client4 = bed.topo.client_addr(0);

    // Real traffic of all three kinds first: the LB resolves its IPv6 and
    // IPv4 next hops (a trace then shows XDP_TX, not the kernel fallback),
    // and the live tables hold flows of both families.
    bed.count_new(6);
    for i in 0..4 {
        bed.topo
            .tcp_connect(i % 2, TEST_VIP, port, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("IPv4 to IPv6 backends: {e:#}\n{}", bed.agent.log()));
    }
    bed.udp_flows_stay(42000..42004, 1);
    let (pinned6_name, kept6) = bed.open(1).pop().expect("one IPv6 connection");
    let (pinned4_name, kept4) = bed
        .topo
        .tcp_connect(0, TEST_VIP, port, Duration::from_secs(5))
        .expect("one IPv4 connection to an IPv6 backend");
    // The closed connections' last segments pass before the snapshot.
    std::thread::sleep(Duration::from_secs(1));
    let summary = |vip: &VipAddr| lbctl(&bed, &["--json", "flow", "summary", &vip.to_string()]);
    let stats_before = lbctl(&bed, &["--json", "stats"]);
    let flows_before: Vec<String> = [vip6, vip6_udp, vip4].iter().map(summary).collect();
    let lookup = |vip: &VipAddr, source: IpAddr, sport: u16| {
        json(
            lbctl(
                &bed,
                &[
                    "--json",
                    "flow",
                    "lookup",
                    &vip.to_string(),
                    &source.to_string(),
                    &sport.to_string(),
                ],
            )
            .trim(),
        )
    };

    // New IPv6 flows, the VIP written as lbctl writes VIPs: the backend is
    // the model's and the agent's, the output IP6IP6 from the LB.
    for sport in PORTS {
        let source = SocketAddr::new(client6.into(), sport).to_string();
        let t = trace_json(
            &bed,
            &["--source", &source, "--destination", &vip6.to_string()],
        );
        let expected = model6.choose(client6.into(), sport).expect("a backend");
        let agent = lookup(&vip6, client6.into(), sport);
        assert_eq!(
            agent["flow"]["ring_backend"],
            expected.to_string(),
            "{agent}"
        );
        assert_eq!(t["verdict"], "XDP_TX", "{t}");
        assert_eq!(addr_of(&t, "backend"), expected, "{t}");
        assert_eq!(addr_of(&t, "ring_backend"), expected, "{t}");
        assert_eq!(
            (&t["flow"], &t["live_pin"]),
            (&"new".into(), &Value::Null),
            "{t}"
        );
        assert_eq!(t["vip"]["address"], TEST_VIP6.to_string(), "{t}");
        let global = &t["stats"]["global"];
        assert_eq!(
            (global["flow_misses"].as_u64(), global["tx"].as_u64()),
            (Some(1), Some(1)),
            "{t}"
        );
        let counted = &t["stats"]["vips"][0];
        assert_eq!(counted["vip"]["address"], TEST_VIP6.to_string(), "{t}");
        assert_eq!(
            counted["backends"][0]["address"],
            expected.to_string(),
            "{t}"
        );
        let frame = from_hex(t["output_frame"].as_str().expect("hex"));
        let inner = outer_ipv6(&frame, lb6, v6(expected), 41);
        let segment = inner_ipv6(inner, client6, TEST_VIP6, 6);
        assert_eq!(segment[13], 0x02, "a SYN");
        assert_eq!(u16::from_be_bytes([segment[0], segment[1]]), sport);
        // The agent's own reading of input and output agrees.
        let input = &t["input"];
        assert_eq!(input["ipv6"]["source"], client6.to_string(), "{input}");
        assert_eq!(input["tcp"]["checksum_ok"], true, "{input}");
        let out = &t["output"];
        assert_eq!(
            out["outer_ipv6"]["destination"],
            expected.to_string(),
            "{out}"
        );
        assert_eq!(out["outer_ipv6"]["next_header"], 41, "{out}");
        assert_eq!(out["ipv6"]["destination"], TEST_VIP6.to_string(), "{out}");
        assert_eq!(out["tcp"]["checksum_ok"], true, "{out}");
        assert_eq!(out["length"].as_u64(), Some(frame.len() as u64));
        assert_eq!(
            (&out["outer_ipv4"], &out["ipv4"]),
            (&Value::Null, &Value::Null)
        );
    }

    // The established IPv6 connection follows its live FLOWS6 pin.
    let kept6_addr = kept6.local_addr().expect("local address");
    let pinned6 = bed
        .topo
        .backend_addr6(bed.topo.backend_index(&pinned6_name).expect("a backend"));
    let t = trace_json(
        &bed,
        &[
            "--source",
            &kept6_addr.to_string(),
            "--destination",
            &vip6.to_string(),
            "--tcp-flags",
            "ack",
            "--payload-len",
            "10",
        ],
    );
    assert_eq!(t["flow"], "pinned", "{t}");
    assert_eq!(addr_of(&t, "backend"), IpAddr::from(pinned6), "{t}");
    assert_eq!(addr_of(&t, "live_pin"), IpAddr::from(pinned6), "{t}");
    assert_eq!(t["stats"]["global"]["flow_hits"].as_u64(), Some(1), "{t}");
    let frame = from_hex(t["output_frame"].as_str().expect("hex"));
    let segment = inner_ipv6(
        outer_ipv6(&frame, lb6, pinned6, 41),
        v6(kept6_addr.ip()),
        TEST_VIP6,
        6,
    );
    assert_eq!(segment.len(), 30, "20 bytes of TCP, 10 of payload");

    // IPv4 to the IPv6 backends: IPv4 in IPv6, new and established.
    let t = trace_json(
        &bed,
        &[
            "--source",
            &client4.to_string(),
            "--source-port",
            &TRACED.to_string(),
            "--destination",
            &vip4.to_string(),
        ],
    );
    let expected = model4.choose(client4.into(), TRACED).expect("a backend");
    assert_eq!(t["verdict"], "XDP_TX", "{t}");
    assert_eq!(addr_of(&t, "backend"), expected, "{t}");
    assert_eq!(addr_of(&t, "ring_backend"), expected, "{t}");
    let frame = from_hex(t["output_frame"].as_str().expect("hex"));
    inner_ipv4_tcp(outer_ipv6(&frame, lb6, v6(expected), 4), TEST_VIP);
    let out = &t["output"];
    assert_eq!(out["outer_ipv6"]["next_header"], 4, "{out}");
    assert_eq!(out["ipv4"]["checksum_ok"], true, "{out}");
    assert_eq!(out["tcp"]["checksum_ok"], true, "{out}");
    let kept4_addr = kept4.local_addr().expect("local address");
    let pinned4 = bed
        .topo
        .backend_addr6(bed.topo.backend_index(&pinned4_name).expect("a backend"));
    let t = trace_json(
        &bed,
        &[
            "--source",
            &kept4_addr.to_string(),
            "--destination",
            &vip4.to_string(),
            "--tcp-flags",
            "ack",
        ],
    );
    assert_eq!(t["flow"], "pinned", "{t}");
    assert_eq!(addr_of(&t, "backend"), IpAddr::from(pinned4), "{t}");
    let frame = from_hex(t["output_frame"].as_str().expect("hex"));
    inner_ipv4_tcp(outer_ipv6(&frame, lb6, pinned4, 4), TEST_VIP);

    // GUE over IPv6: the report reads the UDP header as GUE's and the
    // packet inside it.
    let vip6_gue = VipAddr {
        port: port + 1,
        ..vip6
    };
    let t = trace_json(
        &bed,
        &[
            "--source",
            &format!("[{client6}]:{}", TRACED + 50),
            "--destination",
            &vip6_gue.to_string(),
        ],
    );
    let expected = model(vip6_gue, &backends6)
        .choose(client6.into(), TRACED + 50)
        .expect("a backend");
    assert_eq!(t["verdict"], "XDP_TX", "{t}");
    assert_eq!(addr_of(&t, "backend"), expected, "{t}");
    let frame = from_hex(t["output_frame"].as_str().expect("hex"));
    let udp = outer_ipv6(&frame, lb6, v6(expected), 17);
    assert_eq!(
        u16::from_be_bytes([udp[2], udp[3]]),
        lb_common::DEFAULT_GUE_PORT,
        "GUE port"
    );
    assert_eq!(&udp[6..8], &[0, 0], "GUE's UDP checksum: none sent");
    let segment = inner_ipv6(&udp[8..], client6, TEST_VIP6, 6);
    assert_eq!(u16::from_be_bytes([segment[0], segment[1]]), TRACED + 50);
    let out = &t["output"];
    assert_eq!(out["outer_ipv6"]["next_header"], 17, "{out}");
    assert_eq!(
        out["outer_udp"]["destination_port"],
        lb_common::DEFAULT_GUE_PORT,
        "{out}"
    );
    assert_eq!(out["outer_udp"]["checksum_ok"], true, "{out}");
    assert_eq!(out["ipv6"]["destination"], TEST_VIP6.to_string(), "{out}");
    assert_eq!(out["tcp"]["checksum_ok"], true, "{out}");
    let text = lbctl(
        &bed,
        &[
            "trace",
            "--source",
            &format!("[{client6}]:{}", TRACED + 50),
            "--destination",
            &vip6_gue.to_string(),
        ],
    );
    assert!(
        text.contains("outer udp (gue)  ") && text.contains("> 6080"),
        "{text}"
    );

    // IPv6 UDP to IPv4 backends: IPv6 in IPv4.
    let t = trace_json(
        &bed,
        &[
            "--source",
            &format!("[{client6}]:{}", TRACED + 100),
            "--destination",
            &vip6_udp.to_string(),
            "--payload-len",
            "5",
        ],
    );
    let expected = model6_udp
        .choose(client6.into(), TRACED + 100)
        .expect("a backend");
    assert_eq!(t["verdict"], "XDP_TX", "{t}");
    assert_eq!(addr_of(&t, "backend"), expected, "{t}");
    let frame = from_hex(t["output_frame"].as_str().expect("hex"));
    let segment = inner_ipv6(
        outer_ipv4(&frame, lb4, v4(expected), 41),
        client6,
        TEST_VIP6,
        17,
    );
    assert_eq!(
        u16::from_be_bytes([segment[4], segment[5]]),
        13,
        "UDP length"
    );
    let out = &t["output"];
    assert_eq!(out["outer_ipv4"]["protocol"], 41, "{out}");
    assert_eq!(out["outer_ipv4"]["checksum_ok"], true, "{out}");
    assert_eq!(out["udp"]["checksum_ok"], true, "{out}");

    // An IPv6 packet to no VIP passes.
    let t = trace_json(
        &bed,
        &[
            "--source",
            &client6.to_string(),
            "--destination",
            "[2001:db8::99]:80",
        ],
    );
    assert_eq!(
        (&t["verdict"], &t["vip"]),
        (&"XDP_PASS".into(), &Value::Null),
        "{t}"
    );
    assert_eq!(t["stats"]["global"]["passed"].as_u64(), Some(1), "{t}");

    // The human form.
    let text = lbctl(
        &bed,
        &[
            "trace",
            "--source",
            &format!("[{client6}]:{TRACED}"),
            "--destination",
            &vip6.to_string(),
        ],
    );
    eprintln!("lbctl trace (IPv6):\n{text}");
    for needle in [
        format!("packet        [{client6}]:{TRACED} -> [{TEST_VIP6}]:{port} tcp syn, 74 bytes"),
        "verdict       XDP_TX".into(),
        format!("vip           {vip6}"),
        "(new flow: from the ring)".into(),
        "(the agent's model)".into(),
        format!("  outer ipv6  {lb6} > "),
        format!("  inner ipv6  {client6} > {TEST_VIP6}"),
        "proto 41, payload 60, hop limit 64".into(),
        " ok\n".into(),
    ] {
        assert!(
            text.contains(&needle),
            "lbctl trace lacks {needle:?}:\n{text}"
        );
    }
    assert!(!text.contains("BAD"), "{text}");

    // A capture of both families: every packet traced, in order.
    let spec = |source: IpAddr, destination: IpAddr| {
        PacketSpec {
            source,
            source_port: TRACED,
            destination,
            destination_port: port,
            protocol: Protocol::Tcp,
            tcp_flags: None,
            payload_len: 0,
        }
        .frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .expect("builds")
    };
    let syn6 = spec(client6.into(), TEST_VIP6.into());
    let syn4 = spec(client4.into(), TEST_VIP.into());
    let other6 = spec(client6.into(), "2001:db8::99".parse().expect("address"));
    let dir = std::env::temp_dir().join(format!("lbctl-trace6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pcap = dir.join("mixed.pcap");
    std::fs::write(&pcap, pcap_file(&[&syn6, &syn4, &other6])).expect("writing the capture");
    let pcap_arg = pcap.to_str().expect("UTF-8 path");
    let lines = lbctl(&bed, &["--json", "trace", "--pcap", pcap_arg]);
    let traces: Vec<Value> = lines.lines().map(|l| json(l)["trace"].clone()).collect();
    assert_eq!(traces.len(), 3, "{lines}");
    let expected6 = model6.choose(client6.into(), TRACED).expect("a backend");
    let expected4 = model4.choose(client4.into(), TRACED).expect("a backend");
    assert_eq!(traces[0]["verdict"], "XDP_TX", "{}", traces[0]);
    assert_eq!(addr_of(&traces[0], "backend"), expected6);
    assert_eq!(traces[0]["output"]["outer_ipv6"]["next_header"], 41);
    assert_eq!(traces[1]["verdict"], "XDP_TX", "{}", traces[1]);
    assert_eq!(addr_of(&traces[1], "backend"), expected4);
    assert_eq!(traces[1]["output"]["outer_ipv6"]["next_header"], 4);
    assert_eq!(traces[2]["verdict"], "XDP_PASS", "{}", traces[2]);
    let text = lbctl(&bed, &["trace", "--pcap", pcap_arg]);
    assert!(
        text.contains("packet 3 of 3\n") && text.contains("outer ipv6") && !text.contains("BAD"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Bad input: mixed families, from lbctl and on the wire; an IPv6 VIP
    // without brackets; an IPv6 packet over 1500 bytes.
    let output = lbctl_output(
        &bed,
        &[
            "trace",
            "--source",
            &client4.to_string(),
            "--destination",
            &vip6.to_string(),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("of one family"), "{stderr}");
    let output = lbctl_output(
        &bed,
        &[
            "trace",
            "--source",
            &client6.to_string(),
            "--destination",
            &format!("{TEST_VIP6}:{port}/tcp"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in brackets"), "{stderr}");
    let packet = |source: &str, destination: &str, extra: &str| {
        format!(
            r#"{{"op":"trace","packet":{{"source":"{source}","source_port":1,"destination":"{destination}","destination_port":{port},"protocol":"tcp"{extra}}}}}"#
        )
    };
    let mixed = packet(&client4.to_string(), &TEST_VIP6.to_string(), "");
    assert_eq!(error_code(&bed, &mixed), "invalid_address");
    let mixed = packet(&client6.to_string(), &TEST_VIP.to_string(), "");
    assert_eq!(error_code(&bed, &mixed), "invalid_address");
    let big = packet(
        &client6.to_string(),
        &TEST_VIP6.to_string(),
        r#","payload_len":1441"#,
    );
    assert_eq!(error_code(&bed, &big), "invalid_value");
    let fits = packet(
        &client6.to_string(),
        &TEST_VIP6.to_string(),
        r#","payload_len":1440"#,
    );
    assert_eq!(error_code(&bed, &fits), "none");

    // Nothing of this reached the live connection tables (FLOWS6 and
    // FLOWS) or counters (but `passed`, see `without_passed`).
    assert_eq!(
        without_passed(&lbctl(&bed, &["--json", "stats"])),
        without_passed(&stats_before),
        "live counters moved"
    );
    let flows_after: Vec<String> = [vip6, vip6_udp, vip4].iter().map(summary).collect();
    assert_eq!(flows_after, flows_before, "live connection tables changed");
    for (vip, source, sport) in [
        (vip6, IpAddr::from(client6), TRACED),
        (vip6, client6.into(), TRACED + 5),
        (vip6_udp, client6.into(), TRACED + 100),
        (vip4, client4.into(), TRACED),
    ] {
        let l = lookup(&vip, source, sport);
        assert_eq!(
            l["flow"]["pinned_backend"],
            Value::Null,
            "a traced packet pinned a live flow: {l}"
        );
    }
    // The live pins the traces followed are still there, unchanged.
    let l = lookup(&vip6, kept6_addr.ip(), kept6_addr.port());
    assert_eq!(l["flow"]["pinned_backend"], pinned6.to_string(), "{l}");
    drop((kept6, kept4));
}

/// The error code of the agent's answer to a raw request line.
fn error_code(bed: &Bed, line: &str) -> String {
    let answer =
        client::request_raw(&bed.agent.socket(), line, Duration::from_secs(5)).expect("answer");
    json(&answer)["error"]["code"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

/// `lbctl --json stats` without the global `passed` counter: the kernel's
/// own background packets (ARP, IPv6 neighbour discovery) pass the live
/// program whenever they like, and no trace could count there anyway.
fn without_passed(stats: &str) -> Value {
    let mut v = json(stats);
    let removed = v
        .pointer_mut("/stats/global")
        .and_then(|g| g.as_object_mut())
        .is_some_and(|global| global.remove("passed").is_some());
    assert!(removed, "no global passed counter in {stats}");
    v
}

/// A classic pcap file (little-endian, Ethernet) of `frames`.
fn pcap_file(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for f in frames {
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}
