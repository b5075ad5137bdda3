//! The packets of a trace: building one from a description, and reading
//! the headers of a frame (the input, and what the balancer made of it)
//! with their lengths and checksums. Both families: IPv4 and IPv6, and
//! the four tunnels the balancer makes (IPv4 or IPv6 inside IPv4 or IPv6).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{ipv4_to_wire, ipv6_to_wire, port_to_wire, Flow6Key, FlowKey};
use serde::{Deserialize, Serialize};

use crate::{dataplane::Protocol, maps::AnyFlowKey};

const ETH_HEADER: usize = 14;
const VLAN_TAG: usize = 4;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
/// Largest IP packet (IPv4 total length, or IPv6 header plus payload) a
/// described trace may ask for: a standard MTU.
pub const MAX_IP_LENGTH: usize = 1500;
/// Largest frame a trace accepts (the balancer sees what the NIC delivers;
/// native XDP on veth refuses MTUs much above this).
pub const MAX_FRAME: usize = 3520;

/// A TCP flag, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpFlag {
    Fin,
    Syn,
    Rst,
    Psh,
    Ack,
    Urg,
    Ece,
    Cwr,
}

impl TcpFlag {
    pub const ALL: [TcpFlag; 8] = [
        TcpFlag::Fin,
        TcpFlag::Syn,
        TcpFlag::Rst,
        TcpFlag::Psh,
        TcpFlag::Ack,
        TcpFlag::Urg,
        TcpFlag::Ece,
        TcpFlag::Cwr,
    ];

    /// The flag's bit in the TCP header's flags byte.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub fn name(self) -> &'static str {
        match self {
            TcpFlag::Fin => "fin",
            TcpFlag::Syn => "syn",
            TcpFlag::Rst => "rst",
            TcpFlag::Psh => "psh",
            TcpFlag::Ack => "ack",
            TcpFlag::Urg => "urg",
            TcpFlag::Ece => "ece",
            TcpFlag::Cwr => "cwr",
        }
    }

    /// The flags set in a header's flags byte, lowest bit first.
    pub fn from_bits(bits: u8) -> Vec<TcpFlag> {
        Self::ALL
            .into_iter()
            .filter(|f| bits & f.bit() != 0)
            .collect()
    }
}

/// A packet described by its tuple: what `lbctl trace` sends without
/// `--pcap`. Both addresses are of one family (see
/// [`PacketSpec::check_families`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketSpec {
    pub source: IpAddr,
    pub source_port: u16,
    pub destination: IpAddr,
    pub destination_port: u16,
    pub protocol: Protocol,
    /// TCP only; absent: a SYN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<Vec<TcpFlag>>,
    /// Bytes of payload (zeros) after the TCP or UDP header.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub payload_len: u16,
}

impl PacketSpec {
    /// Refuses a source and destination of different families: no packet
    /// carries both, so no such flow exists (a VIP's clients are of its
    /// family; the other family reaches it only inside a tunnel). The
    /// message names the fields as the protocol does (`destination: ...`).
    pub fn check_families(&self) -> Result<(), String> {
        if self.source.is_ipv4() == self.destination.is_ipv4() {
            return Ok(());
        }
        let family = |a: IpAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
        Err(format!(
            "destination: {} is {} but the source {} is {}: a packet's addresses are of one family",
            self.destination,
            family(self.destination),
            self.source,
            family(self.source)
        ))
    }

    /// The frame: Ethernet from `src_mac` to `dst_mac`; IPv4 (TTL 64, DF,
    /// id 0) or IPv6 (hop limit 64, traffic class and flow label 0, no
    /// extension headers) by the addresses' family; TCP (sequence 1,
    /// window 65535) or UDP; checksums filled in. Refuses mixed families,
    /// flags on UDP and packets longer than [`MAX_IP_LENGTH`].
    pub fn frame(&self, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Result<Vec<u8>, String> {
        self.check_families()?;
        let (ip_header, family) = match self.source {
            IpAddr::V4(_) => (IPV4_HEADER, "IPv4"),
            IpAddr::V6(_) => (IPV6_HEADER, "IPv6"),
        };
        let l4_header = match self.protocol {
            Protocol::Tcp => 20,
            Protocol::Udp => 8,
        };
        let ip_length = ip_header + l4_header + self.payload_len as usize;
        if ip_length > MAX_IP_LENGTH {
            return Err(format!(
                "payload_len {}: the {family} packet would be {ip_length} bytes, more than {MAX_IP_LENGTH}",
                self.payload_len
            ));
        }
        let l4_length = ip_length - ip_header;
        let mut l4 = Vec::with_capacity(l4_length);
        l4.extend_from_slice(&self.source_port.to_be_bytes());
        l4.extend_from_slice(&self.destination_port.to_be_bytes());
        match self.protocol {
            Protocol::Tcp => {
                let flags = self
                    .tcp_flags
                    .as_deref()
                    .unwrap_or(&[TcpFlag::Syn])
                    .iter()
                    .fold(0u8, |bits, f| bits | f.bit());
                let ack = if flags & TcpFlag::Ack.bit() != 0 {
                    1u32
                } else {
                    0
                };
                l4.extend_from_slice(&1u32.to_be_bytes());
                l4.extend_from_slice(&ack.to_be_bytes());
                l4.extend_from_slice(&[5 << 4, flags]);
                l4.extend_from_slice(&65535u16.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            }
            Protocol::Udp => {
                if self.tcp_flags.is_some() {
                    return Err("tcp_flags: only for TCP".into());
                }
                l4.extend_from_slice(&(8 + self.payload_len).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
        }
        l4.resize(l4_length, 0);
        let proto = self.protocol.number();
        let sum = l4_checksum(self.source, self.destination, proto, &l4);
        let at = match self.protocol {
            Protocol::Tcp => 16,
            Protocol::Udp => 6,
        };
        // UDP sends a computed zero as all ones (zero means "no checksum",
        // which IPv6 does not even allow).
        let sum = if sum == 0 && self.protocol == Protocol::Udp {
            0xffff
        } else {
            sum
        };
        l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());

        let mut frame = Vec::with_capacity(ETH_HEADER + ip_length);
        frame.extend_from_slice(&dst_mac);
        frame.extend_from_slice(&src_mac);
        match (self.source, self.destination) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                let mut ip = [0u8; IPV4_HEADER];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&(ip_length as u16).to_be_bytes());
                ip[6] = 0x40; // DF
                ip[8] = 64;
                ip[9] = proto;
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                let sum = internet_checksum(&ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                frame.extend_from_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                let mut ip = [0u8; IPV6_HEADER];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&(l4_length as u16).to_be_bytes());
                ip[6] = proto;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&dst.octets());
                frame.extend_from_slice(&ip);
            }
            // check_families above.
            _ => return Err("source and destination are of different families".into()),
        }
        frame.extend_from_slice(&l4);
        Ok(frame)
    }
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// RFC 1071: the ones' complement of the ones' complement sum.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum16(0, data))
}

fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The TCP/UDP checksum of `segment` (its checksum field as it is) under
/// the pseudo-header of the IP header that carries it: RFC 793's for
/// IPv4, RFC 8200's for IPv6 (the same sum: the 32-bit upper-layer length
/// adds up as its two 16-bit halves, and a frame's length fits in one).
fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let mut acc = sum16(0, &octets(src));
    acc = sum16(acc, &octets(dst));
    acc += u32::from(proto);
    acc += segment.len() as u32;
    !fold(sum16(acc, segment))
}

/// A frame's headers as far as they can be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    /// Bytes in the frame.
    pub length: usize,
    pub ethernet: Option<Ethernet>,
    /// The outer IPv4 header of a tunnelled packet (what the balancer adds
    /// for an IPv4 backend: protocol 4 or 41).
    pub outer_ipv4: Option<Ipv4Header>,
    /// The outer IPv6 header of a tunnelled packet (what the balancer adds
    /// for an IPv6 backend: next header 41 or 4, or 17 for GUE).
    #[serde(default)]
    pub outer_ipv6: Option<Ipv6Header>,
    /// GUE's UDP header, after the outer IP header of a GUE packet (to one
    /// of the GUE ports the frame was read with, see [`parse_with_gue`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outer_udp: Option<UdpHeader>,
    /// The only IPv4 header, or the inner one of a tunnelled packet.
    pub ipv4: Option<Ipv4Header>,
    /// The only IPv6 header, or the inner one of a tunnelled packet.
    #[serde(default)]
    pub ipv6: Option<Ipv6Header>,
    pub tcp: Option<TcpHeader>,
    pub udp: Option<UdpHeader>,
    /// Why reading stopped early (`truncated IPv4 header`, `not IP`...).
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ethernet {
    pub destination: String,
    pub source: String,
    /// The 802.1Q VLAN id, when tagged.
    pub vlan: Option<u16>,
    pub ethertype: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Header {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub protocol: u8,
    /// Header length in bytes (IHL × 4).
    pub header_length: u8,
    pub total_length: u16,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    pub dont_fragment: bool,
    /// Whether it is a fragment (more fragments, or a non-zero offset).
    pub fragment: bool,
    pub checksum: u16,
    pub checksum_ok: bool,
}

/// An IPv6 header and the extension headers after it. IPv6 has no header
/// checksum: what carries one is the TCP or UDP header, under the IPv6
/// pseudo-header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Header {
    pub source: Ipv6Addr,
    pub destination: Ipv6Addr,
    /// The fixed header's next header field.
    pub next_header: u8,
    /// The protocol after the extension headers (6 TCP, 17 UDP, 41 or 4
    /// for a tunnel; for a fragment, the fragment header's next header).
    pub protocol: u8,
    /// The extension headers read past, in order (0 hop-by-hop, 43
    /// routing, 60 destination options, 44 fragment).
    pub extension_headers: Vec<u8>,
    pub payload_length: u16,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
    /// Whether it carries a fragment header.
    pub fragment: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpHeader {
    pub source_port: u16,
    pub destination_port: u16,
    pub flags: Vec<TcpFlag>,
    pub header_length: u8,
    pub checksum: u16,
    /// Over the segment the IP header's length delimits, under the
    /// pseudo-header of the IPv4 or IPv6 header that carries it.
    pub checksum_ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpHeader {
    pub source_port: u16,
    pub destination_port: u16,
    pub length: u16,
    pub checksum: u16,
    /// Over IPv4 a zero checksum (none sent) counts as correct; over IPv6
    /// it does not (RFC 8200 makes the checksum mandatory there), but for
    /// GUE's outer UDP header, which tunnels may send without one (RFC
    /// 6935, RFC 6936).
    pub checksum_ok: bool,
}

fn mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]))
}

