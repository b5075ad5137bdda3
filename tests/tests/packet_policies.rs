//! Golden packet tests of the scheduling policies through
//! BPF_PROG_TEST_RUN: each case sends real frames and checks the verdict,
//! the exact output bytes (the input encapsulated to the backend the
//! policy must choose) and the exact movement of the global counters.
//!
//! The test thread is pinned to one CPU: round robin keeps one cursor per
//! CPU, and BPF_PROG_TEST_RUN runs on the caller's CPU.

use std::net::Ipv4Addr;

use lb_common::{ipv4_to_wire, AffinityKey, LEAST_CONN_MAX_BACKENDS};
use lb_tests::{
    packet::*,
    xdp::{self, *},
};
use lb_userspace::{
    dataplane::{Protocol, RingModel, VipAddr, VipSpec},
    policy::Policy,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
/// In CLIENT's /24.
const NEIGHBOUR: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 200);
const FAR_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 7);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const B1: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const B2: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
const B3: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 3);

const TX_NEW: &[(&str, u64)] = &[("flow_misses", 1), ("tx", 1)];
const TX_HIT: &[(&str, u64)] = &[("flow_hits", 1), ("tx", 1)];
const TX_AFFINITY: &[(&str, u64)] = &[("flow_misses", 1), ("affinity_hits", 1), ("tx", 1)];
const TX_EXPIRED: &[(&str, u64)] = &[("flow_misses", 1), ("affinity_expired", 1), ("tx", 1)];

fn vip_addr() -> VipAddr {
    VipAddr {
        addr: std::net::IpAddr::V4(VIP),
        port: 80,
        proto: Protocol::Tcp,
    }
}

fn spec(policy: Policy, backends: &[(Ipv4Addr, u32)]) -> VipSpec {
    VipSpec {
        policy,
        ..VipSpec::new(vip_addr(), backends)
    }
}

fn frame(src: Ipv4Addr, sport: u16, flags: u8) -> Vec<u8> {
    from_router(&Ipv4::tcp(src, sport, VIP, 80, flags))
}

fn load(specs: &[VipSpec]) -> Balancer {
    lb_tests::topology::pin_thread_to_cpu(0).expect("pinning the test thread to CPU 0");
    Balancer::load(&test_options(static_config(1500)), specs)
}

/// Sends `input`; asserts XDP_TX of exactly `input` encapsulated to
/// `backend`, and the counter movement.
fn expect_tx(
    lb: &mut Balancer,
    what: &str,
    input: &[u8],
    backend: impl Into<std::net::IpAddr>,
    counters: &[(&str, u64)],
) {
    // These tests' backends are IPv4 (the agent names them as IpAddr).
    let std::net::IpAddr::V4(backend) = backend.into() else {
        panic!("{what}: an IPv4 backend expected");
    };
    let before = lb.stats();
    let (verdict, output) = lb.run(input);
    let after = lb.stats();
    assert_eq!(verdict, XDP_TX, "{what}: verdict {}", verdict_name(verdict));
    assert_eq!(
        output,
        encapsulated(input, backend),
        "{what}: not encapsulated to {backend}"
    );
    xdp::assert_counter_deltas(what, &before, &after, counters);
}

/// Sends `input`; returns the backend it was encapsulated to (checking the
/// bytes against that backend's expected frame) and asserts `counters`.
fn tx_backend(lb: &mut Balancer, what: &str, input: &[u8], counters: &[(&str, u64)]) -> Ipv4Addr {
    let before = lb.stats();
    let (verdict, output) = lb.run(input);
    let after = lb.stats();
    assert_eq!(verdict, XDP_TX, "{what}: verdict {}", verdict_name(verdict));
    // The outer destination: bytes 30..34 of an untagged frame.
    let backend = Ipv4Addr::new(output[30], output[31], output[32], output[33]);
    assert_eq!(output, encapsulated(input, backend), "{what}: output bytes");
    xdp::assert_counter_deltas(what, &before, &after, counters);
    backend
}

fn conns(lb: &Balancer, backend: Ipv4Addr) -> i64 {
    let id = lb
        .dataplane
        .backend_id(&vip_addr(), std::net::IpAddr::V4(backend))
        .expect("backend id");
    lb.dataplane
        .maps()
        .backend_conns(id)
        .expect("BACKEND_CONNS")
}

fn set_conns(lb: &mut Balancer, backend: Ipv4Addr, n: i64) {
    let id = lb
        .dataplane
        .backend_id(&vip_addr(), std::net::IpAddr::V4(backend))
        .expect("backend id");
    lb.dataplane
        .maps_mut()
        .set_backend_conns(id, n)
        .expect("writing BACKEND_CONNS");
}

