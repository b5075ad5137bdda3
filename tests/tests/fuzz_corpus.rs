//! The data path against hostile input: a fixed-seed corpus of 200,000
//! frames (every truncation, IHL or IPv6 version, TCP data offset, IPv6
//! next header and lying length of a few good frames of both families,
//! then generated and mutated ones: VLAN stacks, QinQ, IPv4 options, IPv6
//! extension chains (fragment headers, lengths past the end), fragments,
//! tunnels in tunnels over both families, ICMP and ICMPv6 echo requests
//! and errors quoting VIP packets, packets too big for the tunnel that get
//! "fragmentation needed" or "packet too big", random bytes) through
//! `balancer` and `decap`, each result checked by `lb_tests::fuzz`'s
//! oracle. `cargo xtask fuzz --runs N --seed S` runs other corpora.

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
    // "Packet too big" and "fragmentation needed" share the ICMP rate
    // limit, so they are reached less often.
    let r = &report;
    for (outcome, count, least) in [
        ("transmitted", r.transmitted, FRAMES / 20),
        ("dropped", r.dropped, 0),
        ("passed", r.passed, FRAMES / 10),
        ("decapsulated", r.decapsulated, FRAMES / 100),
        ("ICMP replies", r.icmp_replies, FRAMES / 1000),
        ("ICMP errors forwarded", r.icmp_forwarded, FRAMES / 1000),
        ("GUE sent", r.gue_sent, FRAMES / 100),
        ("GUE decapsulated", r.gue_decapsulated, FRAMES / 1000),
        ("sent over IPv6", r.ip6_sent, FRAMES / 50),
        ("GUE sent over IPv6", r.gue6_sent, FRAMES / 1000),
        ("IPv6 sent in IPv4", r.sit_sent, FRAMES / 200),
        ("ICMPv6 echo replies", r.echo6_replies, FRAMES / 1000),
        ("packet too big", r.too_big6_sent, FRAMES / 10_000),
        ("ICMPv6 errors forwarded", r.icmp6_forwarded, FRAMES / 1000),
        ("IPv6 outer decapsulated", r.ip6_decapsulated, FRAMES / 1000),
        (
            "GUE over IPv6 decapsulated",
            r.gue6_decapsulated,
            FRAMES / 1000,
        ),
        (
            "IPv6 in IPv4 decapsulated",
            r.sit_decapsulated,
            FRAMES / 1000,
        ),
    ] {
        assert!(count > least, "{outcome}: {}", report.summary());
    }
}