fn addr(data: &[u8], at: usize) -> Option<Ipv4Addr> {
    let b: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

fn addr6(data: &[u8], at: usize) -> Option<Ipv6Addr> {
    let b: [u8; 16] = data.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

/// An IP header of either family, with what the transport layer needs
/// from it.
enum Ip {
    V4(Ipv4Header),
    V6(Ipv6Header),
}

impl Ip {
    /// The protocol of what follows the IP header(s).
    fn protocol(&self) -> u8 {
        match self {
            Ip::V4(h) => h.protocol,
            Ip::V6(h) => h.protocol,
        }
    }

    fn fragment(&self) -> bool {
        match self {
            Ip::V4(h) => h.fragment,
            Ip::V6(h) => h.fragment,
        }
    }

    fn addresses(&self) -> (IpAddr, IpAddr) {
        match self {
            Ip::V4(h) => (h.source.into(), h.destination.into()),
            Ip::V6(h) => (h.source.into(), h.destination.into()),
        }
    }
}

/// Refuses `data` as an IP header of `version` when it is shorter than
/// `length` or of another version.
fn check_header(data: &[u8], version: u8, length: usize) -> Result<(), String> {
    if data.len() < length {
        return Err(format!("truncated IPv{version} header"));
    }
    if data[0] >> 4 != version {
        return Err(format!(
            "IP version {} where IPv{version} was expected",
            data[0] >> 4
        ));
    }
    Ok(())
}

/// Reads one IPv4 header at the start of `data`; returns it and what it
/// carries (at most `total_length` bytes from its start, header excluded).
fn ipv4(data: &[u8]) -> Result<(Ip, &[u8]), String> {
    check_header(data, 4, IPV4_HEADER)?;
    let header_length = (data[0] & 0x0f) * 4;
    let hl = header_length as usize;
    if hl < IPV4_HEADER || data.len() < hl {
        return Err(format!("IPv4 header length {header_length} does not fit"));
    }
    let total_length = be16(data, 2).unwrap_or(0);
    let flags_offset = be16(data, 6).unwrap_or(0);
    let header = Ipv4Header {
        source: addr(data, 12).unwrap_or(Ipv4Addr::UNSPECIFIED),
        destination: addr(data, 16).unwrap_or(Ipv4Addr::UNSPECIFIED),
        protocol: data[9],
        header_length,
        total_length,
        ttl: data[8],
        tos: data[1],
        id: be16(data, 4).unwrap_or(0),
        dont_fragment: flags_offset & 0x4000 != 0,
        fragment: flags_offset & 0x3fff != 0,
        checksum: be16(data, 10).unwrap_or(0),
        checksum_ok: internet_checksum(&data[..hl]) == 0,
    };
    let end = (total_length as usize).clamp(hl, data.len());
    Ok((Ip::V4(header), &data[hl..end]))
}

/// Reads one IPv6 header at the start of `data` and the extension headers
/// after it; returns them and what follows them (within `payload_length`).
fn ipv6(data: &[u8]) -> Result<(Ip, &[u8]), String> {
    check_header(data, 6, IPV6_HEADER)?;
    let word = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let payload_length = be16(data, 4).unwrap_or(0);
    let next_header = data[6];
    // A payload length of 0 (a jumbogram, which the balancer treats as
    // malformed) leaves nothing after the header to read.
    let end = (IPV6_HEADER + payload_length as usize).min(data.len());
    let mut header = Ipv6Header {
        source: addr6(data, 8).unwrap_or(Ipv6Addr::UNSPECIFIED),
        destination: addr6(data, 24).unwrap_or(Ipv6Addr::UNSPECIFIED),
        next_header,
        protocol: next_header,
        extension_headers: Vec::new(),
        payload_length,
        hop_limit: data[7],
        traffic_class: ((word >> 20) & 0xff) as u8,
        flow_label: word & 0x000f_ffff,
        fragment: false,
    };
    let mut at = IPV6_HEADER;
    // Every extension header is at least 8 bytes long, so the chain ends
    // within the packet: no limit on its length is needed to stop.
    loop {
        match header.protocol {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let (Some(&next), Some(&len)) = (data[..end].get(at), data[..end].get(at + 1))
                else {
                    return Err("truncated IPv6 extension header".into());
                };
                let len = (len as usize + 1) * 8;
                if at + len > end {
                    return Err("truncated IPv6 extension header".into());
                }
                header.extension_headers.push(header.protocol);
                header.protocol = next;
                at += len;
            }
            IPPROTO_FRAGMENT => {
                let Some(&next) = data[..end].get(at).filter(|_| at + 8 <= end) else {
                    return Err("truncated IPv6 fragment header".into());
                };
                header.extension_headers.push(IPPROTO_FRAGMENT);
                header.protocol = next;
                header.fragment = true;
                at += 8;
                break;
            }
            _ => break,
        }
    }
    Ok((Ip::V6(header), &data[at..end]))
}

/// Reads Ethernet (one optional 802.1Q tag), the IP header (IPv4 or IPv6;
/// of a tunnelled packet, the outer and the inner one) and TCP or UDP.
/// Never fails: what cannot be read is absent, and `note` says why.
pub fn parse(frame: &[u8]) -> Headers {
    parse_with_gue(frame, &[])
}

/// [`parse`], with UDP to one of `gue_ports` read as GUE (variant 1: an IP
/// packet right after the UDP header) when an IP version follows: what
/// the balancer sends for a GUE VIP.
pub fn parse_with_gue(frame: &[u8], gue_ports: &[u16]) -> Headers {
    let mut h = Headers {
        length: frame.len(),
        ethernet: None,
        outer_ipv4: None,
        outer_ipv6: None,
        outer_udp: None,
        ipv4: None,
        ipv6: None,
        tcp: None,
        udp: None,
        note: None,
    };
    if let Err(note) = parse_into(frame, gue_ports, &mut h) {
        h.note = Some(note);
    }
    h
}

/// The UDP header at the start of `segment` from `src` to `dst` (`gue`:
/// a tunnel's outer one, for which a zero checksum means none sent).
fn udp_header(src: IpAddr, dst: IpAddr, segment: &[u8], gue: bool) -> UdpHeader {
    let checksum = be16(segment, 6).unwrap_or(0);
    let none_sent = checksum == 0 && (src.is_ipv4() || gue);
    UdpHeader {
        source_port: be16(segment, 0).unwrap_or(0),
        destination_port: be16(segment, 2).unwrap_or(0),
        length: be16(segment, 4).unwrap_or(0),
        checksum,
        checksum_ok: none_sent || l4_checksum(src, dst, IPPROTO_UDP, segment) == 0,
    }
}

/// Records an IP header as the only (or inner) one.
fn set_ip(h: &mut Headers, ip: Ip) {
    match ip {
        Ip::V4(ip) => h.ipv4 = Some(ip),
        Ip::V6(ip) => h.ipv6 = Some(ip),
    }
}

fn parse_into(frame: &[u8], gue_ports: &[u16], h: &mut Headers) -> Result<(), String> {
    if frame.len() < ETH_HEADER {
        return Err("shorter than an Ethernet header".into());
    }
    let mut ethertype = be16(frame, 12).unwrap_or(0);
    let mut l3 = ETH_HEADER;
    let mut vlan = None;
    if ethertype == ETHERTYPE_VLAN {
        let tci = be16(frame, 14).ok_or("truncated 802.1Q tag")?;
        ethertype = be16(frame, 16).ok_or("truncated 802.1Q tag")?;
        vlan = Some(tci & 0x0fff);
        l3 += VLAN_TAG;
    }
    h.ethernet = Some(Ethernet {
        destination: mac(&frame[0..6]),
        source: mac(&frame[6..12]),
        vlan,
        ethertype,
    });
    let (mut ip, mut payload) = match ethertype {
        ETHERTYPE_IPV4 => ipv4(&frame[l3..])?,
        ETHERTYPE_IPV6 => ipv6(&frame[l3..])?,
        _ => return Err(format!("not IP (ethertype {ethertype:#06x})")),
    };
    // A tunnel of either family carrying either family: the first header
    // is the outer one. (A fragment's payload is no whole inner packet.)
    let gue = ip.protocol() == IPPROTO_UDP
        && !ip.fragment()
        && payload.len() > 8
        && be16(payload, 2).is_some_and(|port| gue_ports.contains(&port))
        && matches!(payload[8] >> 4, 4 | 6);
    if gue {
        let (src, dst) = ip.addresses();
        h.outer_udp = Some(udp_header(src, dst, payload, true));
    }
    let inner = match (ip.protocol(), ip.fragment()) {
        _ if gue && payload[8] >> 4 == 4 => Some(ipv4(&payload[8..])?),
        _ if gue => Some(ipv6(&payload[8..])?),
        (IPPROTO_IPIP, false) => Some(ipv4(payload)?),
        (IPPROTO_IPV6, false) => Some(ipv6(payload)?),
        _ => None,
    };
    if let Some((inner, inner_payload)) = inner {
        match ip {
            Ip::V4(outer) => h.outer_ipv4 = Some(outer),
            Ip::V6(outer) => h.outer_ipv6 = Some(outer),
        }
        (ip, payload) = (inner, inner_payload);
    }
    let segment = payload;
    let (protocol, fragment) = (ip.protocol(), ip.fragment());
    let (src, dst) = ip.addresses();
    let family = if src.is_ipv4() { "IPv4" } else { "IPv6" };
    set_ip(h, ip);
    if fragment {
        return Err(format!("an {family} fragment"));
    }
    match protocol {
        IPPROTO_TCP => {
            if segment.len() < 20 {
                return Err("truncated TCP header".into());
            }
            h.tcp = Some(TcpHeader {
                source_port: be16(segment, 0).unwrap_or(0),
                destination_port: be16(segment, 2).unwrap_or(0),
                flags: TcpFlag::from_bits(segment[13]),
                header_length: (segment[12] >> 4) * 4,
                checksum: be16(segment, 16).unwrap_or(0),
                checksum_ok: l4_checksum(src, dst, IPPROTO_TCP, segment) == 0,
            });
        }
        IPPROTO_UDP => {
            if segment.len() < 8 {
                return Err("truncated UDP header".into());
            }
            h.udp = Some(udp_header(src, dst, segment, false));
        }
        other => return Err(format!("{family} protocol {other}: neither TCP nor UDP")),
    }
    Ok(())
}

/// A TCP or UDP packet's 5-tuple, host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub source: IpAddr,
    pub source_port: u16,
    pub destination: IpAddr,
    pub destination_port: u16,
    pub protocol: Protocol,
}

