//! Health checking against real servers: a dead or sick backend leaves the
//! table and comes back only after `rise` good probes, a flapping one does
//! not churn the tables, a VIP whose backends are all unhealthy fails open,
//! and settings change at run time. Assertions follow the state sequence
//! reported by the control API and the traffic, with deadlines far looser
//! than the probe interval.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{backend_info, Bed, TEST_VIP},
    topology::{echo_roundtrip, Topology, HEALTH_PORT},
};
use lb_userspace::{
    config::HealthCheckConfig,
    control::protocol::{BackendInfo, Request, Response, VipInfo},
    dataplane::{Protocol, VipAddr},
    health::Health,
};
use serde_json::{json, Value};

const INTERVAL_MS: u64 = 200;

fn vip_addr() -> VipAddr {
    VipAddr {
        addr: std::net::IpAddr::V4(TEST_VIP),
        port: 8080,
        proto: Protocol::Tcp,
    }
}

/// Three backends on TCP 8080 with the given health check (JSON).
fn bed(check: Option<Value>) -> Bed {
    Bed::start_with(3, "native", move |topo: &Topology| {
        let mut vip = json!({
            "address": TEST_VIP.to_string(),
            "port": 8080,
            "protocol": "tcp",
            "backends": (0..3).map(|j| json!({"address": topo.backend_addr(j).to_string()})).collect::<Vec<_>>(),
        });
        if let Some(check) = &check {
            vip["health_check"] = check.clone();
        }
        lb_tests::agent::agent_config(topo, "native", vec![vip])
    })
}

// Timeouts as long as the interval allows: a healthy bystander on a loaded
// machine must not miss `fall` probes in a row. The failures these tests
// cause (refused, 503) are immediate.
fn tcp_check() -> Value {
    json!({"type": "tcp", "interval_ms": INTERVAL_MS, "timeout_ms": INTERVAL_MS, "rise": 2, "fall": 2})
}

fn http_check(rise: u32, fall: u32) -> Value {
    json!({"type": "http", "port": HEALTH_PORT, "path": "/health", "interval_ms": INTERVAL_MS, "timeout_ms": INTERVAL_MS,
           "rise": rise, "fall": fall})
}

fn ask(bed: &Bed, request: Request) -> Response {
    bed.ask(request)
}

fn vip_info(bed: &Bed) -> VipInfo {
    bed.vip_info(&vip_addr())
}

fn backend(info: &VipInfo, addr: Ipv4Addr) -> BackendInfo {
    backend_info(info, addr)
}

fn wait_until(bed: &Bed, what: &str, done: impl Fn(&VipInfo) -> bool) -> VipInfo {
    bed.wait_until(&vip_addr(), what, done)
}

fn all_healthy(bed: &Bed) {
    wait_until(bed, "every backend healthy", |v| {
        v.backends.iter().all(|b| b.health == Health::Healthy)
    });
}

#[test]
fn stopped_server_leaves_the_table_and_returns_after_rise() {
    let mut bed = bed(Some(tcp_check()));
    all_healthy(&bed);
    let b2 = bed.topo.backend_addr(1);
    let mut others: Vec<_> = bed
        .open(30)
        .into_iter()
        .filter(|(n, _)| n != "b2")
        .collect();

    let stopped = Instant::now();
    bed.topo.stop_server(1).expect("stopping b2's server");
    let info = wait_until(&bed, "b2 unhealthy and out of the table", |v| {
        backend(v, b2).health == Health::Unhealthy && backend(v, b2).ring_share == 0.0
    });
    let b = backend(&info, b2);
    println!(
        "b2 unhealthy after {:?} (interval {INTERVAL_MS} ms, fall 2)",
        stopped.elapsed()
    );
    // The transition itself happened at exactly `fall` failures (the log
    // says so); probes may have failed again since.
    assert!(b.consecutive_fail >= 2, "{b:?}");
    assert!(
        bed.agent
            .log()
            .contains("unhealthy: refused (2 consecutive failures)"),
        "out after exactly `fall` failures:\n{}",
        bed.agent.log()
    );
    assert_eq!(
        b.last_probe.as_ref().map(|p| p.reason.as_str()),
        Some("refused"),
        "{b:?}"
    );
    assert_eq!(b.ring_share, 0.0, "out of the table: {info:#?}");
    assert!(
        bed.agent.log().contains("refused"),
        "the transition is logged with its reason"
    );

    // Traffic moves to the others; their connections see no reset.
    let new = bed.count_new(60);
    assert!(!new.contains_key("b2"), "{new:?}");
    for (name, stream) in others.iter_mut() {
        echo_roundtrip(stream, b"still there")
            .unwrap_or_else(|e| panic!("connection on {name}: {e:#}"));
    }

    bed.topo.start_server(1).expect("restarting b2's server");
    let info = wait_until(&bed, "b2 healthy and back in the table", |v| {
        backend(v, b2).health == Health::Healthy && backend(v, b2).ring_share > 0.0
    });
    let b = backend(&info, b2);
    assert!(b.consecutive_ok >= 2, "back after `rise` successes: {b:?}");
    assert!(b.ring_share > 0.2, "{info:#?}");
    assert!(
        bed.count_new(60).contains_key("b2"),
        "new connections reach b2 again"
    );
}

