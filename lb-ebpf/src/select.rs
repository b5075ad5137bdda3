//! Backend selection: the connection table first; for a new flow, the
//! client's affinity entry (VIPs with affinity), then the VIP's policy
//! (Maglev on the flow or client hash, weighted random, weighted round
//! robin, weighted least connections), all reading the VIP's ring region.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    maps::LruHashMap,
};
use lb_common::{
    flow_hash, flow_hash6, ipv6_prefix_mask, Affinity6Key, AffinityKey, AffinityPin, Backend,
    Flow6Key, FlowKey, FlowPin, GlobalStats, VipMeta, BACKEND_F_ACTIVE, BACKEND_F_AFFINITY,
    BACKEND_F_COUNT_CONNS, BACKEND_F_DRAINING, FLOW_F_CLOSED, FLOW_TICK_SHIFT,
    LEAST_CONN_MAX_BACKENDS, NO_BACKEND, POLICY_LEAST_CONN, POLICY_MAGLEV, POLICY_MAGLEV_SOURCE,
    POLICY_RANDOM, POLICY_ROUND_ROBIN, RING_SLOTS_PER_ENTRY,
};

use crate::{
    classify,
    maps::{AFFINITY, AFFINITY6, BACKENDS, BACKEND_CONNS, FLOWS, FLOWS6, RINGS, RR_CURSORS},
};

/// A connection-table key of either family: what selection needs of it.
/// Every function below is generic over it, so the two families share
/// one source and each gets its own code, with IPv4's unchanged.
pub trait Tuple: Sized + 'static {
    type AffinityKey: 'static;
    /// The family's connection table.
    fn pins() -> &'static LruHashMap<Self, FlowPin>;
    /// The family's affinity table.
    fn affinities() -> &'static LruHashMap<Self::AffinityKey, AffinityPin>;
    /// The client (masked to the VIP's prefix) of a VIP.
    fn affinity_key(&self, vip: &VipMeta) -> Self::AffinityKey;
    /// The 5-tuple hash (Maglev, GUE source port, flow label).
    fn hash(&self) -> u32;
    /// The hash of the masked client address, port left out
    /// (`maglev-source`).
    fn source_hash(&self, vip: &VipMeta) -> u32;
    /// The VIP the flow is addressed to.
    fn vip(&self) -> Option<VipMeta>;
}

impl Tuple for FlowKey {
    type AffinityKey = AffinityKey;
    #[inline(always)]
    fn pins() -> &'static LruHashMap<Self, FlowPin> {
        &FLOWS
    }
    #[inline(always)]
    fn affinities() -> &'static LruHashMap<AffinityKey, AffinityPin> {
        &AFFINITY
    }
    #[inline(always)]
    fn affinity_key(&self, vip: &VipMeta) -> AffinityKey {
        AffinityKey {
            vip_id: vip.vip_id,
            client: self.src_addr & vip.src_mask,
        }
    }
    #[inline(always)]
    fn hash(&self) -> u32 {
        flow_hash(
            self.src_addr,
            self.dst_addr,
            self.src_port,
            self.dst_port,
            self.proto,
        )
    }
    #[inline(always)]
    fn source_hash(&self, vip: &VipMeta) -> u32 {
        flow_hash(
            self.src_addr & vip.src_mask,
            self.dst_addr,
            0,
            self.dst_port,
            self.proto,
        )
    }
    #[inline(always)]
    fn vip(&self) -> Option<VipMeta> {
        classify::lookup_vip(self)
    }
}

/// `src` masked to the VIP's client prefix.
#[inline(always)]
fn masked6(src: &[u32; 4], vip: &VipMeta) -> [u32; 4] {
    let mask = ipv6_prefix_mask(vip.source_prefix);
    [
        src[0] & mask[0],
        src[1] & mask[1],
        src[2] & mask[2],
        src[3] & mask[3],
    ]
}

