//! What each control request does. Mutations are checked completely on a
//! copy of the service state, applied to the data path as one change,
//! then saved to the state file; if any step fails nothing changes.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use lb_common::{Flow6Key, FlowKey, FlowPin, MAX_BACKENDS, MAX_VIPS};

use super::protocol::*;
use crate::{
    config::{self, AdminState, BackendConfig, Config, VipConfig, MAX_WEIGHT},
    dataplane::{self, DataPlane, VipAddr},
    encap::Encap,
    health::{CheckSpec, Health, HealthChecker, Target, TargetStatus},
    maglev::{self, DEFAULT_TABLE_SIZE},
    maps::{AnyVipKey, BalancerMaps},
    policy::Policy,
    state::StateFile,
    trace::{packet as trace_packet, packet::PacketSpec, Tracer},
};

/// The agent's service state: the data path, the VIPs it serves, where
/// they are saved, and the health checks of their backends.
pub struct Service {
    pub dataplane: DataPlane,
    /// The running configuration; `config.vips` is the service state.
    pub config: Config,
    pub state: StateFile,
    pub ring_pool_slots: u32,
    pub health: HealthChecker,
    /// VIPs whose enabled backends are all unhealthy and that fail open
    /// (as written to the data path).
    failing_open: BTreeSet<VipAddr>,
    /// The last health refresh could not be written: retry it.
    refresh_pending: bool,
    /// Runs `trace` requests (none: the request is refused).
    tracer: Option<Tracer>,
    /// Where the VIP addresses to announce are published after every
    /// request and health refresh (none: the agent announces nothing).
    announcements: Option<tokio::sync::watch::Sender<BTreeSet<IpAddr>>>,
}

