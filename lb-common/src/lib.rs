//! Types and constants shared by the XDP data path (`lb-ebpf`) and the
//! userspace agent (`lb-userspace`).
//!
//! Everything here is `#[repr(C)]` and has the same layout on both sides.
//! Addresses and ports are kept in **network byte order, exactly as they
//! appear in the packet**, so the data path never swaps bytes; userspace
//! converts with [`ipv4_to_wire`] and [`port_to_wire`].
#![no_std]

mod hash;
pub use hash::{flow_hash, flow_hash6, fold_ipv6, jhash_3words, FLOW_HASH_SEED};

/// IP protocol numbers the balancer understands.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_ICMP: u8 = 1;
/// IPv6 in IP (IP6IP6 over IPv6, "6in4" over IPv4), and IPv6's next-header
/// numbers the balancer walks or acts on.
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPV6_EXT_HOP_BY_HOP: u8 = 0;
pub const IPV6_EXT_ROUTING: u8 = 43;
pub const IPV6_EXT_FRAGMENT: u8 = 44;
pub const IPV6_EXT_DEST_OPTS: u8 = 60;
/// Most IPv6 extension headers the balancer walks before the transport
/// header: a packet with more is not classified (it passes untouched).
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

/// An IPv6 address as the maps hold it: four 32-bit words in memory
/// (wire) order, as read from the packet.
pub type Ipv6Wire = [u32; 4];

/// Size of the outer IPv6 header that IP6IP6 and IPv4-in-IPv6 add.
pub const IPV6_OVERHEAD: u16 = 40;
/// Hop limit of an outer IPv6 header.
pub const OUTER_HOP_LIMIT: u8 = 64;
/// The flow label (low 20 bits) of an outer IPv6 header, from the flow
/// hash: routers (ECMP) and the backend's NIC (RSS) spread tunnels by it,
/// every packet of one flow keeps one label.
#[inline(always)]
pub const fn outer_flow_label(flow_hash: u32) -> u32 {
    (flow_hash ^ (flow_hash >> 20)) & 0x000f_ffff
}

/// Size of the outer IPv4 header that IP-in-IP encapsulation adds.
pub const IPIP_OVERHEAD: u16 = 20;
/// What GUE encapsulation adds: an outer IPv4 header and a UDP header,
/// with the client's IP packet right after it (GUE variant 1, "direct IP
/// encapsulation": no GUE header, the inner IP version nibble tells the
/// family, which is what Linux's `fou`/`gue` receive path accepts).
pub const GUE_OVERHEAD: u16 = 20 + 8;
/// What GUE over IPv6 adds: an outer IPv6 header and the UDP header.
pub const GUE6_OVERHEAD: u16 = 40 + 8;
/// TTL of the outer header.
pub const OUTER_TTL: u8 = 64;
/// Outer UDP destination port of a GUE VIP unless its config names one.
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// How many GUE ports one `decap` program strips (`DECAP_GUE_PORTS`).
pub const MAX_DECAP_GUE_PORTS: u32 = 16;

/// The outer UDP source port (host order) of a GUE packet of a flow with
/// this `flow_hash`: in the dynamic range 49152-65535, so that the
/// backend's NIC (RSS) and the routers (ECMP) spread tunnels over their
/// queues and paths the way they spread the flows themselves, while every
/// packet of one flow keeps one outer 5-tuple (no reordering).
#[inline(always)]
pub const fn gue_source_port(flow_hash: u32) -> u16 {
    0xc000 | ((flow_hash ^ (flow_hash >> 16)) as u16 & 0x3fff)
}

/// Index of `balancer6` in the `PROGRAMS` program array.
pub const PROGRAM_IPV6: u32 = 0;

/// Capacity of the VIP map and of the per-VIP counters (VIP ids are `0..MAX_VIPS`).
pub const MAX_VIPS: u32 = 512;
/// Capacity of the backend array (backend ids are `0..MAX_BACKENDS`).
pub const MAX_BACKENDS: u32 = 4096;
/// Default number of slots in the ring pool: room for 64 VIPs with a
/// 65537-slot table, or fewer while a table is being swapped (the new table is
/// written next to the old one). The agent can size it at load time.
pub const DEFAULT_RING_POOL_SLOTS: u32 = 64 * 65537;
/// Default capacity of the connection table (entries, shared by all CPUs).
pub const DEFAULT_FLOW_TABLE_ENTRIES: u32 = 1 << 20;
/// Capacity of the decap program's address set.
pub const MAX_DECAP_ADDRS: u32 = 64;

