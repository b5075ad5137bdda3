//! The control socket: the protocol shared with `lbctl`, and the server
//! inside `lb-agent`.

pub mod client;
pub mod protocol;
pub mod server;
pub mod service;
