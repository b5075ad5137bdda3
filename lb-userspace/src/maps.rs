//! Typed access to the balancer's BPF maps: the only place that knows map
//! names and value types on the userspace side.

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};

use crate::batch::{self, BatchMap};
use lb_common::{
    names, Affinity6Key, AffinityKey, AffinityPin, Backend, BackendStats, Flow6Key, FlowKey,
    FlowPin, GlobalStats, Ipv6Wire, Vip6Key, VipAddrInfo, VipKey, VipMeta, VipStats,
    RING_SLOTS_PER_ENTRY,
};

/// A key of either VIP map: IPv4 VIPs live in `VIPS`, IPv6 ones in `VIPS6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyVipKey {
    V4(VipKey),
    V6(Vip6Key),
}

/// A VIP address of either family, wire order (`VIP_ADDRS` or `VIP6_ADDRS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyVipAddr {
    V4(u32),
    V6(Ipv6Wire),
}

/// A key of either connection table: IPv4 flows live in `FLOWS`, IPv6
/// ones in `FLOWS6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyFlowKey {
    V4(FlowKey),
    V6(Flow6Key),
}

/// An address family: which of a pair of per-family maps (`AFFINITY` or
/// `AFFINITY6`, `FLOWS` or `FLOWS6`) an operation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: std::net::IpAddr) -> Self {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// The balancer's maps, taken out of a loaded [`Ebpf`].
pub struct BalancerMaps {
    vips: HashMap<MapData, VipKey, VipMeta>,
    vips6: HashMap<MapData, Vip6Key, VipMeta>,
    vip_addrs: HashMap<MapData, u32, VipAddrInfo>,
    vip6_addrs: HashMap<MapData, Ipv6Wire, VipAddrInfo>,
    vip_filter: Array<MapData, u64>,
    rings: RingPool,
    backends: Array<MapData, Backend>,
    backend_addrs6: Array<MapData, Ipv6Wire>,
    flows: Flows<FlowKey>,
    flows6: Flows<Flow6Key>,
    counters: Counters,
    /// Policy state the data path keeps (see `lb_common::names`).
    rr_cursors: PerCpuArray<MapData, u32>,
    backend_conns: Array<MapData, i64>,
    affinity: HashMap<MapData, AffinityKey, AffinityPin>,
    affinity6: HashMap<MapData, Affinity6Key, AffinityPin>,
}

/// One connection table (`FLOWS` or `FLOWS6`): a handle for single-entry
/// operations and one of its own for batch walks and deletes.
struct Flows<K> {
    map: HashMap<MapData, K, FlowPin>,
    batch: BatchMap<K, FlowPin>,
}

impl<K: aya::Pod + Default> Flows<K> {
    fn take_from(ebpf: &mut Ebpf, name: &str) -> Result<Self> {
        let map: HashMap<MapData, K, FlowPin> = take(ebpf, name)?;
        let batch = duplicate_flow_table(&map)?;
        Ok(Self { map, batch })
    }

    fn pin(&self, key: &K) -> Result<Option<FlowPin>> {
        flow_pin(&self.map, key)
    }

    fn for_each(&self, mut f: impl FnMut(&K, &FlowPin)) -> Result<u64> {
        match self.batch.for_each(&mut f) {
            Err(e) if batch::unsupported(&e) => {
                log::debug!("connection table: no batch lookups ({e}), walking entry by entry");
                let mut n = 0;
                for (key, pin) in self.matching_per_entry(|_| true) {
                    f(&key, &pin);
                    n += 1;
                }
                Ok(n)
            }
            r => r.context("walking the connection table"),
        }
    }

    fn remove(&mut self, keys: &[K]) -> Result<u64> {
        match self.batch.delete(keys) {
            Err(e) if batch::unsupported(&e) => Ok(self.remove_per_entry(keys)),
            r => r.context("deleting connection-table entries"),
        }
    }

    fn matching_per_entry(&self, filter: impl Fn(&K) -> bool) -> Vec<(K, FlowPin)> {
        self.map
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(key, _)| filter(key))
            .collect()
    }

    fn remove_per_entry(&mut self, keys: &[K]) -> u64 {
        keys.iter()
            .filter(|key| self.map.remove(key).is_ok())
            .count() as u64
    }
}