/// Words (64 bits each) of the VIP address filter: 65536 bits.
pub const VIP_FILTER_WORDS: u32 = 1024;

/// Where an address (wire order) sits in the VIP address filter: (word,
/// bit). A multiplicative hash: a couple of instructions per packet.
#[inline(always)]
pub const fn vip_filter_position(addr: u32) -> (u32, u32) {
    let h = addr.wrapping_mul(0x9e37_79b1) >> 16;
    (h >> 6, h & 63)
}

/// Slots of the benchmark's direct-indexed VIP table (the "ring first"
/// experiment of `cargo xtask bench`: `BENCH_VIP_KEYS` and
/// `BENCH_VIP_METAS` in the bench object, written by `lb-bench`, read by
/// `bench_ring_first_indexed`). Not used by the agent.
pub const BENCH_VIP_SLOTS: u32 = 256;
/// Slots a VIP may sit past its first one in that table (linear probing).
pub const BENCH_VIP_PROBES: u32 = 4;

/// The first slot of a VIP in the benchmark's direct-indexed VIP table: a
/// multiplicative hash of the address, port and protocol.
#[inline(always)]
pub const fn bench_vip_slot(key: &VipKey) -> u32 {
    let word = key.addr ^ ((key.port as u32) << 16) ^ key.proto as u32;
    (word.wrapping_mul(0x9e37_79b1) >> 24) % BENCH_VIP_SLOTS
}

/// Ring slots per element of the `RINGS` array. BPF arrays round every
/// element up to 8 bytes; packing two 4-byte slots per element keeps the
/// pool dense, so the agent can write a whole ring with one memcpy into the
/// shared mapping.
pub const RING_SLOTS_PER_ENTRY: u32 = 2;
/// One element of the `RINGS` array.
pub type RingEntry = [u32; RING_SLOTS_PER_ENTRY as usize];

/// Position of an IPv6 address (wire order) in the VIP address filter: the
/// same filter as IPv4's, indexed by the folded address.
#[inline(always)]
pub const fn vip6_filter_position(addr: &Ipv6Wire) -> (u32, u32) {
    vip_filter_position(fold_ipv6(addr))
}

/// Ring slot value meaning "no backend takes new flows for this VIP".
pub const NO_BACKEND: u32 = u32::MAX;

