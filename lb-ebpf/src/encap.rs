//! Encapsulation: a new outer header between the Ethernet header (and its
//! VLAN tag, kept as is, its ethertype set to the outer family) and the
//! client's packet of either family:
//! - to an IPv4 backend, an IPv4 header: IP-in-IP (protocol 4, RFC 2003;
//!   41 for an IPv6 client packet, as Linux's `sit`), or GUE, which puts a
//!   UDP header after it (variant 1, the inner packet straight after the
//!   UDP header) so that the backend's NIC can spread tunnels over its
//!   receive queues by the outer ports;
//! - to an IPv6 backend, an IPv6 header (RFC 2473: next header 41 for
//!   IP6IP6, 4 for IPv4-in-IPv6, as Linux's `ip6tnl`), whose flow label
//!   comes from the flow hash so that ECMP and RSS spread tunnels; or, for
//!   GUE, that IPv6 header with the same UDP header after it.
//!
//! The GUE UDP checksum is 0. IPv4 allows it (RFC 768); IPv6 allows it for
//! tunnel protocols whose receiver accepts it (RFC 6935, RFC 6936), as
//! Linux's fou sockets do (they are created with zero-checksum receive
//! allowed) and as the backends' `decap` does. The inner packet carries
//! its own checksums. (An outer checksum could be derived from them
//! without reading the payload, as Katran does, for paths that drop
//! zero-checksum IPv6 UDP; it is not done.)
//!
//! The outer header always carries DF, as Linux's own ipip tunnels do by
//! default (`pmtudisc`): an outer fragment could not be reassembled through
//! the backends' `decap`, and a datagram that is never fragmented needs no
//! unique IP id (RFC 6864), so the id stays 0. The LB checks the egress MTU
//! before it encapsulates.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    gue_source_port, outer_flow_label, Backend, Ipv6Wire, BACKEND_F_IPV6, GUE6_OVERHEAD, GUE_OVERHEAD,
    IPIP_OVERHEAD, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, IPV6_OVERHEAD, OUTER_HOP_LIMIT,
    OUTER_TTL,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::{
    csum,
    parse::{ptr_at, ETH_LEN, IP_DF, L2},
    select::Tuple,
};

/// The packet could not be grown or rewritten: the caller drops it.
pub struct EncapError;

/// How a packet travels to its backend: over IPv6 (`outer_v6`, with
/// `flow_label`) or IPv4; as IP-in-IP (IPIP, 6in4, IP6IP6, 4in6) when
/// `dst_port` is 0, else as GUE in UDP from `src_port` to `dst_port` (wire
/// order). A plain struct rather than an enum: the
/// compiler copies an enum's payload even for the variant without one, and
/// the verifier refuses to read those uninitialised registers.
#[derive(Clone, Copy)]
pub struct Tunnel {
    pub outer_v6: bool,
    pub src_port: u16,
    pub dst_port: u16,
    /// Of an IPv6 outer header (host order, 20 bits).
    pub flow_label: u32,
}

impl Tunnel {
    /// IP-in-IP over IPv4, every field defined.
    pub const NONE: Tunnel = Tunnel {
        outer_v6: false,
        src_port: 0,
        dst_port: 0,
        flow_label: 0,
    };

    /// The tunnel of a flow to `backend`. The flow hash is computed only
    /// where it is carried: the GUE source port, the IPv6 flow label.
    #[inline(always)]
    pub fn of_flow<T: Tuple>(flow: &T, backend: &Backend) -> Self {
        let gue = backend.gue_port != 0;
        if backend.flags & BACKEND_F_IPV6 == 0 {
            if !gue {
                return Tunnel::NONE;
            }
            return Tunnel {
                outer_v6: false,
                src_port: gue_source_port(flow.hash()).to_be(),
                dst_port: backend.gue_port,
                flow_label: 0,
            };
        }
        let hash = flow.hash();
        Tunnel {
            outer_v6: true,
            src_port: if gue { gue_source_port(hash).to_be() } else { 0 },
            dst_port: backend.gue_port,
            flow_label: outer_flow_label(hash),
        }
    }

    #[inline(always)]
    pub fn is_gue(self) -> bool {
        self.dst_port != 0
    }

    /// Bytes the outer headers add.
    #[inline(always)]
    pub fn overhead(self) -> u16 {
        match (self.outer_v6, self.is_gue()) {
            (false, false) => IPIP_OVERHEAD,
            (false, true) => GUE_OVERHEAD,
            (true, false) => IPV6_OVERHEAD,
            (true, true) => GUE6_OVERHEAD,
        }
    }
}

