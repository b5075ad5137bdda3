//! The backends' `decap` program, pinned in bpffs like the balancer so it
//! stays attached after `lb-decap` exits: the link and both maps live under
//! `<pin root>/<interface>/` (default `/sys/fs/bpf/lb-decap/eth0/`).
//!
//! This module sits on top of [`crate::loader`] and [`crate::pins`]; they
//! know nothing of it.

use std::{
    collections::BTreeSet,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use lb_common::{
    ipv4_from_wire, ipv4_to_wire, ipv6_from_wire, ipv6_to_wire, names, port_from_wire,
    port_to_wire, DecapStats, Ipv6Wire, MAX_DECAP_ADDRS, MAX_DECAP_GUE_PORTS,
};
use serde::Serialize;

use crate::{
    loader,
    loader::XdpModeSetting,
    pins::{PinnedMaps, Pins},
};

pub const DEFAULT_DECAP_PIN_ROOT: &str = "/sys/fs/bpf/lb-decap";

/// The decap maps that outlive `lb-decap attach`.
pub const DECAP_MAPS: PinnedMaps = PinnedMaps {
    maps: &[
        (names::DECAP_ADDRS, size_of::<u32>(), size_of::<u8>()),
        (names::DECAP_ADDRS6, size_of::<Ipv6Wire>(), size_of::<u8>()),
        (names::DECAP_GUE_PORTS, size_of::<u16>(), size_of::<u8>()),
        (
            names::DECAP_STATS,
            size_of::<u32>(),
            size_of::<DecapStats>(),
        ),
    ],
    detach_command: "lb-decap detach",
    // Decap attached before IPv6 has no IPv6 address set: created empty
    // when the new program is swapped in.
    created_if_missing: &[names::DECAP_ADDRS6],
};

/// The decap pins of `interface` under `root`.
pub fn pins(root: &Path, interface: &str) -> Pins {
    Pins::with_maps(root, interface, DECAP_MAPS)
}

/// What [`attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// Attached afresh in this mode.
    New(XdpModeSetting),
    /// A decap program was attached already: the new one was swapped into
    /// its link (its XDP mode stays) and the address set replaced.
    Updated,
}

/// Attaches `decap` to `interface` with `addrs` as its local addresses and
/// `gue_ports` as the UDP ports of its GUE packets, and pins it, or, when it
/// is pinned there already, swaps the new program into the pinned link and
/// makes the address and port sets exactly these. Traffic to an address
/// and port that stay in the sets is never passed undecapsulated.
pub fn attach(
    pins: &Pins,
    interface: &str,
    addrs: &[IpAddr],
    gue_ports: &[u16],
    mode: XdpModeSetting,
) -> Result<Attached> {
    let wanted = WireAddrs::of(addrs);
    let ports: BTreeSet<u16> = gue_ports.iter().copied().collect();
    if ports.contains(&0) {
        bail!("gue-port: 0 is not a UDP port");
    }
    if ports.len() > MAX_DECAP_GUE_PORTS as usize {
        bail!(
            "gue-port: at most {MAX_DECAP_GUE_PORTS} GUE ports, not {}",
            ports.len()
        );
    }
    if wanted.v4.is_empty() && wanted.v6.is_empty() {
        bail!("address: at least one local address is needed (--address)");
    }
    for (family, n) in [("IPv4", wanted.v4.len()), ("IPv6", wanted.v6.len())] {
        if n > MAX_DECAP_ADDRS as usize {
            bail!("address: at most {MAX_DECAP_ADDRS} local {family} addresses, not {n}");
        }
    }
    crate::host::interface_index(interface)?;
    pins.prepare()?;
    let updating = pins.attached();
    if updating {
        pins.check_compatible(0, 0)?;
    }
    let result = load_and_attach(pins, interface, &wanted, &ports, mode);
    if result.is_err() && !updating {
        // A first attach that failed leaves nothing pinned behind.
        if let Err(e) = pins.remove() {
            log::warn!("{e:#}");
        }
    }
    result
}

/// Local addresses as the decap maps hold them, one set per family.
pub(crate) struct WireAddrs {
    pub(crate) v4: BTreeSet<u32>,
    pub(crate) v6: BTreeSet<Ipv6Wire>,
}

impl WireAddrs {
    pub(crate) fn of(addrs: &[IpAddr]) -> Self {
        let mut wire = WireAddrs {
            v4: BTreeSet::new(),
            v6: BTreeSet::new(),
        };
        for addr in addrs {
            match addr {
                IpAddr::V4(a) => wire.v4.insert(ipv4_to_wire(a.octets())),
                IpAddr::V6(a) => wire.v6.insert(ipv6_to_wire(a.octets())),
            };
        }
        wire
    }
}

/// Makes the set `name` (key → 1) of `ebpf` exactly `wanted`. Through the
/// pinned map, so the running program (if any) sees the new set at once;
/// added before the old ones go, so no key that stays is ever missing.
/// `show` names a key in errors.
pub(crate) fn sync_set<K: aya::Pod + Ord>(
    ebpf: &mut aya::Ebpf,
    name: &str,
    wanted: &BTreeSet<K>,
    show: impl Fn(K) -> String,
) -> Result<()> {
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("the decap object has no {name} map"))?;
    let mut set: HashMap<&mut MapData, K, u8> =
        HashMap::try_from(map).with_context(|| format!("{name} is not a hash map"))?;
    for key in wanted {
        set.insert(key, 1, 0)
            .with_context(|| format!("adding {} to {name}", show(*key)))?;
    }
    let stale: Vec<K> = set
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(k))
        .collect();
    for key in stale {
        set.remove(&key)
            .with_context(|| format!("removing {} from {name}", show(key)))?;
    }
    Ok(())
}

