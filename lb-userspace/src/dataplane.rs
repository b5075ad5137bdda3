//! The services the data path serves (VIPs and their backends), and how a
//! change to them is written into the maps without disturbing traffic.
//!
//! Rules the writer keeps:
//! - A backend id belongs to one (VIP, backend address) pair. When the pair
//!   goes away the id is deactivated, so flows pinned to it are re-selected;
//!   when the id is reused its generation is bumped, so stale pins never
//!   reach the new owner.
//! - A VIP's new ring is written into a free region of the ring pool first,
//!   then the VIP's metadata is switched to it in one map update; only VIPs
//!   whose table changed are rewritten.
//! - A change is planned completely (ids, pool space, table sizes) before
//!   the first map write: it applies whole or is rejected.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, ensure, Context, Result};
use lb_common::{
    flow_hash, flow_hash6, ipv4_to_wire, ipv6_prefix_mask, ipv6_to_wire, port_to_wire,
    vip6_filter_position, vip_filter_position, Backend, Vip6Key, VipAddrInfo, VipKey, VipMeta,
    BACKEND_F_ACTIVE, BACKEND_F_AFFINITY, BACKEND_F_COUNT_CONNS, BACKEND_F_DRAINING,
    BACKEND_F_IPV6, FLOW_F_CLOSED, FLOW_TICK_SHIFT, IPPROTO_TCP, IPPROTO_UDP, MAX_BACKENDS,
    MAX_VIPS, NO_BACKEND, VIP_ADDR_F_ICMP_ECHO, VIP_F_ICMP_ECHO,
};
use serde::{Deserialize, Serialize};

use crate::{
    encap::Encap,
    instrument::{Instruments, VipLabel},
    maglev::{self, MaglevBackend},
    maps::{AnyVipAddr, AnyVipKey, BalancerMaps, Family},
    policy::{self, Policy},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A virtual service: address (either family), port, protocol. In JSON:
/// `{"address": "198.18.0.10", "port": 80, "protocol": "tcp"}` or
/// `{"address": "2001:db8::10", ...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipAddr {
    #[serde(rename = "address")]
    pub addr: IpAddr,
    pub port: u16,
    #[serde(rename = "protocol")]
    pub proto: Protocol,
}

impl VipAddr {
    /// Its key in the VIP map of its family (`VIPS` or `VIPS6`).
    pub fn key(&self) -> AnyVipKey {
        let (port, proto) = (port_to_wire(self.port), self.proto.number());
        match self.addr {
            IpAddr::V4(a) => AnyVipKey::V4(VipKey {
                addr: ipv4_to_wire(a.octets()),
                port,
                proto,
                _pad: 0,
            }),
            IpAddr::V6(a) => AnyVipKey::V6(Vip6Key {
                addr: ipv6_to_wire(a.octets()),
                port,
                proto,
                _pad: 0,
            }),
        }
    }

    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }
}

/// An address as the maps hold it.
pub fn wire_addr(addr: IpAddr) -> AnyVipAddr {
    match addr {
        IpAddr::V4(a) => AnyVipAddr::V4(ipv4_to_wire(a.octets())),
        IpAddr::V6(a) => AnyVipAddr::V6(ipv6_to_wire(a.octets())),
    }
}

/// Where a VIP address sits in the address filter both families share.
fn filter_position(addr: IpAddr) -> (u32, u32) {
    match wire_addr(addr) {
        AnyVipAddr::V4(a) => vip_filter_position(a),
        AnyVipAddr::V6(a) => vip6_filter_position(&a),
    }
}

/// `198.18.0.10:80/tcp`, `[2001:db8::10]:80/tcp`: the brackets keep an
/// IPv6 address's colons apart from the port's.
impl fmt::Display for VipAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            std::net::SocketAddr::new(self.addr, self.port),
            self.proto
        )
    }
}

/// The inverse of `Display`: `ADDRESS:PORT/PROTOCOL`, an IPv6 address in
/// brackets.
impl std::str::FromStr for VipAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected = || {
            format!("{text:?}: expected ADDRESS:PORT/PROTOCOL (IPv6 as [ADDRESS]:PORT/PROTOCOL)")
        };
        let (addr_port, proto) = text.rsplit_once('/').ok_or_else(expected)?;
        let (addr, port) = addr_port.rsplit_once(':').ok_or_else(expected)?;
        let addr: IpAddr = match addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
            Some(v6) => v6
                .parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| format!("{v6:?} is not an IPv6 address"))?,
            None if addr.contains(':') => {
                return Err(format!(
                    "{addr:?}: write an IPv6 VIP in brackets, [{addr}]:{port}/{proto}"
                ))
            }
            None => addr
                .parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| format!("{addr:?} is not an IPv4 address"))?,
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port"))?;
        let proto = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(format!("{other:?} is not a protocol (tcp or udp)")),
        };
        Ok(VipAddr { addr, port, proto })
    }
}

/// The client prefix a VIP of this address uses unless told otherwise:
/// each client address on its own.
pub fn default_source_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Whether `addr` can be a VIP or a backend: not unspecified, multicast or
/// (IPv4) broadcast.
pub fn is_unicast(addr: IpAddr) -> bool {
    !addr.is_unspecified()
        && !addr.is_multicast()
        && !matches!(addr, IpAddr::V4(a) if a.is_broadcast())
}

/// What a VIP should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSpec {
    pub vip: VipAddr,
    /// Maglev table size (a prime); for `random` and `round-robin`, the
    /// most schedule slots (the weights' sum) it may take.
    pub table_size: u32,
    /// How new flows pick their backend.
    pub policy: Policy,
    /// Client prefix length for `maglev-source` hashing and the affinity
    /// key (32 for IPv4, 128 for IPv6: each address on its own).
    pub source_prefix: u8,
    /// Source-IP affinity timeout in seconds (0: none).
    pub affinity_timeout: u32,
    /// Answer ICMP echo requests to the VIP's address in the data path.
    /// An address answers when any of its VIPs says so.
    pub icmp_echo: bool,
    /// How packets travel to the backends.
    pub encap: Encap,
    pub backends: Vec<BackendSpec>,
}