/// BPF map and global names, the contract between the object file and the loader.
pub mod names {
    /// `VipKey` → `VipMeta`. Written by the agent, read by `balancer`.
    pub const VIPS: &str = "VIPS";
    /// VIP address (`u32`, wire order) → `VipAddrInfo` (how many VIP
    /// entries use it, and the address's `VIP_ADDR_F_*` flags). Written by
    /// the agent, read by `balancer` only for packets it cannot classify by
    /// port (IPv4 fragments, ICMP).
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    /// VIP address filter: word → 64 bits, a bit set for every position a
    /// VIP address hashes to (`vip_filter_position`). Written by the agent,
    /// read by `balancer` for every IPv4 TCP/UDP packet: a clear bit means
    /// "not a VIP", decided with one array read and no hash-map lookup.
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// Ring pool: `RingEntry` (two slots) by slot / 2; a slot holds a backend
    /// id. Written by the agent, read by `balancer`.
    pub const RINGS: &str = "RINGS";
    /// Backend id → `Backend`. Written by the agent, read by `balancer`.
    pub const BACKENDS: &str = "BACKENDS";
    /// `FlowKey` → `FlowPin` (LRU, per-CPU LRU lists). Written by `balancer`,
    /// read by `balancer`; the agent only reads it for summaries and flushes.
    pub const FLOWS: &str = "FLOWS";
    /// Per-CPU `VipStats` by VIP id. Written by `balancer`, read by the agent,
    /// which zeroes an id before giving it to a new VIP.
    pub const VIP_STATS: &str = "VIP_STATS";
    /// Per-CPU `BackendStats` by backend id. Written by `balancer`, read by
    /// the agent, which zeroes an id before giving it to a new backend.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// Per-CPU `GlobalStats` at index 0. Written by `balancer`, read by the agent.
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    /// Per-CPU `u32` by VIP id: the next slot of a `round-robin` VIP's
    /// schedule on this CPU. Written and read by `balancer`; the agent
    /// zeroes an id before giving it to a new VIP.
    pub const RR_CURSORS: &str = "RR_CURSORS";
    /// `i64` by backend id: open connections of a `least-conn` backend.
    /// Shared by all CPUs: `balancer` adds and subtracts atomically; the
    /// agent zeroes an id before reusing it and periodically replaces the
    /// count with what the connection table shows (reconciliation).
    pub const BACKEND_CONNS: &str = "BACKEND_CONNS";
    /// `AffinityKey` → `AffinityPin` (LRU): the backend of a client's last
    /// flow, for VIPs with source-IP affinity. Written and read by
    /// `balancer`; the agent deletes a VIP's entries when its affinity
    /// setting changes.
    pub const AFFINITY: &str = "AFFINITY";
    /// Load-time global `DataPathConfig` of `balancer`.
    pub const CONFIG: &str = "CONFIG";
    /// Decap program: set of local addresses (`u32` wire order → 1) whose
    /// IP-in-IP packets it strips. Written by its loader, read by `decap`.
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    /// Per-CPU `DecapStats` at index 0. Written by `decap`, read by tests and tools.
    pub const DECAP_STATS: &str = "DECAP_STATS";
    /// Decap program: set of UDP destination ports (`u16` wire order → 1)
    /// whose GUE packets to a `DECAP_ADDRS` address it strips. Written by
    /// its loader, read by `decap`.
    pub const DECAP_GUE_PORTS: &str = "DECAP_GUE_PORTS";
    /// `Vip6Key` → `VipMeta`: IPv6 VIPs. Written by the agent, read by
    /// `balancer` for IPv6 packets (IPv4 never looks here).
    pub const VIPS6: &str = "VIPS6";
    /// IPv6 VIP address (`Ipv6Wire`) → `VipAddrInfo`. Written by the agent,
    /// read by `balancer` for IPv6 fragments and ICMPv6 to a VIP address.
    pub const VIP6_ADDRS: &str = "VIP6_ADDRS";
    /// `Flow6Key` → `FlowPin` (LRU, per-CPU lists): the IPv6 connection
    /// table. Written by `balancer`, read by `balancer`; the agent reads it
    /// for summaries, lookups and flushes, as `FLOWS`.
    pub const FLOWS6: &str = "FLOWS6";
    /// Backend id → `Ipv6Wire`: the outer destination of a backend whose
    /// `Backend::flags` has `BACKEND_F_IPV6`. Written by the agent with
    /// the backend, read by `balancer` only for such backends.
    pub const BACKEND_ADDRS6: &str = "BACKEND_ADDRS6";
    /// `Affinity6Key` → `AffinityPin` (LRU): source-IP affinity of IPv6
    /// clients. Written and read by `balancer`; the agent deletes a VIP's
    /// entries when its affinity setting changes, as `AFFINITY`.
    pub const AFFINITY6: &str = "AFFINITY6";
    /// Decap program: set of local IPv6 addresses (`Ipv6Wire` → 1) whose
    /// IP6IP6 and IPv4-in-IPv6 packets it strips. Written by its loader,
    /// read by `decap`.
    pub const DECAP_ADDRS6: &str = "DECAP_ADDRS6";
    /// Program array of `balancer`: index `PROGRAM_IPV6` holds
    /// `balancer6`, which `balancer` tail-calls for every IPv6 packet.
    /// Written by the loader (pinned, so that the entry survives the agent:
    /// the kernel empties a program array no process or pin holds), read by
    /// `balancer`.
    pub const PROGRAMS: &str = "PROGRAMS";
    /// Program names inside the object files.
    pub const BALANCER_PROGRAM: &str = "balancer";
    /// The IPv6 half of the balancer, reached by tail call from `balancer`.
    pub const BALANCER6_PROGRAM: &str = "balancer6";
    pub const DECAP_PROGRAM: &str = "decap";
}

/// Key of the VIP map: one virtual service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// IPv4 address, wire order.
    pub addr: u32,
    /// Port, wire order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub _pad: u8,
}

/// Key of the IPv6 VIP map (`VIPS6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Vip6Key {
    pub addr: Ipv6Wire,
    /// Port, wire order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub _pad: u8,
}

/// How a VIP picks the backend of a new flow (`VipMeta::policy`). Written
/// by the agent from the VIP's `policy`, read by `balancer` for every new
/// flow. What the VIP's ring region holds depends on it (see
/// `VipMeta::ring_size`).
///
/// Maglev on the 5-tuple hash: the same choice on every LB node.
pub const POLICY_MAGLEV: u32 = 0;
/// Maglev on the client's address (masked by `VipMeta::src_mask`), port
/// left out: every connection of a client (or of its prefix) reaches one
/// backend, on every LB node.
pub const POLICY_MAGLEV_SOURCE: u32 = 1;
/// Weighted random: a random slot of the VIP's weighted schedule.
pub const POLICY_RANDOM: u32 = 2;
/// Weighted round robin: the next slot of the VIP's weighted schedule,
/// with one cursor per CPU (`RR_CURSORS`).
pub const POLICY_ROUND_ROBIN: u32 = 3;
/// Weighted least connections: the backend with the fewest active
/// connections (`BACKEND_CONNS`) relative to its weight.
pub const POLICY_LEAST_CONN: u32 = 4;