#[test]
fn round_robin_follows_the_weighted_schedule_exactly() {
    // Smooth weighted round robin of 1:2:3 is B3 B2 B1 B3 B2 B3.
    let mut lb = load(&[spec(Policy::RoundRobin, &[(B1, 1), (B2, 2), (B3, 3)])]);
    let cycle = [B3, B2, B1, B3, B2, B3];
    for (i, want) in cycle.iter().cycle().take(18).enumerate() {
        let sport = 41000 + i as u16;
        expect_tx(
            &mut lb,
            &format!("round robin, SYN {i}"),
            &frame(CLIENT, sport, TCP_SYN),
            *want,
            TX_NEW,
        );
    }
    // Established packets follow their pins, not the cursor.
    expect_tx(
        &mut lb,
        "round robin, established",
        &frame(CLIENT, 41002, TCP_ACK),
        B1,
        TX_HIT,
    );
    // A retransmitted SYN of an open flow keeps its backend (the cursor
    // would send it elsewhere) and does not move the cursor.
    expect_tx(
        &mut lb,
        "round robin, retransmitted SYN",
        &frame(CLIENT, 41001, TCP_SYN),
        B2,
        TX_HIT,
    );
    expect_tx(
        &mut lb,
        "round robin, the next new flow",
        &frame(CLIENT, 42000, TCP_SYN),
        B3,
        TX_NEW,
    );
    // After the client's FIN the tuple may be reused: its SYN is new.
    expect_tx(
        &mut lb,
        "round robin, FIN",
        &frame(CLIENT, 41001, TCP_FIN | TCP_ACK),
        B2,
        TX_HIT,
    );
    expect_tx(
        &mut lb,
        "round robin, SYN of a reused tuple",
        &frame(CLIENT, 41001, TCP_SYN),
        B2,
        TX_NEW,
    );

    // A drained backend (weight 0) leaves the schedule; its flows stay.
    lb.dataplane
        .apply(&[spec(Policy::RoundRobin, &[(B1, 0), (B2, 1), (B3, 1)])])
        .expect("draining B1");
    expect_tx(
        &mut lb,
        "round robin, drained backend keeps its flow",
        &frame(CLIENT, 41002, TCP_ACK),
        B1,
        TX_HIT,
    );
    let picks: Vec<Ipv4Addr> = (0..4)
        .map(|i| {
            tx_backend(
                &mut lb,
                "round robin after the drain",
                &frame(CLIENT, 43000 + i, TCP_SYN),
                TX_NEW,
            )
        })
        .collect();
    assert!(
        picks.windows(2).all(|w| w[0] != w[1]) && !picks.contains(&B1),
        "1:1 over B2 and B3 alternates: {picks:?}"
    );
}

#[test]
fn random_follows_the_weights_within_a_binomial_bound() {
    let mut lb = load(&[spec(Policy::Random, &[(B1, 1), (B2, 2), (B3, 3)])]);
    let n = 3000u16;
    let mut counts = [0usize; 3];
    for i in 0..n {
        let backend = tx_backend(
            &mut lb,
            "random SYN",
            &frame(CLIENT, 20000 + i, TCP_SYN),
            TX_NEW,
        );
        let k = [B1, B2, B3]
            .iter()
            .position(|b| *b == backend)
            .unwrap_or_else(|| panic!("random chose {backend}, no backend of the VIP"));
        counts[k] += 1;
    }
    // Each count is binomial(n, w/6); 5 standard deviations: a false alarm
    // about once in 10^6 runs.
    for (k, w) in [1.0, 2.0, 3.0].into_iter().enumerate() {
        let p = w / 6.0;
        let mean = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (counts[k] as f64 - mean).abs() <= 5.0 * sd,
            "backend {k} (weight {w}) took {} of {n}, expected {mean:.0} ± {:.0}: {counts:?}",
            counts[k],
            5.0 * sd
        );
    }
    println!("random 1:2:3 over {n} new flows: {counts:?}");
}

