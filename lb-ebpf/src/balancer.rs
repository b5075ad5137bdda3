//! The `balancer` program, top to bottom:
//! parse → classify (address filter) → connection table → VIP and its
//! policy (affinity, Maglev, random, round robin, least-conn) for new
//! flows → next hop → encapsulate → verdict. ICMP branches off after
//! the parse (`icmp`), and comes back to the one [`forward`] for errors
//! about a VIP flow; a DF packet too big for the tunnel turns into an ICMP
//! "fragmentation needed" in [`forward`].
//!
//! A VIP without a backend for a new flow is logged with aya-log at debug
//! level (the agent compiles it out through `AYA_LOG_LEVEL` unless it runs
//! with debug logging); the tail's drops are counted only, see
//! [`forward`].

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::debug;
use lb_common::{GlobalStats, Ipv6Wire, POLICY_RANDOM, PROGRAM_IPV6};
use network_types::eth::EtherType;

use crate::{
    classify, config, encap, icmp, icmp6,
    maps::{BACKEND_ADDRS6, HANDOFF, PROGRAMS},
    parse::{self, Parsed, Parsed6, L2},
    select::{self, Pinned, Selected, Tuple},
    stats,
    transmit::{self, Hop},
};

/// What the tail needs of the client's packet, whichever its family.
#[derive(Clone, Copy)]
pub struct Shape {
    pub l2: L2,
    /// Length of the whole IP packet (header included), checked against
    /// the frame.
    pub len: u16,
    /// TOS or traffic class, inherited by the outer header.
    pub tos: u8,
    /// The client's packet is IPv6 (the outer header says 41, not 4).
    pub inner_v6: bool,
    pub on_too_big: OnTooBig,
}

impl Shape {
    /// An IPv4 TCP or UDP packet's: a DF packet too big for the tunnel is
    /// answered with "fragmentation needed", any other dropped.
    #[inline(always)]
    pub fn of_ipv4(l2: L2, pkt: &parse::Ipv4Flow) -> Shape {
        Shape {
            l2,
            len: pkt.tot_len,
            tos: pkt.tos,
            inner_v6: false,
            on_too_big: if pkt.df {
                OnTooBig::FragNeeded
            } else {
                OnTooBig::Drop
            },
        }
    }

    /// An IPv6 TCP or UDP packet's: too big for the tunnel, it is answered
    /// with "packet too big" (no router fragments IPv6).
    #[inline(always)]
    pub fn of_ipv6(l2: L2, pkt: &parse::Ipv6Flow) -> Shape {
        Shape {
            l2,
            len: pkt.pkt_len,
            tos: pkt.tclass,
            inner_v6: true,
            on_too_big: OnTooBig::PacketTooBig,
        }
    }
}

/// A packet on its way to a backend: what [`forward`] needs.
#[derive(Clone, Copy)]
pub struct Outbound {
    pub shape: Shape,
    /// The backend: its id (for its counters and its IPv6 address) and
    /// IPv4 address (the outer destination unless the tunnel is IPv6);
    /// only what the tail needs, so that the struct stays small on the
    /// stack.
    pub backend_id: u32,
    pub backend_addr: u32,
    /// Chosen for a new flow rather than found in the connection table.
    pub new_flow: bool,
    /// The VIP whose counters the packet moves.
    pub vip_id: u32,
    pub tunnel: encap::Tunnel,
}

impl Outbound {
    /// Where [`run`] starts: every field defined, so that no path the
    /// compiler merges carries undefined bytes. (Left undefined, LLVM fills
    /// them from any register at hand, a map pointer or an uninitialised
    /// one, and the verifier refuses the arithmetic or the read.)
    const NONE: Outbound = Outbound {
        shape: Shape {
            l2: L2::Plain,
            len: 0,
            tos: 0,
            inner_v6: false,
            on_too_big: OnTooBig::Drop,
        },
        backend_id: 0,
        backend_addr: 0,
        new_flow: false,
        vip_id: 0,
        tunnel: encap::Tunnel::NONE,
    };

    /// The packet of `shape` of `flow` to the `selected` backend of VIP
    /// `vip_id`, on the backend's tunnel.
    #[inline(always)]
    pub fn to_backend<T: Tuple>(shape: Shape, flow: &T, selected: &Selected, vip_id: u32) -> Self {
        Outbound {
            shape,
            backend_id: selected.backend_id,
            backend_addr: selected.backend.addr,
            new_flow: selected.new_flow,
            vip_id,
            tunnel: encap::Tunnel::of_flow(flow, &selected.backend),
        }
    }
}

