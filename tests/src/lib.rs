//! Shared test code: a packet builder and BPF_PROG_TEST_RUN helpers for the
//! packet tests and the benchmark.

pub mod packet;
pub mod xdp;
