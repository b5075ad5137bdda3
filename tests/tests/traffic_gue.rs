//! GUE end to end: a VIP whose packets travel to the backends in UDP, real
//! TCP and UDP through the test bed, the backends' `decap` stripping GUE,
//! and a switch between GUE and IP-in-IP under open connections.

use std::collections::BTreeMap;

use lb_common::DEFAULT_GUE_PORT;
use lb_tests::{
    agent::Bed,
    topology::{echo_all, Topology},
};
use serde_json::Value;

/// The bed's usual VIPs (TCP and UDP on 8080, three backends of weight 1),
/// with `encap` set on both (`None`: the default, IP-in-IP).
fn config(topo: &Topology, encap: Option<&str>) -> Value {
    let mut config = Bed::config_for(topo, "native", 8080, &[Some(1), Some(1), Some(1)]);
    if let (Some(encap), Some(vips)) = (encap, config["vips"].as_array_mut()) {
        for vip in vips {
            vip["encap"] = encap.into();
            vip["gue_port"] = DEFAULT_GUE_PORT.into();
        }
    }
    config
}

#[test]
fn tcp_and_udp_over_gue_reach_every_backend_and_stay() {
    let bed = Bed::start_with(3, "native", |topo| config(topo, Some("gue")));
    let before = bed.decap_stats(3);
    let mut connections = bed.open(30);
    for round in 0..4u8 {
        // Round 2: 200 kB, many full-size segments in GUE.
        echo_all(
            &mut connections,
            round,
            if round == 2 { 200_000 } else { 1000 },
        );
    }
    let spread: BTreeMap<&str, usize> =
        connections.iter().fold(BTreeMap::new(), |mut m, (n, _)| {
            *m.entry(n.as_str()).or_default() += 1;
            m
        });
    assert_eq!(
        spread.len(),
        3,
        "30 connections reach all three backends: {spread:?}"
    );

    let udp_backends = bed.udp_flows_stay(31000..31020, 5);
    assert!(
        udp_backends.len() >= 2,
        "20 UDP flows over GUE: {udp_backends:?}"
    );

    let after = bed.decap_stats(3);
    for j in 0..3 {
        let gue = after[j].gue_decapsulated - before[j].gue_decapsulated;
        let ipip = after[j].decapsulated - before[j].decapsulated;
        assert!(
            gue > 0,
            "backend {j} stripped no GUE packet: {:?}",
            after[j]
        );
        assert_eq!(
            ipip, 0,
            "backend {j} got IP-in-IP from a GUE VIP: {:?}",
            after[j]
        );
        assert_eq!(
            after[j].malformed, before[j].malformed,
            "backend {j}: malformed tunnel packets"
        );
    }
    println!(
        "GUE decapsulated per backend: {:?}",
        after.iter().map(|s| s.gue_decapsulated).collect::<Vec<_>>()
    );
}

#[test]
fn switching_encapsulation_keeps_open_connections() {
    let mut bed = Bed::start_with(3, "native", |topo| config(topo, None));
    let mut connections = bed.open(24);
    echo_all(&mut connections, 0, 1000);
    let ipip_before = bed.decap_stats(3);
    assert!(
        ipip_before
            .iter()
            .all(|s| s.decapsulated > 0 && s.gue_decapsulated == 0),
        "IP-in-IP first: {ipip_before:?}"
    );

    for (round, encap) in [(1u8, Some("gue")), (2, None), (3, Some("gue"))] {
        let before = bed.decap_stats(3);
        bed.agent
            .reload(&config(&bed.topo, encap))
            .unwrap_or_else(|e| panic!("reload to {encap:?}: {e:#}"));
        echo_all(&mut connections, round, 20_000);
        let after = bed.decap_stats(3);
        let gue: u64 = (0..3)
            .map(|j| after[j].gue_decapsulated - before[j].gue_decapsulated)
            .sum();
        let ipip: u64 = (0..3)
            .map(|j| after[j].decapsulated - before[j].decapsulated)
            .sum();
        match encap {
            Some(_) => assert!(
                gue > 0 && ipip == 0,
                "round {round} in GUE: {gue} GUE, {ipip} IP-in-IP"
            ),
            None => assert!(
                ipip > 0 && gue == 0,
                "round {round} in IP-in-IP: {gue} GUE, {ipip} IP-in-IP"
            ),
        }
    }
    // The same connections on the same backends throughout.
    echo_all(&mut connections, 4, 1000);
}
