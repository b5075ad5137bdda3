//! The agent's configuration file: JSON with `//` comments, every field
//! checked before anything is loaded or attached. Errors name the field
//! (`vips[0].backends[2].address: invalid IP address syntax`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{anyhow, bail, Context, Result};
use lb_common::{
    ipv4_to_wire, ipv6_to_wire, DataPathConfig, DEFAULT_ICMP_BURST, DEFAULT_ICMP_RATE,
    NEXT_HOP_FIB, NEXT_HOP_STATIC,
};
use serde::{Deserialize, Serialize};

use crate::{
    announce::AnnounceConfig,
    dataplane::{self, BackendSpec, Protocol, VipAddr, VipSpec},
    encap::{Encap, EncapKind},
    health::{self, CheckKind, CheckSpec},
    loader::BalancerOptions,
    maglev::DEFAULT_TABLE_SIZE,
    policy::{self, Policy},
};

// Types the layers below config own (config reads them, they never read
// config): the XDP attach mode (loader) and MAC syntax (host).
pub use crate::{host::parse_mac, loader::XdpModeSetting};

/// Largest accepted backend weight: weights are relative, and a bound keeps
/// a typo (an extra zero or three) from starving every other backend.
pub const MAX_WEIGHT: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum NextHop {
    /// `bpf_fib_lookup` on the backend's address (needs IPv4 forwarding on
    /// the interface; the agent turns it on).
    #[default]
    Fib,
    /// Every encapsulated packet goes out of the interface to this MAC.
    Static { mac: String, mtu: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The interface the balancer is attached to.
    pub interface: String,
    #[serde(default)]
    pub xdp_mode: XdpModeSetting,
    /// Outer source address of encapsulated packets (an address of this host).
    pub source_address: Ipv4Addr,
    /// Outer source address of packets to IPv6 backends (an IPv6 address
    /// of this host). Absent: IPv6 backends are refused (IPv6 VIPs with
    /// IPv4 backends need none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address6: Option<Ipv6Addr>,
    #[serde(default)]
    pub next_hop: NextHop,
    /// Size of the ring pool in slots (default: room for 64 VIPs at 65537).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_pool_slots: Option<u32>,
    /// Capacity of the connection table (default 1048576).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_table_entries: Option<u32>,
    /// The control socket.
    #[serde(default)]
    pub control: ControlConfig,
    /// The Prometheus endpoint (off unless `metrics.listen` is set).
    #[serde(default, skip_serializing_if = "MetricsConfig::is_off")]
    pub metrics: MetricsConfig,
    /// `announce`: keep a route per announceable VIP address in a kernel
    /// table that a routing daemon announces (active-active behind ECMP;
    /// see [`AnnounceConfig`] and docs/deployment.md). Written by the
    /// operator, read by `lb-agent` at start-up and by `--detach`. Absent:
    /// nothing is announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceConfig>,
    /// Where the VIPs are saved after every change (default
    /// `/var/lib/lb/state.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<std::path::PathBuf>,
    /// Where the data path is pinned (default `/sys/fs/bpf/lb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_root: Option<std::path::PathBuf>,
    /// ICMP messages the data path sends itself.
    #[serde(default, skip_serializing_if = "IcmpConfig::is_default")]
    pub icmp: IcmpConfig,
    #[serde(default)]
    pub vips: Vec<VipConfig>,
}

/// `icmp`: the rate limit of the "fragmentation needed" messages the data
/// path sends to clients (a token bucket per CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpConfig {
    /// Messages per second and CPU (0: send none, drop as before).
    #[serde(default = "default_icmp_rate")]
    pub rate_per_cpu: u32,
    /// Messages a CPU may send at once after a quiet spell (1 or more).
    #[serde(default = "default_icmp_burst")]
    pub burst: u32,
}

impl Default for IcmpConfig {
    fn default() -> Self {
        Self {
            rate_per_cpu: DEFAULT_ICMP_RATE,
            burst: DEFAULT_ICMP_BURST,
        }
    }
}

impl IcmpConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_icmp_rate() -> u32 {
    DEFAULT_ICMP_RATE
}

fn default_icmp_burst() -> u32 {
    DEFAULT_ICMP_BURST
}

/// Largest accepted `icmp.rate_per_cpu` (one message per microsecond).
pub const MAX_ICMP_RATE: u32 = 1_000_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Socket path (default `/run/lb/lb.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<std::path::PathBuf>,
    /// Operators' group: the socket becomes mode 0660 owned by it (default:
    /// root only, 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `metrics.listen`: the address and port `lb-agent` serves Prometheus
    /// metrics on (`GET /metrics`), e.g. `127.0.0.1:9100`; read at start-up
    /// by `lb-agent` (`--metrics-listen` overrides it) and scraped by
    /// Prometheus. Unset: no endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
}

impl MetricsConfig {
    fn is_off(&self) -> bool {
        self.listen.is_none()
    }
}

/// Checks an address to serve metrics on; the message names the field.
pub fn validate_metrics_listen(addr: std::net::SocketAddr) -> Result<()> {
    if addr.port() == 0 {
        bail!("metrics.listen: {addr}: port 0 would pick a random port; name one");
    }
    if addr.ip().is_multicast() {
        bail!("metrics.listen: {addr} is a multicast address");
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// IPv4 or IPv6.
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default = "default_table_size")]
    pub table_size: u32,
    /// How new flows pick their backend (docs/policies.md); default maglev.
    #[serde(default)]
    pub policy: Policy,
    /// `maglev-source` and affinity: clients whose addresses share this
    /// many leading bits count as one client (IPv4 VIPs 1-32, default 32;
    /// IPv6 VIPs 1-128, default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_prefix: Option<u8>,
    /// Source-IP affinity, for any policy: a client's new connections go
    /// to the backend of its last one for this many seconds after that
    /// connection's last packet. Absent: no affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    /// `least-conn`: a connection without a packet for this many seconds
    /// no longer counts (default 300 for TCP, 60 for UDP, which has no FIN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u32>,
    /// The old name of `"policy": "maglev-source"`: read, never written.
    #[serde(default, skip_serializing)]
    pub hash_source_only: bool,
    /// The balancer answers ICMP echo requests to the VIP's address (an
    /// address answers when any of its VIPs allows it). Default true.
    #[serde(default = "default_true")]
    pub icmp_echo: bool,
    /// How packets travel to the backends: `ipip` (absent) or `gue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap: Option<EncapKind>,
    /// `gue`: the outer UDP destination port (default 6080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gue_port: Option<u16>,
    /// Health check of the VIP's backends (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// When every enabled backend is unhealthy, keep them all in the table
    /// (fail open) rather than drop the VIP's new flows. Default true.
    #[serde(default = "default_true")]
    pub fail_open: bool,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
}

