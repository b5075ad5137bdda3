//! IPv6 end to end through the test bed: an IPv6 VIP whose backends are
//! reached in IP6IP6, flow by flow where the agent's model says (and where
//! `lookup_flow` finds the pin), sticky, answered directly by the backends;
//! drain and removal of an IPv6 backend; the mixed families (an IPv4 VIP
//! with IPv6 backends, an IPv6 VIP with IPv4 backends, in IP-in-IP and in
//! GUE over either family); ICMPv6 echo of the VIP; and a client whose path MTU is larger
//! than the IPv6 tunnel allows completing a 1 MiB transfer thanks to
//! "packet too big".

use std::{
    collections::BTreeMap,
    net::{IpAddr, TcpStream},
    time::Duration,
};

use lb_common::{DecapStats, DEFAULT_GUE_PORT};
use lb_tests::{
    agent::{agent_config, vip_config, Bed, TEST_VIP, TEST_VIP6},
    topology::{echo_all, link_stats, Topology},
};
use lb_userspace::{
    control::protocol::{Request, ResponseData},
    dataplane::{Protocol, RingModel, VipAddr, VipSpec},
};
use serde_json::Value;

const PORT: u16 = 8080;

/// Where the agent says the flow from `stream`'s local end to the VIP is
/// pinned.
fn pinned_backend(bed: &Bed, stream: &TcpStream) -> Option<IpAddr> {
    let local = stream.local_addr().expect("local address");
    let request = Request::LookupFlow {
        vip: VipAddr {
            addr: bed.vip,
            port: PORT,
            proto: Protocol::Tcp,
        },
        source: local.ip(),
        source_port: local.port(),
    };
    match bed.ask(request).data {
        Some(ResponseData::Flow { flow }) => flow.pinned_backend,
        other => panic!("lookup_flow: {other:?}"),
    }
}