impl VipSpec {
    /// A VIP with the default table size (65537), the default policy
    /// (Maglev on the 5-tuple), and these (address, weight) backends.
    /// Backends of either family (`Ipv4Addr`, `Ipv6Addr` or `IpAddr`).
    pub fn new<A: Into<IpAddr> + Copy>(vip: VipAddr, backends: &[(A, u32)]) -> Self {
        Self {
            vip,
            table_size: maglev::DEFAULT_TABLE_SIZE,
            policy: Policy::Maglev,
            source_prefix: default_source_prefix(vip.addr),
            affinity_timeout: 0,
            icmp_echo: true,
            encap: Encap::Ipip,
            backends: backends
                .iter()
                .map(|&(addr, weight)| BackendSpec {
                    addr: addr.into(),
                    weight,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSpec {
    /// Either family, whatever the VIP's: an IPv6 backend is reached over
    /// IPv6 (`BACKEND_ADDRS6`), an IPv4 one over IPv4.
    pub addr: IpAddr,
    /// Relative share of new flows; 0 drains the backend (no new flows,
    /// existing ones stay).
    pub weight: u32,
}

/// What `apply` changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub vips_added: Vec<VipAddr>,
    pub vips_removed: Vec<VipAddr>,
    /// VIPs whose ring was rebuilt and switched (added VIPs included).
    pub rings_written: Vec<VipAddr>,
    pub backends_added: usize,
    pub backends_removed: usize,
}

#[derive(Debug, Clone)]
struct VipState {
    spec: VipSpec,
    vip_id: u32,
    ring_offset: u32,
    ring: Vec<u32>,
    /// backend address → backend id
    backend_ids: BTreeMap<IpAddr, u32>,
}

impl VipState {
    fn meta(&self) -> VipMeta {
        VipMeta {
            vip_id: self.vip_id,
            flags: if self.spec.icmp_echo {
                VIP_F_ICMP_ECHO
            } else {
                0
            },
            ring_offset: self.ring_offset,
            ring_size: self.ring.len() as u32,
            policy: self.spec.policy.code(),
            // IPv6 VIPs mask with `source_prefix` alone.
            src_mask: if self.spec.vip.addr.is_ipv4() {
                policy::source_mask(self.spec.source_prefix)
            } else {
                0
            },
            affinity_timeout_s: self.spec.affinity_timeout,
            gue_port: self.spec.encap.wire_port(),
            source_prefix: self.spec.source_prefix as u16,
        }
    }

    /// The flags the data path should see on each of this VIP's backends.
    fn backend_flags(&self, addr: IpAddr, weight: u32) -> u32 {
        let mut flags = BACKEND_F_ACTIVE;
        if addr.is_ipv6() {
            flags |= BACKEND_F_IPV6;
        }
        if weight == 0 {
            flags |= BACKEND_F_DRAINING;
        }
        if self.spec.policy == Policy::LeastConn {
            flags |= BACKEND_F_COUNT_CONNS;
        }
        if self.spec.affinity_timeout != 0 {
            flags |= BACKEND_F_AFFINITY;
        }
        flags
    }
}

/// Every `id_step`-th slot of a region holds a backend id.
fn id_step(policy: Policy) -> usize {
    if policy == Policy::LeastConn {
        2
    } else {
        1
    }
}

/// What `VipMeta` carries besides the ring: when it changes, the VIP's
/// metadata is rewritten even if the ring is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VipSettings {
    policy: Policy,
    source_prefix: u8,
    affinity_timeout: u32,
    icmp_echo: bool,
    encap: Encap,
}

impl VipSettings {
    fn of(spec: &VipSpec) -> Self {
        Self {
            policy: spec.policy,
            source_prefix: spec.source_prefix,
            affinity_timeout: spec.affinity_timeout,
            icmp_echo: spec.icmp_echo,
            encap: spec.encap,
        }
    }
}

/// Free-list allocator of ring-pool regions (first fit, coalescing).
#[derive(Debug, Clone)]
pub struct RingAllocator {
    /// start → length of each free region
    free: BTreeMap<u32, u32>,
}

impl RingAllocator {
    pub fn new(slots: u32) -> Self {
        let mut free = BTreeMap::new();
        if slots > 0 {
            free.insert(0, slots);
        }
        Self { free }
    }

    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        let (&start, &free_len) = self.free.iter().find(|(_, &l)| l >= len)?;
        self.free.remove(&start);
        if free_len > len {
            self.free.insert(start + len, free_len - len);
        }
        Some(start)
    }

    pub fn release(&mut self, start: u32, len: u32) {
        let mut start = start;
        let mut len = len;
        if let Some((&prev, &prev_len)) = self.free.range(..start).next_back() {
            if prev + prev_len == start {
                self.free.remove(&prev);
                start = prev;
                len += prev_len;
            }
        }
        if let Some(&next_len) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += next_len;
        }
        self.free.insert(start, len);
    }

    /// Marks `[start, start + len)` as used; false if any of it is not free.
    pub fn take(&mut self, start: u32, len: u32) -> bool {
        let Some((&free_start, &free_len)) = self.free.range(..=start).next_back() else {
            return false;
        };
        if start + len > free_start + free_len {
            return false;
        }
        self.free.remove(&free_start);
        if start > free_start {
            self.free.insert(free_start, start - free_start);
        }
        if free_start + free_len > start + len {
            self.free
                .insert(start + len, free_start + free_len - start - len);
        }
        true
    }

    pub fn free_slots(&self) -> u64 {
        self.free.values().map(|&l| l as u64).sum()
    }
}

/// Ids in `0..capacity`, lowest free first. A bitset (one bit per id, set =
/// free) rather than an ordered set: `apply` clones the allocators twice per
/// change to plan it, and 64 words clone in no time where a 4096-entry
/// `BTreeSet` took tens of microseconds.
#[derive(Debug, Clone)]
struct IdAllocator {
    free: Vec<u64>,
}

impl IdAllocator {
    fn new(capacity: u32) -> Self {
        let mut free = vec![u64::MAX; (capacity as usize).div_ceil(64)];
        if !capacity.is_multiple_of(64) {
            if let Some(last) = free.last_mut() {
                *last = (1u64 << (capacity % 64)) - 1;
            }
        }
        Self { free }
    }
    fn alloc(&mut self) -> Option<u32> {
        let (index, word) = self
            .free
            .iter_mut()
            .enumerate()
            .find(|(_, word)| **word != 0)?;
        let bit = word.trailing_zeros();
        *word &= *word - 1;
        // index < capacity / 64 + 1 with capacity a u32: lossless.
        Some(index as u32 * 64 + bit)
    }
    fn release(&mut self, id: u32) {
        if let Some(word) = self.free.get_mut(id as usize / 64) {
            *word |= 1 << (id % 64);
        }
    }
    /// Marks `id` as used; false if it was not free.
    fn take(&mut self, id: u32) -> bool {
        match self.free.get_mut(id as usize / 64) {
            Some(word) if *word & (1 << (id % 64)) != 0 => {
                *word &= !(1 << (id % 64));
                true
            }
            _ => false,
        }
    }
}

/// The data plane's services and the maps they are written to.
pub struct DataPlane {
    maps: BalancerMaps,
    vips: BTreeMap<VipAddr, VipState>,
    vip_ids: IdAllocator,
    backend_ids: IdAllocator,
    /// Generation last written for each backend id.
    generations: Vec<u32>,
    /// (`BACKEND_F_*` flags, `gue_port`) last written for each backend id:
    /// a backend is rewritten when either differs from what it should be.
    backend_written: Vec<(u32, u16)>,
    pool: RingAllocator,
    /// Where table rebuilds and swap durations are recorded.
    instruments: Instruments,
    /// The data path was loaded with an IPv6 source address: IPv6
    /// backends can be reached.
    ipv6_source: bool,
}

/// Ids and pool regions assigned by planning, consumed in the same order by
/// execution.
struct Plan {
    vip_ids: IdAllocator,
    backend_ids: IdAllocator,
    pool: RingAllocator,
}

impl DataPlane {
    pub fn new(maps: BalancerMaps) -> Self {
        let slots = maps.ring_pool_slots();
        Self {
            maps,
            vips: BTreeMap::new(),
            vip_ids: IdAllocator::new(MAX_VIPS),
            backend_ids: IdAllocator::new(MAX_BACKENDS),
            generations: vec![0; MAX_BACKENDS as usize],
            backend_written: vec![(0, 0); MAX_BACKENDS as usize],
            pool: RingAllocator::new(slots),
            instruments: Instruments::new(),
            ipv6_source: false,
        }
    }

    /// Whether the data path has an IPv6 source address (the agent's
    /// `source_address6`): without one, [`DataPlane::apply`] refuses IPv6
    /// backends.
    pub fn set_ipv6_source(&mut self, present: bool) {
        self.ipv6_source = present;
    }

    /// Records table rebuilds and swap durations into `instruments` (the
    /// agent's, which `/metrics` renders) from now on.
    pub fn set_instruments(&mut self, instruments: Instruments) {
        self.instruments = instruments;
    }

