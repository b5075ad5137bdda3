//! Running the XDP programs through BPF_PROG_TEST_RUN.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use lb_common::{ipv4_to_wire, ipv6_to_wire, names, DataPathConfig, GlobalStats, NEXT_HOP_STATIC};
use lb_userspace::{
    dataplane::{DataPlane, VipSpec},
    loader::{self, BalancerOptions},
    maps::BalancerMaps,
};

use crate::packet::{
    ethernet, flow_hash_of, gue, internet_checksum, ETHERTYPE_IPV4, ETHERTYPE_VLAN, LB_MAC,
    NEXT_HOP_MAC,
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The LB's own address: outer source of encapsulated packets in tests.
pub const LB_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The LB's outer source towards IPv6 backends in packet tests.
pub const LB_SOURCE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1);

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown verdict",
    }
}

/// Panics with a clear message unless the test can load BPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test loads BPF programs and must run as root (cargo xtask test does)"
    );
}

/// Static next-hop configuration used by packet tests, so output bytes do
/// not depend on the host's routes.
pub fn static_config(mtu: u32) -> DataPathConfig {
    DataPathConfig {
        lb_source_addr: ipv4_to_wire(LB_SOURCE.octets()),
        next_hop_mode: NEXT_HOP_STATIC,
        static_src_mac: LB_MAC,
        static_dst_mac: NEXT_HOP_MAC,
        static_mtu: mtu,
        icmp_rate: lb_common::DEFAULT_ICMP_RATE,
        icmp_burst: lb_common::DEFAULT_ICMP_BURST,
        lb_source_addr6: ipv6_to_wire(LB_SOURCE6.octets()),
    }
}

/// Small maps: packet tests load a fresh program per case.
pub fn test_options(config: DataPathConfig) -> BalancerOptions {
    BalancerOptions {
        config,
        ring_pool_slots: 8 * 65537,
        flow_table_entries: 4096,
    }
}

/// A loaded (not attached) balancer with its data plane writer.
pub struct Balancer {
    pub ebpf: Ebpf,
    pub dataplane: DataPlane,
}

impl Balancer {
    pub fn load(options: &BalancerOptions, vips: &[VipSpec]) -> Self {
        require_root();
        let mut ebpf = loader::load_balancer(options).expect("loading balancer");
        let maps = BalancerMaps::take_from(&mut ebpf).expect("taking the maps");
        let mut dataplane = DataPlane::new(maps);
        dataplane.set_ipv6_source(options.config.lb_source_addr6 != [0; 4]);
        dataplane.apply(vips).expect("writing the VIPs");
        Self { ebpf, dataplane }
    }

    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        run_program(&mut self.ebpf, names::BALANCER_PROGRAM, frame)
    }

    pub fn stats(&self) -> GlobalStats {
        self.dataplane
            .maps()
            .global_stats()
            .expect("reading GLOBAL_STATS")
    }
}

/// Runs program `name` once on `frame`; returns the verdict and the frame
/// as the program left it.
pub fn run_program(ebpf: &mut Ebpf, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    let program = loader::xdp_program(ebpf, name).expect("program");
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// Like [`run_program`], as if the frame arrived on interface `ifindex` (of
/// the calling thread's network namespace): what `bpf_fib_lookup` routes by.
pub fn run_program_on(ebpf: &mut Ebpf, name: &str, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let program = loader::xdp_program(ebpf, name).expect("program");
    lb_userspace::trace::run_on(program, frame, ifindex).expect("BPF_PROG_TEST_RUN")
}

/// Names and values of every global counter, for exact comparisons.
pub fn counters(s: &GlobalStats) -> Vec<(&'static str, u64)> {
    GlobalStats::NAMES.into_iter().zip(s.values()).collect()
}

/// Asserts that the counters moved from `before` to `after` by exactly
/// `expected` (every counter not named must not move).
pub fn assert_counter_deltas(
    case: &str,
    before: &GlobalStats,
    after: &GlobalStats,
    expected: &[(&str, u64)],
) {
    for ((name, b), (_, a)) in counters(before).into_iter().zip(counters(after)) {
        let want = expected
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or(0);
        assert_eq!(
            a - b,
            want,
            "{case}: counter {name} moved by {} (expected {want})",
            a - b
        );
    }
    for (name, _) in expected {
        assert!(
            counters(before).iter().any(|(n, _)| n == name),
            "{case}: no counter named {name}"
        );
    }
}

/// The VLAN tag (if any) and the client's IP packet of a frame, up to its
/// IP total length (without padding or a trailer).
fn client_packet(input: &[u8]) -> (Option<u16>, &[u8]) {
    let ethertype = u16::from_be_bytes([input[12], input[13]]);
    let (vlan, l3) = if ethertype == ETHERTYPE_VLAN {
        (Some(u16::from_be_bytes([input[14], input[15]])), 18)
    } else {
        (None, 14)
    };
    let inner_len = u16::from_be_bytes([input[l3 + 2], input[l3 + 3]]) as usize;
    (vlan, &input[l3..l3 + inner_len])
}

/// The frame the LB must send for `input` towards `backend` of a GUE VIP
/// on `port`: the client's TCP or UDP packet, its outer source port from
/// its own 5-tuple. Built like [`encapsulated`].
pub fn gue_encapsulated(input: &[u8], backend: Ipv4Addr, port: u16) -> Vec<u8> {
    let (vlan, inner) = client_packet(input);
    let src_port = lb_common::gue_source_port(flow_hash_of(inner));
    let outer = gue(LB_SOURCE, backend, src_port, port, inner[1], inner);
    ethernet(NEXT_HOP_MAC, LB_MAC, vlan, ETHERTYPE_IPV4, &outer)
}

/// The frame the LB must send for `input` towards `backend`, built from the
/// input bytes with the test's own header code. Bytes past the inner IP
/// total length (padding, a trailer) are not part of it.
pub fn encapsulated(input: &[u8], backend: Ipv4Addr) -> Vec<u8> {
    let (vlan, inner) = client_packet(input);
    let inner_len = inner.len();
    let mut outer = vec![0x45, inner[1]];
    outer.extend_from_slice(&((inner_len + 20) as u16).to_be_bytes());
    // Id 0 and DF set whatever the client sent (see lb-ebpf's encap.rs).
    outer.extend_from_slice(&[0, 0, 0x40, 0, 64, 4, 0, 0]);
    outer.extend_from_slice(&LB_SOURCE.octets());
    outer.extend_from_slice(&backend.octets());
    let c = internet_checksum(&outer);
    outer[10..12].copy_from_slice(&c.to_be_bytes());
    outer.extend_from_slice(inner);
    ethernet(NEXT_HOP_MAC, LB_MAC, vlan, ETHERTYPE_IPV4, &outer)
}

/// The `decap` program's counters, summed over CPUs.
pub fn decap_stats(ebpf: &Ebpf) -> lb_common::DecapStats {
    let map: aya::maps::PerCpuArray<_, lb_common::DecapStats> = aya::maps::PerCpuArray::try_from(
        ebpf.map(names::DECAP_STATS)
            .expect("the decap object has DECAP_STATS"),
    )
    .expect("DECAP_STATS is a per-CPU array");
    map.get(&0, 0)
        .expect("reading DECAP_STATS")
        .iter()
        .fold(Default::default(), |a, s| a.sum(s))
}