#[test]
fn least_conn_picks_the_lowest_load_per_weight_and_counts_opens_and_closes() {
    let mut lb = load(&[spec(Policy::LeastConn, &[(B1, 1), (B2, 1), (B3, 2)])]);
    // (conns + 1) / weight: B1 6, B2 1, B3 2.
    set_conns(&mut lb, B1, 5);
    set_conns(&mut lb, B3, 3);
    expect_tx(
        &mut lb,
        "least-conn, SYN",
        &frame(CLIENT, 40000, TCP_SYN),
        B2,
        TX_NEW,
    );
    assert_eq!(conns(&lb, B2), 1, "a new flow opens a connection");
    expect_tx(
        &mut lb,
        "least-conn, retransmitted SYN",
        &frame(CLIENT, 40000, TCP_SYN),
        B2,
        TX_HIT,
    );
    assert_eq!(
        conns(&lb, B2),
        1,
        "a retransmitted SYN is no new connection"
    );
    // B1 6, B2 2, B3 2 would tie; one more on B2 makes B3 the choice.
    set_conns(&mut lb, B2, 2);
    expect_tx(
        &mut lb,
        "least-conn, second SYN",
        &frame(CLIENT, 40001, TCP_SYN),
        B3,
        TX_NEW,
    );
    assert_eq!(conns(&lb, B3), 4);
    expect_tx(
        &mut lb,
        "least-conn, data",
        &frame(CLIENT, 40001, TCP_ACK | TCP_PSH),
        B3,
        TX_HIT,
    );
    assert_eq!(conns(&lb, B3), 4, "data moves no count");
    expect_tx(
        &mut lb,
        "least-conn, the client's FIN",
        &frame(CLIENT, 40001, TCP_FIN | TCP_ACK),
        B3,
        TX_HIT,
    );
    assert_eq!(conns(&lb, B3), 3, "the client's FIN closes the connection");
    expect_tx(
        &mut lb,
        "least-conn, RST after the FIN",
        &frame(CLIENT, 40001, TCP_RST),
        B3,
        TX_HIT,
    );
    assert_eq!(conns(&lb, B3), 3, "a connection closes once");
    expect_tx(
        &mut lb,
        "least-conn, RST",
        &frame(CLIENT, 40000, TCP_RST | TCP_ACK),
        B2,
        TX_HIT,
    );
    assert_eq!(conns(&lb, B2), 1, "an RST closes too");
    // Below zero (a close after a reconciliation dropped the flow) reads
    // as zero: B2 at -3 counts as idle, like B1 at 0.
    set_conns(&mut lb, B1, 0);
    set_conns(&mut lb, B2, -3);
    set_conns(&mut lb, B3, 10);
    let b = tx_backend(
        &mut lb,
        "least-conn with a negative count",
        &frame(CLIENT, 40002, TCP_SYN),
        TX_NEW,
    );
    assert!(b == B1 || b == B2, "the two idle backends, not B3: {b}");

    // UDP has no SYN: a new flow opens a connection.
    let udp_vip = VipAddr {
        port: 53,
        proto: Protocol::Udp,
        ..vip_addr()
    };
    let mut udp = spec(Policy::LeastConn, &[(B1, 1)]);
    udp.vip = udp_vip;
    let mut lb = load(&[udp]);
    let datagram = from_router(&Ipv4::udp(CLIENT, 5353, VIP, 53).payload(b"q"));
    expect_tx(&mut lb, "least-conn UDP, first", &datagram, B1, TX_NEW);
    expect_tx(&mut lb, "least-conn UDP, second", &datagram, B1, TX_HIT);
    let id = lb
        .dataplane
        .backend_id(&udp_vip, std::net::IpAddr::V4(B1))
        .expect("id");
    assert_eq!(lb.dataplane.maps().backend_conns(id).expect("count"), 1);

    // More backends than the scan takes are refused before any write.
    let many: Vec<(Ipv4Addr, u32)> = (0..=LEAST_CONN_MAX_BACKENDS)
        .map(|i| (Ipv4Addr::new(198, 19, 1, i as u8 + 1), 1))
        .collect();
    let e = lb
        .dataplane
        .apply(&[spec(Policy::LeastConn, &many)])
        .expect_err("65 least-conn backends");
    assert!(format!("{e:#}").contains("at most 64"), "{e:#}");
    assert_eq!(
        lb.dataplane.specs().len(),
        1,
        "the refused change wrote nothing"
    );
}

#[test]
fn maglev_source_keeps_a_client_prefix_on_one_backend() {
    let backends: Vec<(Ipv4Addr, u32)> =
        (1..=8).map(|i| (Ipv4Addr::new(198, 19, 0, i), 1)).collect();
    let mut source = spec(Policy::MaglevSource, &backends);
    source.source_prefix = 24;
    let model = RingModel::new(&source).expect("model");
    let mut lb = load(&[source]);
    let home = model
        .choose(std::net::IpAddr::V4(CLIENT), 1)
        .expect("the model's backend");
    for (i, client) in [CLIENT, NEIGHBOUR].into_iter().enumerate() {
        for sport in [1024, 33000, 65535] {
            expect_tx(
                &mut lb,
                &format!("maglev-source /24, client {i} port {sport}"),
                &frame(client, sport, TCP_SYN),
                home,
                TX_NEW,
            );
        }
    }
    // Another /24 goes by its own hash, as the model says.
    let far = model
        .choose(std::net::IpAddr::V4(FAR_CLIENT), 9)
        .expect("model");
    expect_tx(
        &mut lb,
        "maglev-source /24, another prefix",
        &frame(FAR_CLIENT, 4000, TCP_SYN),
        far,
        TX_NEW,
    );
    assert_eq!(
        lb.dataplane
            .ring_choice(&vip_addr(), std::net::IpAddr::V4(NEIGHBOUR), 7),
        Some(home),
        "the agent's model agrees with the data path"
    );
}

