//! Hostile input for the XDP programs: a deterministic generator of
//! malformed, truncated, lying and nested frames of both IP families, and
//! an oracle that checks what the programs did with each one. `cargo xtask
//! fuzz --runs N` and the fixed-seed corpus test (`tests/fuzz_corpus.rs`)
//! both drive it.
//!
//! What the oracle demands, for every frame:
//! - the verdict is PASS, DROP or TX: never XDP_ABORTED;
//! - a passed frame leaves exactly as it came (`balancer`), or is the inner
//!   packet of a tunnel to a local address, byte for byte but for a carried
//!   ECN mark (`decap`);
//! - a transmitted frame is either an encapsulation or an ICMP reply of
//!   the request's own family;
//! - an encapsulation carries a TCP or UDP packet to a VIP port (IPv6: after
//!   at most 4 hop-by-hop, routing or destination-options headers, none
//!   running past the packet), or an ICMP or ICMPv6 error to a VIP quoting
//!   a TCP or UDP packet from it, in the tunnel of that VIP port, and parses
//!   back: Ethernet (tag kept, ethertype the outer family's), then
//!   - to an IPv4 backend, a 20-byte outer IPv4 header (id 0, DF, TTL 64,
//!     the client's TOS or traffic class, protocol 4, 41 for an IPv6
//!     packet, or 17 for GUE) whose total length is the frame's and whose
//!     checksum is right; for GUE with a UDP header in between whose length
//!     is the outer length less 20, checksum 0, source port the flow's (in
//!     49152-65535) and destination the GUE port;
//!   - to an IPv6 backend, a 40-byte outer IPv6 header (hop limit 64, the
//!     client's TOS or traffic class, next header 4 or 41 as the inner
//!     version says, flow label `outer_flow_label` of the flow's hash)
//!     whose payload length is exactly the bytes after it;
//!   - from the LB's source of that family to a backend of the VIP port,
//!     within the MTU, carrying exactly the client's IP packet (its own
//!     length, never a trailer);
//! - an ICMP reply goes back to the sender (MACs swapped, tag and ethertype
//!   kept), a unicast address, from the VIP, its length the frame's:
//!   - IPv4: a 20-byte header with TTL 64 and right IP and ICMP checksums
//!     (for an echo reply: when the request's were right, as they are
//!     updated incrementally); an echo reply answers an echo request to
//!     the VIP and carries its identifier, sequence and data; a
//!     "fragmentation needed" answers a DF packet to a VIP port too big
//!     for its tunnel, advertises the MTU less the tunnel's overhead (20,
//!     28 for GUE, 40 to an IPv6 backend) and quotes the packet's IP
//!     header and 8 bytes;
//!   - IPv6: a 40-byte header with next header 58, hop limit 64 and an
//!     ICMPv6 checksum right over the pseudo-header (for an echo reply:
//!     when the request's was); an echo reply answers an echo request to
//!     the VIP without extension headers, keeps its traffic class and flow
//!     label and carries its identifier, sequence and data; a "packet too
//!     big" answers a packet to a VIP port too big for its tunnel, with
//!     traffic class and flow label 0, advertises max(MTU less the
//!     overhead, 1280) and quotes the packet's first min(length, 128)
//!     bytes rounded down to a multiple of 4;
//! - `decap` strips one outer header, only of a tunnel to its addresses:
//!   IPv4 IP-in-IP (4: IPv4 inside, 41: IPv6 inside) and GUE (to the GUE
//!   port, either inside, its UDP length the IP one's), IPv6 (next header
//!   4 or 41, its payload inside the frame); never a fragment, never a cut
//!   inner header; the ethertype follows the inner family and the ECN CE
//!   mark of the outer header is carried to an ECN-capable inner packet
//!   (IPv4: its checksum kept right), nothing else changes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::names;
use lb_userspace::{
    dataplane::{Protocol, VipAddr, VipSpec},
    encap::Encap,
    loader,
};

use crate::{
    packet::{
        ethernet, flow_hash4_of, flow_hash6_of, icmp6_packet, internet_checksum, ipv6_at,
        ipv6_header, Ipv4, Ipv6, Ipv6Ext, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, L4,
        LB_MAC, NEXT_HOP_MAC, ROUTER_MAC, TCP_ACK, TCP_SYN,
    },
    xdp::{
        run_program, static_config, test_options, Balancer, LB_SOURCE, LB_SOURCE6, XDP_DROP,
        XDP_PASS, XDP_TX,
    },
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const NOT_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
/// IPv4 backends; the first is also the decap program's local address.
pub const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 19, 0, 1),
    Ipv4Addr::new(198, 19, 0, 2),
    Ipv4Addr::new(198, 19, 0, 3),
];
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const NOT_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7);
/// A router on the way to the client, reporting errors about the VIP's
/// packets.
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 1);
/// Sources no reply may go to (RFC 4443 2.4): the balancer must leave
/// their packets unanswered.
const NOT_UNICAST6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::UNSPECIFIED,
    Ipv6Addr::LOCALHOST,
];
/// IPv6 backends; the first is also the decap program's local IPv6
/// address.
pub const BACKENDS6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 2),
];
pub const MTU: usize = 1500;
/// The VIPs' TCP and UDP ports (both families).
pub const TCP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 53;
/// The IPv4 VIP's TCP port whose backend is IPv6 (IPv4 in IPv6).
pub const TCP_PORT_4IN6: u16 = 443;
/// The IPv4 UDP VIP's encapsulation is GUE to this port, and `decap`
/// strips GUE sent to it.
pub const GUE_PORT: u16 = lb_common::DEFAULT_GUE_PORT;
/// The IPv6 VIP's UDP port (QUIC) whose IPv6 backends get GUE over IPv6.
pub const UDP_PORT_GUE6: u16 = 443;
const ETHERTYPE_QINQ: u16 = 0x88a8;
/// BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header
/// (EINVAL), as no NIC delivers one: shorter frames are padded to it.
const MIN_FRAME: usize = 14;
/// The smallest MTU a "packet too big" may advertise (RFC 8200 5).
const IPV6_MIN_MTU: usize = 1280;
/// How much of the packet a "packet too big" quotes at most.
const PTB_QUOTE_MAX: usize = 128;

/// How a VIP port's packets travel to its backends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tunnel {
    /// An outer IPv4 header: protocol 4, or 41 for an IPv6 packet.
    Ipip,
    /// An outer IPv4 and a UDP header.
    Gue,
    /// An outer IPv6 header: next header 41, or 4 for an IPv4 packet.
    Ip6,
    /// An outer IPv6 and a UDP header.
    Gue6,
}

impl Tunnel {
    fn overhead(self) -> usize {
        match self {
            Tunnel::Ipip => 20,
            Tunnel::Gue => 28,
            Tunnel::Ip6 => 40,
            Tunnel::Gue6 => 48,
        }
    }

    fn outer_v6(self) -> bool {
        matches!(self, Tunnel::Ip6 | Tunnel::Gue6)
    }

    fn is_gue(self) -> bool {
        matches!(self, Tunnel::Gue | Tunnel::Gue6)
    }
}

/// A VIP port of the fuzzed balancer.
struct VipPort {
    addr: IpAddr,
    proto: u8,
    port: u16,
    tunnel: Tunnel,
    backends: &'static [IpAddr],
}

/// The fuzzed balancer's VIP ports. Each port's backends are of one
/// family, so that the oracle knows from the port alone which tunnel a
/// packet takes and what a "packet too big" advertises.
static VIP_PORTS: [VipPort; 6] = [
    VipPort {
        addr: IpAddr::V4(VIP),
        proto: 6,
        port: TCP_PORT,
        tunnel: Tunnel::Ipip,
        backends: &[
            IpAddr::V4(BACKENDS[0]),
            IpAddr::V4(BACKENDS[1]),
            IpAddr::V4(BACKENDS[2]),
        ],
    },
    VipPort {
        addr: IpAddr::V4(VIP),
        proto: 17,
        port: UDP_PORT,
        tunnel: Tunnel::Gue,
        backends: &[IpAddr::V4(BACKENDS[0])],
    },
    VipPort {
        addr: IpAddr::V4(VIP),
        proto: 6,
        port: TCP_PORT_4IN6,
        tunnel: Tunnel::Ip6,
        backends: &[IpAddr::V6(BACKENDS6[1])],
    },
    VipPort {
        addr: IpAddr::V6(VIP6),
        proto: 6,
        port: TCP_PORT,
        tunnel: Tunnel::Ip6,
        backends: &[IpAddr::V6(BACKENDS6[0]), IpAddr::V6(BACKENDS6[1])],
    },
    // IPv6 in IPv4.
    VipPort {
        addr: IpAddr::V6(VIP6),
        proto: 17,
        port: UDP_PORT,
        tunnel: Tunnel::Ipip,
        backends: &[IpAddr::V4(BACKENDS[2])],
    },
    VipPort {
        addr: IpAddr::V6(VIP6),
        proto: 17,
        port: UDP_PORT_GUE6,
        tunnel: Tunnel::Gue6,
        backends: &[IpAddr::V6(BACKENDS6[0]), IpAddr::V6(BACKENDS6[1])],
    },
];

fn vip_port(addr: IpAddr, proto: u8, port: u16) -> Option<&'static VipPort> {
    VIP_PORTS
        .iter()
        .find(|p| p.addr == addr && p.proto == proto && p.port == port)
}

/// xorshift64*: small, fast, and the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    fn pick<T: Copy>(&mut self, of: &[T]) -> T {
        of[self.below(of.len())]
    }
}

fn tcp_flags(rng: &mut Rng) -> u8 {
    match rng.below(4) {
        0 => TCP_SYN,
        1 => TCP_ACK,
        2 => TCP_SYN | TCP_ACK,
        _ => rng.next_u64() as u8,
    }
}

/// Payload sizes from none to enough for the MTU to refuse the packet.
fn payload_len(rng: &mut Rng) -> usize {
    match rng.below(4) {
        0 => 0,
        1 => rng.below(64),
        2 => rng.below(1500),
        _ => 1400 + rng.below(100),
    }
}

fn client_port(rng: &mut Rng) -> u16 {
    1024 + rng.below(60000) as u16
}

