//! A small packet builder for tests. It computes every checksum itself,
//! independently of the data path's code, so a test that compares output
//! bytes also checks the program's checksums.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const LB_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x42];

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_PSH: u8 = 0x08;

/// RFC 1071 checksum over `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Layer-4 part of a packet.
#[derive(Debug, Clone)]
pub enum L4 {
    Tcp {
        src: u16,
        dst: u16,
        flags: u8,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    Icmp,
    /// Raw bytes after the IPv4 header (e.g. an inner packet).
    Raw(u8, Vec<u8>),
}

impl L4 {
    /// The transport segment (with `payload`) and its protocol number;
    /// `checksum(proto, segment)` sums the family's pseudo-header with it.
    /// `Icmp` is an ICMP echo request (no pseudo-header: `checksum` is not
    /// called); [`Ipv6`] builds its ICMPv6 twin itself.
    fn segment(&self, payload: &[u8], checksum: impl Fn(u8, &[u8]) -> u16) -> (u8, Vec<u8>) {
        match self {
            L4::Tcp { src, dst, flags } => {
                let mut seg = Vec::new();
                seg.extend_from_slice(&src.to_be_bytes());
                seg.extend_from_slice(&dst.to_be_bytes());
                seg.extend_from_slice(&1000u32.to_be_bytes()); // seq
                seg.extend_from_slice(
                    &(if flags & TCP_ACK != 0 { 2000u32 } else { 0 }).to_be_bytes(),
                );
                seg.push(5 << 4); // data offset
                seg.push(*flags);
                seg.extend_from_slice(&64240u16.to_be_bytes());
                seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                seg.extend_from_slice(payload);
                let c = checksum(6, &seg);
                seg[16..18].copy_from_slice(&c.to_be_bytes());
                (6, seg)
            }
            L4::Udp { src, dst } => {
                let mut seg = Vec::new();
                seg.extend_from_slice(&src.to_be_bytes());
                seg.extend_from_slice(&dst.to_be_bytes());
                seg.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                seg.extend_from_slice(payload);
                let c = checksum(17, &seg);
                seg[6..8].copy_from_slice(&c.to_be_bytes());
                (17, seg)
            }
            L4::Icmp => {
                let mut seg = vec![8, 0, 0, 0, 0, 1, 0, 1];
                seg.extend_from_slice(payload);
                let c = internet_checksum(&seg);
                seg[2..4].copy_from_slice(&c.to_be_bytes());
                (1, seg)
            }
            L4::Raw(proto, bytes) => (*proto, bytes.clone()),
        }
    }
}

/// An IPv4 packet description; `bytes()` renders it.
#[derive(Debug, Clone)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tos: u8,
    pub ttl: u8,
    /// Flags and fragment offset field (host order).
    pub frags: u16,
    /// Bytes of IP options (a multiple of 4).
    pub options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Ipv4 {
    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Self {
        Self::new(
            src,
            dst,
            L4::Tcp {
                src: sport,
                dst: dport,
                flags,
            },
        )
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self::new(
            src,
            dst,
            L4::Udp {
                src: sport,
                dst: dport,
            },
        )
    }

    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            src,
            dst,
            tos: 0,
            ttl: 63,
            frags: 0x4000, // DF, as Linux sends TCP
            options: Vec::new(),
            l4,
            payload: b"hello".to_vec(),
        }
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    fn l4_bytes(&self) -> (u8, Vec<u8>) {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        self.l4.segment(&self.payload, |proto, seg| {
            let mut p = pseudo.clone();
            p.push(0);
            p.push(proto);
            p.extend_from_slice(&(seg.len() as u16).to_be_bytes());
            p.extend_from_slice(seg);
            internet_checksum(&p)
        })
    }

    /// The packet from the IPv4 header on, checksums included.
    pub fn bytes(&self) -> Vec<u8> {
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let (proto, l4) = self.l4_bytes();
        let ihl = 5 + self.options.len() / 4;
        let total = ihl * 4 + l4.len();
        let mut h = Vec::with_capacity(total);
        h.push(0x40 | ihl as u8);
        h.push(self.tos);
        h.extend_from_slice(&(total as u16).to_be_bytes());
        h.extend_from_slice(&0x1234u16.to_be_bytes());
        h.extend_from_slice(&self.frags.to_be_bytes());
        h.push(self.ttl);
        h.push(proto);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let c = internet_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&l4);
        h
    }
}

