//! The userspace half of the load balancer: everything the agent does
//! besides wiring (that is `bin/lb-agent.rs`).
//!
//! - [`maglev`]: lookup-table construction.
//! - [`control`]: the control socket (protocol and server).
//! - [`config`]: the agent's configuration file.
//! - [`dataplane`]: the VIP/backend model, reconciled into the maps.
//! - [`health`]: health probes (TCP, HTTP) with rise and fall.
//! - [`host`]: interface facts and sysctls.
//! - [`maps`]: typed access to the BPF maps.
//! - [`pins`]: the data path pinned in bpffs (hitless restarts).
//! - [`state`]: the state file (persistent VIPs and backends).
//! - [`trace`]: packets traced through a trace instance of the balancer.
//! - [`loader`], [`objects`]: the embedded eBPF objects and their loading.

pub mod config;
pub mod control;
pub mod dataplane;
pub mod health;
pub mod host;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod objects;
pub mod pins;
pub mod state;
pub mod trace;