    /// Takes over maps a previous agent filled (pinned maps): VIP ids,
    /// backend ids, generations and ring regions are read back from them,
    /// so a following [`DataPlane::apply`] of the saved state rewrites only
    /// what differs (nothing, when maps and state agree) and the connection
    /// table stays valid.
    pub fn adopt(maps: BalancerMaps) -> Result<Self> {
        let mut dp = Self::new(maps);
        let vips = dp.maps.vip_entries()?;
        let backends = dp.maps.backend_entries()?;
        for (id, b) in &backends {
            if let Some(g) = dp.generations.get_mut(*id as usize) {
                *g = b.generation;
            }
            if let Some(written) = dp.backend_written.get_mut(*id as usize) {
                *written = (b.flags, b.gue_port);
            }
        }
        // An IPv6 backend's address is in BACKEND_ADDRS6, read once here.
        let backend_addrs = backends
            .iter()
            .map(|(id, b)| {
                Ok(if b.flags & BACKEND_F_IPV6 != 0 {
                    IpAddr::V6(Ipv6Addr::from(lb_common::ipv6_from_wire(
                        dp.maps.backend_addr6(*id)?,
                    )))
                } else {
                    IpAddr::V4(Ipv4Addr::from(lb_common::ipv4_from_wire(b.addr)))
                })
            })
            .collect::<Result<Vec<IpAddr>>>()?;
        let mut stray = Vec::new();
        for (key, meta) in &vips {
            let (addr, port, proto) = match key {
                AnyVipKey::V4(k) => (
                    IpAddr::V4(Ipv4Addr::from(lb_common::ipv4_from_wire(k.addr))),
                    k.port,
                    k.proto,
                ),
                AnyVipKey::V6(k) => (
                    IpAddr::V6(Ipv6Addr::from(lb_common::ipv6_from_wire(k.addr))),
                    k.port,
                    k.proto,
                ),
            };
            let vip = VipAddr {
                addr,
                port: lb_common::port_from_wire(port),
                proto: match proto {
                    IPPROTO_TCP => Protocol::Tcp,
                    IPPROTO_UDP => Protocol::Udp,
                    other => bail!("the pinned VIP map holds protocol {other}"),
                },
            };
            let ring = dp
                .maps
                .ring_region(meta.ring_offset, meta.ring_size)
                .with_context(|| format!("VIP {vip}: ring region outside the pool"))?
                .to_vec();
            if !dp.pool.take(meta.ring_offset, meta.ring_size) || !dp.vip_ids.take(meta.vip_id) {
                bail!("VIP {vip}: the pinned maps overlap (ring region or VIP id used twice)");
            }
            // One id per address: should an interrupted change have left two
            // active ids for one address, the one the ring uses stays and
            // the other is deactivated (its flows re-select).
            let mut backend_ids: BTreeMap<IpAddr, u32> = BTreeMap::new();
            for ((id, _), &addr) in backends
                .iter()
                .zip(&backend_addrs)
                .filter(|((_, b), _)| b.flags & BACKEND_F_ACTIVE != 0 && b.vip_id == meta.vip_id)
            {
                match backend_ids.get(&addr).copied() {
                    None => {
                        backend_ids.insert(addr, *id);
                    }
                    Some(kept) if ring.contains(&kept) || !ring.contains(id) => stray.push(*id),
                    Some(kept) => {
                        stray.push(kept);
                        backend_ids.insert(addr, *id);
                    }
                }
            }
            for id in backend_ids.values() {
                dp.backend_ids.take(*id);
            }
            let spec = VipSpec {
                vip,
                table_size: meta.ring_size,
                policy: Policy::from_code(meta.policy).with_context(|| {
                    format!("VIP {vip}: the pinned VIP map holds policy {}", meta.policy)
                })?,
                // An IPv4 VIP's prefix is read from its mask: agents
                // before IPv6 left `source_prefix` zero.
                source_prefix: match vip.family() {
                    Family::V4 => policy::prefix_of_mask(meta.src_mask),
                    Family::V6 => u8::try_from(meta.source_prefix).with_context(|| {
                        format!(
                            "VIP {vip}: the pinned VIP map holds source prefix {}",
                            meta.source_prefix
                        )
                    })?,
                },
                affinity_timeout: meta.affinity_timeout_s,
                icmp_echo: meta.flags & VIP_F_ICMP_ECHO != 0,
                encap: Encap::from_wire_port(meta.gue_port),
                backends: backend_ids
                    .keys()
                    .map(|&addr| BackendSpec { addr, weight: 0 })
                    .collect(),
            };
            dp.vips.insert(
                vip,
                VipState {
                    spec,
                    vip_id: meta.vip_id,
                    ring_offset: meta.ring_offset,
                    ring,
                    backend_ids,
                },
            );
        }
        // Active backends of no VIP: left over by an interrupted change.
        for (id, b) in &backends {
            if b.flags & BACKEND_F_ACTIVE != 0 && !vips.iter().any(|(_, m)| m.vip_id == b.vip_id) {
                stray.push(*id);
            }
        }
        for id in stray {
            dp.deactivate_backend(id)?;
        }
        // The address structures follow from the VIPs (a filter pinned by an
        // older agent may lack them).
        let addrs: BTreeSet<IpAddr> = dp.vips.keys().map(|v| v.addr).collect();
        for addr in addrs {
            dp.write_vip_address_count(addr)?;
        }
        Ok(dp)
    }

    /// Gives the maps back (to adopt them again, as a restarted agent does).
    pub fn into_maps(self) -> BalancerMaps {
        self.maps
    }

    pub fn maps(&self) -> &BalancerMaps {
        &self.maps
    }

    /// The VIPs as currently written.
    pub fn specs(&self) -> Vec<VipSpec> {
        self.vips.values().map(|v| v.spec.clone()).collect()
    }

    /// VIP id of a configured VIP (index of its counters).
    pub fn vip_id(&self, vip: &VipAddr) -> Option<u32> {
        self.vips.get(vip).map(|v| v.vip_id)
    }

    /// Backend id of a VIP's backend (index of its counters).
    pub fn backend_id(&self, vip: &VipAddr, backend: IpAddr) -> Option<u32> {
        self.vips.get(vip)?.backend_ids.get(&backend).copied()
    }

    /// The backend the ring gives a new flow, computed exactly as the data
    /// path does (same hash, same table). `None` also for a VIP whose
    /// policy is not a hash (its choice depends on more than the packet)
    /// and for one with affinity (the client's entry decides first).
    /// `None` too for a client of the other family than the VIP's.
    pub fn ring_choice(&self, vip: &VipAddr, src_addr: IpAddr, src_port: u16) -> Option<IpAddr> {
        let state = self.vips.get(vip)?;
        if !state.spec.policy.is_hash() || state.spec.affinity_timeout != 0 {
            return None;
        }
        let id = *state
            .ring
            .get(ring_slot(&state.spec, src_addr, src_port)? as usize)?;
        state
            .backend_ids
            .iter()
            .find(|(_, &bid)| bid == id)
            .map(|(addr, _)| *addr)
    }

    /// The backend a connection-table pin still leads to: its id is in use
    /// by `vip` with the pin's generation. `None` for stale pins.
    pub fn pinned_backend(&self, vip: &VipAddr, pin: &lb_common::FlowPin) -> Option<IpAddr> {
        let state = self.vips.get(vip)?;
        let (addr, _) = state
            .backend_ids
            .iter()
            .find(|(_, &id)| id == pin.backend_id)?;
        (self.generations.get(pin.backend_id as usize) == Some(&pin.generation)).then_some(*addr)
    }

    /// Share of the VIP's new flows each backend address is given: its
    /// share of the table or schedule slots, or for least-conn its share
    /// of the weights (what it gets when connections last alike).
    pub fn ring_shares(&self, vip: &VipAddr) -> BTreeMap<IpAddr, f64> {
        let Some(state) = self.vips.get(vip) else {
            return BTreeMap::new();
        };
        let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
        if state.spec.policy == Policy::LeastConn {
            for pair in state.ring.chunks_exact(2) {
                *counts.entry(pair[0]).or_default() += pair[1] as u64;
            }
        } else {
            for &id in &state.ring {
                *counts.entry(id).or_default() += 1;
            }
        }
        let total: u64 = counts
            .iter()
            .filter(|(&id, _)| id != NO_BACKEND)
            .map(|(_, &c)| c)
            .sum();
        state
            .backend_ids
            .iter()
            .map(|(addr, id)| {
                (
                    *addr,
                    counts.get(id).copied().unwrap_or(0) as f64 / total.max(1) as f64,
                )
            })
            .collect()
    }

