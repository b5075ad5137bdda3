//! Hostile input for the XDP programs: a deterministic generator of
//! malformed, truncated, lying and nested frames, and an oracle that checks
//! what the programs did with each one. `cargo xtask fuzz --runs N` and the
//! fixed-seed corpus test (`tests/fuzz_corpus.rs`) both drive it.
//!
//! What the oracle demands, for every frame:
//! - the verdict is PASS, DROP or TX: never XDP_ABORTED;
//! - a passed frame leaves exactly as it came (`balancer`), or is the inner
//!   packet of a tunnel to a local address, byte for byte but for a carried
//!   ECN mark (`decap`);
//! - a transmitted frame is either an encapsulation or an ICMP reply;
//! - an encapsulation parses back: Ethernet (tag kept) and a 20-byte
//!   outer IPv4 header whose total length is the frame's, whose checksum
//!   is right, towards a known backend, carrying exactly the client's IP
//!   packet (its own total length, never a trailer), within the MTU: a TCP
//!   or UDP packet to the VIP, or an ICMP error to the VIP quoting a TCP
//!   or UDP packet from it; for the GUE VIP (UDP) with a UDP header in
//!   between whose length is the outer length less 20, checksum 0, source
//!   port in 49152-65535 (the flow's own for a TCP or UDP packet) and
//!   destination the GUE port;
//! - an ICMP reply goes back to the sender (MACs swapped, tag kept) from
//!   the VIP, in an IPv4 header of 20 bytes whose total length is the
//!   frame's, with TTL 64 and right IP and ICMP checksums (for an echo
//!   reply: when the request's were right, as they are updated
//!   incrementally); an echo reply answers an echo request to the VIP and
//!   carries its identifier, sequence and data; a "fragmentation needed"
//!   answers a DF packet to the VIP too big for the tunnel, advertises
//!   the MTU less the tunnel's overhead (20, 28 for GUE) and quotes the
//!   packet's IP header and 8 bytes;
//! - `decap` strips IP-in-IP and GUE (to the GUE port, IPv4 or IPv6
//!   inside, the ethertype following the inner family) to its address
//!   only, and nothing else.

use std::net::Ipv4Addr;

use lb_common::names;
use lb_userspace::{
    dataplane::{Protocol, VipAddr, VipSpec},
    loader,
};

use crate::{
    packet::{
        ethernet, internet_checksum, Ipv4, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, L4,
        LB_MAC, NEXT_HOP_MAC, ROUTER_MAC, TCP_ACK, TCP_SYN,
    },
    xdp::{
        run_program, static_config, test_options, Balancer, LB_SOURCE, XDP_DROP, XDP_PASS, XDP_TX,
    },
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const NOT_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 7);
/// Backends of the fuzzed VIPs; the first is also the decap program's
/// local address.
pub const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 19, 0, 1),
    Ipv4Addr::new(198, 19, 0, 2),
    Ipv4Addr::new(198, 19, 0, 3),
];
pub const MTU: usize = 1500;
/// The VIP's TCP and UDP ports.
pub const TCP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 53;
/// The UDP VIP's encapsulation is GUE to this port (the TCP VIP's is
/// IP-in-IP), and `decap` strips GUE sent to it.
pub const GUE_PORT: u16 = lb_common::DEFAULT_GUE_PORT;
const ETHERTYPE_QINQ: u16 = 0x88a8;
/// BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header
/// (EINVAL), as no NIC delivers one: shorter frames are padded to it.
const MIN_FRAME: usize = 14;

/// xorshift64*: small, fast, and the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A well-formed IPv4 TCP or UDP packet to the VIP (or not), with random
/// flags, options and payload: the seed of most frames.
fn ip_packet(rng: &mut Rng) -> Ipv4 {
    let dst = if rng.chance(5) { NOT_VIP } else { VIP };
    let sport = 1024 + rng.below(60000) as u16;
    let mut ip = if rng.chance(3) {
        Ipv4::udp(CLIENT, sport, dst, UDP_PORT)
    } else {
        let flags = match rng.below(4) {
            0 => TCP_SYN,
            1 => TCP_ACK,
            2 => TCP_SYN | TCP_ACK,
            _ => rng.next_u64() as u8,
        };
        Ipv4::tcp(CLIENT, sport, dst, TCP_PORT, flags)
    };
    if rng.chance(4) {
        let words = 1 + rng.below(10);
        ip.options = rng.bytes(4 * words);
    }
    ip.tos = rng.next_u64() as u8;
    if rng.chance(10) {
        // A fragment: more fragments, an offset, or both.
        ip.frags = [0x2000, 0x0001 + rng.below(0x1fff) as u16, 0x2010][rng.below(3)];
    }
    let len = match rng.below(4) {
        0 => 0,
        1 => rng.below(64),
        2 => rng.below(1500),
        _ => 1400 + rng.below(100),
    };
    ip.payload = rng.bytes(len);
    ip
}

