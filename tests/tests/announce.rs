//! VIP announcement without a routing daemon: the agent keeps a blackhole
//! /32 per announceable VIP address in its announce table of the LB
//! namespace. The route appears once the data path is attached, goes when
//! every backend of the VIP is down and comes back with one healthy
//! backend, goes on SIGTERM, stays after a crash (the pinned data path
//! still forwards) until the next agent reconciles, and goes on
//! `--detach`. With `withdraw_when_all_down` false it stays while every
//! backend is down. Timing comes from polling with loose deadlines.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{agent_config, announced_routes, Bed, TEST_VIP},
    topology::Topology,
};
use serde_json::{json, Value};

const TABLE: u32 = 100;
const PROTOCOL: u8 = 201;
const DEADLINE: Duration = Duration::from_secs(15);
/// A second VIP address, without any backend: never announced while
/// `withdraw_when_all_down` holds.
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

fn config(topo: &Topology, withdraw_when_all_down: bool) -> Value {
    let mut config = agent_config(
        topo,
        "native",
        vec![
            json!({
                "address": TEST_VIP.to_string(), "port": 8080, "protocol": "tcp",
                "health_check": {"type": "tcp", "interval_ms": 200, "timeout_ms": 200, "rise": 2, "fall": 2},
                "backends": (0..2).map(|j| json!({"address": topo.backend_addr(j).to_string()})).collect::<Vec<_>>(),
            }),
            json!({"address": EMPTY_VIP.to_string(), "port": 80, "protocol": "tcp", "backends": []}),
        ],
    );
    config["announce"] = json!({
        "table": TABLE,
        "protocol": PROTOCOL,
        "withdraw_when_all_down": withdraw_when_all_down,
    });
    config
}

/// The agent's routes in the LB namespace's announce table.
fn routes(bed: &Bed) -> BTreeSet<Ipv4Addr> {
    announced_routes(bed.topo.lb_ns(), TABLE, PROTOCOL)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .into_iter()
        .filter_map(|a| match a {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        })
        .collect()
}

fn wait_routes(bed: &Bed, what: &str, want: &[Ipv4Addr]) -> Duration {
    let want: BTreeSet<Ipv4Addr> = want.iter().copied().collect();
    let start = Instant::now();
    loop {
        let now = routes(bed);
        if now == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: routes {now:?}, want {want:?} within {DEADLINE:?}\n{}",
            bed.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn routes_follow_attachment_health_and_shutdown() {
    let mut bed = Bed::start_with(2, "native", |topo| config(topo, true));
    wait_routes(&bed, "attached, backends healthy", &[TEST_VIP]);
    // A route the agent does not own (another protocol) is never touched.
    bed.topo
        .lb_ns()
        .ip(&[
            "route",
            "add",
            "blackhole",
            "198.18.0.99/32",
            "table",
            &TABLE.to_string(),
            "proto",
            "static",
        ])
        .expect("a foreign route");

    bed.topo.stop_server(0).expect("stopping b1");
    bed.topo.stop_server(1).expect("stopping b2");
    let t = wait_routes(&bed, "every backend down", &[]);
    println!("withdrawn {t:?} after both servers stopped (interval 200 ms, fall 2)");
    assert!(bed
        .agent
        .log()
        .contains("announce: VIP address 198.18.0.10 withdrawn"));

    bed.topo.start_server(1).expect("starting b2");
    bed.topo
        .wait_server_ready(1, Duration::from_secs(10))
        .expect("b2 listening");
    let t = wait_routes(&bed, "one backend back", &[TEST_VIP]);
    println!("announced again {t:?} after b2's server came back (rise 2)");

    // A route removed by hand is put back (the periodic reconciliation).
    bed.topo
        .lb_ns()
        .ip(&[
            "route",
            "del",
            "blackhole",
            "198.18.0.10/32",
            "table",
            &TABLE.to_string(),
            "proto",
            &PROTOCOL.to_string(),
        ])
        .expect("deleting the route");
    wait_routes(&bed, "repaired", &[TEST_VIP]);

    let log = bed.agent.stop().expect("SIGTERM");
    assert!(log.contains("stopping: withdrew 1 VIP route(s)"), "{log}");
    assert!(routes(&bed).is_empty(), "SIGTERM withdraws");

    // A crash leaves the route: the pinned data path still forwards.
    bed.agent.relaunch().expect("relaunch");
    wait_routes(&bed, "relaunched", &[TEST_VIP]);
    bed.agent.kill9().expect("kill -9");
    assert_eq!(
        routes(&bed),
        [TEST_VIP].into(),
        "a killed agent's route stays"
    );
    bed.agent.relaunch().expect("relaunch after the crash");
    wait_routes(&bed, "adopted", &[TEST_VIP]);
    bed.agent.kill9().expect("kill -9");

    let detach = bed.agent.detach().expect("--detach");
    assert!(detach.contains("withdrew 1 VIP route(s)"), "{detach}");
    assert!(routes(&bed).is_empty(), "--detach withdraws");
    let foreign = bed
        .topo
        .lb_ns()
        .ip(&[
            "route",
            "show",
            "table",
            &TABLE.to_string(),
            "proto",
            "static",
        ])
        .expect("ip route show");
    assert!(
        foreign.contains("198.18.0.99"),
        "the foreign route stays: {foreign}"
    );
}

#[test]
fn without_withdraw_when_all_down_every_vip_is_announced() {
    let mut bed = Bed::start_with(2, "native", |topo| config(topo, false));
    wait_routes(&bed, "attached", &[TEST_VIP, EMPTY_VIP]);
    bed.topo.stop_server(0).expect("stopping b1");
    bed.topo.stop_server(1).expect("stopping b2");
    // Both unhealthy (the log says so), routes unchanged.
    bed.agent
        .wait_for_log("-> unhealthy", 2, DEADLINE)
        .expect("both unhealthy");
    assert_eq!(routes(&bed), [TEST_VIP, EMPTY_VIP].into());
    bed.agent.stop().expect("SIGTERM");
    assert!(routes(&bed).is_empty());
}