impl Headers {
    /// The packet's tuple as the balancer reads it: a whole TCP or UDP
    /// packet that is not itself tunnelled (the balancer looks no VIP up
    /// for what it finds inside a tunnel).
    pub fn tuple(&self) -> Option<Tuple> {
        if self.outer_ipv4.is_some() || self.outer_ipv6.is_some() {
            return None;
        }
        let (source, destination) = match (&self.ipv4, &self.ipv6) {
            (Some(ip), _) if !ip.fragment => (ip.source.into(), ip.destination.into()),
            (None, Some(ip)) if !ip.fragment => (ip.source.into(), ip.destination.into()),
            _ => return None,
        };
        let (source_port, destination_port, protocol) = match (&self.tcp, &self.udp) {
            (Some(t), _) => (t.source_port, t.destination_port, Protocol::Tcp),
            (_, Some(u)) => (u.source_port, u.destination_port, Protocol::Udp),
            _ => return None,
        };
        Some(Tuple {
            source,
            source_port,
            destination,
            destination_port,
            protocol,
        })
    }

    /// The connection-table key of the packet as the balancer reads it
    /// (`FLOWS` for IPv4, `FLOWS6` for IPv6).
    pub fn flow_key(&self) -> Option<AnyFlowKey> {
        let t = self.tuple()?;
        let proto = t.protocol.number();
        match (t.source, t.destination) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Some(AnyFlowKey::V4(flow_key(
                src,
                t.source_port,
                dst,
                t.destination_port,
                proto,
            ))),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Some(AnyFlowKey::V6(flow6_key(
                src,
                t.source_port,
                dst,
                t.destination_port,
                proto,
            ))),
            _ => None,
        }
    }
}