/// The source MAC of described trace packets (locally administered; the
/// balancer does not look at it).
const TRACE_SOURCE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn err(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

impl Service {
    /// Takes over a data path that serves `config.vips` (every backend
    /// counted healthy) and starts probing their backends.
    pub fn new(
        dataplane: DataPlane,
        config: Config,
        state: StateFile,
        ring_pool_slots: u32,
        health: HealthChecker,
    ) -> Self {
        let service = Self {
            dataplane,
            config,
            state,
            ring_pool_slots,
            health,
            failing_open: BTreeSet::new(),
            refresh_pending: false,
            tracer: None,
            announcements: None,
        };
        service.health.set_targets(&service.health_targets());
        service
    }

    /// Publishes the VIP addresses to announce on `tx` from now on (the
    /// agent's announcer follows it; see `announce`), starting now.
    pub fn with_announcements(mut self, tx: tokio::sync::watch::Sender<BTreeSet<IpAddr>>) -> Self {
        self.announcements = Some(tx);
        self.publish_announcements();
        self
    }

    /// The VIP addresses this node should announce now
    /// (`config::announced_addresses` under the current health and the
    /// `announce` settings; empty without an `announce` section).
    pub fn announced_addresses(&self) -> BTreeSet<IpAddr> {
        match &self.config.announce {
            Some(a) => config::announced_addresses(
                &self.config.vips,
                |v, b| self.is_healthy(v, b),
                a.withdraw_when_all_down,
            ),
            None => BTreeSet::new(),
        }
    }

    /// Sends the addresses to announce if they changed (cheap: called after
    /// every request, so no mutation path can forget it).
    pub fn publish_announcements(&self) {
        if let Some(tx) = &self.announcements {
            let now = self.announced_addresses();
            tx.send_if_modified(|current| {
                let changed = *current != now;
                if changed {
                    *current = now;
                }
                changed
            });
        }
    }

    /// Serves `trace` requests with `tracer`.
    pub fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// Every (backend, check) to probe; backends used by several VIPs with
    /// the same check are probed once.
    fn health_targets(&self) -> Vec<Target> {
        let mut targets = BTreeSet::new();
        for v in &self.config.vips {
            for b in &v.backends {
                if let Ok(Some(check)) = v.check_for(b) {
                    targets.insert(Target {
                        addr: b.address,
                        check,
                    });
                }
            }
        }
        targets.into_iter().collect()
    }

    /// A backend's health status under its VIP's check (`None`: no check).
    fn backend_health(
        &self,
        v: &VipConfig,
        b: &BackendConfig,
    ) -> (Option<CheckSpec>, Option<TargetStatus>) {
        match v.check_for(b) {
            Ok(Some(check)) => {
                let status = self.health.status_of(&Target {
                    addr: b.address,
                    check: check.clone(),
                });
                (Some(check), status)
            }
            _ => (None, None),
        }
    }

    /// Unknown (not yet probed) counts as healthy: a starting agent does not
    /// take every backend out while its first probes run.
    fn is_healthy(&self, v: &VipConfig, b: &BackendConfig) -> bool {
        !matches!(
            self.backend_health(v, b).1,
            Some(TargetStatus {
                health: Health::Unhealthy,
                ..
            })
        )
    }

    /// The data path's view of `vips` under the current health, and the
    /// VIPs that fail open.
    fn effective(&self, vips: &[VipConfig]) -> (Vec<crate::dataplane::VipSpec>, Vec<VipAddr>) {
        config::effective_specs(vips, |v, b| self.is_healthy(v, b))
    }

    /// Rewrites the tables after health transitions (one rebuild for all
    /// transitions of the same instant; only changed VIPs are rewritten).
    /// A refresh that fails is retried (see [`Self::refresh_pending`]).
    pub fn refresh_health(&mut self) {
        let (specs, open) = self.effective(&self.config.vips);
        let report = match self.dataplane.apply(&specs) {
            Ok(report) => report,
            Err(e) => {
                self.refresh_pending = true;
                log::error!("health: rewriting the tables failed, will retry: {e:#}");
                return;
            }
        };
        self.refresh_pending = false;
        self.publish_announcements();
        let open: BTreeSet<VipAddr> = open.into_iter().collect();
        for vip in open.difference(&self.failing_open) {
            log::warn!("health: every enabled backend of VIP {vip} is unhealthy: failing open (all stay in the table)");
        }
        for vip in self.failing_open.difference(&open) {
            log::info!("health: VIP {vip} no longer fails open");
        }
        self.failing_open = open;
        if !report.rings_written.is_empty() || report.backends_added + report.backends_removed > 0 {
            log::info!(
                "health: tables rewritten for {} VIP(s) ({} backend(s) in, {} out)",
                report.rings_written.len(),
                report.backends_added,
                report.backends_removed
            );
        }
    }

    /// The last [`Self::refresh_health`] failed; the agent retries it every
    /// second until one succeeds.
    pub fn refresh_pending(&self) -> bool {
        self.refresh_pending
    }

    pub fn handle(&mut self, request: Request) -> Response {
        let response = match self.dispatch(request) {
            Ok(data) => Response::success(data),
            Err(e) => Response::failure(e),
        };
        self.publish_announcements();
        response
    }

    fn dispatch(&mut self, request: Request) -> Result<ResponseData, ApiError> {
        match request {
            Request::Version {} => Ok(ResponseData::Version {
                version: VersionInfo {
                    agent: env!("CARGO_PKG_VERSION").into(),
                    protocol: PROTOCOL_VERSION,
                },
            }),
            Request::ListVips {} => Ok(ResponseData::Vips {
                vips: self.config.vips.iter().map(|v| self.vip_info(v)).collect(),
            }),
            Request::ListBackends { vip } => {
                let v = self.vip(&vip)?;
                Ok(ResponseData::Backends {
                    backends: self.vip_info(v).backends,
                })
            }
            Request::ShowConfig {} => Ok(ResponseData::Config {
                config: self.config.clone(),
            }),
            Request::Stats {} => self.stats(),
            Request::Trace { packet, frame } => self.trace(packet, frame),
            Request::LookupFlow {
                vip,
                source,
                source_port,
            } => self.lookup_flow(vip, source, source_port),
            Request::FlowSummary { vip } => self.flow_summary(vip),
            Request::FlushFlows { vip } => self.flush_flows(vip),
            mutation => self.mutate(mutation),
        }
    }

    fn vip(&self, vip: &VipAddr) -> Result<&VipConfig, ApiError> {
        self.config
            .vips
            .iter()
            .find(|v| v.vip() == *vip)
            .ok_or_else(|| err(ErrorCode::UnknownVip, format!("no VIP {vip}")))
    }

    fn vip_info(&self, v: &VipConfig) -> VipInfo {
        let shares = self.dataplane.ring_shares(&v.vip());
        let digest = self.dataplane.table_digest(&v.vip()).unwrap_or_else(|e| {
            // Reported as unknown rather than failing the whole listing.
            log::error!("table digest: {e:#}");
            None
        });
        // Checked when the config was read or the VIP added.
        let encap = v.encapsulation().unwrap_or_default();
        VipInfo {
            digest,
            vip: v.vip(),
            table_size: v.table_size,
            policy: PolicySettings::of(v),
            icmp_echo: v.icmp_echo,
            encap: encap.kind(),
            gue_port: encap.gue_port(),
            health_check: v.health_check.clone(),
            fail_open: v.fail_open,
            failing_open: self.failing_open.contains(&v.vip()),
            backends: v
                .backends
                .iter()
                .map(|b| {
                    let (check, status) = self.backend_health(v, b);
                    let status = status.unwrap_or(TargetStatus {
                        health: if check.is_none() {
                            Health::Healthy
                        } else {
                            Health::Unknown
                        },
                        last: None,
                        consecutive_ok: 0,
                        consecutive_fail: 0,
                        last_transition_unix_ms: None,
                        probes: 0,
                    });
                    BackendInfo {
                        address: b.address,
                        weight: b.weight,
                        admin: b.admin,
                        health: status.health,
                        check,
                        last_probe: status.last,
                        consecutive_ok: status.consecutive_ok,
                        consecutive_fail: status.consecutive_fail,
                        last_transition_unix_ms: status.last_transition_unix_ms,
                        ring_share: shares.get(&b.address).copied().unwrap_or(0.0),
                        connections: self.dataplane.backend_connections(&v.vip(), b.address),
                    }
                })
                .collect(),
        }
    }

    /// Replaces every least-conn backend's connection count with what the
    /// connection table shows (see [`DataPlane::reconcile_connections`]);
    /// the agent calls it every [`crate::dataplane::RECONCILE_INTERVAL`].
    pub fn reconcile_connections(&mut self) -> anyhow::Result<usize> {
        let idle: HashMap<VipAddr, u32> = self
            .config
            .vips
            .iter()
            .map(|v| (v.vip(), v.effective_idle_timeout()))
            .collect();
        self.dataplane
            .reconcile_connections(|vip| idle.get(vip).copied().unwrap_or(u32::MAX))
    }

    /// Applies a change to a copy of the VIPs; commits it to the data path
    /// and the state file only if everything succeeds.
    fn mutate(&mut self, request: Request) -> Result<ResponseData, ApiError> {
        let mut vips = self.config.vips.clone();
        let description = edit(&mut vips, &request)?;
        let applied = self.replace_vips(vips)?;
        // One line per change, with the table rebuilds it caused.
        log::info!(
            "control: {description} ({} ring(s) rewritten, {} backend(s) in, {} out)",
            applied.rings_written.len(),
            applied.backends_added,
            applied.backends_removed
        );
        Ok(ResponseData::Changed {
            changed: ChangeReport {
                applied,
                flows_flushed: None,
            },
        })
    }

    /// Makes `vips` the service state: validated, written to the data path,
    /// saved, probed. On failure the data path and the state are as before.
    pub fn replace_vips(
        &mut self,
        vips: Vec<VipConfig>,
    ) -> Result<crate::dataplane::ApplyReport, ApiError> {
        config::validate_vips(
            &vips,
            self.ring_pool_slots,
            self.config.source_address6.is_some(),
        )
        .map_err(|e| err(classify(&e), format!("{e:#}")))?;
        // Staged before the data path changes: a disk that cannot take the
        // state refuses the change while nothing has moved.
        let staged = self.state.stage(&vips).map_err(|e| {
            err(
                ErrorCode::Internal,
                format!(
                    "saving {}: {e:#}; nothing changed",
                    self.state.path().display()
                ),
            )
        })?;
        let (specs, _) = self.effective(&vips);
        let applied = match self.dataplane.apply(&specs) {
            Ok(applied) => applied,
            Err(e) => {
                // Planning refuses before any write (capacity); a failed map
                // write may leave part of the change: put the old state back.
                let capacity = classify(&e) == ErrorCode::Capacity;
                if !capacity {
                    self.restore();
                }
                let code = if capacity {
                    ErrorCode::Capacity
                } else {
                    ErrorCode::Internal
                };
                return Err(err(code, format!("{e:#}")));
            }
        };
        if let Err(e) = staged.commit() {
            // The change is not durable: put the data path back as it was.
            self.restore();
            return Err(err(
                ErrorCode::Internal,
                format!(
                    "saving {}: {e:#}; nothing changed",
                    self.state.path().display()
                ),
            ));
        }
        self.config.vips = vips;
        self.health.set_targets(&self.health_targets());
        // New checks may already know their targets (shared with another
        // VIP), and fail-open depends on the new backend sets.
        self.refresh_health();
        Ok(applied)
    }

    /// Rewrites the data path from the (unchanged) service state.
    fn restore(&mut self) {
        let (specs, _) = self.effective(&self.config.vips);
        if let Err(r) = self.dataplane.apply(&specs) {
            log::error!("control: could not restore the data path after a failed change: {r:#}");
        }
    }

    fn stats(&self) -> Result<ResponseData, ApiError> {
        let maps = self.dataplane.maps();
        let internal =
            |e: anyhow::Error| err(ErrorCode::Internal, format!("reading counters: {e:#}"));
        let global = maps.global_stats().map_err(internal)?;
        let mut vips = Vec::new();
        for v in &self.config.vips {
            let vip = v.vip();
            let Some(vip_id) = self.dataplane.vip_id(&vip) else {
                continue;
            };
            let s = maps.vip_stats(vip_id).map_err(internal)?;
            let mut backends = Vec::new();
            for b in &v.backends {
                if let Some(id) = self.dataplane.backend_id(&vip, b.address) {
                    let bs = maps.backend_stats(id).map_err(internal)?;
                    backends.push(BackendCounters::new(b.address, &bs));
                }
            }
            vips.push(VipCounters::new(vip, &s, backends));
        }
        Ok(ResponseData::Stats {
            stats: StatsReport { global, vips },
        })
    }

    /// Runs one packet through the trace instance (see [`crate::trace`]).
    fn trace(
        &mut self,
        packet: Option<PacketSpec>,
        frame: Option<String>,
    ) -> Result<ResponseData, ApiError> {
        let internal = |e: anyhow::Error| err(ErrorCode::Internal, format!("trace: {e:#}"));
        let Some(tracer) = self.tracer.as_mut() else {
            return Err(err(
                ErrorCode::Internal,
                "trace: this agent runs no trace instance",
            ));
        };
        let frame = match (packet, frame) {
            (Some(packet), None) => {
                // Before the instance loads: a request that cannot be a
                // packet is refused as such whatever the agent's state.
                packet
                    .check_families()
                    .map_err(|e| err(ErrorCode::InvalidAddress, format!("packet.{e}")))?;
                let mac = tracer.interface_mac().map_err(internal)?;
                packet
                    .frame(TRACE_SOURCE_MAC, mac)
                    .map_err(|e| err(ErrorCode::InvalidValue, format!("packet.{e}")))?
            }
            (None, Some(hex)) => {
                let bytes = trace_packet::from_hex(&hex)
                    .map_err(|e| err(ErrorCode::InvalidValue, format!("frame: {e}")))?;
                if !(14..=trace_packet::MAX_FRAME).contains(&bytes.len()) {
                    return Err(err(
                        ErrorCode::InvalidValue,
                        format!(
                            "frame: {} bytes; a frame is 14 to {} bytes",
                            bytes.len(),
                            trace_packet::MAX_FRAME
                        ),
                    ));
                }
                bytes
            }
            _ => {
                return Err(err(
                    ErrorCode::BadRequest,
                    "trace takes exactly one of `packet` and `frame`",
                ))
            }
        };
        let input = trace_packet::parse(&frame);
        // The VIP as the balancer finds it: the packet's own destination,
        // of either family (a tunnelled packet is for no VIP).
        let tuple = input.tuple();
        let vip = tuple.and_then(|t| {
            let vip = VipAddr {
                addr: t.destination,
                port: t.destination_port,
                proto: t.protocol,
            };
            self.vip(&vip).ok().map(|_| vip)
        });
        let vip_id = vip.and_then(|v| self.dataplane.vip_id(&v));
        let run = self
            .tracer
            .as_mut()
            .ok_or_else(|| err(ErrorCode::Internal, "trace: no trace instance"))?
            .run(&frame, self.dataplane.maps(), vip_id)
            .map_err(internal)?;
        let g = &run.global;
        let selected = g.flow_hits + g.flow_misses > 0;
        let backend = run
            .pin_after
            .filter(|_| selected)
            .and_then(|p| self.backend_by_id(p.backend_id))
            .map(|(_, addr)| addr);
        let flow = if g.flow_hits > 0 {
            Some("pinned")
        } else if g.flow_reselected > 0 {
            Some("reselected")
        } else if g.flow_misses > 0 {
            Some("new")
        } else {
            None
        };
        let live_pin = run.live_pin.and_then(|pin| {
            let (vip, _) = self.backend_by_id(pin.backend_id)?;
            self.dataplane.pinned_backend(&vip, &pin)
        });
        let ring_backend = vip
            .zip(tuple)
            .and_then(|(vip, t)| self.dataplane.ring_choice(&vip, t.source, t.source_port));
        // What the balancer sends in GUE goes to one of these ports.
        let gue_ports: Vec<u16> = self
            .config
            .vips
            .iter()
            .filter_map(|v| v.encapsulation().ok()?.gue_port())
            .collect();
        let mut vips = Vec::new();
        for (id, s) in &run.vips {
            let Some(vip) = self.vip_by_id(*id) else {
                continue;
            };
            let backends: Vec<BackendCounters> = run
                .backends
                .iter()
                .filter_map(|(bid, bs)| {
                    let (bvip, address) = self.backend_by_id(*bid)?;
                    (bvip == vip && (bs.packets > 0 || bs.bytes > 0))
                        .then(|| BackendCounters::new(address, bs))
                })
                .collect();
            if s.packets > 0 || s.new_flows > 0 || !backends.is_empty() {
                vips.push(VipCounters::new(vip, s, backends));
            }
        }
        Ok(ResponseData::Trace {
            trace: Box::new(TraceReport {
                verdict: crate::trace::verdict_name(run.verdict),
                vip,
                backend,
                flow: flow.map(str::to_string),
                live_pin,
                ring_backend,
                stats: StatsReport {
                    global: run.global,
                    vips,
                },
                input,
                output: trace_packet::parse_with_gue(&run.output, &gue_ports),
                output_frame: trace_packet::to_hex(&run.output),
            }),
        })
    }

    /// The VIP a live VIP id belongs to.
    fn vip_by_id(&self, id: u32) -> Option<VipAddr> {
        self.config
            .vips
            .iter()
            .map(|v| v.vip())
            .find(|v| self.dataplane.vip_id(v) == Some(id))
    }

    /// The VIP and address a live backend id belongs to.
    fn backend_by_id(&self, id: u32) -> Option<(VipAddr, IpAddr)> {
        self.config.vips.iter().find_map(|v| {
            let vip = v.vip();
            v.backends
                .iter()
                .find(|b| self.dataplane.backend_id(&vip, b.address) == Some(id))
                .map(|b| (vip, b.address))
        })
    }

    fn lookup_flow(
        &self,
        vip: VipAddr,
        source: IpAddr,
        source_port: u16,
    ) -> Result<ResponseData, ApiError> {
        self.vip(&vip)?;
        let maps = self.dataplane.maps();
        let (port, proto) = (vip.port, vip.proto.number());
        let pin = match (source, vip.addr) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                maps.flow_pin(&trace_packet::flow_key(src, source_port, dst, port, proto))
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                maps.flow6_pin(&trace_packet::flow6_key(src, source_port, dst, port, proto))
            }
            _ => {
                return Err(err(
                    ErrorCode::InvalidAddress,
                    format!(
                        "client {source} and VIP {vip} are of different address families: \
                         a flow to a VIP comes from a client of the VIP's family"
                    ),
                ))
            }
        }
        .map_err(|e| err(ErrorCode::Internal, format!("{e:#}")))?;
        Ok(ResponseData::Flow {
            flow: FlowLookup {
                vip,
                source,
                source_port,
                ring_backend: self.dataplane.ring_choice(&vip, source, source_port),
                pinned_backend: pin.and_then(|p| self.dataplane.pinned_backend(&vip, &p)),
            },
        })
    }

    /// One batch walk of the connection table, counted per pin: a full
    /// table has many entries but few distinct (backend id, generation)
    /// pairs, each resolved to an address once.
    fn flow_summary(&self, vip: VipAddr) -> Result<ResponseData, ApiError> {
        let v = self.vip(&vip)?;
        let mut pins: HashMap<(u32, u32), u64> = HashMap::new();
        let mut total = 0u64;
        for_each_vip_flow(self.dataplane.maps(), &vip, |pin| {
            total += 1;
            *pins.entry((pin.backend_id, pin.generation)).or_insert(0) += 1;
        })
        .map_err(internal)?;
        let mut per_backend: Vec<BackendFlows> = v
            .backends
            .iter()
            .map(|b| BackendFlows {
                address: b.address,
                flows: 0,
            })
            .collect();
        let mut stale = 0;
        for ((backend_id, generation), n) in pins {
            let pin = FlowPin {
                backend_id,
                generation,
                ..FlowPin::default()
            };
            match self
                .dataplane
                .pinned_backend(&vip, &pin)
                .and_then(|a| per_backend.iter_mut().find(|b| b.address == a))
            {
                Some(b) => b.flows += n,
                None => stale += n,
            }
        }
        Ok(ResponseData::FlowSummary {
            flows: FlowSummary {
                vip,
                total,
                per_backend,
                stale,
            },
        })
    }

    /// A batch walk for the VIP's keys, then batch deletes.
    fn flush_flows(&mut self, vip: VipAddr) -> Result<ResponseData, ApiError> {
        self.vip(&vip)?;
        let maps = self.dataplane.maps_mut();
        let flushed = match vip.key() {
            AnyVipKey::V4(k) => {
                let keys = maps
                    .flows_matching(|key| key.is_for(&AnyVipKey::V4(k)))
                    .map_err(internal)?;
                let keys: Vec<FlowKey> = keys.into_iter().map(|(key, _)| key).collect();
                maps.remove_flows(&keys)
            }
            AnyVipKey::V6(k) => {
                let mut keys = Vec::new();
                maps.for_each_flow6(|key, _| {
                    if key.is_for(&AnyVipKey::V6(k)) {
                        keys.push(*key);
                    }
                })
                .map_err(internal)?;
                maps.remove_flows6(&keys)
            }
        }
        .map_err(internal)?;
        log::info!("control: flushed {flushed} connection-table entries of VIP {vip}");
        Ok(ResponseData::Changed {
            changed: ChangeReport {
                applied: Default::default(),
                flows_flushed: Some(flushed),
            },
        })
    }
}

