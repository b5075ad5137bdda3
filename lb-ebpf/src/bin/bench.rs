//! Benchmark-only programs (never loaded by the agent).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_ebpf as _;

/// The floor: swap MACs, XDP_TX.
#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    let _ = ctx;
    xdp_action::XDP_TX
}
