//! The userspace half of the load balancer: everything the agent does
//! besides wiring (that is `bin/lb-agent.rs`).
//!
//! - [`maglev`]: lookup-table construction.
//! - [`control`]: the control socket (protocol and server).
//! - [`config`]: the agent's configuration file.
//! - [`decap`]: the backends' `decap` program, pinned (`lb-decap`).
//! - [`clidoc`]: man pages and shell completions from the clap definitions.
//! - [`dataplane`]: the VIP/backend model, reconciled into the maps.
//! - [`health`]: health probes (TCP, HTTP) with rise and fall.
//! - [`host`]: interface facts and sysctls.
//! - [`instrument`]: event counters and histograms (probes, transitions,
//!   table rebuilds and swaps), written where the events happen.
//! - [`metrics`]: the Prometheus `/metrics` endpoint, reading everything
//!   above (it depends on the others; none depends on it).
//! - [`maps`]: typed access to the BPF maps; [`batch`]: batch map
//!   operations (bpf(2)) for the connection table.
//! - [`pins`]: the data path pinned in bpffs (hitless restarts).
//! - [`state`]: the state file (persistent VIPs and backends).
//! - [`trace`]: packets traced through a trace instance of the balancer.
//! - [`loader`], [`objects`]: the embedded eBPF objects and their loading.

pub mod announce;
pub mod batch;
pub mod clidoc;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod decap;
pub mod encap;
pub mod health;
pub mod host;
pub mod instrument;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod objects;
pub mod pins;
pub mod policy;
pub mod state;
pub mod trace;
