//! IPv6 fixtures: IPv6 VIPs to IPv6 backends (IP6IP6) and to IPv4 ones
//! (IPv6 in IPv4), IPv4 VIPs to IPv6 backends (IPv4 in IPv6), extension
//! headers, fragments, ICMPv6 echo, "packet too big" and errors about a
//! VIP flow, and GUE over IPv6. Expected frames are built with the test's
//! own IPv6 builder.

use std::net::{IpAddr, Ipv6Addr};

use super::*;

const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7);
const OTHER_CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 8);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const NOT_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);
const B6_1: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 1);
const B6_2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 2);

const NEXT_V6: u8 = 41;
const NEXT_V4: u8 = 4;
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const DEST_OPTS: u8 = 60;

fn vip_on(addr: IpAddr, port: u16, proto: Protocol, backends: &[(IpAddr, u32)]) -> VipSpec {
    VipSpec::new(VipAddr { addr, port, proto }, backends)
}

/// TCP/80 on VIP6 to B6_1, UDP/53 on VIP6 to B6_2.
fn v6_vips() -> Vec<VipSpec> {
    vec![
        vip_on(VIP6.into(), 80, Protocol::Tcp, &[(B6_1.into(), 1)]),
        vip_on(VIP6.into(), 53, Protocol::Udp, &[(B6_2.into(), 1)]),
    ]
}

fn tcp6(flags: u8) -> Ipv6 {
    Ipv6::tcp(CLIENT6, 40000, VIP6, 80, flags)
}

fn udp6() -> Ipv6 {
    Ipv6::udp(CLIENT6, 40000, VIP6, 53)
}

fn ip_of(input: &[u8]) -> (Option<u16>, &[u8]) {
    let ethertype = u16::from_be_bytes([input[12], input[13]]);
    if ethertype == ETHERTYPE_VLAN {
        (
            Some(u16::from_be_bytes([input[14], input[15]])),
            &input[18..],
        )
    } else {
        (None, &input[14..])
    }
}

/// The frame the LB must send for the IPv6 client frame `input` (of the
/// flow `tuple`) to the IPv6 `backend`: IP6IP6, trailer left out.
fn ip6ip6_to(input: &[u8], flow: &Ipv6, backend: Ipv6Addr) -> Vec<u8> {
    let (vlan, ip) = ip_of(input);
    let inner = &ip[..40 + u16::from_be_bytes([ip[4], ip[5]]) as usize];
    let hash = hash6(flow);
    let outer = ip6_tunnel(
        (xdp::LB_SOURCE6, backend),
        NEXT_V6,
        flow.tclass,
        hash,
        inner,
    );
    ethernet(NEXT_HOP_MAC, LB_MAC, vlan, ETHERTYPE_IPV6, &outer)
}

/// The frame the LB must send for the IPv4 client packet `p` (TOS 0) to
/// the IPv6 `backend`: IPv4 in IPv6.
fn ip4_in_ip6_to(p: &Ipv4, backend: Ipv6Addr) -> Vec<u8> {
    let bytes = p.bytes();
    let outer = ip6_tunnel(
        (xdp::LB_SOURCE6, backend),
        NEXT_V4,
        0,
        flow_hash_of(&bytes),
        &bytes,
    );
    ethernet(NEXT_HOP_MAC, LB_MAC, None, ETHERTYPE_IPV6, &outer)
}

/// `vips` with GUE to `GUE_PORT`.
fn with_gue(mut vips: Vec<VipSpec>) -> Vec<VipSpec> {
    for v in &mut vips {
        v.encap = Encap::Gue { port: GUE_PORT };
    }
    vips
}

/// The frame the LB must send for `inner` (a whole IP packet, `next` 4 or
/// 41) of a flow with `hash` to the IPv6 `backend` in GUE.
fn gue6_to(inner: &[u8], tclass: u8, hash: u32, backend: Ipv6Addr) -> Vec<u8> {
    let outer = gue6((xdp::LB_SOURCE6, backend), GUE_PORT, tclass, hash, inner);
    ethernet(NEXT_HOP_MAC, LB_MAC, None, ETHERTYPE_IPV6, &outer)
}

