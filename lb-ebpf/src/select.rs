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

#[inline(always)]
fn usable(backend: &Backend, generation: u32) -> bool {
    backend.flags & BACKEND_F_ACTIVE != 0 && backend.generation == generation
}

/// Picks the backend for a packet of `flow` to `vip`. `None` means the VIP
/// has no backend for new flows.
#[inline(always)]
pub fn select_backend(
    flow: &FlowKey,
    tcp_syn: bool,
    vip: &VipMeta,
    stats: &mut GlobalStats,
) -> Option<Selected> {
    // A SYN opens a new connection: it always goes by the ring, so a reused
    // tuple never sticks to a stale choice.
    if !tcp_syn {
        if let Some(pin) = unsafe { FLOWS.get(flow) } {
            let pin = *pin;
            if let Some(backend) = BACKENDS.get(pin.backend_id) {
                if usable(backend, pin.generation) {
                    stats.flow_hits += 1;
                    return Some(Selected {
                        backend_id: pin.backend_id,
                        backend: *backend,
                        new_flow: false,
                    });
                }
            }
            // Pinned to a backend that was removed or replaced.
            stats.flow_reselected += 1;
        }
    }
    stats.flow_misses += 1;

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
    let pin = FlowPin {
        backend_id,
        generation: backend.generation,
    };
    if FLOWS.insert(flow, &pin, 0).is_err() {
        stats.flow_pin_errors += 1;
    }
    Some(Selected {
        backend_id,
        backend,
        new_flow: true,
    })
}
