//! Golden packet tests of the backends' `decap` XDP program, and the round
//! trip balancer → decap.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::Ebpf;
use lb_common::{names, DecapStats};
use lb_tests::{packet::*, xdp::*};
use lb_userspace::{
    dataplane::{Protocol, VipAddr, VipSpec},
    encap::Encap,
    loader,
};

const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 9);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 1);
const OTHER_HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 9);
const LB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

fn load_decap() -> Ebpf {
    require_root();
    loader::load_decap(&[IpAddr::V4(BACKEND), IpAddr::V6(BACKEND6)], &[GUE_PORT])
        .expect("loading decap")
}

/// An IPv6-outer frame (hop limit 64, traffic class `tclass`, next header
/// `next`) from the LB to `dst` around `inner`.
fn ip6_outer(vlan: Option<u16>, dst: Ipv6Addr, next: u8, tclass: u8, inner: &[u8]) -> Vec<u8> {
    ethernet(
        LB_MAC,
        NEXT_HOP_MAC,
        vlan,
        ETHERTYPE_IPV6,
        &ipv6_header(tclass, 0x1234, next, 64, (LB6, dst), inner),
    )
}

fn frame6(vlan: Option<u16>, ip: &[u8]) -> Vec<u8> {
    ethernet(LB_MAC, NEXT_HOP_MAC, vlan, ETHERTYPE_IPV6, ip)
}

/// An IPv4 frame as the LB's next hop sends it (and decap leaves it).
fn frame(vlan: Option<u16>, ip: &[u8]) -> Vec<u8> {
    ethernet(LB_MAC, NEXT_HOP_MAC, vlan, ETHERTYPE_IPV4, ip)
}

fn ipip_frame(vlan: Option<u16>, outer_dst: Ipv4Addr, inner: &Ipv4) -> Vec<u8> {
    frame(vlan, &ipip(Ipv4Addr::new(198, 18, 1, 1), outer_dst, inner))
}

enum Expect {
    /// Passed untouched.
    Untouched,
    /// Passed with the outer header removed: this exact frame.
    Stripped(Vec<u8>),
}