/// L2 in front of `l3`: plain, 802.1Q, QinQ or two 802.1Q tags.
fn with_l2(rng: &mut Rng, ethertype: u16, l3: &[u8]) -> Vec<u8> {
    match rng.below(6) {
        0 => ethernet(
            LB_MAC,
            ROUTER_MAC,
            Some(rng.next_u64() as u16 & 0x0fff),
            ethertype,
            l3,
        ),
        1 => {
            // QinQ: an 802.1ad tag over an 802.1Q tag.
            let mut f = Vec::new();
            f.extend_from_slice(&LB_MAC);
            f.extend_from_slice(&ROUTER_MAC);
            f.extend_from_slice(&ETHERTYPE_QINQ.to_be_bytes());
            f.extend_from_slice(&[0, 7]);
            f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            f.extend_from_slice(&[0, 5]);
            f.extend_from_slice(&ethertype.to_be_bytes());
            f.extend_from_slice(l3);
            f
        }
        2 => {
            let mut inner = Vec::new();
            inner.extend_from_slice(&[0, 9]);
            inner.extend_from_slice(&ethertype.to_be_bytes());
            inner.extend_from_slice(l3);
            ethernet(LB_MAC, ROUTER_MAC, Some(5), ETHERTYPE_VLAN, &inner)
        }
        _ => ethernet(LB_MAC, ROUTER_MAC, None, ethertype, l3),
    }
}

/// IP-in-IP around `inner` (protocol 4), to `dst`.
fn tunnel(rng: &mut Rng, dst: Ipv4Addr, inner: Vec<u8>) -> Vec<u8> {
    let mut outer = Ipv4::new(LB_SOURCE, dst, L4::Raw(4, inner));
    outer.tos = rng.next_u64() as u8;
    outer.payload.clear();
    outer.bytes()
}

/// GUE around `inner` (UDP, variant 1), to `dst`: mostly to the GUE port,
/// sometimes to another one.
fn gue_tunnel(rng: &mut Rng, dst: Ipv4Addr, inner: Vec<u8>) -> Vec<u8> {
    let port = if rng.chance(5) {
        GUE_PORT + 1
    } else {
        GUE_PORT
    };
    let mut outer = crate::packet::gue(
        LB_SOURCE,
        dst,
        0xc000 | rng.next_u64() as u16,
        port,
        rng.next_u64() as u8,
        &inner,
    );
    if rng.chance(4) {
        // A UDP length that lies.
        let lie = [0u16, 8, 0xffff, rng.next_u64() as u16][rng.below(4)];
        outer[24..26].copy_from_slice(&lie.to_be_bytes());
    }
    outer
}

/// An IPv6 packet with a chain of extension headers that may run past the
/// end of the packet.
fn ipv6(rng: &mut Rng) -> Vec<u8> {
    let mut ext = Vec::new();
    let mut next = 17u8;
    for _ in 0..rng.below(5) {
        // hop-by-hop 0, routing 43, destination options 60, fragment 44
        let kind = [0u8, 43, 60, 44][rng.below(4)];
        let len_units = rng.below(4) as u8;
        let mut h = vec![next, len_units];
        h.extend(rng.bytes(6 + 8 * len_units as usize));
        next = kind;
        h.extend(ext);
        ext = h;
    }
    let mut payload = ext;
    payload.extend_from_slice(&[0x30, 0x39, 0, 80, 0, 13, 0, 0]);
    let extra = rng.below(64);
    payload.extend(rng.bytes(extra));
    let claimed = if rng.chance(3) {
        rng.next_u64() as u16
    } else {
        payload.len() as u16
    };
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&claimed.to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend(payload);
    p
}

