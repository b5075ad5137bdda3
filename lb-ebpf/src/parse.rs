//! Header parsing. Every read is bounds-checked against `data_end` first;
//! a packet that is too short for what it claims is `Malformed`, never read
//! past.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Flow6Key, FlowKey, Ipv6Wire, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    IPV6_EXT_DEST_OPTS, IPV6_EXT_FRAGMENT, IPV6_EXT_HOP_BY_HOP, IPV6_EXT_ROUTING,
    MAX_IPV6_EXT_HEADERS,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

pub const ETH_LEN: usize = size_of::<EthHdr>();
pub const VLAN_LEN: usize = size_of::<VlanHdr>();
pub const IPV4_MIN_LEN: usize = size_of::<Ipv4Hdr>();
pub const IPV6_LEN: usize = size_of::<Ipv6Hdr>();

/// "More fragments" flag and fragment offset, in host order.
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET_MASK: u16 = 0x1fff;
pub const IP_DF: u16 = 0x4000;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;

/// Pointer to a `T` at `offset` from the start of the packet, or `None` if
/// the packet is shorter.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Bytes in the frame. The difference is taken before anything is
/// subtracted from it, through a barrier: LLVM otherwise reassociates
/// `end - start - n` into `(-n - start) + end`, and the verifier refuses
/// to subtract the packet pointer from a number.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    core::hint::black_box(ctx.data_end() - ctx.data())
}

/// Where the IPv4 header starts: after Ethernet, or after Ethernet and one
/// 802.1Q tag.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L2 {
    Plain,
    Vlan,
}

impl L2 {
    #[inline(always)]
    pub fn header_len(self) -> usize {
        match self {
            L2::Plain => ETH_LEN,
            L2::Vlan => ETH_LEN + VLAN_LEN,
        }
    }
}

/// A TCP or UDP packet over IPv4, not fragmented.
pub struct Ipv4Flow {
    pub l2: L2,
    pub flow: FlowKey,
    /// IPv4 total length (host order), already checked against the frame.
    pub tot_len: u16,
    /// TOS (DSCP and ECN) of the packet, inherited by the outer header.
    pub tos: u8,
    pub tcp_syn: bool,
    /// TCP FIN or RST: the client ends the connection (what `least-conn`
    /// counts as a close).
    pub tcp_fin_rst: bool,
    /// The client set DF: it wants "fragmentation needed" rather than
    /// fragments (RFC 1191).
    pub df: bool,
}

/// An ICMP message over IPv4 (any type; `icmp` sorts them out). The
/// lengths are checked as for TCP and UDP, and the 8-byte ICMP header is
/// inside both the frame and the IP total length.
pub struct Ipv4Icmp {
    pub l2: L2,
    /// IPv4 header length in bytes (20..=60).
    pub ihl: usize,
    /// IPv4 total length (host order), at least `ihl + 8`, within the frame.
    pub tot_len: u16,
    pub src_addr: u32,
    pub dst_addr: u32,
    pub tos: u8,
    /// A fragment (first or later): no complete ICMP message to act on.
    pub fragment: bool,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

pub enum Parsed {
    /// Not IPv4, or IPv4 but neither TCP nor UDP: not ours.
    Other,
    /// Shorter than its headers claim, an invalid IHL, or an IPv4 ethertype
    /// over a header whose version is not 4.
    Malformed,
    /// A TCP or UDP fragment (first or later); carries no usable ports.
    Fragment {
        dst_addr: u32,
    },
    Flow(Ipv4Flow),
    /// ICMP over IPv4 (reached only after the TCP/UDP compare failed, so
    /// TCP and UDP pay nothing for it).
    Icmp(Ipv4Icmp),
}

/// Finds the L3 ethertype, skipping one 802.1Q tag.
#[inline(always)]
pub fn parse_l2(ctx: &XdpContext) -> Option<(L2, u16)> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type != EtherType::Ieee8021q.into() {
        return Some((L2::Plain, ether_type));
    }
    let vlan: *const VlanHdr = ptr_at(ctx, ETH_LEN)?;
    Some((L2::Vlan, unsafe { (*vlan).ether_type }))
}

/// The IPv4 header after `l2` (the ethertype said IPv4), if the frame
/// holds its fixed 20 bytes and it says version 4: what the address filter
/// reads before anything else of the packet. `None`: malformed. Its other
/// fields are [`parse`]'s to check.
#[inline(always)]
pub fn ipv4_header(ctx: &XdpContext, l2: L2) -> Option<&Ipv4Hdr> {
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l2.header_len())? };
    (ip.vihl >> 4 == 4).then_some(ip)
}

