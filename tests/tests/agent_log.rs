//! The data path's own log (aya-log) reaches the agent's log when the agent
//! runs at debug level, and costs nothing otherwise; with `--log-format
//! json` every line is a JSON object and each state change appears once.

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
        vips: vec![TEST_VIP.into()],
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

/// `--log-format json`: every line of the agent's log is one JSON object
/// (ts, level, target, msg), and a health transition is logged once.
#[test]
fn json_log_lines_parse_and_a_transition_is_logged_once() {
    require_root();
    let mut topo = Topology::build(TopologySpec {
        clients: 2,
        backends: 2,
        vips: vec![TEST_VIP.into()],
        ports: vec![8080],
    })
    .expect("building the test bed");
    let mut vip = vip_config(
        TEST_VIP,
        8080,
        "tcp",
        &[(topo.backend_addr(0), 1), (topo.backend_addr(1), 1)],
    );
    vip["health_check"] = serde_json::json!({"type": "tcp", "interval_ms": 200, "timeout_ms": 200,
                                             "rise": 1, "fall": 2});
    let config = agent_config(&topo, "native", vec![vip]);
    let mut agent = Agent::start_with_args(&topo, &config, "info", &["--log-format", "json"])
        .expect("starting lb-agent");
    let b1 = format!("{}:8080 (tcp)", topo.backend_addr(0));
    agent
        .wait_for_log(
            &format!("{b1} unknown -> healthy"),
            1,
            Duration::from_secs(10),
        )
        .expect("b1 healthy");
    topo.stop_server(0).expect("stopping b1's server");
    let down = format!("{b1} healthy -> unhealthy");
    agent
        .wait_for_log(&down, 1, Duration::from_secs(10))
        .expect("b1 unhealthy");
    // Time for a duplicate to show up, if there were one.
    std::thread::sleep(Duration::from_millis(1000));
    let log = agent.stop().expect("agent stops");

    let mut messages = Vec::new();
    for line in log.lines() {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["ts", "level", "target", "msg"] {
            assert!(entry[field].is_string(), "no {field}: {line}");
        }
        messages.push(entry["msg"].as_str().unwrap_or_default().to_string());
    }
    let count = |needle: &str| messages.iter().filter(|m| m.contains(needle)).count();
    assert_eq!(count(&down), 1, "{log}");
    assert_eq!(count("health: tables rewritten"), 1, "{log}");
    assert_eq!(count("attached to"), 1, "{log}");
    assert_eq!(count("ready;"), 1, "{log}");
    assert!(count("stopped;") == 1, "{log}");
}
