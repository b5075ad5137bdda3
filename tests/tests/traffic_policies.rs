//! Scheduling policies with real TCP connections through the test bed
//! (client → router → LB with the agent → backends, direct server return):
//! each policy's defining property, a policy change under open
//! connections, and refused settings through the control socket.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{node_config, Agent, Bed, TEST_VIP},
    topology::{echo_roundtrip, lb_node_addr, Topology, TopologySpec},
};
use lb_userspace::{
    control::{
        client,
        protocol::{ErrorCode, Request, Response, ResponseData, VipInfo},
    },
    dataplane::{BackendSpec, Protocol, RingModel, VipAddr, VipSpec},
    policy::Policy,
};
use serde_json::{json, Value};

const PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(10);

fn vip() -> VipAddr {
    VipAddr {
        addr: std::net::IpAddr::V4(TEST_VIP),
        port: PORT,
        proto: Protocol::Tcp,
    }
}

/// A TCP VIP on backends `weights[j]` (b{j+1}; `None`: not in the VIP),
/// with the policy settings in `policy` (a JSON object merged in).
fn vip_json(topo: &Topology, weights: &[Option<u32>], policy: &Value) -> Value {
    let backends: Vec<Value> = weights
        .iter()
        .enumerate()
        .filter_map(|(j, w)| {
            w.map(|w| json!({"address": topo.backend_addr(j).to_string(), "weight": w}))
        })
        .collect();
    let mut v = json!({"address": TEST_VIP.to_string(), "port": PORT, "protocol": "tcp", "backends": backends});
    if let (Some(v), Some(p)) = (v.as_object_mut(), policy.as_object()) {
        v.extend(p.clone());
    }
    v
}

fn bed(weights: &'static [Option<u32>], policy: Value) -> Bed {
    Bed::start_with(weights.len(), "native", move |topo| {
        node_config(topo, 0, "native", vec![vip_json(topo, weights, &policy)])
    })
}

fn ask(agent: &Agent, request: Request) -> Response {
    client::request(&agent.socket(), &request, TIMEOUT)
        .unwrap_or_else(|e| panic!("{request:?}: {e}"))
}

fn ok(agent: &Agent, request: Request) -> Option<ResponseData> {
    let response = ask(agent, request.clone());
    assert!(response.ok, "{request:?} was refused: {response:?}");
    response.data
}

fn vip_info(agent: &Agent) -> VipInfo {
    match ok(agent, Request::ListVips {}) {
        Some(ResponseData::Vips { vips }) => vips
            .into_iter()
            .find(|v| v.vip == vip())
            .expect("the VIP is listed"),
        other => panic!("list_vips: {other:?}"),
    }
}

fn global(agent: &Agent) -> lb_common::GlobalStats {
    match ok(agent, Request::Stats {}) {
        Some(ResponseData::Stats { stats }) => stats.global,
        other => panic!("stats: {other:?}"),
    }
}

/// least-conn counts per backend name, as `list_backends` reports them.
fn connections(bed: &Bed) -> BTreeMap<String, i64> {
    vip_info(&bed.agent)
        .backends
        .iter()
        .map(|b| {
            let j = (0..bed.topo.backend_names().len())
                .find(|&j| bed.topo.backend_addr(j) == b.address)
                .expect("a test-bed backend");
            (
                bed.topo.backend_name(j).to_string(),
                b.connections.unwrap_or(-1),
            )
        })
        .collect()
}

fn set_policy(agent: &Agent, policy: Policy, affinity_timeout: Option<u32>) {
    ok(
        agent,
        Request::SetPolicy {
            vip: vip(),
            policy,
            source_prefix: None,
            affinity_timeout,
            idle_timeout: None,
        },
    );
}

/// One connection from `client`, pinned to CPU 0, closed at once: the
/// backend's name.
fn connect_once(topo: &Topology, client: usize) -> String {
    let (name, _stream) = topo
        .tcp_connect_on_cpu(client, TEST_VIP, PORT, TIMEOUT, 0)
        .unwrap_or_else(|e| panic!("connecting: {e:#}"));
    name
}

fn tally<'a>(names: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, usize> {
    names.into_iter().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(n.clone()).or_default() += 1;
        m
    })
}

fn all_echo(conns: &mut [(String, TcpStream)], what: &str) {
    for (i, (name, stream)) in conns.iter_mut().enumerate() {
        let data = vec![i as u8; 1500];
        let back = echo_roundtrip(stream, &data)
            .unwrap_or_else(|e| panic!("{what}: connection {i} to {name}: {e:#}"));
        assert_eq!(back, data, "{what}: connection {i} to {name}: wrong echo");
    }
}

