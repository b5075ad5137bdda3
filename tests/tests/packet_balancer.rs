//! Golden packet tests of the `balancer` XDP program through
//! BPF_PROG_TEST_RUN: for each case, the configuration, the packets sent
//! before it, the input frame, the expected verdict, the exact expected
//! output bytes and the exact movement of every global counter.
//!
//! Every case loads a fresh program with a static next hop, so output bytes
//! are deterministic. Expected outer headers (checksum included) are built
//! by the test's own packet builder, never copied from the program.

use std::net::Ipv4Addr;

use lb_tests::{
    packet::*,
    xdp::{self, *},
};
use lb_userspace::{
    dataplane::{DataPlane, Protocol, VipAddr, VipSpec},
    encap::Encap,
};

#[path = "packet_balancer/ipv6.rs"]
mod ipv6;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
const OTHER_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 8);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const NOT_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);
const B1: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const B2: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
const B3: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 3);
const MTU: u32 = 1500;

fn vip(port: u16, proto: Protocol, backends: &[(Ipv4Addr, u32)]) -> VipSpec {
    let backends: Vec<(std::net::IpAddr, u32)> =
        backends.iter().map(|&(a, w)| (a.into(), w)).collect();
    VipSpec::new(
        VipAddr {
            addr: std::net::IpAddr::V4(VIP),
            port,
            proto,
        },
        &backends,
    )
}

/// The usual configuration: TCP/80 with one backend, UDP/53 with another.
fn one_backend_each() -> Vec<VipSpec> {
    vec![
        vip(80, Protocol::Tcp, &[(B1, 1)]),
        vip(53, Protocol::Udp, &[(B2, 1)]),
    ]
}

fn three_backends() -> Vec<VipSpec> {
    vec![vip(80, Protocol::Tcp, &[(B1, 1), (B2, 1), (B3, 1)])]
}

fn tcp(flags: u8) -> Ipv4 {
    Ipv4::tcp(CLIENT, 40000, VIP, 80, flags)
}

fn udp() -> Ipv4 {
    Ipv4::udp(CLIENT, 40000, VIP, 53)
}

/// What must come out.
enum Expect {
    /// XDP_PASS with the frame untouched.
    Pass,
    Drop,
    /// XDP_TX of the input encapsulated towards this backend.
    TxTo(Ipv4Addr),
    /// XDP_TX of the input in GUE towards this backend, on `GUE_PORT`.
    GueTo(Ipv4Addr),
    /// XDP_TX towards whichever backend the userspace model computes for
    /// the flow (checks that kernel and agent agree).
    TxToRingChoice {
        src: Ipv4Addr,
        sport: u16,
    },
    /// XDP_TX of exactly this frame (a reply built by the balancer).
    Reply(Vec<u8>),
}

enum Step {
    Send(Vec<u8>),
    Apply(Vec<VipSpec>),
}

struct Case {
    name: &'static str,
    vips: Vec<VipSpec>,
    mtu: u32,
    /// `DataPathConfig::icmp_rate` (messages per second and CPU).
    icmp_rate: u32,
    before: Vec<Step>,
    input: Vec<u8>,
    expect: Expect,
    counters: &'static [(&'static str, u64)],
}

fn case(
    name: &'static str,
    vips: Vec<VipSpec>,
    input: Vec<u8>,
    expect: Expect,
    counters: &'static [(&'static str, u64)],
) -> Case {
    Case {
        name,
        vips,
        mtu: MTU,
        icmp_rate: lb_common::DEFAULT_ICMP_RATE,
        before: Vec::new(),
        input,
        expect,
        counters,
    }
}

const TX_NEW: &[(&str, u64)] = &[("flow_misses", 1), ("tx", 1)];
const TX_HIT: &[(&str, u64)] = &[("flow_hits", 1), ("tx", 1)];
const PASSED: &[(&str, u64)] = &[("passed", 1)];
const ECHO_REPLY: &[(&str, u64)] = &[("icmp_echo_replies", 1)];
const FRAG_NEEDED: &[(&str, u64)] = &[("flow_misses", 1), ("icmp_frag_needed_sent", 1)];
const ERROR_FORWARDED: &[(&str, u64)] = &[("icmp_errors_forwarded", 1), ("tx", 1)];

/// A router on the client's side, sending ICMP errors.
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);

/// A client frame from the router with VLAN tag 100.
fn tagged(ip: &Ipv4) -> Vec<u8> {
    ethernet(
        LB_MAC,
        ROUTER_MAC,
        Some(0x0064),
        ETHERTYPE_IPV4,
        &ip.bytes(),
    )
}

/// A frame the balancer sends back to the router it came from (MACs
/// swapped) carrying `ip`.
fn reply_from_lb(vlan: Option<u16>, ip: &Ipv4) -> Vec<u8> {
    ethernet(ROUTER_MAC, LB_MAC, vlan, ETHERTYPE_IPV4, &ip.bytes())
}
const MALFORMED: &[(&str, u64)] = &[("malformed", 1)];