fn default_true() -> bool {
    true
}

/// `idle_timeout` of a least-conn VIP that does not set it, in seconds.
pub fn default_idle_timeout(protocol: Protocol) -> u32 {
    match protocol {
        Protocol::Tcp => 300,
        Protocol::Udp => 60,
    }
}

/// Longest `idle_timeout` accepted, in seconds (a day).
pub const MAX_IDLE_TIMEOUT_S: u32 = 24 * 3600;

impl VipConfig {
    /// The policy in effect (`hash_source_only` is the old name of
    /// `maglev-source`).
    pub fn effective_policy(&self) -> Policy {
        if self.hash_source_only && self.policy == Policy::Maglev {
            Policy::MaglevSource
        } else {
            self.policy
        }
    }

    /// Least-conn's idle timeout in seconds.
    pub fn effective_idle_timeout(&self) -> u32 {
        self.idle_timeout
            .unwrap_or_else(|| default_idle_timeout(self.protocol))
    }

    /// The encapsulation of `encap` and `gue_port`; the error names the
    /// field.
    pub fn encapsulation(&self) -> Result<Encap, String> {
        Encap::from_fields(self.encap, self.gue_port).map_err(|e| e.to_string())
    }

    /// Checks the policy settings; the error names the field.
    pub fn check_policy(&self) -> Result<(), String> {
        check_policy_fields(
            self.address,
            self.effective_policy(),
            self.source_prefix,
            self.affinity_timeout,
            self.idle_timeout,
        )?;
        if self.hash_source_only && !self.effective_policy().is_hash() {
            return Err(format!(
                "hash_source_only: conflicts with policy {} (it is the old name of maglev-source)",
                self.policy
            ));
        }
        Ok(())
    }
}

/// Checks the policy settings of a VIP on address `vip` as the config
/// file and the control socket give them; the error starts with the
/// field's name.
pub fn check_policy_fields(
    vip: IpAddr,
    policy: Policy,
    source_prefix: Option<u8>,
    affinity_timeout: Option<u32>,
    idle_timeout: Option<u32>,
) -> Result<(), String> {
    if let Some(p) = source_prefix {
        let range = policy::source_prefix_range(vip);
        if !range.contains(&p) {
            let family = if vip.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(format!(
                "source_prefix: {p} is out of range {}-{} for an {family} VIP",
                range.start(),
                range.end()
            ));
        }
        if policy != Policy::MaglevSource && affinity_timeout.is_none() {
            return Err(format!(
                "source_prefix: policy {policy} without affinity does not use it \
                 (it applies to maglev-source and to affinity)"
            ));
        }
    }
    match affinity_timeout {
        Some(0) => {
            return Err(
                "affinity_timeout: 0 is no timeout; leave the field out for no affinity".into(),
            )
        }
        Some(t) if t > policy::MAX_AFFINITY_TIMEOUT_S => {
            return Err(format!(
                "affinity_timeout: {t} s is above the maximum {} s",
                policy::MAX_AFFINITY_TIMEOUT_S
            ))
        }
        _ => {}
    }
    match idle_timeout {
        Some(_) if policy != Policy::LeastConn => Err(format!(
            "idle_timeout: policy {policy} does not use it (only least-conn counts connections)"
        )),
        Some(0) => {
            Err("idle_timeout: 0 would count no connection; leave it out for the default".into())
        }
        Some(t) if t > MAX_IDLE_TIMEOUT_S => Err(format!(
            "idle_timeout: {t} s is above the maximum {MAX_IDLE_TIMEOUT_S} s"
        )),
        _ => Ok(()),
    }
}

/// The operator's say on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new flows (when healthy).
    #[default]
    Enabled,
    /// No new flows; established flows continue (while healthy).
    Draining,
    /// Out of the data path: its established flows are re-selected.
    Disabled,
}

/// `type` of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    None,
    Tcp,
    Http,
}

/// Health-check settings as written in the config file or sent to the
/// control socket. Every field is optional: a backend's settings override
/// its VIP's field by field, and what neither sets takes the default
/// (port: the VIP's port; interval 2000 ms, timeout 1000 ms, rise 2,
/// fall 3; HTTP path `/`, expected status 200).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CheckType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
}

impl HealthCheckConfig {
    /// `self` with every field `over` sets replaced by it. When `over`
    /// changes the check's type, the HTTP fields come from `over` alone.
    pub fn overlay(&self, over: &HealthCheckConfig) -> HealthCheckConfig {
        let same_type = over.kind.is_none() || over.kind == self.kind;
        let http = |o: &Option<String>, s: &Option<String>| {
            if same_type {
                o.clone().or_else(|| s.clone())
            } else {
                o.clone()
            }
        };
        HealthCheckConfig {
            kind: over.kind.or(self.kind),
            port: over.port.or(self.port),
            interval_ms: over.interval_ms.or(self.interval_ms),
            timeout_ms: over.timeout_ms.or(self.timeout_ms),
            rise: over.rise.or(self.rise),
            fall: over.fall.or(self.fall),
            path: http(&over.path, &self.path),
            expect_status: if same_type {
                over.expect_status
                    .clone()
                    .or_else(|| self.expect_status.clone())
            } else {
                over.expect_status.clone()
            },
            host: http(&over.host, &self.host),
            body_contains: http(&over.body_contains, &self.body_contains),
        }
    }

