//! Backends removed, added and drained while connections are open: the
//! agent rewrites the tables (config reload) without disturbing established
//! connections to the backends that stay.

use std::collections::BTreeMap;

use lb_tests::{agent::Bed, topology::echo_roundtrip};

/// Every connection still echoes, within the stream timeout (no reset, no
/// stall). Returns the names of connections that failed.
fn exercise(connections: &mut [(String, std::net::TcpStream)]) -> Vec<String> {
    let mut failed = Vec::new();
    for (name, stream) in connections.iter_mut() {
        let data = vec![0x42; 2000];
        match echo_roundtrip(stream, &data) {
            Ok(back) if back == data => {}
            _ => failed.push(name.clone()),
        }
    }
    failed
}

fn per_backend(connections: &[(String, std::net::TcpStream)]) -> BTreeMap<String, usize> {
    connections.iter().fold(BTreeMap::new(), |mut m, (n, _)| {
        *m.entry(n.clone()).or_default() += 1;
        m
    })
}

#[test]
fn backend_removed_while_connections_are_open() {
    let mut bed = Bed::start(3, &[Some(1), Some(1), Some(1)], "native");
    let mut connections = bed.open(60);
    assert_eq!(
        per_backend(&connections).len(),
        3,
        "{:?}",
        per_backend(&connections)
    );

    bed.set_weights(&[Some(1), Some(1), None]);
    let (mut kept, mut moved): (Vec<_>, Vec<_>) =
        connections.drain(..).partition(|(n, _)| n != "b3");
    let failed = exercise(&mut kept);
    assert!(
        failed.is_empty(),
        "connections to the remaining backends broke: {failed:?}"
    );
    // b3's connections are re-selected to another backend, which resets them.
    let failed = exercise(&mut moved);
    assert_eq!(
        failed.len(),
        moved.len(),
        "connections of the removed backend were re-selected"
    );

    let new = bed.count_new(200);
    assert!(
        !new.contains_key("b3"),
        "new connections avoid the removed backend: {new:?}"
    );
    assert_eq!(new.len(), 2, "{new:?}");
}

#[test]
fn backend_added_while_connections_are_open() {
    let mut bed = Bed::start(3, &[Some(1), Some(1), None], "native");
    let mut connections = bed.open(60);
    assert!(!per_backend(&connections).contains_key("b3"));

    bed.set_weights(&[Some(1), Some(1), Some(1)]);
    let failed = exercise(&mut connections);
    assert!(
        failed.is_empty(),
        "existing connections broke when a backend was added: {failed:?}"
    );

    let new = bed.count_new(200);
    assert!(
        new.get("b3").copied().unwrap_or(0) > 30,
        "new connections reach the added backend: {new:?}"
    );
}

#[test]
fn drained_backend_keeps_its_connections_and_gets_no_new_ones() {
    let mut bed = Bed::start(3, &[Some(1), Some(1), Some(1)], "native");
    let mut connections = bed.open(60);
    let on_b2 = per_backend(&connections).get("b2").copied().unwrap_or(0);
    assert!(on_b2 > 0);

    bed.set_weights(&[Some(1), Some(0), Some(1)]);
    let failed = exercise(&mut connections);
    assert!(
        failed.is_empty(),
        "connections broke when b2 started draining: {failed:?}"
    );

    let new = bed.count_new(200);
    assert!(
        !new.contains_key("b2"),
        "a draining backend gets no new connections: {new:?}"
    );
    // The drained connections complete normally.
    let failed = exercise(&mut connections);
    assert!(failed.is_empty(), "{failed:?}");
}