fn cases() -> Vec<Case> {
    let tcp_vip = || one_backend_each();
    let mut with_options = tcp(TCP_SYN);
    with_options.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let mut max_options = tcp(TCP_ACK);
    max_options.options = vec![1; 40];
    let mut first_fragment = udp();
    first_fragment.frags = 0x2000; // MF
    let mut later_fragment = udp();
    later_fragment.frags = 0x0010; // offset 128
    let mut fragment_elsewhere = Ipv4::udp(CLIENT, 40000, NOT_VIP, 53);
    fragment_elsewhere.frags = 0x2000;
    // A TCP header cut short, to no VIP: the address filter comes first, so
    // the packet passes as not ours, without its ports being read.
    let mut truncated_elsewhere = from_router(&Ipv4::tcp(CLIENT, 40000, NOT_VIP, 80, TCP_ACK));
    truncated_elsewhere.truncate(14 + 20 + 12);
    let mut tcp_fragment = tcp(TCP_ACK);
    tcp_fragment.frags = 0x2000; // MF
    let mut tagged_truncated = tagged(&tcp(TCP_ACK));
    tagged_truncated.truncate(18 + 19);
    let mut udp_len_too_short = from_router(&udp());
    udp_len_too_short[16..18].copy_from_slice(&27u16.to_be_bytes());
    let mut tos_no_df = udp();
    tos_no_df.tos = 0xb8;
    tos_no_df.frags = 0;

    // 1500-byte MTU: the inner packet may be at most 1480 bytes.
    let fits = tcp(TCP_ACK).payload(&vec![0xab; 1480 - 40]);
    let too_big = tcp(TCP_ACK).payload(&vec![0xab; 1481 - 40]);
    let mut too_big_no_df = too_big.clone();
    too_big_no_df.frags = 0;
    let mut too_big_options = too_big.clone();
    too_big_options.options = vec![1; 12];
    let udp_too_big = udp().payload(&vec![0xcd; 1481 - 28]);
    let mut too_big_bad_source = too_big.clone();
    too_big_bad_source.src = Ipv4Addr::new(224, 0, 0, 5);

    // ICMP.
    let no_echo = |mut vips: Vec<VipSpec>| {
        for v in &mut vips {
            v.icmp_echo = false;
        }
        vips
    };
    let mut padded_echo = tagged(&echo_request(CLIENT, VIP, b""));
    padded_echo.resize(64, 0);
    let mut echo_with_options = echo_request(CLIENT, VIP, b"ping");
    echo_with_options.options = vec![1, 1, 1, 0];
    let mut echo_fragment = echo_request(CLIENT, VIP, b"ping");
    echo_fragment.frags = 0x2000;
    let mut icmp_cut = from_router(&echo_request(CLIENT, VIP, b""));
    icmp_cut[16..18].copy_from_slice(&27u16.to_be_bytes());
    // What the VIP sent the client, as a router quotes it.
    let quoted_tcp = Ipv4::tcp(VIP, 80, CLIENT, 40000, TCP_ACK).bytes();
    let quoted_udp = Ipv4::udp(VIP, 53, CLIENT, 40000).bytes();
    let mut quoted_tcp_options = Ipv4::tcp(VIP, 80, CLIENT, 40000, TCP_ACK);
    quoted_tcp_options.options = vec![1, 1, 1, 0];
    let quoted_tcp_options = quoted_tcp_options.bytes();
    let mut quoted_ihl_4 = quoted_tcp.clone();
    quoted_ihl_4[0] = 0x44;
    let mut quoted_v6 = quoted_tcp.clone();
    quoted_v6[0] = 0x65;
    // "Fragmentation needed" from a router on the client's side, quoting
    // the first `keep` bytes.
    let error_about = |quoted: &[u8], keep: usize| {
        icmp_error(ROUTER, VIP, 3, 4, [0, 0, 0x05, 0x78], &quoted[..keep])
    };
    // The IP total length ends inside the ICMP header's quote: the quote's
    // bytes are there, but as Ethernet padding.
    let mut quote_in_padding = from_router(&error_about(&quoted_tcp, 28));
    quote_in_padding[16..18].copy_from_slice(&(20u16 + 8 + 4).to_be_bytes());
    let c = {
        quote_in_padding[24..26].copy_from_slice(&[0, 0]);
        internet_checksum(&quote_in_padding[14..34])
    };
    quote_in_padding[24..26].copy_from_slice(&c.to_be_bytes());

    let syn = from_router(&tcp(TCP_SYN));
    let ack = from_router(&tcp(TCP_ACK | TCP_PSH));

    // Truncations: cut a valid frame at each layer.
    let full = from_router(&tcp(TCP_ACK));
    let udp_full = from_router(&udp());
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    // IPv4 ethertype, version nibble 6, otherwise a valid TCP/80 header.
    let mut not_version_4 = full.clone();
    not_version_4[14] = 0x65;
    let mut options_cut = from_router(&max_options);
    options_cut.truncate(14 + 40);
    let mut len_too_long = full.clone();
    len_too_long[16..18].copy_from_slice(&2000u16.to_be_bytes());
    let mut len_too_short_for_tcp = full.clone();
    len_too_short_for_tcp[16..18].copy_from_slice(&30u16.to_be_bytes());

    // A short UDP packet padded to Ethernet's 60-byte minimum.
    let mut padded = from_router(&udp().payload(b""));
    padded.resize(60, 0);
    // Bytes past the IP total length of a packet that fits the MTU exactly:
    // encapsulated with them, the frame would leave over the MTU.
    let with_trailer = |ip: &Ipv4, vlan: bool| {
        let mut frame = if vlan { tagged(ip) } else { from_router(ip) };
        frame.extend_from_slice(&[0xee; 10]);
        frame
    };

    let mut source_affinity = vip(80, Protocol::Tcp, &[(B1, 1), (B2, 1), (B3, 1)]);
    source_affinity.policy = lb_userspace::policy::Policy::MaglevSource;

    let mut cases = vec![
        case(
            "TCP SYN to a VIP: new flow, encapsulated to the backend",
            tcp_vip(),
            syn.clone(),
            Expect::TxTo(B1),
            TX_NEW,
        ),
        case(
            "TCP ACK of an unknown flow: selected from the ring",
            tcp_vip(),
            ack.clone(),
            Expect::TxTo(B1),
            TX_NEW,
        ),
        Case {
            before: vec![Step::Send(syn.clone())],
            ..case(
                "TCP established: connection-table hit",
                tcp_vip(),
                ack.clone(),
                Expect::TxTo(B1),
                TX_HIT,
            )
        },
        Case {
            before: vec![Step::Send(syn.clone())],
            ..case(
                "TCP SYN of a pinned flow goes by the ring again",
                tcp_vip(),
                syn.clone(),
                Expect::TxTo(B1),
                TX_NEW,
            )
        },
        case(
            "UDP to a VIP: new flow",
            tcp_vip(),
            udp_full.clone(),
            Expect::TxTo(B2),
            TX_NEW,
        ),
        Case {
            before: vec![Step::Send(udp_full.clone())],
            ..case(
                "UDP second datagram: connection-table hit",
                tcp_vip(),
                udp_full.clone(),
                Expect::TxTo(B2),
                TX_HIT,
            )
        },
        case(
            "three backends: kernel and agent pick the same one",
            three_backends(),
            syn.clone(),
            Expect::TxToRingChoice {
                src: CLIENT,
                sport: 40000,
            },
            TX_NEW,
        ),
        case(
            "three backends, another client",
            three_backends(),
            from_router(&Ipv4::tcp(OTHER_CLIENT, 51234, VIP, 80, TCP_SYN)),
            Expect::TxToRingChoice {
                src: OTHER_CLIENT,
                sport: 51234,
            },
            TX_NEW,
        ),
        case(
            "source-IP affinity VIP: hashed without the source port",
            vec![source_affinity],
            from_router(&Ipv4::tcp(CLIENT, 61000, VIP, 80, TCP_SYN)),
            Expect::TxToRingChoice {
                src: CLIENT,
                sport: 1,
            },
            TX_NEW,
        ),
        case(
            "IPv4 with options: options kept inside",
            tcp_vip(),
            from_router(&with_options),
            Expect::TxTo(B1),
            TX_NEW,
        ),
        case(
            "IPv4 with 40 bytes of options",
            tcp_vip(),
            from_router(&max_options),
            Expect::TxTo(B1),
            TX_NEW,
        ),
        case(
            "VLAN-tagged TCP to a VIP: tag kept",
            tcp_vip(),
            tagged(&tcp(TCP_SYN)),
            Expect::TxTo(B1),
            TX_NEW,
        ),
        case(
            "TOS inherited; outer DF set even when the client did not set it",
            tcp_vip(),
            from_router(&tos_no_df),
            Expect::TxTo(B2),
            TX_NEW,
        ),
        case(
            "Ethernet padding is trimmed before encapsulation",
            tcp_vip(),
            padded,
            Expect::TxTo(B2),
            TX_NEW,
        ),
        case(
            "a trailer past the IP total length is trimmed: the frame fits the MTU",
            tcp_vip(),
            with_trailer(&fits, false),
            Expect::TxTo(B1),
            TX_NEW,
        ),
        case(
            "VLAN-tagged with a trailer: trimmed, fits the MTU",
            tcp_vip(),
            with_trailer(&fits, true),
            Expect::TxTo(B1),
            TX_NEW,
        ),
        case(
            "oversized with a trailer: fragmentation needed, trailer not quoted",
            tcp_vip(),
            with_trailer(&too_big, false),
            Expect::Reply(frag_needed_reply(&from_router(&too_big), 1500)),
            FRAG_NEEDED,
        ),
        case(
            "oversized without DF: dropped (the tunnel cannot fragment)",
            tcp_vip(),
            from_router(&too_big_no_df),
            Expect::Drop,
            &[("flow_misses", 1), ("drop_too_big", 1)],
        ),
        case(
            "inner packet exactly fits the MTU once encapsulated",
            tcp_vip(),
            from_router(&fits),
            Expect::TxTo(B1),
            TX_NEW,
        ),
        case(
            "oversized once encapsulated, DF: fragmentation needed to the client",
            tcp_vip(),
            from_router(&too_big),
            Expect::Reply(frag_needed_reply(&from_router(&too_big), 1500)),
            FRAG_NEEDED,
        ),
        Case {
            before: vec![Step::Send(syn.clone())],
            ..case(
                "oversized packet of an established flow: fragmentation needed",
                tcp_vip(),
                from_router(&too_big),
                Expect::Reply(frag_needed_reply(&from_router(&too_big), 1500)),
                &[("flow_hits", 1), ("icmp_frag_needed_sent", 1)],
            )
        },
        case(
            "oversized with IP options: the quote carries them",
            tcp_vip(),
            from_router(&too_big_options),
            Expect::Reply(frag_needed_reply(&from_router(&too_big_options), 1500)),
            FRAG_NEEDED,
        ),
        case(
            "oversized UDP with DF: fragmentation needed quoting the UDP header",
            tcp_vip(),
            from_router(&udp_too_big),
            Expect::Reply(frag_needed_reply(&from_router(&udp_too_big), 1500)),
            FRAG_NEEDED,
        ),
        Case {
            icmp_rate: 0,
            ..case(
                "ICMP errors off (rate 0): oversized DF packet dropped, counted",
                tcp_vip(),
                from_router(&too_big),
                Expect::Drop,
                &[("flow_misses", 1), ("icmp_rate_limited", 1)],
            )
        },
        case(
            "oversized from a multicast source: no ICMP to it, dropped",
            tcp_vip(),
            from_router(&too_big_bad_source),
            Expect::Drop,
            &[("flow_misses", 1), ("drop_too_big", 1)],
        ),
        case(
            "non-VIP address passes",
            tcp_vip(),
            from_router(&Ipv4::tcp(CLIENT, 40000, NOT_VIP, 80, TCP_SYN)),
            Expect::Pass,
            PASSED,
        ),
        case(
            "VIP address on another port passes",
            tcp_vip(),
            from_router(&Ipv4::tcp(CLIENT, 40000, VIP, 8080, TCP_SYN)),
            Expect::Pass,
            PASSED,
        ),
        case(
            "VIP port with the other protocol passes",
            tcp_vip(),
            from_router(&Ipv4::udp(CLIENT, 40000, VIP, 80)),
            Expect::Pass,
            PASSED,
        ),
        case(
            "ICMP echo to a VIP address: answered by the balancer",
            tcp_vip(),
            from_router(&echo_request(CLIENT, VIP, b"ping payload")),
            Expect::Reply(reply_from_lb(
                None,
                &echo_reply(CLIENT, VIP, b"ping payload"),
            )),
            ECHO_REPLY,
        ),
        case(
            "VLAN-tagged echo with Ethernet padding: tag kept, padding trimmed",
            tcp_vip(),
            padded_echo,
            Expect::Reply(reply_from_lb(Some(0x0064), &echo_reply(CLIENT, VIP, b""))),
            ECHO_REPLY,
        ),
        case(
            "echo with the VIP's icmp_echo off: passed to the kernel",
            no_echo(tcp_vip()),
            from_router(&echo_request(CLIENT, VIP, b"ping")),
            Expect::Pass,
            PASSED,
        ),
        Case {
            before: vec![Step::Apply(no_echo(tcp_vip()))],
            ..case(
                "echo turned off on every VIP of the address by a change: passed",
                tcp_vip(),
                from_router(&echo_request(CLIENT, VIP, b"ping")),
                Expect::Pass,
                PASSED,
            )
        },
        Case {
            before: vec![Step::Apply(tcp_vip())],
            ..case(
                "echo turned on by a change: answered",
                no_echo(tcp_vip()),
                from_router(&echo_request(CLIENT, VIP, b"ping")),
                Expect::Reply(reply_from_lb(None, &echo_reply(CLIENT, VIP, b"ping"))),
                ECHO_REPLY,
            )
        },
        case(
            "echo to an address where one VIP allows it and one does not: answered",
            {
                let mut vips = tcp_vip();
                vips[0].icmp_echo = false;
                vips
            },
            from_router(&echo_request(CLIENT, VIP, b"ping")),
            Expect::Reply(reply_from_lb(None, &echo_reply(CLIENT, VIP, b"ping"))),
            ECHO_REPLY,
        ),
        case(
            "echo to a non-VIP address passes",
            tcp_vip(),
            from_router(&echo_request(CLIENT, NOT_VIP, b"ping")),
            Expect::Pass,
            PASSED,
        ),
        case(
            "echo with IP options passes (the kernel processes options)",
            tcp_vip(),
            from_router(&echo_with_options),
            Expect::Pass,
            PASSED,
        ),
        case(
            "echo fragment passes",
            tcp_vip(),
            from_router(&echo_fragment),
            Expect::Pass,
            PASSED,
        ),
        case(
            "echo from a broadcast source is not answered",
            tcp_vip(),
            from_router(&echo_request(Ipv4Addr::BROADCAST, VIP, b"ping")),
            Expect::Pass,
            PASSED,
        ),
        case(
            "echo reply (type 0) to a VIP passes",
            tcp_vip(),
            from_router(&echo_reply(VIP, CLIENT, b"pong")),
            Expect::Pass,
            PASSED,
        ),
        case(
            "ICMP shorter than its header",
            tcp_vip(),
            icmp_cut,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "ICMP error quoting a VIP packet: to the ring's backend of the reversed tuple",
            three_backends(),
            from_router(&error_about(&quoted_tcp, 28)),
            Expect::TxToRingChoice {
                src: CLIENT,
                sport: 40000,
            },
            ERROR_FORWARDED,
        ),
        Case {
            // The flow is pinned to B1, which then drains: the ring now
            // says B2, the pin still says B1.
            before: vec![
                Step::Send(syn.clone()),
                Step::Apply(vec![vip(80, Protocol::Tcp, &[(B1, 0), (B2, 1)])]),
            ],
            ..case(
                "ICMP error about a pinned flow: to the pinned backend",
                vec![vip(80, Protocol::Tcp, &[(B1, 1)])],
                from_router(&error_about(&quoted_tcp, 28)),
                Expect::TxTo(B1),
                ERROR_FORWARDED,
            )
        },
        case(
            "time exceeded quoting a whole UDP packet, outer IP options: forwarded",
            tcp_vip(),
            from_router(&{
                let mut e = icmp_error(ROUTER, VIP, 11, 0, [0; 4], &quoted_udp);
                e.options = vec![1, 1, 1, 1];
                e
            }),
            Expect::TxTo(B2),
            ERROR_FORWARDED,
        ),
        case(
            "VLAN-tagged ICMP error quoting a VIP packet with options: forwarded",
            tcp_vip(),
            tagged(&error_about(&quoted_tcp_options, 24 + 8)),
            Expect::TxTo(B1),
            ERROR_FORWARDED,
        ),
        case(
            "ICMP error about a flow of a VIP without backends: dropped",
            vec![vip(80, Protocol::Tcp, &[])],
            from_router(&error_about(&quoted_tcp, 28)),
            Expect::Drop,
            &[("drop_no_backend", 1)],
        ),
        case(
            "ICMP error quoting a packet to the VIP (not from it) passes",
            tcp_vip(),
            from_router(&error_about(&tcp(TCP_ACK).bytes(), 28)),
            Expect::Pass,
            PASSED,
        ),
        case(
            "ICMP error quoting a VIP address port that is no VIP passes",
            tcp_vip(),
            from_router(&error_about(
                &Ipv4::tcp(VIP, 8080, CLIENT, 40000, TCP_ACK).bytes(),
                28,
            )),
            Expect::Pass,
            PASSED,
        ),
        case(
            "ICMP error quoting an ICMP packet passes",
            tcp_vip(),
            from_router(&error_about(&echo_reply(CLIENT, VIP, b"x").bytes(), 28)),
            Expect::Pass,
            PASSED,
        ),
        case(
            "ICMP error with a quote cut inside the ports: malformed",
            tcp_vip(),
            from_router(&error_about(&quoted_tcp, 22)),
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "ICMP error with a quote cut inside the quoted header: malformed",
            tcp_vip(),
            from_router(&error_about(&quoted_tcp, 12)),
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "ICMP error whose quoted options run past the quote: malformed",
            tcp_vip(),
            from_router(&error_about(&quoted_tcp_options, 28)),
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "ICMP error quoting a header with IHL 4: malformed",
            tcp_vip(),
            from_router(&error_about(&quoted_ihl_4, 28)),
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "ICMP error quoting IP version 6: malformed",
            tcp_vip(),
            from_router(&error_about(&quoted_v6, 28)),
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "ICMP error whose quote lies in the Ethernet padding only: malformed",
            tcp_vip(),
            quote_in_padding,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "ARP passes",
            tcp_vip(),
            arp_request(CLIENT, VIP),
            Expect::Pass,
            PASSED,
        ),
        case("IPv6 passes", tcp_vip(), ipv6_udp(), Expect::Pass, PASSED),
        case(
            "VLAN-tagged non-VIP passes",
            tcp_vip(),
            ethernet(
                LB_MAC,
                ROUTER_MAC,
                Some(7),
                ETHERTYPE_IPV4,
                &Ipv4::tcp(CLIENT, 1, NOT_VIP, 80, TCP_SYN).bytes(),
            ),
            Expect::Pass,
            PASSED,
        ),
        case(
            "first fragment to a VIP address: dropped",
            tcp_vip(),
            from_router(&first_fragment),
            Expect::Drop,
            &[("drop_fragment", 1)],
        ),
        case(
            "TCP fragment to a VIP address: dropped",
            tcp_vip(),
            from_router(&tcp_fragment),
            Expect::Drop,
            &[("drop_fragment", 1)],
        ),
        case(
            "VLAN-tagged fragment to a VIP address: dropped",
            tcp_vip(),
            tagged(&first_fragment),
            Expect::Drop,
            &[("drop_fragment", 1)],
        ),
        case(
            "VLAN-tagged truncated IPv4 header",
            tcp_vip(),
            tagged_truncated,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "VLAN-tagged, oversized once encapsulated: fragmentation needed, tag kept",
            tcp_vip(),
            tagged(&too_big),
            Expect::Reply(frag_needed_reply(&tagged(&too_big), 1500)),
            FRAG_NEEDED,
        ),
        case(
            "VLAN-tagged, exactly fits the MTU once encapsulated",
            tcp_vip(),
            tagged(&fits),
            Expect::TxTo(B1),
            TX_NEW,
        ),
        case(
            "IPv4 total length too short for UDP",
            tcp_vip(),
            udp_len_too_short,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "later fragment to a VIP address: dropped",
            tcp_vip(),
            from_router(&later_fragment),
            Expect::Drop,
            &[("drop_fragment", 1)],
        ),
        case(
            "fragment to another address passes",
            tcp_vip(),
            from_router(&fragment_elsewhere),
            Expect::Pass,
            PASSED,
        ),
        case(
            "truncated TCP header to another address: passed as not ours (the filter comes first)",
            tcp_vip(),
            truncated_elsewhere,
            Expect::Pass,
            PASSED,
        ),
        case(
            "truncated 802.1Q tag",
            tcp_vip(),
            full[..12]
                .iter()
                .chain(&[0x81, 0x00, 0x00])
                .copied()
                .collect(),
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "truncated IPv4 header",
            tcp_vip(),
            full[..14 + 19].to_vec(),
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "IP version 6 under the IPv4 ethertype",
            tcp_vip(),
            not_version_4,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "IPv4 header length below 20 bytes",
            tcp_vip(),
            bad_ihl,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "IPv4 options cut short",
            tcp_vip(),
            options_cut,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "IPv4 total length beyond the frame",
            tcp_vip(),
            len_too_long,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "IPv4 total length too short for TCP",
            tcp_vip(),
            len_too_short_for_tcp,
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "truncated TCP header",
            tcp_vip(),
            full[..14 + 20 + 12].to_vec(),
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "truncated UDP header",
            tcp_vip(),
            udp_full[..14 + 20 + 6].to_vec(),
            Expect::Pass,
            MALFORMED,
        ),
        case(
            "VIP without backends: dropped",
            vec![vip(80, Protocol::Tcp, &[])],
            syn.clone(),
            Expect::Drop,
            &[("flow_misses", 1), ("drop_no_backend", 1)],
        ),
        case(
            "VIP whose only backend drains: no new flows",
            vec![vip(80, Protocol::Tcp, &[(B1, 0)])],
            syn.clone(),
            Expect::Drop,
            &[("flow_misses", 1), ("drop_no_backend", 1)],
        ),
        Case {
            before: vec![
                Step::Send(syn.clone()),
                Step::Apply(vec![vip(80, Protocol::Tcp, &[(B1, 0), (B2, 1)])]),
            ],
            ..case(
                "draining backend keeps its established flow",
                vec![vip(80, Protocol::Tcp, &[(B1, 1)])],
                ack.clone(),
                Expect::TxTo(B1),
                TX_HIT,
            )
        },
        Case {
            before: vec![
                Step::Send(syn.clone()),
                Step::Apply(vec![vip(80, Protocol::Tcp, &[(B1, 0), (B2, 1)])]),
            ],
            ..case(
                "draining backend gets no new flow",
                vec![vip(80, Protocol::Tcp, &[(B1, 1)])],
                syn.clone(),
                Expect::TxTo(B2),
                TX_NEW,
            )
        },
        Case {
            before: vec![
                Step::Send(syn.clone()),
                Step::Apply(vec![vip(80, Protocol::Tcp, &[(B2, 1)])]),
            ],
            ..case(
                "backend removed mid-flow: the flow is re-selected",
                vec![vip(80, Protocol::Tcp, &[(B1, 1)])],
                ack.clone(),
                Expect::TxTo(B2),
                &[("flow_reselected", 1), ("flow_misses", 1), ("tx", 1)],
            )
        },
        Case {
            // B1 leaves, then B3 arrives and takes B1's free backend id:
            // the slot is active again, only the generation tells the
            // pinned flow apart.
            before: vec![
                Step::Send(syn.clone()),
                Step::Apply(vec![vip(80, Protocol::Tcp, &[])]),
                Step::Apply(vec![vip(80, Protocol::Tcp, &[(B3, 1)])]),
            ],
            ..case(
                "backend replaced in its slot: generation mismatch re-selects",
                vec![vip(80, Protocol::Tcp, &[(B1, 1)])],
                ack.clone(),
                Expect::TxTo(B3),
                &[("flow_reselected", 1), ("flow_misses", 1), ("tx", 1)],
            )
        },
        Case {
            before: vec![
                Step::Send(syn.clone()),
                Step::Apply(vec![vip(80, Protocol::Tcp, &[(B1, 1), (B2, 1), (B3, 1)])]),
            ],
            ..case(
                "backend added: the established flow stays",
                vec![vip(80, Protocol::Tcp, &[(B1, 1)])],
                ack.clone(),
                Expect::TxTo(B1),
                TX_HIT,
            )
        },
        Case {
            before: vec![Step::Apply(vec![])],
            ..case(
                "VIP removed: its traffic passes",
                tcp_vip(),
                syn.clone(),
                Expect::Pass,
                PASSED,
            )
        },
        Case {
            // The UDP VIP keeps the address in the filter; the pin of the
            // removed TCP VIP names a deactivated backend.
            before: vec![
                Step::Send(syn.clone()),
                Step::Apply(vec![vip(53, Protocol::Udp, &[(B2, 1)])]),
            ],
            ..case(
                "established flow of a removed VIP on a shared address passes",
                tcp_vip(),
                ack.clone(),
                Expect::Pass,
                PASSED,
            )
        },
        Case {
            mtu: 1400,
            ..case(
                "a smaller static MTU is honoured: its MTU - 20 is advertised",
                tcp_vip(),
                from_router(&fits),
                Expect::Reply(frag_needed_reply(&from_router(&fits), 1400)),
                FRAG_NEEDED,
            )
        },
    ];
    cases.extend(gue_cases());
    cases.extend(ipv6::ipv6_cases());
    cases
}

