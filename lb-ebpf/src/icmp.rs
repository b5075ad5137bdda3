//! ICMP in the data path, IPv4 (ICMPv6 has its own module, `icmp6`, and
//! shares no offsets with this one: an IPv4 reply is built from IPv4
//! offsets only).
//!
//! Three things, each only for VIP addresses:
//! - **echo**: an echo request to a VIP address whose `VIP_ADDRS` entry
//!   carries `VIP_ADDR_F_ICMP_ECHO` is answered in place (addresses and
//!   MACs swapped, type 8 → 0, TTL 64, checksums updated incrementally)
//!   and sent back with XDP_TX;
//! - **fragmentation needed**: a client packet with DF that would exceed
//!   the egress MTU once encapsulated is turned, in place, into an ICMP
//!   type 3 code 4 from the VIP to the client, advertising the egress MTU
//!   minus the outer header, rate limited per CPU;
//! - **errors about a VIP flow** (destination unreachable, time exceeded,
//!   parameter problem) quoting a TCP/UDP packet sent from the VIP are
//!   encapsulated to the backend that owns the quoted flow, whose kernel
//!   acts on them (PMTU, connection errors).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{
    FlowKey, GlobalStats, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, VIP_ADDR_F_ICMP_ECHO,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, vlan::VlanHdr};

use crate::{
    balancer::{self, Found, OnTooBig, Outbound, Shape},
    classify, config, csum, encap,
    maps::ICMP_RATE,
    parse::{ptr_at, Ipv4Icmp, ETH_LEN, IPV4_MIN_LEN, IP_OFFSET_MASK, L2},
    select::{self, Pinned, Selected, Tuple},
};

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// Code of "fragmentation needed and DF set" (type 3).
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMP header: type, code, checksum, 4 type-specific bytes.
const ICMP_HDR_LEN: usize = 8;
/// What an ICMP error quotes of the packet it is about: the IP header
/// and the first 8 bytes of its payload (RFC 792), enough for the ports
/// and, for TCP, the sequence number a host checks.
const QUOTED_L4_LEN: usize = 8;
/// The longest quote: a 60-byte IP header and 8 bytes.
const MAX_QUOTE_WORDS: usize = (60 + QUOTED_L4_LEN) / 4;
/// TTL of the replies the balancer originates (Linux's default).
const REPLY_TTL: u8 = 64;
/// TOS of the errors the balancer originates: precedence "internetwork
/// control", as Linux sends its ICMP errors (RFC 1812 4.3.2.5).
const ERROR_TOS: u8 = 0xc0;

/// An ICMP packet over IPv4: `Err(verdict)` when done with it (echo
/// answered, or not ours), `Ok` for an error about a VIP flow, for the
/// caller to forward to the flow's backend.
#[inline(always)]
pub fn icmpv4(
    ctx: &XdpContext,
    pkt: &Ipv4Icmp,
    stats: &mut GlobalStats,
    out: &mut Outbound,
) -> Found {
    // The caller's address filter let `pkt.dst_addr` through.
    if pkt.fragment {
        // A fragment holds no whole message; the kernel reassembles or
        // drops it, as before.
        return Err(balancer::pass(&mut stats.passed));
    }
    match pkt.icmp_type {
        ICMP_ECHO_REQUEST => Err(echo(ctx, pkt, stats)),
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
            error_about_flow(ctx, pkt, stats, out)
        }
        _ => Err(balancer::pass(&mut stats.passed)),
    }
}

/// Whether the balancer may send to `addr` (wire order): not 0.0.0.0/8,
/// loopback, multicast, reserved or broadcast, which no reply may go to
/// (RFC 1122 3.2.2, 3.2.1.3). One compare on the first octet.
#[inline(always)]
fn unicast_source(addr: u32) -> bool {
    let first = addr.to_ne_bytes()[0];
    first != 0 && first != 127 && first < 224
}

