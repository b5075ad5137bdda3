//! The human-readable output of each response.

use lb_userspace::{
    config::AdminState,
    control::protocol::{
        self, BackendInfo, ChangeReport, FlowLookup, FlowSummary, GlobalCounters, PolicySettings,
        Response, ResponseData, StatsReport, VersionInfo, VipInfo,
    },
    health::{CheckKind, CheckSpec, Health},
};

use crate::{
    cli::{Command, FlowCommand},
    request::{expected_key, op_name},
    table::{Align, Table},
};

/// The human-readable output of a successful response, or why the response
/// does not fit the request. `now_unix_ms` dates the health transitions.
pub(crate) fn render(
    command: &Command,
    response: Response,
    now_unix_ms: u64,
) -> Result<String, String> {
    let Some(data) = response.data else {
        return Err("a success without data".into());
    };
    let mutation = command.request().is_some_and(|r| r.is_mutation());
    match (command, data) {
        (Command::Version, ResponseData::Version { version }) => Ok(render_version(&version)),
        (Command::Vips, ResponseData::Vips { vips }) => Ok(render_vips(&vips)),
        (Command::Digest, ResponseData::Vips { vips }) => Ok(render_digests(&vips)),
        (Command::Backends { .. }, ResponseData::Backends { backends }) => {
            Ok(render_backends(&backends, now_unix_ms))
        }
        (Command::Health { action: None, .. }, ResponseData::Backends { backends }) => {
            Ok(render_health(&backends, now_unix_ms))
        }
        (Command::Config, ResponseData::Config { config }) => serde_json::to_string_pretty(&config)
            .map(|text| text + "\n")
            .map_err(|e| format!("cannot print the configuration: {e}")),
        (Command::Stats { all }, ResponseData::Stats { stats }) => Ok(render_stats(&stats, *all)),
        (Command::Flow(FlowCommand::Lookup { .. }), ResponseData::Flow { flow }) => {
            Ok(render_lookup(&flow))
        }
        (Command::Flow(FlowCommand::Summary { .. }), ResponseData::FlowSummary { flows }) => {
            Ok(render_summary(&flows))
        }
        (_, ResponseData::Changed { changed }) if mutation => {
            Ok(summarize_change(&changed, command.changes_settings()) + "\n")
        }
        (command, _) => Err(format!(
            "the answer to {} does not carry {}",
            command
                .request()
                .map_or_else(|| "the request".into(), |r| op_name(&r)),
            expected_key(command)
        )),
    }
}

pub(crate) fn render_version(version: &VersionInfo) -> String {
    let mut table = Table::new(&[("PROGRAM", Align::Left), ("VERSION", Align::Left)]);
    table.header = false;
    table.row([
        "lbctl".to_string(),
        format!(
            "{} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            protocol::PROTOCOL_VERSION
        ),
    ]);
    table.row([
        "lb-agent".to_string(),
        format!("{} (protocol {})", version.agent, version.protocol),
    ]);
    table.render()
}

/// One line per VIP, its table digest: the same text on every node that
/// serves the same tables, so nodes compare with `diff`.
pub(crate) fn render_digests(vips: &[VipInfo]) -> String {
    if vips.is_empty() {
        return "no VIPs\n".into();
    }
    let mut table = Table::new(&[("VIP", Align::Left), ("DIGEST", Align::Left)]);
    for vip in vips {
        table.row([
            vip.vip.to_string(),
            vip.digest
                .clone()
                .unwrap_or_else(|| "- (not in the data path)".into()),
        ]);
    }
    table.render()
}

/// A VIP's policy in a few characters: `maglev`, `maglev-source/24`,
/// `random+affinity 300s`.
fn policy_label(p: &PolicySettings) -> String {
    let mut label = p.policy.to_string();
    if let Some(prefix) = p.source_prefix {
        label.push_str(&format!("/{prefix}"));
    }
    if let Some(t) = p.affinity_timeout {
        label.push_str(&format!("+affinity {t}s"));
    }
    label
}