/// A well-formed IPv4 TCP or UDP packet to a VIP port (or not), with
/// random flags, options and payload: the seed of most frames.
fn ip_packet(rng: &mut Rng) -> Ipv4 {
    let dst = if rng.chance(5) { NOT_VIP } else { VIP };
    let sport = client_port(rng);
    let mut ip = if rng.chance(3) {
        Ipv4::udp(CLIENT, sport, dst, UDP_PORT)
    } else {
        let dport = if rng.chance(4) {
            TCP_PORT_4IN6
        } else {
            TCP_PORT
        };
        Ipv4::tcp(CLIENT, sport, dst, dport, tcp_flags(rng))
    };
    if rng.chance(4) {
        let words = 1 + rng.below(10);
        ip.options = rng.bytes(4 * words);
    }
    ip.tos = rng.next_u64() as u8;
    if rng.chance(10) {
        // A fragment: more fragments, an offset, or both.
        ip.frags = [0x2000, 0x0001 + rng.below(0x1fff) as u16, 0x2010][rng.below(3)];
    }
    let len = payload_len(rng);
    ip.payload = rng.bytes(len);
    ip
}

/// 0-6 extension headers (half the packets have none), fragment headers
/// among them.
fn ext_chain(rng: &mut Rng) -> Vec<Ipv6Ext> {
    let n = if rng.chance(2) { 0 } else { 1 + rng.below(6) };
    (0..n)
        .map(|_| match rng.below(6) {
            0 => Ipv6Ext::padding(0, rng.below(3)),
            1 | 2 => Ipv6Ext::padding(60, rng.below(3)),
            3 => {
                let units = rng.below(2);
                Ipv6Ext {
                    kind: 43,
                    body: rng.bytes(6 + 8 * units),
                }
            }
            _ => {
                let offset = if rng.chance(2) { 0 } else { 1 + rng.below(100) };
                Ipv6Ext::fragment(offset as u16, rng.chance(2))
            }
        })
        .collect()
}

/// An IPv6 TCP or UDP packet to a VIP6 port (or not), with random traffic
/// class, flow label, extension headers (a length among them may run past
/// the end) and payload.
fn ip6_packet(rng: &mut Rng) -> Vec<u8> {
    let dst = if rng.chance(5) { NOT_VIP6 } else { VIP6 };
    let src = if rng.chance(12) {
        rng.pick(&NOT_UNICAST6)
    } else {
        CLIENT6
    };
    let sport = client_port(rng);
    let mut ip = if rng.chance(3) {
        let port = if rng.chance(2) {
            UDP_PORT
        } else {
            UDP_PORT_GUE6
        };
        Ipv6::udp(src, sport, dst, port)
    } else {
        Ipv6::tcp(src, sport, dst, TCP_PORT, tcp_flags(rng))
    };
    ip.tclass = rng.next_u64() as u8;
    ip.flow_label = rng.next_u64() as u32;
    ip.ext = ext_chain(rng);
    let len = payload_len(rng);
    ip.payload = rng.bytes(len);
    let mut bytes = ip.bytes();
    if !ip.ext.is_empty() && rng.chance(4) {
        let i = rng.below(ip.ext.len());
        let len_at = 40 + ip.ext[..i].iter().map(|e| 2 + e.body.len()).sum::<usize>() + 1;
        bytes[len_at] = rng.next_u64() as u8;
    }
    bytes
}

/// L2 in front of `l3`: plain, 802.1Q, QinQ or two 802.1Q tags.
fn with_l2(rng: &mut Rng, ethertype: u16, l3: &[u8]) -> Vec<u8> {
    match rng.below(6) {
        0 => ethernet(
            LB_MAC,
            ROUTER_MAC,
            Some(rng.next_u64() as u16 & 0x0fff),
            ethertype,
            l3,
        ),
        1 => {
            // QinQ: an 802.1ad tag over an 802.1Q tag.
            let mut f = Vec::new();
            f.extend_from_slice(&LB_MAC);
            f.extend_from_slice(&ROUTER_MAC);
            f.extend_from_slice(&ETHERTYPE_QINQ.to_be_bytes());
            f.extend_from_slice(&[0, 7]);
            f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            f.extend_from_slice(&[0, 5]);
            f.extend_from_slice(&ethertype.to_be_bytes());
            f.extend_from_slice(l3);
            f
        }
        2 => {
            let mut inner = Vec::new();
            inner.extend_from_slice(&[0, 9]);
            inner.extend_from_slice(&ethertype.to_be_bytes());
            inner.extend_from_slice(l3);
            ethernet(LB_MAC, ROUTER_MAC, Some(5), ETHERTYPE_VLAN, &inner)
        }
        _ => ethernet(LB_MAC, ROUTER_MAC, None, ethertype, l3),
    }
}

/// The IP-in-IP protocol (or next header) for `inner`: 4 for IPv4, 41 for
/// IPv6, now and then the other one.
fn tunnel_proto(rng: &mut Rng, inner: &[u8]) -> u8 {
    let v6 = inner.first().is_some_and(|b| b >> 4 == 6);
    if v6 != rng.chance(8) {
        41
    } else {
        4
    }
}

/// IP-in-IP over IPv4 around `inner` (protocol 4 or 41), to `dst`.
fn tunnel(rng: &mut Rng, dst: Ipv4Addr, inner: Vec<u8>) -> Vec<u8> {
    let proto = tunnel_proto(rng, &inner);
    let mut outer = Ipv4::new(LB_SOURCE, dst, L4::Raw(proto, inner));
    outer.tos = rng.next_u64() as u8;
    outer.payload.clear();
    outer.bytes()
}

/// IP-in-IP over IPv6 around `inner` (next header 41 or 4), to `dst`.
fn tunnel6(rng: &mut Rng, dst: Ipv6Addr, inner: Vec<u8>) -> Vec<u8> {
    let next = tunnel_proto(rng, &inner);
    let tclass = rng.next_u64() as u8;
    let label = rng.next_u64() as u32;
    ipv6_header(tclass, label, next, 64, (LB_SOURCE6, dst), &inner)
}

/// GUE around `inner` (UDP, variant 1), to `dst`: mostly to the GUE port,
/// sometimes to another one.
fn gue_tunnel(rng: &mut Rng, dst: Ipv4Addr, inner: Vec<u8>) -> Vec<u8> {
    let port = gue_port(rng);
    let outer = crate::packet::gue(
        LB_SOURCE,
        dst,
        0xc000 | rng.next_u64() as u16,
        port,
        rng.next_u64() as u8,
        &inner,
    );
    maybe_lie_about_udp_length(rng, outer, 20)
}

/// GUE over IPv6 around `inner`, to `dst`, as [`gue_tunnel`].
fn gue6_tunnel(rng: &mut Rng, dst: Ipv6Addr, inner: Vec<u8>) -> Vec<u8> {
    let port = gue_port(rng);
    let outer = crate::packet::gue6(
        (LB_SOURCE6, dst),
        port,
        rng.next_u64() as u8,
        rng.next_u64() as u32,
        &inner,
    );
    maybe_lie_about_udp_length(rng, outer, 40)
}

/// Mostly the GUE port, sometimes another one.
fn gue_port(rng: &mut Rng) -> u16 {
    if rng.chance(5) {
        GUE_PORT + 1
    } else {
        GUE_PORT
    }
}

/// `packet` with, one time in four, a UDP length (of the UDP header at
/// `udp`) that lies.
fn maybe_lie_about_udp_length(rng: &mut Rng, mut packet: Vec<u8>, udp: usize) -> Vec<u8> {
    if rng.chance(4) {
        let lie = [0u16, 8, 0xffff, rng.next_u64() as u16][rng.below(4)];
        packet[udp + 4..udp + 6].copy_from_slice(&lie.to_be_bytes());
    }
    packet
}

/// A tunnel, maybe with tunnels inside, to a decap address, a VIP or
/// another address: IP-in-IP (4 and 41) and GUE over both families,
/// around a packet of either family.
fn tunnel_frame(rng: &mut Rng) -> Vec<u8> {
    let mut inner = if rng.chance(3) {
        ip6_packet(rng)
    } else {
        ip_packet(rng).bytes()
    };
    for _ in 0..rng.below(3) {
        inner = if rng.chance(2) {
            tunnel(rng, BACKENDS[0], inner)
        } else {
            tunnel6(rng, BACKENDS6[0], inner)
        };
    }
    if rng.chance(2) {
        let dst = if rng.chance(2) { BACKENDS[0] } else { VIP };
        let l3 = if rng.chance(2) {
            gue_tunnel(rng, dst, inner)
        } else {
            tunnel(rng, dst, inner)
        };
        with_l2(rng, ETHERTYPE_IPV4, &l3)
    } else {
        let dst = rng.pick(&[BACKENDS6[0], BACKENDS6[0], VIP6, BACKENDS6[1]]);
        let l3 = if rng.chance(3) {
            gue6_tunnel(rng, dst, inner)
        } else {
            tunnel6(rng, dst, inner)
        };
        with_l2(rng, ETHERTYPE_IPV6, &l3)
    }
}