/// `one_backend_each` with GUE to `GUE_PORT` on both VIPs.
fn gue_vips() -> Vec<VipSpec> {
    let mut vips = one_backend_each();
    for v in &mut vips {
        v.encap = Encap::Gue { port: GUE_PORT };
    }
    vips
}

/// GUE VIPs: the same paths as IP-in-IP, with an outer UDP header whose
/// source port follows the flow hash, and 8 bytes less room for the client.
fn gue_cases() -> Vec<Case> {
    // 1500-byte MTU: the inner packet may be at most 1472 bytes in GUE.
    let fits = tcp(TCP_ACK).payload(&vec![0xab; 1472 - 40]);
    let too_big = tcp(TCP_ACK).payload(&vec![0xab; 1473 - 40]);
    let mut tos_udp = udp();
    tos_udp.tos = 0xb9;
    let mut trailer = from_router(&tcp(TCP_SYN));
    trailer.extend_from_slice(&[0xee; 6]);
    let other_flow = Ipv4::tcp(OTHER_CLIENT, 50123, VIP, 80, TCP_SYN);
    // An ICMP error about the flow of `tcp(..)` goes to its backend in GUE,
    // on that flow's own outer source port.
    let quoted = Ipv4::tcp(VIP, 80, CLIENT, 40000, TCP_ACK).bytes();
    let error = icmp_error(ROUTER, VIP, 3, 4, [0, 0, 0x05, 0x78], &quoted[..28]);
    let error_in_gue = ethernet(
        NEXT_HOP_MAC,
        LB_MAC,
        None,
        ETHERTYPE_IPV4,
        &gue(
            xdp::LB_SOURCE,
            B1,
            gue_source_port(&tcp(TCP_SYN)),
            GUE_PORT,
            error.tos,
            &error.bytes(),
        ),
    );
    vec![
        case(
            "GUE: a SYN goes out in UDP to the GUE port",
            gue_vips(),
            from_router(&tcp(TCP_SYN)),
            Expect::GueTo(B1),
            TX_NEW,
        ),
        Case {
            before: vec![Step::Send(from_router(&tcp(TCP_SYN)))],
            ..case(
                "GUE: an established packet, the same outer ports",
                gue_vips(),
                from_router(&tcp(TCP_ACK | TCP_PSH)),
                Expect::GueTo(B1),
                TX_HIT,
            )
        },
        case(
            "GUE: another flow, another outer source port",
            gue_vips(),
            from_router(&other_flow),
            Expect::GueTo(B1),
            TX_NEW,
        ),
        case(
            "GUE: UDP, TOS inherited by the outer header",
            gue_vips(),
            from_router(&tos_udp),
            Expect::GueTo(B2),
            TX_NEW,
        ),
        case(
            "GUE: VLAN tag kept",
            gue_vips(),
            tagged(&tcp(TCP_SYN)),
            Expect::GueTo(B1),
            TX_NEW,
        ),
        case(
            "GUE: a trailer is trimmed, not tunnelled",
            gue_vips(),
            trailer,
            Expect::GueTo(B1),
            TX_NEW,
        ),
        case(
            "GUE: the inner packet exactly fits the MTU with 28 bytes of outer headers",
            gue_vips(),
            from_router(&fits),
            Expect::GueTo(B1),
            TX_NEW,
        ),
        case(
            "GUE: one byte more gets fragmentation needed with MTU - 28",
            gue_vips(),
            from_router(&too_big),
            Expect::Reply(frag_needed_reply_with_overhead(
                &from_router(&too_big),
                1500,
                28,
            )),
            FRAG_NEEDED,
        ),
        Case {
            before: vec![Step::Send(from_router(&tcp(TCP_SYN)))],
            ..case(
                "GUE: an ICMP error about a flow reaches its backend on the flow's tunnel",
                gue_vips(),
                from_router(&error),
                Expect::Reply(error_in_gue),
                ERROR_FORWARDED,
            )
        },
        Case {
            before: vec![
                Step::Send(from_router(&tcp(TCP_SYN))),
                Step::Apply(one_backend_each()),
            ],
            ..case(
                "GUE turned off: the established flow goes on in IP-in-IP",
                gue_vips(),
                from_router(&tcp(TCP_ACK)),
                Expect::TxTo(B1),
                TX_HIT,
            )
        },
    ]
}

