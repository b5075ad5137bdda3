//! The FIB next hop through BPF_PROG_TEST_RUN: frames "arrive" on a veth of
//! a network namespace whose routes and neighbours the test sets, so every
//! `bpf_fib_lookup` outcome is exercised: resolved next hop (XDP_TX with its
//! MACs), another egress interface (XDP_REDIRECT), unresolved neighbour
//! (XDP_PASS of the encapsulated packet, for the kernel to forward), route
//! MTU too small (ICMP "fragmentation needed" advertising the route's MTU
//! less the outer header, or a drop without DF), and no route.

use std::net::Ipv4Addr;

use lb_common::{ipv4_to_wire, names, DataPathConfig, NEXT_HOP_FIB};
use lb_tests::{
    netns::{self, Netns},
    packet::*,
    xdp::*,
};
use lb_userspace::dataplane::{BackendSpec, Protocol, VipAddr, VipSpec};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
const GATEWAY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];
/// Routed via the gateway (neighbour known).
const ROUTED: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 2);
/// On a second link whose neighbour is known: redirected there.
const OTHER_LINK: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 2);
/// Directly on the first link, no neighbour entry.
const UNRESOLVED: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 77);
/// Routed with a (locked) MTU of 1000.
const SMALL_MTU: Ipv4Addr = Ipv4Addr::new(198, 19, 3, 2);
/// No route at all.
const NOWHERE: Ipv4Addr = Ipv4Addr::new(198, 19, 4, 2);

/// (description, backend, VIP port, verdict, (dst MAC, src MAC) of the
/// output, counter that moves)
type FibCase = (
    &'static str,
    Ipv4Addr,
    u16,
    u32,
    Option<([u8; 6], [u8; 6])>,
    &'static str,
);

fn mac_of(ns: &Netns, ifname: &str) -> [u8; 6] {
    let text = ns
        .exec(&["cat", &format!("/sys/class/net/{ifname}/address")])
        .expect("MAC");
    lb_userspace::config::parse_mac(text.trim()).expect("MAC syntax")
}