    /// Digest of the VIP's table as written to the data path: the ring
    /// region `VIPS` points at, read back from `RINGS`, each slot's backend
    /// id turned into its address (ids differ between nodes, addresses do
    /// not). Two nodes whose digests agree send every new flow of the VIP to
    /// the same backend. `None` for an unknown VIP; an error when the ring
    /// holds an id that is no backend of the VIP (the maps are inconsistent).
    pub fn table_digest(&self, vip: &VipAddr) -> Result<Option<String>> {
        let Some(state) = self.vips.get(vip) else {
            return Ok(None);
        };
        let ring = self
            .maps
            .ring_region(state.ring_offset, state.ring.len() as u32)
            .with_context(|| format!("VIP {vip}: ring region outside the pool"))?;
        let addrs: BTreeMap<u32, IpAddr> =
            state.backend_ids.iter().map(|(a, &id)| (id, *a)).collect();
        let step = id_step(state.spec.policy);
        let slots = ring
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                if i % step != 0 {
                    Ok(Slot::Weight(id))
                } else if id == NO_BACKEND {
                    Ok(Slot::Empty)
                } else {
                    addrs.get(&id).copied().map(Slot::Backend).with_context(|| {
                        format!("VIP {vip}: its ring holds backend id {id}, which is none of its backends")
                    })
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(table_digest(&state.spec, slots.into_iter())))
    }

    /// A least-conn backend's open connections as the data path counts
    /// them; `None` for other policies or an unknown backend.
    pub fn backend_connections(&self, vip: &VipAddr, backend: IpAddr) -> Option<i64> {
        let state = self.vips.get(vip)?;
        if state.spec.policy != Policy::LeastConn {
            return None;
        }
        let id = *state.backend_ids.get(&backend)?;
        self.maps.backend_conns(id).ok().map(|n| n.max(0))
    }

    /// Replaces the connection count of every least-conn backend with the
    /// number of its connection-table entries that are neither closed (the
    /// client's FIN or RST was seen) nor idle for longer than
    /// `idle_timeout_s` of their VIP: what repairs the counts the data path
    /// cannot keep itself (connections that end silently, an LRU eviction,
    /// a SYN on a reused tuple). One walk of the table, only when some VIP
    /// is least-conn; returns how many backends were written.
    pub fn reconcile_connections(
        &mut self,
        idle_timeout_s: impl Fn(&VipAddr) -> u32,
    ) -> Result<usize> {
        // Backend id → (generation, idle limit in ticks) of least-conn backends.
        let mut counted: Vec<Option<(u32, u32)>> = vec![None; MAX_BACKENDS as usize];
        let mut any = false;
        for (vip, state) in &self.vips {
            if state.spec.policy != Policy::LeastConn {
                continue;
            }
            let idle_ticks = idle_ticks(idle_timeout_s(vip));
            for &id in state.backend_ids.values() {
                counted[id as usize] = Some((self.generations[id as usize], idle_ticks));
                any = true;
            }
        }
        if !any {
            return Ok(0);
        }
        let now = monotonic_tick()?;
        let mut counts = vec![0i64; MAX_BACKENDS as usize];
        self.maps.for_each_pin(|pin| {
            if let Some(Some((generation, idle))) = counted.get(pin.backend_id as usize) {
                if pin.generation == *generation
                    && pin.flags & FLOW_F_CLOSED == 0
                    && now.wrapping_sub(pin.last_seen_tick) <= *idle
                {
                    counts[pin.backend_id as usize] += 1;
                }
            }
        })?;
        let mut written = 0;
        for (id, c) in counted.iter().enumerate() {
            if c.is_some() {
                self.maps.set_backend_conns(id as u32, counts[id])?;
                written += 1;
            }
        }
        Ok(written)
    }

    pub fn maps_mut(&mut self) -> &mut BalancerMaps {
        &mut self.maps
    }

