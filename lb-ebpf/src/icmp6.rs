//! ICMPv6 in the data path, the IPv6 twin of `icmp` (its own offsets and
//! checksums: ICMPv6 sums a pseudo-header, ICMP does not). Only for VIP
//! addresses:
//! - **echo**: an echo request to an IPv6 VIP address whose `VIP6_ADDRS`
//!   entry carries `VIP_ADDR_F_ICMP_ECHO` is answered in place (addresses
//!   and MACs swapped, type 128 → 129, hop limit 64; swapping the
//!   addresses leaves the pseudo-header's sum as it was);
//! - **packet too big**: a client packet too big for the tunnel is turned,
//!   in place, into an ICMPv6 type 2 from the VIP to the client that quotes
//!   the packet's first bytes and advertises the egress MTU minus the outer
//!   header (never below IPv6's minimum, 1280), rate limited with IPv4's
//!   bucket;
//! - **errors about a VIP flow** (destination unreachable, packet too big,
//!   time exceeded, parameter problem) quoting a TCP/UDP packet sent from
//!   the VIP go to the backend that owns the quoted flow.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    Flow6Key, GlobalStats, Ipv6Wire, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, VIP_ADDR_F_ICMP_ECHO,
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr, vlan::VlanHdr};

use crate::{
    balancer::{self, Found, OnTooBig, Outbound, Shape},
    classify, csum, encap,
    icmp::{flow_owner, take_token},
    parse::{ptr_at, Ipv6Icmp, ETH_LEN, IPV6_LEN, L2},
};

pub const ICMP6_DEST_UNREACH: u8 = 1;
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
pub const ICMP6_PARAM_PROBLEM: u8 = 4;
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;
/// ICMPv6 header: type, code, checksum, 4 type-specific bytes.
const ICMP6_HDR_LEN: usize = 8;
/// The smallest MTU an IPv6 link may have (RFC 8200 5): a "packet too big"
/// never advertises less.
const IPV6_MIN_MTU: u32 = 1280;
/// How much of the client's packet a "packet too big" quotes: the IPv6
/// header, extension headers and transport header with room to spare, so
/// the client's stack finds its connection (RFC 4443 asks for "as much as
/// fits in 1280 bytes"; Linux needs the IPv6 header and 8 bytes of the
/// transport header). A multiple of 4, summed as 32-bit words.
const QUOTE_MAX: usize = 128;
/// Hop limit of the replies the balancer originates.
const REPLY_HOP_LIMIT: u8 = 64;

/// An ICMPv6 packet: `Err(verdict)` when done with it (echo answered, or
/// not ours), `Ok` for an error about a VIP flow, to forward to its backend.
#[inline(always)]
pub fn icmpv6(
    ctx: &XdpContext,
    pkt: &Ipv6Icmp,
    stats: &mut GlobalStats,
    out: &mut Outbound,
) -> Found {
    // The caller's address filter let `pkt.dst_addr` through.
    match pkt.icmp_type {
        ICMP6_ECHO_REQUEST => Err(echo(ctx, pkt, stats)),
        ICMP6_DEST_UNREACH | ICMP6_PACKET_TOO_BIG | ICMP6_TIME_EXCEEDED | ICMP6_PARAM_PROBLEM => {
            error_about_flow(ctx, pkt, stats, out)
        }
        _ => Err(balancer::pass(&mut stats.passed)),
    }
}

/// Whether the balancer may send to `addr`: not multicast (ff00::/8), the
/// unspecified address or loopback (RFC 4443 2.4).
#[inline(always)]
fn unicast_source(addr: &Ipv6Wire) -> bool {
    let first = addr[0].to_ne_bytes()[0];
    let low = u32::from_be(addr[3]);
    let high_zero = addr[0] == 0 && addr[1] == 0 && addr[2] == 0;
    first != 0xff && !(high_zero && (low == 0 || low == 1))
}

