//! Health checks: TCP and HTTP probes of backends, with rise and fall.
//!
//! A [`HealthChecker`] probes a set of [`Target`]s (a backend address and a
//! [`CheckSpec`]) on the agent's Tokio runtime, which may be a
//! current-thread runtime: everything here is asynchronous, nothing blocks.
//! Targets are deduplicated: a backend used by several VIPs with the same
//! check is one target, probed once.
//!
//! # State machine
//!
//! Each target has a [`Health`] and two counters, `consecutive_ok` and
//! `consecutive_fail`. A successful probe increments `consecutive_ok` and
//! resets `consecutive_fail` to 0; a failed probe does the opposite. After
//! the counters are updated:
//!
//! | from        | condition                     | to          |
//! |-------------|-------------------------------|-------------|
//! | `Unknown`   | `consecutive_ok >= rise`      | `Healthy`   |
//! | `Unknown`   | `consecutive_fail >= fall`    | `Unhealthy` |
//! | `Healthy`   | `consecutive_fail >= fall`    | `Unhealthy` |
//! | `Unhealthy` | `consecutive_ok >= rise`      | `Healthy`   |
//!
//! Anything else leaves the state as it is, so a backend that alternates
//! faster than `rise`/`fall` keeps its state. New targets start `Unknown`
//! (the data path treats `Unknown` as healthy; that is the integrator's
//! decision, this module only reports). Targets with [`CheckKind::None`]
//! are `Healthy` from the start, are never probed and never change (they
//! produce no [`Transition`]). A probe that does not complete within
//! `timeout_ms` (connect and exchange together) is a failure with reason
//! `"timeout"`.
//!
//! Every change is logged at `info` level with its reason, e.g.
//! `health: 198.19.1.2:8080 (http /health) healthy -> unhealthy: status 503
//! (3 consecutive failures)`, and sent on the transitions channel, in the
//! order the changes happen. [`Transition::reason`] is the reason of the
//! probe that caused the change (`"ok"`, `"refused"`, `"status 503"`, ...).
//!
//! # Scheduling
//!
//! One task per target. The task awaits each probe before it schedules the
//! next, so a target never has two probes in flight. Probes are scheduled on
//! fixed deadlines (`start + n × interval`): the probe's duration does not
//! shift the schedule. If a probe ends after the next deadline (which a
//! validated spec, whose timeout is at most the interval, only allows
//! through scheduling lag), the next probe starts at once and the schedule
//! restarts from there ([`MissedTickBehavior::Delay`]). The first probe of a
//! new target is delayed by a random fraction of the interval so that many
//! targets added at once do not probe in bursts. The lag of each probe (its
//! actual start minus its scheduled start) is recorded; the worst is
//! [`HealthChecker::max_lag_ms`].
//!
//! # Probes
//!
//! - TCP: a connect; the connection is closed at once.
//! - HTTP: a minimal HTTP/1.1 client (see [`CheckKind::Http`]): one
//!   `GET` with `Connection: close`; the status line decides, then, if
//!   `body_contains` is set, the bytes after the header block (at most 64
//!   KiB, or `Content-Length` if given) are searched for it. Chunked bodies
//!   are not decoded: the raw bytes are searched, so a needle split by a
//!   chunk boundary is not found.
//!
//! Failure reasons: `"timeout"`, `"refused"`, `"reset"`, `"unreachable"`,
//! `"status NNN"`, `"body mismatch"`, `"bad response"` (not HTTP, or no end
//! of headers), `"empty response"` (closed before any byte), or
//! `"error: ..."` for any other I/O error.

mod bench;
mod probe;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::{
    runtime::Handle,
    sync::mpsc::UnboundedSender,
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};

pub use bench::{bench_scale, ScaleReport};

use crate::instrument::{Instruments, ProbeLabels, TransitionLabels};

pub const DEFAULT_INTERVAL_MS: u64 = 2000;
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
/// Bounds of `interval_ms` accepted by [`CheckSpec::validate`].
pub const MIN_INTERVAL_MS: u64 = 100;
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
/// Largest `rise` and `fall` accepted by [`CheckSpec::validate`].
pub const MAX_RISE_FALL: u32 = 100;
/// How much of an HTTP body is searched for `body_contains`.
pub const BODY_LIMIT: usize = 64 * 1024;

fn default_path() -> String {
    "/".to_string()
}

fn default_expect() -> Vec<u16> {
    vec![200]
}