/// An ICMP error from a router quoting a packet the VIP sent (TCP or UDP,
/// maybe with options), cut anywhere near the 8 bytes after its header.
fn icmp_quoting_vip(rng: &mut Rng) -> Vec<u8> {
    let cport = client_port(rng);
    let mut quoted = if rng.chance(3) {
        Ipv4::udp(VIP, UDP_PORT, CLIENT, cport)
    } else {
        let vport = rng.pick(&[TCP_PORT, TCP_PORT_4IN6]);
        Ipv4::tcp(VIP, vport, CLIENT, cport, TCP_ACK)
    };
    if rng.chance(4) {
        let words = 1 + rng.below(10);
        quoted.options = rng.bytes(4 * words);
    }
    let quoted = quoted.payload(&[]).bytes();
    let ihl = (quoted[0] & 0x0f) as usize * 4;
    let keep = (ihl + 8).saturating_sub(10) + rng.below(20);
    let kind = [3u8, 11, 12, 3, 3][rng.below(5)];
    let mut icmp = vec![kind, 4, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(&quoted[..keep.min(quoted.len())]);
    let c = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = Ipv4::new(Ipv4Addr::new(198, 18, 200, 1), VIP, L4::Raw(1, icmp));
    ip.payload.clear();
    ip.bytes()
}

/// An ICMPv6 error (types 1-4, now and then another) from a router
/// quoting a packet VIP6 sent, cut anywhere near the ports; sometimes
/// behind an extension header.
fn icmp6_quoting_vip6(rng: &mut Rng) -> Vec<u8> {
    let cport = client_port(rng);
    let quoted = if rng.chance(3) {
        Ipv6::udp(VIP6, UDP_PORT, CLIENT6, cport)
    } else {
        Ipv6::tcp(VIP6, TCP_PORT, CLIENT6, cport, TCP_ACK)
    };
    let quoted = quoted.payload(&[]).bytes();
    let keep = (36 + rng.below(30)).min(quoted.len());
    let kind = if rng.chance(8) {
        rng.next_u64() as u8
    } else {
        rng.pick(&[1, 2, 3, 4, 1, 2])
    };
    let mut ip = icmp6_packet((ROUTER6, VIP6), kind, 0, [0, 0, 5, 0xdc], &quoted[..keep]);
    if rng.chance(6) {
        ip.ext = vec![Ipv6Ext::padding(rng.pick(&[0, 60]), 0)];
    }
    ip.bytes()
}

/// Echo data of every size: none, one byte, ping's 56, up to the MTU.
fn echo_data(rng: &mut Rng) -> Vec<u8> {
    let any = rng.below(1500);
    let len = [0, 1, 56, any][rng.below(4)];
    rng.bytes(len)
}

/// An ICMP echo request (or another ICMP message) to the VIP, or not.
fn icmp_echo(rng: &mut Rng) -> Vec<u8> {
    let dst = if rng.chance(5) { NOT_VIP } else { VIP };
    let icmp_type = if rng.chance(4) {
        rng.next_u64() as u8
    } else {
        8
    };
    let data = echo_data(rng);
    let mut ip = Ipv4::new(
        CLIENT,
        dst,
        L4::Raw(
            1,
            crate::packet::icmp_message(icmp_type, 0, [0x4c, 0x42, 0, 1], &data),
        ),
    );
    if rng.chance(8) {
        ip.options = vec![1, 1, 1, 0];
    }
    if rng.chance(10) {
        ip.frags = 0x2000;
    }
    ip.bytes()
}

/// An ICMPv6 echo request (or another ICMPv6 message) to VIP6, or not;
/// now and then from a multicast, unspecified or loopback source, or
/// behind an extension header.
fn icmp6_echo(rng: &mut Rng) -> Vec<u8> {
    let dst = if rng.chance(5) { NOT_VIP6 } else { VIP6 };
    let src = if rng.chance(6) {
        rng.pick(&NOT_UNICAST6)
    } else {
        CLIENT6
    };
    let icmp_type = if rng.chance(4) {
        rng.next_u64() as u8
    } else {
        128
    };
    let data = echo_data(rng);
    let mut ip = icmp6_packet((src, dst), icmp_type, 0, [0x4c, 0x42, 0, 1], &data);
    ip.tclass = rng.next_u64() as u8;
    ip.flow_label = rng.next_u64() as u32;
    if rng.chance(5) {
        ip.ext = vec![Ipv6Ext::padding(rng.pick(&[0, 60]), 0)];
    }
    ip.bytes()
}

/// One generated frame, before mutation.
fn seed_frame(rng: &mut Rng) -> Vec<u8> {
    match rng.below(32) {
        0..=8 => {
            let ip = ip_packet(rng).bytes();
            with_l2(rng, ETHERTYPE_IPV4, &ip)
        }
        12..=14 => tunnel_frame(rng),
        15..=21 => {
            let l3 = ip6_packet(rng);
            with_l2(rng, ETHERTYPE_IPV6, &l3)
        }
        22 | 23 => {
            let l3 = icmp6_echo(rng);
            with_l2(rng, ETHERTYPE_IPV6, &l3)
        }
        24 | 25 => {
            let l3 = icmp6_quoting_vip6(rng);
            with_l2(rng, ETHERTYPE_IPV6, &l3)
        }
        26 | 27 => {
            let l3 = icmp_quoting_vip(rng);
            with_l2(rng, ETHERTYPE_IPV4, &l3)
        }
        28 => {
            let l3 = icmp_echo(rng);
            with_l2(rng, ETHERTYPE_IPV4, &l3)
        }
        29 => {
            // Random bytes behind a plausible Ethernet header.
            let ethertype = rng.pick(&[ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, 0x0806]);
            let len = rng.below(200);
            let body = rng.bytes(len);
            ethernet(LB_MAC, ROUTER_MAC, None, ethertype, &body)
        }
        30 => {
            let len = rng.below(120);
            rng.bytes(len)
        }
        _ => {
            let ip = ip_packet(rng).bytes();
            ethernet(LB_MAC, ROUTER_MAC, None, ETHERTYPE_IPV4, &ip)
        }
    }
}

/// Offset of the first IP header after plain or single-tagged Ethernet.
fn l3_offset(frame: &[u8]) -> usize {
    if frame.len() >= 14 && frame[12..14] == ETHERTYPE_VLAN.to_be_bytes() {
        18
    } else {
        14
    }
}

/// The ethertype in front of the IP header at `l3` (0 when the frame is
/// too short to have one).
fn ethertype(frame: &[u8], l3: usize) -> u16 {
    if frame.len() < l3 {
        return 0;
    }
    u16::from_be_bytes([frame[l3 - 2], frame[l3 - 1]])
}

/// Where an IP header's fields sit: (length field, protocol or next
/// header, first byte after the fixed header) for IPv4 or IPv6.
fn field_offsets(v6: bool) -> (usize, usize, usize) {
    if v6 {
        (4, 6, 40)
    } else {
        (2, 9, 20)
    }
}

/// Damages a frame the way hostile or broken senders do: lying lengths in
/// both directions, every kind of header-length field, truncation, trailers
/// and bit flips, at the offsets of the frame's IP family.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    let l3 = l3_offset(frame);
    let v6 = ethertype(frame, l3) == ETHERTYPE_IPV6;
    let (len_at, proto_at, l4_at) = field_offsets(v6);
    for _ in 0..rng.below(4) {
        if frame.is_empty() {
            return;
        }
        match rng.below(10) {
            0 => {
                let at = rng.below(frame.len());
                frame.truncate(at);
            }
            1 => {
                let at = rng.below(frame.len());
                frame[at] = rng.next_u64() as u8;
            }
            2 => {
                let at = rng.below(frame.len());
                frame[at] ^= 1 << rng.below(8);
            }
            3 if frame.len() >= l3 + l4_at => {
                // The total (IPv6: payload) length lies.
                let real = (frame.len() - l3 - if v6 { 40 } else { 0 }) as u16;
                let lie = [
                    0,
                    1,
                    19,
                    20,
                    real.wrapping_sub(1),
                    real.wrapping_add(1),
                    0xffff,
                    rng.next_u64() as u16,
                ][rng.below(8)];
                frame[l3 + len_at..l3 + len_at + 2].copy_from_slice(&lie.to_be_bytes());
            }
            4 if frame.len() > l3 => {
                // Every IHL; for IPv6, every version.
                frame[l3] = if v6 {
                    (frame[l3] & 0x0f) | (rng.below(16) as u8) << 4
                } else {
                    (frame[l3] & 0xf0) | rng.below(16) as u8
                };
            }
            5 if frame.len() > l3 + l4_at + 12 => {
                // Every TCP data offset (for IHL 5, or no extension header).
                frame[l3 + l4_at + 12] = (rng.below(16) as u8) << 4;
            }
            6 => {
                let n = 1 + rng.below(32);
                let tail = rng.bytes(n);
                frame.extend(tail);
            }
            7 if frame.len() > l3 + proto_at => {
                // Another protocol under the same header.
                frame[l3 + proto_at] = rng.pick(&[0, 1, 4, 6, 17, 41, 43, 44, 47, 58, 59, 60]);
            }
            8 if v6 && frame.len() > l3 + 41 => {
                // The first extension header's length lies.
                frame[l3 + 41] = rng.next_u64() as u8;
            }
            _ => {}
        }
    }
}

/// The frames of a run seeded with `seed`: the first ones sweep every
/// truncation, IHL or version, TCP data offset, IPv6 next header and lying
/// length of a few good frames of both families, the rest are generated
/// and mutated.
pub struct Corpus {
    rng: Rng,
    sweep: Vec<Vec<u8>>,
}

/// Pushes `base` with each of `values` written in by `set`.
fn sweep_field(
    sweep: &mut Vec<Vec<u8>>,
    base: &[u8],
    values: impl IntoIterator<Item = u16>,
    set: impl Fn(&mut Vec<u8>, u16),
) {
    for value in values {
        let mut f = base.to_vec();
        set(&mut f, value);
        sweep.push(f);
    }
}

/// A well-formed TCP SYN to the VIP, untagged.
fn syn_to_vip() -> Vec<u8> {
    ethernet(
        LB_MAC,
        ROUTER_MAC,
        None,
        ETHERTYPE_IPV4,
        &Ipv4::tcp(CLIENT, 40000, VIP, TCP_PORT, TCP_SYN).bytes(),
    )
}

/// A well-formed TCP SYN to VIP6, untagged.
fn syn6_to_vip6() -> Ipv6 {
    Ipv6::tcp(CLIENT6, 40000, VIP6, TCP_PORT, TCP_SYN)
}

