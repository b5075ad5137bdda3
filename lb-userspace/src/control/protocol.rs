//! The control protocol, shared by `lb-agent` (server) and `lbctl`
//! (client): one JSON object per line in each direction. Documented for
//! operators in `docs/control-api.md`.
//!
//! A request is `{"op": "<operation>", ...fields}`, optionally with
//! `"v": 1` (the protocol version; other versions are refused). A response
//! is `{"ok": true, ...}` or `{"ok": false, "error": {"code", "message"}}`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    config::{AdminState, BackendConfig, Config, HealthCheckConfig, VipConfig},
    dataplane::{ApplyReport, VipAddr},
    encap::{Encap, EncapKind},
    health::{CheckSpec, Health, ProbeResult},
    policy::Policy,
    trace::packet::{Headers, PacketSpec},
};

/// Version of this protocol. Requests may carry it as `"v"`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted, in bytes (newline excluded).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

/// Every operation name (`op`), as the server reports them for unknown ones.
pub const OPERATIONS: &[&str] = &[
    "version",
    "list_vips",
    "add_vip",
    "remove_vip",
    "list_backends",
    "add_backend",
    "remove_backend",
    "set_weight",
    "drain",
    "undrain",
    "disable",
    "enable",
    "set_health_check",
    "set_fail_open",
    "set_policy",
    "show_config",
    "stats",
    "lookup_flow",
    "flow_summary",
    "flush_flows",
    "trace",
];

/// A VIP named in a request.
pub type VipRef = VipAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // Field-less operations are written `Op {}`: serde ignores extra fields
    // on unit variants even with deny_unknown_fields.
    /// Agent and protocol versions.
    Version {},
    /// Every VIP with its backends.
    ListVips {},
    AddVip {
        vip: VipRef,
        /// Maglev table size (a prime); default 65537.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        table_size: Option<u32>,
        /// Scheduling policy (docs/policies.md); default maglev.
        #[serde(default, skip_serializing_if = "is_default_policy")]
        policy: Policy,
        /// maglev-source and affinity: client prefix length (1-32 for an IPv4
        /// VIP, 1-128 for an IPv6 one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_prefix: Option<u8>,
        /// Source-IP affinity timeout in seconds; absent: none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        affinity_timeout: Option<u32>,
        /// least-conn: seconds of silence after which a connection stops
        /// counting.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idle_timeout: Option<u32>,
        /// Answer echo requests to the VIP's address; default true.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        icmp_echo: Option<bool>,
        /// `ipip` (default) or `gue`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encap: Option<EncapKind>,
        /// `gue`: the outer UDP destination port; default 6080.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gue_port: Option<u16>,
    },
    RemoveVip {
        vip: VipRef,
    },
    ListBackends {
        vip: VipRef,
    },
    AddBackend {
        vip: VipRef,
        backend: IpAddr,
        /// Default 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<u32>,
    },
    RemoveBackend {
        vip: VipRef,
        backend: IpAddr,
    },
    SetWeight {
        vip: VipRef,
        backend: IpAddr,
        weight: u32,
    },
    /// No new flows for the backend; established flows continue.
    Drain {
        vip: VipRef,
        backend: IpAddr,
    },
    Undrain {
        vip: VipRef,
        backend: IpAddr,
    },
    /// Out of the data path: its established flows are re-selected.
    Disable {
        vip: VipRef,
        backend: IpAddr,
    },
    /// Back to enabled (from draining or disabled).
    Enable {
        vip: VipRef,
        backend: IpAddr,
    },
    /// Replaces the health-check settings of a VIP, or with `backend` of
    /// one backend (overriding the VIP's field by field); null removes them.
    SetHealthCheck {
        vip: VipRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<IpAddr>,
        /// Required: `null` removes the settings (a missing field is an
        /// error, not a removal).
        #[serde(deserialize_with = "Option::deserialize")]
        health_check: Option<HealthCheckConfig>,
    },
    /// Whether the VIP keeps its enabled backends when all are unhealthy.
    SetFailOpen {
        vip: VipRef,
        fail_open: bool,
    },
    /// Replaces the VIP's scheduling policy and all its settings (fields
    /// left out take their defaults). Established connections stay on
    /// their backends; new ones follow the new policy.
    SetPolicy {
        vip: VipRef,
        /// Scheduling policy (docs/policies.md); default maglev.
        #[serde(default, skip_serializing_if = "is_default_policy")]
        policy: Policy,
        /// maglev-source and affinity: client prefix length (1-32 for an IPv4
        /// VIP, 1-128 for an IPv6 one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_prefix: Option<u8>,
        /// Source-IP affinity timeout in seconds; absent: none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        affinity_timeout: Option<u32>,
        /// least-conn: seconds of silence after which a connection stops
        /// counting.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idle_timeout: Option<u32>,
    },
    /// The running configuration (config file settings plus every change).
    ShowConfig {},
    /// Counters per VIP, per backend and global, summed over CPUs.
    Stats {},
    /// Which backend a flow reaches: the ring's choice (same hash and table
    /// as the kernel) and the connection table's pin, if any.
    LookupFlow {
        vip: VipRef,
        source: IpAddr,
        source_port: u16,
    },
    /// Number of connection-table entries of a VIP, per backend.
    FlowSummary {
        vip: VipRef,
    },
    /// Deletes a VIP's connection-table entries (its flows are re-selected
    /// from the ring on their next packet).
    FlushFlows {
        vip: VipRef,
    },
    /// Runs one packet through a trace instance of the balancer (live
    /// tables, scratch connection table and counters): exactly one of a
    /// described `packet` or a whole Ethernet `frame` in hex.
    Trace {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        packet: Option<PacketSpec>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        frame: Option<String>,
    },
}

