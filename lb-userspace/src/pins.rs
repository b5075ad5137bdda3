//! Pinning the data path in bpffs, so it outlives the agent.
//!
//! The XDP link and the data maps are pinned under
//! `<pin root>/<interface>/`. An agent that stops (upgrade, crash,
//! `kill -9`) leaves the program attached and forwarding with the last
//! tables. The next agent loads its program onto the *same* maps (the
//! connection table included) and swaps it into the pinned link with one
//! `bpf_link_update`: no packet meets a detached interface or an empty
//! table. `lb-agent --detach` removes the pins, which detaches the program.
//!
//! The backends' `decap` program is pinned the same way (see
//! [`crate::decap`]), with its own set of maps: [`PinnedMaps`] names them.

use std::{
    mem::size_of,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::MapInfo,
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
    Ebpf,
};
use lb_common::{
    names, Affinity6Key, AffinityKey, AffinityPin, Backend, BackendStats, Flow6Key, FlowKey,
    FlowPin, GlobalStats, Ipv6Wire, RingEntry, Vip6Key, VipAddrInfo, VipKey, VipMeta, VipStats,
    RING_SLOTS_PER_ENTRY,
};

use crate::loader::{self, XdpModeSetting};

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/lb";

/// The maps of one object that outlive the process that loaded it, with
/// their key and value sizes, and the command that removes them (named in
/// the error when pinned maps of another shape are found).
#[derive(Debug, Clone, Copy)]
pub struct PinnedMaps {
    pub maps: &'static [(&'static str, usize, usize)],
    pub detach_command: &'static str,
    /// Maps a data path pinned by an older version may lack, which the
    /// loader creates (empty) and pins when it adopts that data path: what
    /// they hold starts empty anyway, so adoption stays hitless.
    pub created_if_missing: &'static [&'static str],
}

/// The balancer's pinned maps. (Not the log ring or the read-only globals:
/// those belong to one program.)
pub const BALANCER_MAPS: PinnedMaps = PinnedMaps {
    maps: BALANCER_MAP_SHAPES,
    detach_command: "lb-agent --detach",
    // The IPv6 maps: an agent before IPv6 pinned none, and an empty one
    // is what the data path of a node without IPv6 VIPs and backends reads.
    created_if_missing: &[
        names::VIPS6,
        names::VIP6_ADDRS,
        names::FLOWS6,
        names::BACKEND_ADDRS6,
        names::AFFINITY6,
        names::PROGRAMS,
    ],
};

const BALANCER_MAP_SHAPES: &[(&str, usize, usize)] = &[
    (names::VIPS, size_of::<VipKey>(), size_of::<VipMeta>()),
    (names::VIP_ADDRS, size_of::<u32>(), size_of::<VipAddrInfo>()),
    (names::VIP_FILTER, size_of::<u32>(), size_of::<u64>()),
    (names::RINGS, size_of::<u32>(), size_of::<RingEntry>()),
    (names::BACKENDS, size_of::<u32>(), size_of::<Backend>()),
    (names::FLOWS, size_of::<FlowKey>(), size_of::<FlowPin>()),
    (names::VIP_STATS, size_of::<u32>(), size_of::<VipStats>()),
    (
        names::BACKEND_STATS,
        size_of::<u32>(),
        size_of::<BackendStats>(),
    ),
    (
        names::GLOBAL_STATS,
        size_of::<u32>(),
        size_of::<GlobalStats>(),
    ),
    (names::RR_CURSORS, size_of::<u32>(), size_of::<u32>()),
    (names::BACKEND_CONNS, size_of::<u32>(), size_of::<i64>()),
    (
        names::AFFINITY,
        size_of::<AffinityKey>(),
        size_of::<AffinityPin>(),
    ),
    (names::VIPS6, size_of::<Vip6Key>(), size_of::<VipMeta>()),
    (
        names::VIP6_ADDRS,
        size_of::<Ipv6Wire>(),
        size_of::<VipAddrInfo>(),
    ),
    (names::FLOWS6, size_of::<Flow6Key>(), size_of::<FlowPin>()),
    (
        names::BACKEND_ADDRS6,
        size_of::<u32>(),
        size_of::<Ipv6Wire>(),
    ),
    (
        names::AFFINITY6,
        size_of::<Affinity6Key>(),
        size_of::<AffinityPin>(),
    ),
    // balancer6's slot for the tail call: pinned, because the kernel
    // empties a program array that no process or pin holds.
    (names::PROGRAMS, size_of::<u32>(), size_of::<u32>()),
];