/// Polls `f` until it returns true or `limit` passes; returns the time it took.
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn round_robin_on_one_cpu_is_exact_per_cycle() {
    let bed = bed(
        &[Some(1), Some(2), Some(3)],
        json!({"policy": "round-robin"}),
    );
    // Every SYN from CPU 0: one cursor, one cycle of 6 after another.
    let names: Vec<String> = (0..60).map(|i| connect_once(&bed.topo, i % 2)).collect();
    for (c, cycle) in names.chunks(6).enumerate() {
        let t = tally(cycle);
        for (backend, weight) in [("b1", 1), ("b2", 2), ("b3", 3)] {
            let n = t.get(backend).copied().unwrap_or(0);
            assert!(
                n.abs_diff(weight) <= 1,
                "cycle {c}: {backend} (weight {weight}) took {n}: {cycle:?}"
            );
        }
    }
    let total = tally(&names);
    assert_eq!(
        (total.get("b1"), total.get("b2"), total.get("b3")),
        (Some(&10), Some(&20), Some(&30)),
        "60 connections over 1:2:3: {total:?}"
    );
    println!("round robin 1:2:3, 60 connections from one CPU: {total:?}");
}

#[test]
fn random_shares_stay_within_a_binomial_bound() {
    let bed = bed(&[Some(1), Some(2), Some(3)], json!({"policy": "random"}));
    let n = 600;
    let names: Vec<String> = (0..n)
        .map(|i| {
            bed.topo
                .tcp_connect(i % 2, TEST_VIP, PORT, TIMEOUT)
                .unwrap_or_else(|e| panic!("connection {i}: {e:#}"))
                .0
        })
        .collect();
    let t = tally(&names);
    // Binomial(n, w/6) each; 5 standard deviations: a false alarm about
    // once in 10^6 runs.
    for (backend, w) in [("b1", 1.0), ("b2", 2.0), ("b3", 3.0)] {
        let p = w / 6.0;
        let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
        let got = t.get(backend).copied().unwrap_or(0) as f64;
        assert!(
            (got - mean).abs() <= 5.0 * sd,
            "{backend} (weight {w}) took {got} of {n}, expected {mean:.0} ± {:.0}: {t:?}",
            5.0 * sd
        );
    }
    println!("random 1:2:3 over {n} connections: {t:?}");
}

#[test]
fn least_conn_sends_fewer_new_connections_to_a_backend_holding_long_ones() {
    let policy = json!({"policy": "least-conn", "idle_timeout": 3});
    let mut bed = bed(&[Some(1), None, None], policy.clone());
    // 20 long connections, all on b1 (the only backend so far).
    let mut long = bed.open(20);
    assert!(long.iter().all(|(n, _)| n == "b1"));
    let config = node_config(
        &bed.topo,
        0,
        "native",
        vec![vip_json(&bed.topo, &[Some(1), Some(1), Some(1)], &policy)],
    );
    bed.agent.reload(&config).expect("adding b2 and b3");
    wait_for(Duration::from_secs(10), "b2 and b3 in the VIP", || {
        vip_info(&bed.agent).backends.len() == 3
    });
    assert_eq!(
        connections(&bed).get("b1"),
        Some(&20),
        "the 20 long connections count on b1"
    );

    // Short connections (closed with a FIN at once): they go to b2 and b3,
    // whose counts fall back after each one.
    let short: Vec<String> = (0..60)
        .map(|i| {
            bed.count_new(1)
                .into_keys()
                .next()
                .unwrap_or_else(|| panic!("connection {i}"))
        })
        .collect();
    let t = tally(&short);
    let on_b1 = t.get("b1").copied().unwrap_or(0);
    assert!(
        on_b1 <= 3,
        "b1 holds 20 connections yet took {on_b1} of 60 new ones: {t:?}"
    );
    println!("least-conn, 60 short connections with 20 long ones on b1: {t:?}");
    all_echo(&mut long, "long connections");
    let counts = connections(&bed);
    assert_eq!(counts.get("b1"), Some(&20), "{counts:?}");
    assert!(
        counts.get("b2").is_some_and(|&n| n <= 1) && counts.get("b3").is_some_and(|&n| n <= 1),
        "short connections closed: {counts:?}"
    );

    // Silent connections stop counting: idle for longer than idle_timeout
    // (3 s), the agent's reconciliation (every 5 s) drops them...
    let t = wait_for(
        Duration::from_secs(15),
        "idle connections dropped from the count",
        || connections(&bed).get("b1") == Some(&0),
    );
    println!("least-conn: 20 idle connections dropped from b1's count after {t:?}");
    // ...and counts connections again while they carry packets.
    let t = wait_for(
        Duration::from_secs(15),
        "active connections counted again",
        || {
            all_echo(&mut long[..5], "five long connections");
            connections(&bed).get("b1") == Some(&5)
        },
    );
    println!("least-conn: 5 active connections counted again after {t:?}");
}

