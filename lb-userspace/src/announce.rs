//! Announcing VIPs to a routing daemon: the agent keeps one route per
//! announceable VIP address in a kernel routing table of its own; the
//! routing daemon (BIRD, see docs/deployment.md) imports that table and
//! announces its routes over BGP. The agent speaks no routing protocol.
//!
//! Each route is `blackhole ADDR/32 table TABLE proto PROTOCOL` (an IPv6
//! VIP address: `ADDR/128` in the IPv6 table of the same number). It changes
//! nothing in this host's forwarding: no rule sends lookups to the table
//! (the VIP traffic is taken by XDP before routing), and the blackhole type
//! means that a table consulted by mistake drops rather than loops. The
//! protocol number marks the routes as the agent's, so the agent touches
//! no other route of the table and the daemon can filter on it.
//!
//! Routes are written with iproute2's `ip` (a Debian `Priority: important`
//! package, present on every LB node); `ip -json` lists what is there, so
//! every change is a reconciliation of the kernel's table against the
//! wanted set, and a table edited by hand, or left by a killed agent, is
//! repaired.
//!
//! This module depends on no other module of the crate (the configuration
//! embeds [`AnnounceConfig`], not the other way round).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Default `announce.protocol`: a number iproute2's `rt_protos` gives to
/// no one (it names 0-4, 8-16, 18, 42, 99 and 186-192).
pub const DEFAULT_PROTOCOL: u8 = 201;

/// The `announce` section of the agent's configuration: written by the
/// operator (the same on every node of an active-active group), read by
/// `lb-agent` at start-up and by `lb-agent --detach` (which withdraws).
/// Absent: the agent announces nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// `announce.table`: the kernel routing table (1-252) the agent keeps
    /// the VIP routes in; the routing daemon's kernel protocol imports it
    /// (BIRD: `kernel table N; learn;`). Must be used by nothing else.
    pub table: u32,
    /// `announce.protocol`: the routes' protocol number (5-255, not 12,
    /// BIRD's own), so the agent only ever touches its own routes; the
    /// daemon may filter on it (BIRD: `krt_source = N`). Default 201.
    #[serde(default = "default_protocol")]
    pub protocol: u8,
    /// `announce.withdraw_when_all_down`: withdraw a VIP whose backends are
    /// all unhealthy or disabled, even while its data path fails open, so
    /// the upstream router sends its traffic to nodes that still reach a
    /// healthy backend (default true). False: announce every VIP while
    /// the data path is attached, whatever the health checks say.
    #[serde(default = "default_true")]
    pub withdraw_when_all_down: bool,
    /// `announce.on_stop`: what a stopping agent (SIGTERM, SIGINT) does
    /// with its routes. `withdraw` (default): the node leaves the ECMP
    /// group before the agent exits; the pinned data path keeps forwarding
    /// the flows that still arrive while the router converges. `keep`: the
    /// node stays in the group, served by the pinned data path with the
    /// last tables (a restart or an upgrade without moving any flow), but
    /// health changes are not followed until the next agent runs.
    /// `lb-agent --detach` always withdraws.
    #[serde(default)]
    pub on_stop: OnStop,
}

/// `announce.on_stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStop {
    #[default]
    Withdraw,
    Keep,
}

fn default_protocol() -> u8 {
    DEFAULT_PROTOCOL
}

fn default_true() -> bool {
    true
}

impl AnnounceConfig {
    /// Checks the numbers; the message names the field.
    pub fn validate(&self) -> Result<()> {
        // 0 is "unspecified", 253-255 are the kernel's default, main and
        // local tables: the agent's routes there would route this host.
        if !(1..=252).contains(&self.table) {
            bail!(
                "announce.table: {} is not a table of its own (use 1-252; 253-255 are the kernel's default, main and local tables)",
                self.table
            );
        }
        // 0-4 are unspec, redirect, kernel, boot and static: routes an
        // administrator or the kernel writes, which the agent would remove.
        if self.protocol <= 4 || self.protocol == 12 {
            bail!(
                "announce.protocol: {} belongs to the kernel, the administrator or BIRD (use 5-255 except 12)",
                self.protocol
            );
        }
        Ok(())
    }
}

/// What a reconciliation changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteChange {
    pub announced: Vec<IpAddr>,
    pub withdrawn: Vec<IpAddr>,
}

