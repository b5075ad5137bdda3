//! What the unit tests of every module share: a VIP, a backend, parsing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_userspace::{
    control::protocol::Request,
    dataplane::{Protocol, VipAddr},
};

use clap::Parser;

use crate::cli::Cli;

pub fn vip() -> VipAddr {
    VipAddr {
        addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10)),
        port: 80,
        proto: Protocol::Tcp,
    }
}

pub const B1: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 1, 2));

/// An IPv6 VIP, `[2001:db8::10]:80/tcp`.
pub fn vip6() -> VipAddr {
    VipAddr {
        addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)),
        port: 80,
        proto: Protocol::Tcp,
    }
}

/// An IPv6 backend, `2001:db8:1::2`.
pub const B6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2));

pub fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("lbctl").chain(args.iter().copied()))
}

pub fn req(args: &[&str]) -> Request {
    match parse(args) {
        Ok(cli) => match cli.command.request() {
            Some(request) => request,
            None => panic!("{args:?} sends no single request"),
        },
        Err(e) => panic!("{args:?} must parse: {e}"),
    }
}

pub fn usage_error(args: &[&str]) -> clap::Error {
    match parse(args) {
        Ok(cli) => panic!("{args:?} must be refused, parsed as {cli:?}"),
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{args:?}: usage errors exit with 2");
            e
        }
    }
}
