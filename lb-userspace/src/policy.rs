//! Scheduling policies: how a VIP picks the backend of a new flow, and what
//! its ring region holds for the data path to read (docs/policies.md
//! compares them).
//!
//! | policy | region |
//! |---|---|
//! | `maglev`, `maglev-source` | the Maglev table ([`crate::maglev`]) |
//! | `random`, `round-robin` | the weighted schedule ([`schedule`]) |
//! | `least-conn` | (backend, weight) pairs ([`least_conn_pairs`]) |
//!
//! Slots hold indexes into the VIP's backend list here; the data plane
//! turns them into backend ids.

use std::{fmt, str::FromStr};

use anyhow::{bail, Result};
use lb_common::{
    LEAST_CONN_MAX_BACKENDS, NO_BACKEND, POLICY_LEAST_CONN, POLICY_MAGLEV, POLICY_MAGLEV_SOURCE,
    POLICY_RANDOM, POLICY_ROUND_ROBIN,
};
use serde::{Deserialize, Serialize};

/// A VIP's scheduling policy. In JSON and on the command line:
/// `maglev`, `maglev-source`, `random`, `round-robin`, `least-conn`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Maglev on the 5-tuple (the default): every LB node agrees.
    #[default]
    Maglev,
    /// Maglev on the client's address or prefix (IP hash): every
    /// connection of a client reaches one backend, on every LB node.
    MaglevSource,
    /// Weighted random, per new flow.
    Random,
    /// Weighted round robin, per new flow and CPU.
    RoundRobin,
    /// Weighted least connections, counted by this node's data path.
    LeastConn,
}

impl Policy {
    pub const ALL: [Policy; 5] = [
        Policy::Maglev,
        Policy::MaglevSource,
        Policy::Random,
        Policy::RoundRobin,
        Policy::LeastConn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Maglev => "maglev",
            Policy::MaglevSource => "maglev-source",
            Policy::Random => "random",
            Policy::RoundRobin => "round-robin",
            Policy::LeastConn => "least-conn",
        }
    }

    /// The data path's `POLICY_*` code.
    pub fn code(self) -> u32 {
        match self {
            Policy::Maglev => POLICY_MAGLEV,
            Policy::MaglevSource => POLICY_MAGLEV_SOURCE,
            Policy::Random => POLICY_RANDOM,
            Policy::RoundRobin => POLICY_ROUND_ROBIN,
            Policy::LeastConn => POLICY_LEAST_CONN,
        }
    }

    pub fn from_code(code: u32) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.code() == code)
    }

    /// The choice is a function of the packet (a Maglev table lookup), so
    /// every LB node makes the same one and userspace can predict it.
    pub fn is_hash(self) -> bool {
        matches!(self, Policy::Maglev | Policy::MaglevSource)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match Policy::ALL.into_iter().find(|p| p.name() == s) {
            Some(p) => Ok(p),
            None => bail!(
                "unknown policy {s:?}; expected one of {}",
                Policy::ALL.map(Policy::name).join(", ")
            ),
        }
    }
}

/// Prefix lengths a `source_prefix` may take (IPv4).
pub const SOURCE_PREFIX_RANGE: std::ops::RangeInclusive<u8> = 1..=32;

/// The prefix lengths a VIP of this address's family accepts: up to the
/// address's length (`SOURCE_PREFIX_RANGE` for IPv4, 1-128 for IPv6).
pub fn source_prefix_range(addr: std::net::IpAddr) -> std::ops::RangeInclusive<u8> {
    match addr {
        std::net::IpAddr::V4(_) => SOURCE_PREFIX_RANGE,
        std::net::IpAddr::V6(_) => 1..=128,
    }
}

/// The client-address mask of a prefix length, in wire order (what the
/// data path ANDs the packet's source address with).
pub fn source_mask(prefix: u8) -> u32 {
    let prefix = prefix.min(32);
    let host_order = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    };
    host_order.to_be()
}

/// The prefix length of a wire-order mask made by [`source_mask`].
pub fn prefix_of_mask(mask: u32) -> u8 {
    u32::from_be(mask).leading_ones() as u8
}