fn hash6(flow: &Ipv6) -> u32 {
    let (proto, sport, dport) = match flow.l4 {
        L4::Tcp { src, dst, .. } => (6, src, dst),
        L4::Udp { src, dst } => (17, src, dst),
        _ => panic!("a TCP or UDP flow"),
    };
    flow_hash6_of(flow.src, sport, flow.dst, dport, proto)
}

const DROP_FRAGMENT: &[(&str, u64)] = &[("drop_fragment", 1)];
const PTB_SENT: &[(&str, u64)] = &[("flow_misses", 1), ("icmp_frag_needed_sent", 1)];

pub fn ipv6_cases() -> Vec<Case> {
    let syn = tcp6(TCP_SYN);
    let ack = tcp6(TCP_ACK | TCP_PSH);
    let mut tclass_udp = udp6();
    tclass_udp.tclass = 0xb9;
    let mut with_ext = tcp6(TCP_SYN);
    with_ext.ext = vec![
        Ipv6Ext::padding(HOP_BY_HOP, 0),
        Ipv6Ext::padding(DEST_OPTS, 1),
    ];
    let mut routing = tcp6(TCP_SYN);
    routing.ext = vec![Ipv6Ext {
        kind: ROUTING,
        // Segments left 0: nothing for this node to do.
        body: vec![0, 0, 0, 0, 0, 0],
    }];
    let mut too_many_ext = tcp6(TCP_SYN);
    too_many_ext.ext = (0..5).map(|_| Ipv6Ext::padding(DEST_OPTS, 0)).collect();
    let mut first_fragment = udp6();
    first_fragment.ext = vec![Ipv6Ext::fragment(0, true)];
    let mut later_fragment = tcp6(TCP_ACK);
    later_fragment.ext = vec![
        Ipv6Ext::padding(HOP_BY_HOP, 0),
        Ipv6Ext::fragment(16, false),
    ];
    let mut fragment_elsewhere = Ipv6::udp(CLIENT6, 40000, NOT_VIP6, 53);
    fragment_elsewhere.ext = vec![Ipv6Ext::fragment(0, true)];
    // An extension header whose length runs past the packet.
    let mut ext_past_end = from_router6(&{
        let mut p = tcp6(TCP_SYN).payload(b"");
        p.ext = vec![Ipv6Ext::padding(DEST_OPTS, 0)];
        p
    });
    ext_past_end[14 + 40 + 1] = 200;
    // The same chain to no VIP: the address filter comes before the walk.
    let mut ext_past_end_elsewhere = from_router6(&{
        let mut p = Ipv6::tcp(CLIENT6, 40000, NOT_VIP6, 80, TCP_SYN).payload(b"");
        p.ext = vec![Ipv6Ext::padding(DEST_OPTS, 0)];
        p
    });
    ext_past_end_elsewhere[14 + 40 + 1] = 200;
    let mut payload_past_frame = from_router6(&syn);
    payload_past_frame[14 + 5] += 1;
    let mut jumbo = from_router6(&syn);
    jumbo[14 + 4..14 + 6].copy_from_slice(&[0, 0]);
    let mut version_4 = from_router6(&syn);
    version_4[14] = 0x46;
    let mut tcp_cut = from_router6(&tcp6(TCP_SYN).payload(b""));
    tcp_cut.truncate(14 + 40 + 19);
    tcp_cut[14 + 5] = 19;
    let mut trailer = from_router6(&syn);
    trailer.extend_from_slice(&[0xee; 6]);
    let tagged6 = ethernet(
        LB_MAC,
        ROUTER_MAC,
        Some(0x0064),
        ETHERTYPE_IPV6,
        &syn.bytes(),
    );

    // Mixed families.
    let v6_vip_v4_backend = vec![vip_on(VIP6.into(), 80, Protocol::Tcp, &[(B1.into(), 1)])];
    let v4_vip_v6_backend = vec![vip_on(VIP.into(), 80, Protocol::Tcp, &[(B6_1.into(), 1)])];
    let v4_syn = tcp(TCP_SYN);
    let v4_over_v6 = ip4_in_ip6_to(&v4_syn, B6_1);
    let v6_over_v4 = ethernet(
        NEXT_HOP_MAC,
        LB_MAC,
        None,
        ETHERTYPE_IPV4,
        &sit(xdp::LB_SOURCE, B1, &syn.bytes()),
    );

    // 1500-byte MTU, 40 bytes of outer IPv6 header: 1460 for the client.
    let fits = tcp6(TCP_ACK).payload(&vec![0xab; 1460 - 60]);
    let too_big = tcp6(TCP_ACK).payload(&vec![0xab; 1461 - 60]);
    let mut too_big_multicast = too_big.clone();
    too_big_multicast.src = "ff02::1".parse().expect("an address");
    let v4_too_big = tcp(TCP_ACK).payload(&vec![0xab; 1461 - 40]);
    let v4_fits = tcp(TCP_ACK).payload(&vec![0xab; 1460 - 40]);
    let v4_fits_out = ip4_in_ip6_to(&v4_fits, B6_1);
    // Through a 1300-byte link the tunnel leaves 1260, below IPv6's
    // minimum: 1280 is advertised.
    let over_small_link = tcp6(TCP_ACK).payload(&vec![0xab; 1261 - 60]);

    // ICMPv6.
    let echo = Ipv6::new(CLIENT6, VIP6, L4::Icmp).payload(b"ping");
    let mut echo_reply = Ipv6::new(VIP6, CLIENT6, L4::Raw(58, Vec::new()));
    echo_reply.hop_limit = 64;
    echo_reply.flow_label = echo.flow_label;
    let echo_reply = {
        let mut m = vec![129, 0, 0, 0, 0, 1, 0, 1];
        m.extend_from_slice(b"ping");
        let c = echo_reply.upper_checksum(58, &m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        echo_reply.l4 = L4::Raw(58, m);
        echo_reply.payload = Vec::new();
        ethernet(
            ROUTER_MAC,
            LB_MAC,
            None,
            ETHERTYPE_IPV6,
            &echo_reply.bytes(),
        )
    };
    let mut padded_echo = from_router6(&echo);
    let echo_len = padded_echo.len();
    padded_echo.extend_from_slice(&[0; 8]);
    let mut echo_multicast = echo.clone();
    echo_multicast.src = "ff02::1".parse().expect("an address");
    let mut echo_with_ext = echo.clone();
    echo_with_ext.ext = vec![Ipv6Ext::padding(DEST_OPTS, 0)];
    let no_echo = {
        let mut vips = v6_vips();
        for v in &mut vips {
            v.icmp_echo = false;
        }
        vips
    };
    let neighbor_solicitation = icmp6_packet((CLIENT6, VIP6), 135, 0, [0; 4], &VIP6.octets());
    // What the VIP sent the client, as a router quotes it.
    let quoted = Ipv6::tcp(VIP6, 80, CLIENT6, 40000, TCP_ACK).bytes();
    let unreachable = icmp6_packet((ROUTER6, VIP6), 1, 3, [0; 4], &quoted);
    let unreachable_out = {
        let bytes = unreachable.bytes();
        let outer = ip6_tunnel((xdp::LB_SOURCE6, B6_1), NEXT_V6, 0, hash6(&syn), &bytes);
        ethernet(NEXT_HOP_MAC, LB_MAC, None, ETHERTYPE_IPV6, &outer)
    };
    let quoted_elsewhere = Ipv6::tcp(NOT_VIP6, 80, CLIENT6, 40000, TCP_ACK).bytes();
    let unreachable_elsewhere = icmp6_packet((ROUTER6, VIP6), 1, 3, [0; 4], &quoted_elsewhere);
    let unreachable_cut = icmp6_packet((ROUTER6, VIP6), 1, 3, [0; 4], &quoted[..40]);

    let other = Ipv6::tcp(OTHER_CLIENT6, 50123, VIP6, 80, TCP_SYN);

    // GUE over IPv6: 48 bytes of outer headers, 1452 left for the client.
    let gue_fits = tcp6(TCP_ACK).payload(&vec![0xab; 1452 - 60]);
    let gue_too_big = tcp6(TCP_ACK).payload(&vec![0xab; 1453 - 60]);
    let v4_gue_fits = tcp(TCP_ACK).payload(&vec![0xab; 1452 - 40]);
    let v4_gue_too_big = tcp(TCP_ACK).payload(&vec![0xab; 1453 - 40]);
    let v4_gue_out = |p: &Ipv4| gue6_to(&p.bytes(), 0, flow_hash_of(&p.bytes()), B6_1);
    let v4_gue_vips = with_gue(v4_vip_v6_backend.clone());
    let mut gue_tagged = gue6_to(&syn.bytes(), 0, hash6(&syn), B6_1);
    gue_tagged = {
        let (_, ip) = ip_of(&gue_tagged);
        ethernet(NEXT_HOP_MAC, LB_MAC, Some(0x0064), ETHERTYPE_IPV6, ip)
    };
    let gue_unreachable_out = gue6_to(&unreachable.bytes(), 0, hash6(&syn), B6_1);
    let mut gue_cases = vec![
        case(
            "GUE over IPv6: a SYN goes out in UDP over IPv6, source port and flow label from the flow hash, checksum 0",
            with_gue(v6_vips()),
            from_router6(&syn),
            Expect::Reply(gue6_to(&syn.bytes(), 0, hash6(&syn), B6_1)),
            TX_NEW,
        ),
        Case {
            before: vec![Step::Send(from_router6(&syn))],
            ..case(
                "GUE over IPv6: an established packet keeps the flow's ports and label",
                with_gue(v6_vips()),
                from_router6(&ack),
                Expect::Reply(gue6_to(&ack.bytes(), 0, hash6(&ack), B6_1)),
                TX_HIT,
            )
        },
        case(
            "GUE over IPv6: UDP, the traffic class inherited",
            with_gue(v6_vips()),
            from_router6(&tclass_udp),
            Expect::Reply(gue6_to(
                &tclass_udp.bytes(),
                0xb9,
                hash6(&tclass_udp),
                B6_2,
            )),
            TX_NEW,
        ),
        case(
            "GUE over IPv6: the VLAN tag is kept, the trailer left out",
            with_gue(v6_vips()),
            {
                let mut f = tagged6.clone();
                f.extend_from_slice(&[0xee; 6]);
                f
            },
            Expect::Reply(gue_tagged),
            TX_NEW,
        ),
        case(
            "GUE over IPv6: the inner packet exactly fits with 48 bytes of outer headers",
            with_gue(v6_vips()),
            from_router6(&gue_fits),
            Expect::Reply(gue6_to(&gue_fits.bytes(), 0, hash6(&gue_fits), B6_1)),
            TX_NEW,
        ),
        case(
            "GUE over IPv6: one byte more gets packet too big with MTU - 48",
            with_gue(v6_vips()),
            from_router6(&gue_too_big),
            Expect::Reply(packet_too_big_reply(&from_router6(&gue_too_big), 1500, 48)),
            PTB_SENT,
        ),
        case(
            "GUE over IPv6: an IPv4 client's SYN to an IPv6 backend (handed to balancer6)",
            v4_gue_vips.clone(),
            from_router(&v4_syn),
            Expect::Reply(v4_gue_out(&v4_syn)),
            TX_NEW,
        ),
        case(
            "GUE over IPv6: an IPv4 packet exactly fits with 48 bytes of outer headers",
            v4_gue_vips.clone(),
            from_router(&v4_gue_fits),
            Expect::Reply(v4_gue_out(&v4_gue_fits)),
            TX_NEW,
        ),
        case(
            "GUE over IPv6: an IPv4 DF packet one byte over gets fragmentation needed with MTU - 48",
            v4_gue_vips,
            from_router(&v4_gue_too_big),
            Expect::Reply(frag_needed_reply_with_overhead(
                &from_router(&v4_gue_too_big),
                1500,
                48,
            )),
            FRAG_NEEDED,
        ),
        Case {
            before: vec![Step::Send(from_router6(&syn))],
            ..case(
                "GUE over IPv6: an ICMPv6 error about a flow goes in the flow's own tunnel",
                with_gue(v6_vips()),
                from_router6(&unreachable),
                Expect::Reply(gue_unreachable_out),
                ERROR_FORWARDED,
            )
        },
    ];
    let mut cases = vec![
        case(
            "IPv6: a SYN to an IPv6 VIP goes out in IP6IP6, flow label from the flow hash",
            v6_vips(),
            from_router6(&syn),
            Expect::Reply(ip6ip6_to(&from_router6(&syn), &syn, B6_1)),
            TX_NEW,
        ),
        Case {
            before: vec![Step::Send(from_router6(&syn))],
            ..case(
                "IPv6: an established packet hits the IPv6 connection table",
                v6_vips(),
                from_router6(&ack),
                Expect::Reply(ip6ip6_to(&from_router6(&ack), &ack, B6_1)),
                TX_HIT,
            )
        },
        case(
            "IPv6: another client, its own flow label",
            v6_vips(),
            from_router6(&other),
            Expect::Reply(ip6ip6_to(&from_router6(&other), &other, B6_1)),
            TX_NEW,
        ),
        case(
            "IPv6: UDP, the traffic class inherited by the outer header",
            v6_vips(),
            from_router6(&tclass_udp),
            Expect::Reply(ip6ip6_to(&from_router6(&tclass_udp), &tclass_udp, B6_2)),
            TX_NEW,
        ),
        case(
            "IPv6: hop-by-hop and destination options are walked, and tunnelled as they are",
            v6_vips(),
            from_router6(&with_ext),
            Expect::Reply(ip6ip6_to(&from_router6(&with_ext), &with_ext, B6_1)),
            TX_NEW,
        ),
        case(
            "IPv6: a routing header is walked",
            v6_vips(),
            from_router6(&routing),
            Expect::Reply(ip6ip6_to(&from_router6(&routing), &routing, B6_1)),
            TX_NEW,
        ),
        case(
            "IPv6: five extension headers are more than the walk takes: passed",
            v6_vips(),
            from_router6(&too_many_ext),
            Expect::Pass,
            PASSED,
        ),
        case(
            "IPv6: a first fragment to a VIP is dropped",
            v6_vips(),
            from_router6(&first_fragment),
            Expect::Drop,
            DROP_FRAGMENT,
        ),
        case(
            "IPv6: a later fragment behind a hop-by-hop header is dropped",
            v6_vips(),
            from_router6(&later_fragment),
            Expect::Drop,
            DROP_FRAGMENT,
        ),
        case(
            "IPv6: a fragment to another address passes",
            v6_vips(),
            from_router6(&fragment_elsewhere),
            Expect::Pass,
            PASSED,
        ),
        case(
            "IPv6: an extension header running past the packet, to another address: passed as not ours",
            v6_vips(),
            ext_past_end_elsewhere,
            Expect::Pass,
            PASSED,
        ),
        case(
            "IPv6: an extension header running past the packet is malformed",
            v6_vips(),
            ext_past_end,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "IPv6: a payload length past the frame is malformed",
            v6_vips(),
            payload_past_frame,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "IPv6: a payload length of 0 (a jumbogram) is malformed",
            v6_vips(),
            jumbo,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "IPv6: version 4 under the IPv6 ethertype is malformed",
            v6_vips(),
            version_4,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "IPv6: a TCP header cut short is malformed",
            v6_vips(),
            tcp_cut,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "IPv6: another address passes",
            v6_vips(),
            from_router6(&Ipv6::tcp(CLIENT6, 40000, NOT_VIP6, 80, TCP_SYN)),
            Expect::Pass,
            PASSED,
        ),
        case(
            "IPv6: the VIP's address on another port passes",
            v6_vips(),
            from_router6(&Ipv6::tcp(CLIENT6, 40000, VIP6, 81, TCP_SYN)),
            Expect::Pass,
            PASSED,
        ),
        case(
            "IPv6: a trailer is trimmed, not tunnelled",
            v6_vips(),
            trailer.clone(),
            Expect::Reply(ip6ip6_to(&trailer, &syn, B6_1)),
            TX_NEW,
        ),
        case(
            "IPv6: VLAN tag kept",
            v6_vips(),
            tagged6.clone(),
            Expect::Reply(ip6ip6_to(&tagged6, &syn, B6_1)),
            TX_NEW,
        ),
        case(
            "IPv6 VIP, IPv4 backend: IPv6 in IPv4 (protocol 41)",
            v6_vip_v4_backend,
            from_router6(&syn),
            Expect::Reply(v6_over_v4),
            TX_NEW,
        ),
        case(
            "IPv4 VIP, IPv6 backend: IPv4 in IPv6 (next header 4)",
            v4_vip_v6_backend.clone(),
            from_router(&v4_syn),
            Expect::Reply(v4_over_v6),
            TX_NEW,
        ),
        case(
            "IPv4 VIP, IPv6 backend: the inner packet exactly fits with 40 bytes of outer header",
            v4_vip_v6_backend.clone(),
            from_router(&v4_fits),
            Expect::Reply(v4_fits_out),
            TX_NEW,
        ),
        case(
            "IPv4 VIP, IPv6 backend: one byte more gets fragmentation needed with MTU - 40",
            v4_vip_v6_backend,
            from_router(&v4_too_big),
            Expect::Reply(frag_needed_reply_with_overhead(
                &from_router(&v4_too_big),
                1500,
                40,
            )),
            FRAG_NEEDED,
        ),
        case(
            "IPv6: the packet exactly fits the MTU with the outer header",
            v6_vips(),
            from_router6(&fits),
            Expect::Reply(ip6ip6_to(&from_router6(&fits), &fits, B6_1)),
            TX_NEW,
        ),
        case(
            "IPv6: one byte more gets packet too big with MTU - 40",
            v6_vips(),
            from_router6(&too_big),
            Expect::Reply(packet_too_big_reply(&from_router6(&too_big), 1500, 40)),
            PTB_SENT,
        ),
        Case {
            mtu: 1300,
            ..case(
                "IPv6: packet too big never advertises less than 1280",
                v6_vips(),
                from_router6(&over_small_link),
                Expect::Reply(packet_too_big_reply(
                    &from_router6(&over_small_link),
                    1300,
                    40,
                )),
                PTB_SENT,
            )
        },
        case(
            "IPv6: too big from a multicast source is dropped, not answered",
            v6_vips(),
            from_router6(&too_big_multicast),
            Expect::Drop,
            &[("flow_misses", 1), ("drop_too_big", 1)],
        ),
        case(
            "ICMPv6: an echo request to the VIP is answered",
            v6_vips(),
            from_router6(&echo),
            Expect::Reply(echo_reply.clone()),
            ECHO_REPLY,
        ),
        case(
            "ICMPv6: padding after an echo request is not echoed",
            v6_vips(),
            padded_echo,
            Expect::Reply({
                let mut r = echo_reply.clone();
                r.truncate(echo_len);
                r
            }),
            ECHO_REPLY,
        ),
        case(
            "ICMPv6: echo turned off on every VIP of the address: passed",
            no_echo,
            from_router6(&echo),
            Expect::Pass,
            PASSED,
        ),
        case(
            "ICMPv6: an echo request from a multicast source passes",
            v6_vips(),
            from_router6(&echo_multicast),
            Expect::Pass,
            PASSED,
        ),
        case(
            "ICMPv6: an echo request with extension headers is left to the kernel",
            v6_vips(),
            from_router6(&echo_with_ext),
            Expect::Pass,
            PASSED,
        ),
        case(
            "ICMPv6: neighbour discovery for a VIP address is the kernel's",
            v6_vips(),
            from_router6(&neighbor_solicitation),
            Expect::Pass,
            PASSED,
        ),
        Case {
            before: vec![Step::Send(from_router6(&syn))],
            ..case(
                "ICMPv6: an unreachable about a VIP flow reaches the flow's backend",
                v6_vips(),
                from_router6(&unreachable),
                Expect::Reply(unreachable_out),
                ERROR_FORWARDED,
            )
        },
        case(
            "ICMPv6: an error quoting a packet from another address passes",
            v6_vips(),
            from_router6(&unreachable_elsewhere),
            Expect::Pass,
            PASSED,
        ),
        case(
            "ICMPv6: an error quoting too little to find the flow is malformed",
            v6_vips(),
            from_router6(&unreachable_cut),
            Expect::Pass,
            MALFORMED,
        ),
    ];
    cases.append(&mut gue_cases);
    cases
}
