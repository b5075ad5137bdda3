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
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_head, macros::map, macros::xdp,
    maps::PerCpuArray, programs::XdpContext,
};
use lb_common::{
    FlowKey, GUE6_OVERHEAD, GUE_OVERHEAD, IPIP_OVERHEAD, IPPROTO_TCP, IPPROTO_UDP, IPV6_OVERHEAD,
};
use lb_ebpf::{
    balancer::{balance, balance6},
    maps::FLOWS,
    parse::ptr_at,
};
use network_types::eth::{EthHdr, EtherType};

/// Per-CPU sequence number that makes every `bench_new_flow` run a new flow.
#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

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