/// Most backends a `least-conn` VIP may have: the data path scans them all
/// for every new flow, so the bound keeps that scan (and the verifier's
/// view of it) small. The agent refuses more.
pub const LEAST_CONN_MAX_BACKENDS: u32 = 64;

/// Answer ICMP echo requests to this VIP's address in the data path
/// (`"icmp_echo"`, on by default). Kept in `VipMeta` so a restarted agent
/// reads the setting back; what the data path consults per packet is the
/// address's `VIP_ADDR_F_ICMP_ECHO`.
pub const VIP_F_ICMP_ECHO: u32 = 1 << 1;

/// `VipAddrInfo::flags`: answer echo requests to this address. The agent
/// sets it when *any* VIP on the address has `VIP_F_ICMP_ECHO`: an echo
/// request carries no port, so it cannot be told apart per VIP, and one
/// service that wants to be pingable makes the address pingable.
pub const VIP_ADDR_F_ICMP_ECHO: u16 = 1 << 0;

/// Value of the `VIP_ADDRS` map: what the data path knows of a VIP address
/// without a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipAddrInfo {
    /// Number of VIPs (address, port, protocol) on the address.
    pub vips: u16,
    /// `VIP_ADDR_F_*` bits.
    pub flags: u16,
}

/// Value of the VIP map. The agent replaces the whole value in one map
/// update, which is how a new ring becomes visible atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into `VIP_STATS`; stable for the VIP's lifetime.
    pub vip_id: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
    /// First slot of this VIP's ring in the ring pool.
    pub ring_offset: u32,
    /// Number of slots of the ring region. What they hold depends on the
    /// policy: the Maglev table (a prime number of backend ids) for
    /// `maglev` and `maglev-source`; the weighted schedule (each backend
    /// id as many times as its weight, interleaved) for `random` and
    /// `round-robin`; (backend id, weight) pairs for `least-conn`. A region
    /// of one `NO_BACKEND` slot: no backend takes new flows.
    pub ring_size: u32,
    /// `POLICY_*`.
    pub policy: u32,
    /// Client address mask (wire order) for `maglev-source` hashing and
    /// for the affinity key of an IPv4 VIP: the prefix of `source_prefix`
    /// bits.
    pub src_mask: u32,
    /// Source-IP affinity: a client's new flows go to the backend of its
    /// last flow for this many seconds after that flow's last packet
    /// (`AFFINITY`). 0: no affinity.
    pub affinity_timeout_s: u32,
    /// Encapsulation: 0 for IP-in-IP, else GUE to this UDP port (wire
    /// order). What the data path reads per packet is the copy in each of
    /// the VIP's `Backend`s; this one lets a restarted agent read the
    /// setting back.
    pub gue_port: u16,
    /// The client prefix length (0..=32 for IPv4, 0..=128 for IPv6): an
    /// IPv6 VIP masks its clients with it (`ipv6_prefix_mask`), an IPv4
    /// one with `src_mask`.
    pub source_prefix: u16,
}

/// The wire-order mask of the first `prefix` bits of an IPv6 address.
#[inline(always)]
pub const fn ipv6_prefix_mask(prefix: u16) -> Ipv6Wire {
    let mut mask = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        let start = 32 * i as u16;
        let bits = if prefix <= start {
            0
        } else if prefix - start >= 32 {
            32
        } else {
            prefix - start
        };
        mask[i] = if bits == 0 {
            0
        } else {
            (u32::MAX << (32 - bits)).to_be()
        };
        i += 1;
    }
    mask
}

