//! The data path's own log (aya-log) reaches the agent's log when the agent
//! runs at debug level, and costs nothing otherwise.

use std::time::Duration;

use lb_tests::{
    agent::{agent_config, vip_config, Agent, TEST_VIP},
    topology::{Topology, TopologySpec},
    xdp::require_root,
};

fn drained_vip_bed(level: &str) -> (Topology, Agent) {
    require_root();
    let topo = Topology::build(TopologySpec {
        clients: 2,
        backends: 1,
        vips: vec![TEST_VIP],
        ports: vec![8080],
    })
    .expect("building the test bed");
    let config = agent_config(
        &topo,
        "native",
        vec![vip_config(
            TEST_VIP,
            8080,
            "tcp",
            &[(topo.backend_addr(0), 0)],
        )],
    );
    let agent = Agent::start_with_log_level(&topo, &config, level).expect("starting lb-agent");
    // Every backend drains: a new connection has nowhere to go.
    assert!(topo
        .tcp_connect(0, TEST_VIP, 8080, Duration::from_millis(500))
        .is_err());
    (topo, agent)
}

#[test]
fn data_path_drops_are_logged_at_debug_level() {
    let (_topo, mut agent) = drained_vip_bed("debug");
    agent
        .wait_for_log(
            "no backend takes new flows, dropped",
            1,
            Duration::from_secs(10),
        )
        .expect("the data path's log line in the agent's log");
}

#[test]
fn data_path_debug_log_is_off_at_info_level() {
    let (_topo, mut agent) = drained_vip_bed("info");
    std::thread::sleep(Duration::from_millis(500));
    let log = agent.stop().expect("agent stops");
    assert!(!log.contains("no backend takes new flows"), "{log}");
    assert!(
        !log.contains(", 0 dropped"),
        "the counters still count the drops: {log}"
    );
}