    /// Makes the data plane serve exactly `desired`. Validates and plans
    /// everything first; on error nothing was written.
    pub fn apply(&mut self, desired: &[VipSpec]) -> Result<ApplyReport> {
        let started = std::time::Instant::now();
        validate(desired)?;
        check_families(desired, self.ipv6_source)?;
        let desired: BTreeMap<VipAddr, &VipSpec> = desired.iter().map(|s| (s.vip, s)).collect();
        // Tables only for VIPs whose spec changed: an unchanged VIP keeps
        // its ring (and its backend ids), so one change costs one build.
        // The planning pass builds them, once it knows the backend ids.
        let rebuilt: BTreeSet<VipAddr> = desired
            .iter()
            .filter(|(vip, spec)| self.vips.get(vip).is_none_or(|old| old.spec != ***spec))
            .map(|(vip, _)| *vip)
            .collect();
        let mut tables = BTreeMap::new();
        // Dry run on copies of the allocators: fails before any write if
        // ids or pool space run out.
        let mut plan = Plan {
            vip_ids: self.vip_ids.clone(),
            backend_ids: self.backend_ids.clone(),
            pool: self.pool.clone(),
        };
        self.walk(&desired, &rebuilt, &mut tables, &mut plan, false)?;
        let mut plan = Plan {
            vip_ids: self.vip_ids.clone(),
            backend_ids: self.backend_ids.clone(),
            pool: self.pool.clone(),
        };
        let report = self.walk(&desired, &rebuilt, &mut tables, &mut plan, true)?;
        self.vip_ids = plan.vip_ids;
        self.backend_ids = plan.backend_ids;
        self.pool = plan.pool;
        for vip in &report.rings_written {
            self.instruments
                .table_rebuilds
                .get_or_create(&VipLabel {
                    vip: vip.to_string(),
                })
                .inc();
        }
        if !report.rings_written.is_empty() {
            self.instruments
                .table_swap_duration
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(report)
    }

    fn table_for(&self, spec: &VipSpec, ids: &[u32]) -> Result<Vec<u32>> {
        spec_table(spec, ids).with_context(|| format!("building the table of VIP {}", spec.vip))
    }

    /// Removes VIPs not in `desired`, then adds or updates the rest. With
    /// `write == false` only the allocators in `plan` are exercised, and the
    /// rings of the `rebuilt` VIPs are built into `tables`, with the backend
    /// ids the planning pass assigns: the writing pass assigns the same ones
    /// again, so the ring is computed once, without a copy, and the writing
    /// pass moves it into the VIP's state.
    fn walk(
        &mut self,
        desired: &BTreeMap<VipAddr, &VipSpec>,
        rebuilt: &BTreeSet<VipAddr>,
        tables: &mut BTreeMap<VipAddr, Vec<u32>>,
        plan: &mut Plan,
        write: bool,
    ) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let removed: Vec<VipAddr> = self
            .vips
            .keys()
            .filter(|v| !desired.contains_key(v))
            .copied()
            .collect();
        for vip in removed {
            let state = &self.vips[&vip];
            plan.pool
                .release(state.ring_offset, state.ring.len() as u32);
            plan.vip_ids.release(state.vip_id);
            for &id in state.backend_ids.values() {
                plan.backend_ids.release(id);
            }
            if write {
                let state = self.vips.remove(&vip).context("VIP vanished")?;
                self.maps.remove_vip(&vip.key())?;
                self.write_vip_address_count(vip.addr)?;
                for &id in state.backend_ids.values() {
                    self.deactivate_backend(id)?;
                }
                report.backends_removed += state.backend_ids.len();
            }
            report.vips_removed.push(vip);
        }

        for (vip, spec) in desired {
            let old = self.vips.get(vip);
            // (vip id, ring offset, region length, VIP settings) as written.
            let old_facts = old.map(|o| {
                (
                    o.vip_id,
                    o.ring_offset,
                    o.ring.len() as u32,
                    VipSettings::of(&o.spec),
                )
            });
            // Backend ids: keep those of backends still present (found by
            // merging the address-sorted backends with the old, sorted map:
            // one lookup per backend in a map of 1000 cost more than the
            // whole merge), new ids for the others in the spec's order.
            let mut by_addr: Vec<(IpAddr, usize)> = (0..)
                .zip(&spec.backends)
                .map(|(i, b)| (b.addr, i))
                .collect();
            // Sorted as `IpAddr` orders (IPv4 first), by integers: two
            // thirds of the time of comparing the enums (1000 backends in
            // random order: 33 against 50 µs).
            by_addr.sort_unstable_by_key(|&(addr, i)| match addr {
                IpAddr::V4(a) => (false, u128::from(a.to_bits()), i),
                IpAddr::V6(a) => (true, a.to_bits(), i),
            });
            let mut kept: Vec<Option<u32>> = vec![None; spec.backends.len()];
            let mut gone = Vec::new();
            if let Some(old) = old {
                let mut new = by_addr.iter().peekable();
                for (&addr, &id) in &old.backend_ids {
                    while new.next_if(|&&(a, _)| a < addr).is_some() {}
                    match new.peek() {
                        Some(&&(a, i)) if a == addr => kept[i] = Some(id),
                        _ => gone.push(id),
                    }
                }
            }
            let mut added = Vec::new();
            // Index in spec.backends → backend id.
            let ids = spec
                .backends
                .iter()
                .zip(kept)
                .map(|(b, kept)| match kept {
                    Some(id) => Ok(id),
                    None => {
                        let id = plan.backend_ids.alloc().with_context(|| {
                            format!("no room for backend {} of VIP {vip}: the map holds {MAX_BACKENDS} backends", b.addr)
                        })?;
                        added.push((id, b.addr));
                        Ok(id)
                    }
                })
                .collect::<Result<Vec<u32>>>()?;
            // `None`: the VIP keeps its ring (moved over, not copied).
            if !write && rebuilt.contains(vip) {
                tables.insert(*vip, self.table_for(spec, &ids)?);
            }
            let ring: Option<Vec<u32>> = match (write, tables.contains_key(vip), old) {
                (false, true, _) => None,
                (true, true, _) => tables.remove(vip),
                (_, false, Some(_)) => None,
                (_, false, None) => bail!("VIP {vip}: no table was built"),
            };
            let region_len = tables
                .get(vip)
                .or(ring.as_ref())
                .map(|r| r.len() as u32)
                .or(old_facts.map(|(_, _, len, _)| len))
                .unwrap_or_default();
            let ring_changed = match (tables.get(vip).or(ring.as_ref()), old) {
                (Some(new), Some(old)) => old.ring != *new,
                (_, None) => true,
                (None, Some(_)) => false,
            };
            let settings = VipSettings::of(spec);
            let flags_changed = old_facts.is_none_or(|(_, _, _, old)| old != settings);
            let affinity_reset = old_facts.is_some_and(|(_, _, _, old)| {
                old.affinity_timeout != 0
                    && (settings.affinity_timeout == 0
                        || old.source_prefix != settings.source_prefix)
            });
            let old = old_facts;
            let vip_id = match old {
                Some((vip_id, ..)) => vip_id,
                None => plan.vip_ids.alloc().with_context(|| {
                    format!("no room for VIP {vip}: the map holds {MAX_VIPS} VIPs")
                })?,
            };
            let ring_offset = if ring_changed {
                let offset = plan.pool.alloc(region_len).with_context(|| {
                    format!(
                        "no room in the ring pool for the {region_len}-slot table of VIP {vip} ({} slots free)",
                        plan.pool.free_slots()
                    )
                })?;
                if let Some((_, old_offset, old_size, _)) = old {
                    plan.pool.release(old_offset, old_size);
                }
                offset
            } else {
                old.map(|(_, offset, ..)| offset).unwrap_or_default()
            };
            for &id in &gone {
                plan.backend_ids.release(id);
            }
            if !write {
                continue;
            }

            // Built once, in the writing pass (1000 backends: 60 µs).
            let backend_ids: BTreeMap<IpAddr, u32> =
                by_addr.iter().map(|&(addr, i)| (addr, ids[i])).collect();
            let gue_port = spec.encap.wire_port();
            for &(id, addr) in &added {
                self.activate_backend(id, addr, vip_id, gue_port)?;
            }
            let ring = match ring {
                Some(ring) => ring,
                None => self
                    .vips
                    .get_mut(vip)
                    .map(|old| std::mem::take(&mut old.ring))
                    .unwrap_or_default(),
            };
            let state = VipState {
                spec: (*spec).clone(),
                vip_id,
                ring_offset,
                ring,
                backend_ids,
            };
            if ring_changed {
                self.maps.write_ring(ring_offset, &state.ring)?;
            }
            if ring_changed || flags_changed {
                if old.is_none() {
                    // A reused VIP id must not show its last owner's
                    // counters, cursor or clients.
                    self.maps.reset_vip_stats(vip_id)?;
                    self.maps.reset_rr_cursor(vip_id)?;
                    self.maps.clear_affinity(vip_id, vip.family())?;
                    self.open_vip_filter(vip.addr)?;
                }
                self.maps.set_vip(&vip.key(), &state.meta())?;
            }
            if affinity_reset {
                // Entries keyed by the old prefix, or of affinity turned off.
                self.maps.clear_affinity(vip_id, vip.family())?;
            }
            // Flags follow the policy, the affinity and the weight (drain),
            // the GUE port the encapsulation; rewriting them keeps the
            // generation, so pins stay valid.
            for (b, &id) in spec.backends.iter().zip(&ids) {
                let flags = state.backend_flags(b.addr, b.weight);
                if self.backend_written[id as usize] != (flags, gue_port) {
                    self.set_backend_flags(id, b.addr, vip_id, flags, gue_port)?;
                }
            }
            // Only now that no ring points at them.
            for &id in &gone {
                self.deactivate_backend(id)?;
            }
            let is_new = old.is_none();
            self.vips.insert(*vip, state);
            if is_new || flags_changed {
                // The address's echo flag follows its VIPs' settings.
                self.write_vip_address_count(vip.addr)?;
            }
            if is_new {
                report.vips_added.push(*vip);
            }
            if ring_changed {
                report.rings_written.push(*vip);
            }
            report.backends_added += added.len();
            report.backends_removed += gone.len();
        }
        Ok(report)
    }

    /// Writes what the data path knows of the VIP address `addr`: how many
    /// VIPs use it and whether it answers echo requests, which it does when
    /// any of them allows it (`VIP_ADDRS` or `VIP6_ADDRS`), and its word of
    /// the address filter, recomputed from every VIP address of both
    /// families (they share the filter).
    fn write_vip_address_count(&mut self, addr: IpAddr) -> Result<()> {
        let on_addr = || self.vips.iter().filter(|(v, _)| v.addr == addr);
        let info = VipAddrInfo {
            vips: on_addr().count() as u16,
            flags: if on_addr().any(|(_, s)| s.spec.icmp_echo) {
                VIP_ADDR_F_ICMP_ECHO
            } else {
                0
            },
        };
        self.maps.set_vip_address(wire_addr(addr), info)?;
        let (word, _) = filter_position(addr);
        self.write_filter_word(word, 0)
    }

