//! The flow hash, compiled into both the data path and the agent so that
//! `lbctl` can answer "which backend gets this flow" with the kernel's answer.
//!
//! Jenkins' lookup3 final mix over three 32-bit words (the kernel's
//! `jhash_3words`): a handful of ALU instructions, no loops, no tables, which
//! is what a per-packet hash in BPF can afford, and good avalanche for the
//! `% ring_size` that follows.

/// Seed of the flow hash. Changing it moves every flow that is not pinned in
/// the connection table, on every node of a fleet: it is part of the wire
/// contract between LB nodes, not a tunable.
pub const FLOW_HASH_SEED: u32 = 0x4d61_676c; // "Magl"

const JHASH_INITVAL: u32 = 0xdead_beef;

/// `jhash_3words` as in the Linux kernel (`include/linux/jhash.h`).
#[inline(always)]
pub const fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    let init = initval.wrapping_add(JHASH_INITVAL).wrapping_add(3 << 2);
    let mut a = a.wrapping_add(init);
    let mut b = b.wrapping_add(init);
    let mut c = c.wrapping_add(init);
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// Hash of a flow. All arguments in wire order, as read from the packet.
/// The protocol goes into the seed so TCP and UDP flows with equal tuples
/// land independently.
#[inline(always)]
pub const fn flow_hash(
    src_addr: u32,
    dst_addr: u32,
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    let ports = ((src_port as u32) << 16) | dst_port as u32;
    jhash_3words(src_addr, dst_addr, ports, FLOW_HASH_SEED ^ proto as u32)
}

/// An IPv6 address (wire order) folded to 32 bits for the flow hash and
/// the VIP filter: the XOR of its words. Addresses of one prefix differ in
/// their low words, which the fold keeps; a collision only means two flows
/// share a hash value, never a connection-table entry (the table is keyed
/// by the full addresses).
#[inline(always)]
pub const fn fold_ipv6(addr: &[u32; 4]) -> u32 {
    addr[0] ^ addr[1] ^ addr[2] ^ addr[3]
}

/// Hash of an IPv6 flow: [`flow_hash`] over the folded addresses.
#[inline(always)]
pub const fn flow_hash6(
    src_addr: &[u32; 4],
    dst_addr: &[u32; 4],
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    flow_hash(
        fold_ipv6(src_addr),
        fold_ipv6(dst_addr),
        src_port,
        dst_port,
        proto,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_kernels_jhash_3words() {
        // Reference values from the kernel's jhash_3words compiled as C.
        assert_eq!(jhash_3words(0, 0, 0, 0), 0x1b68_e557);
        assert_eq!(jhash_3words(1, 2, 3, 4), 0x8103_143f);
        assert_eq!(
            jhash_3words(0xc0a8_0001, 0x0a00_0001, 0x1234_5678, 0xdead_beef),
            0x938a_b770
        );
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = flow_hash(1, 2, 3, 4, 6);
        assert_ne!(base, flow_hash(9, 2, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 9, 3, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 9, 4, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 9, 6));
        assert_ne!(base, flow_hash(1, 2, 3, 4, 17));
    }
}
