//! The packets of a trace: building one from a description, and reading
//! the headers of a frame (the input, and what the balancer made of it)
//! with their lengths and checksums.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{ipv4_to_wire, ipv6_to_wire, port_to_wire, Flow6Key, FlowKey};
use serde::{Deserialize, Serialize};

use crate::dataplane::Protocol;

const ETH_HEADER: usize = 14;
const VLAN_TAG: usize = 4;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Largest IPv4 packet a described trace may ask for: a standard MTU.
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
/// `--pcap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketSpec {
    pub source: Ipv4Addr,
    pub source_port: u16,
    pub destination: Ipv4Addr,
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
    /// The frame: Ethernet from `src_mac` to `dst_mac`, IPv4 (TTL 64, DF,
    /// id 0), TCP (sequence 1, window 65535) or UDP, checksums filled in.
    /// Refuses flags on UDP and packets longer than [`MAX_IP_LENGTH`].
    pub fn frame(&self, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Result<Vec<u8>, String> {
        let l4_header = match self.protocol {
            Protocol::Tcp => 20,
            Protocol::Udp => 8,
        };
        let ip_length = 20 + l4_header + self.payload_len as usize;
        if ip_length > MAX_IP_LENGTH {
            return Err(format!(
                "payload_len {}: the IPv4 packet would be {ip_length} bytes, more than {MAX_IP_LENGTH}",
                self.payload_len
            ));
        }
        let mut l4 = Vec::with_capacity(ip_length - 20);
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
        l4.resize(ip_length - 20, 0);
        let proto = self.protocol.number();
        let sum = l4_checksum(self.source, self.destination, proto, &l4);
        let at = match self.protocol {
            Protocol::Tcp => 16,
            Protocol::Udp => 6,
        };
        // UDP sends a computed zero as all ones (zero means "no checksum").
        let sum = if sum == 0 && self.protocol == Protocol::Udp {
            0xffff
        } else {
            sum
        };
        l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());

        let mut frame = Vec::with_capacity(ETH_HEADER + ip_length);
        frame.extend_from_slice(&dst_mac);
        frame.extend_from_slice(&src_mac);
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_length as u16).to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&self.source.octets());
        ip[16..20].copy_from_slice(&self.destination.octets());
        let sum = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&ip);
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

/// The TCP/UDP checksum of `segment` (its checksum field as it is) under
/// the IPv4 pseudo-header.
fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut acc = sum16(0, &src.octets());
    acc = sum16(acc, &dst.octets());
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
    /// The outer header of an IP-in-IP packet (what the balancer adds).
    pub outer_ipv4: Option<Ipv4Header>,
    /// The only IPv4 header, or the inner one of an IP-in-IP packet.
    pub ipv4: Option<Ipv4Header>,
    pub tcp: Option<TcpHeader>,
    pub udp: Option<UdpHeader>,
    /// Why reading stopped early (`truncated IPv4 header`, `not IPv4`...).
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpHeader {
    pub source_port: u16,
    pub destination_port: u16,
    pub flags: Vec<TcpFlag>,
    pub header_length: u8,
    pub checksum: u16,
    /// Over the segment the IPv4 total length delimits, under the
    /// pseudo-header of the IPv4 header that carries it.
    pub checksum_ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpHeader {
    pub source_port: u16,
    pub destination_port: u16,
    pub length: u16,
    pub checksum: u16,
    /// A zero checksum (none sent) counts as correct.
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
    let b = data.get(at..at + 4)?;
    Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// Reads one IPv4 header at the start of `data`; returns it and the packet
/// it delimits (header and payload, at most `total_length` bytes).
fn ipv4(data: &[u8]) -> Result<(Ipv4Header, &[u8]), String> {
    if data.len() < 20 {
        return Err("truncated IPv4 header".into());
    }
    if data[0] >> 4 != 4 {
        return Err(format!(
            "IP version {} under the IPv4 ethertype",
            data[0] >> 4
        ));
    }
    let header_length = (data[0] & 0x0f) * 4;
    let hl = header_length as usize;
    if hl < 20 || data.len() < hl {
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
    Ok((header, &data[..end]))
}

/// Reads Ethernet (one optional 802.1Q tag), IPv4 (an IP-in-IP outer header
/// and the inner one) and TCP or UDP. Never fails: what cannot be read is
/// absent, and `note` says why.
pub fn parse(frame: &[u8]) -> Headers {
    let mut h = Headers {
        length: frame.len(),
        ethernet: None,
        outer_ipv4: None,
        ipv4: None,
        tcp: None,
        udp: None,
        note: None,
    };
    if let Err(note) = parse_into(frame, &mut h) {
        h.note = Some(note);
    }
    h
}

fn parse_into(frame: &[u8], h: &mut Headers) -> Result<(), String> {
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
    if ethertype != ETHERTYPE_IPV4 {
        return Err(format!("not IPv4 (ethertype {ethertype:#06x})"));
    }
    let (mut ip, mut packet) = ipv4(&frame[l3..])?;
    if ip.protocol == IPPROTO_IPIP && !ip.fragment {
        let (inner, inner_packet) = ipv4(&packet[ip.header_length as usize..])?;
        h.outer_ipv4 = Some(ip);
        (ip, packet) = (inner, inner_packet);
    }
    let segment = &packet[ip.header_length as usize..];
    let (protocol, fragment, src, dst) = (ip.protocol, ip.fragment, ip.source, ip.destination);
    h.ipv4 = Some(ip);
    if fragment {
        return Err("an IPv4 fragment".into());
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
            let checksum = be16(segment, 6).unwrap_or(0);
            h.udp = Some(UdpHeader {
                source_port: be16(segment, 0).unwrap_or(0),
                destination_port: be16(segment, 2).unwrap_or(0),
                length: be16(segment, 4).unwrap_or(0),
                checksum,
                checksum_ok: checksum == 0 || l4_checksum(src, dst, IPPROTO_UDP, segment) == 0,
            });
        }
        other => return Err(format!("IPv4 protocol {other}: neither TCP nor UDP")),
    }
    Ok(())
}

impl Headers {
    /// The connection-table key of the packet as the balancer reads it: a
    /// TCP or UDP packet that is not itself IP-in-IP.
    pub fn flow_key(&self) -> Option<FlowKey> {
        if self.outer_ipv4.is_some() {
            return None;
        }
        let ip = self.ipv4.as_ref()?;
        let (sport, dport) = match (&self.tcp, &self.udp) {
            (Some(t), _) => (t.source_port, t.destination_port),
            (_, Some(u)) => (u.source_port, u.destination_port),
            _ => return None,
        };
        Some(flow_key(
            ip.source,
            sport,
            ip.destination,
            dport,
            ip.protocol,
        ))
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
            source: Ipv4Addr::new(198, 18, 10, 2),
            source_port: 40000,
            destination: Ipv4Addr::new(198, 18, 0, 10),
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
            Ipv4Addr::new(198, 18, 10, 2),
            Ipv4Addr::new(198, 18, 0, 10),
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
            Some(flow_key(
                Ipv4Addr::new(198, 18, 10, 2),
                40000,
                Ipv4Addr::new(198, 18, 0, 10),
                80,
                6
            ))
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
        assert_eq!(h.note.as_deref(), Some("not IPv4 (ethertype 0x0806)"));
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