/// The backend slot is in use. Cleared when the agent removes the backend,
/// which makes `balancer` re-select flows pinned to it.
pub const BACKEND_F_ACTIVE: u32 = 1 << 0;
/// The backend takes no new flows (weight 0: draining) but keeps its
/// established ones. Set by the agent; `balancer` reads it where a new flow
/// could reach a backend without the VIP's table: an affinity entry.
pub const BACKEND_F_DRAINING: u32 = 1 << 1;
/// The backend's VIP is `least-conn`: `balancer` counts its open
/// connections in `BACKEND_CONNS` (a new flow opens one; the client's FIN
/// or RST closes it) and stamps its flows' pins with the time of their last
/// packet, which the agent uses to reconcile the count.
pub const BACKEND_F_COUNT_CONNS: u32 = 1 << 2;
/// The backend's VIP has source-IP affinity: `balancer` refreshes the
/// client's `AFFINITY` entry from its established flows' packets (once per
/// clock tick of a flow, see `FLOW_TICK_SHIFT`).
pub const BACKEND_F_AFFINITY: u32 = 1 << 3;
/// The backend is reached over IPv6: its outer destination is its
/// `BACKEND_ADDRS6` entry (`Backend::addr` is 0), the outer header IPv6
/// from `DataPathConfig::lb_source_addr6`. Set by the agent, read by
/// `balancer` for every packet to the backend.
pub const BACKEND_F_IPV6: u32 = 1 << 4;

/// Value of the backend array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// IPv4 address, wire order: the outer destination of encapsulated
    /// packets (0 for an IPv6 backend, see `BACKEND_F_IPV6`).
    pub addr: u32,
    /// Bumped by the agent every time the slot is given to a different
    /// backend; a pinned flow whose generation differs is re-selected.
    pub generation: u32,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
    /// The VIP this backend id serves. The data path reads it to count an
    /// established flow's packets for its VIP without a VIP lookup; it also
    /// makes the pinned maps self-describing, so a restarted agent can
    /// rebuild its id assignments from them.
    pub vip_id: u32,
    /// Its VIP's encapsulation, copied here by the agent so an established
    /// flow needs no VIP lookup to know it: 0 for IP-in-IP, else GUE to
    /// this UDP destination port (wire order).
    pub gue_port: u16,
    pub _pad: u16,
}

/// Key of the connection table: the 5-tuple as it appears in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub _pad2: u16,
}

/// Key of the IPv6 connection table (`FLOWS6`): the 5-tuple as it appears
/// in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow6Key {
    pub src_addr: Ipv6Wire,
    pub dst_addr: Ipv6Wire,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub _pad2: u16,
}

/// Value of the connection table: the backend a flow is pinned to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowPin {
    pub backend_id: u32,
    /// The backend's generation when the flow was pinned.
    pub generation: u32,
    /// Flows of `least-conn` and affinity VIPs only (0 for the others):
    /// `bpf_ktime_get_coarse_ns() >> FLOW_TICK_SHIFT` of the flow's last
    /// packet, updated at most once per tick. Read by the agent to count a
    /// flow idle for longer than the VIP's `idle_timeout` as closed.
    pub last_seen_tick: u32,
    /// `FLOW_F_*` bits.
    pub flags: u32,
}

/// `FlowPin::flags`: the client sent FIN or RST on the flow. Set by
/// `balancer` (which then subtracts a least-conn connection from its
/// backend's count, once); read by `balancer` (a SYN on a closed pin is a
/// new connection, even for policies that keep a retransmitted SYN on its
/// pin) and by the agent's reconciliation, which does not count the flow.
pub const FLOW_F_CLOSED: u32 = 1 << 0;

/// `FlowPin::last_seen_tick` is monotonic nanoseconds shifted right by this
/// much: a tick of 2^30 ns (about 1.07 s), so a flow's pin is rewritten at
/// most about once a second.
pub const FLOW_TICK_SHIFT: u32 = 30;

/// Key of the affinity table: a client (its address masked by the VIP's
/// `src_mask`) of a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub vip_id: u32,
    /// Client address & `VipMeta::src_mask`, wire order.
    pub client: u32,
}

/// Key of the IPv6 affinity table (`AFFINITY6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Affinity6Key {
    pub vip_id: u32,
    /// Client address masked to the VIP's `source_prefix`, wire order.
    pub client: Ipv6Wire,
}

/// Value of the affinity table: the backend a client's new flows return to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityPin {
    pub backend_id: u32,
    /// The backend's generation when the entry was made: a replaced
    /// backend id is not followed.
    pub generation: u32,
    /// `bpf_ktime_get_coarse_ns()` of the client's last packet (refreshed
    /// once per flow tick, see `FLOW_TICK_SHIFT`).
    pub last_seen_ns: u64,
}

/// Default capacity of the affinity table (clients, LRU).
pub const DEFAULT_AFFINITY_ENTRIES: u32 = 1 << 18;

/// Per-VIP counters (per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    pub packets: u64,
    pub bytes: u64,
    /// Flows selected from the ring (connection-table misses, SYNs and re-selections).
    pub new_flows: u64,
}

/// Per-backend counters (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
}

