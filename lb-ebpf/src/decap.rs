//! The `decap` program for backends: strips the outer headers of IP-in-IP
//! packets (outer IPv4 or IPv6, inner IPv4 or IPv6: protocols 4 and 41),
//! and of GUE packets (UDP over IPv4 or IPv6 to one of the configured
//! ports, the inner IPv4 or IPv6 packet right after the UDP header; the
//! UDP checksum is not checked, the inner packet carries its own), sent to one of
//! the host's addresses, and hands the client's packet to the stack: for
//! hosts without kernel ipip, sit, ip6tnl or fou support, and faster than
//! them.
//!
//! A congestion mark a router set on the outer header (ECN CE) is carried to
//! the inner packet when that is ECN-capable (RFC 6040), so the client's
//! congestion control still hears of it.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    DecapStats, Ipv6Wire, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, MAX_DECAP_ADDRS,
    MAX_DECAP_GUE_PORTS,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::{
    csum,
    parse::{parse_l2, ptr_at, ETH_LEN, IPV4_MIN_LEN, IPV6_LEN, L2},
};

/// The ECN field (low two bits of the TOS byte) and its CE codepoint.
const ECN_MASK: u8 = 0b11;
const ECN_CE: u8 = 0b11;
const ECN_NOT_ECT: u8 = 0;

/// Local addresses (wire order → 1) whose IP-in-IP packets are stripped.
/// Written by the decap loader, read per packet.
#[map]
pub static DECAP_ADDRS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// Local IPv6 addresses (wire order → 1) whose IP6IP6 and IPv4-in-IPv6
/// packets are stripped. Written by the decap loader, read per packet.
#[map]
pub static DECAP_ADDRS6: HashMap<Ipv6Wire, u8> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// UDP destination ports (wire order → 1) whose packets to a
/// `DECAP_ADDRS` or `DECAP_ADDRS6` address are GUE. Written by the decap loader, read per
/// UDP packet to a local address.
#[map]
pub static DECAP_GUE_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_DECAP_GUE_PORTS, 0);

/// Counters at index 0. Written by `decap`, read by tests and tools.
#[map]
pub static DECAP_STATS: PerCpuArray<DecapStats> = PerCpuArray::with_max_entries(1, 0);

pub fn decap(ctx: &XdpContext) -> u32 {
    let Some(stats) = DECAP_STATS.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    let stats = unsafe { &mut *stats };
    match strip(ctx) {
        Outcome::NotOurs => stats.passed += 1,
        Outcome::Malformed => stats.malformed += 1,
        Outcome::Decapsulated => stats.decapsulated += 1,
        Outcome::GueDecapsulated => stats.gue_decapsulated += 1,
    }
    xdp_action::XDP_PASS
}

enum Outcome {
    NotOurs,
    Malformed,
    Decapsulated,
    GueDecapsulated,
}

/// What the outer header says, once it is known to be a tunnel to us.
struct Outer {
    /// Bytes to strip after L2: the outer IP header (and UDP header).
    strip: usize,
    /// The outer packet's length from its own header.
    len: usize,
    /// The inner versions the outer header allows: IP-in-IP names one
    /// (4 or 41), GUE variant 1 leaves it to the version nibble.
    inner_v4: bool,
    inner_v6: bool,
    gue: bool,
    /// The outer header carries ECN CE.
    congested: bool,
}