/// An ICMP error from a router quoting a packet the VIP sent (TCP or UDP,
/// maybe with options), cut anywhere near the 8 bytes after its header.
fn icmp_quoting_vip(rng: &mut Rng) -> Vec<u8> {
    let cport = 1024 + rng.below(60000) as u16;
    let mut quoted = if rng.chance(3) {
        Ipv4::udp(VIP, UDP_PORT, CLIENT, cport)
    } else {
        Ipv4::tcp(VIP, TCP_PORT, CLIENT, cport, TCP_ACK)
    };
    if rng.chance(4) {
        let words = 1 + rng.below(10);
        quoted.options = rng.bytes(4 * words);
    }
    let quoted = quoted.payload(&[]).bytes();
    let ihl = (quoted[0] & 0x0f) as usize * 4;
    let keep = (ihl + 8).saturating_sub(10) + rng.below(20);
    let kind = [3u8, 11, 12, 3, 3][rng.below(5)];
    let mut icmp = vec![kind, 4, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(&quoted[..keep.min(quoted.len())]);
    let c = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = Ipv4::new(Ipv4Addr::new(198, 18, 200, 1), VIP, L4::Raw(1, icmp));
    ip.payload.clear();
    ip.bytes()
}

/// An ICMP echo request (or another ICMP message) to the VIP, or not.
fn icmp_echo(rng: &mut Rng) -> Vec<u8> {
    let dst = if rng.chance(5) { NOT_VIP } else { VIP };
    let icmp_type = if rng.chance(4) {
        rng.next_u64() as u8
    } else {
        8
    };
    let any = rng.below(1500);
    let len = [0, 1, 56, any][rng.below(4)];
    let data = rng.bytes(len);
    let mut ip = Ipv4::new(
        CLIENT,
        dst,
        L4::Raw(
            1,
            crate::packet::icmp_message(icmp_type, 0, [0x4c, 0x42, 0, 1], &data),
        ),
    );
    if rng.chance(8) {
        ip.options = vec![1, 1, 1, 0];
    }
    if rng.chance(10) {
        ip.frags = 0x2000;
    }
    ip.bytes()
}

/// One generated frame, before mutation.
fn seed_frame(rng: &mut Rng) -> Vec<u8> {
    match rng.below(22) {
        0..=9 => {
            let ip = ip_packet(rng).bytes();
            with_l2(rng, ETHERTYPE_IPV4, &ip)
        }
        10 | 11 => {
            // A tunnel to the decap address, or to the VIP, maybe nested.
            let mut inner = if rng.chance(4) {
                ipv6(rng)
            } else {
                ip_packet(rng).bytes()
            };
            if rng.chance(3) {
                inner = tunnel(rng, BACKENDS[0], inner);
            }
            let dst = if rng.chance(2) { BACKENDS[0] } else { VIP };
            let l3 = if rng.chance(2) {
                gue_tunnel(rng, dst, inner)
            } else {
                tunnel(rng, dst, inner)
            };
            with_l2(rng, ETHERTYPE_IPV4, &l3)
        }
        12 | 13 => {
            let l3 = ipv6(rng);
            with_l2(rng, ETHERTYPE_IPV6, &l3)
        }
        14 | 20 => {
            let l3 = icmp_quoting_vip(rng);
            with_l2(rng, ETHERTYPE_IPV4, &l3)
        }
        21 => {
            let l3 = icmp_echo(rng);
            with_l2(rng, ETHERTYPE_IPV4, &l3)
        }
        15 => {
            // Random bytes behind a plausible Ethernet header.
            let ethertype = [ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, 0x0806][rng.below(4)];
            let len = rng.below(200);
            let body = rng.bytes(len);
            ethernet(LB_MAC, ROUTER_MAC, None, ethertype, &body)
        }
        16 => {
            let len = rng.below(120);
            rng.bytes(len)
        }
        _ => {
            let ip = ip_packet(rng).bytes();
            ethernet(LB_MAC, ROUTER_MAC, None, ETHERTYPE_IPV4, &ip)
        }
    }
}

/// Offset of the first IPv4 header after plain or single-tagged Ethernet.
fn l3_offset(frame: &[u8]) -> usize {
    if frame.len() >= 14 && frame[12..14] == ETHERTYPE_VLAN.to_be_bytes() {
        18
    } else {
        14
    }
}

/// Damages a frame the way hostile or broken senders do: lying lengths in
/// both directions, every kind of header-length field, truncation, trailers
/// and bit flips.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    let l3 = l3_offset(frame);
    for _ in 0..rng.below(4) {
        if frame.is_empty() {
            return;
        }
        match rng.below(9) {
            0 => {
                let at = rng.below(frame.len());
                frame.truncate(at);
            }
            1 => {
                let at = rng.below(frame.len());
                frame[at] = rng.next_u64() as u8;
            }
            2 => {
                let at = rng.below(frame.len());
                frame[at] ^= 1 << rng.below(8);
            }
            3 if frame.len() >= l3 + 4 => {
                // The IPv4 total length lies.
                let real = (frame.len() - l3) as u16;
                let lie = [
                    0,
                    1,
                    19,
                    20,
                    real.wrapping_sub(1),
                    real + 1,
                    0xffff,
                    rng.next_u64() as u16,
                ][rng.below(8)];
                frame[l3 + 2..l3 + 4].copy_from_slice(&lie.to_be_bytes());
            }
            4 if frame.len() > l3 => {
                // Every IHL.
                frame[l3] = (frame[l3] & 0xf0) | rng.below(16) as u8;
            }
            5 if frame.len() > l3 + 20 + 12 => {
                // Every TCP data offset (for IHL 5).
                frame[l3 + 20 + 12] = (rng.below(16) as u8) << 4;
            }
            6 => {
                let n = 1 + rng.below(32);
                let tail = rng.bytes(n);
                frame.extend(tail);
            }
            7 if frame.len() > l3 + 9 => {
                // Another protocol under the same header.
                frame[l3 + 9] = [1, 4, 6, 17, 41, 47, 58][rng.below(7)];
            }
            _ => {}
        }
    }
}