#[inline(always)]
fn echo(ctx: &XdpContext, pkt: &Ipv4Icmp, stats: &mut GlobalStats) -> u32 {
    let answer = match classify::vip_address(pkt.dst_addr) {
        Some(info) => info.flags & VIP_ADDR_F_ICMP_ECHO != 0,
        None => false,
    };
    // IP options (record route, timestamps, source routes) would have to
    // be processed for the reply, not reflected: the kernel's business.
    if !answer || pkt.icmp_code != 0 || pkt.ihl != IPV4_MIN_LEN || !unicast_source(pkt.src_addr) {
        return balancer::pass(&mut stats.passed);
    }
    let l3 = pkt.l2.header_len();
    // Padding or a trailer after the request is not part of the reply.
    let frame_len = l3 + pkt.tot_len as usize;
    let trailer = (ctx.data_end() - ctx.data()).saturating_sub(frame_len);
    if encap::trim_tail(ctx, trailer).is_err() {
        return balancer::drop(&mut stats.encap_errors);
    }
    let (Some(eth), Some(ip), Some(icmp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, l3),
        ptr_at::<[u8; 4]>(ctx, l3 + IPV4_MIN_LEN),
    ) else {
        return balancer::drop(&mut stats.encap_errors);
    };
    unsafe {
        let eth = &mut *eth;
        core::mem::swap(&mut eth.src_addr, &mut eth.dst_addr);
        let ip = &mut *ip;
        // Swapping the addresses leaves the header's sum as it is.
        core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);
        let old = [ip.ttl, ip.proto];
        ip.ttl = REPLY_TTL;
        ip.check = csum::replace16(ip.check, old, [ip.ttl, ip.proto]);
        let icmp = &mut *icmp;
        let old = [icmp[0], icmp[1]];
        icmp[0] = ICMP_ECHO_REPLY;
        let check = csum::replace16([icmp[2], icmp[3]], old, [icmp[0], icmp[1]]);
        icmp[2] = check[0];
        icmp[3] = check[1];
    }
    stats.icmp_echo_replies += 1;
    xdp_action::XDP_TX
}

/// Takes one message from this CPU's token bucket; false when it is empty
/// (or ICMP errors are off). Shared by ICMP and ICMPv6 errors.
#[inline(always)]
pub fn take_token() -> bool {
    let rate = config!(icmp_rate);
    if rate == 0 {
        return false;
    }
    let Some(bucket) = ICMP_RATE.get_ptr_mut(0) else {
        return false;
    };
    let bucket = unsafe { &mut *bucket };
    let cost = 1_000_000_000u64 / rate as u64;
    let capacity = cost * config!(icmp_burst).max(1) as u64;
    let now = unsafe { bpf_ktime_get_ns() };
    // A fresh bucket (last_ns 0) fills to capacity on its first use.
    let credit = bucket
        .credit_ns
        .saturating_add(now.wrapping_sub(bucket.last_ns))
        .min(capacity);
    bucket.last_ns = now;
    if credit < cost {
        bucket.credit_ns = credit;
        return false;
    }
    bucket.credit_ns = credit - cost;
    true
}