/// Longest affinity timeout accepted, in seconds (a week): longer is a
/// typo more often than a wish, and a week of client entries is what an
/// LRU table of this size can hold anyway.
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 7 * 24 * 3600;

/// The weighted schedule of `random` and `round-robin`: each backend with a
/// weight above 0 appears weight / g times (g: the weights' greatest common
/// divisor), interleaved as smooth weighted round robin does (each turn goes
/// to the backend furthest behind its share, ties to the first), so that a
/// round-robin cursor never serves one backend twice in a row while
/// another is owed a turn. A single `NO_BACKEND` slot when no backend takes
/// new flows.
pub fn schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
    if g == 0 {
        return vec![NO_BACKEND];
    }
    let shares: Vec<i64> = weights.iter().map(|&w| (w / g) as i64).collect();
    let total: i64 = shares.iter().sum();
    let mut race = Race::new(&shares);
    (1..=total)
        .map(|step| {
            let best = race.leader(step);
            race.fall_back(best, total);
            best as u32
        })
        .collect()
}

/// Smooth weighted round robin as a race, so that building a schedule costs
/// O(Σshares × log backends) rather than O(Σshares × backends): backend i's
/// credit after step t's increment is `shares[i] * t + offset[i]`, a line in
/// t; each turn goes to the highest line (ties to the lowest index) and
/// lowers its offset by the total. A kinetic tournament tree keeps the
/// leader of every subtree together with the first step at which that
/// leader can be overtaken, so a step only revisits the subtrees whose
/// leader changes.
struct Race<'a> {
    shares: &'a [i64],
    offsets: Vec<i64>,
    /// Complete binary tree over the backends, the root at 1: each node's
    /// leader, if any, and the first step at which it may no longer lead.
    nodes: Vec<(Option<usize>, i64)>,
    leaves: usize,
}

impl<'a> Race<'a> {
    fn new(shares: &'a [i64]) -> Self {
        let leaves = shares.len().next_power_of_two();
        // Inner nodes start stale; a leaf's leader never changes by itself.
        let mut nodes = vec![(None, i64::MIN); leaves];
        nodes.extend((0..leaves).map(|i| {
            let runs = shares.get(i).is_some_and(|&share| share > 0);
            (runs.then_some(i), i64::MAX)
        }));
        Race {
            shares,
            offsets: vec![0; shares.len()],
            nodes,
            leaves,
        }
    }

    fn credit(&self, i: usize, step: i64) -> i64 {
        self.shares[i] * step + self.offsets[i]
    }

    /// Whether `a` leads `b` at `step`.
    fn leads(&self, a: usize, b: usize, step: i64) -> bool {
        let (ca, cb) = (self.credit(a, step), self.credit(b, step));
        ca > cb || (ca == cb && a < b)
    }

    /// The first step after `step` at which `chaser` leads `leader`.
    fn overtakes(&self, chaser: usize, leader: usize, step: i64) -> i64 {
        let gain = self.shares[chaser] - self.shares[leader];
        if gain <= 0 {
            return i64::MAX;
        }
        let gap = self.credit(leader, step) - self.credit(chaser, step);
        let steps = if chaser < leader {
            (gap + gain - 1) / gain
        } else {
            gap / gain + 1
        };
        step.saturating_add(steps.max(1))
    }

    fn refresh(&mut self, node: usize, step: i64) {
        if self.nodes[node].1 > step || node >= self.leaves {
            return;
        }
        let (left, right) = (2 * node, 2 * node + 1);
        self.refresh(left, step);
        self.refresh(right, step);
        let (l, r) = (self.nodes[left], self.nodes[right]);
        let until = l.1.min(r.1);
        self.nodes[node] = match (l.0, r.0) {
            (Some(a), Some(b)) => {
                let (leader, chaser) = if self.leads(a, b, step) {
                    (a, b)
                } else {
                    (b, a)
                };
                (
                    Some(leader),
                    until.min(self.overtakes(chaser, leader, step)),
                )
            }
            (leader, None) | (None, leader) => (leader, until),
        };
    }

    fn leader(&mut self, step: i64) -> usize {
        self.refresh(1, step);
        self.nodes[1]
            .0
            .expect("a schedule has a backend with a share")
    }

