//! Benchmark-only programs (never loaded by the agent), timed by
//! `cargo xtask bench` through BPF_PROG_TEST_RUN.
//!
//! With `repeat`, the kernel runs a program again on the buffer the previous
//! run left, so a program that encapsulates would see its own output from
//! the second run on. The wrappers therefore undo the encapsulation after
//! timing it: they save the Ethernet header, run the balancer, and on
//! XDP_TX move the head back by the outer headers it finds and restore the
//! header. `bench_wrapper_floor` is the same wrapper around a trivial
//! 20-byte "encapsulation", to know the wrapper's own cost. One wrapper per
//! family (`bench_balancer`, `bench_balancer6`) serves every case of that
//! family, so that the balancer is inlined into one program, as in the
//! real object.
//!
//! `bench_floor_lookup` is the floor plus one connection-table lookup that
//! hits: the least an established flow can cost when it consults the table.
//!
//! `bench_ring_first` and `bench_ring_first_indexed` are an experiment, not
//! the product: a design in which a Maglev VIP's packet goes by its slot of
//! the table first and consults the connection table only when the slot is
//! marked as changed since the flows in it were pinned ("dirty"), so that
//! an established flow in an unchanged slot costs no connection-table
//! lookup. They run the balancer's own parse, filter, Maglev slot and tail;
//! the first finds the VIP in `VIPS` (a hash map), the second in a
//! direct-indexed array table. The agent writes no dirty slot, so the
//! timed path is the clean one; a dirty slot is dropped here and counted
//! as an encapsulation error, which the benchmark's counter check would
//! catch.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::map,
    macros::xdp,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    bench_vip_slot, FlowKey, VipKey, VipMeta, BENCH_VIP_PROBES, BENCH_VIP_SLOTS, GUE6_OVERHEAD,
    GUE_OVERHEAD, IPIP_OVERHEAD, IPPROTO_TCP, IPPROTO_UDP, IPV6_OVERHEAD,
};
use lb_ebpf::{
    balancer::{self, balance, balance6, Outbound, Shape},
    classify,
    maps::FLOWS,
    parse::{self, ptr_at, Parsed},
    select, stats,
};
use network_types::eth::{EthHdr, EtherType};

/// Per-CPU sequence number that makes every `bench_new_flow` run a new flow.
#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The ring-first experiment's VIP table: keys by slot (an all-zero key
/// is an empty slot). Written by `lb-bench`, read by
/// `bench_ring_first_indexed`.
#[map]
static BENCH_VIP_KEYS: Array<VipKey> = Array::with_max_entries(BENCH_VIP_SLOTS, 0);

/// The VIP of each slot of `BENCH_VIP_KEYS`, as the agent wrote it into
/// `VIPS`. Written by `lb-bench`, read by `bench_ring_first_indexed`.
#[map]
static BENCH_VIP_METAS: Array<VipMeta> = Array::with_max_entries(BENCH_VIP_SLOTS, 0);

/// A slot of a VIP's Maglev table whose backend changed since the flows
/// in it were pinned: the design's flag (bit 31 of the slot) for "consult
/// the connection table".
const DIRTY_SLOT: u32 = 1 << 31;

/// The floor: swap the MACs and send the frame back.
#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    swap_macs(&ctx)
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    unsafe { core::mem::swap(&mut (*eth).src_addr, &mut (*eth).dst_addr) };
    xdp_action::XDP_TX
}

/// The floor after one connection-table lookup of the packet's flow
/// (plain Ethernet + 20-byte IPv4 + TCP, as the benchmark sends). XDP_DROP
/// when the flow is not pinned, so a miss cannot pass for a hit.
#[xdp]
pub fn bench_floor_lookup(ctx: XdpContext) -> u32 {
    let (Some(addrs), Some(ports)) = (
        ptr_at::<[[u8; 4]; 2]>(&ctx, 14 + 12),
        ptr_at::<[[u8; 2]; 2]>(&ctx, 14 + 20),
    ) else {
        return xdp_action::XDP_PASS;
    };
    let (addrs, ports) = unsafe { (*addrs, *ports) };
    let flow = FlowKey {
        src_addr: u32::from_ne_bytes(addrs[0]),
        dst_addr: u32::from_ne_bytes(addrs[1]),
        src_port: u16::from_ne_bytes(ports[0]),
        dst_port: u16::from_ne_bytes(ports[1]),
        proto: IPPROTO_TCP,
        _pad: 0,
        _pad2: 0,
    };
    if unsafe { FLOWS.get(flow) }.is_none() {
        return xdp_action::XDP_DROP;
    }
    swap_macs(&ctx)
}