const LINK: &str = "link";

/// The pin directory of one interface.
#[derive(Debug, Clone)]
pub struct Pins {
    root: PathBuf,
    dir: PathBuf,
    maps: PinnedMaps,
}

impl Pins {
    /// The balancer's pins of `interface`.
    pub fn new(root: &Path, interface: &str) -> Self {
        Self::with_maps(root, interface, BALANCER_MAPS)
    }

    /// The pins of another object (`decap`) on `interface`.
    pub fn with_maps(root: &Path, interface: &str, maps: PinnedMaps) -> Self {
        Self {
            root: root.to_path_buf(),
            dir: root.join(interface),
            maps,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a previous agent left the data path attached here.
    pub fn attached(&self) -> bool {
        self.dir.join(LINK).exists()
    }

    /// Prepares the directory: mounts bpffs if needed, and removes maps
    /// left without a link (nothing uses them; starting over is right).
    pub fn prepare(&self) -> Result<()> {
        crate::host::ensure_bpffs(&self.root)?;
        if !self.attached() && self.dir.exists() {
            log::info!(
                "removing stale pinned maps in {} (no program attached)",
                self.dir.display()
            );
            self.remove()?;
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))
    }

    /// Refuses pinned maps whose shape differs from what this agent would
    /// create (another version's layout, or other sizes in the config).
    pub fn check_compatible(&self, ring_pool_slots: u32, flow_table_entries: u32) -> Result<()> {
        for &(name, key, value) in self.maps.maps {
            let path = self.dir.join(name);
            if !path.exists() && self.maps.created_if_missing.contains(&name) {
                log::info!(
                    "pinned data path in {} has no map {name} (pinned by an older version): \
                     it is created empty",
                    self.dir.display()
                );
                continue;
            }
            let info = MapInfo::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            let max_entries = match name {
                names::RINGS => Some(ring_pool_slots.div_ceil(RING_SLOTS_PER_ENTRY)),
                names::FLOWS | names::FLOWS6 => Some(flow_table_entries),
                _ => None,
            };
            if info.key_size() as usize != key
                || info.value_size() as usize != value
                || max_entries.is_some_and(|m| m != info.max_entries())
            {
                bail!(
                    "pinned map {} does not match this program (key {} / value {} / {} entries); \
                     run `{}` to remove the old data path and start over",
                    path.display(),
                    info.key_size(),
                    info.value_size(),
                    info.max_entries(),
                    self.maps.detach_command
                );
            }
        }
        Ok(())
    }

    /// The pin path of map `name`.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The pinned link, if there is one.
    pub fn link(&self) -> Result<Option<FdLink>> {
        let path = self.dir.join(LINK);
        if !self.attached() {
            return Ok(None);
        }
        let pinned = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening the pinned link {}", path.display()))?;
        Ok(Some(FdLink::from(pinned)))
    }

    /// Pin paths for the loader: existing maps are reused, new ones pinned.
    pub fn map_paths(&self) -> Vec<(&'static str, PathBuf)> {
        self.maps
            .maps
            .iter()
            .map(|&(name, _, _)| (name, self.dir.join(name)))
            .collect()
    }

    /// Attaches `program`: into the pinned link if there is one (an atomic
    /// program swap), else afresh, pinning the new link. Returns the mode
    /// (`None` when the pinned link was reused).
    pub fn attach(
        &self,
        ebpf: &mut Ebpf,
        program: &str,
        interface: &str,
        mode: XdpModeSetting,
    ) -> Result<Option<XdpModeSetting>> {
        let link_path = self.dir.join(LINK);
        let xdp = loader::xdp_program(ebpf, program)?;
        if let Some(link) = self.link()? {
            let link = XdpLink::try_from(link).context("the pinned link is not an XDP link")?;
            xdp.attach_to_link(link)
                .context("swapping the new program into the pinned link")?;
            return Ok(None);
        }
        let (mode, link_id) = loader::attach_xdp(xdp, interface, mode)?;
        let link = xdp.take_link(link_id)?;
        match FdLink::try_from(link) {
            Ok(fd_link) => {
                fd_link.pin(&link_path).with_context(|| format!("pinning the link at {}", link_path.display()))?;
            }
            Err(e) => log::warn!(
                "the kernel attached XDP without a bpf_link ({e}); the data path will stop with the agent"
            ),
        }
        Ok(Some(mode))
    }

    /// Removes every pin: the link (detaching the program, once no process
    /// holds it) and the maps.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.dir.display())),
        }
    }
}
