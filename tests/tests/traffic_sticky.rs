//! Stickiness: every byte of a TCP connection is served by one backend (a
//! packet sent to another backend would be answered with a reset), and UDP
//! datagrams from one source port stay on one backend.

use std::{collections::BTreeMap, time::Duration};

use lb_tests::{agent::Bed, topology::echo_roundtrip};

#[test]
fn tcp_connections_stay_on_their_backend() {
    let bed = Bed::start(3, &[Some(1), Some(1), Some(1)], "native");
    let mut connections = bed.open(40);
    for round in 0..10u8 {
        for (i, (name, stream)) in connections.iter_mut().enumerate() {
            // Round 5 sends a large message: many full-size segments, each
            // encapsulated up to the backend link's MTU.
            let data: Vec<u8> = if round == 5 {
                vec![round; 200_000]
            } else {
                vec![round ^ i as u8; 1000]
            };
            let back = echo_roundtrip(stream, &data)
                .unwrap_or_else(|e| panic!("connection {i} to {name}, round {round}: {e:#}"));
            assert_eq!(
                back, data,
                "connection {i} to {name}, round {round}: wrong echo"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let spread: BTreeMap<&str, usize> =
        connections.iter().fold(BTreeMap::new(), |mut m, (n, _)| {
            *m.entry(n.as_str()).or_default() += 1;
            m
        });
    assert_eq!(
        spread.len(),
        3,
        "40 connections reach all three backends: {spread:?}"
    );
}

#[test]
fn udp_flows_stay_on_their_backend() {
    let bed = Bed::start(3, &[Some(1), Some(1), Some(1)], "native");
    let seen = bed.udp_flows_stay(30000..30030, 10);
    assert!(
        seen.len() >= 2,
        "30 UDP flows use more than one backend: {seen:?}"
    );
}