/// The frames of a run seeded with `seed`: the first ones sweep every
/// truncation, IHL, TCP data offset and lying total length of a few good
/// frames, the rest are generated and mutated.
pub struct Corpus {
    rng: Rng,
    sweep: Vec<Vec<u8>>,
}

/// A well-formed TCP SYN to the VIP, untagged.
fn syn_to_vip() -> Vec<u8> {
    ethernet(
        LB_MAC,
        ROUTER_MAC,
        None,
        ETHERTYPE_IPV4,
        &Ipv4::tcp(CLIENT, 40000, VIP, TCP_PORT, TCP_SYN).bytes(),
    )
}

impl Corpus {
    pub fn new(seed: u64) -> Self {
        let mut sweep = Vec::new();
        let bases = [
            syn_to_vip(),
            ethernet(
                LB_MAC,
                ROUTER_MAC,
                Some(5),
                ETHERTYPE_IPV4,
                &Ipv4::udp(CLIENT, 40000, VIP, UDP_PORT).bytes(),
            ),
            ethernet(
                LB_MAC,
                ROUTER_MAC,
                None,
                ETHERTYPE_IPV4,
                &tunnel(
                    &mut Rng::new(seed),
                    BACKENDS[0],
                    Ipv4::tcp(CLIENT, 40000, VIP, TCP_PORT, TCP_ACK).bytes(),
                ),
            ),
        ];
        for base in &bases {
            // Every truncation, every IHL, every TCP data offset, every
            // total length near the truth.
            for len in MIN_FRAME..base.len() {
                sweep.push(base[..len].to_vec());
            }
            let l3 = l3_offset(base);
            for ihl in 0..16u8 {
                let mut f = base.clone();
                f[l3] = 0x40 | ihl;
                sweep.push(f);
            }
            for doff in 0..16u8 {
                let mut f = base.clone();
                f[l3 + 32] = doff << 4;
                sweep.push(f);
            }
            let real = (base.len() - l3) as u16;
            for lie in [
                0,
                1,
                19,
                20,
                39,
                40,
                real - 1,
                real,
                real + 1,
                0x7fff,
                0xffff,
            ] {
                let mut f = base.clone();
                f[l3 + 2..l3 + 4].copy_from_slice(&lie.to_be_bytes());
                sweep.push(f);
            }
        }
        sweep.reverse();
        Corpus {
            rng: Rng::new(seed),
            sweep,
        }
    }

    pub fn next_frame(&mut self) -> Vec<u8> {
        if let Some(frame) = self.sweep.pop() {
            return frame;
        }
        let mut frame = seed_frame(&mut self.rng);
        if !self.rng.chance(4) {
            mutate(&mut self.rng, &mut frame);
        }
        frame.resize(frame.len().max(MIN_FRAME), 0);
        frame
    }
}

fn be16(b: &[u8], at: usize) -> usize {
    u16::from_be_bytes([b[at], b[at + 1]]) as usize
}

/// Checks the balancer's verdict and output for `input`.
pub fn check_balancer(input: &[u8], verdict: u32, output: &[u8]) -> Result<(), String> {
    match verdict {
        XDP_DROP => Ok(()),
        XDP_PASS if output == input => Ok(()),
        XDP_PASS => Err("passed, but the frame was changed".into()),
        XDP_TX => {
            let l3 = l3_offset(input);
            if output.len() >= l3 + 20 && output[l3 + 9] == 1 {
                check_icmp_reply(input, output)
            } else {
                check_encapsulated(input, output)
            }
        }
        other => Err(format!("verdict {other}")),
    }
}