#[inline(always)]
fn strip(ctx: &XdpContext) -> Outcome {
    let Some((l2, ether_type)) = parse_l2(ctx) else {
        return Outcome::NotOurs;
    };
    let l3 = l2.header_len();
    let outer = if ether_type == EtherType::Ipv4.into() {
        outer_ipv4(ctx, l3)
    } else if ether_type == EtherType::Ipv6.into() {
        outer_ipv6(ctx, l3)
    } else {
        return Outcome::NotOurs;
    };
    let outer = match outer {
        Ok(outer) => outer,
        Err(outcome) => return outcome,
    };
    // Copy the L2 header now, while the verifier knows the bounds of the
    // pointers it came through; it is written back after the adjust.
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Outcome::NotOurs;
    };
    let eth = unsafe { *eth };
    let vlan = match l2 {
        L2::Plain => None,
        L2::Vlan => match ptr_at::<VlanHdr>(ctx, ETH_LEN) {
            Some(v) => Some(unsafe { *v }),
            None => return Outcome::NotOurs,
        },
    };
    let strip = outer.strip;
    // Two bytes rather than one: the verifier cannot follow the bounds
    // check the compiler makes of a one-byte read (`start >= end`).
    let Some(first) = ptr_at::<[u8; 2]>(ctx, l3 + strip) else {
        return Outcome::Malformed;
    };
    let inner_ether_type: u16 = match unsafe { (*first)[0] } >> 4 {
        4 if outer.inner_v4 => EtherType::Ipv4.into(),
        6 if outer.inner_v6 => EtherType::Ipv6.into(),
        _ => return Outcome::Malformed,
    };
    if inner_ether_type == EtherType::Ipv4.into() {
        // A whole inner header inside the outer packet: a truncated inner
        // packet is not decapsulated.
        if outer.len < strip + IPV4_MIN_LEN {
            return Outcome::Malformed;
        }
        let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, l3 + strip) else {
            return Outcome::Malformed;
        };
        if outer.congested {
            // SAFETY: `inner` was bounds-checked above.
            unsafe { mark_congestion(&mut *inner) };
        }
    } else {
        if outer.len < strip + IPV6_LEN || ptr_at::<[u8; IPV6_LEN]>(ctx, l3 + strip).is_none() {
            return Outcome::Malformed;
        }
        // The IPv6 traffic class spans the first two bytes; ECN is bits
        // 4-5 of the second. No header checksum to fix.
        if outer.congested {
            let second = unsafe { &mut (*first)[1] };
            let ecn = (*second >> 4) & ECN_MASK;
            if ecn != ECN_NOT_ECT {
                *second |= ECN_CE << 4;
            }
        }
    }

    // Drop the outer headers from the front of the packet and write the L2
    // header (and VLAN tag) back in front of the inner packet, with the
    // inner packet's ethertype.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip as i32) } != 0 {
        return Outcome::Malformed;
    }
    let Some(new_eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Outcome::Malformed;
    };
    unsafe { *new_eth = eth };
    match vlan {
        None => unsafe { (*new_eth).ether_type = inner_ether_type },
        Some(mut vlan) => {
            let Some(new_vlan) = ptr_at::<VlanHdr>(ctx, ETH_LEN) else {
                return Outcome::Malformed;
            };
            vlan.ether_type = inner_ether_type;
            unsafe { *new_vlan = vlan };
        }
    }
    if outer.gue {
        Outcome::GueDecapsulated
    } else {
        Outcome::Decapsulated
    }
}

/// An outer IPv4 header at `l3`: IP-in-IP (4), IPv6 in IPv4 (41) or GUE
/// to a local address. `Err`: not ours, or ours but unusable.
#[inline(always)]
fn outer_ipv4(ctx: &XdpContext, l3: usize) -> Result<Outer, Outcome> {
    let Some(outer) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return Err(Outcome::NotOurs);
    };
    let outer = unsafe { &*outer };
    let proto = outer.proto;
    if proto != IPPROTO_IPIP && proto != IPPROTO_IPV6 && proto != IPPROTO_UDP
        || DECAP_ADDRS
            .get_ptr(u32::from_ne_bytes(outer.dst_addr))
            .is_none()
    {
        return Err(Outcome::NotOurs);
    }
    let outer_len = ((outer.vihl & 0x0f) as usize) * 4;
    let outer_tot_len = u16::from_be_bytes(outer.tot_len) as usize;
    // An IPv4 ethertype in front of another version is no IPv4 header.
    if outer.vihl >> 4 != 4 {
        return Err(Outcome::Malformed);
    }
    let gue = proto == IPPROTO_UDP;
    // The GUE port is checked before anything is called malformed: other
    // UDP to this host is none of our business.
    if gue {
        if outer_len < IPV4_MIN_LEN {
            return Err(Outcome::NotOurs);
        }
        let udp = gue_header_at(ctx, l3 + outer_len)?;
        // A UDP length that disagrees with the IP one is a lie about
        // where the inner packet ends.
        if u16::from_be_bytes(udp.len) as usize + outer_len != outer_tot_len {
            return Err(Outcome::Malformed);
        }
    }
    let strip = if gue {
        outer_len + UdpHdr::LEN
    } else {
        outer_len
    };
    // A fragmented outer packet cannot be stripped piecewise: leave it to
    // the kernel (which will drop it, having no tunnel for it).
    if outer_len < IPV4_MIN_LEN || u16::from_be_bytes(outer.frags) & 0x3fff != 0 {
        return Err(Outcome::Malformed);
    }
    Ok(Outer {
        strip,
        len: outer_tot_len,
        inner_v4: proto != IPPROTO_IPV6,
        inner_v6: proto != IPPROTO_IPIP,
        gue,
        congested: outer.tos & ECN_MASK == ECN_CE,
    })
}