#[test]
fn balancer_fixtures() {
    let cases = cases();
    assert!(
        cases.len() >= 30,
        "the fixture table must keep at least 30 cases"
    );
    for case in cases {
        let name = case.name;
        let mut config = static_config(case.mtu);
        config.icmp_rate = case.icmp_rate;
        let mut lb = Balancer::load(&test_options(config), &case.vips);
        for step in &case.before {
            match step {
                Step::Send(frame) => {
                    let (verdict, _) = lb.run(frame);
                    assert_eq!(verdict, XDP_TX, "{name}: a setup packet was not forwarded");
                }
                Step::Apply(vips) => {
                    lb.dataplane
                        .apply(vips)
                        .unwrap_or_else(|e| panic!("{name}: applying a change: {e:#}"));
                }
            }
        }
        let before = lb.stats();
        let (verdict, output) = lb.run(&case.input);
        let after = lb.stats();

        let (want_verdict, want_output) = match case.expect {
            Expect::Pass => (XDP_PASS, Some(case.input.clone())),
            Expect::Drop => (XDP_DROP, None),
            Expect::TxTo(backend) => (XDP_TX, Some(encapsulated(&case.input, backend))),
            Expect::GueTo(backend) => (
                XDP_TX,
                Some(gue_encapsulated(&case.input, backend, GUE_PORT)),
            ),
            Expect::Reply(ref frame) => (XDP_TX, Some(frame.clone())),
            Expect::TxToRingChoice { src, sport } => {
                let vip = case.vips[0].vip;
                let backend = lb
                    .dataplane
                    .ring_choice(&vip, std::net::IpAddr::V4(src), sport)
                    .expect("the VIP has a backend");
                (XDP_TX, Some(encapsulated(&case.input, ipv4(backend))))
            }
        };
        assert_eq!(
            verdict,
            want_verdict,
            "{name}: verdict {} instead of {}",
            verdict_name(verdict),
            verdict_name(want_verdict)
        );
        if let Some(want) = want_output {
            assert_eq!(hex(&output), hex(&want), "{name}: output bytes differ");
        }
        xdp::assert_counter_deltas(name, &before, &after, case.counters);
        println!("ok: {name}");
    }
}

