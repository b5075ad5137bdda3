//! Is this packet for a virtual service?

use lb_common::{vip_filter_position, FlowKey, VipAddrInfo, VipKey, VipMeta};

use crate::maps::{VIPS, VIP_ADDRS, VIP_FILTER};

/// Whether `addr` may be a VIP address: false is certain (most traffic
/// stops here, after one array read), true needs the VIP map to confirm.
#[inline(always)]
pub fn maybe_vip_address(addr: u32) -> bool {
    let (word, bit) = vip_filter_position(addr);
    match VIP_FILTER.get(word) {
        Some(bits) => bits & (1u64 << bit) != 0,
        None => true,
    }
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

/// Whether some VIP lives on this address (for packets without ports).
#[inline(always)]
pub fn is_vip_address(addr: u32) -> bool {
    VIP_ADDRS.get_ptr(addr).is_some()
}

/// What the agent says about a VIP address (ICMP: no port to look up by).
#[inline(always)]
pub fn vip_address(addr: u32) -> Option<VipAddrInfo> {
    unsafe { VIP_ADDRS.get(addr) }.copied()
}
