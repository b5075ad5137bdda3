//! Reading classic pcap files (not pcapng) with the Ethernet link type:
//! the input of `lbctl trace --pcap`. The format is a 24-byte file header
//! and a 16-byte header before each packet, in the writer's byte order,
//! which the magic number tells.

/// Link type 1: Ethernet (LINKTYPE_ETHERNET).
const LINKTYPE_ETHERNET: u32 = 1;
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// The first bytes of a pcapng file (its section header block type).
const PCAPNG_MAGIC: u32 = 0x0a0d_0d0a;
/// No sane capture has a record this large (tcpdump's maximum snapshot
/// length); a larger length means a damaged file.
const MAX_RECORD: u32 = 262_144;

/// One captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packet {
    /// The bytes captured.
    pub(crate) data: Vec<u8>,
    /// Its length on the wire (more than `data` when the capture cut it).
    pub(crate) original_len: u32,
}

/// The packets of a pcap file's contents, or why the file cannot be read.
pub(crate) fn read(bytes: &[u8]) -> Result<Vec<Packet>, String> {
    let header = bytes
        .get(..24)
        .ok_or("too short for a pcap file header (24 bytes)")?;
    let magic_le = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let magic_be = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let little = match (magic_le, magic_be) {
        (MAGIC_MICROS | MAGIC_NANOS, _) => true,
        (_, MAGIC_MICROS | MAGIC_NANOS) => false,
        (_, PCAPNG_MAGIC) => return Err(
            "a pcapng file; only classic pcap is read (convert it with `editcap -F pcap IN OUT`)"
                .into(),
        ),
        _ => return Err(format!("not a pcap file (magic number {magic_be:#010x})")),
    };
    let u32_at = |data: &[u8], at: usize| -> u32 {
        let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let linktype = u32_at(header, 20) & 0x0fff_ffff;
    if linktype != LINKTYPE_ETHERNET {
        return Err(format!(
            "link type {linktype}: only Ethernet captures (link type 1) can be traced"
        ));
    }
    let mut packets = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let n = packets.len() + 1;
        let record = bytes
            .get(at..at + 16)
            .ok_or_else(|| format!("packet {n}: truncated record header at byte {at}"))?;
        let captured = u32_at(record, 8);
        let original_len = u32_at(record, 12);
        if captured > MAX_RECORD {
            return Err(format!(
                "packet {n}: a record of {captured} bytes at byte {at}; the file is damaged"
            ));
        }
        let start = at + 16;
        let data = bytes.get(start..start + captured as usize).ok_or_else(|| {
            format!(
                "packet {n}: {captured} bytes announced at byte {at}, {} left in the file",
                bytes.len() - start
            )
        })?;
        packets.push(Packet {
            data: data.to_vec(),
            original_len,
        });
        at = start + captured as usize;
    }
    Ok(packets)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pcap file of `frames`, little-endian or big-endian.
    pub(crate) fn file(frames: &[&[u8]], little: bool) -> Vec<u8> {
        let w = |v: u32| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let w16 = |v: u16| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let mut out = Vec::new();
        out.extend_from_slice(&w(MAGIC_MICROS));
        out.extend_from_slice(&w16(2)); // version 2.4
        out.extend_from_slice(&w16(4));
        out.extend_from_slice(&[0; 8]); // time zone, accuracy
        out.extend_from_slice(&w(65535));
        out.extend_from_slice(&w(LINKTYPE_ETHERNET));
        for (i, f) in frames.iter().enumerate() {
            out.extend_from_slice(&w(1_700_000_000 + i as u32));
            out.extend_from_slice(&w(0));
            out.extend_from_slice(&w(f.len() as u32));
            out.extend_from_slice(&w(f.len() as u32));
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn both_byte_orders_and_every_packet() {
        let frames: [&[u8]; 3] = [&[1; 60], &[2; 14], &[3; 1514]];
        for little in [true, false] {
            let packets = read(&file(&frames, little)).expect("reads");
            assert_eq!(packets.len(), 3);
            for (p, f) in packets.iter().zip(frames) {
                assert_eq!(p.data, f);
                assert_eq!(p.original_len as usize, f.len());
            }
        }
        assert_eq!(read(&file(&[], true)).expect("reads"), vec![]);
        // Nanosecond timestamps: same layout, another magic.
        let mut nanos = file(&frames[..1], true);
        nanos[..4].copy_from_slice(&MAGIC_NANOS.to_le_bytes());
        assert_eq!(read(&nanos).expect("reads").len(), 1);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let good = file(&[&[7; 60]], true);
        let err = |bytes: &[u8]| read(bytes).expect_err("refused");
        assert!(err(&good[..10]).contains("too short"));
        assert!(err(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").contains("not a pcap file"));
        let mut ng = good.clone();
        ng[..4].copy_from_slice(&PCAPNG_MAGIC.to_be_bytes());
        assert!(err(&ng).contains("pcapng"));
        let mut raw_ip = good.clone();
        raw_ip[20..24].copy_from_slice(&101u32.to_le_bytes());
        assert!(err(&raw_ip).contains("link type 101"));
        assert!(err(&good[..30]).contains("packet 1: truncated record header"));
        assert!(err(&good[..good.len() - 1]).contains("packet 1: 60 bytes announced"));
        let mut huge = good.clone();
        huge[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&huge).contains("damaged"));
    }
}
