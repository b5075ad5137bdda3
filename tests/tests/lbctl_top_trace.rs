//! The real `lbctl top` and `lbctl trace` against a running agent in the
//! test bed.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{wait_or_kill, Bed, TEST_VIP},
    packet::internet_checksum,
    topology::locate_bin,
};
use lb_userspace::control::client;
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

/// Checks an encapsulated frame byte by byte, with this crate's own
/// checksum: outer IPv4 from the LB to `backend`, the client's packet
/// inside, every checksum right. Returns the inner TCP segment.
fn check_encapsulated(
    frame: &[u8],
    lb: Ipv4Addr,
    backend: Ipv4Addr,
    inner_dst: Ipv4Addr,
) -> Vec<u8> {
    assert_eq!(&frame[12..14], &[0x08, 0x00], "IPv4 ethertype");
    let outer = &frame[14..34];
    assert_eq!(outer[0], 0x45);
    assert_eq!(outer[9], 4, "IP-in-IP");
    assert_eq!(internet_checksum(outer), 0, "outer IPv4 checksum");
    assert_eq!(&outer[12..16], &lb.octets(), "outer source");
    assert_eq!(&outer[16..20], &backend.octets(), "outer destination");
    assert_eq!(
        u16::from_be_bytes([outer[2], outer[3]]) as usize,
        frame.len() - 14,
        "outer total length"
    );
    let inner = &frame[34..54];
    assert_eq!(internet_checksum(inner), 0, "inner IPv4 checksum");
    assert_eq!(&inner[16..20], &inner_dst.octets(), "inner destination");
    let segment = &frame[54..];
    assert!(tcp_checksum_ok(inner, segment), "inner TCP checksum");
    segment.to_vec()
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

    // New flows: the trace's backend is the agent's ring choice.
    for sport in [41000u16, 41001, 41002, 41003, 41004, 41005] {
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
            "41000",
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
                "41000",
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
    let syn = lb_userspace::trace::packet::PacketSpec {
        source: Ipv4Addr::new(198, 18, 10, 2),
        source_port: 41000,
        destination: TEST_VIP,
        destination_port: bed.port,
        protocol: lb_userspace::dataplane::Protocol::Tcp,
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
    let ask = |line: &str| {
        let answer =
            client::request_raw(&bed.agent.socket(), line, Duration::from_secs(5)).expect("answer");
        json(&answer)["error"]["code"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    };
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

    // Nothing of this reached the live connection table or counters. The
    // global `passed` counter is left out: the kernel's own background
    // packets (ARP, IPv6 neighbour discovery) pass the live program
    // whenever they like, and none of the traces could count there anyway.
    let without_passed = |stats: &str| {
        let mut v = json(stats);
        let mut removed = false;
        for at in ["/stats/global"] {
            if let Some(global) = v.pointer_mut(at).and_then(|g| g.as_object_mut()) {
                removed |= global.remove("passed").is_some();
            }
        }
        assert!(removed, "no global passed counter in {stats}");
        v
    };
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
            &["--json", "flow", "lookup", &vip, "198.18.10.2", "41000"],
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