pub(crate) fn render_vips(vips: &[VipInfo]) -> String {
    if vips.is_empty() {
        return "no VIPs\n".into();
    }
    let mut table = Table::new(&[
        ("VIP", Align::Left),
        ("TABLE-SIZE", Align::Right),
        ("POLICY", Align::Left),
        ("ENCAP", Align::Left),
        ("ECHO", Align::Left),
        ("CHECK", Align::Left),
        ("FAIL-OPEN", Align::Left),
        ("BACKENDS", Align::Left),
    ]);
    for vip in vips {
        let count = |f: &dyn Fn(&BackendInfo) -> bool| vip.backends.iter().filter(|b| f(b)).count();
        let notes: Vec<String> = [
            (count(&|b| b.admin == AdminState::Draining), "draining"),
            (count(&|b| b.admin == AdminState::Disabled), "disabled"),
            (
                count(&|b| b.check.is_some() && b.health == Health::Unhealthy),
                "unhealthy",
            ),
        ]
        .into_iter()
        .filter(|&(n, _)| n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        let backends = if notes.is_empty() {
            vip.backends.len().to_string()
        } else {
            format!("{} ({})", vip.backends.len(), notes.join(", "))
        };
        // The VIP's own setting, resolved as the agent resolves it for a
        // backend without settings of its own.
        let check = match &vip.health_check {
            None => "-".to_string(),
            Some(config) => config
                .resolve(vip.vip.port)
                .map_or_else(|_| "invalid".to_string(), |spec| spec.kind.to_string()),
        };
        table.row([
            vip.vip.to_string(),
            vip.table_size.to_string(),
            policy_label(&vip.policy),
            match vip.gue_port {
                Some(port) => format!("{}:{port}", vip.encap),
                None => vip.encap.to_string(),
            },
            if vip.icmp_echo { "on" } else { "off" }.to_string(),
            check,
            if vip.failing_open {
                "ACTIVE"
            } else if vip.fail_open {
                "on"
            } else {
                "off"
            }
            .to_string(),
            backends,
        ]);
    }
    table.render()
}

pub(crate) fn admin_name(admin: AdminState) -> &'static str {
    match admin {
        AdminState::Enabled => "enabled",
        AdminState::Draining => "draining",
        AdminState::Disabled => "disabled",
    }
}

/// The health columns shared by `backends` and `health`: HEALTH,
/// LAST-PROBE, LATENCY, OK/FAIL, SINCE.
pub(crate) const HEALTH_COLUMNS: [(&str, Align); 5] = [
    ("HEALTH", Align::Left),
    ("LAST-PROBE", Align::Left),
    ("LATENCY", Align::Right),
    ("OK/FAIL", Align::Right),
    ("SINCE", Align::Right),
];

pub(crate) fn health_cells(b: &BackendInfo, now_unix_ms: u64) -> [String; 5] {
    let dash = || "-".to_string();
    let Some(check) = &b.check else {
        // Not checked: the agent counts it healthy, there is nothing to show.
        return [dash(), dash(), dash(), dash(), dash()];
    };
    let probe = b.last_probe.as_ref();
    [
        b.health.to_string(),
        probe.map_or_else(dash, |p| p.reason.clone()),
        probe.map_or_else(dash, |p| format!("{:.1}ms", p.latency_ms)),
        if check.kind == CheckKind::None {
            // Never probed.
            dash()
        } else {
            format!("{}/{}", b.consecutive_ok, b.consecutive_fail)
        },
        b.last_transition_unix_ms
            .map_or_else(dash, |at| format_age(now_unix_ms.saturating_sub(at))),
    ]
}

/// A duration for people: `12s`, `3m04s`, `2h05m`, `3d04h`.
pub(crate) fn format_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

pub(crate) fn render_backends(backends: &[BackendInfo], now_unix_ms: u64) -> String {
    if backends.is_empty() {
        return "no backends\n".into();
    }
    let mut columns = vec![
        ("ADDRESS", Align::Left),
        ("WEIGHT", Align::Right),
        ("ADMIN", Align::Left),
    ];
    columns.extend(HEALTH_COLUMNS);
    columns.push(("RING-SHARE", Align::Right));
    let mut table = Table::new(&columns);
    for b in backends {
        let mut row = vec![
            b.address.to_string(),
            b.weight.to_string(),
            admin_name(b.admin).to_string(),
        ];
        row.extend(health_cells(b, now_unix_ms));
        row.push(format!("{:.2}%", b.ring_share * 100.0));
        table.rows.push(row);
    }
    table.render()
}