    /// Sets `addr`'s filter bit ahead of its first VIP entry, so no packet
    /// for the new VIP is filtered out in between.
    fn open_vip_filter(&mut self, addr: IpAddr) -> Result<()> {
        let (word, bit) = filter_position(addr);
        self.write_filter_word(word, 1 << bit)
    }

    /// Writes filter word `word`: the bits of every VIP address in it,
    /// and `extra`. A bit stays set while any VIP of either family still
    /// hashes to it.
    fn write_filter_word(&mut self, word: u32, extra: u64) -> Result<()> {
        let bits = self
            .vips
            .keys()
            .map(|v| filter_position(v.addr))
            .filter(|&(w, _)| w == word)
            .fold(extra, |bits, (_, bit)| bits | 1 << bit);
        self.maps.set_vip_filter_word(word, bits)
    }

    /// Gives backend id `id` to a new backend: fresh counters and
    /// connection count, a new generation (so flows pinned to the id's last
    /// owner re-select), active. The policy's flags follow in `walk`.
    fn activate_backend(
        &mut self,
        id: u32,
        addr: IpAddr,
        vip_id: u32,
        gue_port: u16,
    ) -> Result<()> {
        self.maps.reset_backend_stats(id)?;
        self.maps.set_backend_conns(id, 0)?;
        // Before the entry whose flag makes the data path read it; an id
        // keeps its address for as long as it is active.
        if let IpAddr::V6(a) = addr {
            self.maps.set_backend_addr6(id, &ipv6_to_wire(a.octets()))?;
        }
        let generation = &mut self.generations[id as usize];
        *generation = generation.wrapping_add(1);
        let family = if addr.is_ipv6() { BACKEND_F_IPV6 } else { 0 };
        self.set_backend_flags(id, addr, vip_id, BACKEND_F_ACTIVE | family, gue_port)
    }

    /// Writes backend id `id` with its current generation, `flags` and
    /// `gue_port` (wire order).
    fn set_backend_flags(
        &mut self,
        id: u32,
        addr: IpAddr,
        vip_id: u32,
        flags: u32,
        gue_port: u16,
    ) -> Result<()> {
        self.maps.set_backend(
            id,
            &Backend {
                addr: match addr {
                    IpAddr::V4(a) => ipv4_to_wire(a.octets()),
                    IpAddr::V6(_) => 0,
                },
                generation: self.generations[id as usize],
                flags,
                vip_id,
                gue_port,
                _pad: 0,
            },
        )?;
        self.backend_written[id as usize] = (flags, gue_port);
        Ok(())
    }

    fn deactivate_backend(&mut self, id: u32) -> Result<()> {
        self.backend_written[id as usize] = (0, 0);
        self.maps.set_backend(
            id,
            &Backend {
                addr: 0,
                generation: self.generations[id as usize],
                flags: 0,
                vip_id: 0,
                gue_port: 0,
                _pad: 0,
            },
        )
    }
}

/// How often the agent reconciles least-conn connection counts with the
/// connection table.
pub const RECONCILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The data path's flow clock now: `CLOCK_MONOTONIC` (which
/// `bpf_ktime_get_coarse_ns` reads, coarsely) in ticks of
/// `2^FLOW_TICK_SHIFT` ns.
fn monotonic_tick() -> Result<u32> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading CLOCK_MONOTONIC");
    }
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    Ok((ns >> FLOW_TICK_SHIFT) as u32)
}

/// An idle timeout in flow-clock ticks, rounded up, plus one tick: a pin is
/// stamped at most once a tick, so its stamp may lag its last packet by one.
fn idle_ticks(seconds: u32) -> u32 {
    let ns = seconds as u64 * 1_000_000_000;
    (ns.div_ceil(1 << FLOW_TICK_SHIFT) + 1).min(u32::MAX as u64) as u32
}

/// Slot of a `maglev` or `maglev-source` VIP's table that a new flow from
/// `src_addr:src_port` hashes to (as the data path's `select::ring_choice`:
/// `flow_hash` for IPv4, `flow_hash6` for IPv6). `None` for a client of
/// the other family than the VIP's: no such packet reaches the VIP.
pub fn ring_slot(spec: &VipSpec, src_addr: IpAddr, src_port: u16) -> Option<u32> {
    let source_only = spec.policy == Policy::MaglevSource;
    let src_port = if source_only {
        0
    } else {
        port_to_wire(src_port)
    };
    let hash = match (spec.vip.key(), src_addr) {
        (AnyVipKey::V4(key), IpAddr::V4(src)) => {
            let mut src = ipv4_to_wire(src.octets());
            if source_only {
                src &= policy::source_mask(spec.source_prefix);
            }
            flow_hash(src, key.addr, src_port, key.port, key.proto)
        }
        (AnyVipKey::V6(key), IpAddr::V6(src)) => {
            let mut src = ipv6_to_wire(src.octets());
            if source_only {
                let mask = ipv6_prefix_mask(spec.source_prefix as u16);
                for (word, mask) in src.iter_mut().zip(mask) {
                    *word &= mask;
                }
            }
            flow_hash6(&src, &key.addr, src_port, key.port, key.proto)
        }
        _ => return None,
    };
    Some(hash % spec.table_size)
}

/// An address's octets: what Maglev's permutation and the table digest
/// hash (an IPv4 address's four, as before IPv6).
fn octets(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Keys of the table digest's SipHash (fixed: every node and every version
/// must hash alike; the digest detects differences, it is no signature).
const DIGEST_KEYS: (u64, u64) = (0x6c62_2d64_6967_6573, 0x7420_7461_626c_6531);

/// One slot of a VIP's region as the digest sees it: backend ids turned
/// into addresses (ids differ between nodes, addresses do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Backend(IpAddr),
    /// `NO_BACKEND`.
    Empty,
    /// A least-conn backend's weight (the slot after its id).
    Weight(u32),
}

/// The table digest of a VIP whose region holds `slots`. It covers what
/// decides a new flow's backend: the VIP, the policy (and its prefix and
/// affinity), the table size and every slot; 128-bit SipHash-1-3, 32 hex
/// digits. A `maglev` or `maglev-source` VIP with the default prefix and
/// no affinity digests as it did before policies existed.
pub fn table_digest(spec: &VipSpec, slots: impl Iterator<Item = Slot>) -> String {
    use std::hash::Hasher;
    let mut h = siphasher::sip128::SipHasher13::new_with_keys(DIGEST_KEYS.0, DIGEST_KEYS.1);
    h.write(&octets(&spec.vip.addr));
    h.write(&spec.vip.port.to_be_bytes());
    // The policy code is where the 0/1 "hash on the source only" byte was.
    h.write(&[spec.vip.proto.number(), spec.policy.code() as u8]);
    if spec.source_prefix != default_source_prefix(spec.vip.addr) || spec.affinity_timeout != 0 {
        h.write(&[spec.source_prefix]);
        h.write(&spec.affinity_timeout.to_be_bytes());
    }
    h.write(&spec.table_size.to_be_bytes());
    for slot in slots {
        // A tag byte keeps "no backend" and weights apart from addresses.
        match slot {
            Slot::Backend(addr) => {
                h.write(&[1]);
                h.write(&octets(&addr));
            }
            Slot::Empty => h.write(&[0]),
            Slot::Weight(w) => {
                h.write(&[2]);
                h.write(&w.to_be_bytes());
            }
        }
    }
    format!(
        "{:032x}",
        siphasher::sip128::Hasher128::finish128(&h).as_u128()
    )
}