/// 300 IPv6 connections land flow by flow where the agent's Maglev model
/// says, on all three backends, each pinned where `lookup_flow` says; 30
/// of them stay on their backends through 200 kB echoes, UDP flows stay,
/// the backends strip IP6IP6, and the replies never cross the LB.
#[test]
fn an_ipv6_vip_spreads_as_the_model_says_sticks_and_returns_directly() {
    let bed = Bed::start6(3, &[Some(1), Some(1), Some(1)], "native");
    let backends: Vec<(IpAddr, u32)> = (0..3)
        .map(|j| (bed.topo.backend_addr6(j).into(), 1))
        .collect();
    let model = RingModel::new(&VipSpec::new(
        VipAddr {
            addr: TEST_VIP6.into(),
            port: PORT,
            proto: Protocol::Tcp,
        },
        &backends,
    ))
    .expect("the model of the IPv6 VIP");
    let before = bed.decap_stats(3);

    let mut spread: BTreeMap<String, usize> = BTreeMap::new();
    let mut kept = Vec::new();
    for i in 0..300 {
        let client = i % 2;
        let (name, stream) = bed
            .topo
            .tcp_connect(client, TEST_VIP6, PORT, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {i}: {e:#}\nagent log:\n{}", bed.agent.log()));
        let local = stream.local_addr().expect("local address");
        let expected = model
            .choose(bed.topo.client_addr6(client).into(), local.port())
            .expect("the model has a backend");
        let expected_name = bed.topo.backend_name(
            backends
                .iter()
                .position(|b| b.0 == expected)
                .expect("a known backend"),
        );
        assert_eq!(
            name, expected_name,
            "connection {i} from {local}: served by {name}, the model says {expected_name}"
        );
        if i % 10 == 0 {
            assert_eq!(
                pinned_backend(&bed, &stream),
                Some(expected),
                "lookup_flow of {local}"
            );
            kept.push((name.clone(), stream));
        }
        *spread.entry(name).or_default() += 1;
    }
    println!("300 IPv6 connections: {spread:?}");
    assert_eq!(spread.len(), 3, "every backend served: {spread:?}");

    let lb_before = link_stats(bed.topo.lb_ns(), &bed.topo.lb_if).expect("LB counters");
    let clients_before: Vec<(u64, u64)> = (0..2)
        .map(|c| link_stats(bed.topo.client_ns(c), "eth0").expect("client counters"))
        .collect();
    for round in 0..4u8 {
        echo_all(&mut kept, round, if round == 2 { 200_000 } else { 1000 });
    }
    let lb_after = link_stats(bed.topo.lb_ns(), &bed.topo.lb_if).expect("LB counters");
    let client_sent: u64 = (0..2)
        .map(|c| {
            link_stats(bed.topo.client_ns(c), "eth0")
                .expect("client counters")
                .1
                - clients_before[c].1
        })
        .sum();
    let lb_received = lb_after.0 - lb_before.0;
    println!("echoes: clients sent {client_sent} packets, the LB received {lb_received}");
    assert!(
        lb_received <= client_sent + 20,
        "the LB received {lb_received} packets for the clients' {client_sent}: replies crossed the LB"
    );

    let udp = bed.udp_flows_stay(31000..31020, 5);
    assert!(udp.len() >= 2, "20 IPv6 UDP flows: {udp:?}");

    let after = bed.decap_stats(3);
    for j in 0..3 {
        assert!(
            after[j].decapsulated > before[j].decapsulated,
            "backend {j} stripped no IPv6 tunnel packet: {:?}",
            after[j]
        );
        assert_eq!(
            after[j].malformed, before[j].malformed,
            "backend {j}: malformed tunnel packets"
        );
    }
}

/// Draining an IPv6 backend keeps its connections and gives it no new
/// ones; removing one cuts its connections and moves its flows.
#[test]
fn an_ipv6_backend_drains_and_goes() {
    let mut bed = Bed::start6(3, &[Some(1), Some(1), Some(1)], "native");
    let mut connections = bed.open(30);
    echo_all(&mut connections, 0, 1000);
    let on = |name: &str| connections.iter().filter(|(n, _)| n == name).count();
    let (b2, b3) = (
        bed.topo.backend_name(1).to_string(),
        bed.topo.backend_name(2).to_string(),
    );
    assert!(on(&b2) > 0 && on(&b3) > 0, "b2 and b3 hold connections");

    // b2 drains (weight 0), b3 leaves the VIP.
    bed.set_weights(&[Some(1), Some(0), None]);
    let mut drained: Vec<(String, TcpStream)> =
        connections.into_iter().filter(|(n, _)| *n != b3).collect();
    echo_all(&mut drained, 1, 20_000);
    let fresh = bed.count_new(40);
    assert_eq!(
        fresh.keys().collect::<Vec<_>>(),
        vec![bed.topo.backend_name(0)],
        "new IPv6 connections only reach b1: {fresh:?}"
    );
}

/// The IPv6 VIP's 1 MiB transfer from a client whose path is 1500 bytes
/// behind a 1400-byte tunnel path: the client learns 1400 − 40 from the
/// balancer's "packet too big".
#[test]
fn a_client_with_a_larger_path_mtu_completes_a_1_mib_transfer_over_ipv6() {
    let bed = Bed::start6(2, &[Some(1), Some(1)], "native");
    bed.topo
        .lb_ns()
        .ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:19::/48",
            "via",
            &bed.topo.lb_peer_addr6().to_string(),
            "mtu",
            "lock",
            "1400",
        ])
        .expect("the LB's IPv6 route to the backends with MTU 1400");
    bed.topo
        .client_ns(0)
        .ip(&["-6", "route", "flush", "cache"])
        .expect("flushing the route cache");
    let before = bed.global_stats();

    bed.transfer_1_mib();

    let after = bed.global_stats();
    let sent = after.icmp_frag_needed_sent - before.icmp_frag_needed_sent;
    assert!(sent >= 1, "packet too big was sent: {after:?}");
    let route = bed
        .topo
        .client_ns(0)
        .ip(&["-6", "route", "get", &TEST_VIP6.to_string()])
        .expect("ip -6 route get");
    println!("1 MiB over IPv6; packet too big sent {sent}; {route}");
    assert!(
        route.contains("mtu 1360"),
        "the client's PMTU to the IPv6 VIP: {route}"
    );
}

/// `ping -6` of the VIP is answered by the balancer itself.
#[test]
fn ping_of_the_ipv6_vip_is_answered_by_the_balancer() {
    let bed = Bed::start6(2, &[Some(1), Some(1)], "native");
    let before = bed.global_stats();
    let out = bed
        .topo
        .client_ns(0)
        .exec(&[
            "ping",
            "-6",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &TEST_VIP6.to_string(),
        ])
        .unwrap_or_else(|e| panic!("ping -6 of the VIP: {e:#}"));
    assert!(out.contains("3 received"), "ping -6: {out}");
    let after = bed.global_stats();
    assert_eq!(
        after.icmp_echo_replies - before.icmp_echo_replies,
        3,
        "the balancer answered the three requests"
    );
}