#[test]
fn every_fib_outcome() {
    require_root();
    let lb = Netns::new("fiblb").expect("namespace");
    let peer = Netns::new("fibpeer").expect("namespace");
    netns::veth(&lb, "eth0", &peer, "lbt-fib0").expect("veth 0");
    netns::veth(&lb, "eth1", &peer, "lbt-fib1").expect("veth 1");
    let commands = [
        "addr add 198.18.1.2/24 dev eth0",
        "addr add 198.19.2.1/24 dev eth1",
        "neigh add 198.18.1.1 lladdr 02:00:00:00:00:99 dev eth0 nud permanent",
        "neigh add 198.19.2.2 lladdr 02:00:00:00:00:98 dev eth1 nud permanent",
        "route add 198.19.1.0/24 via 198.18.1.1",
        // Forwarding honours a route MTU only when it is locked.
        "route add 198.19.3.0/24 via 198.18.1.1 mtu lock 1000",
    ];
    lb.ip_batch(&commands.iter().map(|c| c.to_string()).collect::<Vec<_>>())
        .expect("routes");
    lb.sysctls(&[
        ("net.ipv4.conf.eth0.forwarding", "1"),
        ("net.ipv4.conf.eth1.forwarding", "1"),
    ])
    .expect("sysctl");
    let eth0_mac = mac_of(&lb, "eth0");
    let eth1_mac = mac_of(&lb, "eth1");
    let eth0 = lb
        .exec(&["cat", "/sys/class/net/eth0/ifindex"])
        .expect("ifindex")
        .trim()
        .parse::<u32>()
        .expect("number");

    let backends = [ROUTED, OTHER_LINK, UNRESOLVED, SMALL_MTU, NOWHERE];
    let vips: Vec<VipSpec> = backends
        .iter()
        .enumerate()
        .map(|(i, &addr)| VipSpec {
            vip: VipAddr {
                addr: std::net::IpAddr::V4(VIP),
                port: 8000 + i as u16,
                proto: Protocol::Tcp,
            },
            table_size: 251,
            policy: Default::default(),
            source_prefix: 32,
            affinity_timeout: 0,
            icmp_echo: true,
            encap: Default::default(),
            backends: vec![BackendSpec {
                addr: std::net::IpAddr::V4(addr),
                weight: 1,
            }],
        })
        .collect();
    let config = DataPathConfig {
        lb_source_addr: ipv4_to_wire([198, 18, 1, 2]),
        next_hop_mode: NEXT_HOP_FIB,
        icmp_rate: lb_common::DEFAULT_ICMP_RATE,
        icmp_burst: lb_common::DEFAULT_ICMP_BURST,
        ..Default::default()
    };
    let mut balancer = Balancer::load(&test_options(config), &vips);

    let cases: [FibCase; 5] = [
        (
            "resolved next hop: XDP_TX to the gateway's MAC",
            ROUTED,
            8000,
            XDP_TX,
            Some((GATEWAY_MAC, eth0_mac)),
            "tx",
        ),
        (
            "another link: redirected there",
            OTHER_LINK,
            8001,
            XDP_REDIRECT,
            Some(([2, 0, 0, 0, 0, 0x98], eth1_mac)),
            "redirected",
        ),
        (
            "unresolved neighbour: the kernel forwards it",
            UNRESOLVED,
            8002,
            XDP_PASS,
            None,
            "fib_no_neigh",
        ),
        (
            "route MTU too small, DF: fragmentation needed for 1000 - 20",
            SMALL_MTU,
            8003,
            XDP_TX,
            None,
            "icmp_frag_needed_sent",
        ),
        (
            "no route: dropped",
            NOWHERE,
            8004,
            XDP_DROP,
            None,
            "fib_failures",
        ),
    ];
    for (name, backend, port, want, macs, counter) in cases {
        let inner = Ipv4::tcp(CLIENT, 40000, VIP, port, TCP_SYN).payload(&[0x11; 1100]);
        let frame = ethernet(eth0_mac, GATEWAY_MAC, None, ETHERTYPE_IPV4, &inner.bytes());
        let before = balancer.stats();
        let (verdict, out) =
            lb.run(|| run_program_on(&mut balancer.ebpf, names::BALANCER_PROGRAM, &frame, eth0));
        let after = balancer.stats();
        assert_eq!(verdict, want, "{name}: got {}", verdict_name(verdict));
        let encapsulated = ipip(Ipv4Addr::new(198, 18, 1, 2), backend, &inner);
        match (verdict, macs) {
            (XDP_TX, None) => {
                // Back to the router it came from, with the MTU that
                // bpf_fib_lookup reported for the route.
                assert_eq!(out, frag_needed_reply(&frame, 1000), "{name}: output bytes");
            }
            (XDP_TX | XDP_REDIRECT, Some((dst, src))) => {
                assert_eq!(
                    out,
                    ethernet(dst, src, None, ETHERTYPE_IPV4, &encapsulated),
                    "{name}: output bytes"
                );
            }
            (XDP_PASS, _) => {
                // Encapsulated, addressed to this host's MAC as received:
                // the kernel routes the outer packet and resolves the hop.
                assert_eq!(
                    out,
                    ethernet(eth0_mac, GATEWAY_MAC, None, ETHERTYPE_IPV4, &encapsulated),
                    "{name}"
                );
            }
            _ => {}
        }
        assert_counter_deltas(name, &before, &after, &[("flow_misses", 1), (counter, 1)]);
        println!("ok: {name}");
    }

    // Without DF the sender allows fragments the tunnel cannot make.
    let mut inner = Ipv4::tcp(CLIENT, 40001, VIP, 8003, TCP_SYN).payload(&[0x11; 1100]);
    inner.frags = 0;
    let frame = ethernet(eth0_mac, GATEWAY_MAC, None, ETHERTYPE_IPV4, &inner.bytes());
    let before = balancer.stats();
    let (verdict, _) =
        lb.run(|| run_program_on(&mut balancer.ebpf, names::BALANCER_PROGRAM, &frame, eth0));
    assert_eq!(
        verdict_name(verdict),
        "XDP_DROP",
        "route MTU too small, no DF"
    );
    assert_counter_deltas(
        "no DF",
        &before,
        &balancer.stats(),
        &[("flow_misses", 1), ("drop_too_big", 1)],
    );
}
