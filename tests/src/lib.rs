//! Shared test code: a packet builder and BPF_PROG_TEST_RUN helpers for the
//! packet tests and the benchmark; the network-namespace test bed shared by
//! the integration tests and the demo; the benchmark's HTML report.

pub mod agent;
pub mod bird;
pub mod churn;
pub mod cluster;
pub mod flows;
pub mod fuzz;
pub mod httpload;
pub mod keepalived;
pub mod netns;
pub mod packet;
pub mod report;
pub mod topology;
pub mod xdp;