    /// The complete, validated check for a service on `service_port`.
    pub fn resolve(&self, service_port: u16) -> Result<CheckSpec, String> {
        let kind = match self.kind.unwrap_or(CheckType::Tcp) {
            CheckType::None => CheckKind::None,
            CheckType::Tcp => CheckKind::Tcp,
            CheckType::Http => CheckKind::Http {
                path: self.path.clone().unwrap_or_else(|| "/".into()),
                expect_status: self.expect_status.clone().unwrap_or_else(|| vec![200]),
                host: self.host.clone(),
                body_contains: self.body_contains.clone(),
            },
        };
        let http_only = [
            ("path", self.path.is_some()),
            ("expect_status", self.expect_status.is_some()),
            ("host", self.host.is_some()),
            ("body_contains", self.body_contains.is_some()),
        ];
        if !matches!(kind, CheckKind::Http { .. }) {
            if let Some((field, _)) = http_only.iter().find(|(_, set)| *set) {
                return Err(format!("{field}: only for \"type\": \"http\""));
            }
        }
        let interval_ms = self.interval_ms.unwrap_or(health::DEFAULT_INTERVAL_MS);
        let spec = CheckSpec {
            kind,
            port: self.port.unwrap_or(service_port),
            interval_ms,
            // The default timeout shrinks with a short interval.
            timeout_ms: self
                .timeout_ms
                .unwrap_or(health::DEFAULT_TIMEOUT_MS.min(interval_ms)),
            rise: self.rise.unwrap_or(health::DEFAULT_RISE),
            fall: self.fall.unwrap_or(health::DEFAULT_FALL),
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// IPv4 or IPv6, whatever the VIP's family (IPv6 needs
    /// `source_address6`).
    pub address: IpAddr,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Enabled, draining or disabled. The weight is kept meanwhile.
    #[serde(default, skip_serializing_if = "is_enabled")]
    pub admin: AdminState,
    /// Overrides the VIP's health-check settings field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
}

fn is_enabled(state: &AdminState) -> bool {
    *state == AdminState::Enabled
}

impl VipConfig {
    /// The resolved check of one of this VIP's backends (`None`: no check).
    pub fn check_for(&self, backend: &BackendConfig) -> Result<Option<CheckSpec>, String> {
        let merged = match (&self.health_check, &backend.health_check) {
            (None, None) => return Ok(None),
            (Some(v), None) => v.clone(),
            (None, Some(b)) => b.clone(),
            (Some(v), Some(b)) => v.overlay(b),
        };
        merged.resolve(self.port).map(Some)
    }
}

fn default_table_size() -> u32 {
    DEFAULT_TABLE_SIZE
}

fn default_weight() -> u32 {
    1
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_with(path, None)
    }

    /// [`Config::from_file`] with `source_address6` replaced by
    /// `source_address6` when that is given (`lb-agent --source-address6`),
    /// before the VIPs are checked against it.
    pub fn from_file_with(path: &Path, source_address6: Option<Ipv6Addr>) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse_with(&text, source_address6)
            .with_context(|| format!("config file {}", path.display()))
    }

    /// Parses and validates (everything but the interface's existence).
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_with(text, None)
    }

    /// [`Config::parse`] with `source_address6` overridden when given.
    pub fn parse_with(text: &str, source_address6: Option<Ipv6Addr>) -> Result<Self> {
        let json = strip_comments(text);
        let de = &mut serde_json::Deserializer::from_str(&json);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                anyhow!("{inner}")
            } else {
                anyhow!("{path}: {inner}")
            }
        })?;
        let mut config = config;
        if source_address6.is_some() {
            config.source_address6 = source_address6;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if self.interface.is_empty() || self.interface.len() > 15 || self.interface.contains('/') {
            bail!(
                "interface: {:?} is not a valid interface name",
                self.interface
            );
        }
        if self.source_address.is_unspecified()
            || self.source_address.is_multicast()
            || self.source_address.is_broadcast()
        {
            bail!(
                "source_address: {} is not a unicast address",
                self.source_address
            );
        }
        if let Some(addr) = self.source_address6 {
            validate_source_address6(addr)?;
        }
        if let NextHop::Static { mac, mtu } = &self.next_hop {
            parse_mac(mac).context("next_hop.static.mac")?;
            if !(68..=65535).contains(mtu) {
                bail!("next_hop.static.mtu: {mtu} is outside 68..=65535");
            }
        }
        if let Some(slots) = self.ring_pool_slots {
            if slots == 0 {
                bail!("ring_pool_slots: must be positive");
            }
        }
        if let Some(entries) = self.flow_table_entries {
            if entries == 0 {
                bail!("flow_table_entries: must be positive");
            }
        }
        if let Some(announce) = &self.announce {
            announce.validate()?;
        }
        if let Some(addr) = self.metrics.listen {
            validate_metrics_listen(addr)?;
        }
        if self.icmp.rate_per_cpu > MAX_ICMP_RATE {
            bail!(
                "icmp.rate_per_cpu: {} is above the maximum {MAX_ICMP_RATE}",
                self.icmp.rate_per_cpu
            );
        }
        if !(1..=10_000).contains(&self.icmp.burst) {
            bail!("icmp.burst: {} is outside 1..=10000", self.icmp.burst);
        }
        let pool = self
            .balancer_options(DataPathConfig::default())
            .ring_pool_slots;
        validate_vips(&self.vips, pool, self.source_address6.is_some())?;
        Ok(())
    }

    /// The data path's load-time settings; `interface_mac` is the source
    /// MAC for the static next hop.
    pub fn data_path_config(&self, interface_mac: [u8; 6]) -> Result<DataPathConfig> {
        let mut config = DataPathConfig {
            lb_source_addr: ipv4_to_wire(self.source_address.octets()),
            next_hop_mode: NEXT_HOP_FIB,
            static_src_mac: [0; 6],
            static_dst_mac: [0; 6],
            static_mtu: 0,
            icmp_rate: self.icmp.rate_per_cpu,
            icmp_burst: self.icmp.burst,
            lb_source_addr6: self
                .source_address6
                .map_or([0; 4], |a| ipv6_to_wire(a.octets())),
        };
        if let NextHop::Static { mac, mtu } = &self.next_hop {
            config.next_hop_mode = NEXT_HOP_STATIC;
            config.static_src_mac = interface_mac;
            config.static_dst_mac = parse_mac(mac)?;
            config.static_mtu = *mtu;
        }
        Ok(config)
    }

    pub fn balancer_options(&self, config: DataPathConfig) -> BalancerOptions {
        let mut options = BalancerOptions::new(config);
        if let Some(slots) = self.ring_pool_slots {
            options.ring_pool_slots = slots;
        }
        if let Some(entries) = self.flow_table_entries {
            options.flow_table_entries = entries;
        }
        options
    }
}