/// Parses the IPv4 packet whose header [`ipv4_header`] found after `l2`;
/// `dst_addr` is its destination, as the filter read it (read once).
#[inline(always)]
pub fn parse(ctx: &XdpContext, l2: L2, ip: &Ipv4Hdr, dst_addr: u32) -> Parsed {
    let l3 = l2.header_len();
    let proto = ip.proto;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        if proto == IPPROTO_ICMP {
            return parse_icmp(ctx, l2, ip, dst_addr);
        }
        return Parsed::Other;
    }
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len);
    let frame_l3_len = frame_len(ctx) - l3;
    if ihl < IPV4_MIN_LEN || (tot_len as usize) < ihl || tot_len as usize > frame_l3_len {
        return Parsed::Malformed;
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & (IP_MF | IP_OFFSET_MASK) != 0 {
        return Parsed::Fragment { dst_addr };
    }
    let Some(ports) = parse_ports(ctx, proto, l3 + ihl, tot_len as usize - ihl) else {
        return Parsed::Malformed;
    };
    Parsed::Flow(Ipv4Flow {
        l2,
        flow: FlowKey {
            src_addr: u32::from_ne_bytes(ip.src_addr),
            dst_addr,
            src_port: ports.src_port,
            dst_port: ports.dst_port,
            proto,
            _pad: 0,
            _pad2: 0,
        },
        tot_len,
        tos: ip.tos,
        tcp_syn: ports.tcp_syn,
        tcp_fin_rst: ports.tcp_fin_rst,
        df: frags & IP_DF != 0,
    })
}

/// What the transport header of a TCP or UDP packet tells the balancer.
pub struct Ports {
    /// Wire order.
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_syn: bool,
    pub tcp_fin_rst: bool,
}

/// Reads the TCP or UDP header at `l4`, of which the IP header says
/// `room` bytes belong to the packet. `None`: the header does not fit.
#[inline(always)]
fn parse_ports(ctx: &XdpContext, proto: u8, l4: usize, room: usize) -> Option<Ports> {
    if proto == IPPROTO_TCP {
        if room < size_of::<TcpHdr>() {
            return None;
        }
        let tcp = unsafe { &*ptr_at::<TcpHdr>(ctx, l4)? };
        // Byte 13 of the TCP header holds the flags.
        let flags = unsafe { *((tcp as *const TcpHdr as *const u8).add(13)) };
        return Some(Ports {
            src_port: u16::from_ne_bytes(tcp.source),
            dst_port: u16::from_ne_bytes(tcp.dest),
            // A connection opener: SYN without ACK (a SYN-ACK is a reply).
            tcp_syn: flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN,
            tcp_fin_rst: flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0,
        });
    }
    if room < size_of::<UdpHdr>() {
        return None;
    }
    let udp = unsafe { &*ptr_at::<UdpHdr>(ctx, l4)? };
    Some(Ports {
        src_port: u16::from_ne_bytes(udp.src),
        dst_port: u16::from_ne_bytes(udp.dst),
        tcp_syn: false,
        tcp_fin_rst: false,
    })
}

/// The rest of [`parse`] for protocol 1.
#[inline(always)]
fn parse_icmp(ctx: &XdpContext, l2: L2, ip: &Ipv4Hdr, dst_addr: u32) -> Parsed {
    let l3 = l2.header_len();
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len);
    let frame_l3_len = frame_len(ctx) - l3;
    if ihl < IPV4_MIN_LEN || (tot_len as usize) < ihl + 8 || tot_len as usize > frame_l3_len {
        return Parsed::Malformed;
    }
    let Some(icmp) = ptr_at::<[u8; 2]>(ctx, l3 + ihl) else {
        return Parsed::Malformed;
    };
    let [icmp_type, icmp_code] = unsafe { *icmp };
    let frags = u16::from_be_bytes(ip.frags);
    Parsed::Icmp(Ipv4Icmp {
        l2,
        ihl,
        tot_len,
        src_addr: u32::from_ne_bytes(ip.src_addr),
        dst_addr,
        tos: ip.tos,
        fragment: frags & (IP_MF | IP_OFFSET_MASK) != 0,
        icmp_type,
        icmp_code,
    })
}

/// A TCP or UDP packet over IPv6, not fragmented.
pub struct Ipv6Flow {
    pub l2: L2,
    pub flow: Flow6Key,
    /// The whole IPv6 packet's length (40 + payload length), already
    /// checked against the frame.
    pub pkt_len: u16,
    /// Traffic class (DSCP and ECN), inherited by the outer header.
    pub tclass: u8,
    pub tcp_syn: bool,
    pub tcp_fin_rst: bool,
}

