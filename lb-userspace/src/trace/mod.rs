//! Tracing a packet through the balancer without touching production
//! state (`lbctl trace`, the `trace` control request).
//!
//! A second instance of the balancer object is loaded (once, on the first
//! trace) on the live tables its programs only read — [`SHARED_MAPS`],
//! reused through their pins — with the same `CONFIG`, but with connection
//! tables (`FLOWS`, `FLOWS6`), counters, policy state and `HANDOFF` of its
//! own. Both programs are loaded, `balancer` and the `balancer6` it
//! tail-calls for IPv6 packets and for IPv4 packets to IPv6 backends, and
//! `balancer6` goes into the instance's own `PROGRAMS` array: through the
//! live, pinned one a traced packet would run the live `balancer6`, which
//! writes the live `FLOWS6` and counters.
//!
//! A traced packet runs through it with BPF_PROG_TEST_RUN, as if it
//! arrived on the agent's interface (what `bpf_fib_lookup` routes by). So
//! it picks the backend the live program would pick, yet it never pins a
//! flow in the live `FLOWS` or `FLOWS6` nor counts in the live stats. When
//! the live connection table of the packet's family has an entry for its
//! tuple, the entry is copied into the scratch table first: an
//! established flow is traced to the backend it is pinned to.
//!
//! Depends on `loader`, `pins`, `host` and `maps`; none of them depends on
//! this module.

pub mod packet;

use anyhow::{bail, Context, Result};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use lb_common::{names, BackendStats, FlowPin, GlobalStats, VipStats};

use crate::{
    host,
    loader::{self, BalancerOptions},
    maps::{BalancerMaps, TraceMaps},
    pins::Pins,
};

/// The live maps a trace instance shares: the ones `balancer` and
/// `balancer6` only read (the agent writes them). Every other map of the
/// object is the data path's own state — connection tables, counters,
/// `RR_CURSORS`, `BACKEND_CONNS`, `AFFINITY`/`AFFINITY6`, `ICMP_RATE`,
/// `HANDOFF` and `PROGRAMS` — which the instance creates for itself.
pub const SHARED_MAPS: [&str; 8] = [
    names::VIPS,
    names::VIP_ADDRS,
    names::VIP_FILTER,
    names::RINGS,
    names::BACKENDS,
    names::VIPS6,
    names::VIP6_ADDRS,
    names::BACKEND_ADDRS6,
];

/// Entries of the scratch connection table: a trace holds at most one flow
/// (per-CPU LRU lists need a few entries per CPU).
const SCRATCH_FLOWS: u32 = 1024;

/// Headroom for what the balancer adds in front of a frame (at most an
/// outer IPv6 header, 40 bytes, or an ICMPv6 "packet too big" around a
/// quote), with room to spare.
const OUTPUT_SLACK: usize = 256;

/// Loads the trace instance on first use and runs packets through it.
pub struct Tracer {
    options: BalancerOptions,
    pins: Pins,
    interface: String,
    instance: Option<Instance>,
}

struct Instance {
    ebpf: Ebpf,
    maps: TraceMaps,
    ifindex: u32,
    mac: [u8; 6],
}

/// What one traced packet did. Counters are the trace instance's own, from
/// zero for this packet.
#[derive(Debug, Clone)]
pub struct Run {
    /// The XDP verdict (`XDP_PASS` = 2, `XDP_TX` = 3, ...).
    pub verdict: u32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
    pub global: GlobalStats,
    /// The counters of the VIP ids and backend ids the packet could touch.
    pub vips: Vec<(u32, VipStats)>,
    pub backends: Vec<(u32, BackendStats)>,
    /// The live connection table's entry for the tuple (`FLOWS` or
    /// `FLOWS6`, by the packet's family), copied in first.
    pub live_pin: Option<FlowPin>,
    /// The scratch table's entry after the run (the selected backend).
    pub pin_after: Option<FlowPin>,
}

impl Tracer {
    /// A tracer for the data path pinned in `pins` on `interface`, loaded
    /// as `options` (its connection table aside) describe.
    pub fn new(options: BalancerOptions, pins: Pins, interface: String) -> Self {
        Self {
            options,
            pins,
            interface,
            instance: None,
        }
    }

    fn instance(&mut self) -> Result<&mut Instance> {
        if self.instance.is_none() {
            self.instance = Some(self.load()?);
        }
        self.instance
            .as_mut()
            .context("the trace instance is not loaded")
    }

    fn load(&self) -> Result<Instance> {
        let shared: Vec<_> = self
            .pins
            .map_paths()
            .into_iter()
            .filter(|(name, _)| SHARED_MAPS.contains(name))
            .collect();
        // A missing pin would make the loader create a fresh, empty map
        // there: the trace would see no VIPs, and the pin would be wrong.
        for (name, path) in &shared {
            if !path.exists() {
                bail!(
                    "the live map {name} is not pinned at {}; is the data path attached?",
                    path.display()
                );
            }
        }
        let options = BalancerOptions {
            flow_table_entries: SCRATCH_FLOWS,
            ..self.options
        };
        // PROGRAMS is not among the shared maps (a test below holds it to
        // that), so the loader creates one for this instance and writes
        // this instance's balancer6 into it, as it does for the live one.
        let mut ebpf = loader::load_balancer_object(
            crate::objects::BALANCER,
            &options,
            loader::BALANCER_PROGRAMS,
            &shared,
        )
        .context("loading the trace instance of the balancer")?;
        let maps = TraceMaps::take_from(&mut ebpf)?;
        log::info!(
            "trace: loaded the trace instance on the live tables in {}",
            self.pins.dir().display()
        );
        Ok(Instance {
            ebpf,
            maps,
            ifindex: host::interface_index(&self.interface)?,
            mac: host::interface_mac(&self.interface)?,
        })
    }

