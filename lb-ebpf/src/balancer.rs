//! The `balancer` program, top to bottom:
//! parse → classify (address filter) → connection table → VIP and its
//! policy (affinity, Maglev, random, round robin, least-conn) for new
//! flows → next hop → encapsulate → verdict. ICMP branches off after
//! the parse (`icmp`), and comes back to the one [`forward`] for errors
//! about a VIP flow; a DF packet too big for the tunnel turns into an ICMP
//! "fragmentation needed" in [`forward`].
//!
//! Drops are logged with aya-log at debug level only: the agent compiles
//! them out (through `AYA_LOG_LEVEL`) unless it runs with debug logging, so
//! a flood of drops costs nothing extra by default.

use core::net::Ipv4Addr;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::debug;
use lb_common::{FlowKey, GlobalStats, POLICY_RANDOM};

use crate::{
    classify, encap, icmp,
    maps::CONFIG,
    parse::{self, Ipv4Flow, Parsed, L2},
    select::{self, Pinned, Selected},
    stats,
    transmit::{self, NextHop},
};

/// A packet on its way to a backend: what [`forward`] needs.
pub struct Outbound {
    pub l2: L2,
    /// IP total length (host order) of the packet to encapsulate.
    pub tot_len: u16,
    /// Its TOS, inherited by the outer header.
    pub tos: u8,
    /// The backend: its id (for its counters) and address (the outer
    /// destination); only what the tail needs, so that the struct stays
    /// small on the stack.
    pub backend_id: u32,
    pub backend_addr: u32,
    /// Chosen for a new flow rather than found in the connection table.
    pub new_flow: bool,
    /// The VIP whose counters the packet moves.
    pub vip_id: u32,
    pub tunnel: encap::Tunnel,
    pub on_too_big: OnTooBig,
}

impl Outbound {
    /// The packet described by (`l2`, `tot_len`, `tos`) of `flow` to the
    /// `selected` backend of VIP `vip_id`, on the backend's tunnel.
    #[inline(always)]
    pub fn to_backend(
        (l2, tot_len, tos): (L2, u16, u8),
        flow: &FlowKey,
        selected: &Selected,
        vip_id: u32,
        on_too_big: OnTooBig,
    ) -> Self {
        Outbound {
            l2,
            tot_len,
            tos,
            backend_id: selected.backend_id,
            backend_addr: selected.backend.addr,
            new_flow: selected.new_flow,
            vip_id,
            tunnel: encap::Tunnel::of_flow(flow, selected.backend.gue_port),
            on_too_big,
        }
    }
}

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
}

#[inline(always)]
pub fn balance(ctx: &XdpContext) -> u32 {
    let Some(stats) = stats::global() else {
        return xdp_action::XDP_PASS;
    };
    run(ctx, stats)
}

#[inline(always)]
fn run(ctx: &XdpContext, stats: &mut GlobalStats) -> u32 {
    let out = match parse::parse(ctx) {
        Parsed::Flow(pkt) => match vip_packet(ctx, &pkt, stats) {
            Ok(out) => out,
            Err(action) => return action,
        },
        // An ICMP error about a VIP flow joins the VIP packets at the one
        // call of `forward`: a single copy of the tail in the program.
        Parsed::Icmp(pkt) => match icmp::icmpv4(ctx, &pkt, stats) {
            Ok(out) => out,
            Err(action) => return action,
        },
        Parsed::Other => return pass(&mut stats.passed),
        Parsed::Malformed => return pass(&mut stats.malformed),
        Parsed::Fragment { dst_addr } => {
            if classify::is_vip_address(dst_addr) {
                return drop(&mut stats.drop_fragment);
            }
            return pass(&mut stats.passed);
        }
    };
    forward(ctx, stats, &out)
}