/// Turns the client's packet (DF set, too big for `egress_mtu` once
/// encapsulated) into an ICMP "fragmentation needed" from the VIP to the
/// client, in place, and sends it back where it came from.
#[inline(always)]
pub fn frag_needed(
    ctx: &XdpContext,
    l2: L2,
    egress_mtu: u32,
    overhead: u16,
    stats: &mut GlobalStats,
) -> u32 {
    let l3 = l2.header_len();
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return balancer::drop(&mut stats.drop_too_big);
    };
    let ip = unsafe { *ip };
    let client = u32::from_ne_bytes(ip.src_addr);
    if !unicast_source(client) {
        return balancer::drop(&mut stats.drop_too_big);
    }
    if !take_token() {
        return balancer::drop(&mut stats.icmp_rate_limited);
    }
    // parse checked 20 <= IHL and IHL + 8 <= total length (TCP and UDP
    // headers are at least 8 bytes), so the quote lies inside the packet.
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let quote_len = ihl + QUOTED_L4_LEN;

    // The sum of the quoted bytes, read as 32-bit words in memory order.
    let mut sum = 0u64;
    let mut i = 0;
    while i < MAX_QUOTE_WORDS {
        if i * 4 >= quote_len {
            break;
        }
        let Some(word) = ptr_at::<u32>(ctx, l3 + i * 4) else {
            return balancer::drop(&mut stats.drop_too_big);
        };
        sum += unsafe { *word } as u64;
        i += 1;
    }
    // The next hop's MTU for the client: what is left inside the tunnel.
    let mtu = (egress_mtu.min(u16::MAX as u32) as u16).saturating_sub(overhead);
    let mtu = mtu.to_be_bytes();
    let type_code = [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED];
    sum += u16::from_ne_bytes(type_code) as u64 + u16::from_ne_bytes(mtu) as u64;
    let icmp_check = csum::fold64(sum).to_ne_bytes();

    let tot_len = (IPV4_MIN_LEN + ICMP_HDR_LEN + quote_len) as u16;
    // The client sent to the VIP: the VIP answers. At most 96 bytes, never
    // fragmented: DF and id 0.
    let reply = encap::ipv4_header(
        ERROR_TOS,
        tot_len,
        REPLY_TTL,
        IPPROTO_ICMP,
        u32::from_ne_bytes(ip.dst_addr),
        client,
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

    // Keep L2 and the quote, then grow the head by the new IP and ICMP
    // headers: the quote stays where it is, nothing is copied.
    let keep = l3 + quote_len;
    let cut = (ctx.data_end() - ctx.data()).saturating_sub(keep);
    if encap::trim_tail(ctx, cut).is_err() {
        return balancer::drop(&mut stats.encap_errors);
    }
    let grow = (IPV4_MIN_LEN + ICMP_HDR_LEN) as i32;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return balancer::drop(&mut stats.encap_errors);
    }
    let (Some(new_eth), Some(new_ip), Some(icmp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, l3),
        ptr_at::<[u8; ICMP_HDR_LEN]>(ctx, l3 + IPV4_MIN_LEN),
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
            0,
            0,
            mtu[0],
            mtu[1],
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

/// An ICMP error to a VIP address: if it quotes a TCP or UDP packet sent
/// from that address, the client's flow is the quoted tuple reversed, and
/// the error goes to the flow's backend (its pin, or the ring's choice).
#[inline(always)]
fn error_about_flow(
    ctx: &XdpContext,
    pkt: &Ipv4Icmp,
    stats: &mut GlobalStats,
    out: &mut Outbound,
) -> Found {
    let l3 = pkt.l2.header_len();
    let quote = pkt.ihl + ICMP_HDR_LEN;
    // The quoted header must lie inside the ICMP packet, not merely the
    // frame: bytes past the total length are padding.
    let room = pkt.tot_len as usize - quote;
    if room < IPV4_MIN_LEN {
        return Err(balancer::pass(&mut stats.malformed));
    }
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, l3 + quote) else {
        return Err(balancer::pass(&mut stats.malformed));
    };
    let inner = unsafe { *inner };
    let inner_ihl = ((inner.vihl & 0x0f) as usize) * 4;
    if inner.vihl >> 4 != 4 || inner_ihl < IPV4_MIN_LEN || room < inner_ihl + QUOTED_L4_LEN {
        return Err(balancer::pass(&mut stats.malformed));
    }
    let proto = inner.proto;
    // Not a packet of a VIP flow: another protocol, another sender, or a
    // later fragment (no ports in it).
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP
        || u32::from_ne_bytes(inner.src_addr) != pkt.dst_addr
        || u16::from_be_bytes(inner.frags) & IP_OFFSET_MASK != 0
    {
        return Err(balancer::pass(&mut stats.passed));
    }
    let Some(ports) = ptr_at::<[u16; 2]>(ctx, l3 + quote + inner_ihl) else {
        return Err(balancer::pass(&mut stats.malformed));
    };
    let [vip_port, client_port] = unsafe { *ports };
    let flow = FlowKey {
        src_addr: u32::from_ne_bytes(inner.dst_addr),
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
        len: pkt.tot_len,
        tos: pkt.tos,
        inner_v6: false,
        // No ICMP about an ICMP error (RFC 1122 3.2.2).
        on_too_big: OnTooBig::Drop,
    };
    *out = Outbound::to_backend(shape, &flow, &selected, vip_id);
    Ok(())
}

/// The backend that owns the flow an ICMP error (of either family) is
/// about, and its VIP: the pin, or the ring's choice, without pinning
/// (an error must not create a flow). Counts the error as forwarded.
#[inline(always)]
pub fn flow_owner<T: Tuple>(flow: &T, stats: &mut GlobalStats) -> Result<(Selected, u32), u32> {
    let owner = match select::pinned(flow, false) {
        Pinned::Hit(selected) => {
            let vip_id = selected.backend.vip_id;
            (selected, vip_id)
        }
        Pinned::Stale | Pinned::Miss => {
            let Some(vip) = flow.vip() else {
                return Err(balancer::pass(&mut stats.passed));
            };
            let Some(selected) = select::ring_choice(flow, &vip) else {
                return Err(balancer::drop(&mut stats.drop_no_backend));
            };
            (selected, vip.vip_id)
        }
    };
    stats.icmp_errors_forwarded += 1;
    Ok(owner)
}
