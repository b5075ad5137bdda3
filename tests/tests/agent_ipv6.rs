//! The agent with IPv6 VIPs and backends: health probes over IPv6 take a
//! stopped backend out of the table and put it back, and a SIGKILL of the
//! agent loses no IPv6 connection (the pinned data path, its IPv6 maps and
//! the program array that reaches `balancer6` outlive it) while the
//! restarted agent adopts the IPv6 pins and backend addresses.

use std::net::IpAddr;

use lb_tests::{
    agent::{agent_config, backend_info, Bed, TEST_VIP6},
    topology::{echo_roundtrip, Topology, HEALTH_PORT},
};
use lb_userspace::{
    control::protocol::{Request, ResponseData},
    dataplane::{Protocol, VipAddr},
    health::Health,
};
use serde_json::json;

const PORT: u16 = 8080;

fn vip6() -> VipAddr {
    VipAddr {
        addr: TEST_VIP6.into(),
        port: PORT,
        proto: Protocol::Tcp,
    }
}

/// HTTP probes to the backends' IPv6 addresses: b2's server stops, b2
/// leaves the table and new connections avoid it; it starts again and
/// returns.
#[test]
fn ipv6_backends_are_health_checked_over_ipv6() {
    let mut bed = Bed::start_with(3, "native", |topo: &Topology| {
        let vip = json!({
            "address": TEST_VIP6.to_string(),
            "port": PORT,
            "protocol": "tcp",
            "backends": (0..3).map(|j| json!({"address": topo.backend_addr6(j).to_string()})).collect::<Vec<_>>(),
            "health_check": {"type": "http", "port": HEALTH_PORT, "path": "/health",
                             "interval_ms": 200, "timeout_ms": 200, "rise": 2, "fall": 2},
        });
        agent_config(topo, "native", vec![vip])
    });
    bed.vip = TEST_VIP6.into();
    bed.wait_until(&vip6(), "every IPv6 backend healthy", |v| {
        v.backends.iter().all(|b| b.health == Health::Healthy)
    });
    let b2: IpAddr = bed.topo.backend_addr6(1).into();
    bed.topo.stop_server(1).expect("stopping b2's server");
    bed.wait_until(&vip6(), "b2 unhealthy and out of the table", |v| {
        backend_info(v, b2).health == Health::Unhealthy && backend_info(v, b2).ring_share == 0.0
    });
    let counts = bed.count_new(30);
    assert!(
        !counts.contains_key(bed.topo.backend_name(1)),
        "no new IPv6 connection reaches the stopped b2: {counts:?}"
    );
    bed.topo.start_server(1).expect("starting b2's server");
    bed.wait_until(&vip6(), "b2 healthy and back in the table", |v| {
        backend_info(v, b2).health == Health::Healthy && backend_info(v, b2).ring_share > 0.0
    });
}

/// A SIGKILL of the agent under 30 open IPv6 connections: they keep
/// echoing and new IPv6 connections are served while no agent runs; the
/// restarted agent finds every long-lived connection pinned where it is.
#[test]
fn ipv6_connections_survive_kill_9_and_the_restart_adopts_them() {
    let mut bed = Bed::start6(3, &[Some(1), Some(1), Some(1)], "native");
    let mut long_lived = bed.open(30);
    for (name, stream) in long_lived.iter_mut() {
        assert_eq!(
            echo_roundtrip(stream, b"before").unwrap_or_else(|e| panic!("{name}: {e:#}")),
            b"before"
        );
    }

    bed.agent.kill9().expect("SIGKILL of the agent");
    for (name, stream) in long_lived.iter_mut() {
        assert_eq!(
            echo_roundtrip(stream, b"no agent")
                .unwrap_or_else(|e| panic!("{name} with the agent dead: {e:#}")),
            b"no agent"
        );
    }
    let served = bed.count_new(10);
    assert_eq!(
        served.values().sum::<usize>(),
        10,
        "new IPv6 connections with the agent dead: {served:?}"
    );

    bed.agent.relaunch().expect("restarting the agent");
    for (name, stream) in long_lived.iter_mut() {
        let local = stream.local_addr().expect("local address");
        let flow = match bed
            .ask(Request::LookupFlow {
                vip: vip6(),
                source: local.ip(),
                source_port: local.port(),
            })
            .data
        {
            Some(ResponseData::Flow { flow }) => flow,
            other => panic!("lookup_flow: {other:?}"),
        };
        let backend = bed
            .topo
            .backend_index(name)
            .map(|j| IpAddr::from(bed.topo.backend_addr6(j)));
        assert_eq!(
            flow.pinned_backend, backend,
            "{local} served by {name} is still pinned to it after the restart"
        );
        assert_eq!(
            echo_roundtrip(stream, b"after").unwrap_or_else(|e| panic!("{name}: {e:#}")),
            b"after"
        );
    }
    let info = bed.vip_info(&vip6());
    assert_eq!(
        info.backends.len(),
        3,
        "the restarted agent knows the IPv6 backends: {info:?}"
    );
}