impl Request {
    /// Whether the request changes the service state.
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Request::AddVip { .. }
                | Request::RemoveVip { .. }
                | Request::AddBackend { .. }
                | Request::RemoveBackend { .. }
                | Request::SetWeight { .. }
                | Request::Drain { .. }
                | Request::Undrain { .. }
                | Request::Disable { .. }
                | Request::Enable { .. }
                | Request::SetHealthCheck { .. }
                | Request::SetFailOpen { .. }
                | Request::SetPolicy { .. }
                | Request::FlushFlows { .. }
        )
    }
}

/// Machine-readable error codes (`error.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not JSON.
    BadJson,
    /// JSON, but not a valid request: not an object, missing or extra
    /// fields, wrong types.
    BadRequest,
    /// `op` names no operation.
    UnknownOp,
    /// `v` is not a supported protocol version.
    UnsupportedVersion,
    /// A field that must hold an IP address (IPv4 or IPv6) does not, or a
    /// pair of addresses that must share a family (a flow's client and VIP,
    /// a traced packet's source and destination) does not.
    InvalidAddress,
    /// A value out of range (weight, table size, port).
    InvalidValue,
    DuplicateVip,
    DuplicateBackend,
    UnknownVip,
    UnknownBackend,
    /// More VIPs, backends or ring slots than the data path holds.
    Capacity,
    /// The request line exceeds `MAX_REQUEST_BYTES`.
    RequestTooLarge,
    /// The agent failed to carry out a valid request (see the message).
    Internal,
}

impl ErrorCode {
    /// Every code (the documentation test walks them; a unit test keeps the
    /// list complete).
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::UnsupportedVersion,
        ErrorCode::InvalidAddress,
        ErrorCode::InvalidValue,
        ErrorCode::DuplicateVip,
        ErrorCode::DuplicateBackend,
        ErrorCode::UnknownVip,
        ErrorCode::UnknownBackend,
        ErrorCode::Capacity,
        ErrorCode::RequestTooLarge,
        ErrorCode::Internal,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = serde_json::to_value(self.code).ok();
        let code = code.as_ref().and_then(|v| v.as_str()).unwrap_or("error");
        write!(f, "{code}: {}", self.message)
    }
}

impl std::error::Error for ApiError {}

/// A response line. Exactly one of `error` (when `ok` is false) or `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub data: Option<ResponseData>,
}

impl Response {
    pub fn success(data: ResponseData) -> Self {
        Self {
            ok: true,
            error: None,
            data: Some(data),
        }
    }
    pub fn failure(error: ApiError) -> Self {
        Self {
            ok: false,
            error: Some(error),
            data: None,
        }
    }
}

/// The payload of a successful response; each variant has its own key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResponseData {
    Version {
        version: VersionInfo,
    },
    Vips {
        vips: Vec<VipInfo>,
    },
    Backends {
        backends: Vec<BackendInfo>,
    },
    Config {
        config: Config,
    },
    Stats {
        stats: StatsReport,
    },
    Flow {
        flow: FlowLookup,
    },
    FlowSummary {
        flows: FlowSummary,
    },
    /// What a mutating request changed.
    Changed {
        changed: ChangeReport,
    },
    Trace {
        trace: Box<TraceReport>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub agent: String,
    pub protocol: u32,
}

