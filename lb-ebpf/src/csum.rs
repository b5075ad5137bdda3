//! Internet checksum (RFC 1071) helpers.

/// Folds a 32-bit one's-complement sum into 16 bits and inverts it.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Checksum of a 20-byte IPv4 header given as ten 16-bit words read in
/// memory order; the result is to be stored in memory order too, so no byte
/// swapping is needed on either side.
#[inline(always)]
pub fn ipv4_header(words: &[u16; 10]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 10 {
        sum += words[i] as u32;
        i += 1;
    }
    fold(sum)
}

/// Incremental checksum update (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m'))
/// for one 16-bit word of the covered data changing from `old` to `new`.
/// All three are given as the bytes in the packet, so the result is too.
#[inline(always)]
pub fn replace16(check: [u8; 2], old: [u8; 2], new: [u8; 2]) -> [u8; 2] {
    let sum = (!u16::from_be_bytes(check)) as u32
        + (!u16::from_be_bytes(old)) as u32
        + u16::from_be_bytes(new) as u32;
    fold(sum).to_be_bytes()
}

/// Folds a 64-bit one's-complement sum of words read in memory order (of
/// any width: 32-bit reads add two 16-bit words each) into the 16-bit
/// checksum, inverted, to be stored in memory order.
#[inline(always)]
pub fn fold64(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = sum as u32;
    fold((sum & 0xffff) + (sum >> 16))
}