    /// Lowers `backend`'s credit by `total` after its turn; its ancestors'
    /// leaders are recomputed at the next step.
    fn fall_back(&mut self, backend: usize, total: i64) {
        self.offsets[backend] -= total;
        let mut node = (self.leaves + backend) / 2;
        while node >= 1 {
            self.nodes[node].1 = i64::MIN;
            node /= 2;
        }
    }
}

/// The region of a `least-conn` VIP: (index, weight) of each backend with
/// a weight above 0, in list order. A single `NO_BACKEND` slot when none.
pub fn least_conn_pairs(weights: &[u32]) -> Vec<u32> {
    let pairs: Vec<u32> = weights
        .iter()
        .enumerate()
        .filter(|(_, &w)| w > 0)
        .flat_map(|(i, &w)| [i as u32, w])
        .collect();
    if pairs.is_empty() {
        vec![NO_BACKEND]
    } else {
        pairs
    }
}

/// Checks what a policy needs of a VIP's backends: at most
/// `LEAST_CONN_MAX_BACKENDS` for `least-conn` (counting every configured
/// backend, so a health change can never push it over), and a schedule
/// that fits the table for `random` and `round-robin`.
pub fn check_backends(policy: Policy, weights: &[u32], table_size: u32) -> Result<()> {
    match policy {
        Policy::LeastConn if weights.len() > LEAST_CONN_MAX_BACKENDS as usize => bail!(
            "least-conn supports at most {LEAST_CONN_MAX_BACKENDS} backends per VIP (the data \
             path scans them all for every new flow); this VIP has {}",
            weights.len()
        ),
        Policy::Random | Policy::RoundRobin => {
            let sum: u64 = weights.iter().map(|&w| w as u64).sum();
            if sum > table_size as u64 {
                bail!(
                    "{policy}: the weights add up to {sum}, more schedule slots than the table \
                     size {table_size}; use smaller weights or a larger table_size"
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::Just;

    fn counts(schedule: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in schedule {
            c[i as usize] += 1;
        }
        c
    }

    #[test]
    fn the_schedule_follows_the_weights_and_interleaves() {
        assert_eq!(schedule(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        // Divided by the gcd: 2:4:6 is one cycle of 1:2:3.
        assert_eq!(schedule(&[2, 4, 6]), schedule(&[1, 2, 3]));
        assert_eq!(counts(&schedule(&[1, 2, 3]), 3), vec![1, 2, 3]);
        // A drained backend (weight 0) has no turn.
        assert_eq!(schedule(&[1, 0, 1]), vec![0, 2]);
        assert_eq!(schedule(&[0, 0]), vec![NO_BACKEND]);
        assert_eq!(schedule(&[]), vec![NO_BACKEND]);
        // Smooth: never the same backend twice in a row while another one
        // is owed a turn (weights 3:3:1).
        let s = schedule(&[3, 3, 1]);
        assert!(s.windows(2).all(|w| w[0] != w[1]), "{s:?}");
    }

    /// Smooth weighted round robin as nginx spells it: every turn, each
    /// backend's credit grows by its share and the richest (the first on a
    /// tie) pays the total. O(Σshares × backends): the reference the race
    /// must reproduce exactly.
    fn reference_schedule(weights: &[u32]) -> Vec<u32> {
        let g = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
        if g == 0 {
            return vec![NO_BACKEND];
        }
        let shares: Vec<i64> = weights.iter().map(|&w| (w / g) as i64).collect();
        let total: i64 = shares.iter().sum();
        let mut credit = vec![0i64; weights.len()];
        let mut out = Vec::new();
        for _ in 0..total {
            let mut best = 0;
            for (i, share) in shares.iter().enumerate() {
                credit[i] += share;
                if credit[i] > credit[best] {
                    best = i;
                }
            }
            credit[best] -= total;
            out.push(best as u32);
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        #[test]
        fn the_race_is_smooth_weighted_round_robin(
            weights in proptest::collection::vec(
                proptest::prop_oneof![Just(0u32), 1u32..5, 1u32..200, 900u32..1000],
                0..40,
            )
        ) {
            proptest::prop_assert_eq!(schedule(&weights), reference_schedule(&weights));
        }
    }

    #[test]
    fn the_race_matches_the_reference_on_skewed_weights() {
        for weights in [
            vec![1, 1000],
            vec![1000, 1],
            vec![3, 3, 3, 1000, 1, 1],
            (1..=64).collect::<Vec<u32>>(),
            (1..=64).rev().collect::<Vec<u32>>(),
            vec![7; 300],
        ] {
            assert_eq!(
                schedule(&weights),
                reference_schedule(&weights),
                "{weights:?}"
            );
        }
    }

    #[test]
    fn every_window_of_a_cycle_is_within_one_of_its_share() {
        let weights = [7, 3, 1, 4];
        let s = schedule(&weights);
        let total: usize = weights.iter().map(|&w| w as usize).sum();
        for len in 1..=total {
            for start in 0..total {
                let window: Vec<u32> = (0..len).map(|k| s[(start + k) % total]).collect();
                let c = counts(&window, weights.len());
                for (i, &w) in weights.iter().enumerate() {
                    let ideal = len as f64 * w as f64 / total as f64;
                    assert!(
                        (c[i] as f64 - ideal).abs() < 2.0,
                        "window {start}+{len}: backend {i} has {} of ideal {ideal}",
                        c[i]
                    );
                }
            }
        }
    }

    #[test]
    fn the_largest_schedule_allowed_is_exact() {
        // 1000 backends whose weights add up to 65537, the most a default
        // table allows: every backend gets exactly its weight.
        let weights: Vec<u32> = (0..1000).map(|i| 65 + u32::from(i < 537)).collect();
        assert_eq!(weights.iter().sum::<u32>(), 65537);
        let started = std::time::Instant::now();
        let s = schedule(&weights);
        println!(
            "schedule of 65537 slots over 1000 backends: {:?}",
            started.elapsed()
        );
        assert_eq!(s.len(), 65537);
        let started = std::time::Instant::now();
        assert_eq!(s, reference_schedule(&weights));
        println!("the O(slots × backends) reference: {:?}", started.elapsed());
        assert_eq!(
            counts(&s, 1000),
            weights.iter().map(|&w| w as usize).collect::<Vec<_>>()
        );
    }

    #[test]
    fn least_conn_pairs_skip_drained_backends() {
        assert_eq!(least_conn_pairs(&[2, 0, 1]), vec![0, 2, 2, 1]);
        assert_eq!(least_conn_pairs(&[0]), vec![NO_BACKEND]);
    }

    #[test]
    fn masks_in_wire_order() {
        assert_eq!(source_mask(32), u32::MAX);
        assert_eq!(source_mask(24), u32::from_ne_bytes([255, 255, 255, 0]));
        assert_eq!(source_mask(1), u32::from_ne_bytes([128, 0, 0, 0]));
        for p in SOURCE_PREFIX_RANGE {
            assert_eq!(prefix_of_mask(source_mask(p)), p);
        }
    }

    #[test]
    fn bad_policies_and_backend_sets_are_named() {
        let e = "weighted".parse::<Policy>().unwrap_err().to_string();
        assert!(
            e.contains("maglev-source") && e.contains("least-conn"),
            "{e}"
        );
        assert_eq!(
            "round-robin".parse::<Policy>().ok(),
            Some(Policy::RoundRobin)
        );
        for p in Policy::ALL {
            assert_eq!(Policy::from_code(p.code()), Some(p));
            assert_eq!(p.name().parse::<Policy>().ok(), Some(p));
        }
        let many = vec![1; LEAST_CONN_MAX_BACKENDS as usize + 1];
        let e = check_backends(Policy::LeastConn, &many, 65537).unwrap_err();
        assert!(e.to_string().contains("at most 64"), "{e}");
        assert!(check_backends(Policy::LeastConn, &many[1..], 65537).is_ok());
        let e = check_backends(Policy::RoundRobin, &[10_000; 7], 65537).unwrap_err();
        assert!(e.to_string().contains("70000"), "{e}");
        assert!(check_backends(Policy::Maglev, &[10_000; 7], 65537).is_ok());
    }
}