/// The data path's counters: per VIP id, per backend id, and global.
pub struct Counters {
    vip_stats: PerCpuArray<MapData, VipStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    global_stats: PerCpuArray<MapData, GlobalStats>,
}

/// The maps a trace instance of `balancer` has to itself (see
/// [`crate::trace`]): scratch connection tables of both families and its
/// own counters. Its other maps are the live ones it only reads, or its
/// own, unpinned and never read here (policy state, `HANDOFF`, `PROGRAMS`).
pub struct TraceMaps {
    flows: HashMap<MapData, FlowKey, FlowPin>,
    flows6: HashMap<MapData, Flow6Key, FlowPin>,
    counters: Counters,
}

impl TraceMaps {
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            flows: take(ebpf, names::FLOWS)?,
            flows6: take(ebpf, names::FLOWS6)?,
            counters: Counters::take_from(ebpf)?,
        })
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    pub fn flow_pin(&self, key: &AnyFlowKey) -> Result<Option<FlowPin>> {
        match key {
            AnyFlowKey::V4(key) => flow_pin(&self.flows, key),
            AnyFlowKey::V6(key) => flow_pin(&self.flows6, key),
        }
    }

    pub fn set_flow(&mut self, key: &AnyFlowKey, pin: &FlowPin) -> Result<()> {
        match key {
            AnyFlowKey::V4(key) => self.flows.insert(key, pin, 0),
            AnyFlowKey::V6(key) => self.flows6.insert(key, pin, 0),
        }
        .context("writing the scratch connection table")
    }

    /// Empties both scratch connection tables, so that one trace never
    /// sees another's flows.
    pub fn clear_flows(&mut self) -> Result<()> {
        remove_matching(&mut self.flows, |_| true)
            .map(drop)
            .context("clearing the scratch connection table")?;
        remove_matching(&mut self.flows6, |_| true)
            .map(drop)
            .context("clearing the scratch IPv6 connection table")
    }
}

fn flow_pin<K: aya::Pod>(flows: &HashMap<MapData, K, FlowPin>, key: &K) -> Result<Option<FlowPin>> {
    match flows.get(key, 0) {
        Ok(pin) => Ok(Some(pin)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e).context("reading the connection table"),
    }
}