/// How a backend is probed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum CheckKind {
    /// No probing: the backend is always considered healthy.
    None,
    /// A TCP connect succeeds within the timeout.
    Tcp,
    /// GET `path` over HTTP/1.1; healthy if the status is in `expect_status`
    /// (default `[200]`) and, when `body_contains` is set, the body (first
    /// 64 KiB, raw bytes after the header block: chunked encoding is not
    /// decoded) contains it. `host` sets the Host header (default: the
    /// backend address, with `:port` unless the port is 80).
    Http {
        #[serde(default = "default_path")]
        path: String,
        #[serde(default = "default_expect")]
        expect_status: Vec<u16>,
        #[serde(default)]
        host: Option<String>,
        #[serde(default)]
        body_contains: Option<String>,
    },
}

/// A complete health-check setting (after defaults are applied).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// The port probed on the backend (ignored for [`CheckKind::None`]).
    pub port: u16,
    pub interval_ms: u64,
    /// Limit for one probe, connect and exchange together.
    pub timeout_ms: u64,
    /// Consecutive successes that make a target healthy.
    pub rise: u32,
    /// Consecutive failures that make a target unhealthy.
    pub fall: u32,
}

impl CheckSpec {
    /// A spec with the default interval, timeout, rise and fall.
    pub fn new(kind: CheckKind, port: u16) -> Self {
        Self {
            kind,
            port,
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }

    /// Checks every field; the message starts with the field's name
    /// (`timeout_ms: ...`), so a caller can prefix its own path.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&self.interval_ms) {
            return Err(format!(
                "interval_ms: must be between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS} (got {})",
                self.interval_ms
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_ms {
            return Err(format!(
                "timeout_ms: must be greater than 0 and at most interval_ms ({}) (got {})",
                self.interval_ms, self.timeout_ms
            ));
        }
        for (name, value) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=MAX_RISE_FALL).contains(&value) {
                return Err(format!(
                    "{name}: must be between 1 and {MAX_RISE_FALL} (got {value})"
                ));
            }
        }
        if self.port == 0 && self.kind != CheckKind::None {
            return Err("port: must not be 0".to_string());
        }
        if let CheckKind::Http {
            path,
            expect_status,
            host,
            body_contains,
        } = &self.kind
        {
            if !path.starts_with('/') {
                return Err(format!("path: must start with '/' (got {path:?})"));
            }
            if path.chars().any(|c| c.is_control() || c == ' ') {
                return Err(format!(
                    "path: must not contain CR, LF, other control characters or spaces (got {path:?})"
                ));
            }
            if expect_status.is_empty() {
                return Err("expect_status: must not be empty".to_string());
            }
            if let Some(bad) = expect_status.iter().find(|s| !(100..=599).contains(*s)) {
                return Err(format!(
                    "expect_status: {bad} is not an HTTP status (100 to 599)"
                ));
            }
            if let Some(host) = host {
                if host.is_empty() {
                    return Err("host: must not be empty".to_string());
                }
                if host.chars().any(|c| c.is_control()) {
                    return Err(format!(
                        "host: must not contain CR, LF or other control characters (got {host:?})"
                    ));
                }
            }
            if let Some(needle) = body_contains {
                if needle.is_empty() {
                    return Err("body_contains: must not be empty".to_string());
                }
                if needle.len() > BODY_LIMIT {
                    return Err(format!(
                        "body_contains: longer than the {BODY_LIMIT} bytes searched"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckKind::None => f.write_str("none"),
            CheckKind::Tcp => f.write_str("tcp"),
            CheckKind::Http { path, .. } => write!(f, "http {path}"),
        }
    }
}

/// What is probed: one backend address with one check. Probes are
/// deduplicated by this key: the same backend used by several VIPs with the
/// same check is probed once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    pub addr: IpAddr,
    pub check: CheckSpec,
}

/// `198.19.1.2:8080 (http /health)`.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = std::net::SocketAddr::new(self.addr, self.check.port);
        write!(f, "{addr} ({})", self.check.kind)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub ok: bool,
    /// "ok", "timeout", "refused", "status 503", "body mismatch",
    /// "unreachable", "reset", "bad response", "empty response", "error: ...".
    pub reason: String,
    /// From the start of the connect to the verdict (the timeout for a
    /// timeout).
    pub latency_ms: f64,
    /// When the probe started.
    pub at_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub health: Health,
    pub last: Option<ProbeResult>,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub last_transition_unix_ms: Option<u64>,
    /// Probes completed.
    pub probes: u64,
}

impl TargetStatus {
    fn new(health: Health) -> Self {
        Self {
            health,
            last: None,
            consecutive_ok: 0,
            consecutive_fail: 0,
            last_transition_unix_ms: None,
            probes: 0,
        }
    }
}

/// One state change of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub target: Target,
    pub from: Health,
    pub to: Health,
    /// The reason of the probe that caused the change ("ok", "status 503").
    pub reason: String,
}

/// Applies one probe result to a status (the state machine of the module
/// documentation). Returns the previous health if it changed.
fn step(status: &mut TargetStatus, rise: u32, fall: u32, result: ProbeResult) -> Option<Health> {
    let (rise, fall) = (rise.max(1), fall.max(1));
    status.probes += 1;
    if result.ok {
        status.consecutive_ok = status.consecutive_ok.saturating_add(1);
        status.consecutive_fail = 0;
    } else {
        status.consecutive_fail = status.consecutive_fail.saturating_add(1);
        status.consecutive_ok = 0;
    }
    let at = result.at_unix_ms;
    let ok = result.ok;
    status.last = Some(result);
    let next = match status.health {
        Health::Unknown | Health::Unhealthy if ok && status.consecutive_ok >= rise => {
            Health::Healthy
        }
        Health::Unknown | Health::Healthy if !ok && status.consecutive_fail >= fall => {
            Health::Unhealthy
        }
        current => current,
    };
    if next == status.health {
        return None;
    }
    let from = std::mem::replace(&mut status.health, next);
    status.last_transition_unix_ms = Some(at);
    Some(from)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves
/// the data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// splitmix64: enough to spread start times, no cryptographic claim.
fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Slot {
    /// Distinguishes this slot's task from the task of an earlier slot of
    /// the same target (removed, then added again).
    id: u64,
    status: TargetStatus,
    task: Option<JoinHandle<()>>,
}

/// What the probe tasks share with the checker.
struct Shared {
    transitions: UnboundedSender<Transition>,
    slots: Mutex<HashMap<Target, Slot>>,
    max_lag_ns: AtomicU64,
    probes: AtomicU64,
    next_id: AtomicU64,
    seed: u64,
    instruments: Instruments,
}

impl Shared {
    fn record_lag(&self, lag: Duration) {
        let ns = u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX);
        self.max_lag_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Records a probe result for the task `id` of `target`. Returns false
    /// if that task has been removed (it must stop). The transition is sent
    /// under the lock: transitions reach the channel in the order they
    /// happen, and none is sent for a target after its removal.
    fn apply(&self, target: &Target, id: u64, result: ProbeResult) -> bool {
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.get_mut(target).filter(|slot| slot.id == id) else {
            return false;
        };
        self.probes.fetch_add(1, Ordering::Relaxed);
        let labels = ProbeLabels {
            backend: target.addr.to_string(),
            port: target.check.port.to_string(),
            check: match target.check.kind {
                CheckKind::None => "none",
                CheckKind::Tcp => "tcp",
                CheckKind::Http { .. } => "http",
            }
            .to_string(),
        };
        self.instruments
            .probe_duration
            .get_or_create(&labels)
            .observe(result.latency_ms / 1e3);
        let reason = result.reason.clone();
        let Some(from) = step(
            &mut slot.status,
            target.check.rise,
            target.check.fall,
            result,
        ) else {
            return true;
        };
        let to = slot.status.health;
        let count = if to == Health::Healthy {
            let n = slot.status.consecutive_ok;
            format!("{n} consecutive success{}", if n == 1 { "" } else { "es" })
        } else {
            let n = slot.status.consecutive_fail;
            format!("{n} consecutive failure{}", if n == 1 { "" } else { "s" })
        };
        log::info!("health: {target} {from} -> {to}: {reason} ({count})");
        self.instruments
            .health_transitions
            .get_or_create(&TransitionLabels {
                backend: labels.backend,
                port: labels.port,
                check: labels.check,
                to: to.to_string(),
            })
            .inc();
        // The receiver may be gone (agent shutting down): nothing to do then.
        let _ = self.transitions.send(Transition {
            target: target.clone(),
            from,
            to,
            reason,
        });
        true
    }
}

/// Aborts every probe task when the last clone of the checker is dropped.
struct Owner {
    shared: Arc<Shared>,
    /// The runtime current at [`HealthChecker::new`], used when
    /// `set_targets` is called from outside a runtime.
    runtime: Option<Handle>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let mut slots = lock(&self.shared.slots);
        for slot in slots.values_mut() {
            if let Some(task) = slot.task.take() {
                task.abort();
            }
        }
        slots.clear();
    }
}

/// The probe engine. Cheap to clone (clones share the targets); `Send` and
/// `Sync`. Dropping the last clone stops every probe.
#[derive(Clone)]
pub struct HealthChecker {
    owner: Arc<Owner>,
}

impl HealthChecker {
    /// `transitions` receives every state change as it happens (one message
    /// per change).
    pub fn new(transitions: UnboundedSender<Transition>) -> Self {
        Self::with_instruments(transitions, Instruments::new())
    }