impl RouteChange {
    pub fn is_empty(&self) -> bool {
        self.announced.is_empty() && self.withdrawn.is_empty()
    }
}

/// The routes to add and to delete to go from `present` to `wanted`.
pub fn plan(present: &BTreeSet<IpAddr>, wanted: &BTreeSet<IpAddr>) -> RouteChange {
    RouteChange {
        announced: wanted.difference(present).copied().collect(),
        withdrawn: present.difference(wanted).copied().collect(),
    }
}

/// Holds back the return of an address withdrawn while the agent runs.
///
/// An address is withdrawn when every backend of its VIPs is down, as when
/// the node itself is cut off. Its backends' health checks rise again one
/// by one, and the first one to rise makes the address servable, with only
/// that backend in the ring: announced at once, the node would take back
/// its share of the ECMP group and send established connections pinned
/// elsewhere to the wrong backend (reset). So an address wanted again is
/// announced only once it has been wanted for `settle` (the largest health
/// check interval: the other healthy backends rise within one). Withdrawals,
/// and the first announcement of an address in this run (at start-up, or a
/// new VIP), are not delayed.
#[derive(Debug)]
pub struct HoldDown {
    settle: Duration,
    /// Addresses withdrawn in this run.
    withdrawn: BTreeSet<IpAddr>,
    /// Withdrawn addresses wanted again, and since when.
    returning: BTreeMap<IpAddr, Instant>,
    released: BTreeSet<IpAddr>,
}

impl HoldDown {
    pub fn new(settle: Duration) -> Self {
        Self {
            settle,
            withdrawn: BTreeSet::new(),
            returning: BTreeMap::new(),
            released: BTreeSet::new(),
        }
    }

    /// The addresses of `wanted` to announce at `now`, and when to ask
    /// again (an address is still settling).
    pub fn release(
        &mut self,
        wanted: &BTreeSet<IpAddr>,
        now: Instant,
    ) -> (BTreeSet<IpAddr>, Option<Instant>) {
        for gone in self.released.difference(wanted) {
            self.withdrawn.insert(*gone);
        }
        self.released.retain(|a| wanted.contains(a));
        self.returning.retain(|a, _| wanted.contains(a));
        let mut next = None;
        for &addr in wanted {
            if self.released.contains(&addr) {
                continue;
            }
            if !self.withdrawn.contains(&addr) {
                self.released.insert(addr);
                continue;
            }
            let since = *self.returning.entry(addr).or_insert(now);
            let due = since + self.settle;
            if due <= now {
                self.returning.remove(&addr);
                self.released.insert(addr);
            } else {
                next = Some(next.map_or(due, |n: Instant| n.min(due)));
            }
        }
        (self.released.clone(), next)
    }
}

/// Keeps the agent's routes in the announce table equal to a wanted set.
#[derive(Debug, Clone)]
pub struct Announcer {
    table: u32,
    protocol: u8,
}

impl Announcer {
    pub fn new(config: &AnnounceConfig) -> Self {
        Self {
            table: config.table,
            protocol: config.protocol,
        }
    }

    pub fn table(&self) -> u32 {
        self.table
    }

    /// The agent's routes of one family (`-4` or `-6`) now in the table
    /// (only /32 and /128 routes of its protocol count).
    fn present_of(&self, family: &str) -> Result<BTreeSet<IpAddr>> {
        let out = match ip(&[
            "-json",
            family,
            "route",
            "show",
            "table",
            &self.table.to_string(),
            "proto",
            &self.protocol.to_string(),
        ]) {
            Ok(out) => out,
            // The kernel creates a table with its first route and may drop
            // it with its last: no table is an empty one.
            Err(e) if is_missing_table(&format!("{e:#}")) => return Ok(BTreeSet::new()),
            Err(e) => return Err(e),
        };
        parse_routes(&out).with_context(|| format!("reading routing table {}", self.table))
    }