/// An outer IPv6 header at `l3`: IP6IP6 (41), IPv4 in IPv6 (4) or GUE to
/// a local address, with no extension headers (the balancer sends none).
#[inline(always)]
fn outer_ipv6(ctx: &XdpContext, l3: usize) -> Result<Outer, Outcome> {
    let Some(outer) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
        return Err(Outcome::NotOurs);
    };
    let outer = unsafe { &*outer };
    let next = outer.next_hdr;
    let dst: Ipv6Wire = unsafe { core::mem::transmute(outer.dst_addr) };
    if next != IPPROTO_IPIP && next != IPPROTO_IPV6 && next != IPPROTO_UDP
        || DECAP_ADDRS6.get_ptr(dst).is_none()
    {
        return Err(Outcome::NotOurs);
    }
    let payload_len = u16::from_be_bytes(outer.payload_len) as usize;
    let gue = next == IPPROTO_UDP;
    if gue {
        // As over IPv4: other UDP to this host is not ours, and a UDP
        // length other than the payload's lies about where the inner
        // packet ends.
        let udp = gue_header_at(ctx, l3 + IPV6_LEN)?;
        if u16::from_be_bytes(udp.len) as usize != payload_len {
            return Err(Outcome::Malformed);
        }
    }
    let len = IPV6_LEN + payload_len;
    // The payload length must not claim more than the frame holds.
    if outer.vcf[0] >> 4 != 6 || l3 + len > ctx.data_end() - ctx.data() {
        return Err(Outcome::Malformed);
    }
    let tclass = (outer.vcf[0] << 4) | (outer.vcf[1] >> 4);
    Ok(Outer {
        strip: if gue { IPV6_LEN + UdpHdr::LEN } else { IPV6_LEN },
        len,
        inner_v4: next != IPPROTO_IPV6,
        inner_v6: next != IPPROTO_IPIP,
        gue,
        congested: tclass & ECN_MASK == ECN_CE,
    })
}

/// The UDP header at `offset` if it is whole and to a GUE port; other UDP
/// is not ours.
#[inline(always)]
fn gue_header_at(ctx: &XdpContext, offset: usize) -> Result<UdpHdr, Outcome> {
    let Some(udp) = ptr_at::<UdpHdr>(ctx, offset) else {
        return Err(Outcome::NotOurs);
    };
    let udp = unsafe { *udp };
    if DECAP_GUE_PORTS
        .get_ptr(u16::from_ne_bytes(udp.dst))
        .is_none()
    {
        return Err(Outcome::NotOurs);
    }
    Ok(udp)
}

/// Sets CE on an ECN-capable header, updating its checksum incrementally
/// (RFC 1624). A Not-ECT packet is left as it is: it cannot carry the mark.
#[inline(always)]
fn mark_congestion(ip: &mut Ipv4Hdr) {
    let ecn = ip.tos & ECN_MASK;
    if ecn == ECN_NOT_ECT || ecn == ECN_CE {
        return;
    }
    let old_word = u16::from_be_bytes([ip.vihl, ip.tos]);
    ip.tos |= ECN_CE;
    let new_word = u16::from_be_bytes([ip.vihl, ip.tos]);
    let check = u16::from_be_bytes(ip.check);
    let sum = (!check) as u32 + (!old_word) as u32 + new_word as u32;
    ip.check = csum::fold(sum).to_be_bytes();
}