/// A TCP or UDP packet: its backend if it is for a VIP, else the verdict.
#[inline(always)]
fn vip_packet(ctx: &XdpContext, pkt: &Ipv4Flow, stats: &mut GlobalStats) -> Result<Outbound, u32> {
    // Most packets on a NIC are for no VIP: one array read tells.
    if !classify::maybe_vip_address(pkt.flow.dst_addr) {
        return Err(pass(&mut stats.passed));
    }
    // An established flow needs only the connection table; a SYN opens a
    // new connection and always goes by the ring, so a reused tuple never
    // sticks to a stale choice.
    let pinned = if pkt.tcp_syn {
        Pinned::Miss
    } else {
        select::pinned(&pkt.flow, pkt.tcp_fin_rst)
    };
    let (selected, vip_id) = match pinned {
        Pinned::Hit(selected) => {
            stats.flow_hits += 1;
            let vip_id = selected.backend.vip_id;
            (selected, vip_id)
        }
        Pinned::Stale | Pinned::Miss => {
            let Some(vip) = classify::lookup_vip(&pkt.flow) else {
                return Err(pass(&mut stats.passed));
            };
            // A policy whose choice is no function of the tuple would send
            // a retransmitted SYN elsewhere: it keeps its open pin.
            if pkt.tcp_syn && vip.policy >= POLICY_RANDOM {
                if let Some(selected) = select::open_pin(&pkt.flow) {
                    stats.flow_hits += 1;
                    return Ok(outbound(pkt, selected, vip.vip_id));
                }
            }
            if matches!(pinned, Pinned::Stale) {
                stats.flow_reselected += 1;
            }
            stats.flow_misses += 1;
            let Some(selected) = select::new_flow(&pkt.flow, &vip, stats) else {
                debug!(
                    ctx,
                    "VIP {}: no backend takes new flows, dropped", vip.vip_id
                );
                return Err(drop(&mut stats.drop_no_backend));
            };
            (selected, vip.vip_id)
        }
    };
    Ok(outbound(pkt, selected, vip_id))
}

#[inline(always)]
fn outbound(pkt: &Ipv4Flow, selected: Selected, vip_id: u32) -> Outbound {
    let on_too_big = if pkt.df {
        OnTooBig::FragNeeded
    } else {
        OnTooBig::Drop
    };
    Outbound::to_backend(
        (pkt.l2, pkt.tot_len, pkt.tos),
        &pkt.flow,
        &selected,
        vip_id,
        on_too_big,
    )
}

/// Encapsulates the packet to its selected backend and sends it on: the
/// tail shared by VIP packets and the ICMP errors about VIP flows.
#[inline(always)]
pub fn forward(ctx: &XdpContext, stats: &mut GlobalStats, out: &Outbound) -> u32 {
    let Outbound {
        l2,
        tot_len,
        tos,
        backend_id,
        backend_addr,
        new_flow,
        vip_id,
        tunnel,
        on_too_big,
    } = *out;
    // The client's frame ends with its IP packet; anything after that is
    // padding or a trailer, trimmed before encapsulation and not counted.
    let frame_len = l2.header_len() + tot_len as usize;
    let trailer = (ctx.data_end() - ctx.data()).saturating_sub(frame_len);

    let config = CONFIG.load();
    let outer_dst = backend_addr;
    // No IPv4 packet can carry more than 65535 bytes: nor can its outer one.
    let Some(outer_len) = tot_len.checked_add(tunnel.overhead()) else {
        return drop(&mut stats.drop_too_big);
    };
    let next_hop = transmit::next_hop(
        ctx,
        &config,
        config.lb_source_addr,
        outer_dst,
        outer_len,
        tos,
    );
    let (action, macs) = match next_hop {
        NextHop::Out {
            action,
            src_mac,
            dst_mac,
        } => (action, Some((src_mac, dst_mac))),
        NextHop::Kernel => (xdp_action::XDP_PASS, None),
        NextHop::TooBig { mtu } => {
            if on_too_big == OnTooBig::FragNeeded {
                return icmp::frag_needed(ctx, l2, mtu, tunnel.overhead(), stats);
            }
            debug!(
                ctx,
                "{} bytes to {:i}: over the MTU once encapsulated, dropped",
                outer_len,
                wire_ip(outer_dst)
            );
            return drop(&mut stats.drop_too_big);
        }
        NextHop::Unreachable => {
            debug!(
                ctx,
                "no usable route to backend {:i}, dropped",
                wire_ip(outer_dst)
            );
            return drop(&mut stats.fib_failures);
        }
    };

    if encap::trim_tail(ctx, trailer).is_err()
        || encap::encapsulate(
            ctx,
            l2,
            tunnel,
            tos,
            outer_len,
            config.lb_source_addr,
            outer_dst,
        )
        .is_err()
    {
        debug!(
            ctx,
            "encapsulation towards {:i} failed, dropped",
            wire_ip(outer_dst)
        );
        return drop(&mut stats.encap_errors);
    }
    // VIP and backend counters count what was sent on, not drops.
    stats::count_vip(vip_id, frame_len as u64, new_flow);
    stats::count_backend(backend_id, frame_len as u64);
    match macs {
        None => {
            stats.fib_no_neigh += 1;
        }
        Some((src, dst)) => {
            if encap::set_macs(ctx, src, dst).is_err() {
                return drop(&mut stats.encap_errors);
            }
            if action == xdp_action::XDP_TX {
                stats.tx += 1;
            } else {
                stats.redirected += 1;
            }
        }
    }
    action
}

/// A wire-order address as an `Ipv4Addr` for the log.
#[inline(always)]
fn wire_ip(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
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