fn show_v4(addr: u32) -> String {
    Ipv4Addr::from(ipv4_from_wire(addr)).to_string()
}

fn show_v6(addr: Ipv6Wire) -> String {
    Ipv6Addr::from(ipv6_from_wire(addr)).to_string()
}

/// Fills the sets of a loaded decap object: local addresses of both
/// families and GUE ports.
pub(crate) fn sync_sets(
    ebpf: &mut aya::Ebpf,
    wanted: &WireAddrs,
    ports: &BTreeSet<u16>,
) -> Result<()> {
    let ports: BTreeSet<u16> = ports.iter().map(|&p| port_to_wire(p)).collect();
    sync_set(ebpf, names::DECAP_GUE_PORTS, &ports, |p| {
        format!("GUE port {}", port_from_wire(p))
    })?;
    sync_set(ebpf, names::DECAP_ADDRS, &wanted.v4, show_v4)?;
    sync_set(ebpf, names::DECAP_ADDRS6, &wanted.v6, show_v6)
}

fn load_and_attach(
    pins: &Pins,
    interface: &str,
    wanted: &WireAddrs,
    ports: &BTreeSet<u16>,
    mode: XdpModeSetting,
) -> Result<Attached> {
    let mut ebpf = loader::load_decap_pinned(&pins.map_paths())?;
    sync_sets(&mut ebpf, wanted, ports)?;
    match pins.attach(&mut ebpf, names::DECAP_PROGRAM, interface, mode)? {
        Some(mode) => Ok(Attached::New(mode)),
        None => Ok(Attached::Updated),
    }
}

/// What `lb-decap status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub interface: String,
    pub pin_dir: PathBuf,
    pub link_id: u32,
    pub program_id: u32,
    /// IPv4 first, then IPv6.
    pub addresses: Vec<IpAddr>,
    /// UDP ports whose GUE packets it strips.
    pub gue_ports: Vec<u16>,
    /// Summed over CPUs.
    pub counters: Counters,
}

/// [`DecapStats`] summed over CPUs, with names for JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counters {
    pub decapsulated: u64,
    pub gue_decapsulated: u64,
    pub passed: u64,
    pub malformed: u64,
}

/// The pinned decap program of `interface`, or `None` when there is none.
pub fn status(pins: &Pins, interface: &str) -> Result<Option<Status>> {
    let Some(link) = pins.link()? else {
        return Ok(None);
    };
    let info = link.info().context("reading the pinned link's info")?;
    let mut set_map = open_pinned(pins, names::DECAP_ADDRS, Map::HashMap)?;
    let set: HashMap<&mut MapData, u32, u8> =
        HashMap::try_from(&mut set_map).context("DECAP_ADDRS is not a hash map")?;
    let mut addresses: Vec<IpAddr> = set
        .keys()
        .map(|k| k.map(|k| IpAddr::V4(Ipv4Addr::from(ipv4_from_wire(k)))))
        .collect::<Result<_, _>>()
        .context("reading DECAP_ADDRS")?;
    // A decap attached before IPv6 has no DECAP_ADDRS6: no IPv6 addresses.
    if pins.map_path(names::DECAP_ADDRS6).exists() {
        let mut set_map = open_pinned(pins, names::DECAP_ADDRS6, Map::HashMap)?;
        let set: HashMap<&mut MapData, Ipv6Wire, u8> =
            HashMap::try_from(&mut set_map).context("DECAP_ADDRS6 is not a hash map")?;
        for k in set.keys() {
            let k = k.context("reading DECAP_ADDRS6")?;
            addresses.push(IpAddr::V6(Ipv6Addr::from(ipv6_from_wire(k))));
        }
    }
    addresses.sort();
    let mut ports_map = open_pinned(pins, names::DECAP_GUE_PORTS, Map::HashMap)?;
    let ports: HashMap<&mut MapData, u16, u8> =
        HashMap::try_from(&mut ports_map).context("DECAP_GUE_PORTS is not a hash map")?;
    let mut gue_ports: Vec<u16> = ports
        .keys()
        .map(|k| k.map(port_from_wire))
        .collect::<Result<_, _>>()
        .context("reading DECAP_GUE_PORTS")?;
    gue_ports.sort();
    let stats_map = open_pinned(pins, names::DECAP_STATS, Map::PerCpuArray)?;
    let stats: PerCpuArray<_, DecapStats> =
        PerCpuArray::try_from(&stats_map).context("DECAP_STATS is not a per-CPU array")?;
    let sum = stats
        .get(&0, 0)
        .context("reading DECAP_STATS")?
        .iter()
        .fold(DecapStats::default(), |acc, s| acc.sum(s));
    let counters = Counters {
        decapsulated: sum.decapsulated,
        gue_decapsulated: sum.gue_decapsulated,
        passed: sum.passed,
        malformed: sum.malformed,
    };
    Ok(Some(Status {
        interface: interface.to_string(),
        pin_dir: pins.dir().to_path_buf(),
        link_id: info.id(),
        program_id: info.program_id(),
        addresses,
        gue_ports,
        counters,
    }))
}

/// Removes the pins (detaching the program); returns whether a program was
/// attached.
pub fn detach(pins: &Pins) -> Result<bool> {
    let was_attached = pins.attached();
    pins.remove()?;
    Ok(was_attached)
}

fn open_pinned(pins: &Pins, name: &str, kind: fn(MapData) -> Map) -> Result<Map> {
    let path = pins.map_path(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(kind(data))
}
