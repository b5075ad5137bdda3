//! Active-active: three LB nodes, each running BIRD and lb-agent, announce
//! the VIP to an upstream router (BIRD, ECMP by L4 hash) in front of three
//! backends. Real TCP connections through the router:
//! - every node computes the same table (same digest) and new connections
//!   spread over the three nodes;
//! - node 1 dies (BIRD and the agent killed, its link down): its route is
//!   withdrawn, its established connections continue through the other
//!   nodes to the same backend (they re-select with the same Maglev table),
//!   no connection through the other nodes is disturbed and new
//!   connections succeed throughout;
//! - node 1 comes back and takes its share again without breaking any
//!   established connection.
//!
//! Timing comes from polling with deadlines; spreads are checked against
//! binomial bounds.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{node_config, Agent, TEST_VIP},
    bird::{self, Bird},
    churn::Churn,
    topology::{echo_roundtrip, Topology, TopologySpec},
};
use lb_userspace::{
    control::{
        client,
        protocol::{Request, ResponseData},
    },
    dataplane::{Protocol, VipAddr},
};
use serde_json::json;

const NODES: usize = 3;
const PORT: u16 = 8080;
const TABLE: u32 = 100;
const PROTOCOL: u8 = 201;
const CONNECTIONS: usize = 300;
const DEADLINE: Duration = Duration::from_secs(30);

fn vip() -> VipAddr {
    VipAddr {
        addr: TEST_VIP,
        port: PORT,
        proto: Protocol::Tcp,
    }
}

/// Fields drop in order: agents, then the daemons, then the namespaces.
struct Cluster {
    agents: Vec<Agent>,
    lb_birds: Vec<Option<Bird>>,
    _router_bird: Bird,
    topo: Topology,
    dir: std::path::PathBuf,
}

impl Cluster {
    /// Three nodes in front of `backends` backends, of which the first
    /// three are in the VIP.
    fn start(backends: usize) -> Cluster {
        lb_tests::xdp::require_root();
        let topo = Topology::build_multi(
            TopologySpec {
                clients: 2,
                backends,
                vips: vec![TEST_VIP],
                ports: vec![PORT],
            },
            NODES,
        )
        .expect("building the test bed");
        let dir = std::env::temp_dir().join(format!("lbt-bird-{}", topo.router_ns().name()));
        std::fs::create_dir_all(&dir).expect("bird dir");
        let router_bird = Bird::start(
            topo.router_ns(),
            &dir,
            "router",
            &bird::router_config(&topo, &dir.join("router.log")),
        )
        .expect("starting the router's BIRD");
        let mut agents = Vec::new();
        let mut lb_birds = Vec::new();
        for k in 0..NODES {
            let mut config = node_config(
                &topo,
                k,
                "native",
                vec![json!({
                    "address": TEST_VIP.to_string(), "port": PORT, "protocol": "tcp",
                    "health_check": {"type": "tcp", "interval_ms": 500, "timeout_ms": 500, "rise": 2, "fall": 3},
                    "backends": (0..3).map(|j| json!({"address": topo.backend_addr(j).to_string()})).collect::<Vec<_>>(),
                })],
            );
            config["announce"] = json!({"table": TABLE, "protocol": PROTOCOL});
            agents.push(
                Agent::start_on(&topo, k, &config, "info", &[])
                    .unwrap_or_else(|e| panic!("agent on node {k}: {e:#}")),
            );
            lb_birds.push(Some(
                bird::start_lb(&topo, k, &dir, TABLE, PROTOCOL)
                    .unwrap_or_else(|e| panic!("BIRD on node {k}: {e:#}")),
            ));
        }
        Cluster {
            agents,
            lb_birds,
            _router_bird: router_bird,
            topo,
            dir,
        }
    }

    fn node_addrs(&self, nodes: &[usize]) -> Vec<Ipv4Addr> {
        nodes.iter().map(|&k| self.topo.lb_host(k).addr).collect()
    }

    fn wait_routes(&self, nodes: &[usize], what: &str) -> Duration {
        bird::wait_next_hops(
            self.topo.router_ns(),
            TEST_VIP,
            &self.node_addrs(nodes),
            DEADLINE,
        )
        .unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", self.diagnose()))
    }