/// The region of a spec: its Maglev table, schedule or least-conn pairs
/// (see [`crate::policy`]), where backend `i` of the spec's list appears
/// as `ids[i]`.
fn spec_table(spec: &VipSpec, ids: &[u32]) -> Result<Vec<u32>> {
    ensure!(
        ids.len() == spec.backends.len(),
        "VIP {}: {} backend ids for {} backends",
        spec.vip,
        ids.len(),
        spec.backends.len()
    );
    let weights = || spec.backends.iter().map(|b| b.weight).collect::<Vec<u32>>();
    let mut region = match spec.policy {
        Policy::Maglev | Policy::MaglevSource => {
            // Built with the ids themselves: a Maglev table is as large as
            // 2^24 slots, and mapping indexes to ids afterwards took a
            // twentieth of the build (65537 slots).
            let backends: Vec<MaglevBackend> = spec
                .backends
                .iter()
                .zip(ids)
                .map(|(b, &id)| MaglevBackend {
                    id,
                    identity: octets(&b.addr),
                    weight: b.weight,
                })
                .collect();
            return Ok(maglev::build_table(&backends, spec.table_size)?);
        }
        Policy::Random | Policy::RoundRobin => policy::schedule(&weights()),
        Policy::LeastConn => policy::least_conn_pairs(&weights()),
    };
    // Slot values are indexes into the spec's backend list (least-conn:
    // every other slot is a weight).
    for slot in region.iter_mut().step_by(id_step(spec.policy)) {
        if let Some(&id) = ids.get(*slot as usize) {
            *slot = id;
        }
    }
    Ok(region)
}

/// `spec_table` with each backend's index in the spec's list as its id.
fn spec_table_of_indexes(spec: &VipSpec) -> Result<Vec<u32>> {
    let indexes: Vec<u32> = (0..spec.backends.len() as u32).collect();
    spec_table(spec, &indexes)
}

/// A VIP's table computed without any map: what every LB node given the same
/// spec sends each new flow to.
pub struct RingModel {
    spec: VipSpec,
    table: Vec<u32>,
}

impl RingModel {
    pub fn new(spec: &VipSpec) -> Result<Self> {
        validate(std::slice::from_ref(spec))?;
        let table = spec_table_of_indexes(spec)?;
        Ok(Self {
            spec: spec.clone(),
            table,
        })
    }

    /// The digest [`DataPlane::table_digest`] reports for a node that
    /// serves this spec, computed without any map.
    pub fn digest(&self) -> String {
        let step = id_step(self.spec.policy);
        table_digest(
            &self.spec,
            self.table.iter().enumerate().map(|(k, &i)| {
                if k % step != 0 {
                    Slot::Weight(i)
                } else {
                    match self.spec.backends.get(i as usize) {
                        Some(b) => Slot::Backend(b.addr),
                        None => Slot::Empty,
                    }
                }
            }),
        )
    }

    /// The backend a new flow from `src_addr:src_port` gets; `None` for a
    /// policy that is not a hash, or with affinity (see
    /// [`DataPlane::ring_choice`]).
    /// `None` too for a client of the other family than the VIP's.
    pub fn choose(&self, src_addr: IpAddr, src_port: u16) -> Option<IpAddr> {
        if !self.spec.policy.is_hash() || self.spec.affinity_timeout != 0 {
            return None;
        }
        let index = *self
            .table
            .get(ring_slot(&self.spec, src_addr, src_port)? as usize)?;
        self.spec.backends.get(index as usize).map(|b| b.addr)
    }
}

/// The family rule of one backend: an IPv6 backend needs the node's IPv6
/// source address (`DataPathConfig::lb_source_addr6`, all zero without
/// one). Any mix of families in one VIP is served: every backend has its
/// own tunnel (IP-in-IP or GUE over the backend's family).
pub fn check_backend_family(backend: IpAddr, has_source6: bool) -> Result<(), String> {
    if backend.is_ipv4() {
        Ok(())
    } else if !has_source6 {
        Err(format!(
            "backend {backend} is IPv6, but the agent has no IPv6 source address \
             (set source_address6 to reach IPv6 backends)"
        ))
    } else {
        Ok(())
    }
}

/// [`check_backend_family`] for every backend of `desired`.
pub fn check_families(desired: &[VipSpec], has_source6: bool) -> Result<()> {
    for spec in desired {
        for b in &spec.backends {
            check_backend_family(b.addr, has_source6)
                .map_err(|e| anyhow::anyhow!("VIP {}: {e}", spec.vip))?;
        }
    }
    Ok(())
}

