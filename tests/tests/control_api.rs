//! The control socket against a live agent: changes reach the traffic, and
//! bad input of every kind gets its documented error while the agent keeps
//! running and nothing changes (checked through the API, the state file
//! and traffic).

use std::{
    io::Write,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use lb_tests::agent::{Bed, TEST_VIP};
use lb_userspace::{
    control::{
        client,
        protocol::{ErrorCode, Request, Response, ResponseData, MAX_REQUEST_BYTES},
    },
    dataplane::{Protocol, VipAddr},
};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(10);

fn ask(bed: &Bed, request: Request) -> Response {
    client::request(&bed.agent.socket(), &request, TIMEOUT)
        .unwrap_or_else(|e| panic!("{request:?}: {e}"))
}

fn ok(bed: &Bed, request: Request) -> Option<ResponseData> {
    let response = ask(bed, request.clone());
    assert!(response.ok, "{request:?} failed: {response:?}");
    response.data
}

fn raw(bed: &Bed, line: &str) -> Value {
    let text = client::request_raw(&bed.agent.socket(), line, TIMEOUT)
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{line}: response {text:?} is not JSON: {e}"))
}

fn udp_vip(bed: &Bed) -> VipAddr {
    VipAddr {
        addr: std::net::IpAddr::V4(TEST_VIP),
        port: bed.port,
        proto: Protocol::Udp,
    }
}

fn vip_json(bed: &Bed) -> Value {
    json!({"address": TEST_VIP.to_string(), "port": bed.port, "protocol": "tcp"})
}

/// Which backends 40 new UDP flows reach (source ports from `base` on:
/// flows already seen stay pinned where they are).
fn udp_backends(bed: &Bed, base: u16) -> std::collections::BTreeSet<String> {
    (0..40u16)
        .map(|i| {
            bed.topo
                .udp_ask(
                    (i % 2) as usize,
                    base + i,
                    TEST_VIP,
                    bed.port,
                    b"who",
                    Duration::from_secs(3),
                )
                .unwrap_or_else(|e| panic!("UDP flow {i}: {e:#}"))
        })
        .collect()
}

#[test]
fn changes_through_the_socket_reach_the_traffic() {
    let bed = Bed::start(3, &[Some(1), Some(1), Some(1)], "native");
    let vip = udp_vip(&bed);
    let (b1, b2) = (bed.topo.backend_addr(0), bed.topo.backend_addr(1));

    ok(&bed, Request::RemoveVip { vip });
    ok(
        &bed,
        Request::AddVip {
            vip,
            table_size: Some(65537),
            policy: Default::default(),
            source_prefix: None,
            affinity_timeout: None,
            idle_timeout: None,
            icmp_echo: None,
            encap: None,
            gue_port: None,
        },
    );
    ok(
        &bed,
        Request::AddBackend {
            vip,
            backend: std::net::IpAddr::V4(b1),
            weight: None,
        },
    );
    assert_eq!(
        udp_backends(&bed, 41000),
        ["b1".to_string()].into(),
        "one backend: all flows on b1"
    );

    ok(
        &bed,
        Request::AddBackend {
            vip,
            backend: std::net::IpAddr::V4(b2),
            weight: Some(3),
        },
    );
    assert_eq!(
        udp_backends(&bed, 41000),
        ["b1".to_string()].into(),
        "pinned flows stay where they are"
    );
    assert_eq!(
        udp_backends(&bed, 41100),
        ["b1".to_string(), "b2".to_string()].into(),
        "new flows use both"
    );
    match ok(&bed, Request::ListBackends { vip }) {
        Some(ResponseData::Backends { backends }) => {
            let share = |a| {
                backends
                    .iter()
                    .find(|b| b.address == a)
                    .map(|b| b.ring_share)
                    .unwrap_or(0.0)
            };
            assert!(
                (share(b2) - 0.75).abs() < 0.01,
                "weight 3 of 4: {backends:?}"
            );
        }
        other => panic!("{other:?}"),
    }

    // Drain b2 and flush the VIP's pins: every new flow goes to b1.
    ok(
        &bed,
        Request::Drain {
            vip,
            backend: std::net::IpAddr::V4(b2),
        },
    );
    ok(&bed, Request::FlushFlows { vip });
    assert_eq!(
        udp_backends(&bed, 41100),
        ["b1".to_string()].into(),
        "a drained backend gets no new flows"
    );
    ok(
        &bed,
        Request::Undrain {
            vip,
            backend: std::net::IpAddr::V4(b2),
        },
    );
    ok(
        &bed,
        Request::SetWeight {
            vip,
            backend: std::net::IpAddr::V4(b1),
            weight: 0,
        },
    );
    ok(&bed, Request::FlushFlows { vip });
    assert_eq!(udp_backends(&bed, 41100), ["b2".to_string()].into());

    // Flow lookup agrees with where a flow actually goes.
    let name = bed
        .topo
        .udp_ask(0, 42000, TEST_VIP, bed.port, b"x", Duration::from_secs(3))
        .expect("UDP");
    match ok(
        &bed,
        Request::LookupFlow {
            vip,
            source: std::net::IpAddr::V4(bed.topo.client_addr(0)),
            source_port: 42000,
        },
    ) {
        Some(ResponseData::Flow { flow }) => {
            assert_eq!(flow.ring_backend, Some(b2.into()));
            assert_eq!(
                flow.pinned_backend,
                Some(b2.into()),
                "{name} serves it and the table pins it there"
            );
        }
        other => panic!("{other:?}"),
    }
    match ok(&bed, Request::FlowSummary { vip }) {
        Some(ResponseData::FlowSummary { flows }) => assert!(flows.total >= 1, "{flows:?}"),
        other => panic!("{other:?}"),
    }
    match ok(&bed, Request::Stats {}) {
        Some(ResponseData::Stats { stats }) => {
            assert!(stats.global.tx > 0);
            assert!(stats.vips.iter().any(|v| v.vip == vip && v.packets > 0));
        }
        other => panic!("{other:?}"),
    }

    // Every accepted change is in the state file.
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(bed.agent.state_file()).expect("state file"))
            .expect("state JSON");
    let udp = saved["vips"]
        .as_array()
        .expect("vips")
        .iter()
        .find(|v| v["protocol"] == "udp")
        .expect("UDP VIP");
    assert_eq!(udp["backends"][0]["weight"], 0);
    assert_eq!(udp["backends"][1]["weight"], 3);
}

