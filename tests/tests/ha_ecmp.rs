//! Active-active: three LB nodes, each running BIRD and lb-agent, announce
//! the VIP to an upstream router (BIRD, ECMP by L4 hash) in front of three
//! backends (the test bed is `lb_tests::cluster`). Real TCP connections
//! through the router:
//! - every node computes the same table (same digest) and new connections
//!   spread over the three nodes;
//! - node 1 fails, in each of the three ways of `Failure`: its processes
//!   (agent and BIRD killed, link up), its link (down, processes running),
//!   or both. Each time its route is withdrawn, its established
//!   connections continue through the other nodes to the same backend
//!   (they re-select with the same Maglev table), no connection through the
//!   other nodes is disturbed and new connections succeed throughout;
//! - node 1 comes back and takes its share again without breaking any
//!   established connection.
//!
//! Timing comes from polling with deadlines; spreads are checked against
//! binomial bounds.

use std::{collections::BTreeMap, net::SocketAddr};

use lb_tests::{
    agent::TEST_VIP,
    churn::Churn,
    cluster::{vip, Cluster, Conn, Failure, NODES, PORT},
    topology::echo_roundtrip,
};
use lb_userspace::control::{client, protocol::Request};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 300;
/// The node that fails.
const DEAD: usize = 1;
/// How long the failed node stays down at least: longer than its health
/// checks take to call every backend down (fall 3 × 500 ms), so a node
/// whose link failed has withdrawn on its own, re-selected its flows and
/// comes back through its health checks rising again, as after a real
/// outage.
const DOWN_FOR: Duration = Duration::from_secs(3);

fn start(backends: usize) -> Cluster {
    lb_tests::xdp::require_root();
    Cluster::start(backends).unwrap_or_else(|e| panic!("{e:#}"))
}

fn open_all(c: &Cluster) -> Vec<Conn> {
    (0..CONNECTIONS)
        .map(|i| c.open(i).unwrap_or_else(|e| panic!("{e:#}")))
        .collect()
}

/// Binomial bounds: each of `nodes` equally likely; every count within
/// 5 standard deviations of n/nodes (a false alarm about once in 10^6 runs).
fn assert_spread(counts: &BTreeMap<usize, usize>, n: usize, nodes: &[usize], what: &str) {
    let p = 1.0 / nodes.len() as f64;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    for k in nodes {
        let c = counts.get(k).copied().unwrap_or(0) as f64;
        assert!(
            (c - n as f64 * p).abs() <= 5.0 * sd,
            "{what}: node {k} took {c} of {n} ({counts:?})"
        );
    }
}

#[test]
fn a_node_whose_processes_die_returns_without_breaking_connections() {
    a_node_fails_and_returns(Failure::Processes);
}

#[test]
fn a_node_whose_link_fails_returns_without_breaking_connections() {
    a_node_fails_and_returns(Failure::Link);
}

#[test]
fn a_node_that_dies_returns_without_breaking_connections() {
    a_node_fails_and_returns(Failure::Node);
}

/// Node [`DEAD`] fails as `how` says, then returns; checks everything the
/// module's documentation lists.
fn a_node_fails_and_returns(how: Failure) {
    let what = how.describe();
    let mut c = start(3);
    let t = c
        .wait_routes(&[0, 1, 2], "all three nodes announced")
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!("[{what}] router has 3 next hops {t:?} after the last node started");
    let digests: Vec<String> = (0..NODES).map(|k| digest(&c, k)).collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "nodes disagree: {digests:?}"
    );

    // Established connections, each found in exactly one node's table.
    let mut conns = open_all(&c);
    let per_node = count_nodes(&conns);
    println!("[{what}] {CONNECTIONS} connections per node: {per_node:?}");
    assert_spread(&per_node, CONNECTIONS, &[0, 1, 2], "new connections");

    let churn = Churn::start(
        vec![c.topo.client_ns(0).path(), c.topo.client_ns(1).path()],
        SocketAddr::from((TEST_VIP, PORT)),
    );
    {
        let died = Instant::now();
        let t = c.fail(DEAD, how).unwrap_or_else(|e| panic!("{e:#}"));
        println!("[{what}] node {DEAD}'s route withdrawn {t:?} after it failed");

        let mut survived: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for conn in &mut conns {
            let alive = echo_roundtrip(&mut conn.stream, b"still there?")
                .is_ok_and(|b| b == b"still there?");
            let e = survived.entry(conn.node).or_insert((0, 0));
            e.0 += usize::from(alive);
            e.1 += 1;
        }
        let (alive, total) = survived[&DEAD];
        println!(
            "[{what}] established connections alive after the failure, per first node: {survived:?} \
             ({:.1}% of node {DEAD}'s continued)",
            alive as f64 * 100.0 / total as f64
        );
        assert!(
            alive * 100 >= total * 99,
            "only {alive} of node {DEAD}'s {total} connections survived"
        );
        for k in [0, 2] {
            let (alive, total) = survived[&k];
            assert_eq!(alive, total, "node {k}'s connections were disturbed");
        }
        // Node 1's connections now live in the other nodes' tables, pinned
        // to the backend they began on (a node whose link failed still
        // holds its old pins: it is not asked).
        let mut moved = BTreeMap::new();
        for conn in conns.iter().filter(|x| x.node == DEAD) {
            let backend = c
                .topo
                .backend_index(&conn.backend)
                .map(|j| c.topo.backend_addr(j))
                .expect("a backend's name");
            let pins: Vec<_> = c
                .pins(c.topo.client_addr(conn.client), conn.port)
                .into_iter()
                .filter(|(k, _)| *k != DEAD)
                .collect();
            assert!(
                !pins.is_empty() && pins.iter().all(|(_, b)| *b == backend),
                "a connection of node {DEAD} to {} is pinned as {pins:?}",
                conn.backend
            );
            for (k, _) in pins {
                *moved.entry(k).or_insert(0) += 1;
            }
        }
        println!("[{what}] node {DEAD}'s connections taken over, same backend: {moved:?}");

        if how == Failure::Link {
            // Cut off, its agent sees every backend down and withdraws
            // itself: the node comes back through its health checks.
            c.wait_own_withdrawal(DEAD)
                .unwrap_or_else(|e| panic!("{e:#}"));
            println!(
                "[{what}] node {DEAD}'s agent, cut off, withdrew its own route {:?} after the link failed",
                died.elapsed()
            );
        }
        std::thread::sleep(DOWN_FOR.saturating_sub(died.elapsed()));
        let t = c.revive(DEAD, how).unwrap_or_else(|e| panic!("{e:#}"));
        println!("[{what}] node {DEAD} announced again {t:?} after it was brought back");
        for (i, conn) in conns.iter_mut().enumerate() {
            let back = echo_roundtrip(&mut conn.stream, b"and now?").unwrap_or_else(|e| {
                panic!(
                    "connection {i} (node {}, {}) broke after the return: {e:#}",
                    conn.node, conn.backend
                )
            });
            assert_eq!(back, b"and now?");
        }
    }
    let (ok, failed) = churn.stop();
    println!("[{what}] new connections during failure and return: {ok} succeeded, {failed} failed");
    assert_eq!(failed, 0, "new connections failed");
    assert!(ok > 0);
    assert_eq!(
        digest(&c, DEAD),
        digest(&c, 0),
        "the returned node builds the same table"
    );

    // The returned node takes its share of new connections. The churn
    // left entries for most source ports in every node's table: emptied
    // first, so each new connection is found in exactly one table (kept
    // open, so no two of them share a source port).
    drop(conns);
    c.flush_flows().unwrap_or_else(|e| panic!("{e:#}"));
    let fresh = open_all(&c);
    let per_node = count_nodes(&fresh);
    println!("[{what}] after the return, {CONNECTIONS} new connections per node: {per_node:?}");
    assert_spread(&per_node, CONNECTIONS, &[0, 1, 2], "after the return");
}