    /// Like [`Self::new`], recording probe durations and transitions into
    /// `instruments` (the agent's, which `/metrics` renders).
    pub fn with_instruments(
        transitions: UnboundedSender<Transition>,
        instruments: Instruments,
    ) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let shared = Shared {
            transitions,
            slots: Mutex::new(HashMap::new()),
            max_lag_ns: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            seed: splitmix64(now ^ (u64::from(std::process::id()) << 32)),
            instruments,
        };
        Self {
            owner: Arc::new(Owner {
                shared: Arc::new(shared),
                runtime: Handle::try_current().ok(),
            }),
        }
    }

    /// Makes the probed set exactly `targets` (duplicates count once).
    /// Targets already probed keep their state and schedule; removed ones
    /// stop at once (no further transition is sent for them); new ones
    /// start `Unknown` (`Healthy` for [`CheckKind::None`]) and are first
    /// probed after a random delay in `[0, interval)`.
    ///
    /// # Panics
    ///
    /// If a target must be started and there is no Tokio runtime: neither a
    /// current one nor one current when the checker was created.
    pub fn set_targets(&self, targets: &[Target]) {
        let wanted: HashSet<&Target> = targets.iter().collect();
        let shared = &self.owner.shared;
        let mut slots = lock(&shared.slots);
        slots.retain(|target, slot| {
            if wanted.contains(target) {
                return true;
            }
            if let Some(task) = slot.task.take() {
                task.abort();
            }
            log::debug!("health: {target} removed");
            false
        });
        for target in wanted {
            if slots.contains_key(target) {
                continue;
            }
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let (status, task) = if target.check.kind == CheckKind::None {
                (TargetStatus::new(Health::Healthy), None)
            } else {
                let delay = self.jitter(target, id);
                let task = run_target(Arc::clone(shared), target.clone(), id, delay);
                let task = match (Handle::try_current(), &self.owner.runtime) {
                    (Ok(handle), _) => handle.spawn(task),
                    (Err(_), Some(handle)) => handle.spawn(task),
                    (Err(e), None) => panic!("HealthChecker::set_targets outside a runtime: {e}"),
                };
                (TargetStatus::new(Health::Unknown), Some(task))
            };
            log::debug!("health: {target} added");
            slots.insert(target.clone(), Slot { id, status, task });
        }
    }