#[test]
fn http_503_takes_a_backend_out_while_its_port_stays_open() {
    let bed = bed(Some(http_check(2, 2)));
    all_healthy(&bed);
    let b3 = bed.topo.backend_addr(2);
    bed.topo.set_http_health(2, false).expect("b3 sick");
    let info = wait_until(&bed, "b3 unhealthy and out", |v| {
        backend(v, b3).health == Health::Unhealthy && backend(v, b3).ring_share == 0.0
    });
    assert_eq!(
        backend(&info, b3).last_probe.map(|p| p.reason),
        Some("status 503".to_string())
    );
    // The service port is open and answers, yet no new flow goes there.
    let direct = bed
        .topo
        .tcp_connect(0, b3, 8080, Duration::from_secs(3))
        .expect("b3's service answers directly");
    assert_eq!(direct.0, "b3");
    let new = bed.count_new(60);
    assert!(!new.contains_key("b3"), "{new:?}");

    bed.topo.set_http_health(2, true).expect("b3 well");
    wait_until(&bed, "b3 healthy and back", |v| {
        backend(v, b3).ring_share > 0.0
    });
    assert!(bed.count_new(60).contains_key("b3"));
}

#[test]
fn a_flapping_backend_does_not_churn_the_tables() {
    // The backend changes state faster than probes come (every 150 ms,
    // probes every 200 ms): no run of 6 equal results, which rise = fall = 6
    // would need, so nothing changes. The margin absorbs a loaded machine
    // stretching the toggles.
    let bed = bed(Some(http_check(6, 6)));
    all_healthy(&bed);
    let rewrites_before = bed.agent.log().matches("tables rewritten").count();
    let mut sick = false;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        sick = !sick;
        bed.topo.set_http_health(1, !sick).expect("toggle");
        std::thread::sleep(Duration::from_millis(150));
    }
    bed.topo.set_http_health(1, true).expect("well");
    let info = vip_info(&bed);
    let b2 = backend(&info, bed.topo.backend_addr(1));
    assert_eq!(b2.health, Health::Healthy, "{b2:?}");
    let log = bed.agent.log();
    assert_eq!(
        log.matches("tables rewritten").count(),
        rewrites_before,
        "no table change while flapping:\n{log}"
    );
    assert!(b2.last_probe.is_some());
}

#[test]
fn all_backends_unhealthy_fails_open_and_it_is_reported() {
    let bed = bed(Some(http_check(2, 2)));
    all_healthy(&bed);
    for j in 0..3 {
        bed.topo.set_http_health(j, false).expect("sick");
    }
    let info = wait_until(&bed, "fail open", |v| {
        v.failing_open && v.backends.iter().all(|b| b.ring_share > 0.2)
    });
    assert!(
        info.backends.iter().all(|b| b.health == Health::Unhealthy),
        "{info:#?}"
    );
    assert!(
        info.backends.iter().all(|b| b.ring_share > 0.2),
        "all stay in the table: {info:#?}"
    );
    assert!(
        bed.agent.log().contains("failing open"),
        "{}",
        bed.agent.log()
    );
    let new = bed.count_new(30);
    assert_eq!(
        new.values().sum::<usize>(),
        30,
        "traffic still flows while failing open: {new:?}"
    );

    // Fail closed instead: no backend takes new flows.
    ask(
        &bed,
        Request::SetFailOpen {
            vip: vip_addr(),
            fail_open: false,
        },
    );
    let info = vip_info(&bed);
    assert!(
        !info.failing_open && info.backends.iter().all(|b| b.ring_share == 0.0),
        "{info:#?}"
    );
    assert!(bed
        .topo
        .tcp_connect(0, TEST_VIP, 8080, Duration::from_millis(700))
        .is_err());

    bed.topo.set_http_health(0, true).expect("well");
    wait_until(&bed, "b1 back", |v| {
        backend(v, bed.topo.backend_addr(0)).ring_share > 0.99
    });
    assert_eq!(
        bed.count_new(20).keys().cloned().collect::<Vec<_>>(),
        vec!["b1".to_string()]
    );
}

#[test]
fn health_check_settings_change_at_run_time() {
    let bed = bed(None);
    let b2 = bed.topo.backend_addr(1);
    bed.topo
        .set_http_health(1, false)
        .expect("b2 sick, but nothing checks yet");
    let info = vip_info(&bed);
    assert!(
        backend(&info, b2).check.is_none() && backend(&info, b2).ring_share > 0.2,
        "{info:#?}"
    );

    let check: HealthCheckConfig = serde_json::from_value(http_check(2, 2)).expect("check JSON");
    ask(
        &bed,
        Request::SetHealthCheck {
            vip: vip_addr(),
            backend: None,
            health_check: Some(check),
        },
    );
    let info = wait_until(&bed, "b2 found sick", |v| {
        backend(v, b2).health == Health::Unhealthy && backend(v, b2).ring_share == 0.0
    });
    assert_eq!(backend(&info, b2).ring_share, 0.0);

    // A per-backend override: b2 checked on its service port over TCP.
    let tcp: HealthCheckConfig =
        serde_json::from_value(json!({"type": "tcp", "port": 8080})).expect("JSON");
    ask(
        &bed,
        Request::SetHealthCheck {
            vip: vip_addr(),
            backend: Some(std::net::IpAddr::V4(b2)),
            health_check: Some(tcp),
        },
    );
    wait_until(&bed, "b2 healthy by TCP", |v| {
        backend(v, b2).health == Health::Healthy && backend(v, b2).ring_share > 0.0
    });

    // Saved like any other change.
    let saved = std::fs::read_to_string(bed.agent.state_file()).expect("state file");
    assert!(
        saved.contains("\"health_check\"") && saved.contains("/health"),
        "{saved}"
    );
}