/// What a packet's way to the tail comes to: `Ok` when the `Outbound`
/// it was given is filled in for [`forward`], else the verdict.
pub type Found = Result<(), u32>;

/// What to do with a packet that would exceed the egress MTU once
/// encapsulated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnTooBig {
    /// Drop it (`drop_too_big`): no DF (the sender allows fragments, which
    /// the tunnel cannot make: its outer header carries DF and XDP sends
    /// one frame), or an ICMP error (never answered with ICMP).
    Drop,
    /// Answer with ICMP "fragmentation needed" (rate limited).
    FragNeeded,
    /// Answer with ICMPv6 "packet too big" (rate limited): an IPv6
    /// packet, which no router fragments.
    PacketTooBig,
}

/// The `balancer` program: IPv4 here, IPv6 by tail call into `balancer6`
/// ([`balance6`]). Two programs, not one: inlined into one, the IPv6 code
/// crowded the IPv4 path's registers and slowed it by a fifth (the
/// benchmark's before and after), and as a called function the two
/// frames overflowed the 512-byte stack; a tail call gives each family its
/// own program and stack.
#[inline(always)]
pub fn balance(ctx: &XdpContext) -> u32 {
    let Some(stats) = stats::global() else {
        return xdp_action::XDP_PASS;
    };
    let Some((l2, ether_type)) = parse::parse_l2(ctx) else {
        return pass(&mut stats.malformed);
    };
    if ether_type != EtherType::Ipv4.into() {
        if ether_type == EtherType::Ipv6.into() {
            // SAFETY: a tail call never returns when it succeeds; when it
            // fails (no `balancer6` loaded) the packet passes.
            unsafe { PROGRAMS.tail_call(ctx, PROGRAM_IPV6) };
        }
        return pass(&mut stats.passed);
    }
    // The packet's way to the tail is written into `out`, which starts
    // fully defined (see `Outbound::NONE`).
    let mut out = Outbound::NONE;
    if let Err(action) = ipv4(ctx, l2, stats, &mut out) {
        return action;
    }
    forward::<false>(ctx, stats, &out)
}

/// The IPv4 program's way to an IPv6 backend: the packet's `Outbound` goes
/// into this CPU's `HANDOFF` slot and `balancer6` sends it on. (With the
/// IPv6 outer header in the IPv4 program's own tail, its established path
/// cost 15 ns more, for a configuration few VIPs use.)
#[inline(always)]
fn hand_over_to_ipv6(ctx: &XdpContext, stats: &mut GlobalStats, out: &Outbound) -> u32 {
    let Some(slot) = HANDOFF.get_ptr_mut(0) else {
        return drop(&mut stats.encap_errors);
    };
    // SAFETY: this CPU's element, valid for the program's run; nothing
    // else runs on this CPU until the tail call returns or the packet is
    // done.
    unsafe {
        (*slot).out = *out;
        (*slot).valid = 1;
        PROGRAMS.tail_call(ctx, PROGRAM_IPV6);
        // No `balancer6`: the slot must not be read by a later one.
        (*slot).valid = 0;
    }
    drop(&mut stats.encap_errors)
}

