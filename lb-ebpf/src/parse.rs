//! Header parsing. Every read is bounds-checked against `data_end` first;
//! a packet that is too short for what it claims is `Malformed`, never read
//! past.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

pub const ETH_LEN: usize = size_of::<EthHdr>();
pub const VLAN_LEN: usize = size_of::<VlanHdr>();
pub const IPV4_MIN_LEN: usize = size_of::<Ipv4Hdr>();

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

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some((l2, ether_type)) = parse_l2(ctx) else {
        return Parsed::Malformed;
    };
    if ether_type != EtherType::Ipv4.into() {
        return Parsed::Other;
    }
    let l3 = l2.header_len();
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return Parsed::Malformed;
    };
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Parsed::Malformed;
    }
    let proto = ip.proto;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        if proto == IPPROTO_ICMP {
            return parse_icmp(ctx, l2, ip);
        }
        return Parsed::Other;
    }
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len);
    let frame_l3_len = ctx.data_end() - ctx.data() - l3;
    if ihl < IPV4_MIN_LEN || (tot_len as usize) < ihl || tot_len as usize > frame_l3_len {
        return Parsed::Malformed;
    }
    let frags = u16::from_be_bytes(ip.frags);
    let dst_addr = u32::from_ne_bytes(ip.dst_addr);
    if frags & (IP_MF | IP_OFFSET_MASK) != 0 {
        return Parsed::Fragment { dst_addr };
    }
    let l4 = l3 + ihl;
    let mut flow = FlowKey {
        src_addr: u32::from_ne_bytes(ip.src_addr),
        dst_addr,
        src_port: 0,
        dst_port: 0,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    let mut tcp_syn = false;
    let mut tcp_fin_rst = false;
    if proto == IPPROTO_TCP {
        if tot_len as usize - ihl < size_of::<TcpHdr>() {
            return Parsed::Malformed;
        }
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4) else {
            return Parsed::Malformed;
        };
        let tcp = unsafe { &*tcp };
        flow.src_port = u16::from_ne_bytes(tcp.source);
        flow.dst_port = u16::from_ne_bytes(tcp.dest);
        // Byte 13 of the TCP header holds the flags.
        let flags = unsafe { *((tcp as *const TcpHdr as *const u8).add(13)) };
        // A connection opener: SYN without ACK (a SYN-ACK is a reply).
        tcp_syn = flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
        tcp_fin_rst = flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0;
    } else {
        if tot_len as usize - ihl < size_of::<UdpHdr>() {
            return Parsed::Malformed;
        }
        let Some(udp) = ptr_at::<UdpHdr>(ctx, l4) else {
            return Parsed::Malformed;
        };
        let udp = unsafe { &*udp };
        flow.src_port = u16::from_ne_bytes(udp.src);
        flow.dst_port = u16::from_ne_bytes(udp.dst);
    }
    Parsed::Flow(Ipv4Flow {
        l2,
        flow,
        tot_len,
        tos: ip.tos,
        tcp_syn,
        tcp_fin_rst,
        df: frags & IP_DF != 0,
    })
}

/// The rest of [`parse`] for protocol 1.
#[inline(always)]
fn parse_icmp(ctx: &XdpContext, l2: L2, ip: &Ipv4Hdr) -> Parsed {
    let l3 = l2.header_len();
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len);
    let frame_l3_len = ctx.data_end() - ctx.data() - l3;
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
        dst_addr: u32::from_ne_bytes(ip.dst_addr),
        tos: ip.tos,
        fragment: frags & (IP_MF | IP_OFFSET_MASK) != 0,
        icmp_type,
        icmp_code,
    })
}
