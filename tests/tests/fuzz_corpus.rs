//! The data path against hostile input: a fixed-seed corpus of 200,000
//! frames (every truncation, IHL, TCP data offset and lying length of a few
//! good frames, then generated and mutated ones: VLAN stacks, QinQ, IPv4
//! options, fragments, tunnels in tunnels, IPv6 extension chains, ICMP
//! echo requests and errors quoting VIP packets, oversized DF packets that
//! get "fragmentation needed", random bytes) through `balancer` and `decap`, each
//! result checked by `lb_tests::fuzz`'s oracle. `cargo xtask fuzz --runs N
//! --seed S` runs other corpora.

use lb_tests::{fuzz, xdp::require_root};

const FRAMES: u64 = 200_000;
const SEED: u64 = 0x6c62_2d66_757a_7a31;

#[test]
fn two_hundred_thousand_hostile_frames() {
    require_root();
    let report = fuzz::run(FRAMES, SEED).unwrap_or_else(|e| panic!("{e:#}"));
    println!("{}", report.summary());
    assert!(
        report.failures.is_empty(),
        "{}\n{}",
        report.summary(),
        report.failure_text()
    );
    // The corpus must reach every outcome, or it tests less than it claims.
    assert!(report.transmitted > FRAMES / 20, "{}", report.summary());
    assert!(
        report.dropped > 0 && report.passed > FRAMES / 10,
        "{}",
        report.summary()
    );
    assert!(report.decapsulated > FRAMES / 100, "{}", report.summary());
    assert!(
        report.icmp_replies > FRAMES / 1000 && report.icmp_forwarded > FRAMES / 1000,
        "{}",
        report.summary()
    );
    assert!(
        report.gue_sent > FRAMES / 100 && report.gue_decapsulated > FRAMES / 1000,
        "{}",
        report.summary()
    );
}