/// A 20-byte IPv4 header with DF and id 0 (an atomic datagram, RFC 6864),
/// checksum included: what the balancer originates, outer headers and
/// ICMP errors alike. Addresses in wire order.
#[inline(always)]
pub fn ipv4_header(tos: u8, tot_len: u16, ttl: u8, proto: u8, src: u32, dst: u32) -> Ipv4Hdr {
    let mut hdr = Ipv4Hdr {
        vihl: 0x45,
        tos,
        tot_len: tot_len.to_be_bytes(),
        id: [0; 2],
        frags: IP_DF.to_be_bytes(),
        ttl,
        proto,
        check: [0; 2],
        src_addr: src.to_ne_bytes(),
        dst_addr: dst.to_ne_bytes(),
    };
    // SAFETY: Ipv4Hdr is 20 bytes of plain data with alignment 1.
    let words: [u16; 10] = unsafe { core::mem::transmute_copy(&hdr) };
    hdr.check = csum::ipv4_header(&words).to_ne_bytes();
    hdr
}

/// Cuts `excess` bytes off the end of the frame (no helper call when there
/// is nothing to cut). What lies past the IP total length (Ethernet
/// padding, a trailer) is not part of the client's packet: it must not
/// travel inside the tunnel, where it would sit inside the outer packet's
/// length and push the frame over the MTU the caller checked, nor end up in
/// an ICMP reply built from the packet (`icmp.rs` uses this too).
#[inline(always)]
pub fn trim_tail(ctx: &XdpContext, excess: usize) -> Result<(), EncapError> {
    if excess == 0 {
        return Ok(());
    }
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(excess as i32)) } != 0 {
        return Err(EncapError);
    }
    Ok(())
}

/// Grows the head by the tunnel's outer IPv4 headers and writes the L2
/// header (with the IPv4 ethertype) and them, for a packet of `outer_len`
/// bytes in all from `src` to `dst` with the client packet's TOS (DSCP and
/// ECN, RFC 6040), in front of the client's packet (IPv6 when `inner_v6`:
/// protocol 41). The two tunnels are separate branches with constant sizes,
/// so that IP-in-IP costs what it did before GUE existed. On error the
/// caller must drop the packet.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn encapsulate(
    ctx: &XdpContext,
    l2: L2,
    tunnel: Tunnel,
    inner_v6: bool,
    tos: u8,
    outer_len: u16,
    src: u32,
    dst: u32,
) -> Result<(), EncapError> {
    let (eth, vlan) = save_l2(ctx, l2)?;
    let ether_type: u16 = EtherType::Ipv4.into();
    if !tunnel.is_gue() {
        let proto = if inner_v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
        let ip = ipv4_header(tos, outer_len, OUTER_TTL, proto, src, dst);
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPIP_OVERHEAD as i32)) } != 0 {
            return Err(EncapError);
        }
        restore_l2(ctx, eth, vlan, ether_type)?;
        unsafe { *ptr_at::<Ipv4Hdr>(ctx, l2.header_len()).ok_or(EncapError)? = ip };
        return Ok(());
    }
    let ip = ipv4_header(tos, outer_len, OUTER_TTL, IPPROTO_UDP, src, dst);
    let udp = gue_header(tunnel, outer_len - IPIP_OVERHEAD);
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GUE_OVERHEAD as i32)) } != 0 {
        return Err(EncapError);
    }
    restore_l2(ctx, eth, vlan, ether_type)?;
    unsafe {
        *ptr_at::<Ipv4Hdr>(ctx, l2.header_len()).ok_or(EncapError)? = ip;
        *ptr_at::<UdpHdr>(ctx, l2.header_len() + IPIP_OVERHEAD as usize).ok_or(EncapError)? = udp;
    }
    Ok(())
}

/// An IPv6 header (wire order addresses) with this traffic class, flow
/// label, payload length and next header: what the balancer originates
/// over IPv6, outer headers and ICMPv6 errors alike.
#[inline(always)]
pub fn ipv6_header(
    tclass: u8,
    flow_label: u32,
    payload_len: u16,
    next_hdr: u8,
    hop_limit: u8,
    src: &Ipv6Wire,
    dst: &Ipv6Wire,
) -> Ipv6Hdr {
    let head = (6u32 << 28) | ((tclass as u32) << 20) | (flow_label & 0x000f_ffff);
    Ipv6Hdr {
        vcf: head.to_be_bytes(),
        payload_len: payload_len.to_be_bytes(),
        next_hdr,
        hop_limit,
        // SAFETY: four u32 and sixteen u8 have the same size, any bits valid.
        src_addr: unsafe { core::mem::transmute::<Ipv6Wire, [u8; 16]>(*src) },
        dst_addr: unsafe { core::mem::transmute::<Ipv6Wire, [u8; 16]>(*dst) },
    }
}

