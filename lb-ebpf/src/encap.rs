//! IP-in-IP encapsulation (RFC 2003): a new outer IPv4 header between the
//! Ethernet header (and its VLAN tag, kept as is) and the client's packet.
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
use lb_common::{IPIP_OVERHEAD, IPPROTO_IPIP, OUTER_TTL};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, vlan::VlanHdr};

use crate::{
    csum,
    parse::{ptr_at, ETH_LEN, IP_DF, L2},
};

/// The packet could not be grown or rewritten: the caller drops it.
pub struct EncapError;

/// The outer header (checksum included) of `tot_len` bytes from `src` to
/// `dst`, with the client packet's TOS (DSCP and ECN, RFC 6040).
#[inline(always)]
pub fn outer_ipv4_header(tos: u8, tot_len: u16, src: u32, dst: u32) -> Ipv4Hdr {
    ipv4_header(tos, tot_len, OUTER_TTL, IPPROTO_IPIP, src, dst)
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

/// Grows the head by one IPv4 header and writes the L2 header and `outer`
/// in front of the client's packet. On error the caller must drop the packet.
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, l2: L2, outer: &Ipv4Hdr) -> Result<(), EncapError> {
    let eth: EthHdr = unsafe { *ptr_at::<EthHdr>(ctx, 0).ok_or(EncapError)? };
    let vlan: Option<VlanHdr> = match l2 {
        L2::Plain => None,
        L2::Vlan => Some(unsafe { *ptr_at::<VlanHdr>(ctx, ETH_LEN).ok_or(EncapError)? }),
    };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPIP_OVERHEAD as i32)) } != 0 {
        return Err(EncapError);
    }
    unsafe {
        *ptr_at::<EthHdr>(ctx, 0).ok_or(EncapError)? = eth;
        if let Some(vlan) = vlan {
            *ptr_at::<VlanHdr>(ctx, ETH_LEN).ok_or(EncapError)? = vlan;
        }
        *ptr_at::<Ipv4Hdr>(ctx, l2.header_len()).ok_or(EncapError)? = *outer;
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