/// Whether `input` (from its IPv4 header on) is an ICMP error to the VIP
/// quoting, inside its total length, a TCP or UDP packet from the VIP.
fn is_error_about_vip(ip: &[u8]) -> bool {
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let tot = be16(ip, 2).min(ip.len());
    let q = ihl + 8;
    if ihl < 20 || tot < q + 20 || ![3, 11, 12].contains(&ip[ihl]) {
        return false;
    }
    let inner = &ip[q..tot];
    let inner_ihl = (inner[0] & 0x0f) as usize * 4;
    inner[0] >> 4 == 4
        && inner_ihl >= 20
        && inner.len() >= inner_ihl + 8
        && (inner[9] == 6 || inner[9] == 17)
        && inner[12..16] == ip[16..20]
        && ip[16..20] == VIP.octets()
}

/// Checks an ICMP message the balancer built (an echo reply or a
/// "fragmentation needed") against the frame it answers.
fn check_icmp_reply(input: &[u8], out: &[u8]) -> Result<(), String> {
    let l3 = l3_offset(input);
    if input.len() < l3 + 20 {
        return Err("answered a frame without an IPv4 header".into());
    }
    if out[..6] != input[6..12] || out[6..12] != input[..6] || out[12..l3] != input[12..l3] {
        return Err("reply's Ethernet header: MACs not swapped or tag changed".into());
    }
    let (ip_in, ip) = (&input[l3..], &out[l3..]);
    if ip[0] != 0x45 || ip[8] != 64 || ip[9] != 1 {
        return Err(format!(
            "reply header {:02x?}: not IHL 5/TTL 64/ICMP",
            &ip[..20]
        ));
    }
    if be16(ip, 2) != ip.len() || ip.len() < 28 {
        return Err(format!(
            "reply total length {}, the frame carries {}",
            be16(ip, 2),
            ip.len()
        ));
    }
    if ip[12..16] != ip_in[16..20] || ip[16..20] != ip_in[12..16] || ip[12..16] != VIP.octets() {
        return Err("reply addresses are not VIP -> sender".into());
    }
    let in_ihl = (ip_in[0] & 0x0f) as usize * 4;
    let icmp = &ip[20..];
    match icmp[0] {
        0 => {
            // Echo reply: the request's IP header and ICMP checksums were
            // updated incrementally, so they are right if those were.
            let tot = be16(ip_in, 2);
            if ip_in[9] != 1
                || in_ihl != 20
                || tot != ip.len()
                || tot > ip_in.len()
                || ip_in[20] != 8
            {
                return Err("echo reply to something that is not an echo request".into());
            }
            if internet_checksum(&ip_in[..20]) == 0 && internet_checksum(&ip[..20]) != 0 {
                return Err("echo reply's IP checksum wrong".into());
            }
            if internet_checksum(&ip_in[20..tot]) == 0 && internet_checksum(icmp) != 0 {
                return Err("echo reply's ICMP checksum wrong".into());
            }
            if icmp[1] != 0 || icmp[4..] != ip_in[24..tot] {
                return Err("echo reply does not carry the request's id, sequence and data".into());
            }
        }
        3 => {
            if internet_checksum(&ip[..20]) != 0 || internet_checksum(icmp) != 0 {
                return Err("fragmentation needed: a checksum is wrong".into());
            }
            let quote_len = in_ihl + 8;
            if quote_len > ip_in.len() {
                return Err("fragmentation needed quoting more than the packet".into());
            }
            // The UDP VIP is GUE: 8 bytes more of outer headers.
            let overhead = if ip_in[9] == 17 { 28 } else { 20 };
            if icmp[1] != 4
                || be16(icmp, 6) != MTU - overhead
                || icmp[4..6] != [0, 0]
                || icmp.len() != 8 + quote_len
                || icmp[8..] != ip_in[..quote_len]
            {
                return Err("fragmentation needed: code, MTU or quote wrong".into());
            }
            let too_big = be16(ip_in, 2) + overhead > MTU;
            let df = ip_in[6] & 0x40 != 0;
            if !too_big || !df || (ip_in[9] != 6 && ip_in[9] != 17) {
                return Err(
                    "fragmentation needed for a packet that fits or allows fragments".into(),
                );
            }
        }
        t => return Err(format!("sent ICMP type {t}")),
    }
    Ok(())
}