#[inline(always)]
fn echo(ctx: &XdpContext, pkt: &Ipv6Icmp, stats: &mut GlobalStats) -> u32 {
    let answer = match classify::vip6_address(&pkt.dst_addr) {
        Some(info) => info.flags & VIP_ADDR_F_ICMP_ECHO != 0,
        None => false,
    };
    // Extension headers (a routing header above all) would have to be
    // processed for the reply, not reflected: the kernel's business.
    if !answer || pkt.icmp_code != 0 || pkt.l4 != IPV6_LEN || !unicast_source(&pkt.src_addr) {
        return balancer::pass(&mut stats.passed);
    }
    let l3 = pkt.l2.header_len();
    let frame_len = l3 + pkt.pkt_len as usize;
    let trailer = (ctx.data_end() - ctx.data()).saturating_sub(frame_len);
    if encap::trim_tail(ctx, trailer).is_err() {
        return balancer::drop(&mut stats.encap_errors);
    }
    let (Some(eth), Some(ip), Some(icmp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv6Hdr>(ctx, l3),
        ptr_at::<[u8; 4]>(ctx, l3 + IPV6_LEN),
    ) else {
        return balancer::drop(&mut stats.encap_errors);
    };
    unsafe {
        let eth = &mut *eth;
        core::mem::swap(&mut eth.src_addr, &mut eth.dst_addr);
        let ip = &mut *ip;
        core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);
        // The hop limit is in no checksum.
        ip.hop_limit = REPLY_HOP_LIMIT;
        let icmp = &mut *icmp;
        let old = [icmp[0], icmp[1]];
        icmp[0] = ICMP6_ECHO_REPLY;
        let check = csum::replace16([icmp[2], icmp[3]], old, [icmp[0], icmp[1]]);
        icmp[2] = check[0];
        icmp[3] = check[1];
    }
    stats.icmp_echo_replies += 1;
    xdp_action::XDP_TX
}

/// Turns the client's IPv6 packet, too big for `egress_mtu` once
/// encapsulated, into an ICMPv6 "packet too big" from the VIP to the
/// client, in place, and sends it back where it came from.
#[inline(always)]
pub fn packet_too_big(
    ctx: &XdpContext,
    l2: L2,
    egress_mtu: u32,
    overhead: u16,
    stats: &mut GlobalStats,
) -> u32 {
    let l3 = l2.header_len();
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
        return balancer::drop(&mut stats.drop_too_big);
    };
    let ip = unsafe { *ip };
    let client: Ipv6Wire = unsafe { core::mem::transmute(ip.src_addr) };
    let vip: Ipv6Wire = unsafe { core::mem::transmute(ip.dst_addr) };
    if !unicast_source(&client) {
        return balancer::drop(&mut stats.drop_too_big);
    }
    if !take_token() {
        return balancer::drop(&mut stats.icmp_rate_limited);
    }
    // parse6 checked 40 + payload length against the frame and found a
    // transport header in it: at least 48 bytes.
    let pkt_len = IPV6_LEN + u16::from_be_bytes(ip.payload_len) as usize;
    let quote_len = if pkt_len < QUOTE_MAX {
        pkt_len & !3
    } else {
        QUOTE_MAX
    };

    let mut sum = 0u64;
    let mut i = 0;
    while i < QUOTE_MAX / 4 {
        if i * 4 >= quote_len {
            break;
        }
        let Some(word) = ptr_at::<u32>(ctx, l3 + i * 4) else {
            return balancer::drop(&mut stats.drop_too_big);
        };
        sum += unsafe { *word } as u64;
        i += 1;
    }
    let mtu = egress_mtu
        .saturating_sub(overhead as u32)
        .max(IPV6_MIN_MTU)
        .to_be_bytes();
    let type_code = [ICMP6_PACKET_TOO_BIG, 0];
    let payload_len = (ICMP6_HDR_LEN + quote_len) as u16;
    // The pseudo-header: both addresses, the upper-layer length and the
    // next header, as 32-bit words in memory order.
    let mut j = 0;
    while j < 4 {
        sum += client[j] as u64 + vip[j] as u64;
        j += 1;
    }
    sum += (payload_len as u32).to_be() as u64 + (IPPROTO_ICMPV6 as u32).to_be() as u64;
    sum += u16::from_ne_bytes(type_code) as u64 + u32::from_ne_bytes(mtu) as u64;
    let icmp_check = csum::fold64(sum).to_ne_bytes();
    let reply = encap::ipv6_header(
        0,
        0,
        payload_len,
        IPPROTO_ICMPV6,
        REPLY_HOP_LIMIT,
        &vip,
        &client,
    );

    let (Some(eth), vlan) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<VlanHdr>(ctx, ETH_LEN)) else {
        return balancer::drop(&mut stats.encap_errors);
    };
    let mut eth = unsafe { *eth };
    core::mem::swap(&mut eth.src_addr, &mut eth.dst_addr);
    let vlan = match (l2, vlan) {
        (L2::Plain, _) => None,
        (L2::Vlan, Some(v)) => Some(unsafe { *v }),
        (L2::Vlan, None) => return balancer::drop(&mut stats.encap_errors),
    };

    // Keep L2 and the quote, then grow the head by the new IPv6 and ICMPv6
    // headers: the quote stays where it is.
    let keep = l3 + quote_len;
    let cut = (ctx.data_end() - ctx.data()).saturating_sub(keep);
    if encap::trim_tail(ctx, cut).is_err() {
        return balancer::drop(&mut stats.encap_errors);
    }
    let grow = (IPV6_LEN + ICMP6_HDR_LEN) as i32;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return balancer::drop(&mut stats.encap_errors);
    }
    let (Some(new_eth), Some(new_ip), Some(icmp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv6Hdr>(ctx, l3),
        ptr_at::<[u8; ICMP6_HDR_LEN]>(ctx, l3 + IPV6_LEN),
    ) else {
        return balancer::drop(&mut stats.encap_errors);
    };
    unsafe {
        *new_eth = eth;
        *new_ip = reply;
        *icmp = [
            type_code[0],
            type_code[1],
            icmp_check[0],
            icmp_check[1],
            mtu[0],
            mtu[1],
            mtu[2],
            mtu[3],
        ];
    }
    if let Some(vlan) = vlan {
        let Some(new_vlan) = ptr_at::<VlanHdr>(ctx, ETH_LEN) else {
            return balancer::drop(&mut stats.encap_errors);
        };
        unsafe { *new_vlan = vlan };
    }
    stats.icmp_frag_needed_sent += 1;
    xdp_action::XDP_TX
}

