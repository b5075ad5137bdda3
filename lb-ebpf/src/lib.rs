//! The XDP data path.
//!
//! `balancer` reads top to bottom in [`balancer::balance`]:
//! [`parse`] → [`classify`] → [`select`] → [`transmit`] (next hop) →
//! [`encap`] → verdict, for IPv4 and IPv6 alike (one generic selection,
//! [`select::Tuple`]), with [`icmp`] and [`icmp6`] for echo,
//! "fragmentation needed" / "packet too big" and ICMP errors about VIP
//! flows. [`decap`] is the backends' half. Maps live in
//! [`maps`], counters in [`stats`], checksum arithmetic in [`csum`].
#![no_std]
// `select` counts least-conn connections with the atomic-add intrinsic.
#![cfg_attr(feature = "balancer", feature(core_intrinsics))]
#![allow(internal_features)]

#[cfg(feature = "balancer")]
pub mod balancer;
#[cfg(feature = "balancer")]
pub mod classify;
pub mod csum;
#[cfg(feature = "decap")]
pub mod decap;
#[cfg(feature = "balancer")]
pub mod encap;
#[cfg(feature = "balancer")]
pub mod icmp;
#[cfg(feature = "balancer")]
pub mod icmp6;
#[cfg(feature = "balancer")]
pub mod maps;
pub mod parse;
#[cfg(feature = "balancer")]
pub mod select;
#[cfg(feature = "balancer")]
pub mod stats;
#[cfg(feature = "balancer")]
pub mod transmit;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this only satisfies rustc.
    loop {}
}