/// Global counters of `balancer` (per CPU, index 0). Userspace also sends
/// them, summed over CPUs, in the control protocol's `stats` response. Every packet is counted
/// in exactly one of the verdict counters (`passed`, `malformed`, `drop_*`,
/// `encap_errors`, `fib_failures`, `fib_no_neigh`, `tx`, `redirected`,
/// `icmp_echo_replies`, `icmp_frag_needed_sent`, `icmp_rate_limited`); the
/// events (`flow_*`, `affinity_*`, `icmp_errors_forwarded`) count something that
/// happened to a packet on its way to its verdict
/// ([`GlobalStats::is_verdict`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct GlobalStats {
    /// Not for a VIP: passed to the kernel untouched.
    pub passed: u64,
    /// Too short for the headers it claims, IHL < 5, an IP version other
    /// than 4 under the IPv4 ethertype (6 under IPv6's), an IPv6 payload
    /// length past the frame: passed untouched,
    /// the kernel drops what is really broken. Past the fixed IP header,
    /// only packets to a VIP address are judged: the others are `passed`
    /// once the address filter says they are not ours.
    pub malformed: u64,
    /// Established flows found in the connection table.
    pub flow_hits: u64,
    /// VIP packets selected from the ring: not in the connection table, a
    /// SYN, or re-selected (see `flow_reselected`).
    pub flow_misses: u64,
    /// Pinned flows whose backend was removed or replaced, re-selected.
    pub flow_reselected: u64,
    /// Connection-table updates that failed (the packet is still forwarded).
    pub flow_pin_errors: u64,
    /// IPv4 fragments, and IPv6 packets with a fragment header, to a VIP
    /// address: dropped.
    pub drop_fragment: u64,
    /// Would exceed the egress MTU once encapsulated: dropped.
    pub drop_too_big: u64,
    /// The VIP has no backend that takes new flows: dropped.
    pub drop_no_backend: u64,
    /// `bpf_xdp_adjust_head` failed: dropped.
    pub encap_errors: u64,
    /// `bpf_fib_lookup` found no usable way to the backend: no route, a
    /// blackhole or prohibit route, forwarding disabled on the interface,
    /// or another lookup error. Dropped.
    pub fib_failures: u64,
    /// Encapsulated, but the next hop's MAC is unknown: passed to the kernel,
    /// which resolves the neighbour and forwards the packet.
    pub fib_no_neigh: u64,
    /// Encapsulated and sent back out of the receiving interface.
    pub tx: u64,
    /// Encapsulated and redirected to another interface.
    pub redirected: u64,
    /// ICMP and ICMPv6 echo requests to a VIP address answered by the
    /// balancer (XDP_TX of the reply).
    pub icmp_echo_replies: u64,
    /// Too big for the egress MTU once encapsulated, with DF set (or IPv6,
    /// which routers never fragment): answered with an ICMP
    /// "fragmentation needed" or an ICMPv6 "packet too big" to the client
    /// (XDP_TX).
    pub icmp_frag_needed_sent: u64,
    /// Would have been answered with "fragmentation needed", but this
    /// CPU's ICMP token bucket was empty: dropped.
    pub icmp_rate_limited: u64,
    /// Event: ICMP errors quoting a packet sent from a VIP, encapsulated
    /// to the backend that owns the quoted flow (the packet's verdict is
    /// `tx`, `redirected`, `fib_no_neigh` or a drop like any VIP packet's).
    pub icmp_errors_forwarded: u64,
    /// Event: new flows of an affinity VIP sent to the backend of the
    /// client's affinity entry (not chosen by the policy).
    pub affinity_hits: u64,
    /// Event: new flows of an affinity VIP whose client had an entry older
    /// than the VIP's timeout: chosen by the policy again.
    pub affinity_expired: u64,
}

/// Number of counters in [`GlobalStats`].
pub const GLOBAL_COUNTERS: usize = 20;
const _: () = assert!(core::mem::size_of::<GlobalStats>() == GLOBAL_COUNTERS * 8);

impl GlobalStats {
    /// The counters' names, in field order (what userspace prints). Those
    /// named `flow_*` count connection-table events, `affinity_*` and
    /// `icmp_errors_forwarded` are events too; the others are the verdicts (see [`Self::is_verdict`],
    /// which the agent's `/metrics` relies on).
    pub const NAMES: [&'static str; GLOBAL_COUNTERS] = [
        "passed",
        "malformed",
        "flow_hits",
        "flow_misses",
        "flow_reselected",
        "flow_pin_errors",
        "drop_fragment",
        "drop_too_big",
        "drop_no_backend",
        "encap_errors",
        "fib_failures",
        "fib_no_neigh",
        "tx",
        "redirected",
        "icmp_echo_replies",
        "icmp_frag_needed_sent",
        "icmp_rate_limited",
        "icmp_errors_forwarded",
        "affinity_hits",
        "affinity_expired",
    ];