/// Per-VIP and per-backend counters follow the packets.
#[test]
fn vip_and_backend_counters() {
    let vips = three_backends();
    let mut lb = Balancer::load(&test_options(static_config(MTU)), &vips);
    let vip = vips[0].vip;
    let mut frames = 0u64;
    let mut bytes = 0u64;
    for sport in 1000..1100u16 {
        for flags in [TCP_SYN, TCP_ACK, TCP_ACK | TCP_PSH] {
            let frame = from_router(&Ipv4::tcp(CLIENT, sport, VIP, 80, flags));
            let (verdict, _) = lb.run(&frame);
            assert_eq!(verdict, XDP_TX);
            frames += 1;
            bytes += frame.len() as u64;
        }
    }

    let maps = lb.dataplane.maps();
    let vip_stats = maps
        .vip_stats(lb.dataplane.vip_id(&vip).expect("VIP id"))
        .expect("VIP stats");
    assert_eq!(
        (vip_stats.packets, vip_stats.bytes, vip_stats.new_flows),
        (frames, bytes, 100)
    );
    let mut per_backend = Vec::new();
    for b in [B1, B2, B3] {
        let id = lb
            .dataplane
            .backend_id(&vip, std::net::IpAddr::V4(b))
            .expect("backend id");
        let expected_flows = (1000..1100u16)
            .filter(|&p| {
                lb.dataplane
                    .ring_choice(&vip, std::net::IpAddr::V4(CLIENT), p)
                    == Some(std::net::IpAddr::V4(b))
            })
            .count() as u64;
        let s = maps.backend_stats(id).expect("backend stats");
        assert_eq!(s.packets, expected_flows * 3, "backend {b}: packets");
        per_backend.push(s.packets);
    }
    assert_eq!(per_backend.iter().sum::<u64>(), frames);
    assert!(
        per_backend.iter().all(|&p| p > 0),
        "100 flows reach all three backends: {per_backend:?}"
    );

    // A dropped packet counts for neither its VIP nor any backend.
    let ids: Vec<u32> = [B1, B2, B3]
        .iter()
        .map(|&b| {
            lb.dataplane
                .backend_id(&vip, std::net::IpAddr::V4(b))
                .expect("backend id")
        })
        .collect();
    let vip_id = lb.dataplane.vip_id(&vip).expect("VIP id");
    let snapshot = |lb: &Balancer| {
        let maps = lb.dataplane.maps();
        let v = maps.vip_stats(vip_id).expect("VIP stats");
        let b: Vec<u64> = ids
            .iter()
            .map(|&id| maps.backend_stats(id).expect("backend stats").packets)
            .collect();
        (v.packets, v.bytes, v.new_flows, b)
    };
    let before = snapshot(&lb);
    let mut too_big = Ipv4::tcp(CLIENT, 1000, VIP, 80, TCP_ACK).payload(&[0; 1470]);
    too_big.frags = 0;
    let (verdict, _) = lb.run(&from_router(&too_big));
    assert_eq!(
        verdict_name(verdict),
        "XDP_DROP",
        "1510-byte packet without DF, MTU 1500"
    );
    assert_eq!(
        snapshot(&lb),
        before,
        "a drop moved the VIP or backend counters"
    );
    // Nor does a "fragmentation needed" sent back instead.
    too_big.frags = 0x4000;
    let (verdict, _) = lb.run(&from_router(&too_big));
    assert_eq!(verdict_name(verdict), "XDP_TX", "1510-byte packet with DF");
    assert_eq!(
        snapshot(&lb),
        before,
        "an ICMP reply moved the VIP or backend counters"
    );
}