#[test]
fn affinity_returns_a_client_to_its_backend_until_it_expires() {
    let mut affine = spec(Policy::Random, &[(B1, 1), (B2, 1), (B3, 1)]);
    affine.affinity_timeout = 2;
    let mut lb = load(&[affine.clone()]);
    let home = tx_backend(
        &mut lb,
        "affinity, first SYN",
        &frame(CLIENT, 30000, TCP_SYN),
        TX_NEW,
    );
    for sport in 30001..30021 {
        expect_tx(
            &mut lb,
            &format!("affinity, SYN from port {sport}"),
            &frame(CLIENT, sport, TCP_SYN),
            home,
            TX_AFFINITY,
        );
    }
    // The client's entry is refreshed by its established packets: 2.4 s
    // after its last SYN, but 1.2 s after a packet in a later clock tick,
    // it still holds.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    expect_tx(
        &mut lb,
        "affinity, established packet",
        &frame(CLIENT, 30000, TCP_ACK),
        home,
        TX_HIT,
    );
    std::thread::sleep(std::time::Duration::from_millis(1200));
    expect_tx(
        &mut lb,
        "affinity, SYN after a refresh",
        &frame(CLIENT, 30100, TCP_SYN),
        home,
        TX_AFFINITY,
    );

    // An entry older than the timeout is not followed.
    let vip_id = lb.dataplane.vip_id(&vip_addr()).expect("vip id");
    let key = AffinityKey {
        vip_id,
        client: ipv4_to_wire(CLIENT.octets()),
    };
    let mut entry = lb
        .dataplane
        .maps()
        .affinity(&key)
        .expect("reading AFFINITY")
        .expect("the client's entry");
    entry.last_seen_ns -= 3_000_000_000;
    lb.dataplane
        .maps_mut()
        .set_affinity(&key, &entry)
        .expect("ageing the entry");
    tx_backend(
        &mut lb,
        "affinity, SYN after the timeout",
        &frame(CLIENT, 30200, TCP_SYN),
        TX_EXPIRED,
    );

    // A drained backend takes no new flow, even by affinity.
    let new_home = tx_backend(
        &mut lb,
        "affinity, renewed",
        &frame(CLIENT, 30201, TCP_SYN),
        TX_AFFINITY,
    );
    let drained: Vec<(Ipv4Addr, u32)> = [B1, B2, B3]
        .into_iter()
        .map(|b| (b, u32::from(b != new_home)))
        .collect();
    let mut drain = spec(Policy::Random, &drained);
    drain.affinity_timeout = 2;
    lb.dataplane.apply(&[drain]).expect("draining the home");
    let moved = tx_backend(
        &mut lb,
        "affinity to a drained backend",
        &frame(CLIENT, 30202, TCP_SYN),
        TX_NEW,
    );
    assert_ne!(moved, new_home, "the drained backend took a new flow");

    // Turning affinity off deletes the VIP's entries.
    lb.dataplane
        .apply(&[spec(Policy::Random, &drained)])
        .expect("affinity off");
    assert_eq!(
        lb.dataplane
            .maps()
            .affinity(&key)
            .expect("reading AFFINITY"),
        None,
        "entries of a VIP without affinity are gone"
    );
}

#[test]
fn a_policy_change_keeps_established_flows() {
    let three = [(B1, 1), (B2, 1), (B3, 1)];
    let mut lb = load(&[spec(Policy::Maglev, &three)]);
    let pinned: Vec<(u16, Ipv4Addr)> = (0..30)
        .map(|i| {
            let sport = 50000 + i;
            let b = tx_backend(
                &mut lb,
                "maglev SYN",
                &frame(CLIENT, sport, TCP_SYN),
                TX_NEW,
            );
            (sport, b)
        })
        .collect();
    for policy in [
        Policy::RoundRobin,
        Policy::LeastConn,
        Policy::Random,
        Policy::Maglev,
    ] {
        let report = lb
            .dataplane
            .apply(&[spec(policy, &three)])
            .unwrap_or_else(|e| panic!("switching to {policy}: {e:#}"));
        assert_eq!(
            report.backends_removed, 0,
            "{policy}: backends keep their ids"
        );
        for &(sport, b) in &pinned {
            expect_tx(
                &mut lb,
                &format!("after the switch to {policy}, flow {sport}"),
                &frame(CLIENT, sport, TCP_ACK),
                b,
                TX_HIT,
            );
        }
    }
}