    /// Whether the counter named `name` is a verdict (every packet has
    /// exactly one) rather than an event.
    pub fn is_verdict(name: &str) -> bool {
        !name.starts_with("flow_")
            && !name.starts_with("affinity_")
            && name != "icmp_errors_forwarded"
    }

    /// The counters in field order.
    pub fn values(&self) -> [u64; GLOBAL_COUNTERS] {
        // SAFETY: #[repr(C)] struct of exactly GLOBAL_COUNTERS u64 fields
        // (asserted above): the same layout as the array.
        unsafe { core::mem::transmute::<GlobalStats, [u64; GLOBAL_COUNTERS]>(*self) }
    }

    /// Field-by-field sum (per-CPU values into one).
    pub fn sum(&self, other: &GlobalStats) -> GlobalStats {
        let (a, b) = (self.values(), other.values());
        let mut out = [0u64; GLOBAL_COUNTERS];
        for i in 0..GLOBAL_COUNTERS {
            out[i] = a[i] + b[i];
        }
        // SAFETY: as in `values`, the other way round.
        unsafe { core::mem::transmute::<[u64; GLOBAL_COUNTERS], GlobalStats>(out) }
    }
}

/// Counters of the `decap` program (per CPU, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapStats {
    /// IP-in-IP packets (IPv4 or IPv6 inside IPv4 or IPv6) to a local
    /// address, stripped and passed on.
    pub decapsulated: u64,
    /// GUE packets to a local address and port, stripped and passed on.
    pub gue_decapsulated: u64,
    /// Everything else, passed untouched.
    pub passed: u64,
    /// IP-in-IP or GUE to a local address (and GUE port) that could not be
    /// stripped (truncated or lying headers, a fragment, an inner packet
    /// that is not IPv4, adjust failure): passed untouched.
    pub malformed: u64,
}

impl DecapStats {
    /// Field-by-field sum (per-CPU values into one).
    pub fn sum(&self, other: &DecapStats) -> DecapStats {
        DecapStats {
            decapsulated: self.decapsulated + other.decapsulated,
            gue_decapsulated: self.gue_decapsulated + other.gue_decapsulated,
            passed: self.passed + other.passed,
            malformed: self.malformed + other.malformed,
        }
    }
}

/// Choose the next hop with `bpf_fib_lookup` (default).
pub const NEXT_HOP_FIB: u32 = 0;
/// Send every encapsulated packet out of the receiving interface to a fixed
/// MAC address (hosts where the FIB lookup cannot be used, and tests).
pub const NEXT_HOP_STATIC: u32 = 1;

/// Load-time configuration of `balancer` (a read-only global).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataPathConfig {
    /// Outer source address of encapsulated packets, wire order.
    pub lb_source_addr: u32,
    /// `NEXT_HOP_FIB` or `NEXT_HOP_STATIC`.
    pub next_hop_mode: u32,
    /// Static mode: source MAC of encapsulated frames.
    pub static_src_mac: [u8; 6],
    /// Static mode: destination MAC of encapsulated frames.
    pub static_dst_mac: [u8; 6],
    /// Static mode: largest outer IP packet the link carries.
    pub static_mtu: u32,
    /// ICMP "fragmentation needed" messages each CPU may send per second
    /// (a token bucket refilled at this rate); 0 sends none.
    pub icmp_rate: u32,
    /// Size of that bucket: messages a CPU may send at once after a quiet
    /// spell.
    pub icmp_burst: u32,
    /// Outer source address of packets to IPv6 backends (wire order); all
    /// zero when the node has none, and then the agent refuses IPv6
    /// backends.
    pub lb_source_addr6: Ipv6Wire,
}

/// Default of `DataPathConfig::icmp_rate` (per CPU and second).
pub const DEFAULT_ICMP_RATE: u32 = 100;
/// Default of `DataPathConfig::icmp_burst`.
pub const DEFAULT_ICMP_BURST: u32 = 50;

/// A CPU's ICMP token bucket (the `ICMP_RATE` per-CPU array of `balancer`,
/// not pinned: a restarted data path starts with a full bucket).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcmpBucket {
    /// Credit in nanoseconds: a message costs 1e9 / `icmp_rate`, the
    /// bucket holds at most `icmp_burst` messages' worth.
    pub credit_ns: u64,
    /// `bpf_ktime_get_ns` of the last refill.
    pub last_ns: u64,
}

