//! How a VIP's packets travel to its backends: IP-in-IP (the default) or
//! GUE, a UDP header between the outer IPv4 header and the client's packet
//! whose source port follows the flow hash, so that the backend's NIC
//! spreads tunnels over its receive queues (docs/deployment.md says which
//! to pick and how a backend strips each).
//!
//! In the config file and the control API a VIP says `"encap": "ipip"` or
//! `"encap": "gue"` with an optional `"gue_port"` (default
//! [`DEFAULT_GUE_PORT`]); this module turns the pair into an [`Encap`] and
//! back, and into what the data path reads (`gue_port` of `VipMeta` and of
//! `Backend`, wire order, 0 for IP-in-IP).

use std::{fmt, str::FromStr};

use anyhow::{bail, Result};
pub use lb_common::DEFAULT_GUE_PORT;
use lb_common::{port_from_wire, port_to_wire};
use serde::{Deserialize, Serialize};

/// The encapsulation a VIP's packets get.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encap {
    /// An outer IPv4 header, protocol 4 (RFC 2003).
    #[default]
    Ipip,
    /// An outer IPv4 header and UDP to `port` (host order), the client's
    /// packet right after the UDP header (GUE variant 1).
    Gue { port: u16 },
}

/// The `"encap"` field's values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncapKind {
    #[default]
    Ipip,
    Gue,
}

impl EncapKind {
    pub const ALL: [EncapKind; 2] = [EncapKind::Ipip, EncapKind::Gue];

    pub fn name(self) -> &'static str {
        match self {
            EncapKind::Ipip => "ipip",
            EncapKind::Gue => "gue",
        }
    }
}

impl fmt::Display for EncapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EncapKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match EncapKind::ALL.into_iter().find(|k| k.name() == s) {
            Some(k) => Ok(k),
            None => bail!("unknown encap {s:?}; expected ipip or gue"),
        }
    }
}

impl Encap {
    /// The encapsulation of the fields `encap` and `gue_port`: a port
    /// needs GUE, and port 0 is no port.
    pub fn from_fields(kind: Option<EncapKind>, gue_port: Option<u16>) -> Result<Self> {
        match (kind.unwrap_or_default(), gue_port) {
            (EncapKind::Ipip, None) => Ok(Encap::Ipip),
            (EncapKind::Ipip, Some(_)) => {
                bail!("gue_port: only a VIP with \"encap\": \"gue\" has a GUE port")
            }
            (EncapKind::Gue, Some(0)) => bail!("gue_port: 0 is not a UDP port"),
            (EncapKind::Gue, port) => Ok(Encap::Gue {
                port: port.unwrap_or(DEFAULT_GUE_PORT),
            }),
        }
    }

    pub fn kind(self) -> EncapKind {
        match self {
            Encap::Ipip => EncapKind::Ipip,
            Encap::Gue { .. } => EncapKind::Gue,
        }
    }

    /// The GUE port, if any (host order).
    pub fn gue_port(self) -> Option<u16> {
        match self {
            Encap::Ipip => None,
            Encap::Gue { port } => Some(port),
        }
    }

    /// What the data path reads: the GUE port in wire order, 0 for IP-in-IP.
    pub fn wire_port(self) -> u16 {
        self.gue_port().map_or(0, port_to_wire)
    }

    /// The inverse of [`Encap::wire_port`].
    pub fn from_wire_port(port: u16) -> Self {
        match port {
            0 => Encap::Ipip,
            port => Encap::Gue {
                port: port_from_wire(port),
            },
        }
    }
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encap::Ipip => f.write_str("ipip"),
            Encap::Gue { port } => write!(f, "gue:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_make_an_encap_or_say_what_is_wrong() {
        assert_eq!(Encap::from_fields(None, None).unwrap(), Encap::Ipip);
        assert_eq!(
            Encap::from_fields(Some(EncapKind::Gue), None).unwrap(),
            Encap::Gue { port: 6080 }
        );
        assert_eq!(
            Encap::from_fields(Some(EncapKind::Gue), Some(9000)).unwrap(),
            Encap::Gue { port: 9000 }
        );
        let e = Encap::from_fields(None, Some(9000)).unwrap_err();
        assert!(e.to_string().contains("\"encap\": \"gue\""), "{e}");
        let e = Encap::from_fields(Some(EncapKind::Gue), Some(0)).unwrap_err();
        assert!(e.to_string().contains("not a UDP port"), "{e}");
        let e = "vxlan".parse::<EncapKind>().unwrap_err();
        assert!(e.to_string().contains("ipip or gue"), "{e}");
    }

    #[test]
    fn the_wire_port_round_trips() {
        for encap in [
            Encap::Ipip,
            Encap::Gue { port: 6080 },
            Encap::Gue { port: 1 },
        ] {
            assert_eq!(Encap::from_wire_port(encap.wire_port()), encap);
        }
        assert_eq!(Encap::Gue { port: 6080 }.wire_port(), 6080u16.to_be());
    }
}