fn check_encapsulated(input: &[u8], out: &[u8]) -> Result<(), String> {
    let l3 = l3_offset(input);
    if input.len() < l3 + 20
        || input[l3 + 9] != 6 && input[l3 + 9] != 17 && !is_error_about_vip(&input[l3..])
    {
        return Err(
            "encapsulated a frame that is not IPv4 TCP or UDP, nor an ICMP error about a VIP flow"
                .into(),
        );
    }
    if out.len() < l3 + 40 {
        return Err(format!("sent a {}-byte frame", out.len()));
    }
    if out[..6] != NEXT_HOP_MAC || out[6..12] != LB_MAC || out[12..l3] != input[12..l3] {
        return Err("Ethernet header (addresses or tag) wrong".into());
    }
    let outer = &out[l3..l3 + 20];
    // The UDP VIP is GUE, the TCP VIP IP-in-IP; an ICMP error travels as
    // its flow does.
    let gue_vip = if input[l3 + 9] == 1 {
        let ihl = (input[l3] & 0x0f) as usize * 4;
        input[l3 + ihl + 8 + 9] == 17
    } else {
        input[l3 + 9] == 17
    };
    let (outer_proto, overhead) = if gue_vip { (17, 28) } else { (4, 20) };
    if outer[0] != 0x45 || outer[9] != outer_proto || outer[8] != 64 {
        return Err(format!(
            "outer header {outer:02x?}: not IPv4/IHL 5/protocol {outer_proto}/TTL 64"
        ));
    }
    if out.len() < l3 + overhead + 20 {
        return Err(format!("sent a {}-byte frame", out.len()));
    }
    if internet_checksum(outer) != 0 {
        return Err("outer header checksum wrong".into());
    }
    let outer_len = be16(outer, 2);
    if outer_len != out.len() - l3 {
        return Err(format!(
            "outer total length {outer_len}, the frame carries {}",
            out.len() - l3
        ));
    }
    if outer_len > MTU {
        return Err(format!(
            "outer packet of {outer_len} bytes over the {MTU}-byte MTU"
        ));
    }
    if outer[12..16] != LB_SOURCE.octets() || !BACKENDS.iter().any(|b| outer[16..20] == b.octets())
    {
        return Err("outer addresses are not LB -> a backend".into());
    }
    let inner_len = be16(input, l3 + 2);
    if inner_len > input.len() - l3 {
        return Err(format!(
            "encapsulated a packet claiming {inner_len} bytes from a frame with {}",
            input.len() - l3
        ));
    }
    if gue_vip {
        let udp = &out[l3 + 20..l3 + 28];
        let src_port = be16(udp, 0) as u16;
        if be16(udp, 2) != GUE_PORT as usize
            || be16(udp, 4) != outer_len - 20
            || udp[6..8] != [0, 0]
            || src_port < 0xc000
        {
            return Err(format!(
                "GUE header {udp:02x?}: not (49152.., {GUE_PORT}, length {}, checksum 0)",
                outer_len - 20
            ));
        }
        if input[l3 + 9] != 1 {
            let hash = crate::packet::flow_hash_of(&input[l3..]);
            if src_port != lb_common::gue_source_port(hash) {
                return Err(format!("GUE source port {src_port} is not the flow's"));
            }
        }
    }
    if out[l3 + overhead..] != input[l3..l3 + inner_len] {
        return Err("the inner packet is not the client's IP packet".into());
    }
    if input[l3 + 16..l3 + 20] != VIP.octets() {
        return Err("encapsulated a packet not sent to the VIP".into());
    }
    Ok(())
}