#[test]
fn decap_fixtures() {
    let inner = Ipv4::tcp(CLIENT, 40000, VIP, 80, TCP_SYN);
    let udp_inner = Ipv4::udp(CLIENT, 40000, VIP, 53);
    let mut outer_with_options = Ipv4::new(
        Ipv4Addr::new(198, 18, 1, 1),
        BACKEND,
        L4::Raw(4, inner.bytes()),
    );
    outer_with_options.options = vec![1, 1, 1, 1];
    let mut truncated_inner = ipip_frame(None, BACKEND, &inner);
    truncated_inner.truncate(14 + 20 + 12);
    let mut fragmented = ipip(Ipv4Addr::new(198, 18, 1, 1), BACKEND, &inner);
    fragmented[6] |= 0x20; // MF
                           // ECN: an outer header a router marked CE (0b11), around an ECN-capable
                           // (ECT(0), 0b10) or a Not-ECT inner packet.
    let with_tos = |packet: &Ipv4, tos: u8| Ipv4 {
        tos,
        ..packet.clone()
    };
    let marked_outer = |inner: &Ipv4| {
        let mut outer = Ipv4::new(
            Ipv4Addr::new(198, 18, 1, 1),
            BACKEND,
            L4::Raw(4, inner.bytes()),
        );
        outer.tos = 0x03;
        frame(None, &outer.bytes())
    };
    let ect0_inner = with_tos(&inner, 0x02);
    let mut outer_ihl_too_small = ipip(Ipv4Addr::new(198, 18, 1, 1), BACKEND, &inner);
    outer_ihl_too_small[0] = 0x44;
    let mut not_ipv4_inside = ipip(Ipv4Addr::new(198, 18, 1, 1), BACKEND, &inner);
    not_ipv4_inside[20] = 0x60;

    // GUE: UDP to the GUE port, the inner IPv4 or IPv6 packet after it.
    let lb = Ipv4Addr::new(198, 18, 1, 1);
    let gue_to =
        |dst: Ipv4Addr, port: u16, tos: u8, inner: &[u8]| gue(lb, dst, 50000, port, tos, inner);
    let inner6 = ipv6_udp()[14..].to_vec();
    let mut inner6_ect0 = inner6.clone();
    inner6_ect0[1] |= 0x20; // traffic class ECN bits = ECT(0)
    let mut inner6_ce = inner6.clone();
    inner6_ce[1] |= 0x30;
    let mut gue_udp_len_long = gue_to(BACKEND, GUE_PORT, 0, &inner.bytes());
    gue_udp_len_long[24..26].copy_from_slice(&(8 + inner.bytes().len() as u16 + 1).to_be_bytes());
    let mut gue_udp_len_short = gue_to(BACKEND, GUE_PORT, 0, &inner.bytes());
    gue_udp_len_short[24..26].copy_from_slice(&8u16.to_be_bytes());
    let mut gue_variant0 = gue_to(BACKEND, GUE_PORT, 0, &inner.bytes());
    gue_variant0[28] = 0x00; // a GUE header (variant 0) instead of IPv4
    let mut gue_fragment = gue_to(BACKEND, GUE_PORT, 0, &inner.bytes());
    gue_fragment[6] |= 0x20; // MF
    let gue_empty = gue_to(BACKEND, GUE_PORT, 0, &[]);
    let gue_short_v6 = gue_to(BACKEND, GUE_PORT, 0, &inner6[..39]);
    let gue_stripped = DecapStats {
        gue_decapsulated: 1,
        ..Default::default()
    };

    // IPv6 outer headers (IP6IP6 and IPv4 in IPv6) and IPv6 in IPv4.
    let tcp6 = Ipv6::tcp(CLIENT6, 40000, VIP6, 80, TCP_SYN);
    let udp6 = Ipv6::udp(CLIENT6, 40000, VIP6, 53);
    let tcp6_ect0 = Ipv6 {
        tclass: 0x02,
        ..tcp6.clone()
    };
    let tcp6_ce = Ipv6 {
        tclass: 0x03,
        ..tcp6.clone()
    };
    let mut ext_then_inner = vec![41, 0, 1, 4, 0, 0, 0, 0];
    ext_then_inner.extend_from_slice(&tcp6.bytes());
    // GUE over IPv6: next header 17, the UDP header, the inner packet.
    let gue6_to = |port: u16, inner: &[u8]| {
        let mut udp = 50000u16.to_be_bytes().to_vec();
        udp.extend_from_slice(&port.to_be_bytes());
        udp.extend_from_slice(&(8 + inner.len() as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(inner);
        udp
    };
    let mut gue6_udp_len_lies = gue6_to(GUE_PORT, &tcp6.bytes());
    gue6_udp_len_lies[4..6].copy_from_slice(&(8 + tcp6.bytes().len() as u16 - 1).to_be_bytes());
    let mut ipip_version_6 = frame(None, &ipip(lb, BACKEND, &inner));
    ipip_version_6[14] = 0x65;
    let mut outer6_len_lies = ip6_outer(None, BACKEND6, 41, 0, &tcp6.bytes());
    let claimed = u16::from_be_bytes([outer6_len_lies[18], outer6_len_lies[19]]) + 1;
    outer6_len_lies[18..20].copy_from_slice(&claimed.to_be_bytes());

    type Case = (&'static str, Vec<u8>, Expect, DecapStats);
    let stripped = DecapStats {
        decapsulated: 1,
        ..Default::default()
    };
    let passed = DecapStats {
        passed: 1,
        ..Default::default()
    };
    let malformed = DecapStats {
        malformed: 1,
        ..Default::default()
    };
    let cases: Vec<Case> = vec![
        (
            "IP-in-IP TCP to this host: stripped",
            ipip_frame(None, BACKEND, &inner),
            Expect::Stripped(frame(None, &inner.bytes())),
            stripped,
        ),
        (
            "IP-in-IP UDP to this host: stripped",
            ipip_frame(None, BACKEND, &udp_inner),
            Expect::Stripped(frame(None, &udp_inner.bytes())),
            stripped,
        ),
        (
            "VLAN-tagged IP-in-IP: stripped, tag kept",
            ipip_frame(Some(0x0064), BACKEND, &inner),
            Expect::Stripped(frame(Some(0x0064), &inner.bytes())),
            stripped,
        ),
        (
            "outer header with options: stripped whole",
            frame(None, &outer_with_options.bytes()),
            Expect::Stripped(frame(None, &inner.bytes())),
            stripped,
        ),
        (
            "outer CE around an ECT(0) packet: CE carried in, checksum updated",
            marked_outer(&ect0_inner),
            Expect::Stripped(frame(None, &with_tos(&inner, 0x03).bytes())),
            stripped,
        ),
        (
            "outer CE around a Not-ECT packet: inner left as it is",
            marked_outer(&inner),
            Expect::Stripped(frame(None, &inner.bytes())),
            stripped,
        ),
        (
            "IP-in-IP to another host: untouched",
            ipip_frame(None, OTHER_HOST, &inner),
            Expect::Untouched,
            passed,
        ),
        (
            "plain TCP: untouched",
            from_router(&inner),
            Expect::Untouched,
            passed,
        ),
        (
            "ARP: untouched",
            arp_request(CLIENT, BACKEND),
            Expect::Untouched,
            passed,
        ),
        ("IPv6: untouched", ipv6_udp(), Expect::Untouched, passed),
        (
            "inner header truncated: untouched",
            truncated_inner,
            Expect::Untouched,
            malformed,
        ),
        (
            "fragmented outer packet: untouched",
            frame(None, &fragmented),
            Expect::Untouched,
            malformed,
        ),
        (
            "outer header length below 20 bytes: untouched",
            frame(None, &outer_ihl_too_small),
            Expect::Untouched,
            malformed,
        ),
        (
            "inner packet not IPv4: untouched",
            frame(None, &not_ipv4_inside),
            Expect::Untouched,
            malformed,
        ),
        (
            "GUE TCP to this host and port: stripped",
            frame(None, &gue_to(BACKEND, GUE_PORT, 0, &inner.bytes())),
            Expect::Stripped(frame(None, &inner.bytes())),
            gue_stripped,
        ),
        (
            "GUE UDP, VLAN-tagged: stripped, tag kept",
            frame(
                Some(0x0064),
                &gue_to(BACKEND, GUE_PORT, 0, &udp_inner.bytes()),
            ),
            Expect::Stripped(frame(Some(0x0064), &udp_inner.bytes())),
            gue_stripped,
        ),
        (
            "GUE around IPv6: stripped, ethertype IPv6",
            frame(None, &gue_to(BACKEND, GUE_PORT, 0, &inner6)),
            Expect::Stripped(ethernet(
                LB_MAC,
                NEXT_HOP_MAC,
                None,
                ETHERTYPE_IPV6,
                &inner6,
            )),
            gue_stripped,
        ),
        (
            "GUE around IPv6, VLAN-tagged: the tag's ethertype becomes IPv6",
            frame(Some(0x0064), &gue_to(BACKEND, GUE_PORT, 0, &inner6)),
            Expect::Stripped(ethernet(
                LB_MAC,
                NEXT_HOP_MAC,
                Some(0x0064),
                ETHERTYPE_IPV6,
                &inner6,
            )),
            gue_stripped,
        ),
        (
            "GUE outer CE around ECT(0) IPv4: CE carried in, checksum updated",
            frame(None, &gue_to(BACKEND, GUE_PORT, 0x03, &ect0_inner.bytes())),
            Expect::Stripped(frame(None, &with_tos(&inner, 0x03).bytes())),
            gue_stripped,
        ),
        (
            "GUE outer CE around ECT(0) IPv6: CE carried into the traffic class",
            frame(None, &gue_to(BACKEND, GUE_PORT, 0x03, &inner6_ect0)),
            Expect::Stripped(ethernet(
                LB_MAC,
                NEXT_HOP_MAC,
                None,
                ETHERTYPE_IPV6,
                &inner6_ce,
            )),
            gue_stripped,
        ),
        (
            "GUE outer CE around Not-ECT IPv6: left as it is",
            frame(None, &gue_to(BACKEND, GUE_PORT, 0x03, &inner6)),
            Expect::Stripped(ethernet(
                LB_MAC,
                NEXT_HOP_MAC,
                None,
                ETHERTYPE_IPV6,
                &inner6,
            )),
            gue_stripped,
        ),
        (
            "UDP to this host on another port: untouched",
            frame(None, &gue_to(BACKEND, GUE_PORT + 1, 0, &inner.bytes())),
            Expect::Untouched,
            passed,
        ),
        (
            "GUE to another host: untouched",
            frame(None, &gue_to(OTHER_HOST, GUE_PORT, 0, &inner.bytes())),
            Expect::Untouched,
            passed,
        ),
        (
            "GUE whose UDP length runs past the IP length: untouched",
            frame(None, &gue_udp_len_long),
            Expect::Untouched,
            malformed,
        ),
        (
            "GUE whose UDP length stops short: untouched",
            frame(None, &gue_udp_len_short),
            Expect::Untouched,
            malformed,
        ),
        (
            "GUE with a GUE header (variant 0): left to the kernel",
            frame(None, &gue_variant0),
            Expect::Untouched,
            malformed,
        ),
        (
            "fragmented GUE outer packet: untouched",
            frame(None, &gue_fragment),
            Expect::Untouched,
            malformed,
        ),
        (
            "GUE around a truncated IPv6 header: untouched",
            frame(None, &gue_short_v6),
            Expect::Untouched,
            malformed,
        ),
        (
            "GUE with nothing inside: untouched",
            frame(None, &gue_empty),
            Expect::Untouched,
            malformed,
        ),
        (
            "IP6IP6 to this host: stripped, ethertype IPv6",
            ip6_outer(None, BACKEND6, 41, 0, &tcp6.bytes()),
            Expect::Stripped(frame6(None, &tcp6.bytes())),
            stripped,
        ),
        (
            "IPv4 in IPv6 to this host: stripped, ethertype IPv4",
            ip6_outer(None, BACKEND6, 4, 0, &inner.bytes()),
            Expect::Stripped(frame(None, &inner.bytes())),
            stripped,
        ),
        (
            "IPv6 in IPv4 (protocol 41) to this host: stripped, ethertype IPv6",
            frame(None, &sit(lb, BACKEND, &tcp6.bytes())),
            Expect::Stripped(frame6(None, &tcp6.bytes())),
            stripped,
        ),
        (
            "IP6IP6, VLAN-tagged: stripped, tag kept",
            ip6_outer(Some(0x0064), BACKEND6, 41, 0, &udp6.bytes()),
            Expect::Stripped(frame6(Some(0x0064), &udp6.bytes())),
            stripped,
        ),
        (
            "IP6IP6 to another host: untouched",
            ip6_outer(None, OTHER_HOST6, 41, 0, &tcp6.bytes()),
            Expect::Untouched,
            passed,
        ),
        (
            "outer IPv6 with an extension header first: not ours, untouched",
            ip6_outer(None, BACKEND6, 60, 0, &ext_then_inner),
            Expect::Untouched,
            passed,
        ),
        (
            "outer IPv6 next header 41 around an IPv4 packet: untouched",
            ip6_outer(None, BACKEND6, 41, 0, &inner.bytes()),
            Expect::Untouched,
            malformed,
        ),
        (
            "IPv6 in IPv4 (41) around an IPv4 packet: untouched",
            frame(None, &sit(lb, BACKEND, &inner.bytes())),
            Expect::Untouched,
            malformed,
        ),
        (
            "outer IPv6 payload length past the frame: untouched",
            outer6_len_lies,
            Expect::Untouched,
            malformed,
        ),
        (
            "IP6IP6 with a truncated inner header: untouched",
            ip6_outer(None, BACKEND6, 41, 0, &tcp6.bytes()[..39]),
            Expect::Untouched,
            malformed,
        ),
        (
            "outer IPv6 CE over an ECT(0) IPv4 packet: CE carried, checksum updated",
            ip6_outer(None, BACKEND6, 4, 0x03, &ect0_inner.bytes()),
            Expect::Stripped(frame(None, &with_tos(&inner, 0x03).bytes())),
            stripped,
        ),
        (
            "GUE over IPv6 around IPv6 to this host and port: stripped, ethertype IPv6",
            ip6_outer(None, BACKEND6, 17, 0, &gue6_to(GUE_PORT, &tcp6.bytes())),
            Expect::Stripped(frame6(None, &tcp6.bytes())),
            gue_stripped,
        ),
        (
            "GUE over IPv6 around IPv4, VLAN-tagged: stripped, tag's ethertype IPv4",
            ip6_outer(
                Some(0x0064),
                BACKEND6,
                17,
                0,
                &gue6_to(GUE_PORT, &inner.bytes()),
            ),
            Expect::Stripped(frame(Some(0x0064), &inner.bytes())),
            gue_stripped,
        ),
        (
            "GUE over IPv6, outer CE over ECT(0) IPv4: CE carried, checksum updated",
            ip6_outer(
                None,
                BACKEND6,
                17,
                0x03,
                &gue6_to(GUE_PORT, &ect0_inner.bytes()),
            ),
            Expect::Stripped(frame(None, &with_tos(&inner, 0x03).bytes())),
            gue_stripped,
        ),
        (
            "UDP over IPv6 to another port: not ours, untouched",
            ip6_outer(None, BACKEND6, 17, 0, &gue6_to(GUE_PORT + 1, &tcp6.bytes())),
            Expect::Untouched,
            passed,
        ),
        (
            "GUE over IPv6 to another host: untouched",
            ip6_outer(None, OTHER_HOST6, 17, 0, &gue6_to(GUE_PORT, &tcp6.bytes())),
            Expect::Untouched,
            passed,
        ),
        (
            "GUE over IPv6 whose UDP length disagrees with the payload length: untouched",
            ip6_outer(None, BACKEND6, 17, 0, &gue6_udp_len_lies),
            Expect::Untouched,
            malformed,
        ),
        (
            "GUE over IPv6 with a truncated inner header: untouched",
            ip6_outer(
                None,
                BACKEND6,
                17,
                0,
                &gue6_to(GUE_PORT, &tcp6.bytes()[..39]),
            ),
            Expect::Untouched,
            malformed,
        ),
        (
            "an IPv4 ethertype in front of version 6 to this host: untouched",
            ipip_version_6,
            Expect::Untouched,
            malformed,
        ),
        (
            "outer IPv6 CE over an ECT(0) IPv6 packet: CE carried",
            ip6_outer(None, BACKEND6, 41, 0x03, &tcp6_ect0.bytes()),
            Expect::Stripped(frame6(None, &tcp6_ce.bytes())),
            stripped,
        ),
    ];
    for (name, input, expect, counters) in cases {
        let mut ebpf = load_decap();
        let (verdict, output) = run_program(&mut ebpf, names::DECAP_PROGRAM, &input);
        assert_eq!(
            verdict,
            XDP_PASS,
            "{name}: decap must always pass, got {}",
            verdict_name(verdict)
        );
        let want = match expect {
            Expect::Untouched => input.clone(),
            Expect::Stripped(frame) => frame,
        };
        assert_eq!(output, want, "{name}: output bytes differ");
        assert_eq!(decap_stats(&ebpf), counters, "{name}: counters");
        println!("ok: {name}");
    }
}

/// Sends a SYN and a 1000-byte established packet through a balancer
/// whose VIP uses `encap` to `backend` (decap's address of its family),
/// and each result through decap, which must turn it back into exactly
/// what the client sent (with the next hop's MACs). Returns what the
/// balancer sent and decap's counters.
fn balancer_then_decap(encap: Encap, backend: IpAddr) -> (Vec<Vec<u8>>, DecapStats) {
    let spec = VipSpec {
        encap,
        ..VipSpec::new(
            VipAddr {
                addr: std::net::IpAddr::V4(VIP),
                port: 80,
                proto: Protocol::Tcp,
            },
            &[(backend, 1)],
        )
    };
    let mut lb = Balancer::load(&test_options(static_config(1500)), &[spec]);
    let mut decap = load_decap();
    let mut sent = Vec::new();
    for (i, ip) in [
        Ipv4::tcp(CLIENT, 40000, VIP, 80, TCP_SYN),
        Ipv4::tcp(CLIENT, 40001, VIP, 80, TCP_ACK).payload(&[7; 1000]),
    ]
    .iter()
    .enumerate()
    {
        let (verdict, encapsulated) = lb.run(&from_router(ip));
        assert_eq!(verdict, XDP_TX, "packet {i}");
        let (verdict, stripped) = run_program(&mut decap, names::DECAP_PROGRAM, &encapsulated);
        assert_eq!(verdict, XDP_PASS, "packet {i}");
        assert_eq!(
            stripped,
            ethernet(NEXT_HOP_MAC, LB_MAC, None, ETHERTYPE_IPV4, &ip.bytes()),
            "packet {i}"
        );
        sent.push(encapsulated);
    }
    (sent, decap_stats(&decap))
}

#[test]
fn balancer_then_decap_round_trip() {
    balancer_then_decap(Encap::Ipip, BACKEND.into());
    let (sent, stats) = balancer_then_decap(Encap::Ipip, BACKEND6.into());
    for (i, frame) in sent.iter().enumerate() {
        assert_eq!(frame[14 + 6], 4, "packet {i}: IPv4 in IPv6");
    }
    assert_eq!(stats.decapsulated, 2);
}

/// The same through a GUE VIP: decap strips the UDP header too.
#[test]
fn balancer_then_decap_round_trip_over_gue() {
    let (sent, stats) = balancer_then_decap(Encap::Gue { port: GUE_PORT }, BACKEND.into());
    for (i, frame) in sent.iter().enumerate() {
        assert_eq!(frame[14 + 9], 17, "packet {i}: outer protocol UDP");
    }
    assert_eq!(stats.gue_decapsulated, 2);
    let (sent, stats) = balancer_then_decap(Encap::Gue { port: GUE_PORT }, BACKEND6.into());
    for (i, frame) in sent.iter().enumerate() {
        assert_eq!(frame[14 + 6], 17, "packet {i}: outer IPv6 next header UDP");
    }
    assert_eq!(stats.gue_decapsulated, 2);
}