fn digest(c: &Cluster, k: usize) -> String {
    c.digest(k).unwrap_or_else(|e| panic!("{e:#}"))
}

fn count_nodes(conns: &[Conn]) -> BTreeMap<usize, usize> {
    let mut per_node = BTreeMap::new();
    for conn in conns {
        *per_node.entry(conn.node).or_insert(0) += 1;
    }
    per_node
}

/// The case Maglev's paper discusses: a flow's backend set changes (a
/// backend is added on every node) while it is established, then its node
/// dies. The node it moves to has no connection-table entry for it and
/// re-selects with the new table: it keeps its backend exactly when the new
/// table gives it the same one (Maglev's minimal disruption keeps most), and
/// is reset by the new backend otherwise. Checked connection by connection
/// against the map-free model of the new table; connections through the
/// surviving nodes keep their pins and all survive.
#[test]
fn a_flow_whose_backend_set_changed_while_it_moved() {
    let mut c = start(4);
    c.wait_routes(&[0, 1, 2], "all three nodes announced")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut conns = open_all(&c);
    let b4 = c.topo.backend_addr(3);
    for k in 0..NODES {
        let add = Request::AddBackend {
            vip: vip(),
            backend: std::net::IpAddr::V4(b4),
            weight: None,
        };
        let r = client::request(&c.agents[k].socket(), &add, Duration::from_secs(10))
            .expect("add_backend");
        assert!(r.ok, "node {k}: {r:?}");
    }
    let digests: Vec<String> = (0..NODES).map(|k| digest(&c, k)).collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    let new_table =
        lb_userspace::dataplane::RingModel::new(&lb_userspace::dataplane::VipSpec::new(
            vip(),
            &(0..4)
                .map(|j| (c.topo.backend_addr(j), 1))
                .collect::<Vec<_>>(),
        ))
        .expect("model");
    assert_eq!(
        new_table.digest(),
        digests[0],
        "the model is the nodes' table"
    );

    let t = c
        .fail(DEAD, Failure::Node)
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!("node {DEAD}'s route withdrawn {t:?} after it died");
    let (mut kept, mut reset, mut others) = (0, 0, 0);
    for (i, conn) in conns.iter_mut().enumerate() {
        let alive = echo_roundtrip(&mut conn.stream, b"moved?").is_ok_and(|b| b == b"moved?");
        if conn.node != DEAD {
            assert!(
                alive,
                "connection {i} through node {} was disturbed",
                conn.node
            );
            others += 1;
            continue;
        }
        let backend = c
            .topo
            .backend_index(&conn.backend)
            .map(|j| c.topo.backend_addr(j))
            .expect("a backend's name");
        let same = new_table.choose(
            std::net::IpAddr::V4(c.topo.client_addr(conn.client)),
            conn.port,
        ) == Some(std::net::IpAddr::V4(backend));
        assert_eq!(
            alive,
            same,
            "connection {i} ({}): the new table gives {}, so it should {}",
            conn.backend,
            if same {
                "its own backend"
            } else {
                "another backend"
            },
            if same { "survive" } else { "be reset" }
        );
        if same {
            kept += 1;
        } else {
            reset += 1;
        }
    }
    println!(
        "node 1's connections after a backend was added and the node died: {kept} kept their backend, \
         {reset} re-selected to another one and were reset (as the model predicts); {others} through the other nodes all alive"
    );
    assert!(
        kept > 0 && reset > 0,
        "the case did not occur: {kept} kept, {reset} reset"
    );
}