/// Converts an address to the representation used in maps and packets.
#[inline(always)]
pub const fn ipv4_to_wire(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// Converts a wire-order address from a map back to octets.
#[inline(always)]
pub const fn ipv4_from_wire(addr: u32) -> [u8; 4] {
    addr.to_ne_bytes()
}

/// Converts an IPv6 address to the representation used in maps and packets.
#[inline(always)]
pub const fn ipv6_to_wire(octets: [u8; 16]) -> Ipv6Wire {
    let mut words = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        words[i] = u32::from_ne_bytes([
            octets[4 * i],
            octets[4 * i + 1],
            octets[4 * i + 2],
            octets[4 * i + 3],
        ]);
        i += 1;
    }
    words
}

/// Converts a wire-order IPv6 address from a map back to octets.
#[inline(always)]
pub const fn ipv6_from_wire(addr: Ipv6Wire) -> [u8; 16] {
    let mut octets = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        octets[i] = addr[i / 4].to_ne_bytes()[i % 4];
        i += 1;
    }
    octets
}

/// Converts a port to the representation used in maps and packets.
#[inline(always)]
pub const fn port_to_wire(port: u16) -> u16 {
    port.to_be()
}

/// Converts a wire-order port back to host order.
#[inline(always)]
pub const fn port_from_wire(port: u16) -> u16 {
    u16::from_be(port)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, made of integers, and have
    // no implicit padding (explicit `_pad` fields fill every gap).
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for Vip6Key {}
    unsafe impl aya::Pod for Flow6Key {}
    unsafe impl aya::Pod for Affinity6Key {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for VipAddrInfo {}
    unsafe impl aya::Pod for IcmpBucket {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowPin {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityPin {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for GlobalStats {}
    unsafe impl aya::Pod for DecapStats {}
    unsafe impl aya::Pod for DataPathConfig {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipv6_prefix_masks() {
        use super::ipv6_prefix_mask as m;
        let words = |p| m(p).map(u32::from_be);
        assert_eq!(words(0), [0; 4]);
        assert_eq!(words(128), [u32::MAX; 4]);
        assert_eq!(words(64), [u32::MAX, u32::MAX, 0, 0]);
        assert_eq!(words(56), [u32::MAX, 0xffff_ff00, 0, 0]);
        assert_eq!(words(1), [0x8000_0000, 0, 0, 0]);
        assert_eq!(words(127), [u32::MAX, u32::MAX, u32::MAX, 0xffff_fffe]);
    }

    #[test]
    fn outer_flow_labels_fit_20_bits() {
        for h in [0u32, 1, 0xffff_ffff, 0x1234_5678, 0x000f_ffff] {
            assert!(super::outer_flow_label(h) <= 0xf_ffff);
        }
        assert_ne!(super::outer_flow_label(1), super::outer_flow_label(2));
    }
    #[test]
    fn global_counter_names_follow_the_fields() {
        let s = super::GlobalStats {
            passed: 1,
            malformed: 2,
            flow_hits: 3,
            flow_misses: 4,
            flow_reselected: 5,
            flow_pin_errors: 6,
            drop_fragment: 7,
            drop_too_big: 8,
            drop_no_backend: 9,
            encap_errors: 10,
            fib_failures: 11,
            fib_no_neigh: 12,
            tx: 13,
            redirected: 14,
            icmp_echo_replies: 15,
            icmp_frag_needed_sent: 16,
            icmp_rate_limited: 17,
            icmp_errors_forwarded: 18,
            affinity_hits: 19,
            affinity_expired: 20,
        };
        assert_eq!(
            s.values(),
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
        );
        assert_eq!(
            (names_at(18), names_at(19)),
            ("affinity_hits", "affinity_expired")
        );
        let names = super::GlobalStats::NAMES;
        assert_eq!(
            (names[0], names[2], names[12], names[13]),
            ("passed", "flow_hits", "tx", "redirected")
        );
        assert_eq!(
            (names[14], names[15], names[16], names[17]),
            (
                "icmp_echo_replies",
                "icmp_frag_needed_sent",
                "icmp_rate_limited",
                "icmp_errors_forwarded"
            )
        );
        assert_eq!(s.sum(&s).values()[17], 36);
        let verdicts: usize = names
            .iter()
            .filter(|n| super::GlobalStats::is_verdict(n))
            .count();
        assert_eq!(verdicts, super::GLOBAL_COUNTERS - 7);
    }

    fn names_at(i: usize) -> &'static str {
        super::GlobalStats::NAMES[i]
    }
}
