//! Benchmark-only programs (never loaded by the agent), timed by
//! `cargo xtask bench` through BPF_PROG_TEST_RUN.
//!
//! With `repeat`, the kernel runs a program again on the buffer the previous
//! run left, so a program that encapsulates would see its own output from
//! the second run on. The wrappers therefore undo the encapsulation after
//! timing it: they save the Ethernet header, run the balancer, and on
//! XDP_TX move the head back and restore the header. `bench_wrapper_floor`
//! is the same wrapper around a trivial 20-byte "encapsulation", to know the
//! wrapper's own cost. The balancer is one function, [`balancer`], that every
//! wrapper calls (a BPF-to-BPF call, a few instructions the real program
//! does not pay): inlined into each wrapper, the compiler outlines the
//! log statements' closures the copies share, and the call chain through
//! them overflows the verifier's 512-byte stack; one shared copy keeps
//! them inlined, as in the real `balancer`.
//!
//! `bench_floor_lookup` is the floor plus one connection-table lookup that
//! hits: the least an established flow can cost when it consults the table.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_head, macros::map, macros::xdp,
    maps::PerCpuArray, programs::XdpContext,
};
use lb_common::{FlowKey, GUE_OVERHEAD, IPIP_OVERHEAD, IPPROTO_TCP, IPV6_OVERHEAD};
use lb_ebpf::{maps::FLOWS, parse::ptr_at};
use network_types::eth::EthHdr;

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

/// The balancer, once for every wrapper (see the module doc).
#[inline(never)]
fn balancer(ctx: &XdpContext) -> u32 {
    lb_ebpf::balancer::balance(ctx)
}

/// `overhead`: what the tunnel under test adds (a constant per program,
/// so the wrapper keeps nothing live across the balancer but the saved
/// Ethernet header).
#[inline(always)]
fn wrapped(ctx: &XdpContext, overhead: u16, run: impl FnOnce(&XdpContext) -> u32) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    let saved = unsafe { *eth };
    let action = run(ctx);
    if action == xdp_action::XDP_TX {
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

/// The balancer on an unchanged packet: an established flow once pinned.
#[xdp]
pub fn bench_established(ctx: XdpContext) -> u32 {
    wrapped(&ctx, IPIP_OVERHEAD, balancer)
}

/// The same for a flow of a GUE VIP (28 bytes to undo).
#[xdp]
pub fn bench_established_gue(ctx: XdpContext) -> u32 {
    wrapped(&ctx, GUE_OVERHEAD, balancer)
}

/// The same for an IPv6 flow to an IPv6 backend (40 bytes to undo).
#[xdp]
pub fn bench_established_v6(ctx: XdpContext) -> u32 {
    wrapped(&ctx, IPV6_OVERHEAD, balancer)
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

/// The balancer on a new TCP SYN every run (plain Ethernet + 20-byte IPv4
/// + TCP, as the benchmark sends).
#[xdp]
pub fn bench_new_flow(ctx: XdpContext) -> u32 {
    if next_flow(&ctx, 14 + 14, 14 + 20).is_none() {
        return xdp_action::XDP_PASS;
    }
    wrapped(&ctx, IPIP_OVERHEAD, balancer)
}

/// The same over IPv6 (plain Ethernet + 40-byte IPv6 + TCP) to an IPv6
/// backend.
#[xdp]
pub fn bench_new_flow_v6(ctx: XdpContext) -> u32 {
    if next_flow(&ctx, 14 + 8 + 14, 14 + 40).is_none() {
        return xdp_action::XDP_PASS;
    }
    wrapped(&ctx, IPV6_OVERHEAD, balancer)
}

/// The wrapper around a trivial encapsulation: grow by 20 bytes, write the
/// Ethernet header, XDP_TX.
#[xdp]
pub fn bench_wrapper_floor(ctx: XdpContext) -> u32 {
    wrapped(&ctx, IPIP_OVERHEAD, |ctx| {
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
    })
}
