//! The eBPF object files, built by `build.rs` and embedded in the binary.

use aya::include_bytes_aligned;

/// The `balancer` program and its maps (LB nodes).
pub static BALANCER: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-balancer"));

/// The `decap` program and its maps (backends).
pub static DECAP: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

/// Benchmark-only programs: the floor and the wrappers around `balancer`.
pub static BENCH: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-bench-programs"));