/// Checks `source_address6` (the config file's, or `lb-agent`'s flag).
pub fn validate_source_address6(addr: Ipv6Addr) -> Result<()> {
    if !dataplane::is_unicast(IpAddr::V6(addr)) {
        bail!("source_address6: {addr} is not a unicast IPv6 address");
    }
    if addr.to_ipv4_mapped().is_some() {
        bail!("source_address6: {addr} is an IPv4-mapped address; give source_address for IPv4");
    }
    Ok(())
}

/// Checks a set of VIPs as a whole (field errors name the field by its
/// position, `vips[i].backends[j]...`): the rules for the config file and
/// for every change made through the control socket. `ipv6_source`: the
/// agent has `source_address6`, so IPv6 backends can be reached.
pub fn validate_vips(vips: &[VipConfig], ring_pool_slots: u32, ipv6_source: bool) -> Result<()> {
    for (i, vip) in vips.iter().enumerate() {
        if !dataplane::is_unicast(vip.address) {
            bail!(
                "vips[{i}].address: {} is not a unicast address",
                vip.address
            );
        }
        if vip.port == 0 {
            bail!("vips[{i}].port: 0 is not a service port");
        }
        if let Err(e) = vip.check_policy() {
            bail!("vips[{i}].{e}");
        }
        if let Err(e) = vip.encapsulation() {
            bail!("vips[{i}].{e}");
        }
        if let Some(check) = &vip.health_check {
            if let Err(e) = check.resolve(vip.port) {
                bail!("vips[{i}].health_check.{e}");
            }
        }
        for (j, b) in vip.backends.iter().enumerate() {
            if b.weight > MAX_WEIGHT {
                bail!(
                    "vips[{i}].backends[{j}].weight: {} is above the maximum {MAX_WEIGHT}",
                    b.weight
                );
            }
            if let Err(e) = vip.check_for(b) {
                bail!("vips[{i}].backends[{j}].health_check.{e}");
            }
            // Every backend, disabled ones too: enabling one later must
            // not be what fails.
            if let Err(e) = dataplane::check_backend_family(b.address, ipv6_source) {
                bail!("vips[{i}].backends[{j}].address: {e}");
            }
        }
    }
    dataplane::validate(&vip_specs(vips)).context("vips")?;
    // Every table, plus room to build the largest one again beside its old
    // self: a table is rewritten (health, weights) by writing a new one
    // and switching to it.
    let tables: u64 = vips.iter().map(|v| v.table_size as u64).sum();
    let rebuild = vips.iter().map(|v| v.table_size as u64).max().unwrap_or(0);
    if tables + rebuild > ring_pool_slots as u64 {
        bail!(
            "vips: the tables need {tables} ring slots, plus {rebuild} to rebuild the largest, \
             but ring_pool_slots is {ring_pool_slots}"
        );
    }
    Ok(())
}

/// What the data path serves for these VIPs if every backend is healthy
/// (draining backends at weight 0, disabled ones left out).
pub fn vip_specs(vips: &[VipConfig]) -> Vec<VipSpec> {
    effective_specs(vips, |_, _| true).0
}

/// What the data path serves given each backend's health, and which VIPs
/// fail open. A backend takes part unless it is disabled or unhealthy; a
/// draining one keeps its established flows (weight 0). When every enabled
/// backend of a VIP is unhealthy and the VIP fails open, all its enabled
/// and draining backends take part regardless of health.
pub fn effective_specs(
    vips: &[VipConfig],
    healthy: impl Fn(&VipConfig, &BackendConfig) -> bool,
) -> (Vec<VipSpec>, Vec<VipAddr>) {
    let mut failing_open = Vec::new();
    let specs = vips
        .iter()
        .map(|v| {
            let enabled: Vec<&BackendConfig> = v
                .backends
                .iter()
                .filter(|b| b.admin == AdminState::Enabled)
                .collect();
            let open = v.fail_open && !enabled.is_empty() && enabled.iter().all(|b| !healthy(v, b));
            if open {
                failing_open.push(v.vip());
            }
            VipSpec {
                vip: v.vip(),
                table_size: v.table_size,
                policy: v.effective_policy(),
                source_prefix: v
                    .source_prefix
                    .unwrap_or_else(|| dataplane::default_source_prefix(v.address)),
                affinity_timeout: v.affinity_timeout.unwrap_or(0),
                icmp_echo: v.icmp_echo,
                // Checked when the config was read or the VIP added.
                encap: v.encapsulation().unwrap_or_default(),
                backends: v
                    .backends
                    .iter()
                    .filter(|b| b.admin != AdminState::Disabled && (open || healthy(v, b)))
                    .map(|b| BackendSpec {
                        addr: b.address,
                        weight: if b.admin == AdminState::Draining {
                            0
                        } else {
                            b.weight
                        },
                    })
                    .collect(),
            }
        })
        .collect();
    (specs, failing_open)
}