    /// The routing state of every daemon and node, for failure messages.
    fn diagnose(&self) -> String {
        let mut text = format!(
            "router BIRD:\n{}\n",
            self._router_bird
                .birdc(&["show", "protocols", "all"])
                .unwrap_or_else(|e| format!("{e:#}"))
        );
        for (k, b) in self.lb_birds.iter().enumerate() {
            let host = self.topo.lb_host(k);
            text += &format!(
                "node {k} table {TABLE}: {}\nnode {k} BIRD routes: {}\n",
                host.ns
                    .ip(&["route", "show", "table", &TABLE.to_string()])
                    .unwrap_or_else(|e| format!("{e:#}")),
                b.as_ref().map_or("not running".into(), |b| b
                    .birdc(&["show", "route", "all"])
                    .unwrap_or_else(|e| format!("{e:#}")))
            );
        }
        text
    }

    /// The node whose connection table pins this flow (each node asked).
    fn carriers(&self, source: Ipv4Addr, source_port: u16) -> Vec<usize> {
        (0..NODES)
            .filter(|&k| {
                let request = Request::LookupFlow {
                    vip: vip(),
                    source,
                    source_port,
                };
                match client::request(&self.agents[k].socket(), &request, Duration::from_secs(5)) {
                    Ok(r) => matches!(r.data, Some(ResponseData::Flow { flow }) if flow.pinned_backend.is_some()),
                    // A dead node carries nothing.
                    Err(_) => false,
                }
            })
            .collect()
    }