impl Corpus {
    pub fn new(seed: u64) -> Self {
        let mut sweep = Vec::new();
        let rng = &mut Rng::new(seed);
        let v4_bases = [
            syn_to_vip(),
            ethernet(
                LB_MAC,
                ROUTER_MAC,
                Some(5),
                ETHERTYPE_IPV4,
                &Ipv4::udp(CLIENT, 40000, VIP, UDP_PORT).bytes(),
            ),
            ethernet(
                LB_MAC,
                ROUTER_MAC,
                None,
                ETHERTYPE_IPV4,
                &tunnel(
                    rng,
                    BACKENDS[0],
                    Ipv4::tcp(CLIENT, 40000, VIP, TCP_PORT, TCP_ACK).bytes(),
                ),
            ),
        ];
        let mut udp6_ext = Ipv6::udp(CLIENT6, 40000, VIP6, UDP_PORT);
        udp6_ext.ext = vec![Ipv6Ext::padding(60, 0)];
        let v6_bases = [
            crate::packet::from_router6(&syn6_to_vip6()),
            ethernet(
                LB_MAC,
                ROUTER_MAC,
                Some(5),
                ETHERTYPE_IPV6,
                &udp6_ext.bytes(),
            ),
            ethernet(
                LB_MAC,
                ROUTER_MAC,
                None,
                ETHERTYPE_IPV6,
                &tunnel6(
                    rng,
                    BACKENDS6[0],
                    Ipv4::tcp(CLIENT, 40000, VIP, TCP_PORT, TCP_ACK).bytes(),
                ),
            ),
            crate::packet::from_router6(&icmp6_packet(
                (CLIENT6, VIP6),
                128,
                0,
                [0x4c, 0x42, 0, 1],
                b"ping",
            )),
        ];
        for base in v4_bases.iter().chain(&v6_bases) {
            for len in MIN_FRAME..base.len() {
                sweep.push(base[..len].to_vec());
            }
        }
        for base in v4_bases.iter().chain(&v6_bases) {
            let l3 = l3_offset(base);
            let v6 = ethertype(base, l3) == ETHERTYPE_IPV6;
            let (len_at, proto_at, l4_at) = field_offsets(v6);
            // Every IHL (IPv6: version), protocol (next header), TCP data
            // offset, and length near the truth.
            sweep_field(&mut sweep, base, 0..16, |f, n| {
                f[l3] = if v6 {
                    (f[l3] & 0x0f) | (n as u8) << 4
                } else {
                    0x40 | n as u8
                }
            });
            sweep_field(&mut sweep, base, 0..256, |f, n| f[l3 + proto_at] = n as u8);
            if base.len() > l3 + l4_at + 12 {
                sweep_field(&mut sweep, base, 0..16, |f, n| {
                    f[l3 + l4_at + 12] = (n as u8) << 4
                });
            }
            let real = (base.len() - l3 - if v6 { 40 } else { 0 }) as u16;
            let lies = [0, 1, 7, 8, 19, 20, 39, 40, 0x7fff, 0xffff];
            let near = [real - 1, real, real + 1];
            sweep_field(&mut sweep, base, lies.into_iter().chain(near), |f, n| {
                f[l3 + len_at..l3 + len_at + 2].copy_from_slice(&n.to_be_bytes())
            });
        }
        sweep.reverse();
        Corpus {
            rng: Rng::new(seed),
            sweep,
        }
    }

    pub fn next_frame(&mut self) -> Vec<u8> {
        if let Some(frame) = self.sweep.pop() {
            return frame;
        }
        let mut frame = seed_frame(&mut self.rng);
        if !self.rng.chance(4) {
            mutate(&mut self.rng, &mut frame);
        }
        frame.resize(frame.len().max(MIN_FRAME), 0);
        frame
    }
}

fn be16(b: &[u8], at: usize) -> usize {
    u16::from_be_bytes([b[at], b[at + 1]]) as usize
}

fn addr4(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// Whether a reply may go to `addr` (RFC 1122 3.2.2, RFC 4443 2.4).
fn unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let first = a.octets()[0];
            first != 0 && first != 127 && first < 224
        }
        IpAddr::V6(a) => !a.is_multicast() && !a.is_unspecified() && !a.is_loopback(),
    }
}

/// What the oracle reads in a frame the balancer may send to a backend: a
/// TCP or UDP packet to a VIP port, or an ICMP (ICMPv6) error to a VIP
/// quoting a TCP or UDP packet from one.
struct ToBackend<'a> {
    /// The client's IP packet, as long as its header says.
    ip: &'a [u8],
    v6: bool,
    /// TOS or traffic class.
    tos: u8,
    port: &'static VipPort,
    /// The data path's hash of the client's flow (client to VIP).
    hash: u32,
    /// An ICMP error about the flow, not a packet of it.
    error: bool,
    /// IPv4 DF.
    df: bool,
}

/// The frame's packet if the balancer may send it to a backend.
fn to_backend(frame: &[u8]) -> Option<ToBackend<'_>> {
    let l3 = l3_offset(frame);
    match ethertype(frame, l3) {
        ETHERTYPE_IPV4 => to_backend4(&frame[l3..]),
        ETHERTYPE_IPV6 => to_backend6(&frame[l3..]),
        _ => None,
    }
}

/// Whether a TCP or UDP header fits in `room` bytes.
fn ports_fit(proto: u8, room: usize) -> bool {
    room >= if proto == 6 { 20 } else { 8 }
}

fn to_backend4(ip: &[u8]) -> Option<ToBackend<'_>> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let tot = be16(ip, 2);
    if ihl < 20 || tot < ihl || tot > ip.len() || be16(ip, 6) & 0x3fff != 0 {
        return None;
    }
    let ip = &ip[..tot];
    let dst = addr4(ip, 16);
    let (port, hash, error) = match ip[9] {
        proto @ (6 | 17) => {
            if !ports_fit(proto, tot - ihl) {
                return None;
            }
            let (sport, dport) = (be16(ip, ihl) as u16, be16(ip, ihl + 2) as u16);
            let port = vip_port(dst.into(), proto, dport)?;
            (
                port,
                flow_hash4_of(addr4(ip, 12), sport, dst, dport, proto),
                false,
            )
        }
        1 => {
            if tot < ihl + 8 + 20 || ![3, 11, 12].contains(&ip[ihl]) {
                return None;
            }
            let quote = &ip[ihl + 8..];
            let q_ihl = (quote[0] & 0x0f) as usize * 4;
            let proto = quote[9];
            if quote[0] >> 4 != 4
                || q_ihl < 20
                || quote.len() < q_ihl + 8
                || proto != 6 && proto != 17
                || addr4(quote, 12) != dst
                || be16(quote, 6) & 0x1fff != 0
            {
                return None;
            }
            let (vport, cport) = (be16(quote, q_ihl) as u16, be16(quote, q_ihl + 2) as u16);
            let port = vip_port(dst.into(), proto, vport)?;
            let client = addr4(quote, 16);
            (port, flow_hash4_of(client, cport, dst, vport, proto), true)
        }
        _ => return None,
    };
    Some(ToBackend {
        ip,
        v6: false,
        tos: ip[1],
        port,
        hash,
        error,
        df: ip[6] & 0x40 != 0,
    })
}

/// The transport header of an IPv6 packet as the data path finds it: its
/// type and offset, and the packet's length; `None` for a malformed
/// packet, a fragment, or more than 4 extension headers before a known
/// one.
fn walk6(ip: &[u8]) -> Option<(u8, usize, usize)> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    let payload = be16(ip, 4);
    if payload == 0 || 40 + payload > ip.len() {
        return None;
    }
    let len = 40 + payload;
    let (mut next, mut l4) = (ip[6], 40);
    for _ in 0..4 {
        match next {
            0 | 43 | 60 => {
                if l4 + 8 > len {
                    return None;
                }
                next = ip[l4];
                l4 += (ip[l4 + 1] as usize + 1) * 8;
                if l4 > len {
                    return None;
                }
            }
            44 => return None,
            _ => break,
        }
    }
    Some((next, l4, len))
}

fn to_backend6(ip: &[u8]) -> Option<ToBackend<'_>> {
    let (next, l4, len) = walk6(ip)?;
    let ip = &ip[..len];
    let dst = ipv6_at(ip, 24);
    let (port, hash, error) = match next {
        6 | 17 => {
            if !ports_fit(next, len - l4) {
                return None;
            }
            let (sport, dport) = (be16(ip, l4) as u16, be16(ip, l4 + 2) as u16);
            let port = vip_port(dst.into(), next, dport)?;
            (
                port,
                flow_hash6_of(ipv6_at(ip, 8), sport, dst, dport, next),
                false,
            )
        }
        58 => {
            let quote = l4 + 8;
            if len < quote + 44 || !(1..=4).contains(&ip[l4]) {
                return None;
            }
            let q = &ip[quote..];
            let proto = q[6];
            if q[0] >> 4 != 6 || proto != 6 && proto != 17 || ipv6_at(q, 8) != dst {
                return None;
            }
            let (vport, cport) = (be16(q, 40) as u16, be16(q, 42) as u16);
            let port = vip_port(dst.into(), proto, vport)?;
            (
                port,
                flow_hash6_of(ipv6_at(q, 24), cport, dst, vport, proto),
                true,
            )
        }
        _ => return None,
    };
    Some(ToBackend {
        ip,
        v6: true,
        tos: (ip[0] << 4) | (ip[1] >> 4),
        port,
        hash,
        error,
        df: false,
    })
}

/// Whether `frame` is an echo request the balancer answers: to a VIP,
/// code 0, from a unicast address, without IP options or IPv6 extension
/// headers, not a fragment, inside its own length.
fn echo_request_to_vip(frame: &[u8]) -> bool {
    let l3 = l3_offset(frame);
    let ip = &frame[l3.min(frame.len())..];
    match ethertype(frame, l3) {
        ETHERTYPE_IPV4 => {
            ip.len() >= 28
                && ip[0] == 0x45
                && (28..=ip.len()).contains(&be16(ip, 2))
                && be16(ip, 6) & 0x3fff == 0
                && ip[9] == 1
                && ip[20..22] == [8, 0]
                && addr4(ip, 16) == VIP
                && unicast(addr4(ip, 12).into())
        }
        ETHERTYPE_IPV6 => {
            walk6(ip).is_some_and(|(next, l4, len)| next == 58 && l4 == 40 && len >= 48)
                && ip[40..42] == [128, 0]
                && ipv6_at(ip, 24) == VIP6
                && unicast(ipv6_at(ip, 8).into())
        }
        _ => false,
    }
}