    /// Makes the table hold exactly `wanted`; returns what changed. Routes
    /// are added before stale ones are deleted, so a VIP that stays is
    /// never withdrawn in between.
    pub fn sync(&self, wanted: &BTreeSet<IpAddr>) -> Result<RouteChange> {
        let mut present = self.present_of("-4")?;
        match self.present_of("-6") {
            Ok(v6) => present.extend(v6),
            // A host without IPv6 (ipv6.disable=1) has no IPv6 route to
            // keep or remove: only an IPv6 VIP to announce makes it an error.
            Err(e) if !wanted.iter().any(IpAddr::is_ipv6) => {
                log::debug!("announce: no IPv6 routes read ({e:#})");
            }
            Err(e) => return Err(e),
        }
        let change = plan(&present, wanted);
        for addr in &change.announced {
            self.route("replace", *addr)?;
        }
        for addr in &change.withdrawn {
            self.route("delete", *addr)?;
        }
        Ok(change)
    }

    /// Removes every route of the agent's from the table.
    pub fn withdraw_all(&self) -> Result<RouteChange> {
        self.sync(&BTreeSet::new())
    }

    fn route(&self, verb: &str, addr: IpAddr) -> Result<()> {
        let (family, host_prefix) = match addr {
            IpAddr::V4(_) => ("-4", 32),
            IpAddr::V6(_) => ("-6", 128),
        };
        ip(&[
            family,
            "route",
            verb,
            "blackhole",
            &format!("{addr}/{host_prefix}"),
            "table",
            &self.table.to_string(),
            "proto",
            &self.protocol.to_string(),
        ])
        .map(|_| ())
        .with_context(|| format!("{verb} the route of VIP address {addr}"))
    }
}

/// Runs `ip ARGS`; its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("ip printed something that is not UTF-8")
}

/// Whether an `ip route show table N` error says the table does not exist
/// (yet): Linux has no table until a route is added to it.
pub fn is_missing_table(message: &str) -> bool {
    message.contains("FIB table does not exist")
}

/// One route of `ip -json route show`: only the fields used.
#[derive(Deserialize)]
struct JsonRoute {
    dst: String,
}