impl Tuple for Flow6Key {
    type AffinityKey = Affinity6Key;
    #[inline(always)]
    fn pins() -> &'static LruHashMap<Self, FlowPin> {
        &FLOWS6
    }
    #[inline(always)]
    fn affinities() -> &'static LruHashMap<Affinity6Key, AffinityPin> {
        &AFFINITY6
    }
    #[inline(always)]
    fn affinity_key(&self, vip: &VipMeta) -> Affinity6Key {
        Affinity6Key {
            vip_id: vip.vip_id,
            client: masked6(&self.src_addr, vip),
        }
    }
    #[inline(always)]
    fn hash(&self) -> u32 {
        flow_hash6(
            &self.src_addr,
            &self.dst_addr,
            self.src_port,
            self.dst_port,
            self.proto,
        )
    }
    #[inline(always)]
    fn source_hash(&self, vip: &VipMeta) -> u32 {
        flow_hash6(
            &masked6(&self.src_addr, vip),
            &self.dst_addr,
            0,
            self.dst_port,
            self.proto,
        )
    }
    #[inline(always)]
    fn vip(&self) -> Option<VipMeta> {
        classify::lookup_vip6(self)
    }
}

pub struct Selected {
    pub backend_id: u32,
    pub backend: Backend,
    /// Chosen for a new flow rather than found in the connection table.
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

/// Backend flags that make an established flow's packets do more than a
/// lookup (least-conn counts, affinity refreshes).
const TRACKED: u32 = BACKEND_F_COUNT_CONNS | BACKEND_F_AFFINITY;

/// Looks the flow up in the connection table. Needs no VIP lookup: a pin
/// only exists for VIP flows, and the backend it names carries its VIP id
/// and stops being active when it leaves its VIP (or the VIP goes).
/// `closing`: the packet is the client's FIN or RST.
#[inline(always)]
pub fn pinned<T: Tuple>(flow: &T, closing: bool) -> Pinned {
    let Some(pin) = T::pins().get_ptr_mut(flow) else {
        return Pinned::Miss;
    };
    // SAFETY: a map value pointer, valid for the program's run; another CPU
    // may write the same pin, which at worst repeats a refresh.
    let pin = unsafe { &mut *pin };
    let Some(backend) = live_backend(pin.backend_id, pin.generation) else {
        return Pinned::Stale;
    };
    // The client's first FIN or RST marks the pin (any policy: a SYN that
    // reuses the tuple is then a new connection), and closes a least-conn
    // connection's count once.
    let closes = closing && pin.flags & FLOW_F_CLOSED == 0;
    if closes {
        pin.flags |= FLOW_F_CLOSED;
        if backend.flags & BACKEND_F_COUNT_CONNS != 0 {
            add_conns(pin.backend_id, -1);
        }
    }
    if backend.flags & TRACKED != 0 {
        track(flow, pin, &backend, closes);
    }
    Pinned::Hit(Selected {
        backend_id: pin.backend_id,
        backend,
        new_flow: false,
    })
}

/// A SYN's pin, if it still leads to its backend and the connection was
/// not closed: a retransmitted SYN of a VIP whose policy is not a function
/// of the tuple must reach the backend its first copy reached.
#[inline(always)]
pub fn open_pin<T: Tuple>(flow: &T) -> Option<Selected> {
    let pin = unsafe { T::pins().get(flow) }?;
    if pin.flags & FLOW_F_CLOSED != 0 {
        return None;
    }
    let backend = live_backend(pin.backend_id, pin.generation)?;
    Some(Selected {
        backend_id: pin.backend_id,
        backend,
        new_flow: false,
    })
}

/// The backend of id `id` if it is active with generation `generation`.
#[inline(always)]
fn live_backend(id: u32, generation: u32) -> Option<Backend> {
    let backend = BACKENDS.get(id)?;
    (backend.flags & BACKEND_F_ACTIVE != 0 && backend.generation == generation).then_some(*backend)
}

/// An established packet of a least-conn or affinity flow: once per tick
/// (and when the client closes) stamps the pin and refreshes the client's
/// affinity.
#[inline(always)]
fn track<T: Tuple>(flow: &T, pin: &mut FlowPin, backend: &Backend, closes: bool) {
    let now = coarse_now();
    let tick = (now >> FLOW_TICK_SHIFT) as u32;
    if tick == pin.last_seen_tick && !closes {
        return;
    }
    pin.last_seen_tick = tick;
    if backend.flags & BACKEND_F_AFFINITY != 0 {
        // Rare (once a tick per flow): worth a VIP lookup for the mask.
        if let Some(vip) = flow.vip() {
            refresh_affinity(flow, &vip, pin.backend_id, pin.generation, now);
        }
    }
}

/// Picks a backend for a new flow, pins the flow to it and, for least-conn,
/// counts the connection. `None`: the VIP has no backend for new flows.
#[inline(always)]
pub fn new_flow<T: Tuple>(flow: &T, vip: &VipMeta, stats: &mut GlobalStats) -> Option<Selected> {
    let tracked = vip.policy == POLICY_LEAST_CONN || vip.affinity_timeout_s != 0;
    let now = if tracked { coarse_now() } else { 0 };
    let mut selected = None;
    if vip.affinity_timeout_s != 0 {
        selected = affinity_choice(flow, vip, now, stats);
    }
    let selected = match selected {
        Some(selected) => selected,
        None => {
            let selected = policy_choice(flow, vip)?;
            if vip.affinity_timeout_s != 0 {
                let pin = AffinityPin {
                    backend_id: selected.backend_id,
                    generation: selected.backend.generation,
                    last_seen_ns: now,
                };
                let _ = T::affinities().insert(flow.affinity_key(vip), pin, 0);
            }
            selected
        }
    };
    let pin = FlowPin {
        backend_id: selected.backend_id,
        generation: selected.backend.generation,
        last_seen_tick: (now >> FLOW_TICK_SHIFT) as u32,
        flags: 0,
    };
    if T::pins().insert(flow, pin, 0).is_err() {
        stats.flow_pin_errors += 1;
    }
    if vip.policy == POLICY_LEAST_CONN {
        add_conns(selected.backend_id, 1);
    }
    Some(selected)
}

/// The backend of the client's affinity entry, if it is younger than the
/// VIP's timeout and its backend still takes new flows; refreshes it.
#[inline(always)]
fn affinity_choice<T: Tuple>(
    flow: &T,
    vip: &VipMeta,
    now: u64,
    stats: &mut GlobalStats,
) -> Option<Selected> {
    let entry = T::affinities().get_ptr_mut(flow.affinity_key(vip))?;
    // SAFETY: a map value pointer, valid for the program's run.
    let entry = unsafe { &mut *entry };
    if now.wrapping_sub(entry.last_seen_ns) > vip.affinity_timeout_s as u64 * 1_000_000_000 {
        stats.affinity_expired += 1;
        return None;
    }
    let backend = live_backend(entry.backend_id, entry.generation)?;
    if backend.flags & BACKEND_F_DRAINING != 0 || backend.vip_id != vip.vip_id {
        return None;
    }
    entry.last_seen_ns = now;
    stats.affinity_hits += 1;
    Some(Selected {
        backend_id: entry.backend_id,
        backend,
        new_flow: true,
    })
}

/// Refreshes the client's affinity entry from one of its established flows:
/// only if it still names this flow's backend (a newer flow may have moved
/// the client after an expiry), or recreates it if it was evicted.
#[inline(always)]
fn refresh_affinity<T: Tuple>(flow: &T, vip: &VipMeta, backend_id: u32, generation: u32, now: u64) {
    let key = flow.affinity_key(vip);
    let affinities = T::affinities();
    match affinities.get_ptr_mut(&key) {
        Some(entry) => {
            // SAFETY: a map value pointer, valid for the program's run.
            let entry = unsafe { &mut *entry };
            if entry.backend_id == backend_id && entry.generation == generation {
                entry.last_seen_ns = now;
            }
        }
        None => {
            let pin = AffinityPin {
                backend_id,
                generation,
                last_seen_ns: now,
            };
            let _ = affinities.insert(&key, pin, 0);
        }
    }
}

/// The policy's backend for a new flow. `None`: none takes new flows.
#[inline(always)]
fn policy_choice<T: Tuple>(flow: &T, vip: &VipMeta) -> Option<Selected> {
    if vip.ring_size == 0 {
        return None;
    }
    let slot = match vip.policy {
        POLICY_MAGLEV | POLICY_MAGLEV_SOURCE => return ring_choice(flow, vip),
        POLICY_RANDOM => random() % vip.ring_size,
        POLICY_ROUND_ROBIN => {
            let cursor = RR_CURSORS.get_ptr_mut(vip.vip_id)?;
            // SAFETY: this CPU's element, valid for the program's run.
            let cursor = unsafe { &mut *cursor };
            let slot = *cursor % vip.ring_size;
            *cursor = if slot + 1 == vip.ring_size {
                0
            } else {
                slot + 1
            };
            slot
        }
        POLICY_LEAST_CONN => return least_conn(vip),
        _ => return None,
    };
    backend_at(ring_slot(vip.ring_offset.wrapping_add(slot))?)
}

/// The Maglev table's backend for a flow of a `maglev` or `maglev-source`
/// VIP, without pinning it (an ICMP error about a flow must not create
/// one). `None`: the VIP has no backend for new flows, or another policy
/// (its choice is no function of the tuple: only the pin knows it).
#[inline(always)]
pub fn ring_choice<T: Tuple>(flow: &T, vip: &VipMeta) -> Option<Selected> {
    backend_at(maglev_slot(flow, vip)?)
}

/// The backend id in the flow's slot of a `maglev` or `maglev-source`
/// VIP's table (`NO_BACKEND` in an empty table). `None`: another policy,
/// or no table.
#[inline(always)]
pub fn maglev_slot<T: Tuple>(flow: &T, vip: &VipMeta) -> Option<u32> {
    let hash = match vip.policy {
        POLICY_MAGLEV => flow.hash(),
        POLICY_MAGLEV_SOURCE => flow.source_hash(vip),
        _ => return None,
    };
    if vip.ring_size == 0 {
        return None;
    }
    ring_slot(vip.ring_offset.wrapping_add(hash % vip.ring_size))
}

/// Weighted least connections over the VIP's (backend id, weight) pairs:
/// the backend with the lowest (connections + 1) / weight. The scan starts
/// at a random pair so that ties (an idle VIP) spread.
#[inline(always)]
fn least_conn(vip: &VipMeta) -> Option<Selected> {
    let pairs = vip.ring_size / 2;
    if pairs == 0 || pairs > LEAST_CONN_MAX_BACKENDS {
        return None;
    }
    let start = random() % pairs;
    let mut best_id = NO_BACKEND;
    // The best backend's (connections + 1) and weight.
    let (mut best_load, mut best_weight) = (0u64, 0u64);
    for i in 0..LEAST_CONN_MAX_BACKENDS {
        if i >= pairs {
            break;
        }
        let mut k = start + i;
        if k >= pairs {
            k -= pairs;
        }
        let at = vip.ring_offset.wrapping_add(2 * k);
        let (Some(id), Some(weight)) = (ring_slot(at), ring_slot(at.wrapping_add(1))) else {
            continue;
        };
        let conns = BACKEND_CONNS.get(id).copied().unwrap_or(0).max(0) as u64;
        let load = conns + 1;
        // load / weight < best_load / best_weight, without division.
        if best_id == NO_BACKEND || load * best_weight < best_load * weight as u64 {
            best_id = id;
            best_load = load;
            best_weight = weight as u64;
        }
    }
    backend_at(best_id)
}

/// The slot at `index` of the ring pool.
#[inline(always)]
fn ring_slot(index: u32) -> Option<u32> {
    let entry = RINGS.get(index / RING_SLOTS_PER_ENTRY)?;
    Some(entry[(index % RING_SLOTS_PER_ENTRY) as usize])
}

/// The active backend of id `backend_id` as a new flow's choice.
#[inline(always)]
pub fn backend_at(backend_id: u32) -> Option<Selected> {
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

/// Adds `delta` to a least-conn backend's open connections (atomically:
/// every CPU shares the count; the result is not read, so this is one
/// BPF `lock add`; `core::sync::atomic` has no 64-bit atomics on this
/// target, the intrinsic is what it would lower to).
#[inline(always)]
fn add_conns(backend_id: u32, delta: i64) {
    if let Some(count) = BACKEND_CONNS.get_ptr_mut(backend_id) {
        // SAFETY: an aligned map value pointer, valid for the program's run.
        unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(count, delta) };
    }
}

#[inline(always)]
fn random() -> u32 {
    unsafe { bpf_get_prandom_u32() }
}

#[inline(always)]
fn coarse_now() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}