/// CHECK, PORT, INTERVAL, TIMEOUT, RISE/FALL of a resolved check.
pub(crate) fn check_cells(check: Option<&CheckSpec>) -> [String; 5] {
    let dash = || "-".to_string();
    match check {
        None => [dash(), dash(), dash(), dash(), dash()],
        Some(c) if c.kind == CheckKind::None => ["none".into(), dash(), dash(), dash(), dash()],
        Some(c) => [
            c.kind.to_string(),
            c.port.to_string(),
            format!("{}ms", c.interval_ms),
            format!("{}ms", c.timeout_ms),
            format!("{}/{}", c.rise, c.fall),
        ],
    }
}

/// The HTTP settings beyond the path: `expect 200,204 host app.example
/// body "ready"`; empty for other checks.
pub(crate) fn http_details(check: Option<&CheckSpec>) -> String {
    let Some(CheckSpec {
        kind:
            CheckKind::Http {
                expect_status,
                host,
                body_contains,
                ..
            },
        ..
    }) = check
    else {
        return String::new();
    };
    let codes: Vec<String> = expect_status.iter().map(u16::to_string).collect();
    let mut text = format!("expect {}", codes.join(","));
    if let Some(host) = host {
        text.push_str(&format!(" host {host}"));
    }
    if let Some(needle) = body_contains {
        text.push_str(&format!(" body {needle:?}"));
    }
    text
}

/// `lbctl health VIP`: each backend's resolved check and its probes.
pub(crate) fn render_health(backends: &[BackendInfo], now_unix_ms: u64) -> String {
    if backends.is_empty() {
        return "no backends\n".into();
    }
    let http = backends.iter().any(|b| {
        matches!(
            b.check,
            Some(CheckSpec {
                kind: CheckKind::Http { .. },
                ..
            })
        )
    });
    let mut columns = vec![
        ("ADDRESS", Align::Left),
        ("ADMIN", Align::Left),
        ("CHECK", Align::Left),
        ("PORT", Align::Right),
        ("INTERVAL", Align::Right),
        ("TIMEOUT", Align::Right),
        ("RISE/FALL", Align::Right),
    ];
    columns.extend(HEALTH_COLUMNS);
    if http {
        columns.push(("HTTP", Align::Left));
    }
    let mut table = Table::new(&columns);
    for b in backends {
        let mut row = vec![b.address.to_string(), admin_name(b.admin).to_string()];
        row.extend(check_cells(b.check.as_ref()));
        row.extend(health_cells(b, now_unix_ms));
        if http {
            row.push(http_details(b.check.as_ref()));
        }
        table.rows.push(row);
    }
    let mut out = table.render();
    if backends
        .iter()
        .any(|b| b.check.is_some() && b.health == Health::Unknown)
    {
        out.push_str("(unknown: not yet decided by the probes; counted as healthy)\n");
    }
    out
}

/// The global counters by name, in the protocol's order.
pub(crate) fn global_counters(g: &GlobalCounters) -> impl Iterator<Item = (&'static str, u64)> {
    GlobalCounters::NAMES.into_iter().zip(g.values())
}

pub(crate) fn render_stats(stats: &StatsReport, all: bool) -> String {
    let mut global = Table::new(&[("COUNTER", Align::Left), ("VALUE", Align::Right)]);
    for (name, value) in global_counters(&stats.global) {
        if all || value != 0 {
            global.row([name.to_string(), value.to_string()]);
        }
    }
    let mut out = if global.rows.is_empty() {
        "global counters: all zero (--all lists them)\n".to_string()
    } else {
        global.render()
    };
    out.push('\n');
    if stats.vips.is_empty() {
        out.push_str("no VIPs\n");
        return out;
    }
    let mut vips = Table::new(&[
        ("VIP / BACKEND", Align::Left),
        ("PACKETS", Align::Right),
        ("BYTES", Align::Right),
        ("NEW-FLOWS", Align::Right),
    ]);
    for vip in &stats.vips {
        vips.row([
            vip.vip.to_string(),
            vip.packets.to_string(),
            vip.bytes.to_string(),
            vip.new_flows.to_string(),
        ]);
        for b in &vip.backends {
            vips.row([
                format!("  {}", b.address),
                b.packets.to_string(),
                b.bytes.to_string(),
                String::new(),
            ]);
        }
    }
    out.push_str(&vips.render());
    out
}