/// The `balancer6` program: an IPv6 packet `balancer` handed over.
#[inline(always)]
pub fn balance6(ctx: &XdpContext) -> u32 {
    let Some(stats) = stats::global() else {
        return xdp_action::XDP_PASS;
    };
    let Some((l2, ether_type)) = parse::parse_l2(ctx) else {
        return pass(&mut stats.malformed);
    };
    let mut out = Outbound::NONE;
    if ether_type == EtherType::Ipv4.into() {
        // An IPv4 packet `balancer` chose an IPv6 backend for, its way there
        // in this CPU's `HANDOFF` slot; a slot not marked valid was not
        // written for this packet (a `balancer` of another version, during
        // an upgrade, has its own).
        let Some(slot) = HANDOFF.get_ptr_mut(0) else {
            return drop(&mut stats.encap_errors);
        };
        // SAFETY: this CPU's element, valid for the program's run.
        unsafe {
            if (*slot).valid == 0 {
                return drop(&mut stats.encap_errors);
            }
            (*slot).valid = 0;
            out = (*slot).out;
        }
    } else if let Err(action) = ipv6(ctx, l2, stats, &mut out) {
        return action;
    }
    forward::<true>(ctx, stats, &out)
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l2: L2, stats: &mut GlobalStats, out: &mut Outbound) -> Found {
    let Some(ip) = parse::ipv4_header(ctx, l2) else {
        return Err(pass(&mut stats.malformed));
    };
    // Most packets on a NIC are for no VIP: one array read tells, before
    // the rest of the packet is read. (Every packet the balancer acts on
    // is addressed to a VIP: its flows, ICMP about them, its fragments.)
    let dst_addr = u32::from_ne_bytes(ip.dst_addr);
    if !classify::maybe_vip_address(dst_addr) {
        return Err(pass(&mut stats.passed));
    }
    match parse::parse(ctx, l2, ip, dst_addr) {
        Parsed::Flow(pkt) => vip_packet(
            ctx,
            &pkt.flow,
            Shape::of_ipv4(l2, &pkt),
            (pkt.tcp_syn, pkt.tcp_fin_rst),
            stats,
            out,
        ),
        // An ICMP error about a VIP flow is forwarded like the flow's packets.
        Parsed::Icmp(pkt) => icmp::icmpv4(ctx, &pkt, stats, out),
        Parsed::Other => Err(pass(&mut stats.passed)),
        Parsed::Malformed => Err(pass(&mut stats.malformed)),
        Parsed::Fragment { dst_addr } => {
            if classify::is_vip_address(dst_addr) {
                return Err(drop(&mut stats.drop_fragment));
            }
            Err(pass(&mut stats.passed))
        }
    }
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l2: L2, stats: &mut GlobalStats, out: &mut Outbound) -> Found {
    let Some(ip) = parse::ipv6_header(ctx, l2) else {
        return Err(pass(&mut stats.malformed));
    };
    // The filter before the extension headers are walked, as for IPv4.
    let dst_addr = parse::ipv6_wire(ip.dst_addr);
    if !classify::maybe_vip6_address(&dst_addr) {
        return Err(pass(&mut stats.passed));
    }
    match parse::parse6(ctx, l2, ip, dst_addr) {
        Parsed6::Flow(pkt) => vip_packet(
            ctx,
            &pkt.flow,
            Shape::of_ipv6(l2, &pkt),
            (pkt.tcp_syn, pkt.tcp_fin_rst),
            stats,
            out,
        ),
        Parsed6::Icmp(pkt) => icmp6::icmpv6(ctx, &pkt, stats, out),
        Parsed6::Other => Err(pass(&mut stats.passed)),
        Parsed6::Malformed => Err(pass(&mut stats.malformed)),
        Parsed6::Fragment { dst_addr } => {
            if classify::is_vip6_address(&dst_addr) {
                return Err(drop(&mut stats.drop_fragment));
            }
            Err(pass(&mut stats.passed))
        }
    }
}

/// A TCP or UDP packet that passed the address filter: its backend if it
/// is for a VIP, else the verdict. `(syn, fin_rst)`: the client opens a
/// connection (SYN without ACK), or ends one.
#[inline(always)]
fn vip_packet<T: Tuple>(
    ctx: &XdpContext,
    flow: &T,
    shape: Shape,
    (syn, fin_rst): (bool, bool),
    stats: &mut GlobalStats,
    out: &mut Outbound,
) -> Found {
    // An established flow needs only the connection table; a SYN opens a
    // new connection and always goes by the ring, so a reused tuple never
    // sticks to a stale choice.
    let pinned = if syn {
        Pinned::Miss
    } else {
        select::pinned(flow, fin_rst)
    };
    let (selected, vip_id) = match pinned {
        Pinned::Hit(selected) => {
            stats.flow_hits += 1;
            let vip_id = selected.backend.vip_id;
            (selected, vip_id)
        }
        Pinned::Stale | Pinned::Miss => {
            let Some(vip) = flow.vip() else {
                return Err(pass(&mut stats.passed));
            };
            // A policy whose choice is no function of the tuple would send
            // a retransmitted SYN elsewhere: it keeps its open pin.
            if syn && vip.policy >= POLICY_RANDOM {
                if let Some(selected) = select::open_pin(flow) {
                    stats.flow_hits += 1;
                    *out = Outbound::to_backend(shape, flow, &selected, vip.vip_id);
                    return Ok(());
                }
            }
            if matches!(pinned, Pinned::Stale) {
                stats.flow_reselected += 1;
            }
            stats.flow_misses += 1;
            let Some(selected) = select::new_flow(flow, &vip, stats) else {
                debug!(
                    ctx,
                    "VIP {}: no backend takes new flows, dropped", vip.vip_id
                );
                return Err(drop(&mut stats.drop_no_backend));
            };
            (selected, vip.vip_id)
        }
    };
    *out = Outbound::to_backend(shape, flow, &selected, vip_id);
    Ok(())
}