/// The VIP addresses a node should announce while its data path is
/// attached: an address is announced while one of its VIPs can serve, so
/// withdrawing one sick service never takes down a healthy one on the same
/// address. A VIP can serve while one of its backends is enabled or
/// draining (a drained backend keeps its established flows) and not
/// unhealthy; with `withdraw_when_all_down` false, always.
pub fn announced_addresses(
    vips: &[VipConfig],
    healthy: impl Fn(&VipConfig, &BackendConfig) -> bool,
    withdraw_when_all_down: bool,
) -> std::collections::BTreeSet<IpAddr> {
    vips.iter()
        .filter(|v| {
            !withdraw_when_all_down
                || v.backends
                    .iter()
                    .any(|b| b.admin != AdminState::Disabled && healthy(v, b))
        })
        .map(|v| v.address)
        .collect()
}

impl VipConfig {
    pub fn vip(&self) -> VipAddr {
        VipAddr {
            addr: self.address,
            port: self.port,
            proto: self.protocol,
        }
    }
}

/// Removes `//` comments outside strings, keeping line structure so error
/// positions still match the file.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_string = false;
        let mut escaped = false;
        let mut cut = line.len();
        let bytes = line.as_bytes();
        for (i, &c) in bytes.iter().enumerate() {
            if in_string {
                match c {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
            } else if c == b'"' {
                in_string = true;
            } else if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
                cut = i;
                break;
            }
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        // the interface
        "interface": "eth0",
        "source_address": "198.18.1.2", // ours
        "vips": [{"address": "198.18.0.10", "port": 80, "protocol": "tcp",
                  "backends": [{"address": "198.19.1.2"}, {"address": "198.19.2.2", "weight": 3}]}]
    }"#;

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).expect_err("must be rejected"))
    }

    /// GOOD with `fields` added to its VIP.
    fn with_vip_fields(fields: &str) -> String {
        GOOD.replace(
            "\"protocol\": \"tcp\",",
            &format!("\"protocol\": \"tcp\", {fields},"),
        )
    }

    #[test]
    fn policies_parse_with_their_settings() {
        let c = Config::parse(GOOD).expect("GOOD");
        assert_eq!(c.vips[0].effective_policy(), Policy::Maglev);
        let c = Config::parse(&with_vip_fields(
            r#""policy": "least-conn", "idle_timeout": 30, "affinity_timeout": 600, "source_prefix": 24"#,
        ))
        .expect("least-conn with affinity");
        let v = &c.vips[0];
        assert_eq!(
            (
                v.policy,
                v.effective_idle_timeout(),
                v.affinity_timeout,
                v.source_prefix
            ),
            (Policy::LeastConn, 30, Some(600), Some(24))
        );
        let spec = &vip_specs(&c.vips)[0];
        assert_eq!(
            (spec.policy, spec.source_prefix, spec.affinity_timeout),
            (Policy::LeastConn, 24, 600)
        );
        // The old spelling of maglev-source still reads.
        let c = Config::parse(&with_vip_fields(r#""hash_source_only": true"#)).expect("old name");
        assert_eq!(c.vips[0].effective_policy(), Policy::MaglevSource);
        for p in ["maglev-source", "random", "round-robin"] {
            Config::parse(&with_vip_fields(&format!(r#""policy": "{p}""#)))
                .unwrap_or_else(|e| panic!("{p}: {e:#}"));
        }
        assert_eq!(default_idle_timeout(Protocol::Udp), 60);
    }

    #[test]
    fn bad_policy_settings_name_the_field() {
        let bad = |fields: &str, needle: &str| {
            let e = err(&with_vip_fields(fields));
            assert!(e.contains(needle), "{fields}: {e}");
        };
        bad(r#""policy": "fastest""#, "unknown variant `fastest`");
        bad(
            r#""policy": "maglev-source", "source_prefix": 0"#,
            "vips[0].source_prefix: 0 is out of range",
        );
        bad(
            r#""policy": "maglev-source", "source_prefix": 33"#,
            "vips[0].source_prefix: 33 is out of range",
        );
        bad(
            r#""source_prefix": 24"#,
            "vips[0].source_prefix: policy maglev without affinity",
        );
        bad(
            r#""affinity_timeout": 0"#,
            "vips[0].affinity_timeout: 0 is no timeout",
        );
        bad(
            r#""affinity_timeout": 604801"#,
            "vips[0].affinity_timeout: 604801 s is above",
        );
        bad(
            r#""idle_timeout": 30"#,
            "vips[0].idle_timeout: policy maglev does not use it",
        );
        bad(
            r#""policy": "least-conn", "idle_timeout": 0"#,
            "vips[0].idle_timeout: 0",
        );
        bad(
            r#""policy": "random", "hash_source_only": true"#,
            "hash_source_only: conflicts with policy random",
        );
        // Weights that do not fit the schedule, and too many least-conn backends.
        let heavy = GOOD.replace("\"weight\": 3", "\"weight\": 10000");
        let e = format!(
            "{:#}",
            Config::parse(&heavy.replace(
                "\"protocol\": \"tcp\",",
                "\"protocol\": \"tcp\", \"policy\": \"round-robin\", \"table_size\": 4099,"
            ))
            .expect_err("schedule too long")
        );
        assert!(e.contains("add up to 10001"), "{e}");
        let backends: Vec<String> = (1..=65)
            .map(|i| format!(r#"{{"address": "198.19.{}.{}"}}"#, i / 200, i % 200 + 1))
            .collect();
        let many = format!(
            r#"{{"interface": "eth0", "source_address": "198.18.1.2",
                "vips": [{{"address": "198.18.0.10", "port": 80, "protocol": "tcp",
                          "policy": "least-conn", "backends": [{}]}}]}}"#,
            backends.join(",")
        );
        let e = err(&many);
        assert!(e.contains("least-conn supports at most 64 backends"), "{e}");
    }

    /// A config with one VIP on `vip` with these backends and VIP fields,
    /// and `top` settings before `interface`.
    fn v6_config(top: &str, vip: &str, fields: &str, backends: &[&str]) -> String {
        let backends: Vec<String> = backends
            .iter()
            .map(|b| format!(r#"{{"address": "{b}"}}"#))
            .collect();
        format!(
            r#"{{{top} "interface": "eth0", "source_address": "198.18.1.2",
                "vips": [{{"address": "{vip}", "port": 443, "protocol": "tcp" {fields},
                          "backends": [{}]}}]}}"#,
            backends.join(",")
        )
    }

    #[test]
    fn ipv6_vips_and_backends_parse() {
        let src6 = r#""source_address6": "2001:db8:ffff::1","#;
        let c = Config::parse(&v6_config(
            src6,
            "2001:db8::10",
            "",
            &["2001:db8:1::2", "198.19.1.2"],
        ))
        .expect("an IPv6 VIP with backends of both families");
        let spec = &vip_specs(&c.vips)[0];
        assert_eq!(spec.vip.to_string(), "[2001:db8::10]:443/tcp");
        assert_eq!(spec.source_prefix, 128, "an IPv6 VIP's default prefix");
        assert_eq!(spec.backends.len(), 2);
        let dp = c.data_path_config([0; 6]).expect("data path config");
        assert_eq!(
            dp.lb_source_addr6,
            lb_common::ipv6_to_wire(
                "2001:db8:ffff::1"
                    .parse::<Ipv6Addr>()
                    .expect("addr")
                    .octets()
            )
        );
        // An IPv4 VIP with IPv6 backends, and an IPv6 VIP with IPv4 ones
        // and no IPv6 source (6in4 needs none).
        Config::parse(&v6_config(src6, "198.18.0.10", "", &["2001:db8:1::2"])).expect("v4 VIP");
        let c = Config::parse(&v6_config("", "2001:db8::10", "", &["198.19.1.2"]))
            .expect("6in4 without source_address6");
        assert_eq!(
            c.data_path_config([0; 6]).expect("dp").lb_source_addr6,
            [0; 4]
        );
        let c = Config::parse(&v6_config(
            "",
            "2001:db8::10",
            r#", "policy": "maglev-source", "source_prefix": 64"#,
            &["198.19.1.2"],
        ))
        .expect("a /64 prefix");
        assert_eq!(vip_specs(&c.vips)[0].source_prefix, 64);
        // The IPv4 default is unchanged.
        let c = Config::parse(&v6_config("", "198.18.0.10", "", &["198.19.1.2"])).expect("v4");
        assert_eq!(vip_specs(&c.vips)[0].source_prefix, 32);
    }

    #[test]
    fn ipv6_family_rules_are_refused_with_their_reason() {
        let src6 = r#""source_address6": "2001:db8:ffff::1","#;
        // GUE reaches backends of both families.
        let gue = v6_config(
            src6,
            "2001:db8::10",
            r#", "encap": "gue""#,
            &["198.19.1.2", "2001:db8:1::2"],
        );
        Config::parse(&gue).expect("GUE to IPv4 and IPv6 backends");
        let e = err(&gue.replace(src6, ""));
        assert!(
            e.contains("vips[0].backends[1].address: backend 2001:db8:1::2 is IPv6, but the agent has no IPv6 source address"),
            "{e}"
        );
        let e = err(&v6_config("", "198.18.0.10", "", &["2001:db8:1::2"]));
        assert!(
            e.contains("vips[0].backends[0].address: backend 2001:db8:1::2 is IPv6, but the agent has no IPv6 source address"),
            "{e}"
        );
        // Disabled backends too: enabling one must not be what fails.
        let disabled = v6_config("", "198.18.0.10", "", &["198.19.1.2"]).replace(
            r#"{"address": "198.19.1.2"}"#,
            r#"{"address": "198.19.1.2"}, {"address": "2001:db8:1::2", "admin": "disabled"}"#,
        );
        assert!(err(&disabled).contains("no IPv6 source address"));
        let prefix = |vip: &str, p: u32| {
            err(&v6_config(
                src6,
                vip,
                &format!(r#", "policy": "maglev-source", "source_prefix": {p}"#),
                &["198.19.1.2"],
            ))
        };
        let e = prefix("198.18.0.10", 33);
        assert!(
            e.contains("source_prefix: 33 is out of range 1-32 for an IPv4 VIP"),
            "{e}"
        );
        let e = prefix("2001:db8::10", 129);
        assert!(
            e.contains("source_prefix: 129 is out of range 1-128 for an IPv6 VIP"),
            "{e}"
        );
        for bad in ["ff02::1", "::", "::ffff:198.18.1.2"] {
            let e = err(&v6_config(
                &format!(r#""source_address6": "{bad}","#),
                "198.18.0.10",
                "",
                &["198.19.1.2"],
            ));
            assert!(e.contains("source_address6:"), "{bad}: {e}");
        }
        let e = err(&v6_config(
            r#""source_address6": "198.18.1.2","#,
            "198.18.0.10",
            "",
            &[],
        ));
        assert!(e.contains("source_address6"), "{e}");
        assert!(err(&v6_config(src6, "ff02::10", "", &[])).contains("not a unicast address"));
        assert!(err(&v6_config(src6, "::", "", &[])).contains("not a unicast address"));
        let e = err(&v6_config(
            src6,
            "2001:db8::10",
            "",
            &["2001:db8:1::2", "2001:db8:1::2"],
        ));
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn source_address6_can_come_from_the_command_line() {
        let text = v6_config("", "198.18.0.10", "", &["2001:db8:1::2"]);
        assert!(Config::parse(&text).is_err());
        let flag: Ipv6Addr = "2001:db8:ffff::1".parse().expect("address");
        let c = Config::parse_with(&text, Some(flag)).expect("the flag supplies the source");
        assert_eq!(c.source_address6, Some(flag));
    }

    #[test]
    fn icmp_settings_default_and_are_checked() {
        let config = Config::parse(GOOD).expect("valid");
        assert!(config.vips[0].icmp_echo, "echo is on by default");
        assert_eq!(config.icmp, IcmpConfig::default());
        let dp = config.data_path_config([0; 6]).expect("data path config");
        assert_eq!(
            (dp.icmp_rate, dp.icmp_burst),
            (DEFAULT_ICMP_RATE, DEFAULT_ICMP_BURST)
        );
        let with =
            |extra: &str| GOOD.replacen("\"interface\"", &format!("{extra}, \"interface\""), 1);
        let config = Config::parse(&with(r#""icmp": {"rate_per_cpu": 0}"#)).expect("rate 0 is off");
        assert_eq!(
            config.data_path_config([0; 6]).expect("config").icmp_rate,
            0
        );
        assert!(err(&with(r#""icmp": {"rate_per_cpu": 2000000}"#)).contains("icmp.rate_per_cpu"));
        assert!(err(&with(r#""icmp": {"burst": 0}"#)).contains("icmp.burst"));
        assert!(err(&with(r#""icmp": {"rate": 5}"#)).contains("unknown field"));
        let off = GOOD.replace(
            "\"protocol\": \"tcp\",",
            "\"protocol\": \"tcp\", \"icmp_echo\": false,",
        );
        let config = Config::parse(&off).expect("valid");
        assert!(!config.vips[0].icmp_echo);
        assert!(!vip_specs(&config.vips)[0].icmp_echo);
    }

    #[test]
    fn parses_with_comments_and_defaults() {
        let c = Config::parse(GOOD).expect("valid");
        assert_eq!(c.xdp_mode, XdpModeSetting::Auto);
        assert_eq!(c.next_hop, NextHop::Fib);
        assert_eq!(c.vips[0].table_size, 65537);
        assert_eq!(c.vips[0].backends[0].weight, 1);
        assert_eq!(c.vips[0].backends[1].weight, 3);
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../examples/lb.jsonc");
        Config::parse(text).expect("examples/lb.jsonc must parse");
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(&GOOD.replace("198.19.2.2", "198.19.2.300"))
            .contains("vips[0].backends[1].address"));
        assert!(err(&GOOD.replace("\"port\"", "\"prot\"")).contains("unknown field `prot`"));
        assert!(err(&GOOD.replace("\"tcp\"", "\"sctp\"")).contains("vips[0].protocol"));
        assert!(err(&GOOD.replace("\"weight\": 3", "\"weight\": 30000"))
            .contains("vips[0].backends[1].weight"));
        assert!(
            err(&GOOD.replace("\"port\": 80,", "\"port\": 80, \"table_size\": 65536,"))
                .contains("65536")
        );
        assert!(err("{").contains("EOF"));
        let metrics = |listen: &str| {
            GOOD.replacen(
                "\"vips\"",
                &format!("\"metrics\": {{\"listen\": \"{listen}\"}}, \"vips\""),
                1,
            )
        };
        let good = Config::parse(&metrics("127.0.0.1:9100")).expect("valid");
        assert_eq!(
            good.metrics.listen,
            Some("127.0.0.1:9100".parse().expect("addr"))
        );
        assert!(err(&metrics("127.0.0.1")).contains("metrics.listen: invalid socket address"));
        assert!(err(&metrics("127.0.0.1:0")).contains("metrics.listen: 127.0.0.1:0: port 0"));
        assert!(err(&metrics("[::1]:99999")).contains("metrics.listen"));
        assert!(err("{\"interface\": \"eth0\"}").contains("source_address"));
        let dup = GOOD.replace(
            "\"vips\": [{",
            "\"vips\": [{\"address\": \"198.18.0.10\", \"port\": 80, \"protocol\": \"tcp\"}, {",
        );
        assert!(err(&dup).contains("configured twice"), "{}", err(&dup));
    }

    #[test]
    fn the_ring_pool_keeps_room_to_rebuild_the_largest_table() {
        let config = Config::parse(GOOD).expect("valid");
        let vip = |port: u16, table_size: u32| VipConfig {
            port,
            table_size,
            ..config.vips[0].clone()
        };
        let two = [vip(80, 65537), vip(81, 65537)];
        validate_vips(&two, 3 * 65537, false).expect("two tables and a rebuild fit");
        let e = format!(
            "{:#}",
            validate_vips(&two, 2 * 65537, false).expect_err("no room")
        );
        assert!(e.contains("plus 65537 to rebuild"), "{e}");
        let mixed = [vip(80, 65537), vip(81, 251)];
        validate_vips(&mixed, 2 * 65537 + 251, false).expect("the rebuild is of the largest");
        assert!(validate_vips(&mixed, 2 * 65537 + 250, false).is_err());
    }

    #[test]
    fn mac_addresses() {
        assert_eq!(
            parse_mac("02:00:00:00:00:0a").expect("valid"),
            [2, 0, 0, 0, 0, 10]
        );
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
    }

    #[test]
    fn health_settings_resolve_with_defaults_and_overrides() {
        let vip: HealthCheckConfig =
            serde_json::from_str(r#"{"type": "http", "path": "/health", "rise": 5}"#)
                .expect("parses");
        let spec = vip.resolve(8080).expect("valid");
        assert_eq!(spec.port, 8080, "the VIP's port by default");
        assert_eq!(
            (spec.interval_ms, spec.timeout_ms, spec.rise, spec.fall),
            (2000, 1000, 5, 3)
        );
        assert!(
            matches!(spec.kind, CheckKind::Http { ref path, ref expect_status, .. } if path == "/health" && expect_status == &[200])
        );
        let over: HealthCheckConfig = serde_json::from_str(r#"{"port": 9000}"#).expect("parses");
        let merged = vip.overlay(&over).resolve(8080).expect("valid");
        assert_eq!((merged.port, merged.rise), (9000, 5), "field by field");
        let tcp: HealthCheckConfig = serde_json::from_str(r#"{"type": "tcp"}"#).expect("parses");
        assert_eq!(
            vip.overlay(&tcp).resolve(80).expect("valid").kind,
            CheckKind::Tcp,
            "a new type drops the HTTP fields"
        );
        let bad: HealthCheckConfig =
            serde_json::from_str(r#"{"type": "tcp", "path": "/x"}"#).expect("parses");
        assert!(bad
            .resolve(80)
            .expect_err("path without http")
            .starts_with("path"));
        let quick: HealthCheckConfig =
            serde_json::from_str(r#"{"interval_ms": 500}"#).expect("parses");
        assert_eq!(
            quick.resolve(80).expect("valid").timeout_ms,
            500,
            "the default timeout fits the interval"
        );
        let slow: HealthCheckConfig =
            serde_json::from_str(r#"{"timeout_ms": 5000}"#).expect("parses");
        assert!(slow
            .resolve(80)
            .expect_err("timeout > interval")
            .starts_with("timeout_ms"));
        assert!(err(&GOOD.replace(
            "\"port\": 80,",
            "\"port\": 80, \"health_check\": {\"rise\": 0},"
        ))
        .contains("vips[0].health_check.rise"));
    }

    #[test]
    fn fail_open_keeps_every_enabled_backend_when_all_are_unhealthy() {
        let mut c = Config::parse(GOOD).expect("valid");
        c.vips[0].backends.push(BackendConfig {
            address: "198.19.3.2".parse().expect("address"),
            weight: 1,
            admin: AdminState::Disabled,
            health_check: None,
        });
        let sick = |_: &VipConfig, b: &BackendConfig| !matches!(b.address, std::net::IpAddr::V4(a) if a.octets()[2] == 1);
        let (specs, open) = effective_specs(&c.vips, sick);
        assert!(open.is_empty());
        assert_eq!(
            specs[0].backends.len(),
            1,
            "only the healthy one: {specs:?}"
        );
        let (specs, open) = effective_specs(&c.vips, |_, _| false);
        assert_eq!(open, vec![c.vips[0].vip()]);
        assert_eq!(
            specs[0].backends.len(),
            2,
            "both enabled ones, never the disabled one: {specs:?}"
        );
        c.vips[0].fail_open = false;
        let (specs, open) = effective_specs(&c.vips, |_, _| false);
        assert!(open.is_empty() && specs[0].backends.is_empty());
    }

    #[test]
    fn an_address_is_announced_while_one_of_its_vips_can_serve() {
        let mut c = Config::parse(GOOD).expect("valid");
        let vip = c.vips[0].address;
        // A second service on the same address with one backend.
        let mut other = c.vips[0].clone();
        other.port = 443;
        other.backends.truncate(1);
        c.vips.push(other);
        let all = |_: &VipConfig, _: &BackendConfig| true;
        let none = |_: &VipConfig, _: &BackendConfig| false;
        assert_eq!(announced_addresses(&c.vips, all, true), [vip].into());
        assert!(
            announced_addresses(&c.vips, none, true).is_empty(),
            "every backend down: withdrawn, fail-open or not"
        );
        assert_eq!(
            announced_addresses(&c.vips, none, false),
            [vip].into(),
            "withdraw_when_all_down false: announced regardless"
        );
        // Port 443 all down, port 80 serving: the address stays.
        let only_80 = |v: &VipConfig, _: &BackendConfig| v.port == 80;
        assert_eq!(announced_addresses(&c.vips, only_80, true), [vip].into());
        // Disabled backends do not serve; draining ones keep their flows.
        for b in &mut c.vips[0].backends {
            b.admin = AdminState::Disabled;
        }
        c.vips[1].backends[0].admin = AdminState::Disabled;
        assert!(announced_addresses(&c.vips, all, true).is_empty());
        c.vips[1].backends[0].admin = AdminState::Draining;
        assert_eq!(announced_addresses(&c.vips, all, true), [vip].into());
        c.vips.clear();
        assert!(announced_addresses(&c.vips, all, false).is_empty());
    }

    #[test]
    fn announce_section_is_checked() {
        let with = |section: &str| {
            GOOD.replacen("\"vips\"", &format!("\"announce\": {section}, \"vips\""), 1)
        };
        let c = Config::parse(&with(r#"{"table": 100}"#)).expect("valid");
        let a = c.announce.expect("announce");
        assert_eq!(
            (a.table, a.protocol),
            (100, crate::announce::DEFAULT_PROTOCOL)
        );
        assert!(err(&with(r#"{"table": 254}"#)).contains("announce.table"));
        assert!(err(&with(r#"{"table": 100, "protocol": 12}"#)).contains("announce.protocol"));
        assert!(err(&with(r#"{"tabl": 100}"#)).contains("announce"));
        assert!(err(&with(r#"{"table": 100, "on_stop": "never"}"#)).contains("announce.on_stop"));
    }

    #[test]
    fn comments_inside_strings_are_kept() {
        assert_eq!(strip_comments("\"a//b\" // c"), "\"a//b\" \n");
    }
}