pub(crate) fn render_lookup(flow: &FlowLookup) -> String {
    let mut table = Table::new(&[("WHAT", Align::Left), ("WHERE", Align::Left)]);
    table.header = false;
    table.row([
        "flow".to_string(),
        format!(
            "{} -> {}",
            std::net::SocketAddr::new(flow.source, flow.source_port),
            flow.vip
        ),
    ]);
    table.row([
        "ring backend".to_string(),
        flow.ring_backend.map_or_else(
            || "none (no backend takes new flows)".to_string(),
            |b| b.to_string(),
        ),
    ]);
    table.row([
        "pinned backend".to_string(),
        flow.pinned_backend.map_or_else(
            || "none (no connection-table entry)".to_string(),
            |b| b.to_string(),
        ),
    ]);
    table.render()
}

pub(crate) fn render_summary(flows: &FlowSummary) -> String {
    let mut out = format!(
        "{}: {} connection-table {}\n",
        flows.vip,
        flows.total,
        if flows.total == 1 { "entry" } else { "entries" }
    );
    if !flows.per_backend.is_empty() {
        let mut table = Table::new(&[("BACKEND", Align::Left), ("FLOWS", Align::Right)]);
        for b in &flows.per_backend {
            table.row([b.address.to_string(), b.flows.to_string()]);
        }
        out.push_str(&table.render());
    }
    out.push_str(&format!(
        "stale (backend no longer in the VIP): {}\n",
        flows.stale
    ));
    out
}

