//! `cargo xtask fuzz --runs N [--seed S]`: N frames of the hostile corpus
//! seeded with S (default: the time) through `balancer` and `decap`; prints
//! the summary and every failure (frame in hex, reason), exits 1 on any.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: lb-fuzz [--runs N] [--seed S]";

fn main() -> Result<ExitCode> {
    let mut runs = 1_000_000u64;
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context(USAGE);
        match arg.as_str() {
            "--runs" => runs = value()?.parse().context("--runs takes a number")?,
            "--seed" => seed = Some(value()?.parse::<u64>().context("--seed takes a number")?),
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    lb_tests::xdp::require_root();
    println!("seed {seed}, {runs} frames");
    let started = std::time::Instant::now();
    let report = lb_tests::fuzz::run(runs, seed)?;
    println!(
        "{} in {:.1} s",
        report.summary(),
        started.elapsed().as_secs_f64()
    );
    if report.failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{}", report.failure_text());
        println!("reproduce: cargo xtask fuzz --runs {runs} --seed {seed}");
        Ok(ExitCode::FAILURE)
    }
}