/// The host-route destinations (/32, /128) of `ip -json -4 route show` or
/// `ip -json -6 route show` output (empty output is an empty table);
/// anything else (a wider prefix, `default`) is not the agent's and is
/// left out.
pub fn parse_routes(json: &str) -> Result<BTreeSet<IpAddr>> {
    if json.trim().is_empty() {
        return Ok(BTreeSet::new());
    }
    let routes: Vec<JsonRoute> =
        serde_json::from_str(json).context("ip -json printed something unexpected")?;
    Ok(routes
        .iter()
        .filter_map(|r| {
            let (addr, prefix) = match r.dst.split_once('/') {
                Some((addr, prefix)) => (addr, Some(prefix)),
                None => (r.dst.as_str(), None),
            };
            let addr: IpAddr = addr.parse().ok()?;
            let host = if addr.is_ipv4() { "32" } else { "128" };
            prefix.is_none_or(|p| p == host).then_some(addr)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn cfg(table: u32, protocol: u8) -> AnnounceConfig {
        AnnounceConfig {
            table,
            protocol,
            withdraw_when_all_down: true,
            on_stop: OnStop::Withdraw,
        }
    }

    #[test]
    fn defaults_and_validation() {
        let c: AnnounceConfig = serde_json::from_str(r#"{"table": 100}"#).expect("parses");
        assert_eq!(c, cfg(100, DEFAULT_PROTOCOL));
        c.validate().expect("valid");
        for bad in [0, 253, 254, 255, 1000] {
            let e = cfg(bad, 201).validate().unwrap_err().to_string();
            assert!(e.starts_with("announce.table:"), "{e}");
        }
        for bad in [0, 2, 4, 12] {
            let e = cfg(100, bad).validate().unwrap_err().to_string();
            assert!(e.starts_with("announce.protocol:"), "{e}");
        }
        let keep: AnnounceConfig = serde_json::from_str(
            r#"{"table": 7, "on_stop": "keep", "withdraw_when_all_down": false}"#,
        )
        .expect("parses");
        assert_eq!(keep.on_stop, OnStop::Keep);
        assert!(!keep.withdraw_when_all_down);
        assert!(serde_json::from_str::<AnnounceConfig>(r#"{"table": 7, "tabel": 8}"#).is_err());
        assert!(
            serde_json::from_str::<AnnounceConfig>(r#"{"table": 7, "on_stop": "stay"}"#).is_err()
        );
    }

    #[test]
    fn ip_json_output_is_read() {
        let out = r#"[{"type":"blackhole","dst":"198.18.0.10","protocol":"201","scope":"global","flags":[]},
                     {"type":"blackhole","dst":"198.18.0.11/32","protocol":"201","flags":[]},
                     {"type":"unicast","dst":"198.18.0.0/24","protocol":"201","flags":[]},
                     {"dst":"default","protocol":"201","flags":[]}]"#;
        let addrs = parse_routes(out).expect("parses");
        assert_eq!(
            addrs.into_iter().collect::<Vec<_>>(),
            vec![
                IpAddr::from(Ipv4Addr::new(198, 18, 0, 10)),
                IpAddr::from(Ipv4Addr::new(198, 18, 0, 11))
            ]
        );
        assert!(parse_routes("").expect("empty").is_empty());
        assert!(parse_routes("\n").expect("empty").is_empty());
        assert!(parse_routes("[]").expect("empty").is_empty());
        assert!(parse_routes("Error: ...").is_err());
    }

    #[test]
    fn ipv6_host_routes_are_read_and_wider_prefixes_left_out() {
        let out = r#"[{"type":"blackhole","dst":"2001:db8::10","protocol":"201","flags":[]},
                     {"type":"blackhole","dst":"2001:db8::11/128","protocol":"201","flags":[]},
                     {"type":"blackhole","dst":"2001:db8::/32","protocol":"201","flags":[]},
                     {"type":"blackhole","dst":"2001:db8:1::/64","protocol":"201","flags":[]}]"#;
        let addrs: Vec<IpAddr> = parse_routes(out).expect("parses").into_iter().collect();
        let want: Vec<IpAddr> = ["2001:db8::10", "2001:db8::11"]
            .iter()
            .map(|a| a.parse().expect("an address"))
            .collect();
        assert_eq!(addrs, want);
    }

    #[test]
    fn a_withdrawn_address_returns_only_after_settling() {
        let a: IpAddr = "198.18.0.10".parse().expect("address");
        let b: IpAddr = "2001:db8::10".parse().expect("address");
        let settle = Duration::from_millis(500);
        let mut hold = HoldDown::new(settle);
        let t0 = Instant::now();
        let set = |v: &[IpAddr]| v.iter().copied().collect::<BTreeSet<_>>();
        // First announcements are not delayed.
        assert_eq!(hold.release(&set(&[a, b]), t0), (set(&[a, b]), None));
        // A withdrawal is immediate.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(hold.release(&set(&[b]), t1), (set(&[b]), None));
        // Wanted again: held for `settle`, then announced.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(
            hold.release(&set(&[a, b]), t2),
            (set(&[b]), Some(t2 + settle))
        );
        let t3 = t2 + Duration::from_millis(200);
        assert_eq!(
            hold.release(&set(&[a, b]), t3),
            (set(&[b]), Some(t2 + settle))
        );
        // Withdrawn again while settling: the wait starts over.
        assert_eq!(hold.release(&set(&[b]), t3), (set(&[b]), None));
        let t4 = t3 + Duration::from_millis(100);
        assert_eq!(
            hold.release(&set(&[a, b]), t4),
            (set(&[b]), Some(t4 + settle))
        );
        assert_eq!(
            hold.release(&set(&[a, b]), t4 + settle),
            (set(&[a, b]), None)
        );
        // No settling time: back at once.
        let mut eager = HoldDown::new(Duration::ZERO);
        eager.release(&set(&[a]), t0);
        eager.release(&set(&[]), t1);
        assert_eq!(eager.release(&set(&[a]), t2), (set(&[a]), None));
    }

    #[test]
    fn plan_adds_missing_and_removes_stale() {
        let a: IpAddr = Ipv4Addr::new(198, 18, 0, 1).into();
        let b: IpAddr = "2001:db8::2".parse().expect("an address");
        let c: IpAddr = Ipv4Addr::new(198, 18, 0, 3).into();
        let present: BTreeSet<_> = [a, b].into();
        let wanted: BTreeSet<_> = [b, c].into();
        assert_eq!(
            plan(&present, &wanted),
            RouteChange {
                announced: vec![c],
                withdrawn: vec![a]
            }
        );
        assert!(plan(&wanted, &wanted).is_empty());
    }
}
