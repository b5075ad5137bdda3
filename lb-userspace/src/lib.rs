//! The userspace half of the load balancer: everything the agent does
//! besides wiring (that is `bin/lb-agent.rs`).
//!
//! - [`maglev`]: lookup-table construction.
//! - [`dataplane`]: the VIP/backend model, reconciled into the maps.
//! - [`maps`]: typed access to the BPF maps.
//! - [`loader`], [`objects`]: the embedded eBPF objects and their loading.

pub mod dataplane;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod objects;
