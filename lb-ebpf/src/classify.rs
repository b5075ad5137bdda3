//! Is this packet for a virtual service?

use lb_common::{
    vip6_filter_position, vip_filter_position, Flow6Key, FlowKey, Ipv6Wire, Vip6Key, VipAddrInfo,
    VipKey, VipMeta,
};

use crate::maps::{VIP6_ADDRS, VIPS, VIPS6, VIP_ADDRS, VIP_FILTER};

/// Whether the filter bit at `(word, bit)` is set: false is certain (most
/// traffic stops here, after one array read), true needs the VIP map to
/// confirm.
#[inline(always)]
fn filter_bit((word, bit): (u32, u32)) -> bool {
    match VIP_FILTER.get(word) {
        Some(bits) => bits & (1u64 << bit) != 0,
        None => true,
    }
}

/// Whether `addr` may be a VIP address.
#[inline(always)]
pub fn maybe_vip_address(addr: u32) -> bool {
    filter_bit(vip_filter_position(addr))
}

/// Whether the IPv6 `addr` may be a VIP address (the same filter, by the
/// folded address).
#[inline(always)]
pub fn maybe_vip6_address(addr: &Ipv6Wire) -> bool {
    filter_bit(vip6_filter_position(addr))
}

/// The VIP a flow is addressed to, if any.
#[inline(always)]
pub fn lookup_vip(flow: &FlowKey) -> Option<VipMeta> {
    let key = VipKey {
        addr: flow.dst_addr,
        port: flow.dst_port,
        proto: flow.proto,
        _pad: 0,
    };
    // Copied out: the agent may replace the value at any time and a
    // consistent (offset, size) pair matters more than saving 16 bytes.
    unsafe { VIPS.get(key) }.copied()
}

/// The IPv6 VIP a flow is addressed to, if any.
#[inline(always)]
pub fn lookup_vip6(flow: &Flow6Key) -> Option<VipMeta> {
    let key = Vip6Key {
        addr: flow.dst_addr,
        port: flow.dst_port,
        proto: flow.proto,
        _pad: 0,
    };
    unsafe { VIPS6.get(key) }.copied()
}

/// Whether some VIP lives on this address (for packets without ports).
#[inline(always)]
pub fn is_vip_address(addr: u32) -> bool {
    VIP_ADDRS.get_ptr(addr).is_some()
}

/// Whether some IPv6 VIP lives on this address.
#[inline(always)]
pub fn is_vip6_address(addr: &Ipv6Wire) -> bool {
    VIP6_ADDRS.get_ptr(addr).is_some()
}

/// What the agent says about a VIP address (ICMP: no port to look up by).
#[inline(always)]
pub fn vip_address(addr: u32) -> Option<VipAddrInfo> {
    unsafe { VIP_ADDRS.get(addr) }.copied()
}

/// What the agent says about an IPv6 VIP address.
#[inline(always)]
pub fn vip6_address(addr: &Ipv6Wire) -> Option<VipAddrInfo> {
    unsafe { VIP6_ADDRS.get(addr) }.copied()
}