/// Checks the balancer's verdict and output for `input`.
pub fn check_balancer(input: &[u8], verdict: u32, output: &[u8]) -> Result<(), String> {
    match verdict {
        XDP_PASS if output != input => Err("passed, but the frame was changed".into()),
        XDP_PASS | XDP_DROP => {
            // Nothing but the MTU stops a VIP port's packet: the data path
            // must find in it what the oracle finds.
            match to_backend(input) {
                Some(pkt) if pkt.ip.len() + pkt.port.tunnel.overhead() <= MTU => Err(format!(
                    "verdict {verdict} for a packet to a VIP port (or an ICMP error about one) that fits its tunnel"
                )),
                _ if echo_request_to_vip(input) => {
                    Err(format!("verdict {verdict} for an echo request to a VIP"))
                }
                _ => Ok(()),
            }
        }
        XDP_TX => {
            let l3 = l3_offset(input);
            if input.len() < l3 + 20 || output.len() < l3 + 20 {
                return Err(format!(
                    "sent a {}-byte frame for a {}-byte one",
                    output.len(),
                    input.len()
                ));
            }
            let reply = match ethertype(output, l3) {
                ETHERTYPE_IPV4 => output[l3 + 9] == 1,
                ETHERTYPE_IPV6 => output.len() >= l3 + 40 && output[l3 + 6] == 58,
                _ => false,
            };
            if reply {
                check_icmp_reply(input, output)
            } else {
                check_encapsulated(input, output)
            }
        }
        other => Err(format!("verdict {other}")),
    }
}

/// Checks an ICMP or ICMPv6 message the balancer built against the frame
/// it answers: the reply's family is the request's (the ethertype is
/// kept, and each family's check reads only its own offsets).
fn check_icmp_reply(input: &[u8], out: &[u8]) -> Result<(), String> {
    let l3 = l3_offset(input);
    if out[..6] != input[6..12] || out[6..12] != input[..6] || out[12..l3] != input[12..l3] {
        return Err(
            "reply's Ethernet header: MACs not swapped, or tag or ethertype changed".into(),
        );
    }
    let (ip_in, ip) = (&input[l3..], &out[l3..]);
    match ethertype(input, l3) {
        ETHERTYPE_IPV4 => check_icmp4_reply(ip_in, ip),
        ETHERTYPE_IPV6 => check_icmp6_reply(ip_in, ip),
        _ => Err("answered a frame that is neither IPv4 nor IPv6".into()),
    }
}

fn check_icmp4_reply(ip_in: &[u8], ip: &[u8]) -> Result<(), String> {
    if ip[0] != 0x45 || ip[8] != 64 || ip[9] != 1 {
        return Err(format!(
            "reply header {:02x?}: not IPv4/IHL 5/TTL 64/ICMP",
            &ip[..20]
        ));
    }
    if be16(ip, 2) != ip.len() || ip.len() < 28 {
        return Err(format!(
            "reply total length {}, the frame carries {}",
            be16(ip, 2),
            ip.len()
        ));
    }
    if ip[12..16] != ip_in[16..20] || ip[16..20] != ip_in[12..16] || ip[12..16] != VIP.octets() {
        return Err("reply addresses are not VIP -> sender".into());
    }
    if !unicast(addr4(ip, 16).into()) {
        return Err("replied to an address that is not unicast".into());
    }
    let in_ihl = (ip_in[0] & 0x0f) as usize * 4;
    let icmp = &ip[20..];
    match icmp[0] {
        0 => {
            // Echo reply: the request's IP header and ICMP checksums were
            // updated incrementally, so they are right if those were.
            let tot = be16(ip_in, 2);
            if ip_in[9] != 1
                || in_ihl != 20
                || tot != ip.len()
                || tot > ip_in.len()
                || ip_in[20] != 8
            {
                return Err("echo reply to something that is not an echo request".into());
            }
            if internet_checksum(&ip_in[..20]) == 0 && internet_checksum(&ip[..20]) != 0 {
                return Err("echo reply's IP checksum wrong".into());
            }
            if internet_checksum(&ip_in[20..tot]) == 0 && internet_checksum(icmp) != 0 {
                return Err("echo reply's ICMP checksum wrong".into());
            }
            if icmp[1] != 0 || icmp[4..] != ip_in[24..tot] {
                return Err("echo reply does not carry the request's id, sequence and data".into());
            }
        }
        3 => {
            if internet_checksum(&ip[..20]) != 0 || internet_checksum(icmp) != 0 {
                return Err("fragmentation needed: a checksum is wrong".into());
            }
            let Some(pkt) = to_backend4(ip_in).filter(|p| !p.error) else {
                return Err(
                    "fragmentation needed for a packet that is no TCP or UDP packet to a VIP port"
                        .into(),
                );
            };
            let quote_len = in_ihl + 8;
            let overhead = pkt.port.tunnel.overhead();
            if icmp[1] != 4
                || be16(icmp, 6) != MTU - overhead
                || icmp[4..6] != [0, 0]
                || icmp.len() != 8 + quote_len
                || icmp[8..] != ip_in[..quote_len]
            {
                return Err("fragmentation needed: code, MTU or quote wrong".into());
            }
            if pkt.ip.len() + overhead <= MTU || !pkt.df {
                return Err(
                    "fragmentation needed for a packet that fits or allows fragments".into(),
                );
            }
        }
        t => return Err(format!("sent ICMP type {t}")),
    }
    Ok(())
}

/// Whether the ICMPv6 message `icmp` (checksum included) sums to zero
/// under the pseudo-header of the IPv6 header `ip`: computed here from the
/// bytes, not as the data path updates it.
fn icmp6_checksum_ok(ip: &[u8], icmp: &[u8]) -> bool {
    Ipv6::new(ipv6_at(ip, 8), ipv6_at(ip, 24), L4::Icmp).upper_checksum(58, icmp) == 0
}

fn check_icmp6_reply(ip_in: &[u8], ip: &[u8]) -> Result<(), String> {
    if ip_in.len() < 40 {
        return Err("answered a frame without an IPv6 header".into());
    }
    if ip.len() < 48 || ip[0] >> 4 != 6 || ip[6] != 58 || ip[7] != 64 {
        return Err(format!(
            "reply header {:02x?}: not IPv6/ICMPv6/hop limit 64",
            &ip[..ip.len().min(40)]
        ));
    }
    if 40 + be16(ip, 4) != ip.len() {
        return Err(format!(
            "reply payload length {}, the frame carries {} after the header",
            be16(ip, 4),
            ip.len() - 40
        ));
    }
    if ip[8..24] != ip_in[24..40] || ip[24..40] != ip_in[8..24] || ipv6_at(ip, 8) != VIP6 {
        return Err("reply addresses are not VIP6 -> sender".into());
    }
    if !unicast(ipv6_at(ip, 24).into()) {
        return Err("replied to an address that is not unicast".into());
    }
    let icmp = &ip[40..];
    match icmp[0] {
        129 => {
            let Some((58, 40, len)) = walk6(ip_in) else {
                return Err("echo reply to a packet that is not plain ICMPv6".into());
            };
            let request = &ip_in[40..len];
            if request[0] != 128 || request[1] != 0 || len != ip.len() {
                return Err("echo reply to something that is not an echo request".into());
            }
            if ip[..4] != ip_in[..4] {
                return Err("echo reply's traffic class or flow label changed".into());
            }
            if icmp6_checksum_ok(ip_in, request) && !icmp6_checksum_ok(ip, icmp) {
                return Err("echo reply's ICMPv6 checksum wrong".into());
            }
            if icmp[1] != 0 || icmp[4..] != request[4..] {
                return Err("echo reply does not carry the request's id, sequence and data".into());
            }
        }
        2 => {
            if !icmp6_checksum_ok(ip, icmp) {
                return Err("packet too big: ICMPv6 checksum wrong".into());
            }
            let Some(pkt) = to_backend6(ip_in).filter(|p| !p.error) else {
                return Err(
                    "packet too big for a packet that is no TCP or UDP packet to a VIP port".into(),
                );
            };
            if ip[..4] != [0x60, 0, 0, 0] {
                return Err("packet too big: traffic class or flow label not 0".into());
            }
            let overhead = pkt.port.tunnel.overhead();
            let mtu = u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]) as usize;
            let want_mtu = (MTU - overhead).max(IPV6_MIN_MTU);
            if icmp[1] != 0 || mtu != want_mtu {
                return Err(format!(
                    "packet too big: code {}, MTU {mtu} (want 0, {want_mtu})",
                    icmp[1]
                ));
            }
            let quote_len = pkt.ip.len().min(PTB_QUOTE_MAX) & !3;
            if icmp.len() != 8 + quote_len || icmp[8..] != ip_in[..quote_len] {
                return Err(format!(
                    "packet too big quotes {} bytes, not the packet's first {quote_len}",
                    icmp.len() - 8
                ));
            }
            if pkt.ip.len() + overhead <= MTU {
                return Err("packet too big for a packet that fits".into());
            }
        }
        t => return Err(format!("sent ICMPv6 type {t}")),
    }
    Ok(())
}

fn check_encapsulated(input: &[u8], out: &[u8]) -> Result<(), String> {
    let l3 = l3_offset(input);
    let Some(pkt) = to_backend(input) else {
        return Err(
            "encapsulated a frame that is neither a TCP or UDP packet to a VIP port (inside its own length) nor an ICMP error about a VIP flow"
                .into(),
        );
    };
    let tunnel = pkt.port.tunnel;
    let outer_type = if tunnel.outer_v6() {
        ETHERTYPE_IPV6
    } else {
        ETHERTYPE_IPV4
    };
    if out[..6] != NEXT_HOP_MAC
        || out[6..12] != LB_MAC
        || out[12..l3 - 2] != input[12..l3 - 2]
        || ethertype(out, l3) != outer_type
    {
        return Err("Ethernet header (addresses, tag or ethertype) wrong".into());
    }
    let overhead = tunnel.overhead();
    if out.len() < l3 + overhead {
        return Err(format!("sent a {}-byte frame", out.len()));
    }
    let outer = &out[l3..];
    if tunnel.outer_v6() {
        check_outer6(outer, &pkt)?;
    } else {
        check_outer4(outer, &pkt)?;
    }
    if outer.len() > MTU {
        return Err(format!(
            "outer packet of {} bytes over the {MTU}-byte MTU",
            outer.len()
        ));
    }
    if outer[overhead..] != *pkt.ip {
        return Err(format!(
            "the inner packet ({} bytes) is not the client's IP packet ({} bytes): a trailer, a cut or other bytes",
            outer.len() - overhead,
            pkt.ip.len()
        ));
    }
    Ok(())
}