    /// The status of every target.
    pub fn status(&self) -> BTreeMap<Target, TargetStatus> {
        lock(&self.owner.shared.slots)
            .iter()
            .map(|(target, slot)| (target.clone(), slot.status.clone()))
            .collect()
    }

    pub fn status_of(&self, target: &Target) -> Option<TargetStatus> {
        lock(&self.owner.shared.slots)
            .get(target)
            .map(|slot| slot.status.clone())
    }

    /// The worst scheduling lag (actual start of a probe minus its scheduled
    /// start) since creation or the last [`reset_lag`](Self::reset_lag).
    pub fn max_lag_ms(&self) -> f64 {
        self.owner.shared.max_lag_ns.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn reset_lag(&self) {
        self.owner.shared.max_lag_ns.store(0, Ordering::Relaxed);
    }

    /// Probes completed since creation, all targets together.
    pub fn probes_total(&self) -> u64 {
        self.owner.shared.probes.load(Ordering::Relaxed)
    }

    /// A random delay in `[0, interval)`, different for each target.
    fn jitter(&self, target: &Target, id: u64) -> Duration {
        let interval_us = target.check.interval_ms.max(1).saturating_mul(1000);
        let addr = match target.addr {
            IpAddr::V4(a) => u64::from(a.to_bits()),
            // Folded: a backend prefix's addresses differ in the low bits.
            IpAddr::V6(a) => {
                let bits = a.to_bits();
                (bits as u64) ^ ((bits >> 64) as u64)
            }
        };
        let mix = (addr << 16) ^ u64::from(target.check.port);
        let r = splitmix64(self.owner.shared.seed ^ splitmix64(mix ^ (id << 48)));
        Duration::from_micros(r % interval_us)
    }
}

/// The task of one target: probe on every deadline until removed.
async fn run_target(shared: Arc<Shared>, target: Target, id: u64, first_delay: Duration) {
    let period = Duration::from_millis(target.check.interval_ms.max(1));
    let mut ticks = tokio::time::interval_at(Instant::now() + first_delay, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let scheduled = ticks.tick().await;
        shared.record_lag(Instant::now().saturating_duration_since(scheduled));
        let result = probe::run(&target).await;
        if !shared.apply(&target, id, result) {
            return;
        }
    }
}