/// A connection-table key from host-order values.
pub fn flow_key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src_addr: ipv4_to_wire(src.octets()),
        dst_addr: ipv4_to_wire(dst.octets()),
        src_port: port_to_wire(sport),
        dst_port: port_to_wire(dport),
        proto,
        _pad: 0,
        _pad2: 0,
    }
}

/// An IPv6 connection-table key from host-order values.
pub fn flow6_key(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, proto: u8) -> Flow6Key {
    Flow6Key {
        src_addr: ipv6_to_wire(src.octets()),
        dst_addr: ipv6_to_wire(dst.octets()),
        src_port: port_to_wire(sport),
        dst_port: port_to_wire(dport),
        proto,
        _pad: 0,
        _pad2: 0,
    }
}

/// Lower-case hex, two digits a byte: how frames travel in the protocol.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string (whitespace allowed between bytes).
pub fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".into());
    }
    digits
        .chunks_exact(2)
        .map(|pair| {
            // from_str_radix alone would take a sign ("+1").
            std::str::from_utf8(pair)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| format!("{:?} is not a hex byte", String::from_utf8_lossy(pair)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    fn spec(protocol: Protocol) -> PacketSpec {
        PacketSpec {
            source: Ipv4Addr::new(198, 18, 10, 2).into(),
            source_port: 40000,
            destination: Ipv4Addr::new(198, 18, 0, 10).into(),
            destination_port: 80,
            protocol,
            tcp_flags: None,
            payload_len: 0,
        }
    }

    #[test]
    fn a_described_syn_is_exact() {
        let frame = spec(Protocol::Tcp).frame(SRC_MAC, DST_MAC).expect("builds");
        let expected = "020000000002020000000001080045000028000040004006\
                        0000c6120a02c612000a9c400050000000010000000050\
                        02ffff00000000";
        // Checksums computed by hand from the fields (RFC 1071), then
        // placed: IPv4 at bytes 24-25, TCP at 50-51.
        let mut want = from_hex(expected).expect("hex");
        let ip_sum = internet_checksum(&want[14..34]);
        want[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        let tcp_sum = l4_checksum(
            Ipv4Addr::new(198, 18, 10, 2).into(),
            Ipv4Addr::new(198, 18, 0, 10).into(),
            6,
            &want[34..],
        );
        want[50..52].copy_from_slice(&tcp_sum.to_be_bytes());
        assert_eq!(to_hex(&frame), to_hex(&want));
        assert_eq!(frame.len(), 54);
        let h = parse(&frame);
        let ip = h.ipv4.as_ref().expect("IPv4");
        assert!(ip.checksum_ok && ip.dont_fragment && !ip.fragment);
        assert_eq!((ip.total_length, ip.ttl, ip.protocol), (40, 64, 6));
        let tcp = h.tcp.as_ref().expect("TCP");
        assert_eq!(tcp.flags, vec![TcpFlag::Syn]);
        assert!(tcp.checksum_ok);
        assert_eq!((tcp.source_port, tcp.destination_port), (40000, 80));
        assert_eq!(h.note, None);
        assert_eq!(
            h.flow_key(),
            Some(AnyFlowKey::V4(flow_key(
                Ipv4Addr::new(198, 18, 10, 2),
                40000,
                Ipv4Addr::new(198, 18, 0, 10),
                80,
                6
            )))
        );
    }

    #[test]
    fn flags_payload_and_udp() {
        let mut s = spec(Protocol::Tcp);
        s.tcp_flags = Some(vec![TcpFlag::Ack, TcpFlag::Psh]);
        s.payload_len = 100;
        let h = parse(&s.frame(SRC_MAC, DST_MAC).expect("builds"));
        let tcp = h.tcp.expect("TCP");
        assert_eq!(tcp.flags, vec![TcpFlag::Psh, TcpFlag::Ack]);
        assert!(tcp.checksum_ok);
        assert_eq!(h.ipv4.expect("IPv4").total_length, 140);
        assert_eq!(h.length, 154);

        let mut u = spec(Protocol::Udp);
        u.payload_len = 3;
        let h = parse(&u.frame(SRC_MAC, DST_MAC).expect("builds"));
        let udp = h.udp.expect("UDP");
        assert_eq!(udp.length, 11);
        assert!(udp.checksum_ok && udp.checksum != 0);
        u.tcp_flags = Some(vec![TcpFlag::Syn]);
        assert!(u.frame(SRC_MAC, DST_MAC).is_err());
        let mut big = spec(Protocol::Tcp);
        big.payload_len = 1461;
        assert!(big.frame(SRC_MAC, DST_MAC).is_err());
        big.payload_len = 1460;
        assert_eq!(big.frame(SRC_MAC, DST_MAC).expect("fits").len(), 1514);
    }

    #[test]
    fn ip_in_ip_output_is_read_as_outer_and_inner() {
        let inner = spec(Protocol::Tcp).frame(SRC_MAC, DST_MAC).expect("builds");
        // What the balancer makes: a new Ethernet header, an outer IPv4
        // header (protocol 4) and the original packet.
        let mut outer = [0u8; 20];
        outer[0] = 0x45;
        outer[2..4].copy_from_slice(&((20 + inner.len() - 14) as u16).to_be_bytes());
        outer[6] = 0x40;
        outer[8] = 64;
        outer[9] = 4;
        outer[12..16].copy_from_slice(&[198, 18, 1, 1]);
        outer[16..20].copy_from_slice(&[198, 19, 1, 2]);
        let sum = internet_checksum(&outer);
        outer[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut frame = inner[..14].to_vec();
        frame.extend_from_slice(&outer);
        frame.extend_from_slice(&inner[14..]);
        let h = parse(&frame);
        let o = h.outer_ipv4.as_ref().expect("outer");
        assert_eq!(o.destination, Ipv4Addr::new(198, 19, 1, 2));
        assert!(o.checksum_ok);
        assert_eq!(o.total_length, 60);
        assert_eq!(
            h.ipv4.as_ref().expect("inner").destination,
            Ipv4Addr::new(198, 18, 0, 10)
        );
        assert!(h.tcp.as_ref().expect("TCP").checksum_ok);
        assert_eq!(h.flow_key(), None, "the balancer passes IP-in-IP");
        // A damaged outer checksum is reported, not hidden.
        frame[24] ^= 0xff;
        assert!(!parse(&frame).outer_ipv4.expect("outer").checksum_ok);
    }

    #[test]
    fn what_cannot_be_read_is_noted() {
        assert_eq!(
            parse(&[0; 10]).note.as_deref(),
            Some("shorter than an Ethernet header")
        );
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let h = parse(&arp);
        assert!(h.ethernet.is_some() && h.ipv4.is_none());
        assert_eq!(h.note.as_deref(), Some("not IP (ethertype 0x0806)"));
        let frame = spec(Protocol::Tcp).frame(SRC_MAC, DST_MAC).expect("builds");
        let h = parse(&frame[..40]);
        assert_eq!(h.note.as_deref(), Some("truncated TCP header"));
        assert_eq!(
            parse(&frame[..20]).note.as_deref(),
            Some("truncated IPv4 header")
        );
        // A VLAN tag is read and skipped.
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        tagged.extend_from_slice(&frame[12..]);
        let h = parse(&tagged);
        assert_eq!(h.ethernet.expect("eth").vlan, Some(100));
        assert!(h.tcp.expect("TCP").checksum_ok);
    }

    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 7);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

    fn spec6(protocol: Protocol) -> PacketSpec {
        PacketSpec {
            source: CLIENT6.into(),
            destination: VIP6.into(),
            ..spec(protocol)
        }
    }

    /// The TCP/UDP checksum over `segment` under RFC 8200's pseudo-header,
    /// written out byte by byte (not the sum `l4_checksum` takes apart).
    fn checksum6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, segment: &[u8]) -> u16 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
        pseudo.extend_from_slice(segment);
        internet_checksum(&pseudo)
    }

    /// An outer IPv6 header as the balancer writes it (hop limit 64, flow
    /// label 0x12345) around `inner` (an IP packet), next header `proto`.
    fn outer6(proto: u8, inner: &[u8]) -> Vec<u8> {
        let mut o = vec![0x60, 0x01, 0x23, 0x45];
        o.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        o.extend_from_slice(&[proto, 64]);
        o.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 2).octets());
        o.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 2).octets());
        o.extend_from_slice(inner);
        o
    }

    /// An outer IPv4 header (LB 198.18.1.1 to backend 198.19.1.2, DF, TTL
    /// 64) around `inner`, protocol `proto`, its checksum filled in.
    fn outer4(proto: u8, inner: &[u8]) -> Vec<u8> {
        let mut o = [0u8; 20];
        o[0] = 0x45;
        o[2..4].copy_from_slice(&((20 + inner.len()) as u16).to_be_bytes());
        o[6] = 0x40;
        o[8] = 64;
        o[9] = proto;
        o[12..16].copy_from_slice(&[198, 18, 1, 1]);
        o[16..20].copy_from_slice(&[198, 19, 1, 2]);
        let sum = internet_checksum(&o);
        o[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut out = o.to_vec();
        out.extend_from_slice(inner);
        out
    }

    /// An Ethernet header of `ethertype` in front of `packet`.
    fn ethernet(ethertype: u16, packet: &[u8]) -> Vec<u8> {
        let mut f = DST_MAC.to_vec();
        f.extend_from_slice(&SRC_MAC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(packet);
        f
    }

    #[test]
    fn a_described_ipv6_syn_is_exact() {
        let frame = spec6(Protocol::Tcp)
            .frame(SRC_MAC, DST_MAC)
            .expect("builds");
        let mut want = from_hex(
            "020000000002 020000000001 86dd
             60000000 0014 06 40
             20010db800ff00000000000000000007
             20010db8000000000000000000000010
             9c40 0050 00000001 00000000 5002 ffff 0000 0000",
        )
        .expect("hex");
        let sum = checksum6(CLIENT6, VIP6, 6, &want[54..]);
        want[70..72].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(to_hex(&frame), to_hex(&want));
        assert_eq!(frame.len(), 74);
        let h = parse(&frame);
        assert_eq!(h.note, None);
        assert_eq!(h.ipv4, None);
        let ip = h.ipv6.as_ref().expect("IPv6");
        assert_eq!((ip.source, ip.destination), (CLIENT6, VIP6));
        assert_eq!(
            (ip.next_header, ip.protocol, ip.payload_length, ip.hop_limit),
            (6, 6, 20, 64)
        );
        assert!(ip.extension_headers.is_empty() && !ip.fragment);
        let tcp = h.tcp.as_ref().expect("TCP");
        assert_eq!(tcp.flags, vec![TcpFlag::Syn]);
        assert!(tcp.checksum_ok);
        assert_eq!(
            h.flow_key(),
            Some(AnyFlowKey::V6(flow6_key(CLIENT6, 40000, VIP6, 80, 6)))
        );
        let t = h.tuple().expect("a tuple");
        assert_eq!(
            (t.source, t.destination, t.protocol),
            (CLIENT6.into(), VIP6.into(), Protocol::Tcp)
        );
        // One flipped payload bit is a bad checksum.
        let mut damaged = frame.clone();
        damaged[60] ^= 1;
        assert!(!parse(&damaged).tcp.expect("TCP").checksum_ok);
    }

    #[test]
    fn ipv6_udp_lengths_and_families() {
        let mut u = spec6(Protocol::Udp);
        u.payload_len = 3;
        let frame = u.frame(SRC_MAC, DST_MAC).expect("builds");
        let h = parse(&frame);
        let udp = h.udp.as_ref().expect("UDP");
        assert_eq!(udp.length, 11);
        assert!(udp.checksum_ok && udp.checksum != 0);
        assert_eq!(
            udp.checksum,
            checksum6(CLIENT6, VIP6, 17, &{
                let mut seg = frame[54..].to_vec();
                seg[6..8].copy_from_slice(&[0, 0]);
                seg
            })
        );
        assert_eq!(h.ipv6.expect("IPv6").payload_length, 11);
        // No checksum (zero) is allowed over IPv4, not over IPv6.
        let mut zero = frame.clone();
        zero[60..62].copy_from_slice(&[0, 0]);
        assert!(!parse(&zero).udp.expect("UDP").checksum_ok);
        let mut zero4 = spec(Protocol::Udp).frame(SRC_MAC, DST_MAC).expect("builds");
        zero4[40..42].copy_from_slice(&[0, 0]);
        assert!(parse(&zero4).udp.expect("UDP").checksum_ok);

        // 1500 bytes of IPv6 packet at most: 40 + 20 + 1440.
        let mut big = spec6(Protocol::Tcp);
        big.payload_len = 1441;
        let e = big.frame(SRC_MAC, DST_MAC).unwrap_err();
        assert!(e.contains("IPv6 packet would be 1501 bytes"), "{e}");
        big.payload_len = 1440;
        assert_eq!(big.frame(SRC_MAC, DST_MAC).expect("fits").len(), 1514);

        // Mixed families: no such packet.
        let mut mixed = spec(Protocol::Tcp);
        mixed.destination = VIP6.into();
        let e = mixed.check_families().unwrap_err();
        assert_eq!(
            e,
            "destination: 2001:db8::10 is IPv6 but the source 198.18.10.2 is IPv4: \
             a packet's addresses are of one family"
        );
        assert_eq!(mixed.frame(SRC_MAC, DST_MAC), Err(e));
        assert!(spec6(Protocol::Tcp).check_families().is_ok());
    }

    #[test]
    fn the_four_tunnels_are_read_as_outer_and_inner() {
        let v6 = spec6(Protocol::Tcp)
            .frame(SRC_MAC, DST_MAC)
            .expect("builds");
        let v4 = spec(Protocol::Tcp).frame(SRC_MAC, DST_MAC).expect("builds");
        let (inner6, inner4) = (&v6[14..], &v4[14..]);

        // IP6IP6: an IPv6 VIP's packet to an IPv6 backend.
        let h = parse(&ethernet(0x86dd, &outer6(41, inner6)));
        let o = h.outer_ipv6.as_ref().expect("outer IPv6");
        assert_eq!(
            (o.next_header, o.payload_length, o.flow_label, o.hop_limit),
            (41, 60, 0x12345, 64)
        );
        assert_eq!(h.ipv6.as_ref().expect("inner").destination, VIP6);
        assert!(h.tcp.as_ref().expect("TCP").checksum_ok);
        assert_eq!((h.outer_ipv4.as_ref(), h.ipv4.as_ref()), (None, None));
        assert_eq!((h.tuple(), h.flow_key()), (None, None), "tunnels pass");

        // IPv4 in IPv6: an IPv4 VIP's packet to an IPv6 backend.
        let h = parse(&ethernet(0x86dd, &outer6(4, inner4)));
        assert_eq!(h.outer_ipv6.as_ref().expect("outer").next_header, 4);
        let ip = h.ipv4.as_ref().expect("inner IPv4");
        assert!(ip.checksum_ok);
        assert_eq!(ip.destination, Ipv4Addr::new(198, 18, 0, 10));
        assert!(h.tcp.as_ref().expect("TCP").checksum_ok);
        assert_eq!(h.flow_key(), None);

        // IPv6 in IPv4: an IPv6 VIP's packet to an IPv4 backend.
        let frame = ethernet(0x0800, &outer4(41, inner6));
        let h = parse(&frame);
        let o = h.outer_ipv4.as_ref().expect("outer IPv4");
        assert!(o.checksum_ok);
        assert_eq!((o.protocol, o.total_length), (41, 80));
        assert_eq!(h.ipv6.as_ref().expect("inner IPv6").source, CLIENT6);
        assert!(h.tcp.as_ref().expect("TCP").checksum_ok);
        assert_eq!(h.flow_key(), None);
        // The inner TCP checksum is checked under the inner IPv6 header.
        let mut damaged = frame.clone();
        damaged[14 + 20 + 8] ^= 0x80; // the inner source address
        assert!(!parse(&damaged).tcp.expect("TCP").checksum_ok);

        // IP-in-IP as before, for completeness of the four.
        let h = parse(&ethernet(0x0800, &outer4(4, inner4)));
        assert!(h.outer_ipv4.is_some() && h.ipv4.is_some() && h.ipv6.is_none());
        assert!(h.tcp.expect("TCP").checksum_ok);
    }

    #[test]
    fn gue_over_either_family_is_read_on_its_ports_only() {
        let v6 = spec6(Protocol::Tcp)
            .frame(SRC_MAC, DST_MAC)
            .expect("builds");
        let v4 = spec(Protocol::Tcp).frame(SRC_MAC, DST_MAC).expect("builds");
        // GUE's UDP header (checksum 0, none sent) around `inner`.
        let gue = |inner: &[u8]| {
            let mut u = vec![0xc3, 0x50, 0x17, 0xc0];
            u.extend_from_slice(&(8 + inner.len() as u16).to_be_bytes());
            u.extend_from_slice(&[0, 0]);
            u.extend_from_slice(inner);
            u
        };
        let over6 = ethernet(0x86dd, &outer6(17, &gue(&v4[14..])));
        let h = parse_with_gue(&over6, &[6080]);
        let u = h.outer_udp.as_ref().expect("GUE's UDP header");
        assert_eq!(
            (u.source_port, u.destination_port, u.length),
            (50000, 6080, 8 + 40)
        );
        assert!(
            u.checksum_ok,
            "a tunnel's zero checksum over IPv6 is none sent"
        );
        assert_eq!(h.outer_ipv6.as_ref().expect("outer").next_header, 17);
        assert!(h.ipv4.as_ref().expect("inner IPv4").checksum_ok);
        assert!(h.tcp.as_ref().expect("inner TCP").checksum_ok);
        assert_eq!((h.udp.as_ref(), h.tuple()), (None, None), "a tunnel");

        let over4 = ethernet(0x0800, &outer4(17, &gue(&v6[14..])));
        let h = parse_with_gue(&over4, &[6080]);
        assert!(h.outer_udp.is_some() && h.outer_ipv4.is_some());
        assert_eq!(h.ipv6.as_ref().expect("inner IPv6").destination, VIP6);
        assert!(h.tcp.as_ref().expect("inner TCP").checksum_ok);

        // Another port, or no GUE ports given: plain UDP, whose zero
        // checksum over IPv6 is wrong.
        for h in [parse_with_gue(&over6, &[6081]), parse(&over6)] {
            assert!(h.outer_udp.is_none() && h.outer_ipv6.is_none());
            let udp = h.udp.as_ref().expect("UDP");
            assert_eq!(udp.destination_port, 6080);
            assert!(!udp.checksum_ok);
        }
    }

    #[test]
    fn ipv6_extension_headers_fragments_and_damage() {
        let syn = spec6(Protocol::Tcp)
            .frame(SRC_MAC, DST_MAC)
            .expect("builds");
        // Hop-by-hop (8 bytes of padding options), then destination
        // options (16 bytes), then the same TCP segment.
        let segment = &syn[54..];
        let mut ip = syn[14..54].to_vec();
        ip[6] = 0;
        ip[4..6].copy_from_slice(&((8 + 16 + segment.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        ip.extend_from_slice(&[6, 1, 1, 12]);
        ip.extend_from_slice(&[0; 12]);
        ip.extend_from_slice(segment);
        let frame = ethernet(0x86dd, &ip);
        let h = parse(&frame);
        assert_eq!(h.note, None);
        let v6 = h.ipv6.as_ref().expect("IPv6");
        assert_eq!((v6.next_header, v6.protocol), (0, 6));
        assert_eq!(v6.extension_headers, vec![0, 60]);
        // The pseudo-header length is the TCP segment's, not the payload's.
        assert!(h.tcp.as_ref().expect("TCP").checksum_ok);
        assert!(h.flow_key().is_some());

        // Cut inside the destination options: noted, not misread.
        let h = parse(&frame[..14 + 40 + 8 + 10]);
        assert_eq!(h.note.as_deref(), Some("truncated IPv6 extension header"));
        assert!(h.ipv6.is_none() && h.tcp.is_none());

        // A fragment header: the IPv6 header is shown, no transport.
        let mut frag = syn[14..54].to_vec();
        frag[6] = 44;
        frag[4..6].copy_from_slice(&((8 + segment.len()) as u16).to_be_bytes());
        frag.extend_from_slice(&[6, 0, 0, 1, 0, 0, 0, 9]);
        frag.extend_from_slice(segment);
        let h = parse(&ethernet(0x86dd, &frag));
        assert_eq!(h.note.as_deref(), Some("an IPv6 fragment"));
        let v6 = h.ipv6.as_ref().expect("IPv6");
        assert!(v6.fragment);
        assert_eq!((v6.protocol, v6.extension_headers.clone()), (6, vec![44]));
        assert_eq!((h.tcp.as_ref(), h.tuple()), (None, None));

        // Short, or another version under the IPv6 ethertype.
        assert_eq!(
            parse(&syn[..40]).note.as_deref(),
            Some("truncated IPv6 header")
        );
        let mut v4_inside = syn.clone();
        v4_inside[14] = 0x45;
        assert_eq!(
            parse(&v4_inside).note.as_deref(),
            Some("IP version 4 where IPv6 was expected")
        );
        // A payload length past the frame is cut at the frame's end.
        let mut long = syn.clone();
        long[18..20].copy_from_slice(&1000u16.to_be_bytes());
        let h = parse(&long);
        assert_eq!(h.ipv6.expect("IPv6").payload_length, 1000);
        assert!(h.tcp.is_some());
        // ICMPv6 is read as far as the IPv6 header.
        let mut icmp6 = syn.clone();
        icmp6[20] = 58;
        assert_eq!(
            parse(&icmp6).note.as_deref(),
            Some("IPv6 protocol 58: neither TCP nor UDP")
        );
    }

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        assert_eq!(to_hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(from_hex("00ab10").expect("hex"), vec![0, 0xab, 0x10]);
        assert_eq!(from_hex("00 AB\n10").expect("hex"), vec![0, 0xab, 0x10]);
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
        assert!(from_hex("+1").is_err());
    }
}