fn internal(e: anyhow::Error) -> ApiError {
    err(ErrorCode::Internal, format!("{e:#}"))
}

/// A connection-table key of either family, matched against a VIP.
trait VipFlow {
    fn is_for(&self, vip: &AnyVipKey) -> bool;
}

impl VipFlow for FlowKey {
    fn is_for(&self, vip: &AnyVipKey) -> bool {
        matches!(vip, AnyVipKey::V4(k)
            if self.dst_addr == k.addr && self.dst_port == k.port && self.proto == k.proto)
    }
}

impl VipFlow for Flow6Key {
    fn is_for(&self, vip: &AnyVipKey) -> bool {
        matches!(vip, AnyVipKey::V6(k)
            if self.dst_addr == k.addr && self.dst_port == k.port && self.proto == k.proto)
    }
}

/// Calls `f` on the pin of every connection-table entry of `vip`, from
/// the table of its family (`FLOWS` or `FLOWS6`): one batch walk.
fn for_each_vip_flow(
    maps: &BalancerMaps,
    vip: &VipAddr,
    mut f: impl FnMut(&FlowPin),
) -> anyhow::Result<u64> {
    let key = vip.key();
    match key {
        AnyVipKey::V4(_) => maps.for_each_flow(|k, pin| {
            if k.is_for(&key) {
                f(pin)
            }
        }),
        AnyVipKey::V6(_) => maps.for_each_flow6(|k, pin| {
            if k.is_for(&key) {
                f(pin)
            }
        }),
    }
}