/// Checks the decap program's verdict and output for `input` (its local
/// address is `BACKENDS[0]`).
pub fn check_decap(input: &[u8], verdict: u32, output: &[u8]) -> Result<(), String> {
    if verdict != XDP_PASS {
        return Err(format!("verdict {verdict}: decap only passes"));
    }
    if output == input {
        return Ok(());
    }
    let l3 = l3_offset(input);
    if input.len() < l3 + 20 {
        return Err("changed a frame too short to be a tunnel".into());
    }
    let outer_ihl = (input[l3] & 0x0f) as usize * 4;
    let gue = input[l3 + 9] == 17
        && input.len() >= l3 + outer_ihl + 8
        && be16(input, l3 + outer_ihl + 2) == GUE_PORT as usize;
    if !gue && input[l3 + 9] != 4 || input[l3 + 16..l3 + 20] != BACKENDS[0].octets() {
        return Err("changed a frame that is not a tunnel to the local address".into());
    }
    let outer_len = if gue { outer_ihl + 8 } else { outer_ihl };
    if output.len() + outer_len != input.len() {
        return Err(format!(
            "stripped {} bytes, the outer headers have {outer_len}",
            input.len() - output.len()
        ));
    }
    if gue && be16(input, l3 + outer_ihl + 4) + outer_ihl != be16(input, l3 + 2) {
        return Err("stripped GUE whose UDP length disagrees with the IP length".into());
    }
    let inner_in = &input[l3 + outer_len..];
    let inner_out = &output[l3..];
    let ethertype_at = l3 - 2;
    let inner_v6 = gue && inner_out.first().is_some_and(|b| b >> 4 == 6);
    let want_ethertype = if inner_v6 {
        ETHERTYPE_IPV6
    } else {
        ETHERTYPE_IPV4
    };
    if output[..ethertype_at] != input[..ethertype_at]
        || be16(output, ethertype_at) != want_ethertype as usize
    {
        return Err("Ethernet header changed beyond the inner packet's ethertype".into());
    }
    if inner_v6 {
        // Only the ECN bits of the traffic class may differ.
        let mut expected = inner_in.to_vec();
        if let (Some(e), Some(&o)) = (expected.get_mut(1), inner_out.get(1)) {
            *e = o;
        }
        if inner_out.len() < 40
            || inner_out != expected
            || (inner_out[1] ^ inner_in[1]) & !0x30 != 0
        {
            return Err("the inner IPv6 packet changed beyond its ECN field".into());
        }
        return Ok(());
    }
    if inner_out.len() < 20 || inner_out[0] >> 4 != 4 {
        return Err("passed an inner packet that is not IPv4".into());
    }
    // Only the ECN bits (and so the checksum) may differ.
    let mut expected = inner_in.to_vec();
    expected[1] = inner_out[1];
    expected[10..12].copy_from_slice(&inner_out[10..12]);
    if inner_out != expected || (inner_out[1] ^ inner_in[1]) & !0b11 != 0 {
        return Err("the inner packet changed beyond its ECN field".into());
    }
    if inner_out[1] != inner_in[1] {
        let ihl = (inner_out[0] & 0x0f) as usize * 4;
        if ihl >= 20
            && inner_out.len() >= ihl
            && internet_checksum(&inner_in[..ihl]) == 0
            && internet_checksum(&inner_out[..ihl]) != 0
        {
            return Err("ECN mark carried with a wrong inner checksum".into());
        }
    }
    Ok(())
}

/// What a run did: verdict counts and the first failures (frame, reason).
#[derive(Default)]
pub struct Report {
    pub frames: u64,
    pub passed: u64,
    pub dropped: u64,
    pub transmitted: u64,
    /// Of `transmitted`: ICMP replies built by the balancer (echo replies,
    /// "fragmentation needed").
    pub icmp_replies: u64,
    /// Of `transmitted`: ICMP errors encapsulated to a backend.
    pub icmp_forwarded: u64,
    /// Of `transmitted`: sent in GUE (outer protocol UDP).
    pub gue_sent: u64,
    /// Of `decapsulated`: GUE packets stripped.
    pub gue_decapsulated: u64,
    pub decapsulated: u64,
    pub failures: Vec<(String, Vec<u8>, String)>,
}