/// Checks a whole desired state: no duplicate VIP or backend, valid table
/// sizes, capacity.
pub fn validate(desired: &[VipSpec]) -> Result<()> {
    if desired.len() > MAX_VIPS as usize {
        bail!(
            "{} VIPs configured; the data path holds at most {MAX_VIPS}",
            desired.len()
        );
    }
    let mut seen = BTreeSet::new();
    let mut backends = 0usize;
    for spec in desired {
        if !seen.insert(spec.vip) {
            bail!("VIP {} is configured twice", spec.vip);
        }
        maglev::validate_table_size(spec.table_size)
            .with_context(|| format!("VIP {}: table_size {}", spec.vip, spec.table_size))?;
        let weights: Vec<u32> = spec.backends.iter().map(|b| b.weight).collect();
        policy::check_backends(spec.policy, &weights, spec.table_size)
            .with_context(|| format!("VIP {}", spec.vip))?;
        let prefixes = policy::source_prefix_range(spec.vip.addr);
        if !prefixes.contains(&spec.source_prefix) {
            bail!(
                "VIP {}: source prefix /{} is out of range /{}-/{}",
                spec.vip,
                spec.source_prefix,
                prefixes.start(),
                prefixes.end()
            );
        }
        if spec.affinity_timeout > policy::MAX_AFFINITY_TIMEOUT_S {
            bail!(
                "VIP {}: affinity timeout {} s is above the maximum {} s",
                spec.vip,
                spec.affinity_timeout,
                policy::MAX_AFFINITY_TIMEOUT_S
            );
        }
        if spec.backends.len() >= spec.table_size as usize {
            bail!(
                "VIP {}: {} backends need a table larger than {}",
                spec.vip,
                spec.backends.len(),
                spec.table_size
            );
        }
        for b in &spec.backends {
            if !is_unicast(b.addr) {
                bail!(
                    "VIP {}: backend address {} is not a unicast address",
                    spec.vip,
                    b.addr
                );
            }
        }
        // A sorted vector, not a `BTreeSet`: this runs on every change, and
        // for 1000 backends the set's allocations cost more than the sort.
        let mut addrs: Vec<IpAddr> = spec.backends.iter().map(|b| b.addr).collect();
        addrs.sort_unstable();
        if let Some(pair) = addrs.windows(2).find(|pair| pair[0] == pair[1]) {
            bail!("VIP {}: backend {} is listed twice", spec.vip, pair[0]);
        }
        backends += spec.backends.len();
    }
    if backends > MAX_BACKENDS as usize {
        bail!("{backends} backends configured; the data path holds at most {MAX_BACKENDS}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_allocator_reuses_and_coalesces() {
        let mut pool = RingAllocator::new(100);
        let a = pool.alloc(30).expect("room for a");
        let b = pool.alloc(30).expect("room for b");
        let c = pool.alloc(30).expect("room for c");
        assert_eq!((a, b, c), (0, 30, 60));
        assert_eq!(pool.alloc(11), None, "only 10 slots are left");
        pool.release(b, 30);
        pool.release(a, 30);
        assert_eq!(pool.alloc(60), Some(0), "freed neighbours coalesce");
        pool.release(0, 60);
        pool.release(c, 30);
        assert_eq!(pool.free_slots(), 100);
        assert_eq!(pool.alloc(100), Some(0));
    }

    #[test]
    fn id_allocator_gives_the_lowest_free_id() {
        let mut ids = IdAllocator::new(70);
        assert_eq!(
            (0..70).map(|_| ids.alloc()).collect::<Vec<_>>(),
            (0..70).map(Some).collect::<Vec<_>>()
        );
        assert_eq!(ids.alloc(), None, "only 70 ids");
        ids.release(65);
        ids.release(3);
        assert_eq!(ids.alloc(), Some(3));
        assert!(ids.take(65));
        assert!(!ids.take(65), "taken twice");
        assert!(!ids.take(70), "beyond the capacity");
        assert_eq!(ids.alloc(), None);
    }

    fn spec(port: u16, backends: &[(u8, u32)]) -> VipSpec {
        VipSpec {
            vip: VipAddr {
                addr: Ipv4Addr::new(198, 18, 0, 1).into(),
                port,
                proto: Protocol::Tcp,
            },
            table_size: 65537,
            policy: Policy::Maglev,
            source_prefix: 32,
            affinity_timeout: 0,
            icmp_echo: true,
            encap: Encap::Ipip,
            backends: backends
                .iter()
                .map(|&(last, weight)| BackendSpec {
                    addr: Ipv4Addr::new(198, 19, 0, last).into(),
                    weight,
                })
                .collect(),
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let err = validate(&[spec(80, &[(1, 1)]), spec(80, &[(2, 1)])]).unwrap_err();
        assert!(err.to_string().contains("configured twice"), "{err}");
        let err = validate(&[spec(80, &[(1, 1), (1, 2)])]).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        let mut bad = spec(80, &[(1, 1)]);
        bad.table_size = 65536;
        let err = validate(&[bad]).unwrap_err();
        assert!(format!("{err:#}").contains("65536"), "{err:#}");
        let mut bad = spec(80, &[(1, 1)]);
        bad.backends[0].addr = Ipv4Addr::new(224, 0, 0, 1).into();
        assert!(validate(&[bad]).is_err());
        let many: Vec<VipSpec> = (0..=MAX_VIPS as u16).map(|p| spec(p, &[])).collect();
        assert!(validate(&many).unwrap_err().to_string().contains("at most"));
    }

    fn v6(text: &str) -> IpAddr {
        text.parse().expect("an IPv6 address")
    }

    /// An IPv6 VIP, `[2001:db8::10]:443/tcp`, with these backends.
    fn spec6(backends: &[&str]) -> VipSpec {
        let backends: Vec<(IpAddr, u32)> = backends
            .iter()
            .map(|b| (b.parse().expect("an address"), 1))
            .collect();
        let mut spec = VipSpec::new(
            VipAddr {
                addr: v6("2001:db8::10"),
                port: 443,
                proto: Protocol::Tcp,
            },
            &backends,
        );
        spec.table_size = 251;
        spec
    }

    #[test]
    fn the_ring_model_predicts_ipv6_flows_with_flow_hash6() {
        let spec = spec6(&["2001:db8:1::2", "198.19.0.2", "2001:db8:1::3"]);
        assert_eq!(spec.source_prefix, 128);
        let model = RingModel::new(&spec).expect("a mixed-family VIP");
        let table = spec_table_of_indexes(&spec).expect("a table");
        let dst = lb_common::ipv6_to_wire(match spec.vip.addr {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(_) => unreachable!("an IPv6 VIP"),
        });
        let mut seen = BTreeSet::new();
        for i in 0..200u16 {
            let client = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, i, 7);
            let port = 40000 + i;
            // What the data path computes for the packet, from the wire.
            let hash = lb_common::flow_hash6(
                &lb_common::ipv6_to_wire(client.octets()),
                &dst,
                port.to_be(),
                443u16.to_be(),
                IPPROTO_TCP,
            );
            let want = spec.backends[table[(hash % spec.table_size) as usize] as usize].addr;
            assert_eq!(model.choose(client.into(), port), Some(want));
            seen.insert(want);
        }
        assert_eq!(seen.len(), 3, "every backend gets flows: {seen:?}");
        assert_eq!(
            model.choose(Ipv4Addr::new(198, 18, 10, 2).into(), 40000),
            None,
            "no IPv4 client reaches an IPv6 VIP"
        );
    }

    #[test]
    fn maglev_source_masks_ipv6_clients_to_their_prefix() {
        let mut spec = spec6(&["2001:db8:1::2", "2001:db8:1::3", "2001:db8:1::4"]);
        spec.policy = Policy::MaglevSource;
        spec.source_prefix = 64;
        let model = RingModel::new(&spec).expect("valid");
        let mut per_prefix = BTreeSet::new();
        for net in 0..40u16 {
            let first = model.choose(v6(&format!("2001:db8:{net:x}::1")), 1000);
            for host in ["::2", "::ffff:1", "::1:0:0:9"] {
                let other = v6(&format!("2001:db8:{net:x}{host}"));
                assert_eq!(model.choose(other, 2000 + net), first, "{other}");
            }
            per_prefix.insert(first);
        }
        assert!(per_prefix.len() > 1, "prefixes spread: {per_prefix:?}");
    }

    #[test]
    fn ipv6_digests_cover_the_whole_address() {
        let a = RingModel::new(&spec6(&["2001:db8:1::2", "2001:db8:1::3"])).expect("valid");
        let b = RingModel::new(&spec6(&["2001:db8:1::2", "2001:db8:2::3"])).expect("valid");
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest().len(), 32);
    }

    #[test]
    fn family_rules_name_the_backend() {
        // GUE carries either family over either family.
        let mut gue = spec6(&["198.19.0.2", "2001:db8:1::2"]);
        gue.encap = Encap::Gue { port: 6080 };
        check_families(std::slice::from_ref(&gue), true).expect("GUE to an IPv6 backend");
        RingModel::new(&gue).expect("a model of a mixed GUE VIP");
        let e = check_families(std::slice::from_ref(&gue), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VIP [2001:db8::10]:443/tcp: backend 2001:db8:1::2 is IPv6, but the agent has no IPv6 source address (set source_address6 to reach IPv6 backends)"
        );
        let plain = spec6(&["2001:db8:1::2"]);
        let e = check_families(std::slice::from_ref(&plain), false).unwrap_err();
        assert!(e.to_string().contains("no IPv6 source address"), "{e}");
        check_families(std::slice::from_ref(&plain), true).expect("with a source");
        check_families(&[spec6(&["198.19.0.2"])], false).expect("6in4 needs no IPv6 source");
        let mut wide = spec6(&["2001:db8:1::2"]);
        wide.source_prefix = 129;
        assert!(validate(&[wide.clone()])
            .unwrap_err()
            .to_string()
            .contains("/1-/128"));
        wide.source_prefix = 128;
        validate(&[wide]).expect("/128 is an IPv6 VIP's whole address");
        let mut v4 = spec(80, &[(1, 1)]);
        v4.source_prefix = 33;
        assert!(validate(&[v4]).unwrap_err().to_string().contains("/1-/32"));
        let mut bad = spec6(&["2001:db8:1::2"]);
        bad.backends[0].addr = v6("ff02::1");
        assert!(validate(&[bad]).is_err());
    }

    #[test]
    fn ipv6_keys_and_filter_positions() {
        let vip = spec6(&[]).vip;
        assert_eq!(vip.family(), Family::V6);
        match vip.key() {
            AnyVipKey::V6(k) => {
                assert_eq!(
                    k.addr,
                    lb_common::ipv6_to_wire(
                        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10).octets()
                    )
                );
                assert_eq!(k.port, 443u16.to_be());
                assert_eq!(k.proto, IPPROTO_TCP);
            }
            other => panic!("an IPv6 VIP's key: {other:?}"),
        }
        let AnyVipAddr::V6(wire) = wire_addr(vip.addr) else {
            panic!("an IPv6 address");
        };
        assert_eq!(filter_position(vip.addr), vip6_filter_position(&wire));
        assert!(matches!(spec(80, &[]).vip.key(), AnyVipKey::V4(_)));
    }
}