    /// Opens connection `i` (from client i % 2) and finds the node that
    /// carries it: exactly one node's table must hold it.
    fn open(&self, i: usize) -> Conn {
        let client = i % 2;
        let (backend, stream) = self
            .topo
            .tcp_connect(client, TEST_VIP, PORT, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        let port = stream.local_addr().expect("local address").port();
        let carriers = self.carriers(self.topo.client_addr(client), port);
        assert_eq!(
            carriers.len(),
            1,
            "connection {i} in the tables of {carriers:?}"
        );
        Conn {
            client,
            port,
            backend,
            stream,
            node: carriers[0],
        }
    }

    /// Node 1 dies: its BIRD, its agent and its link; returns once the
    /// router no longer routes to it.
    fn kill_node1(&mut self) -> Duration {
        let died = Instant::now();
        if let Some(mut b) = self.lb_birds[1].take() {
            b.kill().expect("killing BIRD");
        }
        self.agents[1].kill9().expect("killing the agent");
        let node1 = self.topo.lb_host(1);
        node1
            .ns
            .ip(&["link", "set", &node1.ifname, "down"])
            .expect("link down");
        self.wait_routes(&[0, 2], "node 1 withdrawn");
        died.elapsed()
    }

    fn digest(&self, k: usize) -> String {
        self.agents[k].first_digest().expect("the VIP's digest")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A long-lived connection: its client, source port, backend and stream.
struct Conn {
    client: usize,
    port: u16,
    backend: String,
    stream: TcpStream,
    node: usize,
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
fn a_node_dies_and_returns_without_breaking_connections() {
    let mut c = Cluster::start(3);
    let t = c.wait_routes(&[0, 1, 2], "all three nodes announced");
    println!("router has 3 next hops {t:?} after the last node started");
    let digests: Vec<String> = (0..NODES).map(|k| c.digest(k)).collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "nodes disagree: {digests:?}"
    );

    // Established connections, each found in exactly one node's table.
    let mut conns: Vec<Conn> = (0..CONNECTIONS).map(|i| c.open(i)).collect();
    let mut per_node = BTreeMap::new();
    for conn in &conns {
        *per_node.entry(conn.node).or_insert(0) += 1;
    }
    println!("{CONNECTIONS} connections per node: {per_node:?}");
    assert_spread(&per_node, CONNECTIONS, &[0, 1, 2], "new connections");

    let churn = Churn::start(
        vec![c.topo.client_ns(0).path(), c.topo.client_ns(1).path()],
        SocketAddr::from((TEST_VIP, PORT)),
    );
    {
        let t = c.kill_node1();
        println!("node 1's route withdrawn {t:?} after it died");

        let mut survived: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for conn in &mut conns {
            let alive = echo_roundtrip(&mut conn.stream, b"still there?")
                .is_ok_and(|b| b == b"still there?");
            let e = survived.entry(conn.node).or_insert((0, 0));
            e.0 += usize::from(alive);
            e.1 += 1;
        }
        println!("established connections alive after the failure, per first node: {survived:?}");
        let (alive1, total1) = survived[&1];
        assert!(
            alive1 * 100 >= total1 * 99,
            "only {alive1} of node 1's {total1} connections survived"
        );
        for k in [0, 2] {
            let (alive, total) = survived[&k];
            assert_eq!(alive, total, "node {k}'s connections were disturbed");
        }
        // Node 1's connections now live in the other nodes' tables.
        let mut moved = BTreeMap::new();
        for conn in conns.iter().filter(|x| x.node == 1) {
            let carriers = c.carriers(c.topo.client_addr(conn.client), conn.port);
            assert!(!carriers.contains(&1), "node 1 is dead");
            for k in carriers {
                *moved.entry(k).or_insert(0) += 1;
            }
        }
        println!("node 1's connections taken over: {moved:?}");

        // Node 1 returns: link, agent (adopting its pinned data path), BIRD.
        let node1 = c.topo.lb_host(1);
        node1
            .ns
            .ip(&["link", "set", &node1.ifname, "up"])
            .expect("link up");
        // The link going down took the node's default route with it
        // (as a rebooted node, it configures it again); without it the
        // agent's health checks fail and it rightly announces nothing.
        node1
            .ns
            .ip(&[
                "route",
                "replace",
                "default",
                "via",
                &node1.gateway.to_string(),
            ])
            .expect("default route");
        c.agents[1].relaunch().expect("relaunching node 1's agent");
        c.lb_birds[1] = Some(
            bird::start_lb(&c.topo, 1, &c.dir, TABLE, PROTOCOL).expect("restarting BIRD on node 1"),
        );
        let t = c.wait_routes(&[0, 1, 2], "node 1 back");
        println!("node 1 announced again {t:?} after BIRD restarted");
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
    println!("new connections during failure and return: {ok} succeeded, {failed} failed");
    assert_eq!(failed, 0, "new connections failed");
    assert!(ok > 0);
    assert_eq!(
        c.digest(1),
        c.digest(0),
        "the returned node builds the same table"
    );

    // The returned node takes its share of new connections. The churn
    // left entries for most source ports in every node's table: emptied
    // first, so each new connection is found in exactly one table (kept
    // open, so no two of them share a source port).
    drop(conns);
    for k in 0..NODES {
        let flush = Request::FlushFlows { vip: vip() };
        let r = client::request(&c.agents[k].socket(), &flush, Duration::from_secs(30))
            .expect("flush_flows");
        assert!(r.ok, "{r:?}");
    }
    let fresh: Vec<Conn> = (0..CONNECTIONS).map(|i| c.open(i)).collect();
    let mut per_node = BTreeMap::new();
    for conn in &fresh {
        *per_node.entry(conn.node).or_insert(0) += 1;
    }
    println!("after the return, {CONNECTIONS} new connections per node: {per_node:?}");
    assert_spread(&per_node, CONNECTIONS, &[0, 1, 2], "after the return");
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
    let mut c = Cluster::start(4);
    c.wait_routes(&[0, 1, 2], "all three nodes announced");
    let mut conns: Vec<Conn> = (0..CONNECTIONS).map(|i| c.open(i)).collect();
    let b4 = c.topo.backend_addr(3);
    for k in 0..NODES {
        let add = Request::AddBackend {
            vip: vip(),
            backend: b4,
            weight: None,
        };
        let r = client::request(&c.agents[k].socket(), &add, Duration::from_secs(10))
            .expect("add_backend");
        assert!(r.ok, "node {k}: {r:?}");
    }
    let digests: Vec<String> = (0..NODES).map(|k| c.digest(k)).collect();
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

    let t = c.kill_node1();
    println!("node 1's route withdrawn {t:?} after it died");
    let (mut kept, mut reset, mut others) = (0, 0, 0);
    for (i, conn) in conns.iter_mut().enumerate() {
        let alive = echo_roundtrip(&mut conn.stream, b"moved?").is_ok_and(|b| b == b"moved?");
        if conn.node != 1 {
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
        let same = new_table.choose(c.topo.client_addr(conn.client), conn.port) == Some(backend);
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