/// Error code for a failed validation or apply.
fn classify(e: &anyhow::Error) -> ErrorCode {
    let text = format!("{e:#}");
    if text.contains("no room") || text.contains("at most") || text.contains("ring slots") {
        ErrorCode::Capacity
    } else if text.contains("configured twice") {
        ErrorCode::DuplicateVip
    } else if text.contains("listed twice") {
        ErrorCode::DuplicateBackend
    } else if text.contains("not a unicast address") {
        ErrorCode::InvalidAddress
    } else {
        ErrorCode::InvalidValue
    }
}

/// The policy settings of a request for a VIP on `vip`, checked field by
/// field.
fn policy_settings(
    vip: IpAddr,
    policy: Policy,
    source_prefix: Option<u8>,
    affinity_timeout: Option<u32>,
    idle_timeout: Option<u32>,
) -> Result<PolicySettings, ApiError> {
    config::check_policy_fields(vip, policy, source_prefix, affinity_timeout, idle_timeout)
        .map_err(|e| err(ErrorCode::InvalidValue, e))?;
    Ok(PolicySettings {
        policy,
        source_prefix,
        affinity_timeout,
        idle_timeout,
    })
}

fn check_weight(weight: u32) -> Result<(), ApiError> {
    if weight > MAX_WEIGHT {
        return Err(err(
            ErrorCode::InvalidValue,
            format!("weight {weight} is above the maximum {MAX_WEIGHT}"),
        ));
    }
    Ok(())
}

