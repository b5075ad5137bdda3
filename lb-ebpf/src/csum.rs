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
