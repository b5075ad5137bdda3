//! Backend selection: the connection table first, the Maglev ring for new
//! flows.

use lb_common::{
    flow_hash, Backend, FlowKey, FlowPin, GlobalStats, VipMeta, BACKEND_F_ACTIVE, NO_BACKEND,
    RING_SLOTS_PER_ENTRY, VIP_F_HASH_NO_SRC_PORT,
};

use crate::maps::{BACKENDS, FLOWS, RINGS};

pub struct Selected {
    pub backend_id: u32,
    pub backend: Backend,
    /// Chosen from the ring rather than the connection table.
    pub new_flow: bool,
}

/// What the connection table says about a flow.
pub enum Pinned {
    /// Pinned to a backend that still serves it.
    Hit(Selected),
    /// Pinned to a backend that was removed or replaced since.
    Stale,
    /// Not in the table.
    Miss,
}

/// Looks the flow up in the connection table. Needs no VIP lookup: a pin
/// only exists for VIP flows, and the backend it names carries its VIP id
/// and stops being active when it leaves its VIP (or the VIP goes).
#[inline(always)]
pub fn pinned(flow: &FlowKey) -> Pinned {
    let Some(pin) = (unsafe { FLOWS.get(flow) }) else {
        return Pinned::Miss;
    };
    let pin = *pin;
    match BACKENDS.get(pin.backend_id) {
        Some(backend)
            if backend.flags & BACKEND_F_ACTIVE != 0 && backend.generation == pin.generation =>
        {
            Pinned::Hit(Selected {
                backend_id: pin.backend_id,
                backend: *backend,
                new_flow: false,
            })
        }
        _ => Pinned::Stale,
    }
}

/// Picks a backend for a new flow from the VIP's Maglev ring and pins the
/// flow to it. `None`: the VIP has no backend for new flows.
#[inline(always)]
pub fn from_ring(flow: &FlowKey, vip: &VipMeta, stats: &mut GlobalStats) -> Option<Selected> {
    let selected = ring_choice(flow, vip)?;
    let pin = FlowPin {
        backend_id: selected.backend_id,
        generation: selected.backend.generation,
    };
    if FLOWS.insert(flow, pin, 0).is_err() {
        stats.flow_pin_errors += 1;
    }
    Some(selected)
}

/// The ring's backend for a flow, without pinning it (an ICMP error about
/// a flow must not create one). `None`: the VIP has no backend for new
/// flows.
#[inline(always)]
pub fn ring_choice(flow: &FlowKey, vip: &VipMeta) -> Option<Selected> {
    let src_port = if vip.flags & VIP_F_HASH_NO_SRC_PORT != 0 {
        0
    } else {
        flow.src_port
    };
    let hash = flow_hash(
        flow.src_addr,
        flow.dst_addr,
        src_port,
        flow.dst_port,
        flow.proto,
    );
    if vip.ring_size == 0 {
        return None;
    }
    let slot = vip.ring_offset.wrapping_add(hash % vip.ring_size);
    let entry = RINGS.get(slot / RING_SLOTS_PER_ENTRY)?;
    let backend_id = entry[(slot % RING_SLOTS_PER_ENTRY) as usize];
    if backend_id == NO_BACKEND {
        return None;
    }
    let backend = *BACKENDS.get(backend_id)?;
    if backend.flags & BACKEND_F_ACTIVE == 0 {
        return None;
    }
    Some(Selected {
        backend_id,
        backend,
        new_flow: true,
    })
}