/// An ICMPv6 message (any type; `icmp6` sorts them out), with its 8-byte
/// header inside both the frame and the payload length.
pub struct Ipv6Icmp {
    pub l2: L2,
    /// Offset of the ICMPv6 header from the IPv6 header (40 plus the
    /// extension headers walked).
    pub l4: usize,
    pub pkt_len: u16,
    pub src_addr: Ipv6Wire,
    pub dst_addr: Ipv6Wire,
    pub tclass: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

pub enum Parsed6 {
    /// Not TCP, UDP or ICMPv6 (after the extension headers), or more
    /// extension headers than the walk takes: not classified, passed.
    Other,
    /// Shorter than its headers claim, a version other than 6, a payload
    /// length of 0 (a jumbogram) or past the frame.
    Malformed,
    /// A fragment header: no usable ports (first or later fragment).
    Fragment {
        dst_addr: Ipv6Wire,
    },
    Flow(Ipv6Flow),
    Icmp(Ipv6Icmp),
}

/// The fixed IPv6 header after `l2` (the ethertype said IPv6), if the
/// frame holds its 40 bytes and it says version 6: what the address filter
/// reads before any extension header is walked. `None`: malformed.
#[inline(always)]
pub fn ipv6_header(ctx: &XdpContext, l2: L2) -> Option<&Ipv6Hdr> {
    // SAFETY: `ptr_at` checked that the header lies inside the packet.
    let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l2.header_len())? };
    // Version (4 bits), traffic class (8), flow label (20).
    (ip.vcf[0] >> 4 == 6).then_some(ip)
}

/// An IPv6 address as the maps key it: four wire-order words.
#[inline(always)]
pub fn ipv6_wire(addr: [u8; 16]) -> Ipv6Wire {
    // SAFETY: sixteen u8 and four u32 have the same size, any bits valid.
    unsafe { core::mem::transmute(addr) }
}

/// Parses the IPv6 packet whose fixed header [`ipv6_header`] found after
/// `l2` (`dst_addr`: its destination, as the filter read it): at most
/// `MAX_IPV6_EXT_HEADERS` hop-by-hop, routing and destination-options
/// headers, then the transport header.
#[inline(always)]
pub fn parse6(ctx: &XdpContext, l2: L2, ip: &Ipv6Hdr, dst_addr: Ipv6Wire) -> Parsed6 {
    let l3 = l2.header_len();
    let head = ip.vcf;
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    let frame_l3_len = frame_len(ctx) - l3;
    if payload_len == 0 || IPV6_LEN + payload_len > frame_l3_len {
        return Parsed6::Malformed;
    }
    let pkt_len = (IPV6_LEN + payload_len) as u16;
    let src_addr = ipv6_wire(ip.src_addr);
    let mut next = ip.next_hdr;
    // Offset of the next header from the IPv6 header.
    let mut l4 = IPV6_LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_EXT_HOP_BY_HOP | IPV6_EXT_ROUTING | IPV6_EXT_DEST_OPTS => {
                // Every extension header is at least 8 bytes, inside the packet.
                if l4 + 8 > pkt_len as usize {
                    return Parsed6::Malformed;
                }
                // Next header, then the length in 8-byte units past the first 8.
                let Some(ext) = ptr_at::<[u8; 2]>(ctx, l3 + l4) else {
                    return Parsed6::Malformed;
                };
                let [following, len] = unsafe { *ext };
                next = following;
                l4 += (len as usize + 1) * 8;
                if l4 > pkt_len as usize {
                    return Parsed6::Malformed;
                }
            }
            IPV6_EXT_FRAGMENT => return Parsed6::Fragment { dst_addr },
            _ => break,
        }
    }
    let room = pkt_len as usize - l4;
    let tclass = (head[0] << 4) | (head[1] >> 4);
    match next {
        IPPROTO_TCP | IPPROTO_UDP => {
            let Some(ports) = parse_ports(ctx, next, l3 + l4, room) else {
                return Parsed6::Malformed;
            };
            Parsed6::Flow(Ipv6Flow {
                l2,
                flow: Flow6Key {
                    src_addr,
                    dst_addr,
                    src_port: ports.src_port,
                    dst_port: ports.dst_port,
                    proto: next,
                    _pad: 0,
                    _pad2: 0,
                },
                pkt_len,
                tclass,
                tcp_syn: ports.tcp_syn,
                tcp_fin_rst: ports.tcp_fin_rst,
            })
        }
        IPPROTO_ICMPV6 => {
            if room < 8 {
                return Parsed6::Malformed;
            }
            let Some(icmp) = ptr_at::<[u8; 2]>(ctx, l3 + l4) else {
                return Parsed6::Malformed;
            };
            let [icmp_type, icmp_code] = unsafe { *icmp };
            Parsed6::Icmp(Ipv6Icmp {
                l2,
                l4,
                pkt_len,
                src_addr,
                dst_addr,
                tclass,
                icmp_type,
                icmp_code,
            })
        }
        _ => Parsed6::Other,
    }
}