/// A bed whose agent serves `vip` (TCP and UDP) with the backends'
/// addresses of `backend_family` (4 or 6), with `encap`.
fn mixed(vip: IpAddr, backend_family: u8, encap: Option<&str>) -> Bed {
    let mut bed = Bed::start_with(3, "native", |topo: &Topology| {
        let backends: Vec<(IpAddr, u32)> = (0..3)
            .map(|j| {
                let addr: IpAddr = if backend_family == 6 {
                    topo.backend_addr6(j).into()
                } else {
                    topo.backend_addr(j).into()
                };
                (addr, 1)
            })
            .collect();
        let mut vips = vec![
            vip_config(vip, PORT, "tcp", &backends),
            vip_config(vip, PORT, "udp", &backends),
        ];
        if let Some(encap) = encap {
            for v in &mut vips {
                v["encap"] = Value::from(encap);
                v["gue_port"] = DEFAULT_GUE_PORT.into();
            }
        }
        agent_config(topo, "native", vips)
    });
    bed.vip = vip;
    bed
}

/// Connections and UDP flows through a mixed-family VIP reach every
/// backend and stay; `check` sees the backends' decap counters moved.
fn mixed_traffic(bed: &Bed, check: impl Fn(&DecapStats, &DecapStats) -> bool, what: &str) {
    let before = bed.decap_stats(3);
    let mut connections = bed.open(30);
    echo_all(&mut connections, 0, 1000);
    echo_all(&mut connections, 1, 100_000);
    let spread: BTreeMap<&str, usize> =
        connections.iter().fold(BTreeMap::new(), |mut m, (n, _)| {
            *m.entry(n.as_str()).or_default() += 1;
            m
        });
    assert_eq!(spread.len(), 3, "{what}: all three backends: {spread:?}");
    let udp = bed.udp_flows_stay(32000..32010, 3);
    assert!(udp.len() >= 2, "{what}: UDP flows: {udp:?}");
    let after = bed.decap_stats(3);
    for j in 0..3 {
        assert!(
            check(&before[j], &after[j]),
            "{what}: backend {j}'s decap counters {:?} → {:?}",
            before[j],
            after[j]
        );
        assert_eq!(
            after[j].malformed, before[j].malformed,
            "{what}: backend {j}"
        );
    }
}

#[test]
fn an_ipv4_vip_with_ipv6_backends_goes_in_ipv6() {
    let bed = mixed(TEST_VIP.into(), 6, None);
    mixed_traffic(&bed, |b, a| a.decapsulated > b.decapsulated, "IPv4 in IPv6");
}

#[test]
fn an_ipv6_vip_with_ipv4_backends_goes_in_ipv4() {
    let bed = mixed(TEST_VIP6.into(), 4, None);
    mixed_traffic(&bed, |b, a| a.decapsulated > b.decapsulated, "IPv6 in IPv4");
}

#[test]
fn an_ipv6_vip_in_gue() {
    let bed = mixed(TEST_VIP6.into(), 4, Some("gue"));
    mixed_traffic(
        &bed,
        |b, a| a.gue_decapsulated > b.gue_decapsulated && a.decapsulated == b.decapsulated,
        "IPv6 in GUE",
    );
}

/// GUE over IPv6: the backends' decap strips UDP over IPv6 (checksum 0)
/// around either family.
fn gue_over_ipv6(vip: IpAddr, what: &str) {
    let bed = mixed(vip, 6, Some("gue"));
    mixed_traffic(
        &bed,
        |b, a| a.gue_decapsulated > b.gue_decapsulated && a.decapsulated == b.decapsulated,
        what,
    );
}

#[test]
fn an_ipv6_vip_with_ipv6_backends_in_gue() {
    gue_over_ipv6(TEST_VIP6.into(), "IPv6 in GUE over IPv6");
}

#[test]
fn an_ipv4_vip_with_ipv6_backends_in_gue() {
    gue_over_ipv6(TEST_VIP.into(), "IPv4 in GUE over IPv6");
}
