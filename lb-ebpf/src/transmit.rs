//! Where an encapsulated packet goes next: `bpf_fib_lookup` on the outer
//! destination (IPv4 or IPv6), or a configured static next hop.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{Ipv6Wire, NEXT_HOP_STATIC};

use crate::config;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What [`NextHop`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Rewrite the MACs and send with `action` (XDP_TX or XDP_REDIRECT).
    Out,
    /// The route is known but not the neighbour's MAC: let the kernel
    /// forward this packet (it resolves the neighbour on the way).
    Kernel,
    /// The outer packet exceeds the egress MTU, `mtu` (the static MTU, or
    /// the route's as `bpf_fib_lookup` reports it).
    TooBig,
    /// No usable route.
    Unreachable,
}

/// The next hop, every field defined whatever `hop` is: a struct, not an
/// enum with fields, because the two families' lookups merge into one
/// value, and the compiler fills an enum's unused bytes from whatever
/// register is at hand (a map pointer, say), which the verifier refuses.
#[derive(Clone, Copy)]
pub struct NextHop {
    pub hop: Hop,
    pub action: u32,
    pub mtu: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl NextHop {
    #[inline(always)]
    fn out(action: u32, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Self {
        NextHop {
            hop: Hop::Out,
            action,
            mtu: 0,
            src_mac,
            dst_mac,
        }
    }

    #[inline(always)]
    fn only(hop: Hop, mtu: u32) -> Self {
        NextHop {
            hop,
            action: xdp_action::XDP_PASS,
            mtu,
            src_mac: [0; 6],
            dst_mac: [0; 6],
        }
    }
}

/// Zeroes lookup parameters with eight 8-byte stores: LLVM turns
/// `mem::zeroed()` of this struct into a call to a byte-by-byte memset,
/// and volatile stores are the way to keep it from doing so.
#[inline(always)]
fn zero_fib_params(params: *mut bpf_fib_lookup) {
    let words = params as *mut u64;
    let mut i = 0;
    while i < size_of::<bpf_fib_lookup>() / 8 {
        // SAFETY: inside `params` (64 bytes, 8-byte multiple).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
}

/// The configured static next hop (`NEXT_HOP_STATIC`).
#[inline(always)]
fn static_next_hop(outer_len: u16) -> NextHop {
    let mtu = config!(static_mtu);
    if outer_len as u32 > mtu {
        return NextHop::only(Hop::TooBig, mtu);
    }
    NextHop::out(
        xdp_action::XDP_TX,
        config!(static_src_mac),
        config!(static_dst_mac),
    )
}

/// The next hop towards an IPv4 outer destination.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    outer_src: u32,
    outer_dst: u32,
    outer_len: u16,
    tos: u8,
) -> NextHop {
    if config!(next_hop_mode) == NEXT_HOP_STATIC {
        return static_next_hop(outer_len);
    }
    let mut raw = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    zero_fib_params(raw.as_mut_ptr());
    // SAFETY: every byte was just written; all-zero is a valid value.
    let params = unsafe { &mut *raw.as_mut_ptr() };
    params.family = AF_INET;
    params.__bindgen_anon_2.tos = tos;
    params.__bindgen_anon_3.ipv4_src = outer_src;
    params.__bindgen_anon_4.ipv4_dst = outer_dst;
    fib(ctx, params, outer_len)
}

/// The next hop towards an IPv6 outer destination (addresses wire order,
/// `flow_label` host order: multipath routes hash it).
#[inline(always)]
pub fn next_hop6(
    ctx: &XdpContext,
    outer_src: Ipv6Wire,
    outer_dst: Ipv6Wire,
    outer_len: u16,
    flow_label: u32,
) -> NextHop {
    if config!(next_hop_mode) == NEXT_HOP_STATIC {
        return static_next_hop(outer_len);
    }
    let mut raw = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    zero_fib_params(raw.as_mut_ptr());
    // SAFETY: every byte was just written; all-zero is a valid value.
    let params = unsafe { &mut *raw.as_mut_ptr() };
    params.family = AF_INET6;
    params.__bindgen_anon_2.flowinfo = flow_label.to_be();
    params.__bindgen_anon_3.ipv6_src = outer_src;
    params.__bindgen_anon_4.ipv6_dst = outer_dst;
    fib(ctx, params, outer_len)
}

/// Runs the FIB lookup of `params` (family, addresses set) for a packet
/// of `outer_len` bytes entering on the receiving interface.
#[inline(always)]
fn fib(ctx: &XdpContext, params: &mut bpf_fib_lookup, outer_len: u16) -> NextHop {
    let ingress = ctx.ingress_ifindex() as u32;
    params.ifindex = ingress;
    // Non-zero tot_len makes the kernel check it against the route's MTU.
    params.__bindgen_anon_1.tot_len = outer_len;
    let ret = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if ret < 0 {
        return NextHop::only(Hop::Unreachable, 0);
    }
    match ret as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let action = if params.ifindex == ingress {
                xdp_action::XDP_TX
            } else {
                unsafe { bpf_redirect(params.ifindex, 0) as u32 }
            };
            NextHop::out(action, params.smac, params.dmac)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => NextHop::only(Hop::Kernel, 0),
        // The kernel writes the MTU it checked against over `tot_len`.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            NextHop::only(Hop::TooBig, unsafe { params.__bindgen_anon_1.mtu_result }
                as u32)
        }
        _ => NextHop::only(Hop::Unreachable, 0),
    }
}
