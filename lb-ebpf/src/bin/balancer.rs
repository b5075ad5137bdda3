//! Object file with the `balancer` XDP program (loaded on LB nodes).
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn balancer(ctx: XdpContext) -> u32 {
    lb_ebpf::balancer::balance(&ctx)
}

/// IPv6, tail-called from `balancer` through `PROGRAMS`.
#[xdp]
pub fn balancer6(ctx: XdpContext) -> u32 {
    lb_ebpf::balancer::balance6(&ctx)
}