#[test]
fn maglev_source_keeps_a_client_on_one_backend_and_two_nodes_agree() {
    let spec = TopologySpec {
        clients: 2,
        backends: 4,
        vips: vec![TEST_VIP.into()],
        ports: vec![PORT],
    };
    let topo = Topology::build_multi(spec, 2).expect("building two LB nodes");
    let weights = [Some(1), Some(1), Some(1), Some(1)];
    let policy = json!({"policy": "maglev-source"});
    let agents: Vec<Agent> = (0..2)
        .map(|k| {
            let config = node_config(&topo, k, "native", vec![vip_json(&topo, &weights, &policy)]);
            Agent::start_on(&topo, k, &config, "info", &[])
                .unwrap_or_else(|e| panic!("agent {k}: {e:#}"))
        })
        .collect();
    let model = RingModel::new(&VipSpec {
        policy: Policy::MaglevSource,
        ..VipSpec {
            backends: (0..4)
                .map(|j| BackendSpec {
                    addr: std::net::IpAddr::V4(topo.backend_addr(j)),
                    weight: 1,
                })
                .collect(),
            ..VipSpec::new::<std::net::IpAddr>(vip(), &[])
        }
    })
    .expect("model");
    let digests: Vec<String> = agents
        .iter()
        .map(|a| vip_info(a).digest.expect("a digest"))
        .collect();
    assert_eq!(digests[0], digests[1], "the two nodes' tables differ");
    assert_eq!(
        digests[0],
        model.digest(),
        "the nodes' table is not the model's"
    );

    // Through node 0, then through node 1: each client always reaches the
    // backend the model gives its address, whatever its source port.
    let mut homes = Vec::new();
    for node in 0..2 {
        topo.router_ns()
            .ip(&[
                "route",
                "replace",
                &format!("{TEST_VIP}/32"),
                "via",
                &lb_node_addr(node).to_string(),
            ])
            .expect("routing the VIP to one node");
        for client in 0..2 {
            let names: Vec<String> = (0..15)
                .map(|i| {
                    topo.tcp_connect(client, TEST_VIP, PORT, TIMEOUT)
                        .unwrap_or_else(|e| {
                            panic!("node {node}, client {client}, connection {i}: {e:#}")
                        })
                        .0
                })
                .collect();
            let want = model
                .choose(std::net::IpAddr::V4(topo.client_addr(client)), 1)
                .expect("the model's backend");
            let j = (0..4)
                .find(|&j| topo.backend_addr(j) == want)
                .expect("a backend");
            let t = tally(&names);
            assert_eq!(
                t.len(),
                1,
                "node {node}: client {client}'s connections spread: {t:?}"
            );
            assert_eq!(
                t.keys().next().map(String::as_str),
                Some(topo.backend_name(j)),
                "node {node}, client {client}"
            );
            homes.push((node, client, topo.backend_name(j).to_string()));
        }
    }
    println!("maglev-source, 15 connections per client and node: {homes:?}");
    drop(agents);
}

#[test]
fn affinity_holds_for_its_timeout_and_expires_after_it() {
    let bed = bed(
        &[Some(1), Some(1), Some(1)],
        json!({"policy": "round-robin", "affinity_timeout": 2}),
    );
    let before = global(&bed.agent);
    // Round robin alone would rotate: affinity keeps each client at home.
    for client in 0..2 {
        let names: Vec<String> = (0..10).map(|_| connect_once(&bed.topo, client)).collect();
        let t = tally(&names);
        assert_eq!(
            t.len(),
            1,
            "client {client} moved within its affinity: {t:?}"
        );
    }
    let mid = global(&bed.agent);
    assert_eq!(
        mid.affinity_hits - before.affinity_hits,
        18,
        "9 hits per client"
    );
    assert_eq!(mid.affinity_expired, before.affinity_expired);
    // Silent for longer than the timeout plus a flow-clock tick: the next
    // connection of each client is chosen by round robin again.
    std::thread::sleep(Duration::from_millis(3500));
    for client in 0..2 {
        connect_once(&bed.topo, client);
    }
    let after = global(&bed.agent);
    assert_eq!(
        after.affinity_expired - mid.affinity_expired,
        2,
        "both clients' entries expired"
    );
    assert_eq!(
        after.affinity_hits, mid.affinity_hits,
        "an expired entry placed nothing"
    );
    println!("affinity: 18 hits while connecting, 2 expiries after 3.5 s of silence");
}

