//! Loading the embedded objects into the kernel.

use std::net::IpAddr;

use anyhow::{Context, Result};
use aya::{
    maps::ProgramArray,
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    names, DataPathConfig, DEFAULT_FLOW_TABLE_ENTRIES, DEFAULT_RING_POOL_SLOTS,
    RING_SLOTS_PER_ENTRY,
};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::objects;

/// Everything fixed when `balancer` is loaded.
#[derive(Debug, Clone, Copy)]
pub struct BalancerOptions {
    pub config: DataPathConfig,
    /// Slots in the ring pool (all VIPs' tables, plus room to build a new
    /// table next to the old one).
    pub ring_pool_slots: u32,
    /// Capacity of the connection table.
    pub flow_table_entries: u32,
}

impl BalancerOptions {
    pub fn new(config: DataPathConfig) -> Self {
        Self {
            config,
            ring_pool_slots: DEFAULT_RING_POOL_SLOTS,
            flow_table_entries: DEFAULT_FLOW_TABLE_ENTRIES,
        }
    }
}

/// Loads `balancer` (verified, not attached). Its maps are then taken with
/// [`crate::maps::BalancerMaps::take_from`].
pub fn load_balancer(options: &BalancerOptions) -> Result<Ebpf> {
    load_balancer_object(objects::BALANCER, options, BALANCER_PROGRAMS, &[])
}

/// The balancer object's programs: `balancer`, attached to the interface,
/// and `balancer6`, which it tail-calls for IPv6 packets.
pub const BALANCER_PROGRAMS: &[&str] = &[names::BALANCER_PROGRAM, names::BALANCER6_PROGRAM];

/// Loads `balancer` on the maps pinned at `pinned_maps` (from
/// [`crate::pins::Pins::map_paths`]; created and pinned if there are none
/// yet).
pub fn load_balancer_pinned(
    options: &BalancerOptions,
    pinned_maps: &[(&'static str, PathBuf)],
) -> Result<Ebpf> {
    load_balancer_object(objects::BALANCER, options, BALANCER_PROGRAMS, pinned_maps)
}

/// Loads `programs` of an object built on the balancer's maps (the balancer
/// itself, or the benchmark wrappers around it). Maps named in
/// `pinned_maps` are reused from, or pinned at, their path. When
/// `balancer6` is among the programs, it is written into `PROGRAMS` for
/// `balancer`'s tail call (replacing an adopted data path's entry, which
/// the new `balancer` is about to replace too).
pub fn load_balancer_object(
    object: &[u8],
    options: &BalancerOptions,
    programs: &[&str],
    pinned_maps: &[(&'static str, PathBuf)],
) -> Result<Ebpf> {
    // The data path's log statements at levels the agent does not log are
    // compiled out by the verifier (the level is a read-only global).
    let log_level = log::max_level() as u8;
    let mut loader = EbpfLoader::new();
    for (name, path) in pinned_maps {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .override_global(names::CONFIG, &options.config, true)
        .override_global(aya_log::LEVEL, &log_level, false)
        .map_max_entries(
            names::RINGS,
            options.ring_pool_slots.div_ceil(RING_SLOTS_PER_ENTRY),
        )
        .map_max_entries(names::FLOWS, options.flow_table_entries)
        .map_max_entries(names::FLOWS6, options.flow_table_entries)
        .load(object)
        .context("loading the balancer object")?;
    for program in programs {
        load_xdp(&mut ebpf, program)?;
    }
    if programs.contains(&names::BALANCER6_PROGRAM) {
        let fd = xdp_program(&mut ebpf, names::BALANCER6_PROGRAM)?
            .fd()
            .context("balancer6 has no fd")?
            .try_clone()
            .context("duplicating balancer6's fd")?;
        let mut array = ProgramArray::try_from(
            ebpf.map_mut(names::PROGRAMS)
                .context("the balancer object has no PROGRAMS map")?,
        )?;
        array
            .set(lb_common::PROGRAM_IPV6, &fd, 0)
            .context("writing balancer6 into PROGRAMS")?;
    }
    Ok(ebpf)
}

/// Loads `decap` (not attached) and fills its sets of local addresses
/// (`DECAP_ADDRS` for IPv4, `DECAP_ADDRS6` for IPv6) and GUE ports.
pub fn load_decap(local_addrs: &[IpAddr], gue_ports: &[u16]) -> Result<Ebpf> {
    let mut ebpf = load_decap_pinned(&[])?;
    crate::decap::sync_sets(
        &mut ebpf,
        &crate::decap::WireAddrs::of(local_addrs),
        &gue_ports.iter().copied().collect(),
    )?;
    Ok(ebpf)
}

/// Loads `decap` (not attached) on the maps pinned at `pinned_maps`
/// (created and pinned if there are none yet), leaving its address set as
/// it is.
pub fn load_decap_pinned(pinned_maps: &[(&'static str, PathBuf)]) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for (name, path) in pinned_maps {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(objects::DECAP)
        .context("loading the decap object")?;
    load_xdp(&mut ebpf, names::DECAP_PROGRAM)?;
    Ok(ebpf)
}

fn load_xdp(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("the object has no program {name}"))?
        .try_into()?;
    program
        .load()
        .with_context(|| format!("the kernel rejected the {name} program"))
}

/// The loaded XDP program `name` of `ebpf`.
pub fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("the object has no program {name}"))?
        .try_into()?)
}

/// How the XDP program is attached: chosen in the config file or on the
/// command line, used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Driver (native) mode, falling back to generic mode with a warning.
    #[default]
    Auto,
    /// Driver (native) mode only: fails where the driver has no XDP.
    Native,
    /// Generic (SKB) mode: works on any interface, slower.
    Generic,
}

/// Attaches an XDP program to `interface` in the configured mode; `Auto`
/// tries native (driver) mode first and falls back to generic mode with a
/// warning. Returns the mode in use and the link.
pub fn attach_xdp(
    xdp: &mut Xdp,
    interface: &str,
    mode: XdpModeSetting,
) -> Result<(XdpModeSetting, XdpLinkId)> {
    match mode {
        XdpModeSetting::Native => Ok((
            XdpModeSetting::Native,
            xdp_attach(xdp, interface, XdpMode::Driver)?,
        )),
        XdpModeSetting::Generic => Ok((
            XdpModeSetting::Generic,
            xdp_attach(xdp, interface, XdpMode::Skb)?,
        )),
        XdpModeSetting::Auto => match xdp_attach(xdp, interface, XdpMode::Driver) {
            Ok(id) => Ok((XdpModeSetting::Native, id)),
            Err(e) => {
                log::warn!(
                    "native XDP on {interface} failed ({e:#}); falling back to generic mode"
                );
                Ok((
                    XdpModeSetting::Generic,
                    xdp_attach(xdp, interface, XdpMode::Skb)?,
                ))
            }
        },
    }
}

fn xdp_attach(xdp: &mut Xdp, interface: &str, mode: XdpMode) -> Result<XdpLinkId> {
    xdp.attach(interface, mode)
        .with_context(|| format!("attaching XDP to {interface} in {mode:?} mode"))
}

/// Forwards the data path's own log (aya-log records, at the agent's log
/// level) to the agent's logger. Needs a tokio runtime context.
pub fn spawn_data_path_log(ebpf: &mut Ebpf) -> Result<()> {
    let logger = aya_log::EbpfLogger::init(ebpf).context("opening the log ring")?;
    // SAFETY: the logger owns the ring buffer's fd and keeps it open for as
    // long as the AsyncFd owns the logger.
    let mut logger = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .context("watching the data path's log")?;
    tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}