fn backend_of(pkt: &ToBackend, addr: IpAddr) -> Result<(), String> {
    if !pkt.port.backends.contains(&addr) {
        return Err(format!(
            "outer destination {addr} is no backend of the VIP port"
        ));
    }
    Ok(())
}

/// The outer IPv4 header (and GUE's UDP header) of `outer`, a whole
/// encapsulated packet.
fn check_outer4(outer: &[u8], pkt: &ToBackend) -> Result<(), String> {
    let gue = pkt.port.tunnel == Tunnel::Gue;
    let proto = match (gue, pkt.v6) {
        (true, _) => 17,
        (false, true) => 41,
        (false, false) => 4,
    };
    let h = &outer[..20];
    if h[0] != 0x45 || h[9] != proto || h[8] != 64 || h[4..8] != [0, 0, 0x40, 0] {
        return Err(format!(
            "outer header {h:02x?}: not IPv4/IHL 5/id 0/DF/protocol {proto}/TTL 64"
        ));
    }
    if internet_checksum(h) != 0 {
        return Err("outer header checksum wrong".into());
    }
    if be16(h, 2) != outer.len() {
        return Err(format!(
            "outer total length {}, the frame carries {}",
            be16(h, 2),
            outer.len()
        ));
    }
    if h[1] != pkt.tos {
        return Err(format!(
            "outer TOS {:#04x}, the client's is {:#04x}",
            h[1], pkt.tos
        ));
    }
    if h[12..16] != LB_SOURCE.octets() {
        return Err("outer source is not the LB's".into());
    }
    backend_of(pkt, addr4(h, 16).into())?;
    if gue {
        check_gue(&outer[20..28], outer.len() - 20, pkt)?;
    }
    Ok(())
}

/// The outer IPv6 header of `outer`, a whole encapsulated packet.
fn check_outer6(outer: &[u8], pkt: &ToBackend) -> Result<(), String> {
    let h = &outer[..40];
    let gue = pkt.port.tunnel.is_gue();
    let next = match (gue, pkt.v6) {
        (true, _) => 17,
        (false, true) => 41,
        (false, false) => 4,
    };
    if h[0] >> 4 != 6 || h[6] != next || h[7] != 64 {
        return Err(format!(
            "outer header {h:02x?}: not IPv6/next header {next}/hop limit 64"
        ));
    }
    if be16(h, 4) != outer.len() - 40 {
        return Err(format!(
            "outer payload length {}, the frame carries {} after the header",
            be16(h, 4),
            outer.len() - 40
        ));
    }
    let head = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let tclass = (head >> 20) as u8;
    if tclass != pkt.tos {
        return Err(format!(
            "outer traffic class {tclass:#04x}, the client's is {:#04x}",
            pkt.tos
        ));
    }
    let (label, want) = (head & 0xf_ffff, lb_common::outer_flow_label(pkt.hash));
    if label != want {
        return Err(format!(
            "outer flow label {label:#07x}, the flow's is {want:#07x}"
        ));
    }
    if ipv6_at(h, 8) != LB_SOURCE6 {
        return Err("outer source is not the LB's".into());
    }
    backend_of(pkt, ipv6_at(h, 24).into())?;
    if gue {
        check_gue(&outer[40..48], outer.len() - 40, pkt)?;
    }
    Ok(())
}

/// GUE's UDP header `udp`, of a UDP datagram of `udp_len` bytes.
fn check_gue(udp: &[u8], udp_len: usize, pkt: &ToBackend) -> Result<(), String> {
    let src_port = be16(udp, 0) as u16;
    if be16(udp, 2) != GUE_PORT as usize || be16(udp, 4) != udp_len || udp[6..8] != [0, 0] {
        return Err(format!(
            "GUE header {udp:02x?}: not (.., {GUE_PORT}, length {udp_len}, checksum 0)"
        ));
    }
    if src_port != lb_common::gue_source_port(pkt.hash) {
        return Err(format!("GUE source port {src_port} is not the flow's"));
    }
    Ok(())
}

/// What the oracle reads in the outer header of a frame `decap` may
/// strip.
struct DecapOuter {
    /// Bytes of outer headers after L2.
    strip: usize,
    /// The outer packet's length, from its own header.
    len: usize,
    /// The inner versions the outer header allows.
    inner_v4: bool,
    inner_v6: bool,
    /// The outer header carries ECN CE.
    congested: bool,
}

fn decap_outer(input: &[u8], l3: usize) -> Result<DecapOuter, String> {
    let not_ours = || "changed a frame that is not a tunnel to a local address".to_string();
    let ip = &input[l3.min(input.len())..];
    match ethertype(input, l3) {
        ETHERTYPE_IPV4 if ip.len() >= 20 => {
            let ihl = (ip[0] & 0x0f) as usize * 4;
            let proto = ip[9];
            let gue = proto == 17 && ip.len() >= ihl + 8 && be16(ip, ihl + 2) == GUE_PORT as usize;
            if !gue && proto != 4 && proto != 41 || addr4(ip, 16) != BACKENDS[0] {
                return Err(not_ours());
            }
            if ip[0] >> 4 != 4 || ihl < 20 || be16(ip, 6) & 0x3fff != 0 {
                return Err(
                    "stripped a fragment, a header shorter than 20 bytes, or one not of version 4"
                        .into(),
                );
            }
            if gue && be16(ip, ihl + 4) + ihl != be16(ip, 2) {
                return Err("stripped GUE whose UDP length disagrees with the IP length".into());
            }
            Ok(DecapOuter {
                strip: if gue { ihl + 8 } else { ihl },
                len: be16(ip, 2),
                inner_v4: proto != 41,
                inner_v6: proto != 4,
                congested: ip[1] & 0b11 == 0b11,
            })
        }
        ETHERTYPE_IPV6 if ip.len() >= 40 => {
            let next = ip[6];
            let gue = next == 17 && ip.len() >= 48 && be16(ip, 42) == GUE_PORT as usize;
            if !gue && next != 4 && next != 41 || ipv6_at(ip, 24) != BACKENDS6[0] {
                return Err(not_ours());
            }
            if gue && be16(ip, 44) != be16(ip, 4) {
                return Err("stripped GUE whose UDP length disagrees with the IPv6 one".into());
            }
            let len = 40 + be16(ip, 4);
            if ip[0] >> 4 != 6 || len > ip.len() {
                return Err(format!(
                    "stripped an outer IPv6 header of version {} claiming {len} bytes of {}",
                    ip[0] >> 4,
                    ip.len()
                ));
            }
            let tclass = (ip[0] << 4) | (ip[1] >> 4);
            Ok(DecapOuter {
                strip: if gue { 48 } else { 40 },
                len,
                inner_v4: next != 41,
                inner_v6: next != 4,
                congested: tclass & 0b11 == 0b11,
            })
        }
        _ => Err(not_ours()),
    }
}

/// Whether the packet inside the tunnel `outer` of `input` is IPv6, if
/// its version is one `outer` allows and its header is whole, inside both
/// the outer packet and the frame.
fn inner_family(input: &[u8], l3: usize, outer: &DecapOuter) -> Result<bool, String> {
    let inner = &input[(l3 + outer.strip).min(input.len())..];
    let inner_v6 = match inner.first().map(|b| b >> 4) {
        Some(4) if outer.inner_v4 => false,
        Some(6) if outer.inner_v6 => true,
        _ => return Err("stripped a tunnel whose inner version its header does not allow".into()),
    };
    let header = if inner_v6 { 40 } else { 20 };
    if outer.len < outer.strip + header || inner.len() < header {
        return Err("stripped a tunnel whose inner header is cut".into());
    }
    Ok(inner_v6)
}

/// Checks the decap program's verdict and output for `input` (its local
/// addresses are `BACKENDS[0]` and `BACKENDS6[0]`).
pub fn check_decap(input: &[u8], verdict: u32, output: &[u8]) -> Result<(), String> {
    if verdict != XDP_PASS {
        return Err(format!("verdict {verdict}: decap only passes"));
    }
    let l3 = l3_offset(input);
    let tunnel = decap_outer(input, l3).and_then(|outer| {
        let inner_v6 = inner_family(input, l3, &outer)?;
        Ok((outer, inner_v6))
    });
    if output == input {
        // Nothing but the lengths and versions the oracle checks stops a
        // tunnel to a local address.
        return match tunnel {
            Ok(_) => Err("left a whole tunnel to a local address as it was".into()),
            Err(_) => Ok(()),
        };
    }
    let (outer, inner_v6) = tunnel?;
    if output.len() + outer.strip != input.len() {
        return Err(format!(
            "stripped {} bytes, the outer headers have {}",
            input.len() as isize - output.len() as isize,
            outer.strip
        ));
    }
    let inner_in = &input[l3 + outer.strip..];
    let inner_out = &output[l3..];
    let want_ethertype = if inner_v6 {
        ETHERTYPE_IPV6
    } else {
        ETHERTYPE_IPV4
    };
    if output[..l3 - 2] != input[..l3 - 2] || ethertype(output, l3) != want_ethertype {
        return Err("Ethernet header changed beyond the inner packet's ethertype".into());
    }
    // RFC 6040: CE on the outer header marks an ECN-capable inner packet.
    let mut expected = inner_in.to_vec();
    if inner_v6 {
        if outer.congested && (expected[1] >> 4) & 0b11 != 0 {
            expected[1] |= 0b11 << 4;
        }
    } else {
        if outer.congested && expected[1] & 0b11 != 0 {
            expected[1] |= 0b11;
        }
        // The checksum is checked below, by its sum.
        expected[10..12].copy_from_slice(&inner_out[10..12]);
    }
    if inner_out != expected {
        return Err("the inner packet is not the tunnel's, but for ECN as RFC 6040 says".into());
    }
    if !inner_v6 {
        let ihl = (inner_out[0] & 0x0f) as usize * 4;
        let sum_ok = |h: &[u8]| ihl >= 20 && h.len() >= ihl && internet_checksum(&h[..ihl]) == 0;
        let unchanged = inner_out[1] == inner_in[1] && inner_out[10..12] == inner_in[10..12];
        if !unchanged && sum_ok(inner_in) && !sum_ok(inner_out) {
            return Err("ECN mark carried with a wrong inner checksum".into());
        }
    }
    Ok(())
}