/// `overhead`: what the tunnel under test added, read off the output once
/// `run` has sent it (see [`tunnel_overhead`]); the wrapper keeps nothing
/// live across the balancer but the saved Ethernet header.
#[inline(always)]
fn wrapped(
    ctx: &XdpContext,
    overhead: impl FnOnce(&XdpContext) -> Option<u16>,
    run: impl FnOnce(&XdpContext) -> u32,
) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    let saved = unsafe { *eth };
    let action = run(ctx);
    if action == xdp_action::XDP_TX {
        let Some(overhead) = overhead(ctx) else {
            return xdp_action::XDP_DROP;
        };
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, overhead as i32) } != 0 {
            return xdp_action::XDP_DROP;
        }
        let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
            return xdp_action::XDP_DROP;
        };
        unsafe { *eth = saved };
    }
    action
}

/// The outer headers of a frame the balancer sent (plain Ethernet): an
/// IPv6 header (40) or IPv6 and UDP (GUE, 48), IPv4 and UDP (GUE, 28) or
/// IPv4 (20).
#[inline(always)]
fn tunnel_overhead(ctx: &XdpContext) -> Option<u16> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    if unsafe { (*eth).ether_type } == EtherType::Ipv6.into() {
        let next = ptr_at::<[u8; 2]>(ctx, 14 + 6)?;
        return Some(if unsafe { (*next)[0] } == IPPROTO_UDP {
            GUE6_OVERHEAD
        } else {
            IPV6_OVERHEAD
        });
    }
    let proto = ptr_at::<[u8; 2]>(ctx, 14 + 8)?;
    Some(if unsafe { (*proto)[1] } == IPPROTO_UDP {
        GUE_OVERHEAD
    } else {
        IPIP_OVERHEAD
    })
}

/// Whether the frame (plain Ethernet, no IP options or extension headers,
/// as the benchmark sends) is a TCP SYN: the new-flow cases.
#[inline(always)]
fn is_syn(ctx: &XdpContext, tcp: usize) -> bool {
    match ptr_at::<[u8; 2]>(ctx, tcp + 12) {
        Some(flags) => (unsafe { (*flags)[1] } & 0x12) == 0x02,
        None => false,
    }
}

/// Writes a new sequence number into the frame: the low 16 bits of the
/// source address at `addr_low` and the source port at `port`, so that
/// every run is a new flow.
#[inline(always)]
fn next_flow(ctx: &XdpContext, addr_low: usize, port: usize) -> Option<()> {
    let seq = BENCH_SEQ.get_ptr_mut(0)?;
    let n = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    };
    let src_addr_low = ptr_at::<[u8; 2]>(ctx, addr_low)?;
    let src_port = ptr_at::<[u8; 2]>(ctx, port)?;
    unsafe {
        *src_addr_low = ((n >> 16) as u16).to_be_bytes();
        *src_port = (n as u16).to_be_bytes();
    }
    Some(())
}

/// The IPv4 `balancer` on the benchmark's frame: an established flow (any
/// tunnel) as it is, a SYN made a new flow first (the source port and the
/// low half of the source address carry a sequence number). One program
/// for every IPv4 case, so that the balancer is inlined once, as in the
/// real object (inlined into several, the compiler outlines its log
/// statement's closure, a call the real program does not make).
#[xdp]
pub fn bench_balancer(ctx: XdpContext) -> u32 {
    if is_syn(&ctx, 14 + 20) && next_flow(&ctx, 14 + 14, 14 + 20).is_none() {
        return xdp_action::XDP_PASS;
    }
    #[allow(clippy::redundant_closure)] // inlined here, not called
    wrapped(&ctx, tunnel_overhead, |ctx| balance(ctx))
}

/// The same for IPv6: `balancer6`, which `balancer` tail-calls for an IPv6
/// packet, called directly (a wrapper gets no control back from a tail
/// call, so the IPv6 figures leave out that one `bpf_tail_call`).
#[xdp]
pub fn bench_balancer6(ctx: XdpContext) -> u32 {
    if is_syn(&ctx, 14 + 40) && next_flow(&ctx, 14 + 8 + 14, 14 + 40).is_none() {
        return xdp_action::XDP_PASS;
    }
    #[allow(clippy::redundant_closure)] // inlined here, not called
    wrapped(&ctx, tunnel_overhead, |ctx| balance6(ctx))
}