impl Report {
    pub fn record(&mut self, program: &str, input: &[u8], result: Result<(), String>) {
        if let Err(reason) = result {
            if self.failures.len() < 10 {
                self.failures
                    .push((program.to_string(), input.to_vec(), reason));
            }
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} frames through balancer and decap: balancer passed {}, dropped {}, sent {} ({} ICMP replies, {} ICMP errors to backends, {} in GUE); decap stripped {} ({} GUE); {} failures",
            self.frames,
            self.passed,
            self.dropped,
            self.transmitted,
            self.icmp_replies,
            self.icmp_forwarded,
            self.gue_sent,
            self.decapsulated,
            self.gue_decapsulated,
            self.failures.len()
        )
    }

    pub fn failure_text(&self) -> String {
        self.failures
            .iter()
            .map(|(program, frame, reason)| {
                let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
                format!(
                    "{program}: {reason}\n  frame ({} bytes): {hex}",
                    frame.len()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs `frames` frames of the corpus seeded with `seed` through a fresh
/// `balancer` (TCP and UDP VIPs, three backends, static next hop, MTU
/// 1500) and a fresh `decap`, checking each result. Needs root.
pub fn run(frames: u64, seed: u64) -> anyhow::Result<Report> {
    let vip = |port, proto| VipAddr {
        addr: VIP.into(),
        port,
        proto,
    };
    let backends: Vec<(std::net::IpAddr, u32)> = BACKENDS.iter().map(|&b| (b.into(), 1)).collect();
    let mut balancer = Balancer::load(
        &test_options(static_config(MTU as u32)),
        &[
            VipSpec::new(vip(TCP_PORT, Protocol::Tcp), &backends),
            VipSpec {
                encap: lb_userspace::encap::Encap::Gue { port: GUE_PORT },
                ..VipSpec::new(vip(UDP_PORT, Protocol::Udp), &backends[..1])
            },
        ],
    );
    let mut decap = loader::load_decap(&[BACKENDS[0].into()], &[GUE_PORT])?;
    let mut corpus = Corpus::new(seed);
    let mut report = Report::default();
    for _ in 0..frames {
        let frame = corpus.next_frame();
        report.frames += 1;
        let (verdict, out) = balancer.run(&frame);
        match verdict {
            XDP_PASS => report.passed += 1,
            XDP_DROP => report.dropped += 1,
            XDP_TX => {
                report.transmitted += 1;
                let l3 = l3_offset(&frame);
                if out.len() > l3 + 9 && out[l3 + 9] == 1 {
                    report.icmp_replies += 1;
                } else if frame.len() > l3 + 9 && frame[l3 + 9] == 1 {
                    report.icmp_forwarded += 1;
                }
                if out.len() > l3 + 9 && out[l3 + 9] == 17 {
                    report.gue_sent += 1;
                }
            }
            _ => {}
        }
        report.record("balancer", &frame, check_balancer(&frame, verdict, &out));
        let (verdict, out) = run_program(&mut decap, names::DECAP_PROGRAM, &frame);
        if out != frame {
            report.decapsulated += 1;
            let l3 = l3_offset(&frame);
            if frame.len() > l3 + 9 && frame[l3 + 9] == 17 {
                report.gue_decapsulated += 1;
            }
        }
        report.record("decap", &frame, check_decap(&frame, verdict, &out));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Vec<u8> {
        syn_to_vip()
    }

    fn encapsulated(input: &[u8]) -> Vec<u8> {
        crate::xdp::encapsulated(input, BACKENDS[1])
    }

    #[test]
    fn the_oracle_accepts_a_correct_encapsulation_and_names_each_fault() {
        let input = good();
        let out = encapsulated(&input);
        assert_eq!(check_balancer(&input, XDP_TX, &out), Ok(()));
        let mut bad_sum = out.clone();
        bad_sum[14 + 10] ^= 1;
        assert!(check_balancer(&input, XDP_TX, &bad_sum)
            .unwrap_err()
            .contains("checksum"));
        let mut trailer = out.clone();
        trailer.extend_from_slice(&[0; 4]);
        assert!(check_balancer(&input, XDP_TX, &trailer)
            .unwrap_err()
            .contains("outer total length"));
        let mut changed = input.clone();
        changed[20] ^= 1;
        assert!(check_balancer(&input, XDP_PASS, &changed).is_err());
        assert!(check_balancer(&input, 0, &input).is_err(), "XDP_ABORTED");
    }

    #[test]
    fn the_oracle_checks_icmp_replies() {
        use crate::packet::{echo_reply, echo_request, frag_needed_reply, from_router};
        let request = from_router(&echo_request(CLIENT, VIP, b"data"));
        let reply = ethernet(
            ROUTER_MAC,
            LB_MAC,
            None,
            ETHERTYPE_IPV4,
            &echo_reply(CLIENT, VIP, b"data").bytes(),
        );
        assert_eq!(check_balancer(&request, XDP_TX, &reply), Ok(()));
        let mut bad = reply.clone();
        bad[14 + 20 + 2] ^= 1;
        assert!(check_balancer(&request, XDP_TX, &bad)
            .unwrap_err()
            .contains("ICMP checksum"));
        let mut other_data = reply.clone();
        other_data[14 + 28] ^= 1;
        other_data[14 + 22] ^= 1;
        assert!(check_balancer(&request, XDP_TX, &other_data).is_err());

        let too_big =
            from_router(&Ipv4::tcp(CLIENT, 40000, VIP, TCP_PORT, TCP_ACK).payload(&[0; 1500 - 40]));
        let frag = frag_needed_reply(&too_big, MTU as u16);
        assert_eq!(check_balancer(&too_big, XDP_TX, &frag), Ok(()));
        let wrong_mtu = frag_needed_reply(&too_big, MTU as u16 - 1);
        assert!(check_balancer(&too_big, XDP_TX, &wrong_mtu).is_err());
        let mut small = too_big.clone();
        small.truncate(100);
        small[16..18].copy_from_slice(&86u16.to_be_bytes());
        assert!(check_balancer(&small, XDP_TX, &frag).is_err(), "it fits");
    }

    #[test]
    fn the_corpus_is_deterministic_and_starts_with_the_sweep() {
        let mut a = Corpus::new(7);
        let mut b = Corpus::new(7);
        assert_eq!(
            a.next_frame().len(),
            MIN_FRAME,
            "the sweep starts at the shortest frame"
        );
        b.next_frame();
        for _ in 0..5000 {
            assert_eq!(a.next_frame(), b.next_frame());
        }
        let mut c = Corpus::new(8);
        let differs = (0..5000).any(|_| a.next_frame() != c.next_frame());
        assert!(differs, "another seed gives other frames");
    }
}