/// What a run did: verdict counts and the first failures (frame, reason).
#[derive(Default)]
pub struct Report {
    pub frames: u64,
    pub passed: u64,
    pub dropped: u64,
    pub transmitted: u64,
    /// Of `transmitted`: ICMP and ICMPv6 replies built by the balancer
    /// (echo replies, "fragmentation needed", "packet too big").
    pub icmp_replies: u64,
    /// Of `icmp_replies`: ICMPv6 echo replies.
    pub echo6_replies: u64,
    /// Of `icmp_replies`: ICMPv6 "packet too big".
    pub too_big6_sent: u64,
    /// Of `transmitted`: ICMP and ICMPv6 errors encapsulated to a backend.
    pub icmp_forwarded: u64,
    /// Of `icmp_forwarded`: ICMPv6 errors.
    pub icmp6_forwarded: u64,
    /// Of `transmitted`: sent in GUE (outer protocol UDP).
    pub gue_sent: u64,
    /// Of `transmitted`: sent in an outer IPv6 header.
    pub ip6_sent: u64,
    /// Of `ip6_sent`: in GUE (outer next header UDP).
    pub gue6_sent: u64,
    /// Of `transmitted`: IPv6 packets sent in an outer IPv4 header
    /// (protocol 41).
    pub sit_sent: u64,
    pub decapsulated: u64,
    /// Of `decapsulated`: GUE packets stripped.
    pub gue_decapsulated: u64,
    /// Of `ip6_decapsulated`: GUE over IPv6.
    pub gue6_decapsulated: u64,
    /// Of `decapsulated`: outer IPv6 headers stripped.
    pub ip6_decapsulated: u64,
    /// Of `decapsulated`: outer IPv4 headers with IPv6 inside stripped.
    pub sit_decapsulated: u64,
    pub failures: Vec<(String, Vec<u8>, String)>,
}

impl Report {
    pub fn record(&mut self, program: &str, input: &[u8], result: Result<(), String>) {
        if let Err(reason) = result {
            if self.failures.len() < 10 {
                self.failures
                    .push((program.to_string(), input.to_vec(), reason));
            }
        }
    }

    /// Counts the balancer's verdict on `input` and what it sent.
    fn count_balancer(&mut self, input: &[u8], verdict: u32, out: &[u8]) {
        match verdict {
            XDP_PASS => self.passed += 1,
            XDP_DROP => self.dropped += 1,
            XDP_TX => self.transmitted += 1,
            _ => {}
        }
        let l3 = l3_offset(input);
        if verdict != XDP_TX || out.len() < l3 + 41 {
            return;
        }
        match ethertype(out, l3) {
            ETHERTYPE_IPV4 if out[l3 + 9] == 1 => self.icmp_replies += 1,
            ETHERTYPE_IPV6 if out[l3 + 6] == 58 => {
                self.icmp_replies += 1;
                match out[l3 + 40] {
                    129 => self.echo6_replies += 1,
                    2 => self.too_big6_sent += 1,
                    _ => {}
                }
            }
            family => {
                match (family, out[l3 + 9]) {
                    (ETHERTYPE_IPV6, _) => {
                        self.ip6_sent += 1;
                        if out[l3 + 6] == 17 {
                            self.gue6_sent += 1;
                        }
                    }
                    (_, 17) => self.gue_sent += 1,
                    (_, 41) => self.sit_sent += 1,
                    _ => {}
                }
                if let Some(pkt) = to_backend(input).filter(|p| p.error) {
                    self.icmp_forwarded += 1;
                    self.icmp6_forwarded += pkt.v6 as u64;
                }
            }
        }
    }