/// One line: `ok: 1 ring rewritten, 1 backend added`. `settings`: the
/// request changed a setting (health check, fail-open) that need not
/// rewrite any table, so an empty report still means something was saved.
pub(crate) fn summarize_change(change: &ChangeReport, settings: bool) -> String {
    fn count(n: usize, one: &str, many: &str) -> Option<String> {
        match n {
            0 => None,
            1 => Some(format!("1 {one}")),
            n => Some(format!("{n} {many}")),
        }
    }
    let a = &change.applied;
    let mut parts: Vec<String> = [
        count(a.vips_added.len(), "VIP added", "VIPs added"),
        count(a.vips_removed.len(), "VIP removed", "VIPs removed"),
        count(a.rings_written.len(), "ring rewritten", "rings rewritten"),
        count(a.backends_added, "backend added", "backends added"),
        count(a.backends_removed, "backend removed", "backends removed"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(flushed) = change.flows_flushed {
        // Shown even when zero: the answer to "how many were there".
        parts.push(match flushed {
            1 => "1 flow flushed".to_string(),
            n => format!("{n} flows flushed"),
        });
    }
    if parts.is_empty() && settings {
        "ok: saved (no table rewritten)".to_string()
    } else if parts.is_empty() {
        "ok: nothing changed".to_string()
    } else {
        format!("ok: {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_userspace::{
        config::{CheckType, HealthCheckConfig},
        control::protocol::{BackendCounters, BackendFlows, VipCounters},
        dataplane::{ApplyReport, Protocol, VipAddr},
        encap::EncapKind,
        health::ProbeResult,
    };

    use lb_userspace::policy::Policy;

    use super::*;
    use crate::testutil::*;

    // --- output

    /// A backend without health check.
    fn backend(
        address: impl Into<std::net::IpAddr>,
        weight: u32,
        admin: AdminState,
        ring_share: f64,
    ) -> BackendInfo {
        BackendInfo {
            address: address.into(),
            weight,
            admin,
            // What the agent reports for a backend without check.
            health: Health::Healthy,
            check: None,
            last_probe: None,
            consecutive_ok: 0,
            consecutive_fail: 0,
            last_transition_unix_ms: None,
            ring_share,
            connections: None,
        }
    }

    /// "Now" in the rendering tests.
    const NOW: u64 = 1_700_000_000_000;

    fn probe(ok: bool, reason: &str, latency_ms: f64) -> Option<ProbeResult> {
        Some(ProbeResult {
            ok,
            reason: reason.into(),
            latency_ms,
            at_unix_ms: NOW - 500,
        })
    }

    fn http_check() -> CheckSpec {
        CheckSpec {
            kind: CheckKind::Http {
                path: "/health".into(),
                expect_status: vec![200, 204],
                host: Some("app.example".into()),
                body_contains: Some("ready ok".into()),
            },
            port: 8080,
            interval_ms: 500,
            timeout_ms: 250,
            rise: 1,
            fall: 2,
        }
    }

    /// One backend of each kind: healthy (tcp), unhealthy (http), not
    /// checked and draining, unknown and disabled, check type none.
    fn mixed_backends() -> Vec<BackendInfo> {
        let tcp = CheckSpec::new(CheckKind::Tcp, 80);
        vec![
            BackendInfo {
                check: Some(tcp.clone()),
                last_probe: probe(true, "ok", 0.42),
                consecutive_ok: 5,
                last_transition_unix_ms: Some(NOW - 12_000),
                ..backend(B1, 1, AdminState::Enabled, 1.0)
            },
            BackendInfo {
                health: Health::Unhealthy,
                check: Some(http_check()),
                last_probe: probe(false, "status 503", 3.27),
                consecutive_fail: 4,
                last_transition_unix_ms: Some(NOW - 184_000),
                ..backend(Ipv4Addr::new(198, 19, 2, 2), 3, AdminState::Enabled, 0.0)
            },
            backend(Ipv4Addr::new(198, 19, 3, 2), 10, AdminState::Draining, 0.0),
            BackendInfo {
                health: Health::Unknown,
                check: Some(tcp),
                ..backend(Ipv4Addr::new(198, 19, 4, 2), 1, AdminState::Disabled, 0.0)
            },
            BackendInfo {
                check: Some(CheckSpec::new(CheckKind::None, 80)),
                ..backend(Ipv4Addr::new(198, 19, 5, 2), 2, AdminState::Enabled, 0.0)
            },
        ]
    }

    #[test]
    fn backends_show_admin_state_and_health() {
        let backends = vec![
            backend(B1, 1, AdminState::Enabled, 0.25),
            backend(Ipv4Addr::new(198, 19, 2, 2), 3, AdminState::Enabled, 0.75),
            backend(Ipv4Addr::new(198, 19, 3, 2), 10, AdminState::Draining, 0.0),
        ];
        // Without checks every health column is "-".
        assert_eq!(
            render_backends(&backends, NOW),
            "ADDRESS     WEIGHT  ADMIN     HEALTH  LAST-PROBE  LATENCY  OK/FAIL  SINCE  RING-SHARE\n\
             198.19.1.2       1  enabled   -       -                 -        -      -      25.00%\n\
             198.19.2.2       3  enabled   -       -                 -        -      -      75.00%\n\
             198.19.3.2      10  draining  -       -                 -        -      -       0.00%\n"
        );
        assert_eq!(
            render_backends(&mixed_backends(), NOW),
            "ADDRESS     WEIGHT  ADMIN     HEALTH     LAST-PROBE  LATENCY  OK/FAIL  SINCE  RING-SHARE\n\
             198.19.1.2       1  enabled   healthy    ok            0.4ms      5/0    12s     100.00%\n\
             198.19.2.2       3  enabled   unhealthy  status 503    3.3ms      0/4  3m04s       0.00%\n\
             198.19.3.2      10  draining  -          -                 -        -      -       0.00%\n\
             198.19.4.2       1  disabled  unknown    -                 -      0/0      -       0.00%\n\
             198.19.5.2       2  enabled   healthy    -                 -        -      -       0.00%\n"
        );
        assert_eq!(render_backends(&[], NOW), "no backends\n");
    }

    #[test]
    fn digests_one_line_per_vip() {
        let info = |port: u16, digest: Option<&str>| VipInfo {
            vip: VipAddr { port, ..vip() },
            table_size: 65537,
            policy: PolicySettings::default(),
            icmp_echo: true,
            encap: EncapKind::Ipip,
            gue_port: None,
            health_check: None,
            fail_open: true,
            failing_open: false,
            digest: digest.map(str::to_string),
            backends: vec![],
        };
        let text = render_digests(&[
            info(80, Some("0123456789abcdef0123456789abcdef")),
            info(443, None),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("VIP") && lines[0].contains("DIGEST"),
            "{text}"
        );
        assert!(
            lines[1].ends_with("0123456789abcdef0123456789abcdef"),
            "{text}"
        );
        assert!(lines[2].contains("not in the data path"), "{text}");
        assert_eq!(render_digests(&[]), "no VIPs\n");
    }

    #[test]
    fn vips_show_check_fail_open_and_backend_states() {
        let vips = vec![
            VipInfo {
                vip: vip(),
                table_size: 65537,
                policy: PolicySettings::default(),
                icmp_echo: true,
                encap: EncapKind::Ipip,
                gue_port: None,
                health_check: Some(HealthCheckConfig {
                    kind: Some(CheckType::Http),
                    path: Some("/health".into()),
                    ..HealthCheckConfig::default()
                }),
                fail_open: true,
                failing_open: false,
                digest: None,
                backends: mixed_backends(),
            },
            VipInfo {
                vip: VipAddr {
                    port: 53,
                    proto: Protocol::Udp,
                    ..vip()
                },
                table_size: 7,
                policy: PolicySettings {
                    policy: Policy::MaglevSource,
                    source_prefix: Some(24),
                    ..PolicySettings::default()
                },
                icmp_echo: false,
                encap: EncapKind::Gue,
                gue_port: Some(6080),
                health_check: None,
                fail_open: false,
                failing_open: false,
                digest: None,
                backends: vec![],
            },
            VipInfo {
                vip: VipAddr { port: 443, ..vip() },
                table_size: 65537,
                policy: PolicySettings::default(),
                icmp_echo: true,
                encap: EncapKind::Ipip,
                gue_port: None,
                // An empty object: tcp on the VIP's port.
                health_check: Some(HealthCheckConfig::default()),
                fail_open: true,
                failing_open: true,
                digest: None,
                backends: vec![backend(B1, 1, AdminState::Enabled, 1.0)],
            },
        ];
        assert_eq!(
            render_vips(&vips),
            "VIP                  TABLE-SIZE  POLICY            ENCAP     ECHO  CHECK         FAIL-OPEN  BACKENDS\n\
             198.18.0.10:80/tcp        65537  maglev            ipip      on    http /health  on         5 (1 draining, 1 disabled, 1 unhealthy)\n\
             198.18.0.10:53/udp            7  maglev-source/24  gue:6080  off   -             off        0\n\
             198.18.0.10:443/tcp       65537  maglev            ipip      on    tcp           ACTIVE     1\n"
        );
        assert_eq!(render_vips(&[]), "no VIPs\n");
    }

    #[test]
    fn health_shows_the_resolved_check_of_each_backend() {
        assert_eq!(
            render_health(&mixed_backends(), NOW),
            "ADDRESS     ADMIN     CHECK         PORT  INTERVAL  TIMEOUT  RISE/FALL  HEALTH     LAST-PROBE  LATENCY  OK/FAIL  SINCE  HTTP\n\
             198.19.1.2  enabled   tcp             80    2000ms   1000ms        2/3  healthy    ok            0.4ms      5/0    12s\n\
             198.19.2.2  enabled   http /health  8080     500ms    250ms        1/2  unhealthy  status 503    3.3ms      0/4  3m04s  expect 200,204 host app.example body \"ready ok\"\n\
             198.19.3.2  draining  -                -         -        -          -  -          -                 -        -      -\n\
             198.19.4.2  disabled  tcp             80    2000ms   1000ms        2/3  unknown    -                 -      0/0      -\n\
             198.19.5.2  enabled   none             -         -        -          -  healthy    -                 -        -      -\n\
             (unknown: not yet decided by the probes; counted as healthy)\n"
        );
        // No HTTP check: no HTTP column; no unknown backend: no note.
        let tcp_only: Vec<BackendInfo> = mixed_backends()
            .into_iter()
            .filter(|b| b.health != Health::Unknown && b.address != Ipv4Addr::new(198, 19, 2, 2))
            .collect();
        let text = render_health(&tcp_only, NOW);
        assert!(
            text.starts_with("ADDRESS     ADMIN     CHECK  PORT"),
            "{text}"
        );
        assert!(
            !text.contains("HTTP") && !text.contains("unknown"),
            "{text}"
        );
        assert_eq!(render_health(&[], NOW), "no backends\n");
    }

    #[test]
    fn ages_are_short_and_readable() {
        for (ms, text) in [
            (0, "0s"),
            (12_999, "12s"),
            (59_999, "59s"),
            (60_000, "1m00s"),
            (184_000, "3m04s"),
            (3_599_999, "59m59s"),
            (3_600_000, "1h00m"),
            (7_500_000, "2h05m"),
            (86_400_000, "1d00h"),
            (3 * 86_400_000 + 4 * 3_600_000 + 59_000, "3d04h"),
        ] {
            assert_eq!(format_age(ms), text, "{ms}");
        }
        // A transition "in the future" (clocks disagree) shows as 0s.
        let b = BackendInfo {
            check: Some(CheckSpec::new(CheckKind::Tcp, 80)),
            last_transition_unix_ms: Some(NOW + 5_000),
            ..backend(B1, 1, AdminState::Enabled, 1.0)
        };
        assert_eq!(health_cells(&b, NOW)[4], "0s");
    }

    #[test]
    fn stats_show_nonzero_global_counters_unless_all() {
        let stats = StatsReport {
            global: GlobalCounters {
                flow_hits: 90,
                flow_misses: 10,
                tx: 100,
                ..GlobalCounters::default()
            },
            vips: vec![VipCounters {
                vip: vip(),
                packets: 100,
                bytes: 6400,
                new_flows: 10,
                backends: vec![BackendCounters {
                    address: B1,
                    packets: 100,
                    bytes: 6400,
                }],
            }],
        };
        assert_eq!(
            render_stats(&stats, false),
            "COUNTER      VALUE\n\
             flow_hits       90\n\
             flow_misses     10\n\
             tx             100\n\
             \n\
             VIP / BACKEND       PACKETS  BYTES  NEW-FLOWS\n\
             198.18.0.10:80/tcp      100   6400         10\n\
             \x20 198.19.1.2            100   6400\n"
        );
        let all = render_stats(&stats, true);
        assert!(all.contains("passed                     0\n"), "{all}");
        assert_eq!(
            all.lines().take_while(|l| !l.is_empty()).count(),
            lb_common::GLOBAL_COUNTERS + 1
        );
        let idle = render_stats(
            &StatsReport {
                global: GlobalCounters::default(),
                vips: vec![],
            },
            false,
        );
        assert_eq!(
            idle,
            "global counters: all zero (--all lists them)\n\nno VIPs\n"
        );
    }

    #[test]
    fn flows_lookup_and_summary() {
        let mut flow = FlowLookup {
            vip: vip(),
            source: Ipv4Addr::new(203, 0, 113, 7).into(),
            source_port: 40000,
            ring_backend: Some(B1),
            pinned_backend: None,
        };
        assert_eq!(
            render_lookup(&flow),
            "flow            203.0.113.7:40000 -> 198.18.0.10:80/tcp\n\
             ring backend    198.19.1.2\n\
             pinned backend  none (no connection-table entry)\n"
        );
        flow.ring_backend = None;
        flow.pinned_backend = Some(B1);
        let text = render_lookup(&flow);
        assert!(text.contains("ring backend    none (no backend takes new flows)\n"));
        assert!(text.contains("pinned backend  198.19.1.2\n"));
        let summary = FlowSummary {
            vip: vip(),
            total: 5,
            per_backend: vec![BackendFlows {
                address: B1,
                flows: 4,
            }],
            stale: 1,
        };
        assert_eq!(
            render_summary(&summary),
            "198.18.0.10:80/tcp: 5 connection-table entries\n\
             BACKEND     FLOWS\n\
             198.19.1.2      4\n\
             stale (backend no longer in the VIP): 1\n"
        );
    }

    #[test]
    fn change_summaries() {
        let mut change = ChangeReport {
            applied: ApplyReport {
                rings_written: vec![vip()],
                backends_added: 1,
                ..ApplyReport::default()
            },
            flows_flushed: None,
        };
        assert_eq!(
            summarize_change(&change, false),
            "ok: 1 ring rewritten, 1 backend added"
        );
        assert_eq!(
            summarize_change(&change, true),
            "ok: 1 ring rewritten, 1 backend added"
        );
        change.applied = ApplyReport {
            vips_added: vec![vip(), vip()],
            vips_removed: vec![vip()],
            rings_written: vec![vip(), vip()],
            backends_added: 0,
            backends_removed: 3,
        };
        assert_eq!(
            summarize_change(&change, false),
            "ok: 2 VIPs added, 1 VIP removed, 2 rings rewritten, 3 backends removed"
        );
        change.applied = ApplyReport::default();
        assert_eq!(summarize_change(&change, false), "ok: nothing changed");
        // A health check or fail-open setting was saved even so.
        assert_eq!(
            summarize_change(&change, true),
            "ok: saved (no table rewritten)"
        );
        change.flows_flushed = Some(0);
        assert_eq!(summarize_change(&change, false), "ok: 0 flows flushed");
        change.flows_flushed = Some(1);
        assert_eq!(summarize_change(&change, false), "ok: 1 flow flushed");
    }
}
