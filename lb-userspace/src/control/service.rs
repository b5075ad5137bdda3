//! What each control request does. Mutations are checked completely on a
//! copy of the service state, applied to the data path as one change,
//! then saved to the state file; if any step fails nothing changes.

use std::net::Ipv4Addr;

use lb_common::{ipv4_to_wire, port_to_wire, FlowKey, MAX_BACKENDS, MAX_VIPS};

use super::protocol::*;
use crate::{
    config::{self, Config, VipConfig, MAX_WEIGHT},
    dataplane::{DataPlane, VipAddr},
    maglev::{self, DEFAULT_TABLE_SIZE},
    state::StateFile,
};

/// The agent's service state: the data path, the VIPs it serves and where
/// they are saved.
pub struct Service {
    pub dataplane: DataPlane,
    /// The running configuration; `config.vips` is the service state.
    pub config: Config,
    pub state: StateFile,
    pub ring_pool_slots: u32,
}

fn err(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

impl Service {
    pub fn handle(&mut self, request: Request) -> Response {
        match self.dispatch(request) {
            Ok(data) => Response::success(data),
            Err(e) => Response::failure(e),
        }
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
            Request::LookupFlow {
                vip,
                source,
                source_port,
            } => self.lookup_flow(vip, source, source_port),
            Request::FlowSummary { vip } => self.flow_summary(vip),
            Request::FlushFlows { vip } => {
                self.vip(&vip)?;
                let keys: Vec<FlowKey> = self
                    .dataplane
                    .maps()
                    .flows_matching(|k| matches_vip(k, &vip))
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                let flushed = self.dataplane.maps_mut().remove_flows(&keys);
                log::info!("control: flushed {flushed} connection-table entries of VIP {vip}");
                Ok(ResponseData::Changed {
                    changed: ChangeReport {
                        applied: Default::default(),
                        flows_flushed: Some(flushed),
                    },
                })
            }
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
        VipInfo {
            vip: v.vip(),
            table_size: v.table_size,
            hash_source_only: v.hash_source_only,
            backends: v
                .backends
                .iter()
                .map(|b| BackendInfo {
                    address: b.address,
                    weight: b.weight,
                    drained: b.drained,
                    ring_share: shares.get(&b.address).copied().unwrap_or(0.0),
                })
                .collect(),
        }
    }

    /// Applies a change to a copy of the VIPs; commits it to the data path
    /// and the state file only if everything succeeds.
    fn mutate(&mut self, request: Request) -> Result<ResponseData, ApiError> {
        let mut vips = self.config.vips.clone();
        let description = edit(&mut vips, &request)?;
        let applied = self.replace_vips(vips)?;
        log::info!("control: {description}");
        Ok(ResponseData::Changed {
            changed: ChangeReport {
                applied,
                flows_flushed: None,
            },
        })
    }

    /// Makes `vips` the service state: validated, written to the data path,
    /// saved. On failure the data path and the state are as before.
    pub fn replace_vips(
        &mut self,
        vips: Vec<VipConfig>,
    ) -> Result<crate::dataplane::ApplyReport, ApiError> {
        config::validate_vips(&vips, self.ring_pool_slots)
            .map_err(|e| err(classify(&e), format!("{e:#}")))?;
        let applied = self
            .dataplane
            .apply(&config::vip_specs(&vips))
            .map_err(|e| err(classify(&e), format!("{e:#}")))?;
        if let Err(e) = self.state.save(&vips) {
            // Put the data path back as it was: the change is not durable.
            let restored = self.dataplane.apply(&config::vip_specs(&self.config.vips));
            if let Err(r) = restored {
                log::error!("control: could not restore the data path after a failed save: {r:#}");
            }
            return Err(err(
                ErrorCode::Internal,
                format!(
                    "saving {}: {e:#}; nothing changed",
                    self.state.path().display()
                ),
            ));
        }
        self.config.vips = vips;
        Ok(applied)
    }

    fn stats(&self) -> Result<ResponseData, ApiError> {
        let maps = self.dataplane.maps();
        let internal =
            |e: anyhow::Error| err(ErrorCode::Internal, format!("reading counters: {e:#}"));
        let global = maps.global_stats().map_err(internal)?.into();
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
                    backends.push(BackendCounters {
                        address: b.address,
                        packets: bs.packets,
                        bytes: bs.bytes,
                    });
                }
            }
            vips.push(VipCounters {
                vip,
                packets: s.packets,
                bytes: s.bytes,
                new_flows: s.new_flows,
                backends,
            });
        }
        Ok(ResponseData::Stats {
            stats: StatsReport { global, vips },
        })
    }

    fn lookup_flow(
        &self,
        vip: VipAddr,
        source: Ipv4Addr,
        source_port: u16,
    ) -> Result<ResponseData, ApiError> {
        self.vip(&vip)?;
        let key = vip.key();
        let flow = FlowKey {
            src_addr: ipv4_to_wire(source.octets()),
            dst_addr: key.addr,
            src_port: port_to_wire(source_port),
            dst_port: key.port,
            proto: key.proto,
            _pad: 0,
            _pad2: 0,
        };
        let pin = self
            .dataplane
            .maps()
            .flow_pin(&flow)
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

    fn flow_summary(&self, vip: VipAddr) -> Result<ResponseData, ApiError> {
        let v = self.vip(&vip)?;
        let entries = self
            .dataplane
            .maps()
            .flows_matching(|k| matches_vip(k, &vip));
        let mut per_backend: Vec<BackendFlows> = v
            .backends
            .iter()
            .map(|b| BackendFlows {
                address: b.address,
                flows: 0,
            })
            .collect();
        let mut stale = 0;
        for (_, pin) in &entries {
            match self
                .dataplane
                .pinned_backend(&vip, pin)
                .and_then(|a| per_backend.iter_mut().find(|b| b.address == a))
            {
                Some(b) => b.flows += 1,
                None => stale += 1,
            }
        }
        Ok(ResponseData::FlowSummary {
            flows: FlowSummary {
                vip,
                total: entries.len() as u64,
                per_backend,
                stale,
            },
        })
    }
}

fn matches_vip(key: &FlowKey, vip: &VipAddr) -> bool {
    let k = vip.key();
    key.dst_addr == k.addr && key.dst_port == k.port && key.proto == k.proto
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

fn check_weight(weight: u32) -> Result<(), ApiError> {
    if weight > MAX_WEIGHT {
        return Err(err(
            ErrorCode::InvalidValue,
            format!("weight {weight} is above the maximum {MAX_WEIGHT}"),
        ));
    }
    Ok(())
}

fn check_unicast(what: &str, addr: Ipv4Addr) -> Result<(), ApiError> {
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
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
    let backend_index = |v: &VipConfig, addr: Ipv4Addr| -> Result<usize, ApiError> {
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
            hash_source_only,
        } => {
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
            vips.push(super::protocol::vip_entry(*vip, size, *hash_source_only));
            Ok(format!("added VIP {vip} (table size {size})"))
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
        Request::Drain { vip, backend } | Request::Undrain { vip, backend } => {
            let drained = matches!(request, Request::Drain { .. });
            let i = find(vips, vip)?;
            let j = backend_index(&vips[i], *backend)?;
            vips[i].backends[j].drained = drained;
            Ok(format!(
                "{} backend {backend} of VIP {vip}",
                if drained { "drained" } else { "undrained" }
            ))
        }
        other => Err(err(
            ErrorCode::Internal,
            format!("{other:?} is not a mutation"),
        )),
    }
}