fn check_unicast(what: &str, addr: IpAddr) -> Result<(), ApiError> {
    if !dataplane::is_unicast(addr) {
        return Err(err(
            ErrorCode::InvalidAddress,
            format!("{what} {addr} is not a unicast address"),
        ));
    }
    Ok(())
}

/// Applies one mutation to `vips`; returns a description for the log.
fn edit(vips: &mut Vec<VipConfig>, request: &Request) -> Result<String, ApiError> {
    let find = |vips: &mut Vec<VipConfig>, vip: &VipAddr| -> Result<usize, ApiError> {
        vips.iter()
            .position(|v| v.vip() == *vip)
            .ok_or_else(|| err(ErrorCode::UnknownVip, format!("no VIP {vip}")))
    };
    let backend_index = |v: &VipConfig, addr: IpAddr| -> Result<usize, ApiError> {
        v.backends
            .iter()
            .position(|b| b.address == addr)
            .ok_or_else(|| {
                err(
                    ErrorCode::UnknownBackend,
                    format!("VIP {} has no backend {addr}", v.vip()),
                )
            })
    };
    match request {
        Request::AddVip {
            vip,
            table_size,
            policy,
            source_prefix,
            affinity_timeout,
            idle_timeout,
            icmp_echo,
            encap,
            gue_port,
        } => {
            let policy = policy_settings(
                vip.addr,
                *policy,
                *source_prefix,
                *affinity_timeout,
                *idle_timeout,
            )?;
            let encap = Encap::from_fields(*encap, *gue_port)
                .map_err(|e| err(ErrorCode::InvalidValue, e.to_string()))?;
            check_unicast("VIP address", vip.addr)?;
            if vip.port == 0 {
                return Err(err(ErrorCode::InvalidValue, "port 0 is not a service port"));
            }
            if vips.iter().any(|v| v.vip() == *vip) {
                return Err(err(ErrorCode::DuplicateVip, format!("VIP {vip} exists")));
            }
            if vips.len() >= MAX_VIPS as usize {
                return Err(err(
                    ErrorCode::Capacity,
                    format!("the data path holds at most {MAX_VIPS} VIPs"),
                ));
            }
            let size = table_size.unwrap_or(DEFAULT_TABLE_SIZE);
            maglev::validate_table_size(size)
                .map_err(|e| err(ErrorCode::InvalidValue, format!("table_size: {e}")))?;
            vips.push(super::protocol::vip_entry(
                *vip,
                size,
                &policy,
                icmp_echo.unwrap_or(true),
                encap,
            ));
            Ok(format!(
                "added VIP {vip} (table size {size}, policy {}, encap {encap})",
                policy.policy
            ))
        }
        Request::RemoveVip { vip } => {
            let i = find(vips, vip)?;
            vips.remove(i);
            Ok(format!("removed VIP {vip}"))
        }
        Request::AddBackend {
            vip,
            backend,
            weight,
        } => {
            check_unicast("backend address", *backend)?;
            let weight = weight.unwrap_or(1);
            check_weight(weight)?;
            let total: usize = vips.iter().map(|v| v.backends.len()).sum();
            let i = find(vips, vip)?;
            if vips[i].backends.iter().any(|b| b.address == *backend) {
                return Err(err(
                    ErrorCode::DuplicateBackend,
                    format!("VIP {vip} already has backend {backend}"),
                ));
            }
            if total >= MAX_BACKENDS as usize {
                return Err(err(
                    ErrorCode::Capacity,
                    format!("the data path holds at most {MAX_BACKENDS} backends"),
                ));
            }
            vips[i]
                .backends
                .push(super::protocol::backend_entry(*backend, weight));
            Ok(format!(
                "added backend {backend} (weight {weight}) to VIP {vip}"
            ))
        }
        Request::RemoveBackend { vip, backend } => {
            let i = find(vips, vip)?;
            let j = backend_index(&vips[i], *backend)?;
            vips[i].backends.remove(j);
            Ok(format!("removed backend {backend} from VIP {vip}"))
        }
        Request::SetWeight {
            vip,
            backend,
            weight,
        } => {
            check_weight(*weight)?;
            let i = find(vips, vip)?;
            let j = backend_index(&vips[i], *backend)?;
            vips[i].backends[j].weight = *weight;
            Ok(format!(
                "set the weight of backend {backend} of VIP {vip} to {weight}"
            ))
        }
        Request::Drain { vip, backend }
        | Request::Undrain { vip, backend }
        | Request::Disable { vip, backend }
        | Request::Enable { vip, backend } => {
            let state = match request {
                Request::Drain { .. } => AdminState::Draining,
                Request::Disable { .. } => AdminState::Disabled,
                _ => AdminState::Enabled,
            };
            let i = find(vips, vip)?;
            let j = backend_index(&vips[i], *backend)?;
            vips[i].backends[j].admin = state;
            Ok(format!("backend {backend} of VIP {vip} is now {state:?}"))
        }
        Request::SetHealthCheck {
            vip,
            backend,
            health_check,
        } => {
            let i = find(vips, vip)?;
            match backend {
                None => vips[i].health_check = health_check.clone(),
                Some(addr) => {
                    let j = backend_index(&vips[i], *addr)?;
                    vips[i].backends[j].health_check = health_check.clone();
                }
            }
            // Check the result now, for a precise code and message.
            let v = &vips[i];
            if let Some(check) = &v.health_check {
                check
                    .resolve(v.port)
                    .map_err(|e| err(ErrorCode::InvalidValue, format!("health_check.{e}")))?;
            }
            for b in &v.backends {
                v.check_for(b)
                    .map_err(|e| err(ErrorCode::InvalidValue, format!("health_check.{e}")))?;
            }
            Ok(match backend {
                None => format!("health check of VIP {vip} set to {health_check:?}"),
                Some(addr) => {
                    format!("health check of backend {addr} of VIP {vip} set to {health_check:?}")
                }
            })
        }
        Request::SetFailOpen { vip, fail_open } => {
            let i = find(vips, vip)?;
            vips[i].fail_open = *fail_open;
            Ok(format!("VIP {vip} fail-open set to {fail_open}"))
        }
        Request::SetPolicy {
            vip,
            policy,
            source_prefix,
            affinity_timeout,
            idle_timeout,
        } => {
            let settings = policy_settings(
                vip.addr,
                *policy,
                *source_prefix,
                *affinity_timeout,
                *idle_timeout,
            )?;
            let i = find(vips, vip)?;
            settings.apply_to(&mut vips[i]);
            Ok(format!("VIP {vip} policy set to {settings:?}"))
        }
        other => Err(err(
            ErrorCode::Internal,
            format!("{other:?} is not a mutation"),
        )),
    }
}