#[test]
fn bad_input_gets_its_error_and_changes_nothing() {
    // An agent without an IPv6 source: IPv6 backends must be refused.
    let bed = Bed::start_with(3, "native", |topo| {
        let mut config = Bed::config_for(topo, "native", 8080, &[Some(1), Some(1), Some(1)]);
        if let Some(config) = config.as_object_mut() {
            config.remove("source_address6");
        }
        config
    });
    let config_before = ok(&bed, Request::ShowConfig {});
    let state_before = std::fs::read_to_string(bed.agent.state_file()).expect("state file");
    let vip = vip_json(&bed);
    let b1 = bed.topo.backend_addr(0).to_string();

    let cases: Vec<(&str, String, ErrorCode)> = vec![
        ("malformed JSON", r#"{"op": "list_vips""#.into(), ErrorCode::BadJson),
        ("not an object", "[1, 2]".into(), ErrorCode::BadRequest),
        ("unknown operation", r#"{"op": "reboot"}"#.into(), ErrorCode::UnknownOp),
        ("no operation", r#"{"vip": 1}"#.into(), ErrorCode::BadRequest),
        ("unsupported version", r#"{"op": "version", "v": 9}"#.into(), ErrorCode::UnsupportedVersion),
        ("missing field", r#"{"op": "remove_vip"}"#.into(), ErrorCode::BadRequest),
        ("extra field", json!({"op": "remove_vip", "vip": vip, "force": true}).to_string(), ErrorCode::BadRequest),
        ("extra field in the VIP", json!({"op": "remove_vip", "vip": {"address": TEST_VIP.to_string(), "port": 8080, "protocol": "tcp", "x": 1}}).to_string(), ErrorCode::BadRequest),
        ("wrong type", json!({"op": "remove_vip", "vip": {"address": TEST_VIP.to_string(), "port": "8080", "protocol": "tcp"}}).to_string(), ErrorCode::BadRequest),
        ("invalid address", json!({"op": "add_backend", "vip": vip, "backend": "198.19.300.2"}).to_string(), ErrorCode::InvalidAddress),
        ("IPv6 backend, no source_address6", json!({"op": "add_backend", "vip": vip, "backend": "2001:db8::2"}).to_string(), ErrorCode::InvalidValue),
        ("IPv6 client of an IPv4 VIP", json!({"op": "lookup_flow", "vip": vip, "source": "2001:db8:ff::7", "source_port": 40000}).to_string(), ErrorCode::InvalidAddress),
        ("multicast backend", json!({"op": "add_backend", "vip": vip, "backend": "224.0.0.1"}).to_string(), ErrorCode::InvalidAddress),
        ("duplicate VIP", json!({"op": "add_vip", "vip": vip}).to_string(), ErrorCode::DuplicateVip),
        ("duplicate backend", json!({"op": "add_backend", "vip": vip, "backend": b1}).to_string(), ErrorCode::DuplicateBackend),
        ("unknown VIP", json!({"op": "remove_vip", "vip": {"address": "198.18.0.77", "port": 80, "protocol": "tcp"}}).to_string(), ErrorCode::UnknownVip),
        ("unknown backend", json!({"op": "remove_backend", "vip": vip, "backend": "198.19.9.9"}).to_string(), ErrorCode::UnknownBackend),
        ("weight too large", json!({"op": "set_weight", "vip": vip, "backend": b1, "weight": 100000}).to_string(), ErrorCode::InvalidValue),
        ("negative weight", json!({"op": "set_weight", "vip": vip, "backend": b1, "weight": -1}).to_string(), ErrorCode::InvalidValue),
        ("table size not prime", json!({"op": "add_vip", "vip": {"address": "198.18.0.77", "port": 80, "protocol": "tcp"}, "table_size": 65536}).to_string(), ErrorCode::InvalidValue),
        ("port 0", json!({"op": "add_vip", "vip": {"address": "198.18.0.77", "port": 0, "protocol": "tcp"}}).to_string(), ErrorCode::InvalidValue),
    ];
    for (name, line, code) in &cases {
        let response = raw(&bed, line);
        assert_eq!(response["ok"], false, "{name}: {response}");
        assert_eq!(response["error"]["code"], json!(code), "{name}: {response}");
        assert!(
            response["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}: {response}"
        );
    }

    // A line over the limit: refused, and the connection closed.
    let huge = format!(
        r#"{{"op": "list_vips", "pad": "{}"}}"#,
        "x".repeat(MAX_REQUEST_BYTES + 10)
    );
    let response = raw(&bed, &huge);
    assert_eq!(response["error"]["code"], "request_too_large", "{response}");

    // A client that vanishes mid-request, and one that never finishes.
    {
        let mut s = UnixStream::connect(bed.agent.socket()).expect("connect");
        s.write_all(br#"{"op": "remove_vip", "vip": "#)
            .expect("write");
    }
    let mut idle = UnixStream::connect(bed.agent.socket()).expect("connect");
    idle.write_all(br#"{"op": "remo"#).expect("write");

    // More VIPs than the data path holds: refused at the limit.
    let mut added = Vec::new();
    let limit_hit = loop {
        let port = 20000 + added.len() as u16;
        let vip = VipAddr {
            addr: "198.18.0.99".parse().expect("address"),
            port,
            proto: Protocol::Tcp,
        };
        let response = ask(
            &bed,
            Request::AddVip {
                vip,
                table_size: Some(251),
                policy: Default::default(),
                source_prefix: None,
                affinity_timeout: None,
                idle_timeout: None,
                icmp_echo: None,
                encap: None,
                gue_port: None,
            },
        );
        if !response.ok {
            break response;
        }
        added.push(vip);
        assert!(added.len() <= 512, "the VIP limit was not enforced");
    };
    assert_eq!(
        limit_hit.error.as_ref().map(|e| e.code),
        Some(ErrorCode::Capacity),
        "{limit_hit:?}"
    );
    assert_eq!(
        added.len(),
        510,
        "512 VIPs in all (2 configured + 510 added)"
    );
    for vip in added {
        ok(&bed, Request::RemoveVip { vip });
    }

    // More backends than the data path holds (4096 in all; 6 configured).
    let wide = VipAddr {
        addr: "198.18.0.98".parse().expect("address"),
        port: 80,
        proto: Protocol::Tcp,
    };
    ok(
        &bed,
        Request::AddVip {
            vip: wide,
            table_size: Some(4099),
            policy: Default::default(),
            source_prefix: None,
            affinity_timeout: None,
            idle_timeout: None,
            icmp_echo: None,
            encap: None,
            gue_port: None,
        },
    );
    let mut count = 0u32;
    let limit_hit = loop {
        let backend =
            std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 19, 100, 1)) + count);
        let response = ask(
            &bed,
            Request::AddBackend {
                vip: wide,
                backend: std::net::IpAddr::V4(backend),
                weight: None,
            },
        );
        if !response.ok {
            break response;
        }
        count += 1;
        assert!(count <= 4096, "the backend limit was not enforced");
    };
    assert_eq!(
        limit_hit.error.as_ref().map(|e| e.code),
        Some(ErrorCode::Capacity),
        "{limit_hit:?}"
    );
    assert_eq!(
        count, 4090,
        "4096 backends in all (6 configured + 4090 added)"
    );
    ok(&bed, Request::RemoveVip { vip: wide });

    // 100 clients at once, while the idle client still holds its connection.
    let started = Instant::now();
    std::thread::scope(|scope| {
        for i in 0..100 {
            let bed = &bed;
            scope.spawn(move || {
                let response = if i % 2 == 0 {
                    ask(bed, Request::ListVips {})
                } else {
                    ask(bed, Request::Stats {})
                };
                assert!(response.ok, "client {i}: {response:?}");
            });
        }
    });
    println!("100 concurrent clients served in {:?}", started.elapsed());
    drop(idle);

    // Nothing changed: configuration, state file, traffic.
    assert_eq!(
        ok(&bed, Request::ShowConfig {}),
        config_before,
        "the running configuration is unchanged"
    );
    assert_eq!(
        std::fs::read_to_string(bed.agent.state_file()).expect("state file"),
        state_before
    );
    let new = bed.count_new(30);
    assert_eq!(
        new.values().sum::<usize>(),
        30,
        "traffic still flows: {new:?}"
    );
    assert_eq!(new.len(), 3, "{new:?}");
    assert!(
        ask(&bed, Request::Version {}).ok,
        "the agent is still running"
    );
}

/// A change whose state cannot be saved is refused before it touches the
/// data path: established connections, on the backend it would have
/// removed too, carry on as if it had never been asked. (Undoing the change
/// afterwards would not do: the backend would come back under a new
/// generation, and its connections that the ring now sends elsewhere,
/// since b3 joined, would move.)
#[test]
fn a_change_that_cannot_be_saved_moves_nothing() {
    let bed = Bed::start(3, &[Some(1), Some(1), None], "native");
    let tcp = VipAddr {
        addr: std::net::IpAddr::V4(TEST_VIP),
        port: bed.port,
        proto: Protocol::Tcp,
    };
    let b2 = bed.topo.backend_addr(1);
    let mut open = bed.open(40);
    ok(
        &bed,
        Request::AddBackend {
            vip: tcp,
            backend: std::net::IpAddr::V4(bed.topo.backend_addr(2)),
            weight: None,
        },
    );
    assert!(
        open.iter().any(|(name, _)| name == "b2"),
        "some connection must be on b2"
    );
    let state_file = bed.agent.state_file();
    let state_before = std::fs::read_to_string(&state_file).expect("state file");
    // The agent stages its state as .<name>.tmp beside the file: a
    // directory there makes staging fail (root ignores permission bits).
    let file_name = state_file.file_name().expect("file name").to_string_lossy();
    let blocker = state_file.with_file_name(format!(".{file_name}.tmp"));
    std::fs::create_dir(&blocker).expect("creating the blocker");

    let response = ask(
        &bed,
        Request::RemoveBackend {
            vip: tcp,
            backend: std::net::IpAddr::V4(b2),
        },
    );
    std::fs::remove_dir(&blocker).expect("removing the blocker");
    let error = response.error.expect("the change must be refused");
    assert_eq!(error.code, ErrorCode::Internal, "{error:?}");
    assert!(error.message.contains("nothing changed"), "{error:?}");
    assert_eq!(
        std::fs::read_to_string(&state_file).expect("state file"),
        state_before
    );
    for (i, (name, stream)) in open.iter_mut().enumerate() {
        lb_tests::topology::echo_roundtrip(stream, format!("after {i}").as_bytes())
            .unwrap_or_else(|e| panic!("connection {i} on {name} broke: {e:#}"));
    }
    let counts = bed.count_new(60);
    assert!(
        counts.contains_key("b2"),
        "b2 still takes new flows: {counts:?}"
    );

    // With the disk writable again, the same change goes through.
    ok(
        &bed,
        Request::RemoveBackend {
            vip: tcp,
            backend: std::net::IpAddr::V4(b2),
        },
    );
    assert!(!bed.count_new(60).contains_key("b2"));
}
