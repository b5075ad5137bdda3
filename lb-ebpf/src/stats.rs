//! Counter updates. All counter maps are per-CPU, so plain increments are
//! race-free.

use lb_common::{BackendStats, GlobalStats, VipStats};

use crate::maps::{BACKEND_STATS, GLOBAL_STATS, VIP_STATS};

/// The global counters of this CPU. Looked up once per packet.
#[inline(always)]
pub fn global() -> Option<&'static mut GlobalStats> {
    GLOBAL_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn count_vip(vip_id: u32, bytes: u64, new_flow: bool) {
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        let s: &mut VipStats = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
        s.new_flows += new_flow as u64;
    }
}

#[inline(always)]
pub fn count_backend(backend_id: u32, bytes: u64) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) {
        let s: &mut BackendStats = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
    }
}