/// The UDP header of a GUE packet of `udp_len` bytes (header included),
/// checksum 0 (see the module's notes).
#[inline(always)]
fn gue_header(tunnel: Tunnel, udp_len: u16) -> UdpHdr {
    UdpHdr {
        src: tunnel.src_port.to_ne_bytes(),
        dst: tunnel.dst_port.to_ne_bytes(),
        len: udp_len.to_be_bytes(),
        check: [0; 2],
    }
}

/// Grows the head by an outer IPv6 header (no extension headers; hop limit
/// 64; payload length the client's packet, `inner_len` bytes, plus GUE's
/// UDP header: the caller checked that it fits in 16 bits) and writes the
/// L2 header with the IPv6 ethertype in front of it. IP6IP6 and GUE are
/// separate branches with constant sizes, as in [`encapsulate`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn encapsulate6(
    ctx: &XdpContext,
    l2: L2,
    tunnel: Tunnel,
    inner_v6: bool,
    tclass: u8,
    inner_len: u16,
    src: Ipv6Wire,
    dst: Ipv6Wire,
) -> Result<(), EncapError> {
    let (eth, vlan) = save_l2(ctx, l2)?;
    if !tunnel.is_gue() {
        let next = if inner_v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
        let ip = ipv6_header(
            tclass,
            tunnel.flow_label,
            inner_len,
            next,
            OUTER_HOP_LIMIT,
            &src,
            &dst,
        );
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV6_OVERHEAD as i32)) } != 0 {
            return Err(EncapError);
        }
        restore_l2(ctx, eth, vlan, EtherType::Ipv6.into())?;
        unsafe { *ptr_at::<Ipv6Hdr>(ctx, l2.header_len()).ok_or(EncapError)? = ip };
        return Ok(());
    }
    let udp_len = inner_len + UdpHdr::LEN as u16;
    let ip = ipv6_header(
        tclass,
        tunnel.flow_label,
        udp_len,
        IPPROTO_UDP,
        OUTER_HOP_LIMIT,
        &src,
        &dst,
    );
    let udp = gue_header(tunnel, udp_len);
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GUE6_OVERHEAD as i32)) } != 0 {
        return Err(EncapError);
    }
    restore_l2(ctx, eth, vlan, EtherType::Ipv6.into())?;
    unsafe {
        *ptr_at::<Ipv6Hdr>(ctx, l2.header_len()).ok_or(EncapError)? = ip;
        *ptr_at::<UdpHdr>(ctx, l2.header_len() + IPV6_OVERHEAD as usize).ok_or(EncapError)? = udp;
    }
    Ok(())
}

/// The L2 header (and VLAN tag), copied before the head moves.
#[inline(always)]
fn save_l2(ctx: &XdpContext, l2: L2) -> Result<(EthHdr, Option<VlanHdr>), EncapError> {
    let eth: EthHdr = unsafe { *ptr_at::<EthHdr>(ctx, 0).ok_or(EncapError)? };
    let vlan: Option<VlanHdr> = match l2 {
        L2::Plain => None,
        L2::Vlan => Some(unsafe { *ptr_at::<VlanHdr>(ctx, ETH_LEN).ok_or(EncapError)? }),
    };
    Ok((eth, vlan))
}

/// Writes the saved L2 header (and VLAN tag) back at the new frame start,
/// naming the outer header's family (`ether_type`, as `EtherType` converts).
#[inline(always)]
fn restore_l2(
    ctx: &XdpContext,
    mut eth: EthHdr,
    vlan: Option<VlanHdr>,
    ether_type: u16,
) -> Result<(), EncapError> {
    unsafe {
        match vlan {
            None => {
                eth.ether_type = ether_type;
                *ptr_at::<EthHdr>(ctx, 0).ok_or(EncapError)? = eth;
            }
            Some(mut vlan) => {
                *ptr_at::<EthHdr>(ctx, 0).ok_or(EncapError)? = eth;
                vlan.ether_type = ether_type;
                *ptr_at::<VlanHdr>(ctx, ETH_LEN).ok_or(EncapError)? = vlan;
            }
        }
    }
    Ok(())
}

/// Rewrites the Ethernet addresses for the next hop.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, src: [u8; 6], dst: [u8; 6]) -> Result<(), EncapError> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(EncapError)?;
    unsafe {
        (*eth).src_addr = src;
        (*eth).dst_addr = dst;
    }
    Ok(())
}