/// Bytes past the IP total length are trimmed, so the VIP and backend
/// counters count the client's packet, not its trailer.
#[test]
fn a_trailer_is_neither_sent_nor_counted() {
    let vips = one_backend_each();
    let mut lb = Balancer::load(&test_options(static_config(MTU)), &vips);
    let vip = vips[0].vip;
    let packet = from_router(&tcp(TCP_SYN).payload(&[0x5a; 100]));
    let mut trailered = packet.clone();
    trailered.extend_from_slice(&[0xee; 7]);
    let (verdict, output) = lb.run(&trailered);
    assert_eq!(verdict_name(verdict), "XDP_TX");
    assert_eq!(
        hex(&output),
        hex(&encapsulated(&packet, B1)),
        "the trailer travelled inside the tunnel"
    );
    let maps = lb.dataplane.maps();
    let vip_stats = maps
        .vip_stats(lb.dataplane.vip_id(&vip).expect("VIP id"))
        .expect("VIP stats");
    let backend = maps
        .backend_stats(
            lb.dataplane
                .backend_id(&vip, std::net::IpAddr::V4(B1))
                .expect("backend id"),
        )
        .expect("backend stats");
    let len = packet.len() as u64;
    assert_eq!(
        (vip_stats.packets, vip_stats.bytes),
        (1, len),
        "VIP counters"
    );
    assert_eq!(
        (backend.packets, backend.bytes),
        (1, len),
        "backend counters"
    );
}