/// The wrapper around a trivial encapsulation: grow by 20 bytes, write the
/// Ethernet header, XDP_TX.
#[xdp]
pub fn bench_wrapper_floor(ctx: XdpContext) -> u32 {
    wrapped(
        &ctx,
        |_| Some(IPIP_OVERHEAD),
        |ctx| {
            let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
                return xdp_action::XDP_PASS;
            };
            let saved = unsafe { *eth };
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPIP_OVERHEAD as i32)) } != 0 {
                return xdp_action::XDP_DROP;
            }
            let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
                return xdp_action::XDP_DROP;
            };
            unsafe { *eth = saved };
            xdp_action::XDP_TX
        },
    )
}

/// The ring-first experiment on an IPv4 frame, its VIP found in `VIPS`.
#[xdp]
pub fn bench_ring_first(ctx: XdpContext) -> u32 {
    if is_syn(&ctx, 14 + 20) && next_flow(&ctx, 14 + 14, 14 + 20).is_none() {
        return xdp_action::XDP_PASS;
    }
    wrapped(&ctx, tunnel_overhead, |ctx| {
        ring_first(ctx, classify::lookup_vip)
    })
}

/// The ring-first experiment, its VIP found in the direct-indexed table.
#[xdp]
pub fn bench_ring_first_indexed(ctx: XdpContext) -> u32 {
    if is_syn(&ctx, 14 + 20) && next_flow(&ctx, 14 + 14, 14 + 20).is_none() {
        return xdp_action::XDP_PASS;
    }
    wrapped(&ctx, tunnel_overhead, |ctx| ring_first(ctx, indexed_vip))
}

/// The VIP of `flow` in `BENCH_VIP_KEYS` / `BENCH_VIP_METAS`: at most
/// `BENCH_VIP_PROBES` slots from its first, up to an empty one.
#[inline(always)]
fn indexed_vip(flow: &FlowKey) -> Option<VipMeta> {
    let key = VipKey {
        addr: flow.dst_addr,
        port: flow.dst_port,
        proto: flow.proto,
        _pad: 0,
    };
    let first = bench_vip_slot(&key);
    for probe in 0..BENCH_VIP_PROBES {
        let slot = (first + probe) % BENCH_VIP_SLOTS;
        let found = BENCH_VIP_KEYS.get(slot)?;
        if *found == key {
            return BENCH_VIP_METAS.get(slot).copied();
        }
        if found.addr == 0 {
            return None;
        }
    }
    None
}

/// An IPv4 TCP or UDP packet by its VIP's Maglev slot, without the
/// connection table: parse, filter, VIP, slot, backend, the balancer's
/// tail. Anything else passes (the benchmark sends none).
#[inline(always)]
fn ring_first(ctx: &XdpContext, vip_of: impl FnOnce(&FlowKey) -> Option<VipMeta>) -> u32 {
    let Some(stats) = stats::global() else {
        return xdp_action::XDP_PASS;
    };
    let Some((l2, ether_type)) = parse::parse_l2(ctx) else {
        return balancer::pass(&mut stats.malformed);
    };
    if ether_type != EtherType::Ipv4.into() {
        return balancer::pass(&mut stats.passed);
    }
    let Some(ip) = parse::ipv4_header(ctx, l2) else {
        return balancer::pass(&mut stats.malformed);
    };
    let dst_addr = u32::from_ne_bytes(ip.dst_addr);
    if !classify::maybe_vip_address(dst_addr) {
        return balancer::pass(&mut stats.passed);
    }
    let Parsed::Flow(pkt) = parse::parse(ctx, l2, ip, dst_addr) else {
        return balancer::pass(&mut stats.passed);
    };
    let Some(vip) = vip_of(&pkt.flow) else {
        return balancer::pass(&mut stats.passed);
    };
    let Some(slot) = select::maglev_slot(&pkt.flow, &vip) else {
        return balancer::pass(&mut stats.passed);
    };
    if slot & DIRTY_SLOT != 0 {
        return balancer::drop(&mut stats.encap_errors);
    }
    let Some(mut selected) = select::backend_at(slot) else {
        return balancer::drop(&mut stats.drop_no_backend);
    };
    // No pin tells a new flow from an established one here: the SYN does.
    selected.new_flow = pkt.tcp_syn;
    let out = Outbound::to_backend(Shape::of_ipv4(l2, &pkt), &pkt.flow, &selected, vip.vip_id);
    balancer::forward::<false>(ctx, stats, &out)
}