/// Encapsulates the packet to its selected backend and sends it on: the
/// tail shared by VIP packets of both families and the ICMP errors about
/// VIP flows.
#[inline(always)]
/// `V6`: this program sends to IPv6 backends itself (`balancer6`); the
/// IPv4 program hands such packets over ([`hand_over_to_ipv6`]).
pub fn forward<const V6: bool>(ctx: &XdpContext, stats: &mut GlobalStats, out: &Outbound) -> u32 {
    let Outbound {
        shape,
        backend_id,
        backend_addr,
        new_flow,
        vip_id,
        tunnel,
    } = *out;
    // Before anything else: `balancer6` checks and sends it.
    if !V6 && tunnel.outer_v6 {
        return hand_over_to_ipv6(ctx, stats, out);
    }
    let Shape {
        l2,
        len,
        tos,
        inner_v6,
        on_too_big,
    } = shape;
    // The client's frame ends with its IP packet; anything after that is
    // padding or a trailer, trimmed before encapsulation and not counted.
    let frame_len = l2.header_len() + len as usize;
    let trailer = (ctx.data_end() - ctx.data()).saturating_sub(frame_len);

    let overhead = tunnel.overhead();
    // No IP packet can carry more than 65535 bytes (IPv6: of payload):
    // nor can its outer one.
    let Some(outer_len) = len.checked_add(overhead) else {
        return drop(&mut stats.drop_too_big);
    };
    // An IPv6 backend's address is read only for it.
    let mut outer_dst6: Ipv6Wire = [0; 4];
    let next_hop = if V6 && tunnel.outer_v6 {
        let Some(dst) = BACKEND_ADDRS6.get(backend_id) else {
            return drop(&mut stats.fib_failures);
        };
        outer_dst6 = *dst;
        transmit::next_hop6(
            ctx,
            config!(lb_source_addr6),
            outer_dst6,
            outer_len,
            tunnel.flow_label,
        )
    } else {
        transmit::next_hop(ctx, config!(lb_source_addr), backend_addr, outer_len, tos)
    };
    let mtu = next_hop.mtu;
    match next_hop.hop {
        Hop::Out | Hop::Kernel => {}
        Hop::TooBig => {
            match on_too_big {
                OnTooBig::FragNeeded => return icmp::frag_needed(ctx, l2, mtu, overhead, stats),
                OnTooBig::PacketTooBig => {
                    return icmp6::packet_too_big(ctx, l2, mtu, overhead, stats)
                }
                OnTooBig::Drop => {}
            }
            return drop(&mut stats.drop_too_big);
        }
        Hop::Unreachable => return drop(&mut stats.fib_failures),
    }

    // The trailer goes first: the outer length counts only the IP packet.
    // (No closures here, nor log statements: `forward` is inlined into both
    // programs, and the compiler would make their shared closures
    // functions of their own, called on every packet and their frames
    // added to the stack. Every drop has its counter.)
    if encap::trim_tail(ctx, trailer).is_err() {
        return drop(&mut stats.encap_errors);
    }
    let encapsulated = if V6 && tunnel.outer_v6 {
        encap::encapsulate6(
            ctx,
            l2,
            tunnel,
            inner_v6,
            tos,
            len,
            config!(lb_source_addr6),
            outer_dst6,
        )
    } else {
        encap::encapsulate(
            ctx,
            l2,
            tunnel,
            inner_v6,
            tos,
            outer_len,
            config!(lb_source_addr),
            backend_addr,
        )
    };
    if encapsulated.is_err() {
        return drop(&mut stats.encap_errors);
    }
    // VIP and backend counters count what was sent on, not drops.
    stats::count_vip(vip_id, frame_len as u64, new_flow);
    stats::count_backend(backend_id, frame_len as u64);
    if next_hop.hop == Hop::Kernel {
        stats.fib_no_neigh += 1;
        return xdp_action::XDP_PASS;
    }
    if encap::set_macs(ctx, next_hop.src_mac, next_hop.dst_mac).is_err() {
        return drop(&mut stats.encap_errors);
    }
    if next_hop.action == xdp_action::XDP_TX {
        stats.tx += 1;
    } else {
        stats.redirected += 1;
    }
    next_hop.action
}

#[inline(always)]
pub fn pass(counter: &mut u64) -> u32 {
    *counter += 1;
    xdp_action::XDP_PASS
}

#[inline(always)]
pub fn drop(counter: &mut u64) -> u32 {
    *counter += 1;
    xdp_action::XDP_DROP
}
