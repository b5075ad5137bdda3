//! The backends' `decap` program, pinned in bpffs like the balancer so it
//! stays attached after `lb-decap` exits: the link and both maps live under
//! `<pin root>/<interface>/` (default `/sys/fs/bpf/lb-decap/eth0/`).
//!
//! This module sits on top of [`crate::loader`] and [`crate::pins`]; they
//! know nothing of it.

use std::{
    collections::BTreeSet,
    mem::size_of,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use lb_common::{
    ipv4_from_wire, ipv4_to_wire, names, port_from_wire, port_to_wire, DecapStats, MAX_DECAP_ADDRS,
    MAX_DECAP_GUE_PORTS,
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
        (names::DECAP_GUE_PORTS, size_of::<u16>(), size_of::<u8>()),
        (
            names::DECAP_STATS,
            size_of::<u32>(),
            size_of::<DecapStats>(),
        ),
    ],
    detach_command: "lb-decap detach",
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
    addrs: &[Ipv4Addr],
    gue_ports: &[u16],
    mode: XdpModeSetting,
) -> Result<Attached> {
    let wanted: BTreeSet<Ipv4Addr> = addrs.iter().copied().collect();
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
    if wanted.is_empty() {
        bail!("address: at least one local address is needed (--address)");
    }
    if wanted.len() > MAX_DECAP_ADDRS as usize {
        bail!(
            "address: at most {MAX_DECAP_ADDRS} local addresses, not {}",
            wanted.len()
        );
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

fn load_and_attach(
    pins: &Pins,
    interface: &str,
    wanted: &BTreeSet<Ipv4Addr>,
    ports: &BTreeSet<u16>,
    mode: XdpModeSetting,
) -> Result<Attached> {
    let mut ebpf = loader::load_decap_pinned(&pins.map_paths())?;
    let mut port_set: HashMap<&mut MapData, u16, u8> = HashMap::try_from(
        ebpf.map_mut(names::DECAP_GUE_PORTS)
            .context("the decap object has no DECAP_GUE_PORTS map")?,
    )
    .context("DECAP_GUE_PORTS is not a hash map")?;
    for &port in ports {
        port_set
            .insert(port_to_wire(port), 1, 0)
            .with_context(|| format!("adding GUE port {port}"))?;
    }
    let stale: Vec<u16> = port_set
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !ports.contains(&port_from_wire(*k)))
        .collect();
    for key in stale {
        port_set
            .remove(&key)
            .with_context(|| format!("removing GUE port {}", port_from_wire(key)))?;
    }
    // Through the pinned map, so the running program (if any) sees the new
    // set at once; added before the old ones go, so no address that stays
    // is ever missing.
    let mut set = addresses_map(
        ebpf.map_mut(names::DECAP_ADDRS)
            .context("the decap object has no DECAP_ADDRS map")?,
    )?;
    for addr in wanted {
        set.insert(ipv4_to_wire(addr.octets()), 1, 0)
            .with_context(|| format!("adding decap address {addr}"))?;
    }
    let stale: Vec<u32> = set
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(&Ipv4Addr::from(ipv4_from_wire(*k))))
        .collect();
    for key in stale {
        set.remove(&key).with_context(|| {
            format!(
                "removing decap address {}",
                Ipv4Addr::from(ipv4_from_wire(key))
            )
        })?;
    }
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
    pub addresses: Vec<Ipv4Addr>,
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
    let set = addresses_map(&mut set_map)?;
    let mut addresses: Vec<Ipv4Addr> = set
        .keys()
        .map(|k| k.map(|k| Ipv4Addr::from(ipv4_from_wire(k))))
        .collect::<Result<_, _>>()
        .context("reading DECAP_ADDRS")?;
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

fn addresses_map(map: &mut Map) -> Result<HashMap<&mut MapData, u32, u8>> {
    HashMap::try_from(map).context("DECAP_ADDRS is not a hash map")
}

fn open_pinned(pins: &Pins, name: &str, kind: fn(MapData) -> Map) -> Result<Map> {
    let path = pins.map_path(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(kind(data))
}
