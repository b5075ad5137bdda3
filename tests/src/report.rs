//! `cargo xtask bench --report`: an HTML page with SVG bar charts drawn from
//! the benchmark's results (the JSON `lb-bench` writes), so a run can be
//! read at a glance and two runs compared side by side.
//!
//! The charts are plain horizontal bars with a reference line; that is a
//! few dozen lines of SVG, less than a plotting crate's dependencies.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::Value;

/// One bar: its label, its value and the text printed after it. A
/// reference bar (a theoretical value next to a measured one) is grey.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub note: String,
    pub reference: bool,
}

/// A chart of horizontal bars, with an optional dashed reference line (the
/// floor, an ideal share, a theoretical minimum).
pub struct Chart {
    pub title: String,
    pub unit: String,
    pub bars: Vec<Bar>,
    pub reference: Option<(f64, String)>,
}

const LABEL_WIDTH: f64 = 300.0;
const PLOT_WIDTH: f64 = 420.0;
const NOTE_WIDTH: f64 = 200.0;
const BAR_HEIGHT: f64 = 18.0;
const BAR_GAP: f64 = 6.0;
const TOP: f64 = 34.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Chart {
    /// The chart as a standalone `<svg>` element. Bars scale to the largest
    /// of the values and the reference.
    pub fn svg(&self) -> String {
        let max = self
            .bars
            .iter()
            .map(|b| b.value)
            .chain(self.reference.as_ref().map(|r| r.0))
            .fold(0.0f64, f64::max);
        let scale = if max > 0.0 { PLOT_WIDTH / max } else { 0.0 };
        let height = TOP + self.bars.len() as f64 * (BAR_HEIGHT + BAR_GAP) + 24.0;
        let width = LABEL_WIDTH + PLOT_WIDTH + NOTE_WIDTH;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="0" y="16" font-size="14" font-weight="bold">{} ({})</text>"#,
            escape(&self.title),
            escape(&self.unit)
        );
        for (i, bar) in self.bars.iter().enumerate() {
            let y = TOP + i as f64 * (BAR_HEIGHT + BAR_GAP);
            let w = (bar.value.max(0.0) * scale).max(1.0);
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                LABEL_WIDTH - 8.0,
                y + BAR_HEIGHT - 5.0,
                escape(&bar.label)
            );
            let fill = if bar.reference { "#b0b0b0" } else { "#4a7ab5" };
            let _ = writeln!(
                svg,
                "<rect class=\"bar\" x=\"{LABEL_WIDTH}\" y=\"{y}\" width=\"{w:.2}\" height=\"{BAR_HEIGHT}\" fill=\"{fill}\"/>"
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.2}" y="{}">{}</text>"#,
                LABEL_WIDTH + w + 6.0,
                y + BAR_HEIGHT - 5.0,
                escape(&bar.note)
            );
        }
        if let Some((value, label)) = &self.reference {
            let x = LABEL_WIDTH + value * scale;
            let bottom = height - 18.0;
            let _ = writeln!(
                svg,
                "<line class=\"reference\" x1=\"{x:.2}\" y1=\"{}\" x2=\"{x:.2}\" y2=\"{bottom}\" stroke=\"#c0392b\" stroke-dasharray=\"4 3\"/>",
                TOP - 6.0
            );
            let _ = writeln!(
                svg,
                "<text x=\"{x:.2}\" y=\"{}\" fill=\"#c0392b\" text-anchor=\"middle\">{}</text>",
                bottom + 14.0,
                escape(label)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn number(results: &Value, path: &[&str]) -> Result<f64> {
    let mut v = results;
    for key in path {
        v = v
            .get(key)
            .with_context(|| format!("results have no {}", path.join(".")))?;
    }
    v.as_f64()
        .with_context(|| format!("results' {} is not a number", path.join(".")))
}

/// The charts of a benchmark run: the data path's paths against the floor,
/// the Maglev share of each backend against the ideal, and the flows that
/// move when a backend is removed against the theoretical minimum.
pub fn charts(results: &Value) -> Result<Vec<Chart>> {
    let floor = number(results, &["xdp_ns", "floor"])?;
    let paths = [
        ("floor (swap MACs, XDP_TX)", "floor"),
        ("floor + one flow-table lookup", "floor_lookup"),
        ("wrapper around a trivial encap", "wrapper_floor"),
        ("non-VIP pass", "pass_non_vip"),
        ("VIP established flow", "vip_established"),
        ("VIP established, without the undo", "vip_established_net"),
        ("VIP new flow (SYN, 1M-entry table)", "vip_new_flow"),
    ];
    let mut xdp = Chart {
        title: "Data path cost per packet, median".into(),
        unit: "ns".into(),
        bars: Vec::new(),
        reference: Some((floor, format!("floor {floor:.0} ns"))),
    };
    for (label, key) in paths {
        let value = number(results, &["xdp_ns", key])?;
        xdp.bars.push(Bar {
            label: label.into(),
            value,
            note: format!("{value:.0} ns = {:.2} x floor", value / floor),
            reference: false,
        });
    }
    // New flows per scheduling policy, when the run measured them.
    if let Some(policies) = results
        .pointer("/xdp_ns/policy_new_flow")
        .and_then(Value::as_object)
    {
        for (label, stat) in policies {
            let value = stat
                .get("median")
                .and_then(Value::as_f64)
                .with_context(|| {
                    format!("xdp_ns.policy_new_flow.{label}.median is not a number")
                })?;
            xdp.bars.push(Bar {
                label: format!("new flow, {label}"),
                value,
                note: format!("{value:.0} ns = {:.2} x floor", value / floor),
                reference: false,
            });
        }
    }

    let shares = results
        .pointer("/maglev_distribution/shares")
        .and_then(Value::as_array)
        .context("results have no maglev_distribution.shares")?;
    let n = shares.len().max(1) as f64;
    let table = number(results, &["maglev_distribution", "table_size"])?;
    let mut share_chart = Chart {
        title: format!("Maglev share of each of {n} equal backends, M={table}"),
        unit: "% of the table".into(),
        bars: Vec::new(),
        reference: Some((100.0 / n, format!("ideal {:.2}%", 100.0 / n))),
    };
    for (i, share) in shares.iter().enumerate() {
        let share = share.as_f64().context("a share is not a number")? * 100.0;
        share_chart.bars.push(Bar {
            label: format!("backend {}", i + 1),
            value: share,
            note: format!("{share:.3}%"),
            reference: false,
        });
    }

    let removals = results
        .pointer("/maglev_distribution/removal")
        .and_then(Value::as_array)
        .context("results have no maglev_distribution.removal")?;
    let mut moved = Chart {
        title: "Flows that move when one of N backends is removed".into(),
        unit: "% of all flows; grey: the removed backend's own".into(),
        bars: Vec::new(),
        reference: None,
    };
    for case in removals {
        let n = number(case, &["backends"])?;
        let share = number(case, &["moved"])? * 100.0;
        let minimum = number(case, &["minimum"])? * 100.0;
        moved.bars.push(Bar {
            label: format!("N={n}: moved"),
            value: share,
            note: format!("{share:.2}% ({:.2} x the minimum)", share / minimum),
            reference: false,
        });
        moved.bars.push(Bar {
            label: format!("N={n}: theoretical minimum"),
            value: minimum,
            note: format!("{minimum:.2}%"),
            reference: true,
        });
    }
    Ok(vec![xdp, share_chart, moved])
}

/// The whole report page.
pub fn html(results: &Value) -> Result<String> {
    let mut page = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>lb benchmark report</title></head>\n<body>\n<h1>lb benchmark report</h1>\n",
    );
    for chart in charts(results)? {
        page.push_str("<div>\n");
        page.push_str(&chart.svg());
        page.push_str("</div>\n");
    }
    page.push_str("<h2>All results</h2>\n<pre>");
    page.push_str(&escape(&serde_json::to_string_pretty(results)?));
    page.push_str("</pre>\n</body></html>\n");
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn results() -> Value {
        json!({
            "xdp_ns": {"floor": 30.0, "floor_lookup": 60.0, "wrapper_floor": 50.0, "pass_non_vip": 40.0,
                       "vip_established": 110.0, "vip_established_net": 100.0, "vip_new_flow": 900.0},
            "maglev_distribution": {"table_size": 65537, "shares": [0.5, 0.25, 0.25],
                                    "removal": [{"backends": 10, "moved": 0.11, "minimum": 0.1}]},
        })
    }

    fn bar_widths(svg: &str) -> Vec<f64> {
        svg.lines()
            .filter(|l| l.contains("class=\"bar\""))
            .map(|l| {
                let w = l.split("width=\"").nth(1).expect("a width");
                w[..w.find('"').expect("closing quote")]
                    .parse()
                    .expect("a number")
            })
            .collect()
    }

    #[test]
    fn bars_are_proportional_and_the_largest_fills_the_plot() {
        let charts = charts(&results()).expect("charts");
        let widths = bar_widths(&charts[0].svg());
        assert_eq!(widths.len(), 7);
        assert!((widths[6] - PLOT_WIDTH).abs() < 0.01, "{widths:?}");
        assert!(
            (widths[0] / widths[6] - 30.0 / 900.0).abs() < 1e-3,
            "{widths:?}"
        );
        let mut with_policies = results();
        with_policies["xdp_ns"]["policy_new_flow"] =
            json!({"least-conn": {"min": 1700.0, "median": 1800.0, "x_floor": 60.0}});
        let charts_p = super::charts(&with_policies).expect("charts with policies");
        let svg = charts_p[0].svg();
        assert!(svg.contains("new flow, least-conn"), "{svg}");
        let widths_p = bar_widths(&svg);
        assert_eq!(widths_p.len(), 8);
        assert!((widths_p[7] - PLOT_WIDTH).abs() < 0.01, "{widths_p:?}");
        let shares = bar_widths(&charts[1].svg());
        assert!((shares[0] - 2.0 * shares[1]).abs() < 0.01, "{shares:?}");
    }

    #[test]
    fn the_reference_line_sits_at_its_value() {
        let charts = charts(&results()).expect("charts");
        let svg = charts[1].svg();
        // Ideal share 1/3 of 100% against a largest bar of 50%.
        let x = LABEL_WIDTH + (100.0 / 3.0) * PLOT_WIDTH / 50.0;
        assert!(
            svg.contains(&format!("x1=\"{x:.2}\"")),
            "no reference line at {x:.2}:\n{svg}"
        );
        assert!(svg.contains("ideal 33.33%"), "{svg}");
        assert!(charts[0].svg().contains("900 ns = 30.00 x floor"));
        assert!(charts[2].svg().contains("11.00% (1.10 x the minimum)"));
    }

    #[test]
    fn labels_are_escaped_and_missing_results_are_named() {
        let chart = Chart {
            title: "a<b".into(),
            unit: "&".into(),
            bars: vec![],
            reference: None,
        };
        assert!(chart.svg().contains("a&lt;b (&amp;)"));
        let err = charts(&json!({"xdp_ns": {"floor": 1.0}}))
            .err()
            .expect("an error");
        assert!(err.to_string().contains("xdp_ns.floor_lookup"), "{err}");
    }
}
