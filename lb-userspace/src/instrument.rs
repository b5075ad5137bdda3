//! The agent's event metrics: counters and histograms written where the
//! events happen (`health` for probes and transitions, `dataplane` for
//! table rebuilds and swaps) and read by `metrics` when it renders
//! `/metrics`. This module depends on no other module of the crate, so
//! those that record into it and `metrics` that reads it stay a one-way
//! chain. Every handle is a cheap clone sharing the same atomics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};

/// A health-check target: the backend address, the probed port and the
/// check type (`tcp`, `http`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub backend: String,
    pub port: String,
    pub check: String,
}

/// A target's health transition, by the state it entered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub backend: String,
    pub port: String,
    pub check: String,
    /// `healthy` or `unhealthy`.
    pub to: String,
}

/// A VIP, written `198.18.0.10:8080/tcp`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VipLabel {
    pub vip: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn probe_histogram() -> Histogram {
    // 0.5 ms to about 8 s: loopback probes to timeouts.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

#[derive(Clone)]
pub struct Instruments {
    /// `lb_health_transitions_total`: written by `health` once per state
    /// change of a target (the change also logged once); read by `metrics`.
    pub health_transitions: Family<TransitionLabels, Counter>,
    /// `lb_health_probe_duration_seconds`: written by `health` after every
    /// probe (connect and exchange, the timeout for a timeout); read by
    /// `metrics`.
    pub probe_duration: HistogramFamily<ProbeLabels>,
    /// `lb_table_rebuilds_total`: written by `DataPlane::apply` for every
    /// Maglev table it writes into the ring pool (one per VIP changed);
    /// read by `metrics`.
    pub table_rebuilds: Family<VipLabel, Counter>,
    /// `lb_table_swap_duration_seconds`: written by `DataPlane::apply` when
    /// it switched at least one table: from the change's start (validation,
    /// builds) to the last map write; read by `metrics`.
    pub table_swap_duration: Histogram,
}

impl Default for Instruments {
    fn default() -> Self {
        Self::new()
    }
}

impl Instruments {
    pub fn new() -> Self {
        Self {
            health_transitions: Family::default(),
            probe_duration: Family::new_with_constructor(probe_histogram),
            table_rebuilds: Family::default(),
            // 0.1 ms to about 1.6 s: a small VIP's table to a huge one.
            table_swap_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
        }
    }

    /// Adds these metrics (shared, not copied) to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "health_transitions",
            "Health state changes of a backend's check target",
            self.health_transitions.clone(),
        );
        registry.register_with_unit(
            "health_probe_duration",
            "Duration of health probes (the timeout for a timed-out probe)",
            Unit::Seconds,
            self.probe_duration.clone(),
        );
        registry.register(
            "table_rebuilds",
            "Maglev tables written into the ring pool (a VIP's table changed)",
            self.table_rebuilds.clone(),
        );
        registry.register_with_unit(
            "table_swap_duration",
            "From a change's start to the last map write, for changes that switched a table",
            Unit::Seconds,
            self.table_swap_duration.clone(),
        );
    }
}