    fn count_decap(&mut self, input: &[u8], out: &[u8]) {
        if out == input {
            return;
        }
        self.decapsulated += 1;
        let l3 = l3_offset(input);
        match ethertype(input, l3) {
            ETHERTYPE_IPV6 => {
                self.ip6_decapsulated += 1;
                if input[l3 + 6] == 17 {
                    self.gue6_decapsulated += 1;
                }
            }
            _ if input.len() > l3 + 9 && input[l3 + 9] == 17 => self.gue_decapsulated += 1,
            _ if input.len() > l3 + 9 && input[l3 + 9] == 41 => self.sit_decapsulated += 1,
            _ => {}
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} frames through balancer and decap: balancer passed {}, dropped {}, sent {} ({} ICMP replies of which {} ICMPv6 echo replies and {} packet too big, {} ICMP errors to backends of which {} ICMPv6, {} in GUE, {} over IPv6 of which {} in GUE, {} IPv6 in IPv4); decap stripped {} ({} GUE, {} IPv6 outer of which {} GUE, {} IPv6 in IPv4); {} failures",
            self.frames,
            self.passed,
            self.dropped,
            self.transmitted,
            self.icmp_replies,
            self.echo6_replies,
            self.too_big6_sent,
            self.icmp_forwarded,
            self.icmp6_forwarded,
            self.gue_sent,
            self.ip6_sent,
            self.gue6_sent,
            self.sit_sent,
            self.decapsulated,
            self.gue_decapsulated,
            self.ip6_decapsulated,
            self.gue6_decapsulated,
            self.sit_decapsulated,
            self.failures.len()
        )
    }

    pub fn failure_text(&self) -> String {
        self.failures
            .iter()
            .map(|(program, frame, reason)| {
                let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
                format!(
                    "{program}: {reason}\n  frame ({} bytes): {hex}",
                    frame.len()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs `frames` frames of the corpus seeded with `seed` through a fresh
/// `balancer` ([`VIP_PORTS`], static next hop, MTU 1500) and a fresh
/// `decap` (local addresses `BACKENDS[0]` and `BACKENDS6[0]`), checking
/// each result. Needs root.
pub fn run(frames: u64, seed: u64) -> anyhow::Result<Report> {
    let vips: Vec<VipSpec> = VIP_PORTS
        .iter()
        .map(|p| {
            let vip = VipAddr {
                addr: p.addr,
                port: p.port,
                proto: if p.proto == 6 {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                },
            };
            let backends: Vec<(IpAddr, u32)> = p.backends.iter().map(|&b| (b, 1)).collect();
            let mut spec = VipSpec::new(vip, &backends);
            if p.tunnel.is_gue() {
                spec.encap = Encap::Gue { port: GUE_PORT };
            }
            spec
        })
        .collect();
    let mut balancer = Balancer::load(&test_options(static_config(MTU as u32)), &vips);
    let mut decap = loader::load_decap(&[BACKENDS[0].into(), BACKENDS6[0].into()], &[GUE_PORT])?;
    let mut corpus = Corpus::new(seed);
    let mut report = Report::default();
    for _ in 0..frames {
        let frame = corpus.next_frame();
        report.frames += 1;
        let (verdict, out) = balancer.run(&frame);
        report.count_balancer(&frame, verdict, &out);
        report.record("balancer", &frame, check_balancer(&frame, verdict, &out));
        let (verdict, out) = run_program(&mut decap, names::DECAP_PROGRAM, &frame);
        report.count_decap(&frame, &out);
        report.record("decap", &frame, check_decap(&frame, verdict, &out));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{
        echo_reply, echo_request, frag_needed_reply, from_router, from_router6, ip6_tunnel,
        packet_too_big_reply, sit, ECHO_ID_SEQ,
    };

    fn good() -> Vec<u8> {
        syn_to_vip()
    }

    /// The oracle's complaint about the balancer sending `out` with byte
    /// `at` flipped by `mask` for `input`.
    fn fault(input: &[u8], out: &[u8], at: usize, mask: u8) -> String {
        let mut bad = out.to_vec();
        bad[at] ^= mask;
        check_balancer(input, XDP_TX, &bad).expect_err("a fault")
    }

    fn encapsulated(input: &[u8]) -> Vec<u8> {
        crate::xdp::encapsulated(input, BACKENDS[1])
    }

    #[test]
    fn the_oracle_accepts_a_correct_encapsulation_and_names_each_fault() {
        let input = good();
        let out = encapsulated(&input);
        assert_eq!(check_balancer(&input, XDP_TX, &out), Ok(()));
        assert!(fault(&input, &out, 14 + 10, 1).contains("checksum"));
        let mut trailer = out.clone();
        trailer.extend_from_slice(&[0; 4]);
        assert!(check_balancer(&input, XDP_TX, &trailer)
            .unwrap_err()
            .contains("outer total length"));
        let mut changed = input.clone();
        changed[20] ^= 1;
        assert!(check_balancer(&input, XDP_PASS, &changed).is_err());
        assert!(check_balancer(&input, 0, &input).is_err(), "XDP_ABORTED");
    }

    /// The IP6IP6 frame the balancer must send for `ip` (a TCP or UDP
    /// packet to VIP6) to `backend`, with `trailer` wrongly tunnelled.
    fn ip6ip6(ip: &Ipv6, backend: Ipv6Addr, trailer: &[u8]) -> Vec<u8> {
        let (proto, sport, dport) = match ip.l4 {
            L4::Tcp { src, dst, .. } => (6, src, dst),
            L4::Udp { src, dst } => (17, src, dst),
            _ => unreachable!("a TCP or UDP packet"),
        };
        let hash = flow_hash6_of(ip.src, sport, ip.dst, dport, proto);
        let mut inner = ip.bytes();
        inner.extend_from_slice(trailer);
        let outer = ip6_tunnel((LB_SOURCE6, backend), 41, ip.tclass, hash, &inner);
        ethernet(NEXT_HOP_MAC, LB_MAC, None, ETHERTYPE_IPV6, &outer)
    }

    #[test]
    fn the_oracle_accepts_ipv6_encapsulations_and_names_each_fault() {
        let mut syn = syn6_to_vip6();
        syn.tclass = 0xb9;
        let input = from_router6(&syn);
        let out = ip6ip6(&syn, BACKENDS6[1], &[]);
        assert_eq!(check_balancer(&input, XDP_TX, &out), Ok(()));

        assert!(fault(&input, &out, 14 + 5, 1).contains("payload length"));
        assert!(fault(&input, &out, 14 + 3, 1).contains("flow label"));
        assert!(fault(&input, &out, 14 + 1, 0x10).contains("traffic class"));
        let mut with_trailer = input.clone();
        with_trailer.extend_from_slice(&[0xee; 6]);
        let tunnelled = ip6ip6(&syn, BACKENDS6[1], &[0xee; 6]);
        assert!(check_balancer(&with_trailer, XDP_TX, &tunnelled)
            .unwrap_err()
            .contains("trailer"));
        assert_eq!(check_balancer(&with_trailer, XDP_TX, &out), Ok(()));
        let to_v4_backend = ip6ip6(&syn, BACKENDS6[1], &[]);
        let mut elsewhere = to_v4_backend;
        elsewhere[14 + 39] ^= 0xff;
        assert!(check_balancer(&input, XDP_TX, &elsewhere)
            .unwrap_err()
            .contains("no backend"));
        let mut lying = input.clone();
        lying[14 + 4..14 + 6].copy_from_slice(&0xffffu16.to_be_bytes());
        assert!(
            check_balancer(&lying, XDP_TX, &out).is_err(),
            "payload past the frame"
        );

        // IPv6 in IPv4 (the UDP port's backend is IPv4) and IPv4 in IPv6.
        let udp = Ipv6::udp(CLIENT6, 40000, VIP6, UDP_PORT);
        let input = from_router6(&udp);
        let out = ethernet(
            NEXT_HOP_MAC,
            LB_MAC,
            None,
            ETHERTYPE_IPV4,
            &sit(LB_SOURCE, BACKENDS[2], &udp.bytes()),
        );
        assert_eq!(check_balancer(&input, XDP_TX, &out), Ok(()));
        assert!(fault(&input, &out, 14 + 10, 1).contains("checksum"));
        let v4 = Ipv4::tcp(CLIENT, 40000, VIP, TCP_PORT_4IN6, TCP_SYN);
        let input = from_router(&v4);
        let hash = crate::packet::flow_hash_of(&v4.bytes());
        let outer = ip6_tunnel((LB_SOURCE6, BACKENDS6[1]), 4, 0, hash, &v4.bytes());
        let out = ethernet(NEXT_HOP_MAC, LB_MAC, None, ETHERTYPE_IPV6, &outer);
        assert_eq!(check_balancer(&input, XDP_TX, &out), Ok(()));
        let mut as_ip6ip6 = out.clone();
        as_ip6ip6[14 + 6] = 41;
        assert!(check_balancer(&input, XDP_TX, &as_ip6ip6)
            .unwrap_err()
            .contains("next header 4"));
    }

    #[test]
    fn the_oracle_checks_icmp_replies() {
        let request = from_router(&echo_request(CLIENT, VIP, b"data"));
        let reply = ethernet(
            ROUTER_MAC,
            LB_MAC,
            None,
            ETHERTYPE_IPV4,
            &echo_reply(CLIENT, VIP, b"data").bytes(),
        );
        assert_eq!(check_balancer(&request, XDP_TX, &reply), Ok(()));
        assert!(fault(&request, &reply, 14 + 20 + 2, 1).contains("ICMP checksum"));
        let mut other_data = reply.clone();
        other_data[14 + 28] ^= 1;
        other_data[14 + 22] ^= 1;
        assert!(check_balancer(&request, XDP_TX, &other_data).is_err());

        let too_big =
            from_router(&Ipv4::tcp(CLIENT, 40000, VIP, TCP_PORT, TCP_ACK).payload(&[0; 1500 - 40]));
        let frag = frag_needed_reply(&too_big, MTU as u16);
        assert_eq!(check_balancer(&too_big, XDP_TX, &frag), Ok(()));
        let wrong_mtu = frag_needed_reply(&too_big, MTU as u16 - 1);
        assert!(check_balancer(&too_big, XDP_TX, &wrong_mtu).is_err());
        let mut small = too_big.clone();
        small.truncate(100);
        small[16..18].copy_from_slice(&86u16.to_be_bytes());
        assert!(check_balancer(&small, XDP_TX, &frag).is_err(), "it fits");
    }

    #[test]
    fn the_oracle_checks_icmpv6_replies() {
        let request = from_router6(&icmp6_packet((CLIENT6, VIP6), 128, 0, ECHO_ID_SEQ, b"data"));
        let mut answer = icmp6_packet((VIP6, CLIENT6), 129, 0, ECHO_ID_SEQ, b"data");
        answer.hop_limit = 64;
        let reply = ethernet(ROUTER_MAC, LB_MAC, None, ETHERTYPE_IPV6, &answer.bytes());
        assert_eq!(check_balancer(&request, XDP_TX, &reply), Ok(()));
        assert!(fault(&request, &reply, 14 + 40 + 2, 1).contains("checksum"));
        let mut other_data = reply.clone();
        other_data[14 + 48] ^= 1;
        other_data[14 + 42] ^= 1;
        assert!(check_balancer(&request, XDP_TX, &other_data).is_err());
        let mut from_multicast = request.clone();
        from_multicast[14 + 8] = 0xff;
        let mut to_multicast = reply.clone();
        to_multicast[14 + 24] = 0xff;
        assert!(check_balancer(&from_multicast, XDP_TX, &to_multicast).is_err());

        let big = from_router6(&syn6_to_vip6().payload(&[0; 1500 - 60]));
        let ptb = packet_too_big_reply(&big, MTU as u32, 40);
        assert_eq!(check_balancer(&big, XDP_TX, &ptb), Ok(()));
        assert!(fault(&big, &ptb, 14 + 42, 1).contains("checksum"));
        assert!(fault(&big, &ptb, 14 + 5, 4).contains("payload length"));
        let sit_mtu = packet_too_big_reply(&big, MTU as u32, 20);
        assert!(check_balancer(&big, XDP_TX, &sit_mtu)
            .unwrap_err()
            .contains("MTU"));
        let fits = from_router6(&syn6_to_vip6().payload(&[0; 1400 - 60]));
        let ptb_fits = packet_too_big_reply(&fits, MTU as u32, 40);
        assert!(check_balancer(&fits, XDP_TX, &ptb_fits)
            .unwrap_err()
            .contains("fits"));
        // An IPv4 header in the reply to an IPv6 packet, and the reverse.
        let v4_big =
            from_router(&Ipv4::tcp(CLIENT, 40000, VIP, TCP_PORT, TCP_ACK).payload(&[0; 1500 - 40]));
        let frag = frag_needed_reply(&v4_big, MTU as u16);
        assert!(check_balancer(&big, XDP_TX, &frag).is_err());
        assert!(check_balancer(&v4_big, XDP_TX, &ptb).is_err());
        let mut v4_in_v6 = frag.clone();
        v4_in_v6[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        assert!(check_balancer(&big, XDP_TX, &v4_in_v6).is_err());
    }

    #[test]
    fn the_oracle_checks_ipv6_decapsulation() {
        let v4 = Ipv4::tcp(CLIENT, 40000, VIP, TCP_PORT, TCP_ACK).bytes();
        let outer = ipv6_header(0, 7, 4, 64, (LB_SOURCE6, BACKENDS6[0]), &v4);
        let input = ethernet(LB_MAC, ROUTER_MAC, None, ETHERTYPE_IPV6, &outer);
        let inner = ethernet(LB_MAC, ROUTER_MAC, None, ETHERTYPE_IPV4, &v4);
        assert_eq!(check_decap(&input, XDP_PASS, &inner), Ok(()));
        let mut wrong_type = inner.clone();
        wrong_type[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        assert!(check_decap(&input, XDP_PASS, &wrong_type).is_err());
        let mut elsewhere = input.clone();
        elsewhere[14 + 39] ^= 0xff;
        assert!(check_decap(&elsewhere, XDP_PASS, &inner)
            .unwrap_err()
            .contains("not a tunnel"));
        let mut lying = input.clone();
        lying[14 + 4..14 + 6].copy_from_slice(&0xffffu16.to_be_bytes());
        assert!(check_decap(&lying, XDP_PASS, &inner).is_err());
        // CE on the outer header must reach an ECN-capable inner packet.
        let mut ect = Ipv4::tcp(CLIENT, 40000, VIP, TCP_PORT, TCP_ACK);
        ect.tos = 0b10;
        let outer = ipv6_header(0b11, 7, 4, 64, (LB_SOURCE6, BACKENDS6[0]), &ect.bytes());
        let congested = ethernet(LB_MAC, ROUTER_MAC, None, ETHERTYPE_IPV6, &outer);
        let unmarked = ethernet(LB_MAC, ROUTER_MAC, None, ETHERTYPE_IPV4, &ect.bytes());
        assert!(check_decap(&congested, XDP_PASS, &unmarked).is_err());
        ect.tos = 0b11;
        let marked = ethernet(LB_MAC, ROUTER_MAC, None, ETHERTYPE_IPV4, &ect.bytes());
        assert_eq!(check_decap(&congested, XDP_PASS, &marked), Ok(()));

        // IPv6 in IPv4 (protocol 41) to the IPv4 address.
        let v6 = syn6_to_vip6().bytes();
        let input = ethernet(
            LB_MAC,
            ROUTER_MAC,
            Some(5),
            ETHERTYPE_IPV4,
            &sit(LB_SOURCE, BACKENDS[0], &v6),
        );
        let inner = ethernet(LB_MAC, ROUTER_MAC, Some(5), ETHERTYPE_IPV6, &v6);
        assert_eq!(check_decap(&input, XDP_PASS, &inner), Ok(()));
        let mut as_ipip = input.clone();
        as_ipip[18 + 9] = 4;
        assert!(check_decap(&as_ipip, XDP_PASS, &inner).is_err());
    }

    #[test]
    fn the_corpus_is_deterministic_and_starts_with_the_sweep() {
        let mut a = Corpus::new(7);
        let mut b = Corpus::new(7);
        assert_eq!(
            a.next_frame().len(),
            MIN_FRAME,
            "the sweep starts at the shortest frame"
        );
        b.next_frame();
        for _ in 0..5000 {
            assert_eq!(a.next_frame(), b.next_frame());
        }
        let mut c = Corpus::new(8);
        let differs = (0..5000).any(|_| a.next_frame() != c.next_frame());
        assert!(differs, "another seed gives other frames");
    }
}