/// Ethernet (and optional 802.1Q tag) in front of an L3 payload.
pub fn ethernet(
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    ethertype: u16,
    l3: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(tci) = vlan {
        f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// A client frame as the LB receives it from the router.
pub fn from_router(ip: &Ipv4) -> Vec<u8> {
    ethernet(LB_MAC, ROUTER_MAC, None, ETHERTYPE_IPV4, &ip.bytes())
}

/// The IP-in-IP packet the LB must send for `inner` (RFC 2003 outer
/// header: TTL 64, protocol 4, TOS inherited, DF always set, id 0).
pub fn ipip(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, inner: &Ipv4) -> Vec<u8> {
    let inner_bytes = inner.bytes();
    Ipv4 {
        src: outer_src,
        dst: outer_dst,
        tos: inner.tos,
        ttl: 64,
        frags: 0x4000,
        options: Vec::new(),
        l4: L4::Raw(4, inner_bytes),
        payload: Vec::new(),
    }
    .bytes_with_id(0)
}

/// The outer UDP destination port of the tests' GUE VIPs (the default).
pub const GUE_PORT: u16 = lb_common::DEFAULT_GUE_PORT;

/// The outer UDP source port the LB must use for the flow of `packet`
/// (from the flow hash of its 5-tuple, as the data path computes it).
pub fn gue_source_port(packet: &Ipv4) -> u16 {
    lb_common::gue_source_port(flow_hash_of(&packet.bytes()))
}

/// The data path's flow hash of an IPv4 TCP or UDP packet (its bytes from
/// the IP header on; the ports right after the IHL).
pub fn flow_hash_of(ip: &[u8]) -> u32 {
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    let port = |at: usize| u16::from_be_bytes([ip[at], ip[at + 1]]);
    flow_hash4_of(addr(12), port(ihl), addr(16), port(ihl + 2), ip[9])
}

/// The data path's flow hash of an IPv4 flow (host-order ports), the twin
/// of [`flow_hash6_of`].
pub fn flow_hash4_of(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> u32 {
    lb_common::flow_hash(
        u32::from_ne_bytes(src.octets()),
        u32::from_ne_bytes(dst.octets()),
        sport.to_be(),
        dport.to_be(),
        proto,
    )
}

/// A GUE packet (variant 1: the inner IP packet right after the UDP
/// header) as the LB must send it: outer TTL 64, protocol 17, `tos`
/// inherited, DF, id 0, UDP checksum 0.
pub fn gue(
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    tos: u8,
    inner: &[u8],
) -> Vec<u8> {
    let udp = gue_udp(src_port, dst_port, inner);
    Ipv4 {
        src: outer_src,
        dst: outer_dst,
        tos,
        ttl: 64,
        frags: 0x4000,
        options: Vec::new(),
        l4: L4::Raw(17, udp),
        payload: Vec::new(),
    }
    .bytes_with_id(0)
}

impl Ipv4 {
    /// Like `bytes` with a given IP id (the LB's outer header uses 0).
    pub fn bytes_with_id(&self, id: u16) -> Vec<u8> {
        let mut b = self.bytes();
        b[4..6].copy_from_slice(&id.to_be_bytes());
        b[10..12].copy_from_slice(&[0, 0]);
        let ihl = (b[0] & 0x0f) as usize * 4;
        let c = internet_checksum(&b[..ihl]);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        b
    }
}

/// An ARP request frame.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&ROUTER_MAC);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    ethernet([0xff; 6], ROUTER_MAC, None, ETHERTYPE_ARP, &a)
}

/// A minimal IPv6 UDP frame (content irrelevant: it must pass untouched).
pub fn ipv6_udp() -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 13, 17, 64];
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(&[0x30, 0x39, 0, 80, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o']);
    ethernet(LB_MAC, ROUTER_MAC, None, ETHERTYPE_IPV6, &p)
}

/// An ICMP message: type, code, checksum (computed here), the 4
/// type-specific bytes `rest`, then `data`.
pub fn icmp_message(icmp_type: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(data);
    let c = internet_checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// Identifier and sequence number of the test echo requests.
pub const ECHO_ID_SEQ: [u8; 4] = [0x4c, 0x42, 0x00, 0x07];

/// An ICMP echo request (type 8) from `src` to `dst` carrying `data`.
pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, data: &[u8]) -> Ipv4 {
    Ipv4::new(src, dst, L4::Raw(1, icmp_message(8, 0, ECHO_ID_SEQ, data)))
}

/// The echo reply the balancer must send for `echo_request(client, vip,
/// data)` (same IP id, flags and TOS; TTL 64; type 0), as an IPv4 packet.
pub fn echo_reply(client: Ipv4Addr, vip: Ipv4Addr, data: &[u8]) -> Ipv4 {
    let mut ip = Ipv4::new(
        vip,
        client,
        L4::Raw(1, icmp_message(0, 0, ECHO_ID_SEQ, data)),
    );
    ip.ttl = 64;
    ip
}

/// An ICMP error (`icmp_type`, `code`, `rest`) from `from` to `to` quoting
/// `quoted` (the bytes of the packet it is about, as many as it quotes).
pub fn icmp_error(
    from: Ipv4Addr,
    to: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Ipv4 {
    Ipv4::new(
        from,
        to,
        L4::Raw(1, icmp_message(icmp_type, code, rest, quoted)),
    )
}

/// The ICMP "fragmentation needed" frame the balancer must send back for
/// the client frame `input` when the egress MTU is `egress_mtu`: MACs
/// swapped, tag kept, from the packet's destination (the VIP) to its
/// source, TOS 0xc0, id 0, DF, TTL 64, next-hop MTU `egress_mtu - 20`,
/// quoting the IP header (options included) and the first 8 bytes after
/// it. Built from the input bytes with this module's own header code.
pub fn frag_needed_reply(input: &[u8], egress_mtu: u16) -> Vec<u8> {
    frag_needed_reply_with_overhead(input, egress_mtu, 20)
}

/// [`frag_needed_reply`] for a tunnel that adds `overhead` bytes (28 for
/// GUE): it advertises `egress_mtu - overhead`.
pub fn frag_needed_reply_with_overhead(input: &[u8], egress_mtu: u16, overhead: u16) -> Vec<u8> {
    let ethertype = u16::from_be_bytes([input[12], input[13]]);
    let (vlan, l3) = if ethertype == ETHERTYPE_VLAN {
        (Some(u16::from_be_bytes([input[14], input[15]])), 18)
    } else {
        (None, 14)
    };
    let ip = &input[l3..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let quote = &ip[..ihl + 8];
    let src = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let dst = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let mtu = (egress_mtu - overhead).to_be_bytes();
    let mut reply = icmp_error(src, dst, 3, 4, [0, 0, mtu[0], mtu[1]], quote);
    reply.tos = 0xc0;
    reply.ttl = 64;
    reply.frags = 0x4000;
    let src_mac: [u8; 6] = input[0..6].try_into().expect("6 bytes");
    let dst_mac: [u8; 6] = input[6..12].try_into().expect("6 bytes");
    ethernet(
        dst_mac,
        src_mac,
        vlan,
        ETHERTYPE_IPV4,
        &reply.bytes_with_id(0),
    )
}

/// An IPv6 extension header: its type (hop-by-hop 0, routing 43, fragment
/// 44, destination options 60) and the bytes after its next-header and
/// length fields (6 + 8n bytes; a fragment header's length byte is
/// reserved, 0).
#[derive(Debug, Clone)]
pub struct Ipv6Ext {
    pub kind: u8,
    pub body: Vec<u8>,
}

impl Ipv6Ext {
    /// A hop-by-hop or destination-options header of `8 * (1 + n)` bytes
    /// of PadN.
    pub fn padding(kind: u8, n: usize) -> Self {
        let mut body = vec![1, (4 + 8 * n) as u8];
        body.resize(6 + 8 * n, 0);
        Self { kind, body }
    }

    /// A fragment header: `offset` in 8-byte units, more fragments flag.
    pub fn fragment(offset: u16, more: bool) -> Self {
        let field = (offset << 3) | more as u16;
        let mut body = field.to_be_bytes().to_vec();
        body.extend_from_slice(&0x4c42_0001u32.to_be_bytes());
        Self { kind: 44, body }
    }
}

/// An IPv6 packet description; `bytes()` renders it.
#[derive(Debug, Clone)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub tclass: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
    pub ext: Vec<Ipv6Ext>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, l4: L4) -> Self {
        Self {
            src,
            dst,
            tclass: 0,
            flow_label: 0x1_2345,
            hop_limit: 63,
            ext: Vec::new(),
            l4,
            payload: b"hello".to_vec(),
        }
    }

    pub fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Self {
        Self::new(
            src,
            dst,
            L4::Tcp {
                src: sport,
                dst: dport,
                flags,
            },
        )
    }

    pub fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Self {
        Self::new(
            src,
            dst,
            L4::Udp {
                src: sport,
                dst: dport,
            },
        )
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// The checksum of the upper-layer segment `seg` (ICMPv6, TCP, UDP)
    /// under this packet's pseudo-header.
    pub fn upper_checksum(&self, next: u8, seg: &[u8]) -> u16 {
        let mut p = Vec::new();
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        p.extend_from_slice(&(seg.len() as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, next]);
        p.extend_from_slice(seg);
        internet_checksum(&p)
    }

    /// The packet from the IPv6 header on, checksums included. `L4::Icmp`
    /// is an ICMPv6 echo request (type 128).
    pub fn bytes(&self) -> Vec<u8> {
        let (next, l4) = match self.l4 {
            L4::Icmp => {
                let mut seg = vec![128, 0, 0, 0, 0, 1, 0, 1];
                seg.extend_from_slice(&self.payload);
                let c = self.upper_checksum(58, &seg);
                seg[2..4].copy_from_slice(&c.to_be_bytes());
                (58, seg)
            }
            _ => self
                .l4
                .segment(&self.payload, |proto, seg| self.upper_checksum(proto, seg)),
        };
        let kinds: Vec<u8> = self.ext.iter().map(|e| e.kind).chain([next]).collect();
        let mut chain = Vec::new();
        for (i, ext) in self.ext.iter().enumerate() {
            assert!(ext.body.len() >= 6 && (ext.body.len() - 6).is_multiple_of(8));
            chain.push(kinds[i + 1]);
            chain.push(if ext.kind == 44 {
                0
            } else {
                ((ext.body.len() - 6) / 8) as u8
            });
            chain.extend_from_slice(&ext.body);
        }
        chain.extend_from_slice(&l4);
        ipv6_header(
            self.tclass,
            self.flow_label,
            kinds[0],
            self.hop_limit,
            (self.src, self.dst),
            &chain,
        )
    }
}

/// An IPv6 header from `addrs.0` to `addrs.1` in front of `payload`.
pub fn ipv6_header(
    tclass: u8,
    flow_label: u32,
    next: u8,
    hop_limit: u8,
    addrs: (Ipv6Addr, Ipv6Addr),
    payload: &[u8],
) -> Vec<u8> {
    let head = (6u32 << 28) | ((tclass as u32) << 20) | (flow_label & 0xf_ffff);
    let mut b = head.to_be_bytes().to_vec();
    b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    b.push(next);
    b.push(hop_limit);
    b.extend_from_slice(&addrs.0.octets());
    b.extend_from_slice(&addrs.1.octets());
    b.extend_from_slice(payload);
    b
}

/// The IPv6 address in `bytes` at `at` (8: an IPv6 header's source, 24:
/// its destination).
pub fn ipv6_at(bytes: &[u8], at: usize) -> Ipv6Addr {
    let a: [u8; 16] = bytes[at..at + 16].try_into().expect("16 bytes");
    Ipv6Addr::from(a)
}

/// An IPv6 client frame as the LB receives it from the router.
pub fn from_router6(ip: &Ipv6) -> Vec<u8> {
    ethernet(LB_MAC, ROUTER_MAC, None, ETHERTYPE_IPV6, &ip.bytes())
}

/// The data path's flow hash of an IPv6 flow (host-order ports).
pub fn flow_hash6_of(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, proto: u8) -> u32 {
    lb_common::flow_hash6(
        &lb_common::ipv6_to_wire(src.octets()),
        &lb_common::ipv6_to_wire(dst.octets()),
        sport.to_be(),
        dport.to_be(),
        proto,
    )
}

/// The outer IPv6 packet the LB must send for `inner` (an IPv4 packet when
/// `next` is 4, IPv6 when 41) to an IPv6 backend: hop limit 64, the
/// inner packet's TOS or traffic class, the flow label from the flow hash.
pub fn ip6_tunnel(
    addrs: (Ipv6Addr, Ipv6Addr),
    next: u8,
    tclass: u8,
    flow_hash: u32,
    inner: &[u8],
) -> Vec<u8> {
    let label = lb_common::outer_flow_label(flow_hash);
    ipv6_header(tclass, label, next, 64, addrs, inner)
}

/// GUE's UDP header (checksum 0) and `inner` after it.
fn gue_udp(src_port: u16, dst_port: u16, inner: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + inner.len());
    udp.extend_from_slice(&src_port.to_be_bytes());
    udp.extend_from_slice(&dst_port.to_be_bytes());
    udp.extend_from_slice(&((8 + inner.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(inner);
    udp
}

/// The GUE packet over IPv6 the LB must send for `inner` to an IPv6
/// backend: the outer header of [`ip6_tunnel`] with next header 17, then
/// the UDP header of [`gue`] (checksum 0, RFC 6935) from the flow's source
/// port.
pub fn gue6(
    addrs: (Ipv6Addr, Ipv6Addr),
    dst_port: u16,
    tclass: u8,
    flow_hash: u32,
    inner: &[u8],
) -> Vec<u8> {
    let udp = gue_udp(lb_common::gue_source_port(flow_hash), dst_port, inner);
    ip6_tunnel(addrs, 17, tclass, flow_hash, &udp)
}

/// The IPv6-in-IPv4 packet (protocol 41) the LB must send for the IPv6
/// packet `inner` to an IPv4 backend: as [`ipip`], the TOS from the inner
/// traffic class.
pub fn sit(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let tclass = (inner[0] << 4) | (inner[1] >> 4);
    Ipv4 {
        src: outer_src,
        dst: outer_dst,
        tos: tclass,
        ttl: 64,
        frags: 0x4000,
        options: Vec::new(),
        l4: L4::Raw(41, inner.to_vec()),
        payload: Vec::new(),
    }
    .bytes_with_id(0)
}

/// An ICMPv6 message from `from` to `to`: type, code, the 4 type-specific
/// bytes `rest`, then `data`, its checksum over the pseudo-header.
pub fn icmp6_packet(
    (from, to): (Ipv6Addr, Ipv6Addr),
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    data: &[u8],
) -> Ipv6 {
    let mut m = vec![icmp_type, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(data);
    let mut ip = Ipv6::new(from, to, L4::Raw(58, Vec::new()));
    let c = ip.upper_checksum(58, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ip.l4 = L4::Raw(58, m);
    ip.payload = Vec::new();
    ip
}

/// The ICMPv6 "packet too big" frame the balancer must send back for the
/// IPv6 client frame `input` when the egress MTU is `egress_mtu` and the
/// tunnel adds `overhead`: MACs swapped, tag kept, from the VIP to the
/// client, traffic class and flow label 0, hop limit 64, MTU
/// `egress_mtu - overhead` (at least 1280), quoting the packet's first
/// min(length, 128) bytes rounded down to a multiple of 4.
pub fn packet_too_big_reply(input: &[u8], egress_mtu: u32, overhead: u32) -> Vec<u8> {
    let ethertype = u16::from_be_bytes([input[12], input[13]]);
    let (vlan, l3) = if ethertype == ETHERTYPE_VLAN {
        (Some(u16::from_be_bytes([input[14], input[15]])), 18)
    } else {
        (None, 14)
    };
    let ip = &input[l3..];
    let pkt_len = 40 + u16::from_be_bytes([ip[4], ip[5]]) as usize;
    let quote = &ip[..pkt_len.min(128) & !3];
    let (client, vip) = (ipv6_at(ip, 8), ipv6_at(ip, 24));
    let mtu = (egress_mtu - overhead).max(1280).to_be_bytes();
    let mut reply = icmp6_packet((vip, client), 2, 0, mtu, quote);
    reply.tclass = 0;
    reply.flow_label = 0;
    reply.hop_limit = 64;
    let src_mac: [u8; 6] = input[0..6].try_into().expect("6 bytes");
    let dst_mac: [u8; 6] = input[6..12].try_into().expect("6 bytes");
    ethernet(dst_mac, src_mac, vlan, ETHERTYPE_IPV6, &reply.bytes())
}
