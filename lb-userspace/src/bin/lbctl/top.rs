//! `lbctl top`: rates computed from successive `stats` answers.
//!
//! The agent reports counters since each VIP or backend id was handed out.
//! A rate is the difference of two samples over the time between them.
//! A VIP or backend that appears between two samples, or whose counter went
//! down (its id was reused: the agent zeroes a reused id's counters), counted
//! from zero within the interval, so its rate is its count over the interval
//! and never negative.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use lb_userspace::{
    control::protocol::{Request, ResponseData, StatsReport},
    dataplane::VipAddr,
};
use serde::Serialize;

use crate::{
    accepted,
    cli::{Cli, TopArgs},
    exchange, malformed,
    table::{Align, Table},
    Outcome,
};

/// One update: the rates of one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Rates {
    /// Seconds between the two samples.
    pub(crate) interval_s: f64,
    pub(crate) vips: Vec<VipRates>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct VipRates {
    pub(crate) vip: VipAddr,
    pub(crate) packets_per_s: f64,
    pub(crate) bytes_per_s: f64,
    pub(crate) new_flows_per_s: f64,
    pub(crate) backends: Vec<BackendRates>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct BackendRates {
    pub(crate) address: IpAddr,
    pub(crate) packets_per_s: f64,
    pub(crate) bytes_per_s: f64,
}

/// The increase of a counter over `secs`; a counter that is new or went
/// down started from zero within the interval.
fn rate(before: Option<u64>, now: u64, secs: f64) -> f64 {
    let delta = match before {
        Some(before) if now >= before => now - before,
        _ => now,
    };
    delta as f64 / secs
}

/// The rates between two samples taken `elapsed` apart, in the order of
/// the newer sample (VIPs and backends that are gone are not shown).
pub(crate) fn rates(before: &StatsReport, now: &StatsReport, elapsed: Duration) -> Rates {
    // A zero interval cannot happen between two round trips, but must not
    // divide by zero either.
    let secs = elapsed.as_secs_f64().max(1e-6);
    let old: BTreeMap<VipAddr, _> = before.vips.iter().map(|v| (v.vip, v)).collect();
    let vips = now
        .vips
        .iter()
        .map(|v| {
            let prev = old.get(&v.vip);
            let old_backends: BTreeMap<IpAddr, _> = prev
                .map(|p| p.backends.iter().map(|b| (b.address, b)).collect())
                .unwrap_or_default();
            VipRates {
                vip: v.vip,
                packets_per_s: rate(prev.map(|p| p.packets), v.packets, secs),
                bytes_per_s: rate(prev.map(|p| p.bytes), v.bytes, secs),
                new_flows_per_s: rate(prev.map(|p| p.new_flows), v.new_flows, secs),
                backends: v
                    .backends
                    .iter()
                    .map(|b| {
                        let prev = old_backends.get(&b.address);
                        BackendRates {
                            address: b.address,
                            packets_per_s: rate(prev.map(|p| p.packets), b.packets, secs),
                            bytes_per_s: rate(prev.map(|p| p.bytes), b.bytes, secs),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    Rates {
        interval_s: secs,
        vips,
    }
}

/// A rate for people: `0`, `2.5`, `250`, `16.9k`, `1.2M`, `3.4G`.
fn format_rate(x: f64) -> String {
    if x == 0.0 {
        return "0".to_string();
    }
    match x {
        x if x < 10.0 => format!("{x:.1}"),
        x if x < 1e3 => format!("{x:.0}"),
        x if x < 1e6 => format!("{:.1}k", x / 1e3),
        x if x < 1e9 => format!("{:.1}M", x / 1e6),
        x => format!("{:.1}G", x / 1e9),
    }
}

/// One update as a table, the layout of `lbctl stats`.
pub(crate) fn render(rates: &Rates) -> String {
    let mut out = format!(
        "lbctl top: rates over the last {:.1}s\n\n",
        rates.interval_s
    );
    if rates.vips.is_empty() {
        out.push_str("no VIPs\n");
        return out;
    }
    let mut table = Table::new(&[
        ("VIP / BACKEND", Align::Left),
        ("PACKETS/S", Align::Right),
        ("BYTES/S", Align::Right),
        ("NEW-FLOWS/S", Align::Right),
    ]);
    for vip in &rates.vips {
        table.row([
            vip.vip.to_string(),
            format_rate(vip.packets_per_s),
            format_rate(vip.bytes_per_s),
            format_rate(vip.new_flows_per_s),
        ]);
        for b in &vip.backends {
            table.row([
                format!("  {}", b.address),
                format_rate(b.packets_per_s),
                format_rate(b.bytes_per_s),
                String::new(),
            ]);
        }
    }
    out.push_str(&table.render());
    out
}

/// ANSI: cursor home, clear the screen; each update redraws in place.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Samples every `--interval` and writes an update after each sample but
/// the first: a table (redrawn in place on a terminal) or, with `--json`,
/// one JSON object per line.
pub(crate) fn run(cli: &Cli, args: &TopArgs, socket: &Path, out: &mut dyn Write) -> Outcome {
    let terminal = !cli.json && std::io::stdout().is_terminal();
    let sample = || -> Result<(Instant, StatsReport), Outcome> {
        let (_, response) = exchange(socket, &Request::Stats {}, cli.timeout)?;
        accepted(&response)?;
        let at = Instant::now();
        match response.data {
            Some(ResponseData::Stats { stats }) => Ok((at, stats)),
            _ => Err(malformed(
                socket,
                "the answer to stats does not carry \"stats\"",
            )),
        }
    };
    let (mut then, mut before) = match sample() {
        Ok(first) => first,
        Err(outcome) => return outcome,
    };
    let start = then;
    // A blank terminal for a whole interval would look like a hang.
    if terminal {
        let _ = writeln!(
            out,
            "{CLEAR}lbctl top: first update in {:.1}s",
            args.interval.as_secs_f64()
        );
        let _ = out.flush();
    }
    let mut printed = 0u64;
    while args.updates().is_none_or(|n| printed < n) {
        // Sleeps to the next tick of the cadence, so slow round trips do
        // not stretch the interval.
        let next = start + args.interval * u32::try_from(printed + 1).unwrap_or(u32::MAX);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let (now, stats) = match sample() {
            Ok(sampled) => sampled,
            Err(outcome) => return outcome,
        };
        let update = rates(&before, &stats, now - then);
        let text = if cli.json {
            match serde_json::to_string(&update) {
                Ok(line) => line + "\n",
                Err(e) => return malformed(socket, e),
            }
        } else if terminal {
            format!("{CLEAR}{}", render(&update))
        } else if printed > 0 {
            format!("\n{}", render(&update))
        } else {
            render(&update)
        };
        // A reader that went away (`lbctl top | head`) ends the run.
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
        printed += 1;
        (then, before) = (now, stats);
    }
    Outcome::success(String::new())
}

#[cfg(test)]
mod tests {
    use lb_userspace::{
        control::protocol::{BackendCounters, GlobalCounters, VipCounters},
        dataplane::Protocol,
    };

    use super::*;
    use crate::testutil::{parse, usage_error, vip, B1};

    const B2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 2, 2));

    fn counters(
        packets: u64,
        bytes: u64,
        new_flows: u64,
        backends: &[(IpAddr, u64)],
    ) -> VipCounters {
        VipCounters {
            vip: vip(),
            packets,
            bytes,
            new_flows,
            backends: backends
                .iter()
                .map(|&(address, packets)| BackendCounters {
                    address,
                    packets,
                    bytes: packets * 100,
                })
                .collect(),
        }
    }

    fn report(vips: Vec<VipCounters>) -> StatsReport {
        StatsReport {
            global: GlobalCounters::default(),
            vips,
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let before = report(vec![counters(100, 10_000, 10, &[(B1, 60), (B2, 40)])]);
        let now = report(vec![counters(300, 30_000, 30, &[(B1, 160), (B2, 140)])]);
        let r = rates(&before, &now, Duration::from_secs(2));
        assert_eq!(r.interval_s, 2.0);
        let v = &r.vips[0];
        assert_eq!(
            (v.packets_per_s, v.bytes_per_s, v.new_flows_per_s),
            (100.0, 10_000.0, 10.0)
        );
        assert_eq!(
            v.backends,
            vec![
                BackendRates {
                    address: B1,
                    packets_per_s: 50.0,
                    bytes_per_s: 5000.0
                },
                BackendRates {
                    address: B2,
                    packets_per_s: 50.0,
                    bytes_per_s: 5000.0
                },
            ]
        );
    }

    #[test]
    fn new_and_reset_counters_count_from_zero_and_gone_ones_vanish() {
        let other = VipAddr {
            port: 53,
            proto: Protocol::Udp,
            ..vip()
        };
        let before = report(vec![
            counters(1000, 100_000, 50, &[(B1, 1000)]),
            VipCounters {
                vip: other,
                ..counters(5, 500, 1, &[])
            },
        ]);
        // The VIP's id was reused (counters restarted below the old values),
        // B2 joined, the UDP VIP left.
        let now = report(vec![counters(40, 4000, 4, &[(B1, 30), (B2, 10)])]);
        let r = rates(&before, &now, Duration::from_secs(1));
        assert_eq!(r.vips.len(), 1, "a VIP that is gone is not shown");
        let v = &r.vips[0];
        assert_eq!((v.packets_per_s, v.new_flows_per_s), (40.0, 4.0));
        assert_eq!(v.backends[0].packets_per_s, 30.0);
        assert_eq!(v.backends[1].packets_per_s, 10.0);
        for b in &v.backends {
            assert!(b.packets_per_s >= 0.0 && b.bytes_per_s >= 0.0);
        }
        // A VIP seen for the first time: its whole count is this interval's.
        let r = rates(&report(vec![]), &now, Duration::from_millis(500));
        assert_eq!(r.vips[0].packets_per_s, 80.0);
        // Nothing moved: zero, not negative or NaN.
        let r = rates(&now, &now, Duration::ZERO);
        assert_eq!(r.vips[0].packets_per_s, 0.0);
    }

    #[test]
    fn updates_render_like_stats_with_short_numbers() {
        let before = report(vec![counters(0, 0, 0, &[(B1, 0), (B2, 0)])]);
        let now = report(vec![counters(2500, 16_900_000, 5, &[(B1, 2500), (B2, 0)])]);
        assert_eq!(
            render(&rates(&before, &now, Duration::from_secs(1))),
            "lbctl top: rates over the last 1.0s\n\
             \n\
             VIP / BACKEND       PACKETS/S  BYTES/S  NEW-FLOWS/S\n\
             198.18.0.10:80/tcp       2.5k    16.9M          5.0\n\
             \x20 198.19.1.2             2.5k   250.0k\n\
             \x20 198.19.2.2                0        0\n"
        );
        assert_eq!(
            render(&rates(
                &report(vec![]),
                &report(vec![]),
                Duration::from_secs(1)
            )),
            "lbctl top: rates over the last 1.0s\n\nno VIPs\n"
        );
        assert_eq!(format_rate(0.04), "0.0");
        assert_eq!(format_rate(999.4), "999");
        assert_eq!(format_rate(3.4e9), "3.4G");
    }

    #[test]
    fn json_updates_are_one_object_each() {
        let now = report(vec![counters(10, 1000, 1, &[(B1, 10)])]);
        let line = serde_json::to_string(&rates(&report(vec![]), &now, Duration::from_secs(1)))
            .expect("serializes");
        assert_eq!(
            line,
            r#"{"interval_s":1.0,"vips":[{"vip":{"address":"198.18.0.10","port":80,"protocol":"tcp"},"packets_per_s":10.0,"bytes_per_s":1000.0,"new_flows_per_s":1.0,"backends":[{"address":"198.19.1.2","packets_per_s":10.0,"bytes_per_s":1000.0}]}]}"#
        );
    }

    #[test]
    fn top_options() {
        let top = |args: &[&str]| match parse(args).map(|cli| cli.command) {
            Ok(crate::cli::Command::Top(top)) => top,
            other => panic!("{args:?}: {other:?}"),
        };
        let t = top(&["top"]);
        assert_eq!((t.interval, t.updates()), (Duration::from_secs(1), None));
        let t = top(&["top", "--interval", "0.2", "--count", "3"]);
        assert_eq!(
            (t.interval, t.updates()),
            (Duration::from_millis(200), Some(3))
        );
        assert_eq!(top(&["top", "--once"]).updates(), Some(1));
        usage_error(&["top", "--once", "--count", "2"]);
        usage_error(&["top", "--count", "0"]);
        usage_error(&["top", "--interval", "0"]);
        usage_error(&["top", "--interval", "soon"]);
    }
}
