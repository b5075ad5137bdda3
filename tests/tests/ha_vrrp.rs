//! Active-passive: two LB nodes on one segment run keepalived (VRRP) and
//! lb-agent with the same configuration; the master holds the VIP and the
//! router's traffic. When the master dies (keepalived killed, its link
//! down), the standby takes the VIP within the VRRP master-down interval
//! (3 advertisement intervals plus the skew), its agent, whose data path
//! was attached all along with the same tables, serves the established
//! connections to the same backends, and new connections succeed
//! throughout. Timing comes from polling with deadlines.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{node_config, Agent, TEST_VIP},
    churn::Churn,
    keepalived::{self, Keepalived},
    topology::{echo_roundtrip, Topology, TopologySpec},
};
use serde_json::json;

const PORT: u16 = 8080;
const ADVERT_INT_MS: u32 = 300;
const PRIORITIES: [u8; 2] = [150, 100];

#[test]
fn the_standby_takes_the_vip_and_its_connections() {
    lb_tests::xdp::require_root();
    let topo = Topology::build_shared(
        TopologySpec {
            clients: 2,
            backends: 3,
            vips: vec![TEST_VIP.into()],
            ports: vec![PORT],
        },
        2,
    )
    .expect("building the test bed");
    let dir = std::env::temp_dir().join(format!("lbt-vrrp-{}", topo.router_ns().name()));
    let agents: Vec<Agent> = (0..2)
        .map(|k| {
            let config = node_config(
                &topo,
                k,
                "native",
                vec![json!({
                    "address": TEST_VIP.to_string(), "port": PORT, "protocol": "tcp",
                    "backends": (0..3).map(|j| json!({"address": topo.backend_addr(j).to_string()})).collect::<Vec<_>>(),
                })],
            );
            Agent::start_on(&topo, k, &config, "info", &[])
                .unwrap_or_else(|e| panic!("agent on node {k}: {e:#}"))
        })
        .collect();
    assert_eq!(
        agents[0].first_digest().expect("digest"),
        agents[1].first_digest().expect("digest"),
        "same tables"
    );
    let mut daemons: Vec<Keepalived> = (0..2)
        .map(|k| {
            let host = topo.lb_host(k);
            Keepalived::start(
                &host.ns,
                &dir,
                &host.name,
                &keepalived::config(
                    &host.name,
                    &host.ifname,
                    PRIORITIES[k],
                    ADVERT_INT_MS,
                    &[TEST_VIP],
                ),
            )
            .unwrap_or_else(|e| panic!("keepalived on node {k}: {e:#}"))
        })
        .collect();
    let holder = |k: usize| {
        let h = topo.lb_host(k);
        keepalived::holds(&h.ns, &h.ifname, TEST_VIP).expect("ip addr")
    };
    let wait = |what: &str, done: &dyn Fn() -> bool, limit: Duration| -> Duration {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    };
    let t = wait(
        "node 0 master",
        &|| holder(0) && !holder(1),
        Duration::from_secs(30),
    );
    println!("node 0 holds the VIP {t:?} after keepalived started");

    let mut conns: Vec<_> = (0..100)
        .map(|i| {
            topo.tcp_connect(i % 2, TEST_VIP, PORT, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i}: {e:#}"))
        })
        .collect();
    let churn = Churn::start(
        vec![topo.client_ns(0).path(), topo.client_ns(1).path()],
        SocketAddr::from((TEST_VIP, PORT)),
    );
    std::thread::sleep(Duration::from_millis(500));

    // The master dies: keepalived killed (no goodbye advertisement), link down.
    daemons[0].kill().expect("killing keepalived");
    let died = Instant::now();
    let node0 = topo.lb_host(0);
    node0
        .ns
        .ip(&["link", "set", &node0.ifname, "down"])
        .expect("link down");
    // VRRPv3 master-down interval: 3 intervals + (256 - priority)/256 of one.
    let master_down = Duration::from_millis(
        3 * ADVERT_INT_MS as u64 + (256 - PRIORITIES[1] as u64) * ADVERT_INT_MS as u64 / 256,
    );
    wait(
        "node 1 takes over",
        &|| holder(1),
        master_down + Duration::from_secs(2),
    );
    let took = died.elapsed();
    println!("node 1 holds the VIP {took:?} after the master died (master-down interval {master_down:?})");
    assert!(
        took <= master_down + Duration::from_millis(1000),
        "takeover took {took:?}, the master-down interval is {master_down:?}"
    );

    let mut alive = 0;
    for (name, stream) in &mut conns {
        if echo_roundtrip(stream, b"moved?").is_ok_and(|b| b == b"moved?") {
            alive += 1;
        } else {
            println!("a connection to {name} broke");
        }
    }
    println!(
        "established connections alive through the standby: {alive} of {}",
        conns.len()
    );
    assert!(
        alive * 100 >= conns.len() * 99,
        "{alive} of {}",
        conns.len()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed) = churn.stop();
    println!("new connections during the failover: {ok} succeeded, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 0);
    drop(daemons);
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
}
