//! Real TCP connections through the balancer spread over the backends in
//! proportion to their weights, each exactly where the agent's model of the
//! Maglev table says (kernel and userspace agree flow by flow).

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use lb_tests::{
    agent::{agent_config, vip_config, Agent},
    topology::{Topology, TopologySpec},
    xdp::require_root,
};
use lb_userspace::dataplane::{Protocol, RingModel, VipAddr, VipSpec};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const PORT: u16 = 8080;
/// Source ports are the kernel's random picks: with 2400 connections the
/// 5-point tolerance below is about 5 standard deviations of the sampling
/// noise, so a correct balancer fails it about once in a million runs.
const CONNECTIONS: usize = 2400;

fn spread(weights: &[u32], xdp_mode: &str) {
    require_root();
    let topo = Topology::build(TopologySpec {
        clients: 2,
        backends: weights.len(),
        vips: vec![VIP.into()],
        ports: vec![PORT],
    })
    .expect("building the test bed");
    let backends: Vec<(Ipv4Addr, u32)> = weights
        .iter()
        .enumerate()
        .map(|(j, &w)| (topo.backend_addr(j), w))
        .collect();
    let mut agent = Agent::start(
        &topo,
        &agent_config(
            &topo,
            xdp_mode,
            vec![vip_config(VIP, PORT, "tcp", &backends)],
        ),
    )
    .expect("starting lb-agent");
    let model = RingModel::new(&VipSpec::new(
        VipAddr {
            addr: std::net::IpAddr::V4(VIP),
            port: PORT,
            proto: Protocol::Tcp,
        },
        &backends,
    ))
    .expect("model");

    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..CONNECTIONS {
        let client = i % 2;
        let (name, stream) = topo
            .tcp_connect(client, VIP, PORT, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {i}: {e:#}\nagent log:\n{}", agent.log()));
        let local = stream.local_addr().expect("local address");
        let expected = model
            .choose(std::net::IpAddr::V4(topo.client_addr(client)), local.port())
            .expect("model has a backend");
        let expected_name = topo.backend_name(
            backends
                .iter()
                .position(|b| b.0 == expected)
                .expect("known"),
        );
        assert_eq!(
            name, expected_name,
            "connection {i} from {local}: served by {name}, the model says {expected_name}"
        );
        *per_backend.entry(name).or_default() += 1;
    }
    let total_weight: u32 = weights.iter().sum();
    println!("{xdp_mode} mode, weights {weights:?}: {per_backend:?}");
    for (j, &w) in weights.iter().enumerate() {
        let share =
            *per_backend.get(topo.backend_name(j)).unwrap_or(&0) as f64 / CONNECTIONS as f64;
        let want = w as f64 / total_weight as f64;
        assert!(
            (share - want).abs() < 0.05,
            "backend {} (weight {w}): share {share:.3}, weight share {want:.3}: {per_backend:?}",
            topo.backend_name(j)
        );
    }
    agent.stop().expect("agent stops cleanly");
}

#[test]
fn equal_weights_native_mode() {
    spread(&[1, 1, 1], "native");
}

#[test]
fn weights_1_2_3_generic_mode() {
    spread(&[1, 2, 3], "generic");
}
