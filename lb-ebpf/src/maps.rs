//! The balancer's maps. Names, key and value types come from `lb_common`
//! (see `lb_common::names` for who writes and who reads each one).

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    Global,
};
use lb_common::{
    Affinity6Key, AffinityKey, AffinityPin, Backend, BackendStats, DataPathConfig, Flow6Key,
    FlowKey, FlowPin, GlobalStats, IcmpBucket, Ipv6Wire, RingEntry, Vip6Key, VipAddrInfo, VipKey,
    VipMeta, VipStats, DEFAULT_AFFINITY_ENTRIES, DEFAULT_FLOW_TABLE_ENTRIES, DEFAULT_ICMP_BURST,
    DEFAULT_ICMP_RATE, DEFAULT_RING_POOL_SLOTS, MAX_BACKENDS, MAX_VIPS, RING_SLOTS_PER_ENTRY,
    VIP_FILTER_WORDS,
};

/// Virtual services. Written by the agent, read per packet.
#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS, 0);

/// VIP addresses (wire order) → number of VIPs on the address and its
/// flags. Written by the agent; read only for fragments and ICMP, which
/// carry no port.
#[map]
pub static VIP_ADDRS: HashMap<u32, VipAddrInfo> = HashMap::with_max_entries(MAX_VIPS, 0);

/// IPv6 virtual services. Written by the agent, read per IPv6 packet
/// that passes the address filter.
#[map]
pub static VIPS6: HashMap<Vip6Key, VipMeta> = HashMap::with_max_entries(MAX_VIPS, 0);

/// IPv6 VIP addresses → number of VIPs on the address and its flags.
/// Written by the agent; read only for IPv6 fragments and ICMPv6.
#[map]
pub static VIP6_ADDRS: HashMap<Ipv6Wire, VipAddrInfo> = HashMap::with_max_entries(MAX_VIPS, 0);

/// VIP address filter (see `lb_common::names::VIP_FILTER`). Written by the
/// agent, read per packet before any hash-map lookup.
#[map]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// Maglev rings of all VIPs, one region per VIP (`VipMeta::ring_offset`,
/// `ring_size`). Written by the agent through a shared mapping
/// (`BPF_F_MMAPABLE`: a whole ring is a memcpy, not 65537 syscalls), read
/// per new flow.
#[map]
pub static RINGS: Array<RingEntry> = Array::with_max_entries(
    DEFAULT_RING_POOL_SLOTS / RING_SLOTS_PER_ENTRY,
    BPF_F_MMAPABLE,
);

/// Backends by id. Written by the agent, read per VIP packet.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Connection table. Per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`) so CPUs do not
/// contend on one list lock; a flow stays on one CPU through RSS anyway.
/// Written and read by `balancer`.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowPin> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_ENTRIES, BPF_F_NO_COMMON_LRU);

/// The IPv6 connection table, as `FLOWS` (a separate map so that IPv4
/// flows keep their 16-byte key). Written and read by `balancer`.
#[map]
pub static FLOWS6: LruHashMap<Flow6Key, FlowPin> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_ENTRIES, BPF_F_NO_COMMON_LRU);

/// Outer IPv6 destinations of backends flagged `BACKEND_F_IPV6`, by
/// backend id. Written by the agent, read by `balancer` only for them.
#[map]
pub static BACKEND_ADDRS6: Array<Ipv6Wire> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Each CPU's position in each `round-robin` VIP's schedule, by VIP id.
/// Per-CPU so CPUs never contend on it (see docs/policies.md for what that
/// means for the shares). Written and read by `balancer`; zeroed by the
/// agent when it gives the id to a new VIP.
#[map]
pub static RR_CURSORS: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Open connections of each `least-conn` backend, by backend id. One
/// shared count (not per CPU: the scan must compare totals), changed with
/// atomic adds by `balancer`; the agent reconciles it from the connection
/// table and zeroes an id before reusing it. Signed: a close seen after a
/// reconciliation that already dropped the flow may take it below zero,
/// which the scan reads as zero.
#[map]
pub static BACKEND_CONNS: Array<i64> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Source-IP affinity: (VIP id, masked client address) → the backend of the
/// client's last flow and when it was last seen. Written and read by
/// `balancer`; the agent deletes a VIP's entries when its affinity changes.
#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityPin> =
    LruHashMap::with_max_entries(DEFAULT_AFFINITY_ENTRIES, 0);

/// Source-IP affinity of IPv6 clients, as `AFFINITY`. Written and read
/// by `balancer`; the agent deletes a VIP's entries when its affinity
/// changes.
#[map]
pub static AFFINITY6: LruHashMap<Affinity6Key, AffinityPin> =
    LruHashMap::with_max_entries(DEFAULT_AFFINITY_ENTRIES, 0);

/// Per-VIP counters by VIP id. Written by `balancer`, read by the agent
/// (which zeroes an id before reusing it).
#[map]
pub static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Per-backend counters by backend id. Written by `balancer`, read by the
/// agent (which zeroes an id before reusing it).
#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Global counters at index 0. Written by `balancer`, read by the agent.
#[map]
pub static GLOBAL_STATS: PerCpuArray<GlobalStats> = PerCpuArray::with_max_entries(1, 0);

/// Each CPU's ICMP token bucket (index 0). Written and read by `balancer`
/// only; not pinned: a new program starts with full buckets.
#[map]
pub static ICMP_RATE: PerCpuArray<IcmpBucket> = PerCpuArray::with_max_entries(1, 0);

/// Reads one field of [`CONFIG`], volatile as `Global::load` reads the
/// whole (the loader rewrites the value, which the compiler must not
/// fold). One field at a time: a whole copy would take 64 bytes of the
/// program's 512-byte stack.
#[macro_export]
macro_rules! config {
    ($field:ident) => {
        // SAFETY: `Global` is `repr(transparent)` over the value, which the
        // loader always initialises.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                (*(core::ptr::addr_of!($crate::maps::CONFIG) as *const lb_common::DataPathConfig))
                    .$field
            ))
        }
    };
}

/// `balancer6` at `PROGRAM_IPV6`, tail-called by `balancer` for IPv6
/// packets (see `lb_common::names::PROGRAMS`). Written by the loader.
#[map]
pub static PROGRAMS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// An IPv4 packet's way to an IPv6 backend, from `balancer` to the
/// `balancer6` it tail-calls (see `balancer::hand_over_to_ipv6`).
#[derive(Clone, Copy)]
pub struct Handoff {
    pub out: crate::balancer::Outbound,
    /// Written with `out` just before the tail call, cleared by its reader.
    pub valid: u32,
}

/// This CPU's [`Handoff`]. Written by `balancer`, read by `balancer6`, for
/// one packet at a time; not pinned (an empty slot is what a new program
/// starts with).
#[map]
pub static HANDOFF: PerCpuArray<Handoff> = PerCpuArray::with_max_entries(1, 0);

/// Load-time configuration, set by the agent before the program is loaded.
#[no_mangle]
pub static CONFIG: Global<DataPathConfig> = Global::new(DataPathConfig {
    lb_source_addr: 0,
    next_hop_mode: 0,
    static_src_mac: [0; 6],
    static_dst_mac: [0; 6],
    static_mtu: 1500,
    icmp_rate: DEFAULT_ICMP_RATE,
    icmp_burst: DEFAULT_ICMP_BURST,
    lb_source_addr6: [0; 4],
});