    /// The agent's interface's MAC: the destination of described packets.
    pub fn interface_mac(&mut self) -> Result<[u8; 6]> {
        Ok(self.instance()?.mac)
    }

    /// Runs `frame` through the trace instance. `vip_id`: the live id of
    /// the VIP the frame is addressed to, if any (whose counters to read).
    pub fn run(&mut self, frame: &[u8], live: &BalancerMaps, vip_id: Option<u32>) -> Result<Run> {
        if frame.len() > packet::MAX_FRAME {
            bail!("frames are limited to {} bytes", packet::MAX_FRAME);
        }
        let instance = self.instance()?;
        let key = packet::parse(frame).flow_key();
        let live_pin = match &key {
            Some(key) => live.any_flow_pin(key)?,
            None => None,
        };
        instance.maps.clear_flows()?;
        if let (Some(key), Some(pin)) = (&key, &live_pin) {
            instance.maps.set_flow(key, pin)?;
        }
        let result = instance.test_run(frame);
        let pin_after = match &key {
            Some(key) => instance.maps.flow_pin(key)?,
            None => None,
        };
        // The packet can only have counted for the backend it was sent to
        // (pinned, before or after) and that backend's VIP or the VIP it
        // is addressed to.
        let mut backend_ids: Vec<u32> = live_pin
            .iter()
            .chain(&pin_after)
            .map(|p| p.backend_id)
            .collect();
        backend_ids.sort_unstable();
        backend_ids.dedup();
        let mut vip_ids: Vec<u32> = vip_id.into_iter().collect();
        for &id in &backend_ids {
            if let Ok(backend) = live.backend(id) {
                vip_ids.push(backend.vip_id);
            }
        }
        vip_ids.sort_unstable();
        vip_ids.dedup();
        let counters = instance.maps.counters();
        let global = counters.global()?;
        let vips = vip_ids
            .iter()
            .map(|&id| Ok((id, counters.vip(id)?)))
            .collect::<Result<Vec<_>>>()?;
        let backends = backend_ids
            .iter()
            .map(|&id| Ok((id, counters.backend(id)?)))
            .collect::<Result<Vec<_>>>()?;
        // Back to zero and empty: the next trace starts from scratch.
        let counters = instance.maps.counters_mut();
        counters.zero_global()?;
        for &id in &vip_ids {
            counters.zero_vip(id)?;
        }
        for &id in &backend_ids {
            counters.zero_backend(id)?;
        }
        instance.maps.clear_flows()?;
        let (verdict, output) = result?;
        Ok(Run {
            verdict,
            output,
            global,
            vips,
            backends,
            live_pin,
            pin_after,
        })
    }
}

impl Instance {
    fn test_run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let program = loader::xdp_program(&mut self.ebpf, names::BALANCER_PROGRAM)?;
        run_on(program, frame, self.ifindex).context("BPF_PROG_TEST_RUN of the trace instance")
    }
}

/// Runs `program` once on `frame` with BPF_PROG_TEST_RUN, as if the frame
/// arrived on interface `ifindex` (of the calling thread's network
/// namespace): what `bpf_fib_lookup` routes by. Returns the verdict and
/// the frame as the program left it.
pub fn run_on(program: &mut Xdp, frame: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + OUTPUT_SLACK];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..TestRunOptions::new()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// The name of an XDP verdict.
pub fn verdict_name(verdict: u32) -> String {
    match verdict {
        0 => "XDP_ABORTED".into(),
        1 => "XDP_DROP".into(),
        2 => "XDP_PASS".into(),
        3 => "XDP_TX".into(),
        4 => "XDP_REDIRECT".into(),
        other => format!("verdict {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pins::BALANCER_MAPS;

    /// The pinned maps the data path writes: the trace instance has its own.
    const WRITTEN: [&str; 10] = [
        names::PROGRAMS,
        names::FLOWS,
        names::FLOWS6,
        names::VIP_STATS,
        names::BACKEND_STATS,
        names::GLOBAL_STATS,
        names::RR_CURSORS,
        names::BACKEND_CONNS,
        names::AFFINITY,
        names::AFFINITY6,
    ];

    /// The trace instance shares exactly the pinned maps the data path
    /// only reads: sharing one it writes would let a traced packet change
    /// live state (PROGRAMS would even run the live balancer6 on it).
    #[test]
    fn the_trace_instance_shares_only_read_only_pinned_maps() {
        for name in SHARED_MAPS {
            assert!(
                BALANCER_MAPS.maps.iter().any(|&(n, _, _)| n == name),
                "{name} is not pinned: the trace instance could not reuse it"
            );
            assert!(
                !WRITTEN.contains(&name),
                "{name} is written by the data path"
            );
        }
        // A new pinned map must be sorted into one list or the other.
        for &(name, _, _) in BALANCER_MAPS.maps {
            assert!(
                SHARED_MAPS.contains(&name) || WRITTEN.contains(&name),
                "pinned map {name}: decide whether the trace instance shares it"
            );
        }
    }
}
