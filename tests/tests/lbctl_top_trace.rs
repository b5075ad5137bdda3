//! The real `lbctl top` and `lbctl trace` against a running agent in the
//! test bed.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{wait_or_kill, Bed, TEST_VIP},
    topology::locate_bin,
};
use serde_json::Value;

fn lbctl_bin() -> PathBuf {
    locate_bin("lbctl", "LBCTL").unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs lbctl against the bed's agent; panics unless it exits 0.
fn lbctl(bed: &Bed, args: &[&str]) -> String {
    let output = lbctl_output(bed, args);
    assert!(
        output.status.success(),
        "lbctl {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("lbctl prints UTF-8")
}

fn lbctl_output(bed: &Bed, args: &[&str]) -> Output {
    Command::new(lbctl_bin())
        .arg("--socket")
        .arg(bed.agent.socket())
        .args(args)
        .output()
        .expect("running lbctl")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn top_reports_rates_for_the_backends_that_took_traffic() {
    let bed = Bed::start(3, &[Some(1), Some(1), Some(1)], "native");
    let mut top = Command::new(lbctl_bin())
        .arg("--socket")
        .arg(bed.agent.socket())
        .args(["top", "--count", "2", "--json", "--interval", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting lbctl top");
    // Traffic for as long as top samples: every interval sees some.
    let mut names = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while matches!(top.try_wait(), Ok(None)) && Instant::now() < deadline {
        for (name, _) in bed.open(6) {
            names.insert(name);
        }
    }
    let status = wait_or_kill(&mut top, Duration::from_secs(5))
        .expect("waiting for lbctl top")
        .expect("lbctl top --count 2 ends by itself");
    let output = top.wait_with_output().expect("reading lbctl top");
    assert!(
        status.success(),
        "lbctl top: {status}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let updates: Vec<Value> = text.lines().map(json).collect();
    assert_eq!(updates.len(), 2, "--count 2 prints two updates:\n{text}");
    assert_eq!(
        names.len(),
        3,
        "the traffic reached every backend: {names:?}"
    );
    for update in &updates {
        assert!(
            update["interval_s"].as_f64().is_some_and(|s| s > 0.3),
            "{update}"
        );
        let tcp = update["vips"]
            .as_array()
            .and_then(|vips| {
                vips.iter().find(|v| {
                    v["vip"]["protocol"] == "tcp" && v["vip"]["address"] == TEST_VIP.to_string()
                })
            })
            .unwrap_or_else(|| panic!("no TCP VIP in {update}"));
        assert!(
            tcp["packets_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "{tcp}"
        );
        assert!(
            tcp["bytes_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "{tcp}"
        );
        assert!(
            tcp["new_flows_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "{tcp}"
        );
        let backends = tcp["backends"].as_array().expect("backends");
        assert_eq!(backends.len(), 3, "{tcp}");
        for j in 0..3 {
            let address = bed.topo.backend_addr(j).to_string();
            let b = backends
                .iter()
                .find(|b| b["address"] == address.as_str())
                .unwrap_or_else(|| panic!("no backend {address} in {tcp}"));
            for key in ["packets_per_s", "bytes_per_s"] {
                assert!(
                    b[key].as_f64().is_some_and(|r| r > 0.0),
                    "{address} {key}: {b}"
                );
            }
        }
        // The UDP VIP took no traffic: zero, not negative.
        let udp = update["vips"]
            .as_array()
            .and_then(|vips| vips.iter().find(|v| v["vip"]["protocol"] == "udp"))
            .unwrap_or_else(|| panic!("no UDP VIP in {update}"));
        assert_eq!(udp["packets_per_s"].as_f64(), Some(0.0), "{udp}");
    }
    // The human form: a table with the per-second columns.
    let once = lbctl(&bed, &["top", "--once", "--interval", "0.2"]);
    assert!(
        once.contains("PACKETS/S") && once.contains("NEW-FLOWS/S"),
        "{once}"
    );
    assert!(
        !once.contains('\x1b'),
        "no terminal, no escape codes: {once:?}"
    );
}