impl Counters {
    fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            vip_stats: take(ebpf, names::VIP_STATS)?,
            backend_stats: take(ebpf, names::BACKEND_STATS)?,
            global_stats: take(ebpf, names::GLOBAL_STATS)?,
        })
    }

    pub fn global(&self) -> Result<GlobalStats> {
        let per_cpu = self.global_stats.get(&0, 0)?;
        Ok(per_cpu
            .iter()
            .fold(GlobalStats::default(), |acc, s| acc.sum(s)))
    }

    pub fn vip(&self, vip_id: u32) -> Result<VipStats> {
        let per_cpu = self.vip_stats.get(&vip_id, 0)?;
        Ok(per_cpu.iter().fold(VipStats::default(), |acc, s| VipStats {
            packets: acc.packets + s.packets,
            bytes: acc.bytes + s.bytes,
            new_flows: acc.new_flows + s.new_flows,
        }))
    }

    /// Zeroes the global counters on every CPU.
    pub fn zero_global(&mut self) -> Result<()> {
        zero_per_cpu(&mut self.global_stats, 0).context("zeroing the global counters")
    }

    /// Zeroes a VIP id's counters on every CPU.
    pub fn zero_vip(&mut self, vip_id: u32) -> Result<()> {
        zero_per_cpu(&mut self.vip_stats, vip_id)
            .with_context(|| format!("zeroing the counters of VIP id {vip_id}"))
    }

    /// Zeroes a backend id's counters on every CPU.
    pub fn zero_backend(&mut self, backend_id: u32) -> Result<()> {
        zero_per_cpu(&mut self.backend_stats, backend_id)
            .with_context(|| format!("zeroing the counters of backend id {backend_id}"))
    }

    pub fn backend(&self, backend_id: u32) -> Result<BackendStats> {
        let per_cpu = self.backend_stats.get(&backend_id, 0)?;
        Ok(per_cpu
            .iter()
            .fold(BackendStats::default(), |acc, s| BackendStats {
                packets: acc.packets + s.packets,
                bytes: acc.bytes + s.bytes,
            }))
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("the balancer object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl BalancerMaps {
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            vips: take(ebpf, names::VIPS)?,
            vips6: take(ebpf, names::VIPS6)?,
            vip_addrs: take(ebpf, names::VIP_ADDRS)?,
            vip6_addrs: take(ebpf, names::VIP6_ADDRS)?,
            vip_filter: take(ebpf, names::VIP_FILTER)?,
            rings: RingPool::take_from(ebpf)?,
            backends: take(ebpf, names::BACKENDS)?,
            backend_addrs6: take(ebpf, names::BACKEND_ADDRS6)?,
            flows: Flows::take_from(ebpf, names::FLOWS)?,
            flows6: Flows::take_from(ebpf, names::FLOWS6)?,
            counters: Counters::take_from(ebpf)?,
            rr_cursors: take(ebpf, names::RR_CURSORS)?,
            backend_conns: take(ebpf, names::BACKEND_CONNS)?,
            affinity: take(ebpf, names::AFFINITY)?,
            affinity6: take(ebpf, names::AFFINITY6)?,
        })
    }

    /// Puts every CPU's round-robin cursor of a VIP id back to the start,
    /// before the id is given to a new VIP.
    pub fn reset_rr_cursor(&mut self, vip_id: u32) -> Result<()> {
        zero_per_cpu(&mut self.rr_cursors, vip_id)
            .with_context(|| format!("zeroing the round-robin cursor of VIP id {vip_id}"))
    }

    /// A least-conn backend's open connections as the data path counts them.
    pub fn backend_conns(&self, backend_id: u32) -> Result<i64> {
        self.backend_conns
            .get(&backend_id, 0)
            .with_context(|| format!("reading the connection count of backend id {backend_id}"))
    }

    /// Replaces a backend's open-connection count (zero before the id is
    /// reused; the reconciled count from the connection table).
    pub fn set_backend_conns(&mut self, backend_id: u32, conns: i64) -> Result<()> {
        self.backend_conns
            .set(backend_id, conns, 0)
            .with_context(|| format!("writing the connection count of backend id {backend_id}"))
    }

    /// A client's affinity entry, if any.
    pub fn affinity(&self, key: &AffinityKey) -> Result<Option<AffinityPin>> {
        match self.affinity.get(key, 0) {
            Ok(pin) => Ok(Some(pin)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading the affinity table"),
        }
    }

    /// Writes a client's affinity entry (tests age one this way).
    pub fn set_affinity(&mut self, key: &AffinityKey, pin: &AffinityPin) -> Result<()> {
        self.affinity
            .insert(key, pin, 0)
            .context("writing the affinity table")
    }

    /// An IPv6 client's affinity entry, if any.
    pub fn affinity6(&self, key: &Affinity6Key) -> Result<Option<AffinityPin>> {
        match self.affinity6.get(key, 0) {
            Ok(pin) => Ok(Some(pin)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading the IPv6 affinity table"),
        }
    }

    /// Deletes every affinity entry of a VIP id (its affinity was turned
    /// off or changed, or the id goes to a new VIP) from the table of the
    /// VIP's family (its clients are of its family); returns how many.
    pub fn clear_affinity(&mut self, vip_id: u32, family: Family) -> Result<usize> {
        match family {
            Family::V4 => remove_matching(&mut self.affinity, |k| k.vip_id == vip_id),
            Family::V6 => remove_matching(&mut self.affinity6, |k| k.vip_id == vip_id),
        }
        .context("clearing the affinity table")
    }

    /// Number of slots in the ring pool.
    pub fn ring_pool_slots(&self) -> u32 {
        self.rings.slots.len() as u32
    }

    /// Copies `ring` into the pool at `offset`. Callers write regions no VIP
    /// points at yet, then switch the VIP with [`Self::set_vip`]; the map
    /// update syscall orders the copy before the switch.
    pub fn write_ring(&mut self, offset: u32, ring: &[u32]) -> Result<()> {
        let start = offset as usize;
        let end = start
            .checked_add(ring.len())
            .filter(|&end| end <= self.rings.slots.len())
            .ok_or_else(|| {
                anyhow!(
                    "ring of {} slots at {offset} is outside the pool",
                    ring.len()
                )
            })?;
        self.rings.slots_mut()[start..end].copy_from_slice(ring);
        Ok(())
    }

    /// A region of the ring pool as the data path sees it.
    pub fn ring_region(&self, offset: u32, len: u32) -> Option<&[u32]> {
        self.rings
            .slots
            .get(offset as usize..offset as usize + len as usize)
    }

    /// Every VIP in both maps (adopting pinned maps).
    pub fn vip_entries(&self) -> Result<Vec<(AnyVipKey, VipMeta)>> {
        let v4 = self
            .vips
            .iter()
            .map(|e| e.map(|(k, m)| (AnyVipKey::V4(k), m)));
        let v6 = self
            .vips6
            .iter()
            .map(|e| e.map(|(k, m)| (AnyVipKey::V6(k), m)));
        v4.chain(v6)
            .map(|e| e.context("reading the VIP map"))
            .collect()
    }

    /// The outer IPv6 destination of backend id `id` (meaningful while its
    /// `Backend` has `BACKEND_F_IPV6`).
    pub fn backend_addr6(&self, id: u32) -> Result<Ipv6Wire> {
        self.backend_addrs6
            .get(&id, 0)
            .with_context(|| format!("reading the IPv6 address of backend {id}"))
    }

    /// Writes backend id `id`'s outer IPv6 destination: before the
    /// `Backend` entry that makes the data path read it.
    pub fn set_backend_addr6(&mut self, id: u32, addr: &Ipv6Wire) -> Result<()> {
        self.backend_addrs6
            .set(id, *addr, 0)
            .with_context(|| format!("writing the IPv6 address of backend {id}"))
    }

    /// Every backend slot, used or not (adopting pinned maps).
    pub fn backend_entries(&self) -> Result<Vec<(u32, Backend)>> {
        (0..self.backends.len())
            .map(|id| {
                Ok((
                    id,
                    self.backends
                        .get(&id, 0)
                        .with_context(|| format!("reading backend {id}"))?,
                ))
            })
            .collect()
    }

    /// The backend id in one pool slot (what the data path reads).
    pub fn ring_slot(&self, slot: u32) -> Option<u32> {
        self.rings.slots.get(slot as usize).copied()
    }

    /// Inserts or replaces a VIP: one map update, so packets see either the
    /// old metadata (and ring) or the new one.
    pub fn set_vip(&mut self, key: &AnyVipKey, meta: &VipMeta) -> Result<()> {
        match key {
            AnyVipKey::V4(k) => self.vips.insert(k, meta, 0),
            AnyVipKey::V6(k) => self.vips6.insert(k, meta, 0),
        }
        .with_context(|| format!("writing VIP {key:?}"))
    }

    pub fn remove_vip(&mut self, key: &AnyVipKey) -> Result<()> {
        match key {
            AnyVipKey::V4(k) => self.vips.remove(k),
            AnyVipKey::V6(k) => self.vips6.remove(k),
        }
        .with_context(|| format!("removing VIP {key:?}"))
    }

    /// Records how many VIPs live on `addr` and the address's flags (no
    /// VIPs removes the address).
    pub fn set_vip_address(&mut self, addr: AnyVipAddr, info: VipAddrInfo) -> Result<()> {
        let result = match (addr, info.vips) {
            (AnyVipAddr::V4(a), 0) => self.vip_addrs.remove(&a),
            (AnyVipAddr::V6(a), 0) => self.vip6_addrs.remove(&a),
            (AnyVipAddr::V4(a), _) => self.vip_addrs.insert(a, info, 0),
            (AnyVipAddr::V6(a), _) => self.vip6_addrs.insert(a, info, 0),
        };
        match result {
            // Removing an address that was never written (a VIP whose
            // first write failed) leaves what was wanted.
            Err(aya::maps::MapError::KeyNotFound) if info.vips == 0 => Ok(()),
            r => r.with_context(|| format!("writing VIP address {addr:?}")),
        }
    }

    /// What the data path knows of VIP address `addr` (wire order).
    pub fn vip_address(&self, addr: AnyVipAddr) -> Result<Option<VipAddrInfo>> {
        let result = match addr {
            AnyVipAddr::V4(a) => self.vip_addrs.get(&a, 0),
            AnyVipAddr::V6(a) => self.vip6_addrs.get(&a, 0),
        };
        match result {
            Ok(info) => Ok(Some(info)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading VIP address"),
        }
    }

    /// Replaces one 64-bit word of the VIP address filter.
    pub fn set_vip_filter_word(&mut self, word: u32, bits: u64) -> Result<()> {
        self.vip_filter
            .set(word, bits, 0)
            .with_context(|| format!("writing VIP filter word {word}"))
    }

    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.backends
            .set(id, backend, 0)
            .with_context(|| format!("writing backend {id}"))
    }

    pub fn backend(&self, id: u32) -> Result<Backend> {
        Ok(self.backends.get(&id, 0)?)
    }

    /// The connection table's pin for a flow, if any.
    pub fn flow_pin(&self, key: &FlowKey) -> Result<Option<FlowPin>> {
        self.flows.pin(key)
    }

    /// The IPv6 connection table's pin for a flow, if any.
    pub fn flow6_pin(&self, key: &Flow6Key) -> Result<Option<FlowPin>> {
        self.flows6.pin(key)
    }

    /// The pin for a flow of either family, from its family's table.
    pub fn any_flow_pin(&self, key: &AnyFlowKey) -> Result<Option<FlowPin>> {
        match key {
            AnyFlowKey::V4(key) => self.flow_pin(key),
            AnyFlowKey::V6(key) => self.flow6_pin(key),
        }
    }

    /// Handles of their own on both connection tables, for a reader that
    /// must not wait for whoever holds these maps (the metrics endpoint).
    pub fn flow_tables(&self) -> Result<FlowTables> {
        Ok(FlowTables {
            v4: duplicate_flow_table(&self.flows.map)?,
            v6: duplicate_flow_table(&self.flows6.map)?,
        })
    }

    /// A handle of its own on the IPv4 connection table (tests and the
    /// benchmark fill it).
    pub fn flow_table(&self) -> Result<FlowTable> {
        duplicate_flow_table(&self.flows.map)
    }

    /// Calls `f` on every connection-table entry; returns how many there
    /// were. Batch lookups (thousands of entries per syscall), or, on a
    /// kernel without them, two syscalls per entry.
    pub fn for_each_flow(&self, f: impl FnMut(&FlowKey, &FlowPin)) -> Result<u64> {
        self.flows.for_each(f)
    }

    /// [`Self::for_each_flow`] over the IPv6 connection table.
    pub fn for_each_flow6(&self, f: impl FnMut(&Flow6Key, &FlowPin)) -> Result<u64> {
        self.flows6.for_each(f)
    }

    /// Calls `f` on the pin of every entry of both connection tables.
    pub fn for_each_pin(&self, mut f: impl FnMut(&FlowPin)) -> Result<u64> {
        Ok(self.flows.for_each(|_, pin| f(pin))? + self.flows6.for_each(|_, pin| f(pin))?)
    }

    /// Every entry of the connection table whose key matches `filter`.
    pub fn flows_matching(
        &self,
        filter: impl Fn(&FlowKey) -> bool,
    ) -> Result<Vec<(FlowKey, FlowPin)>> {
        let mut out = Vec::new();
        self.for_each_flow(|key, pin| {
            if filter(key) {
                out.push((*key, *pin));
            }
        })?;
        Ok(out)
    }

    /// Deletes connection-table entries; returns how many were deleted
    /// (entries evicted meanwhile are not counted). Batch deletes, or one
    /// syscall per entry on a kernel without them.
    pub fn remove_flows(&mut self, keys: &[FlowKey]) -> Result<u64> {
        self.flows.remove(keys)
    }

    /// [`Self::remove_flows`] in the IPv6 connection table.
    pub fn remove_flows6(&mut self, keys: &[Flow6Key]) -> Result<u64> {
        self.flows6.remove(keys)
    }

    /// [`Self::flows_matching`] the old way, two syscalls per entry: the
    /// fallback for kernels before 5.6, and the benchmark's reference.
    pub fn flows_matching_per_entry(
        &self,
        filter: impl Fn(&FlowKey) -> bool,
    ) -> Vec<(FlowKey, FlowPin)> {
        self.flows.matching_per_entry(filter)
    }

    /// [`Self::remove_flows`] the old way, one syscall per entry.
    pub fn remove_flows_per_entry(&mut self, keys: &[FlowKey]) -> u64 {
        self.flows.remove_per_entry(keys)
    }

    pub fn global_stats(&self) -> Result<GlobalStats> {
        self.counters.global()
    }

    pub fn vip_stats(&self, vip_id: u32) -> Result<VipStats> {
        self.counters.vip(vip_id)
    }

    /// Zeroes a VIP id's counters on every CPU, before the id is given to
    /// a new VIP.
    pub fn reset_vip_stats(&mut self, vip_id: u32) -> Result<()> {
        self.counters.zero_vip(vip_id)
    }

    /// Zeroes a backend id's counters on every CPU, before the id is given
    /// to a new backend.
    pub fn reset_backend_stats(&mut self, backend_id: u32) -> Result<()> {
        self.counters.zero_backend(backend_id)
    }

    pub fn backend_stats(&self, backend_id: u32) -> Result<BackendStats> {
        self.counters.backend(backend_id)
    }
}

/// The connection table with batch operations (see [`crate::batch`]).
pub type FlowTable = BatchMap<FlowKey, FlowPin>;
/// The IPv6 connection table with batch operations.
pub type FlowTable6 = BatchMap<Flow6Key, FlowPin>;

/// Both connection tables, for a reader of their occupancy.
pub struct FlowTables {
    pub v4: FlowTable,
    pub v6: FlowTable6,
}

/// Deletes the entries of `map` whose key matches `filter`; returns how
/// many. Entries gone meanwhile are skipped.
fn remove_matching<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    filter: impl Fn(&K) -> bool,
) -> Result<usize, aya::maps::MapError> {
    let keys: Vec<K> = map.keys().filter_map(|k| k.ok()).filter(filter).collect();
    let mut removed = 0;
    for key in keys {
        match map.remove(&key) {
            Ok(()) => removed += 1,
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

fn duplicate_flow_table<K: aya::Pod + Default>(
    flows: &HashMap<MapData, K, FlowPin>,
) -> Result<BatchMap<K, FlowPin>> {
    let fd = std::os::fd::AsFd::as_fd(flows.map().fd())
        .try_clone_to_owned()
        .context("duplicating the connection table's fd")?;
    let map = MapData::from_fd(fd).context("opening the connection table")?;
    BatchMap::new(map).context("the connection table")
}

/// The `RINGS` array mapped into our address space.
struct RingPool {
    _map: MapData,
    slots: &'static [u32],
    mapping: *mut libc::c_void,
    mapping_len: usize,
}

// SAFETY: the mapping is owned by the pool and only mutated through &mut self.
unsafe impl Send for RingPool {}
unsafe impl Sync for RingPool {}

impl RingPool {
    fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map(names::RINGS)
            .ok_or_else(|| anyhow!("the balancer object has no map {}", names::RINGS))?;
        let aya::maps::Map::Array(map) = map else {
            return Err(anyhow!("map {} is not an array", names::RINGS));
        };
        let info = map.info().context("reading RINGS map info")?;
        // Elements are exactly 8 bytes (two u32 slots), so the mapping is a
        // dense array of slots.
        let slots = info.max_entries() as usize * RING_SLOTS_PER_ENTRY as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mapping_len = (slots * 4).div_ceil(page) * page;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(map.fd()));
        // SAFETY: a shared mapping of an mmapable BPF array; the kernel
        // checks the length against the map's size.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapping_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if mapping == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the RINGS array");
        }
        // SAFETY: the mapping holds `slots` u32s and lives as long as self.
        let slots = unsafe { std::slice::from_raw_parts(mapping as *const u32, slots) };
        Ok(Self {
            _map: map,
            slots,
            mapping,
            mapping_len,
        })
    }

    fn slots_mut(&mut self) -> &mut [u32] {
        // SAFETY: same mapping as `slots`, writable, borrowed mutably via self.
        unsafe { std::slice::from_raw_parts_mut(self.mapping as *mut u32, self.slots.len()) }
    }
}

impl Drop for RingPool {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what take_from mapped.
        unsafe { libc::munmap(self.mapping, self.mapping_len) };
    }
}

/// Number of possible CPUs: the length of a per-CPU map value.
fn nr_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))
}

/// Writes `T::default()` for every CPU at `index`.
fn zero_per_cpu<T: aya::Pod + Default>(
    map: &mut PerCpuArray<MapData, T>,
    index: u32,
) -> Result<()> {
    let zeros = PerCpuValues::try_from(vec![T::default(); nr_cpus()?])?;
    map.set(index, zeros, 0)?;
    Ok(())
}