/// A VIP's scheduling policy and its settings, as requests carry them
/// (see `VipConfig` for each field's meaning).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySettings {
    #[serde(default)]
    pub policy: Policy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_prefix: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u32>,
}

fn is_default_policy(policy: &Policy) -> bool {
    *policy == Policy::Maglev
}

impl PolicySettings {
    /// The settings of a configured VIP.
    pub fn of(vip: &VipConfig) -> Self {
        Self {
            policy: vip.effective_policy(),
            source_prefix: vip.source_prefix,
            affinity_timeout: vip.affinity_timeout,
            idle_timeout: vip.idle_timeout,
        }
    }

    /// Writes these settings into a VIP's configuration.
    pub fn apply_to(&self, vip: &mut VipConfig) {
        vip.policy = self.policy;
        vip.hash_source_only = false;
        vip.source_prefix = self.source_prefix;
        vip.affinity_timeout = self.affinity_timeout;
        vip.idle_timeout = self.idle_timeout;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipInfo {
    pub vip: VipAddr,
    pub table_size: u32,
    /// Scheduling policy and its settings.
    #[serde(flatten)]
    pub policy: PolicySettings,
    /// Whether the VIP lets the balancer answer echo requests to its
    /// address (the address answers when any of its VIPs does).
    pub icmp_echo: bool,
    /// How packets travel to the backends: `ipip` or `gue`.
    pub encap: EncapKind,
    /// `gue`: the outer UDP destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gue_port: Option<u16>,
    /// The VIP's health-check settings as configured (null: no check).
    pub health_check: Option<HealthCheckConfig>,
    /// Setting: keep all enabled backends when all are unhealthy.
    pub fail_open: bool,
    /// Whether the VIP is failing open right now.
    pub failing_open: bool,
    /// Digest of the VIP's Maglev table as written to the data path
    /// (`DataPlane::table_digest`: 32 hex digits over table size, hash mode
    /// and every slot's backend address). Written by the agent; read by
    /// `lbctl digest` and operators comparing LB nodes: equal digests mean
    /// every new flow of the VIP gets the same backend on both nodes. Null
    /// when the data path does not hold the VIP.
    #[serde(default)]
    pub digest: Option<String>,
    pub backends: Vec<BackendInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub address: IpAddr,
    pub weight: u32,
    /// The operator's state: enabled, draining or disabled.
    pub admin: AdminState,
    /// From the probes: unknown (counted as healthy), healthy, unhealthy.
    pub health: Health,
    /// The resolved check (null: not checked).
    pub check: Option<CheckSpec>,
    /// The latest probe, its consecutive successes and failures, and when
    /// the health state last changed.
    pub last_probe: Option<ProbeResult>,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub last_transition_unix_ms: Option<u64>,
    /// Share of the VIP's ring slots (new flows), 0.0 to 1.0.
    pub ring_share: f64,
    /// least-conn VIPs: the open connections the data path counts for the
    /// backend (what the policy compares); null for other policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub global: GlobalCounters,
    pub vips: Vec<VipCounters>,
}

/// The data path's global counters summed over CPUs (one field per
/// verdict reason; see `lb_common::GlobalStats`).
pub type GlobalCounters = lb_common::GlobalStats;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipCounters {
    pub vip: VipAddr,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendCounters>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendCounters {
    pub address: IpAddr,
    pub packets: u64,
    pub bytes: u64,
}

impl VipCounters {
    pub fn new(vip: VipAddr, s: &lb_common::VipStats, backends: Vec<BackendCounters>) -> Self {
        Self {
            vip,
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            backends,
        }
    }
}

impl BackendCounters {
    pub fn new(address: IpAddr, s: &lb_common::BackendStats) -> Self {
        Self {
            address,
            packets: s.packets,
            bytes: s.bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowLookup {
    pub vip: VipAddr,
    pub source: IpAddr,
    pub source_port: u16,
    /// What the ring gives a new flow (none: no backend takes new flows).
    pub ring_backend: Option<IpAddr>,
    /// Where the connection table pins the flow now, if it does (and the
    /// pin is still valid).
    pub pinned_backend: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowSummary {
    pub vip: VipAddr,
    pub total: u64,
    /// Entries per backend of the VIP.
    pub per_backend: Vec<BackendFlows>,
    /// Entries pinned to backends no longer in the VIP (re-selected on
    /// their next packet, or evicted).
    pub stale: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendFlows {
    pub address: IpAddr,
    pub flows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeReport {
    #[serde(flatten)]
    pub applied: ApplyReport,
    /// Connection-table entries deleted (`flush_flows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows_flushed: Option<u64>,
}

/// What a traced packet did in the trace instance of the balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReport {
    /// `XDP_TX`, `XDP_PASS`, `XDP_DROP`, `XDP_REDIRECT` or `XDP_ABORTED`.
    pub verdict: String,
    /// The VIP the packet is addressed to, if the agent serves it.
    pub vip: Option<VipAddr>,
    /// The backend the balancer selected (sent to, unless dropped later).
    pub backend: Option<IpAddr>,
    /// How: `pinned` (a connection-table hit), `new` (from the ring) or
    /// `reselected` (a stale pin replaced from the ring); null otherwise.
    pub flow: Option<String>,
    /// The backend the live connection table pinned the tuple to (copied
    /// into the scratch table before the run).
    pub live_pin: Option<IpAddr>,
    /// The agent's own model: what the ring gives a new flow of this tuple.
    pub ring_backend: Option<IpAddr>,
    /// The trace instance's counters for this packet alone: the global
    /// ones, and the VIP and backend it counted for.
    pub stats: StatsReport,
    pub input: Headers,
    pub output: Headers,
    /// The frame as the program left it, in hex.
    pub output_frame: String,
}

/// Helpers shared by both sides for building VIP and backend entries.
pub fn backend_entry(address: IpAddr, weight: u32) -> BackendConfig {
    BackendConfig {
        address,
        weight,
        admin: AdminState::Enabled,
        health_check: None,
    }
}

pub fn vip_entry(
    vip: VipAddr,
    table_size: u32,
    policy: &PolicySettings,
    icmp_echo: bool,
    encap: Encap,
) -> VipConfig {
    let mut entry = VipConfig {
        address: vip.addr,
        port: vip.port,
        protocol: vip.proto,
        table_size,
        policy: Policy::Maglev,
        source_prefix: None,
        affinity_timeout: None,
        idle_timeout: None,
        hash_source_only: false,
        icmp_echo,
        encap: (encap != Encap::Ipip).then_some(encap.kind()),
        gue_port: encap.gue_port(),
        health_check: None,
        fail_open: true,
        backends: Vec::new(),
    };
    policy.apply_to(&mut entry);
    entry
}

/// Parses a `address:port/protocol` VIP as written on `lbctl`'s command
/// line (an IPv6 address in brackets: `[2001:db8::10]:80/tcp`).
pub fn parse_vip(text: &str) -> Result<VipAddr, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::Protocol;
    use std::net::Ipv4Addr;

    #[test]
    fn every_error_code_is_in_all() {
        for code in ErrorCode::ALL {
            // A new code fails to compile here until it is listed in ALL.
            match code {
                ErrorCode::BadJson
                | ErrorCode::BadRequest
                | ErrorCode::UnknownOp
                | ErrorCode::UnsupportedVersion
                | ErrorCode::InvalidAddress
                | ErrorCode::InvalidValue
                | ErrorCode::DuplicateVip
                | ErrorCode::DuplicateBackend
                | ErrorCode::UnknownVip
                | ErrorCode::UnknownBackend
                | ErrorCode::Capacity
                | ErrorCode::RequestTooLarge
                | ErrorCode::Internal => {}
            }
        }
        let distinct: std::collections::BTreeSet<String> =
            ErrorCode::ALL.iter().map(|c| format!("{c:?}")).collect();
        assert_eq!(distinct.len(), ErrorCode::ALL.len(), "listed twice");
    }

    #[test]
    fn requests_round_trip_as_documented() {
        let line = r#"{"op":"add_backend","vip":{"address":"198.18.0.10","port":80,"protocol":"tcp"},"backend":"198.19.1.2","weight":3}"#;
        let req: Request = serde_json::from_str(line).expect("parses");
        assert_eq!(
            req,
            Request::AddBackend {
                vip: VipAddr {
                    addr: Ipv4Addr::new(198, 18, 0, 10).into(),
                    port: 80,
                    proto: Protocol::Tcp
                },
                backend: Ipv4Addr::new(198, 19, 1, 2).into(),
                weight: Some(3),
            }
        );
        assert_eq!(serde_json::to_string(&req).expect("serializes"), line);
        let version: Request = serde_json::from_str(r#"{"op":"version"}"#).expect("parses");
        assert_eq!(version, Request::Version {});
    }

    #[test]
    fn unknown_fields_and_ops_are_refused() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"version","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"remove_vip"}"#).is_err());
        let vip = r#""vip":{"address":"198.18.0.10","port":80,"protocol":"tcp"}"#;
        assert!(
            serde_json::from_str::<Request>(&format!(r#"{{"op":"set_health_check",{vip}}}"#))
                .is_err()
        );
        assert!(serde_json::from_str::<Request>(&format!(
            r#"{{"op":"set_health_check",{vip},"health_check":null}}"#
        ))
        .is_ok());
    }

    #[test]
    fn responses_round_trip() {
        let ok = Response::success(ResponseData::Version {
            version: VersionInfo {
                agent: "0.1.0".into(),
                protocol: PROTOCOL_VERSION,
            },
        });
        let text = serde_json::to_string(&ok).expect("serializes");
        assert_eq!(
            text,
            r#"{"ok":true,"version":{"agent":"0.1.0","protocol":1}}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&text).expect("parses"), ok);
        let err = Response::failure(ApiError::new(
            ErrorCode::UnknownVip,
            "no VIP 198.18.0.10:80/tcp",
        ));
        let text = serde_json::to_string(&err).expect("serializes");
        assert_eq!(
            text,
            r#"{"ok":false,"error":{"code":"unknown_vip","message":"no VIP 198.18.0.10:80/tcp"}}"#
        );
        assert_eq!(
            serde_json::from_str::<Response>(&text).expect("parses"),
            err
        );
    }

    #[test]
    fn vips_on_the_command_line() {
        assert_eq!(
            parse_vip("198.18.0.10:80/tcp").expect("valid"),
            VipAddr {
                addr: Ipv4Addr::new(198, 18, 0, 10).into(),
                port: 80,
                proto: Protocol::Tcp
            }
        );
        assert!(parse_vip("198.18.0.10:80").is_err());
        assert!(parse_vip("198.18.0.10:http/tcp").is_err());
        let unbracketed = parse_vip("2001:db8::1:80/tcp").unwrap_err();
        assert!(unbracketed.contains("in brackets"), "{unbracketed}");
        let v6 = parse_vip("[2001:db8::10]:80/udp").expect("valid");
        assert_eq!(
            v6,
            VipAddr {
                addr: "2001:db8::10".parse().expect("an IPv6 address"),
                port: 80,
                proto: Protocol::Udp
            }
        );
        assert!(parse_vip("[198.18.0.10]:80/tcp").is_err());
        assert!(parse_vip("[2001:db8::10]/tcp").is_err());
    }

    #[test]
    fn vips_display_and_parse_back_in_either_family() {
        for text in [
            "198.18.0.10:80/tcp",
            "[2001:db8::10]:80/tcp",
            "[2001:db8::1:0:0:1]:53/udp",
        ] {
            let vip = parse_vip(text).expect("valid");
            assert_eq!(vip.to_string(), text);
            assert_eq!(parse_vip(&vip.to_string()), Ok(vip));
        }
    }

    #[test]
    fn ipv6_addresses_in_requests_and_answers() {
        let line = r#"{"op":"lookup_flow","vip":{"address":"2001:db8::10","port":443,"protocol":"tcp"},"source":"2001:db8:1::7","source_port":40000}"#;
        let req: Request = serde_json::from_str(line).expect("parses");
        assert_eq!(
            req,
            Request::LookupFlow {
                vip: parse_vip("[2001:db8::10]:443/tcp").expect("valid"),
                source: "2001:db8:1::7".parse().expect("an IPv6 address"),
                source_port: 40000,
            }
        );
        assert_eq!(serde_json::to_string(&req).expect("serializes"), line);
        let add = r#"{"op":"add_backend","vip":{"address":"198.18.0.10","port":80,"protocol":"tcp"},"backend":"2001:db8:2::2"}"#;
        let req: Request = serde_json::from_str(add).expect("parses");
        assert_eq!(serde_json::to_string(&req).expect("serializes"), add);
    }
}