#[test]
fn a_policy_change_keeps_established_connections() {
    let bed = bed(&[Some(1), Some(1), Some(1)], json!({}));
    let mut long = bed.open(30);
    assert!(
        tally(long.iter().map(|(n, _)| n)).len() > 1,
        "30 maglev connections use several backends"
    );
    set_policy(&bed.agent, Policy::RoundRobin, None);
    assert_eq!(vip_info(&bed.agent).policy.policy, Policy::RoundRobin);
    all_echo(&mut long, "after the switch to round-robin");
    let names: Vec<String> = (0..12).map(|_| connect_once(&bed.topo, 0)).collect();
    let t = tally(&names);
    assert!(
        t.values().all(|&n| n == 4),
        "new connections follow round robin (4 each of 12): {t:?}"
    );
    set_policy(&bed.agent, Policy::LeastConn, Some(60));
    all_echo(&mut long, "after the switch to least-conn with affinity");
    set_policy(&bed.agent, Policy::Maglev, None);
    all_echo(&mut long, "after the switch back to maglev");
    println!("30 connections kept their backends through round-robin, least-conn and maglev; round robin placed {t:?}");
}

#[test]
fn bad_policy_settings_are_refused_and_change_nothing() {
    let bed = bed(&[Some(1), Some(1), Some(1)], json!({}));
    let before = vip_info(&bed.agent);
    let vip_field = json!({"address": TEST_VIP.to_string(), "port": PORT, "protocol": "tcp"});
    let raw = |fields: Value| -> Value {
        let mut line = json!({"op": "set_policy", "vip": vip_field});
        if let (Some(l), Some(f)) = (line.as_object_mut(), fields.as_object()) {
            l.extend(f.clone());
        }
        let text = client::request_raw(&bed.agent.socket(), &line.to_string(), TIMEOUT)
            .expect("a response");
        serde_json::from_str(&text).expect("a JSON response")
    };
    for (fields, code, needle) in [
        (json!({"policy": "fastest"}), "bad_request", "fastest"),
        (
            json!({"policy": "maglev-source", "source_prefix": 0}),
            "invalid_value",
            "source_prefix: 0",
        ),
        (
            json!({"policy": "maglev-source", "source_prefix": 33}),
            "invalid_value",
            "source_prefix: 33",
        ),
        (
            json!({"affinity_timeout": 0}),
            "invalid_value",
            "affinity_timeout: 0",
        ),
        (
            json!({"policy": "random", "idle_timeout": 30}),
            "invalid_value",
            "idle_timeout",
        ),
    ] {
        let response = raw(fields.clone());
        assert_eq!(response["ok"], false, "{fields}: {response}");
        assert_eq!(response["error"]["code"], code, "{fields}: {response}");
        let message = response["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{fields}: {message}");
    }
    // least-conn on more backends than it scans.
    for i in 0..62u8 {
        ok(
            &bed.agent,
            Request::AddBackend {
                vip: vip(),
                backend: std::net::IpAddr::V4(Ipv4Addr::new(198, 19, 200, i + 1)),
                weight: None,
            },
        );
    }
    let with_65 = vip_info(&bed.agent);
    let response = ask(
        &bed.agent,
        Request::SetPolicy {
            vip: vip(),
            policy: Policy::LeastConn,
            source_prefix: None,
            affinity_timeout: None,
            idle_timeout: None,
        },
    );
    let error = response
        .error
        .expect("least-conn on 65 backends is refused");
    assert_eq!(error.code, ErrorCode::Capacity, "{}", error.message);
    assert!(error.message.contains("at most 64"), "{}", error.message);
    let after = vip_info(&bed.agent);
    assert_eq!(
        after.policy, with_65.policy,
        "a refused change changed the policy"
    );
    assert_eq!(
        after.digest, with_65.digest,
        "a refused change changed the table"
    );
    assert_eq!(before.policy, after.policy);
}
