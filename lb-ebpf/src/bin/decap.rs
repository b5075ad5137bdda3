//! Object file with the `decap` XDP program (loaded on backends).
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn decap(ctx: XdpContext) -> u32 {
    lb_ebpf::decap::decap(&ctx)
}