/// A backend id or VIP id that is freed and handed to a new backend or VIP
/// starts from zero counters: they never inherit their predecessor's.
#[test]
fn reused_ids_start_from_zero_counters() {
    let mut lb = Balancer::load(
        &test_options(static_config(MTU)),
        &[vip(80, Protocol::Tcp, &[(B1, 1)])],
    );
    let tcp80 = VipAddr {
        addr: std::net::IpAddr::V4(VIP),
        port: 80,
        proto: Protocol::Tcp,
    };
    for sport in 2000..2010u16 {
        let (verdict, _) = lb.run(&from_router(&Ipv4::tcp(CLIENT, sport, VIP, 80, TCP_SYN)));
        assert_eq!(verdict, XDP_TX);
    }
    let old_backend = lb
        .dataplane
        .backend_id(&tcp80, std::net::IpAddr::V4(B1))
        .expect("B1 id");
    let old_vip = lb.dataplane.vip_id(&tcp80).expect("VIP id");
    let maps = lb.dataplane.maps();
    assert_eq!(maps.backend_stats(old_backend).expect("stats").packets, 10);
    assert_eq!(maps.vip_stats(old_vip).expect("stats").packets, 10);

    // B1 leaves, then B2 arrives and takes B1's freed id.
    lb.dataplane
        .apply(&[vip(80, Protocol::Tcp, &[])])
        .expect("removing B1");
    lb.dataplane
        .apply(&[vip(80, Protocol::Tcp, &[(B2, 1)])])
        .expect("adding B2");
    let new_backend = lb
        .dataplane
        .backend_id(&tcp80, std::net::IpAddr::V4(B2))
        .expect("B2 id");
    assert_eq!(new_backend, old_backend, "the test needs the id reused");
    let s = lb
        .dataplane
        .maps()
        .backend_stats(new_backend)
        .expect("stats");
    assert_eq!((s.packets, s.bytes), (0, 0), "B2 inherited B1's counters");

    // The VIP leaves, another arrives with its freed id.
    lb.dataplane.apply(&[]).expect("removing the VIP");
    lb.dataplane
        .apply(&[vip(81, Protocol::Tcp, &[(B3, 1)])])
        .expect("adding TCP/81");
    let tcp81 = VipAddr { port: 81, ..tcp80 };
    let new_vip = lb.dataplane.vip_id(&tcp81).expect("VIP id");
    assert_eq!(new_vip, old_vip, "the test needs the id reused");
    let s = lb.dataplane.maps().vip_stats(new_vip).expect("stats");
    assert_eq!(
        (s.packets, s.bytes, s.new_flows),
        (0, 0, 0),
        "TCP/81 inherited TCP/80's counters"
    );
    let (verdict, _) = lb.run(&from_router(&Ipv4::tcp(CLIENT, 2000, VIP, 81, TCP_SYN)));
    assert_eq!(verdict, XDP_TX);
    let s = lb.dataplane.maps().vip_stats(new_vip).expect("stats");
    assert_eq!((s.packets, s.new_flows), (1, 1));
}

/// Adopting the maps (as a restarted agent does) takes them over unchanged;
/// a second active id for one backend, as an interrupted change could leave,
/// is deactivated and the id the ring uses stays.
#[test]
fn adoption_takes_over_the_maps_and_drops_a_duplicate_id() {
    let vips = three_backends();
    let Balancer {
        mut ebpf,
        dataplane,
    } = Balancer::load(&test_options(static_config(MTU)), &vips);
    let vip = vips[0].vip;
    let b1_id = dataplane
        .backend_id(&vip, std::net::IpAddr::V4(B1))
        .expect("B1 id");
    let vip_id = dataplane.vip_id(&vip).expect("VIP id");
    let mut maps = dataplane.into_maps();
    let duplicate = 100;
    maps.set_backend(
        duplicate,
        &lb_common::Backend {
            addr: lb_common::ipv4_to_wire(B1.octets()),
            generation: 7,
            flags: lb_common::BACKEND_F_ACTIVE,
            vip_id,
            ..Default::default()
        },
    )
    .expect("writing the duplicate");

    let mut adopted = DataPlane::adopt(maps).expect("adopting");
    assert_eq!(
        adopted.backend_id(&vip, std::net::IpAddr::V4(B1)),
        Some(b1_id),
        "the ring's id stays"
    );
    let entries = adopted.maps().backend_entries().expect("backends");
    let (_, dup) = entries
        .iter()
        .find(|(id, _)| *id == duplicate)
        .expect("the duplicate's entry");
    assert_eq!(
        dup.flags & lb_common::BACKEND_F_ACTIVE,
        0,
        "duplicate deactivated"
    );
    let report = adopted.apply(&vips).expect("applying the same VIPs");
    assert!(
        report.rings_written.is_empty() && report.backends_added == 0,
        "the adopted maps already serve the VIPs: {report:?}"
    );
    let syn = from_router(&Ipv4::tcp(CLIENT, 3000, VIP, 80, TCP_SYN));
    let (verdict, _) = run_program(&mut ebpf, lb_common::names::BALANCER_PROGRAM, &syn);
    assert_eq!(verdict_name(verdict), "XDP_TX");
}

