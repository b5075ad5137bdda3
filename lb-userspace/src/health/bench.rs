//! The scale benchmark: many TCP targets on loopback.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};

use super::{CheckKind, CheckSpec, Health, HealthChecker, Target, DEFAULT_TIMEOUT_MS};

/// Figures of [`bench_scale`], measured after the first interval (which
/// holds the jittered first probes).
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub backends: usize,
    pub interval_ms: u64,
    /// Probes completed in the measured window.
    pub probes: u64,
    /// Worst scheduling lag of a probe in the measured window.
    pub worst_lag_ms: f64,
    /// Process CPU time (user + system, all threads, including the
    /// listeners' side of every connection) over wall time in the window:
    /// 1.0 is one core.
    pub cpu_share: f64,
}

/// Aborts the listener tasks however the benchmark ends.
struct Listeners(Vec<JoinHandle<()>>);

impl Drop for Listeners {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts `targets` TCP listeners on 127.0.0.1 (each accepts and closes),
/// probes each with a TCP check every `interval_ms` for `duration` (which
/// must be longer than the interval), and reports the figures of the window
/// after the first interval. Loopback only. Runs on the caller's runtime.
pub async fn bench_scale(
    targets: usize,
    interval_ms: u64,
    duration: Duration,
) -> Result<ScaleReport> {
    let interval = Duration::from_millis(interval_ms);
    if interval_ms == 0 || duration <= interval {
        bail!("bench_scale: the duration ({duration:?}) must exceed the interval ({interval:?})");
    }
    // A listener, a probe socket and an accepted socket per target.
    raise_fd_limit(targets.saturating_mul(3).saturating_add(256));

    let mut listeners = Listeners(Vec::with_capacity(targets));
    let mut list = Vec::with_capacity(targets);
    for i in 0..targets {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .with_context(|| format!("binding bench listener {i} on 127.0.0.1"))?;
        let port = listener.local_addr()?.port();
        listeners.0.push(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => drop(stream),
                    // Out of descriptors, most likely: do not spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
        list.push(Target {
            addr: Ipv4Addr::LOCALHOST.into(),
            check: CheckSpec {
                kind: CheckKind::Tcp,
                port,
                interval_ms,
                timeout_ms: interval_ms.min(DEFAULT_TIMEOUT_MS),
                rise: 2,
                fall: 3,
            },
        });
    }

    // Transitions are not needed; the receiver lives until the end so that
    // sending stays cheap and silent.
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let checker = HealthChecker::new(tx);
    checker.set_targets(&list);

    tokio::time::sleep(interval).await;
    checker.reset_lag();
    let probes_before = checker.probes_total();
    let cpu_before = cpu_time()?;
    let start = Instant::now();
    tokio::time::sleep(duration - interval).await;
    let wall = start.elapsed();
    let cpu = cpu_time()?.saturating_sub(cpu_before);
    let report = ScaleReport {
        backends: targets,
        interval_ms,
        probes: checker.probes_total() - probes_before,
        worst_lag_ms: checker.max_lag_ms(),
        cpu_share: cpu.as_secs_f64() / wall.as_secs_f64(),
    };

    let not_healthy = checker
        .status()
        .values()
        .filter(|s| s.health != Health::Healthy)
        .count();
    if not_healthy > 0 {
        log::warn!("bench_scale: {not_healthy} of {targets} targets not healthy at the end");
    }
    drop(checker);
    let tasks = std::mem::take(&mut listeners.0);
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        // Cancelled: the listener is closed once this returns.
        let _ = task.await;
    }
    Ok(report)
}

/// User plus system CPU time of the whole process.
fn cpu_time() -> Result<Duration> {
    // SAFETY: getrusage writes a `struct rusage` into the buffer we own; an
    // all-zero rusage is a valid value of the type.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrusage");
        }
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// Raises the soft descriptor limit towards `wanted` (up to the hard
/// limit); failures are left to show up as bind or connect errors.
fn raise_fd_limit(wanted: usize) {
    let wanted = wanted as libc::rlim_t;
    // SAFETY: getrlimit/setrlimit read and write a `struct rlimit` we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= wanted {
            return;
        }
        limit.rlim_cur = wanted.min(limit.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            log::warn!("bench_scale: could not raise the descriptor limit to {wanted}");
        }
    }
}