/// An ICMPv6 error to a VIP address: if it quotes a TCP or UDP packet sent
/// from that address (no extension headers in the quote), the client's
/// flow is the quoted tuple reversed, and the error goes to its backend.
#[inline(always)]
fn error_about_flow(
    ctx: &XdpContext,
    pkt: &Ipv6Icmp,
    stats: &mut GlobalStats,
    out: &mut Outbound,
) -> Found {
    let l3 = pkt.l2.header_len();
    let quote = pkt.l4 + ICMP6_HDR_LEN;
    // The quoted header and ports must lie inside the ICMPv6 packet.
    if (pkt.pkt_len as usize) < quote + IPV6_LEN + 4 {
        return Err(balancer::pass(&mut stats.malformed));
    }
    let Some(inner) = ptr_at::<Ipv6Hdr>(ctx, l3 + quote) else {
        return Err(balancer::pass(&mut stats.malformed));
    };
    let inner = unsafe { *inner };
    if inner.vcf[0] >> 4 != 6 {
        return Err(balancer::pass(&mut stats.malformed));
    }
    let inner_src: Ipv6Wire = unsafe { core::mem::transmute(inner.src_addr) };
    let proto = inner.next_hdr;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP || inner_src != pkt.dst_addr {
        return Err(balancer::pass(&mut stats.passed));
    }
    let Some(ports) = ptr_at::<[u16; 2]>(ctx, l3 + quote + IPV6_LEN) else {
        return Err(balancer::pass(&mut stats.malformed));
    };
    let [vip_port, client_port] = unsafe { *ports };
    let flow = Flow6Key {
        src_addr: unsafe { core::mem::transmute::<[u8; 16], Ipv6Wire>(inner.dst_addr) },
        dst_addr: pkt.dst_addr,
        src_port: client_port,
        dst_port: vip_port,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    let (selected, vip_id) = flow_owner(&flow, stats)?;
    let shape = Shape {
        l2: pkt.l2,
        len: pkt.pkt_len,
        tos: pkt.tclass,
        inner_v6: true,
        // No ICMPv6 error about an ICMPv6 error (RFC 4443 2.4).
        on_too_big: OnTooBig::Drop,
    };
    *out = Outbound::to_backend(shape, &flow, &selected, vip_id);
    Ok(())
}