/// The agent's model of the ring answers exactly what the kernel does, for
/// many flows (the basis of "which backend gets this flow").
#[test]
fn kernel_and_agent_agree_on_many_flows() {
    let vips = vec![vip(80, Protocol::Tcp, &[(B1, 1), (B2, 2), (B3, 3)])];
    let mut lb = Balancer::load(&test_options(static_config(MTU)), &vips);
    for i in 0..500u16 {
        let src = Ipv4Addr::new(198, 18, 200 + (i % 7) as u8, (i % 251) as u8);
        let sport = 1024 + i * 61;
        let frame = from_router(&Ipv4::tcp(src, sport, VIP, 80, TCP_SYN));
        let (verdict, out) = lb.run(&frame);
        assert_eq!(verdict, XDP_TX);
        let expected = lb
            .dataplane
            .ring_choice(&vips[0].vip, std::net::IpAddr::V4(src), sport)
            .expect("backend");
        assert_eq!(
            &out[30..34],
            &octets4(expected),
            "flow {src}:{sport}: kernel and agent disagree"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// No input, however malformed, makes the program abort or write outside
/// the packet: thousands of mutated and truncated frames (deterministic
/// pseudo-random), each with a sane verdict and output size.
#[test]
fn mutated_frames_never_abort() {
    let vips = vec![
        vip(80, Protocol::Tcp, &[(B1, 1), (B2, 1)]),
        vip(53, Protocol::Udp, &[(B3, 1)]),
    ];
    let mut lb = Balancer::load(&test_options(static_config(MTU)), &vips);
    let mut with_options = tcp(TCP_SYN);
    with_options.options = vec![1; 12];
    let seeds = [
        from_router(&tcp(TCP_SYN)),
        from_router(&udp()),
        from_router(&with_options),
        ethernet(
            LB_MAC,
            ROUTER_MAC,
            Some(5),
            ETHERTYPE_IPV4,
            &tcp(TCP_ACK).bytes(),
        ),
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut verdicts = [0u32; 5];
    for i in 0..4000 {
        let mut frame = seeds[i % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % frame.len() as u64) as usize;
            match next() % 3 {
                0 => frame[at] = next() as u8,
                1 => frame[at] ^= 1 << (next() % 8),
                _ => frame.truncate(at.max(14)),
            }
        }
        let (verdict, out) = lb.run(&frame);
        assert!(
            matches!(verdict, XDP_PASS | XDP_DROP | XDP_TX),
            "frame {i} ({}) got {}",
            hex(&frame),
            verdict_name(verdict)
        );
        if verdict == XDP_TX {
            // The client's IP packet, trailer trimmed, behind a 20-byte
            // outer header whose length is what was sent.
            let l3 = if frame[12..14] == ETHERTYPE_VLAN.to_be_bytes() {
                18
            } else {
                14
            };
            let inner_len = u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]) as usize;
            assert_eq!(
                out.len(),
                l3 + 20 + inner_len,
                "frame {i}: encapsulation adds exactly 20 bytes to the IP packet"
            );
            let outer_len = u16::from_be_bytes([out[l3 + 2], out[l3 + 3]]) as usize;
            assert_eq!(
                outer_len,
                out.len() - l3,
                "frame {i}: outer length is not the frame's"
            );
        } else if verdict == XDP_PASS {
            assert_eq!(
                out.len(),
                frame.len(),
                "frame {i}: a passed frame keeps its size"
            );
        }
        verdicts[verdict as usize] += 1;
    }
    println!(
        "verdicts over 4000 mutated frames: pass {}, drop {}, tx {}",
        verdicts[2], verdicts[1], verdicts[3]
    );
    assert!(
        verdicts[2] > 0 && verdicts[3] > 0,
        "the mutations exercise both passing and forwarding"
    );
}

/// Two LB nodes given the same VIPs report the same table digest however
/// they got there (other VIP order, other backend order, other ids and
/// ring regions from a history of changes), and the digest is the one
/// the map-free model computes. A different backend set or weight changes
/// it; a restarted agent that adopts the maps reports it unchanged.
#[test]
fn nodes_with_the_same_config_report_the_same_table_digest() {
    const B4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 4);
    let web = |backends: &[(Ipv4Addr, u32)]| vip(80, Protocol::Tcp, backends);
    let dns = vip(53, Protocol::Udp, &[(B2, 1), (B3, 2)]);
    let target = vec![web(&[(B1, 1), (B2, 1), (B3, 2), (B4, 1)]), dns.clone()];

    // Node A: straight to the target.
    let a = Balancer::load(&test_options(static_config(MTU)), &target);
    // Node B: the UDP VIP first, then the web VIP built up backend by
    // backend in another order, with B1 removed and added back (new ids,
    // new ring regions, backend lists in reverse order).
    let mut b = Balancer::load(
        &test_options(static_config(MTU)),
        std::slice::from_ref(&dns),
    );
    for step in [
        vec![dns.clone(), web(&[(B4, 1), (B1, 1)])],
        vec![web(&[(B4, 1), (B3, 2), (B2, 1)]), dns.clone()],
        vec![web(&[(B4, 1), (B3, 2), (B2, 1), (B1, 1)]), dns.clone()],
    ] {
        b.dataplane.apply(&step).expect("applying a step on node B");
    }
    let web_vip = target[0].vip;
    assert_ne!(
        a.dataplane.backend_id(&web_vip, std::net::IpAddr::V4(B1)),
        b.dataplane.backend_id(&web_vip, std::net::IpAddr::V4(B1)),
        "the nodes should use different ids, or the test proves little"
    );
    for spec in &target {
        let da = a.dataplane.table_digest(&spec.vip).expect("digest A");
        let db = b.dataplane.table_digest(&spec.vip).expect("digest B");
        let model = lb_userspace::dataplane::RingModel::new(spec)
            .expect("model")
            .digest();
        assert_eq!(da.as_deref(), Some(model.as_str()), "node A, {}", spec.vip);
        assert_eq!(db, da, "nodes disagree on {}", spec.vip);
        assert_eq!(model.len(), 32);
    }
    let other = |spec: VipSpec| {
        lb_userspace::dataplane::RingModel::new(&spec)
            .expect("model")
            .digest()
    };
    let base = other(target[0].clone());
    assert_ne!(other(web(&[(B1, 1), (B2, 1), (B3, 2)])), base, "B4 missing");
    assert_ne!(
        other(web(&[(B1, 1), (B2, 1), (B3, 1), (B4, 1)])),
        base,
        "weight"
    );
    assert_eq!(
        a.dataplane
            .table_digest(&VipAddr {
                port: 81,
                ..web_vip
            })
            .expect("unknown VIP"),
        None
    );

    let before = b.dataplane.table_digest(&web_vip).expect("digest");
    let adopted = DataPlane::adopt(b.dataplane.into_maps()).expect("adopting");
    assert_eq!(adopted.table_digest(&web_vip).expect("digest"), before);
}

/// "Fragmentation needed" is rate limited per CPU: a bucket of `burst`
/// messages refilled at `icmp_rate` per second. Past the burst, oversized
/// packets are dropped and counted; echo replies are not limited.
#[test]
fn frag_needed_is_rate_limited_per_cpu() {
    // The bucket is per CPU: every run must happen on the same one.
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning the test thread to CPU 0"
        );
    }
    let mut config = static_config(MTU);
    config.icmp_rate = 1;
    config.icmp_burst = 3;
    let mut lb = Balancer::load(&test_options(config), &one_backend_each());
    let too_big = from_router(&tcp(TCP_ACK).payload(&vec![0xab; 1481 - 40]));
    let want = frag_needed_reply(&too_big, 1500);
    let before = lb.stats();
    for i in 0..3 {
        let (verdict, out) = lb.run(&too_big);
        assert_eq!(verdict_name(verdict), "XDP_TX", "message {i} of the burst");
        assert_eq!(hex(&out), hex(&want), "message {i} of the burst");
    }
    for i in 0..4 {
        let (verdict, _) = lb.run(&too_big);
        assert_eq!(
            verdict_name(verdict),
            "XDP_DROP",
            "packet {i} past the burst"
        );
    }
    let (verdict, _) = lb.run(&from_router(&echo_request(CLIENT, VIP, b"ping")));
    assert_eq!(verdict_name(verdict), "XDP_TX", "echo is not rate limited");
    xdp::assert_counter_deltas(
        "rate limit",
        &before,
        &lb.stats(),
        &[
            ("flow_misses", 1),
            ("flow_hits", 6),
            ("icmp_frag_needed_sent", 3),
            ("icmp_rate_limited", 4),
            ("icmp_echo_replies", 1),
        ],
    );
}

/// An ICMP error about a flow without a pin is sent by the ring's choice
/// but pins nothing: the flow's first real packet decides.
#[test]
fn an_icmp_error_pins_no_flow() {
    let vips = three_backends();
    let mut lb = Balancer::load(&test_options(static_config(MTU)), &vips);
    let quoted = Ipv4::tcp(VIP, 80, CLIENT, 40000, TCP_ACK).bytes();
    let error = from_router(&icmp_error(
        ROUTER,
        VIP,
        3,
        4,
        [0, 0, 0x05, 0x78],
        &quoted[..28],
    ));
    let before = lb.stats();
    let (verdict, _) = lb.run(&error);
    assert_eq!(verdict_name(verdict), "XDP_TX");
    // The same error again: still not a connection-table hit.
    let (verdict, _) = lb.run(&error);
    assert_eq!(verdict_name(verdict), "XDP_TX");
    // The client's own packet of that flow is a miss: nothing was pinned.
    let (verdict, _) = lb.run(&from_router(&tcp(TCP_ACK)));
    assert_eq!(verdict_name(verdict), "XDP_TX");
    xdp::assert_counter_deltas(
        "error then packet",
        &before,
        &lb.stats(),
        &[("icmp_errors_forwarded", 2), ("tx", 3), ("flow_misses", 1)],
    );
}

/// The IPv4 backend the agent names (these tests' backends are IPv4).
fn ipv4(addr: std::net::IpAddr) -> Ipv4Addr {
    match addr {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(a) => panic!("an IPv4 backend, not {a}"),
    }
}

fn octets4(addr: std::net::IpAddr) -> [u8; 4] {
    ipv4(addr).octets()
}
