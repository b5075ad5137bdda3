//! Encapsulation: a new outer IPv4 header between the Ethernet header (and
//! its VLAN tag, kept as is) and the client's packet: IP-in-IP (RFC 2003),
//! or GUE, which puts a UDP header after it (variant 1, the inner packet
//! straight after the UDP header) so that the backend's NIC can spread
//! tunnels over its receive queues by the outer ports.
//!
//! The GUE UDP checksum is 0, which IPv4 allows (RFC 768): the inner
//! packet carries its own checksums, and Linux's fou/gue receive path
//! accepts it.
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
    flow_hash, gue_source_port, FlowKey, GUE_OVERHEAD, IPIP_OVERHEAD, IPPROTO_IPIP, IPPROTO_UDP,
    OUTER_TTL,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vlan::VlanHdr};

use crate::{
    csum,
    parse::{ptr_at, ETH_LEN, IP_DF, L2},
};

/// The packet could not be grown or rewritten: the caller drops it.
pub struct EncapError;

/// How a packet travels to its backend: IP-in-IP when `dst_port` is 0,
/// else GUE in UDP from `src_port` to `dst_port` (wire order). A plain
/// struct rather than an enum: the compiler copies an enum's payload even
/// for the variant without one, and the verifier refuses to read those
/// uninitialised registers.
#[derive(Clone, Copy)]
pub struct Tunnel {
    pub src_port: u16,
    pub dst_port: u16,
}

impl Tunnel {
    /// The tunnel of a flow to a backend whose `gue_port` (wire order, 0
    /// for IP-in-IP) is given. The flow hash is computed only for GUE.
    #[inline(always)]
    pub fn of_flow(flow: &FlowKey, gue_port: u16) -> Self {
        if gue_port == 0 {
            return Tunnel {
                src_port: 0,
                dst_port: 0,
            };
        }
        let hash = flow_hash(
            flow.src_addr,
            flow.dst_addr,
            flow.src_port,
            flow.dst_port,
            flow.proto,
        );
        Tunnel {
            src_port: gue_source_port(hash).to_be(),
            dst_port: gue_port,
        }
    }

    #[inline(always)]
    pub fn is_gue(self) -> bool {
        self.dst_port != 0
    }

    /// Bytes the outer headers add.
    #[inline(always)]
    pub fn overhead(self) -> u16 {
        if self.is_gue() {
            GUE_OVERHEAD
        } else {
            IPIP_OVERHEAD
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

/// Grows the head by the tunnel's outer headers and writes the L2 header
/// and them, for a packet of `outer_len` bytes in all from `src` to `dst`
/// with the client packet's TOS (DSCP and ECN, RFC 6040), in front of the
/// client's packet. The two tunnels are separate branches with constant
/// sizes and protocols, so that IP-in-IP costs what it did before GUE
/// existed. On error the caller must drop the packet.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    l2: L2,
    tunnel: Tunnel,
    tos: u8,
    outer_len: u16,
    src: u32,
    dst: u32,
) -> Result<(), EncapError> {
    let eth: EthHdr = unsafe { *ptr_at::<EthHdr>(ctx, 0).ok_or(EncapError)? };
    let vlan: Option<VlanHdr> = match l2 {
        L2::Plain => None,
        L2::Vlan => Some(unsafe { *ptr_at::<VlanHdr>(ctx, ETH_LEN).ok_or(EncapError)? }),
    };
    if !tunnel.is_gue() {
        let ip = ipv4_header(tos, outer_len, OUTER_TTL, IPPROTO_IPIP, src, dst);
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPIP_OVERHEAD as i32)) } != 0 {
            return Err(EncapError);
        }
        restore_l2(ctx, eth, vlan)?;
        unsafe { *ptr_at::<Ipv4Hdr>(ctx, l2.header_len()).ok_or(EncapError)? = ip };
        return Ok(());
    }
    let ip = ipv4_header(tos, outer_len, OUTER_TTL, IPPROTO_UDP, src, dst);
    let udp = UdpHdr {
        src: tunnel.src_port.to_ne_bytes(),
        dst: tunnel.dst_port.to_ne_bytes(),
        len: (outer_len - IPIP_OVERHEAD).to_be_bytes(),
        check: [0; 2],
    };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GUE_OVERHEAD as i32)) } != 0 {
        return Err(EncapError);
    }
    restore_l2(ctx, eth, vlan)?;
    unsafe {
        *ptr_at::<Ipv4Hdr>(ctx, l2.header_len()).ok_or(EncapError)? = ip;
        *ptr_at::<UdpHdr>(ctx, l2.header_len() + IPIP_OVERHEAD as usize).ok_or(EncapError)? = udp;
    }
    Ok(())
}

/// Writes the saved L2 header (and VLAN tag) back at the new frame start.
#[inline(always)]
fn restore_l2(ctx: &XdpContext, eth: EthHdr, vlan: Option<VlanHdr>) -> Result<(), EncapError> {
    unsafe {
        *ptr_at::<EthHdr>(ctx, 0).ok_or(EncapError)? = eth;
        if let Some(vlan) = vlan {
            *ptr_at::<VlanHdr>(ctx, ETH_LEN).ok_or(EncapError)? = vlan;
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
