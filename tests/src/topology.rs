//! The network-namespace test bed: clients, a router, one LB node and
//! backends, each in its own namespace, wired with veth pairs.
//!
//! ```text
//!  client i (eth0 198.18.(10+i).2        ── lbt-c<i> 198.18.(10+i).1       ┐
//!            2001:db8:18:<10+i>::2)                  2001:db8:18:<10+i>::1 │
//!                                                                         │ router
//!  lb (eth0 198.18.1.2                   ── lbt-lb 198.18.1.1              ├ VIP/32 via 198.18.1.2
//!       2001:db8:18:1::2, MTU 1600)               2001:db8:18:1::1         │ VIP/128 via 2001:db8:18:1::2
//!                                                                         │
//!  backend j "b<j+1>" (eth0 198.19.(j+1).2 ── lbt-b<j+1> 198.19.(j+1).1    ┘
//!            2001:db8:19:<j+1>::2, MTU 1600)           2001:db8:19:<j+1>::1
//! ```
//!
//! Every IPv4 address 198.B.C.D of the bed has an IPv6 twin
//! 2001:db8:B:C::D ([`ipv6_of`]): the octets' decimal digits are written as
//! hexadecimal digits, so the two read alike (client 0 is 198.18.10.2 and
//! 2001:db8:18:10::2, whose fourth group is 0x10). Links are /24 and /64,
//! VIPs /32 and /128 (e.g. 198.18.0.10 and 2001:db8:18::10). LB node `k`
//! of [`Topology::build_multi`] is 198.18.(1+k).2 and 2001:db8:18:<1+k>::2.
//! IPv6 addresses are static only: no router advertisements are accepted
//! (none are sent: no daemon runs), nothing is autoconfigured, and duplicate
//! address detection is off, so an address works as soon as it is added.
//!
//! Backends carry every VIP on `lo`, run `lb-backend-server` on the spec's
//! ports (TCP and UDP, both families) and the project's `decap` XDP program
//! on `eth0` (this kernel has no ipip module). The LB namespace gets no XDP
//! program: the caller attaches the balancer to [`Topology::lb_if`] inside
//! [`Topology::lb_ns`].
//!
//! Only 198.18.0.0/15 and 2001:db8::/32 addresses are used (besides the
//! kernel's own link-local ones), and nothing is linked to the root
//! namespace. Everything is removed on drop (also while unwinding from a
//! panic); namespaces left by a killed test run are removed by the next
//! [`Topology::build`] (see [`reap_orphans`]).

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::{programs::XdpMode, Ebpf};
use lb_common::names;
use lb_userspace::loader;

pub use crate::netns::{reap_orphans, veth, Netns};

/// File name of the backend server binary.
pub const SERVER_BIN: &str = "lb-backend-server";
/// Environment variable that overrides where the server binary is looked for.
pub const SERVER_BIN_ENV: &str = "LB_BACKEND_SERVER";

/// Interface name inside the client, LB and backend namespaces.
pub const HOST_IF: &str = "eth0";
/// MTU of the LB and backend links (room for the encapsulation header).
pub const INNER_MTU: u32 = 1600;
/// Port of every backend server's HTTP health endpoint (`GET` any path: 200,
/// or 503 while [`Topology::set_http_health`] says sick).
pub const HEALTH_PORT: u16 = 9000;
/// The LB's address and its router-side gateway.
pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const LB_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The LB's IPv6 address (2001:db8:18:1::2) and its router-side gateway
/// (2001:db8:18:1::1).
pub const LB_ADDR6: Ipv6Addr = ipv6_of(LB_ADDR);
pub const LB_GATEWAY6: Ipv6Addr = ipv6_of(LB_GATEWAY);
/// Prefix length of every IPv6 link (the IPv4 links are /24).
pub const LINK_PREFIX6: u8 = 64;
/// The router's interface towards the LB.
pub const LB_PEER_IF: &str = "lbt-lb";

/// IPv6 settings of every namespace, set before its interfaces exist (they
/// inherit `default`): addresses are static and usable at once.
const IPV6_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
    ("net.ipv6.conf.all.autoconf", "0"),
    ("net.ipv6.conf.default.autoconf", "0"),
    ("net.ipv6.conf.all.router_solicitations", "0"),
    ("net.ipv6.conf.default.router_solicitations", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    // IPv4 addresses survive a link going down; without this IPv6 ones
    // would not, and the HA tests take links down and up again.
    ("net.ipv6.conf.all.keep_addr_on_down", "1"),
    ("net.ipv6.conf.default.keep_addr_on_down", "1"),
];

/// How long `build` waits for the backend servers to listen.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The router's bridge of a shared LB segment ([`Topology::build_shared`]).
pub const SHARED_BRIDGE: &str = "lbt-lbs";

/// Most LB nodes of a test bed: their links 198.18.1-8.0/24 end where the
/// clients' begin.
pub const MAX_LB_NODES: usize = 8;

/// Address of LB node `k` (0-based): 198.18.(1+k).2 (node 0 is [`LB_ADDR`]).
pub fn lb_node_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1 + k as u8, 2)
}

/// The router's address on LB node `k`'s link: 198.18.(1+k).1.
pub fn lb_node_gateway(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1 + k as u8, 1)
}

/// Address of client `i` (0-based): 198.18.(10+i).2.
pub fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10 + i as u8, 2)
}

/// The router's address on client `i`'s link: 198.18.(10+i).1.
pub fn client_gateway(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10 + i as u8, 1)
}

/// Address of backend `j` (0-based): 198.19.(j+1).2.
pub fn backend_addr(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, j as u8 + 1, 2)
}

/// The router's address on backend `j`'s link: 198.19.(j+1).1.
pub fn backend_gateway(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, j as u8 + 1, 1)
}

/// The IPv6 twin of the bed's IPv4 address 198.B.C.D (any first octet is
/// taken for 198): 2001:db8:B:C::D, each octet's decimal digits written as
/// hexadecimal digits so that both addresses read alike in logs and
/// captures.
pub const fn ipv6_of(addr: Ipv4Addr) -> Ipv6Addr {
    const fn digits(octet: u8) -> u16 {
        let o = octet as u16;
        ((o / 100) << 8) | ((o / 10 % 10) << 4) | (o % 10)
    }
    let [_, b, c, d] = addr.octets();
    Ipv6Addr::new(0x2001, 0xdb8, digits(b), digits(c), 0, 0, 0, digits(d))
}

/// IPv6 address of LB node `k`: 2001:db8:18:<1+k>::2.
pub fn lb_node_addr6(k: usize) -> Ipv6Addr {
    ipv6_of(lb_node_addr(k))
}

/// The router's IPv6 address on LB node `k`'s link: 2001:db8:18:<1+k>::1.
pub fn lb_node_gateway6(k: usize) -> Ipv6Addr {
    ipv6_of(lb_node_gateway(k))
}

/// IPv6 address of client `i`: 2001:db8:18:<10+i>::2.
pub fn client_addr6(i: usize) -> Ipv6Addr {
    ipv6_of(client_addr(i))
}

/// The router's IPv6 address on client `i`'s link: 2001:db8:18:<10+i>::1.
pub fn client_gateway6(i: usize) -> Ipv6Addr {
    ipv6_of(client_gateway(i))
}

/// IPv6 address of backend `j`: 2001:db8:19:<j+1>::2.
pub fn backend_addr6(j: usize) -> Ipv6Addr {
    ipv6_of(backend_addr(j))
}

/// The router's IPv6 address on backend `j`'s link: 2001:db8:19:<j+1>::1.
pub fn backend_gateway6(j: usize) -> Ipv6Addr {
    ipv6_of(backend_gateway(j))
}

/// Name of backend `j` (0-based): "b1", "b2", ...
pub fn backend_name(j: usize) -> String {
    format!("b{}", j + 1)
}

/// Name of client `i` (0-based): "c0", "c1", ...
pub fn client_name(i: usize) -> String {
    format!("c{i}")
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologySpec {
    /// Number of client namespaces (at least 2, at most 245).
    pub clients: usize,
    /// Number of backend namespaces (at least 1, at most 254).
    pub backends: usize,
    /// VIPs of either family: routed by the router to the LB (as /32 or
    /// /128), and on every backend's `lo`. Must lie in 198.18.0.0/15 or
    /// 2001:db8::/32 outside the links' subnets (e.g. 198.18.0.x or
    /// 2001:db8:18::x).
    pub vips: Vec<IpAddr>,
    /// Ports the backend servers listen on, TCP and UDP each (may be empty:
    /// then no server runs).
    pub ports: Vec<u16>,
}

impl Default for TopologySpec {
    fn default() -> Self {
        Self {
            clients: 2,
            backends: 2,
            vips: vec![Ipv4Addr::new(198, 18, 0, 10).into()],
            ports: vec![8080],
        }
    }
}

/// Who strips the balancer's IP-in-IP header on the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendDecap {
    /// The test bed attaches `decap` with the Rust loader (the default).
    TestBed,
    /// Nobody: the test attaches it itself (e.g. with the `lb-decap`
    /// binary); until then the backends drop the balancer's packets.
    Caller,
}

/// One end host (client, LB or backend) attached to the router.
#[derive(Debug)]
pub struct Host {
    /// "c0", "lb", "b1", ...
    pub name: String,
    pub ns: Netns,
    /// Its interface towards the router ("eth0").
    pub ifname: String,
    pub addr: Ipv4Addr,
    /// The router's address on this link (the host's default gateway).
    pub gateway: Ipv4Addr,
    /// The IPv6 twins of `addr` and `gateway` ([`ipv6_of`]).
    pub addr6: Ipv6Addr,
    pub gateway6: Ipv6Addr,
    /// The router's interface on this link (in the router namespace).
    pub router_if: String,
}

impl Host {
    fn new(name: String, addr: Ipv4Addr, gateway: Ipv4Addr, router_if: String) -> Result<Host> {
        Ok(Host {
            ns: Netns::new(&name)?,
            name,
            ifname: HOST_IF.into(),
            addr,
            gateway,
            addr6: ipv6_of(addr),
            gateway6: ipv6_of(gateway),
            router_if,
        })
    }

    /// `ip` commands giving the host's interface its addresses and default
    /// routes.
    fn address_cmds(&self) -> Vec<String> {
        let ifname = &self.ifname;
        vec![
            format!("addr add {}/24 dev {ifname}", self.addr),
            format!("addr add {}/{LINK_PREFIX6} dev {ifname} nodad", self.addr6),
        ]
        .into_iter()
        .chain(self.default_route_cmds("add"))
        .collect()
    }

    fn default_route_cmds(&self, verb: &str) -> [String; 2] {
        // `::/0`, not `default`: a batch line cannot say `-6`.
        [
            format!("route {verb} default via {}", self.gateway),
            format!("route {verb} ::/0 via {}", self.gateway6),
        ]
    }

    /// `ip` commands, for the router, giving its end of this host's link
    /// the gateway addresses.
    fn router_address_cmds(&self) -> [String; 2] {
        let router_if = &self.router_if;
        [
            format!("addr add {}/24 dev {router_if}", self.gateway),
            format!(
                "addr add {}/{LINK_PREFIX6} dev {router_if} nodad",
                self.gateway6
            ),
        ]
    }

    /// Sets the host's default routes (both families) again, e.g. after its
    /// link went down, which removes the routes through it.
    pub fn restore_default_routes(&self) -> Result<()> {
        self.ns.ip_batch(&self.default_route_cmds("replace"))
    }
}

/// A built test bed. Dropping it kills the servers, detaches the decap
/// programs and deletes every namespace (and with them every veth).
#[derive(Debug)]
pub struct Topology {
    pub spec: TopologySpec,
    pub router: Netns,
    pub lb: Host,
    /// LB nodes 1.. of a [`Topology::build_multi`] bed (node 0 is `lb`).
    pub extra_lbs: Vec<Host>,
    /// The LB nodes share one segment ([`Topology::build_shared`]).
    pub shared_segment: bool,
    /// The LB's interface inside [`Topology::lb_ns`] ("eth0").
    pub lb_if: String,
    pub clients: Vec<Host>,
    pub backends: Vec<Host>,
    /// Attach mode of each backend's decap program (`Driver`, or `Skb` when
    /// native mode was refused); empty with [`BackendDecap::Caller`].
    pub decap_modes: Vec<XdpMode>,
    decap: Vec<Option<Ebpf>>,
    /// Pass-through XDP program on the router's LB-facing veth (see
    /// `attach_router_xdp`).
    router_xdp: Vec<Ebpf>,
    servers: Vec<Option<Child>>,
    server_bin: Option<PathBuf>,
}

impl Topology {
    /// Removes orphaned namespaces of killed test runs, then builds the
    /// topology, attaches decap on the backends and starts their servers
    /// (returning once they accept connections).
    pub fn build(spec: TopologySpec) -> Result<Topology> {
        Self::build_with(spec, BackendDecap::TestBed)
    }

    /// Like [`Topology::build`], choosing who decapsulates on the backends.
    pub fn build_with(spec: TopologySpec, decap: BackendDecap) -> Result<Topology> {
        Self::build_full(spec, decap, 1, false)
    }

    /// A test bed with `lb_nodes` LB nodes (1 to 8) between the router and
    /// the backends: node `k` is namespace "lb" (k = 0) or "lb{k}", address
    /// 198.18.(1+k).2 on its own link to the router. With more than one
    /// node the router has no route to the VIPs: the caller provides them
    /// (BGP from the nodes, see `bird`), and the router spreads flows over
    /// equal-cost next hops by their L4 hash
    /// (`fib_multipath_hash_policy=1`), skipping next hops whose link is
    /// down (`ignore_routes_with_linkdown=1`).
    pub fn build_multi(spec: TopologySpec, lb_nodes: usize) -> Result<Topology> {
        Self::build_full(spec, BackendDecap::TestBed, lb_nodes, false)
    }

    /// `lb_nodes` LB nodes on one shared segment, as VRRP needs: the
    /// router's LB-facing veths are ports of a bridge ([`SHARED_BRIDGE`],
    /// 198.18.1.1/24), node `k` is 198.18.1.(2+k), and the router reaches
    /// each VIP on the segment itself (it ARPs for the VIP: whichever node
    /// holds the address answers).
    pub fn build_shared(spec: TopologySpec, lb_nodes: usize) -> Result<Topology> {
        Self::build_full(spec, BackendDecap::TestBed, lb_nodes, true)
    }

    fn build_full(
        spec: TopologySpec,
        decap: BackendDecap,
        lb_nodes: usize,
        shared: bool,
    ) -> Result<Topology> {
        if let Err(e) = reap_orphans() {
            log::warn!("{e:#}");
        }
        ensure!(
            (1..=MAX_LB_NODES).contains(&lb_nodes),
            "lb_nodes must be 1..={MAX_LB_NODES}, not {lb_nodes}"
        );
        validate(&spec, lb_nodes)?;
        let server_bin = if spec.ports.is_empty() {
            None
        } else {
            Some(locate_server_bin()?)
        };

        let router = Netns::new("router")?;
        let lb = Host::new("lb".into(), LB_ADDR, LB_GATEWAY, LB_PEER_IF.into())?;
        let extra_lbs = (1..lb_nodes)
            .map(|k| {
                let (addr, gateway) = if shared {
                    (Ipv4Addr::new(198, 18, 1, 2 + k as u8), LB_GATEWAY)
                } else {
                    (lb_node_addr(k), lb_node_gateway(k))
                };
                Host::new(format!("lb{k}"), addr, gateway, format!("{LB_PEER_IF}{k}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let clients = (0..spec.clients)
            .map(|i| {
                let name = client_name(i);
                let router_if = format!("lbt-{name}");
                Host::new(name, client_addr(i), client_gateway(i), router_if)
            })
            .collect::<Result<Vec<_>>>()?;
        let backends = (0..spec.backends)
            .map(|j| {
                let name = backend_name(j);
                let router_if = format!("lbt-{name}");
                Host::new(name, backend_addr(j), backend_gateway(j), router_if)
            })
            .collect::<Result<Vec<_>>>()?;
        let n = spec.backends;
        let mut topo = Topology {
            spec,
            router,
            lb,
            extra_lbs,
            shared_segment: shared,
            lb_if: HOST_IF.into(),
            clients,
            backends,
            decap_modes: Vec::with_capacity(n),
            decap: Vec::with_capacity(n),
            router_xdp: Vec::new(),
            servers: (0..n).map(|_| None).collect(),
            server_bin,
        };
        // On error `topo` is dropped, which removes what was built so far.
        topo.wire()?;
        if decap == BackendDecap::TestBed {
            topo.attach_decap()?;
        }
        topo.attach_router_xdp()?;
        for j in 0..n {
            topo.start_server(j)?;
        }
        topo.wait_servers_ready()?;
        log::info!(
            "test bed up: {} clients, {} backends, namespaces {:?}",
            topo.clients.len(),
            topo.backends.len(),
            topo.namespace_names()
        );
        Ok(topo)
    }

    fn wire(&self) -> Result<()> {
        let off = "0";
        // Namespace-wide settings first: `default` applies to the
        // interfaces created afterwards.
        fn with_ipv6<'a>(settings: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
            [IPV6_SYSCTLS, settings].concat()
        }
        self.router.sysctls(&with_ipv6(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", off),
            ("net.ipv4.conf.default.rp_filter", off),
            ("net.ipv6.conf.all.forwarding", "1"),
        ]))?;
        for lb in self.lb_hosts() {
            // Forwarding also because the data path's FIB lookups
            // (bpf_fib_lookup) fail on an interface that does not forward.
            lb.ns.sysctls(&with_ipv6(&[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", off),
                ("net.ipv4.conf.default.rp_filter", off),
                ("net.ipv4.conf.all.accept_local", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
            ]))?;
        }
        if !self.extra_lbs.is_empty() {
            // ECMP over the LB nodes by the L4 hash, as an upstream router
            // in front of Maglev nodes does, and no next hop over a dead link.
            self.router.sysctls(&[
                ("net.ipv4.fib_multipath_hash_policy", "1"),
                ("net.ipv4.conf.all.ignore_routes_with_linkdown", "1"),
                ("net.ipv6.fib_multipath_hash_policy", "1"),
                ("net.ipv6.conf.all.ignore_routes_with_linkdown", "1"),
            ])?;
        }
        for c in &self.clients {
            c.ns.sysctls(IPV6_SYSCTLS)?;
        }
        // IPv6 has no reverse-path filter to turn off for the VIPs on `lo`
        // (nor accept_local: a packet from a local address is not dropped).
        for b in &self.backends {
            b.ns.sysctls(&with_ipv6(&[
                ("net.ipv4.conf.all.rp_filter", off),
                ("net.ipv4.conf.default.rp_filter", off),
                ("net.ipv4.conf.lo.rp_filter", off),
            ]))?;
        }

        let mut router_cmds = Vec::new();
        // Clients.
        for c in &self.clients {
            veth(&c.ns, &c.ifname, &self.router, &c.router_if)?;
            c.ns.ip_batch(&c.address_cmds())?;
            router_cmds.extend(c.router_address_cmds());
            c.ns.exec(&["ethtool", "-K", &c.ifname, "tx", "off"])?;
        }
        // LB nodes.
        if self.shared_segment {
            router_cmds.push(format!("link add {SHARED_BRIDGE} type bridge"));
            router_cmds.push(format!("link set {SHARED_BRIDGE} up"));
            router_cmds.push(format!("addr add {LB_GATEWAY}/24 dev {SHARED_BRIDGE}"));
            router_cmds.push(format!(
                "addr add {LB_GATEWAY6}/{LINK_PREFIX6} dev {SHARED_BRIDGE} nodad"
            ));
        }
        for lb in self.lb_hosts() {
            veth(&lb.ns, &lb.ifname, &self.router, &lb.router_if)?;
            let mut cmds = vec![format!("link set {} mtu {INNER_MTU}", lb.ifname)];
            cmds.extend(lb.address_cmds());
            lb.ns.ip_batch(&cmds)?;
            lb.ns.sysctls(&[
                (&format!("net.ipv4.conf.{}.accept_local", lb.ifname), "1"),
                (&format!("net.ipv4.conf.{}.rp_filter", lb.ifname), off),
            ])?;
            // The LB itself may originate traffic (health checks).
            lb.ns.exec(&["ethtool", "-K", &lb.ifname, "tx", "off"])?;
            router_cmds.push(format!("link set {} mtu {INNER_MTU}", lb.router_if));
            if self.shared_segment {
                router_cmds.push(format!("link set {} master {SHARED_BRIDGE}", lb.router_if));
            } else {
                router_cmds.extend(lb.router_address_cmds());
            }
            // XDP_TX from native XDP on the LB's eth0 needs NAPI on the peer veth:
            // GRO turns it on, and `attach_router_xdp` adds an XDP program,
            // without which frames were seen stuck in the peer's queue for
            // seconds on this kernel.
            self.router
                .exec(&["ethtool", "-K", &lb.router_if, "gro", "on"])?;
        }
        // Backends.
        for b in &self.backends {
            veth(&b.ns, &b.ifname, &self.router, &b.router_if)?;
            let mut cmds = vec![format!("link set {} mtu {INNER_MTU}", b.ifname)];
            cmds.extend(b.address_cmds());
            for vip in &self.spec.vips {
                cmds.push(format!("addr add {vip}/{} dev lo", host_prefix(*vip)));
            }
            b.ns.ip_batch(&cmds)?;
            // IPv6 needs no counterpart of arp_ignore: neighbour discovery
            // answers only for addresses of the interface asked on, never
            // for the VIPs on `lo`.
            b.ns.sysctls(&[
                (&format!("net.ipv4.conf.{}.rp_filter", b.ifname), off),
                (&format!("net.ipv4.conf.{}.arp_ignore", b.ifname), "1"),
                (&format!("net.ipv4.conf.{}.arp_announce", b.ifname), "2"),
            ])?;
            b.ns.exec(&["ethtool", "-K", &b.ifname, "tx", "off"])?;
            router_cmds.push(format!("link set {} mtu {INNER_MTU}", b.router_if));
            router_cmds.extend(b.router_address_cmds());
        }
        // Router: VIPs via the LB (several nodes: the caller's routes, or
        // on the shared segment).
        for vip in &self.spec.vips {
            let prefix = host_prefix(*vip);
            if self.shared_segment {
                router_cmds.push(format!("route add {vip}/{prefix} dev {SHARED_BRIDGE}"));
            } else if self.extra_lbs.is_empty() {
                let via: IpAddr = match vip {
                    IpAddr::V4(_) => self.lb.addr.into(),
                    IpAddr::V6(_) => self.lb.addr6.into(),
                };
                router_cmds.push(format!("route add {vip}/{prefix} via {via}"));
            }
        }
        self.router.ip_batch(&router_cmds)?;
        Ok(())
    }

    /// Attaches `decap` with an empty address set (so it passes every
    /// packet untouched) to the router's LB-facing veth, in native mode: a
    /// veth delivers frames XDP_TX'd into it by its peer promptly only when
    /// it runs an XDP program itself.
    fn attach_router_xdp(&mut self) -> Result<()> {
        let ifnames: Vec<String> = self.lb_hosts().map(|h| h.router_if.clone()).collect();
        for ifname in ifnames {
            let mut ebpf = loader::load_decap(&[], &[])
                .context("loading the router's pass-through XDP program")?;
            let attached = self.router.run(|| -> Result<()> {
                loader::xdp_program(&mut ebpf, names::DECAP_PROGRAM)?
                    .attach(&ifname, XdpMode::Driver)
                    .with_context(|| {
                        format!("attaching pass-through XDP to the router's {ifname}")
                    })?;
                Ok(())
            });
            self.router_xdp.push(ebpf);
            attached?;
        }
        Ok(())
    }

    fn attach_decap(&mut self) -> Result<()> {
        for b in &self.backends {
            // GUE VIPs of the tests use the default port; tunnels come
            // to either of the backend's addresses.
            let mut ebpf = loader::load_decap(
                &[b.addr.into(), b.addr6.into()],
                &[lb_common::DEFAULT_GUE_PORT],
            )
            .with_context(|| format!("loading decap for backend {}", b.name))?;
            let ifname = b.ifname.as_str();
            let mode = b.ns.run(|| -> Result<XdpMode> {
                let program = loader::xdp_program(&mut ebpf, names::DECAP_PROGRAM)?;
                match program.attach(ifname, XdpMode::Driver) {
                    Ok(_) => Ok(XdpMode::Driver),
                    Err(native) => {
                        program.attach(ifname, XdpMode::Skb).with_context(|| {
                            format!(
                                "attaching decap to {ifname} (native mode failed too: {native})"
                            )
                        })?;
                        log::warn!(
                            "decap: native XDP refused on {ifname} ({native}); using SKB mode"
                        );
                        Ok(XdpMode::Skb)
                    }
                }
            });
            // Keep the handle even if attaching failed: Drop releases it
            // inside the namespace.
            self.decap.push(Some(ebpf));
            let mode = mode.with_context(|| format!("backend {}", b.name))?;
            log::info!("decap attached to {}:{ifname} in {mode:?} mode", b.name);
            self.decap_modes.push(mode);
        }
        Ok(())
    }

    /// Starts backend `j`'s server (if the spec has ports and it is not
    /// running). Does not wait for it to listen; see [`Topology::wait_server_ready`].
    pub fn start_server(&mut self, j: usize) -> Result<()> {
        ensure!(j < self.backends.len(), "no backend {j}");
        let Some(bin) = self.server_bin.as_ref() else {
            return Ok(());
        };
        if self.servers[j].is_some() {
            return Ok(());
        }
        let b = &self.backends[j];
        let bin = bin.to_str().context("server binary path is not UTF-8")?;
        let mut args = vec!["--name".to_string(), b.name.clone()];
        for port in &self.spec.ports {
            args.push("--port".into());
            args.push(port.to_string());
        }
        args.push("--health-port".into());
        args.push(HEALTH_PORT.to_string());
        args.push("--health-file".into());
        args.push(self.sick_file(j).display().to_string());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", b.ns.name(), bin])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {bin} in {}", b.ns.name()))?;
        self.servers[j] = Some(child);
        Ok(())
    }

    /// The file whose existence makes backend `j`'s health endpoint answer 503.
    pub fn sick_file(&self, j: usize) -> PathBuf {
        std::env::temp_dir().join(format!("{}-sick", self.backends[j].ns.name()))
    }

    /// Makes backend `j`'s HTTP health endpoint ([`HEALTH_PORT`]) answer 200
    /// (`healthy`) or 503; its service ports are not affected.
    pub fn set_http_health(&self, j: usize, healthy: bool) -> Result<()> {
        let file = self.sick_file(j);
        if healthy {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).context("removing the sick file")
                }
                _ => Ok(()),
            }
        } else {
            std::fs::write(&file, b"sick").context("writing the sick file")
        }
    }

    /// Stops backend `j`'s server (SIGKILL) and reaps it.
    pub fn stop_server(&mut self, j: usize) -> Result<()> {
        ensure!(j < self.backends.len(), "no backend {j}");
        if let Some(mut child) = self.servers[j].take() {
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("waiting for the server of {}", self.backends[j].name))?;
        }
        Ok(())
    }

    /// Waits until backend `j`'s server answers on every port with its name.
    pub fn wait_server_ready(&mut self, j: usize, timeout: Duration) -> Result<()> {
        ensure!(j < self.backends.len(), "no backend {j}");
        if self.server_bin.is_none() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let b = &self.backends[j];
        for port in &self.spec.ports {
            let target = SocketAddr::from((b.addr, *port));
            loop {
                let attempt = b.ns.run(|| -> Result<String> {
                    let (name, _) = connect_and_read_name(target, Duration::from_millis(500))?;
                    Ok(name)
                });
                match attempt {
                    Ok(name) if name == b.name => break,
                    Ok(name) => bail!("server at {target} in {} calls itself {name:?}", b.name),
                    Err(e) => {
                        if let Some(child) = self.servers[j].as_mut() {
                            if let Some(status) = child.try_wait()? {
                                self.servers[j] = None;
                                bail!(
                                    "the server of {} exited ({status}) before listening",
                                    b.name
                                );
                            }
                        } else {
                            bail!("the server of {} is not running", b.name);
                        }
                        if Instant::now() > deadline {
                            return Err(e.context(format!(
                                "the server of {} does not answer on {target}",
                                b.name
                            )));
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        Ok(())
    }

    fn wait_servers_ready(&mut self) -> Result<()> {
        for j in 0..self.backends.len() {
            self.wait_server_ready(j, SERVER_READY_TIMEOUT)?;
        }
        Ok(())
    }

    // ---- accessors ----

    pub fn router_ns(&self) -> &Netns {
        &self.router
    }

    pub fn lb_ns(&self) -> &Netns {
        &self.lb.ns
    }

    /// Every LB node: `lb`, then those of [`Topology::build_multi`].
    pub fn lb_hosts(&self) -> impl Iterator<Item = &Host> {
        std::iter::once(&self.lb).chain(self.extra_lbs.iter())
    }

    /// LB node `k` (0 is `lb`).
    pub fn lb_host(&self, k: usize) -> &Host {
        if k == 0 {
            &self.lb
        } else {
            &self.extra_lbs[k - 1]
        }
    }

    /// Number of LB nodes.
    pub fn lb_nodes(&self) -> usize {
        1 + self.extra_lbs.len()
    }

    pub fn lb_addr(&self) -> Ipv4Addr {
        self.lb.addr
    }

    pub fn lb_addr6(&self) -> Ipv6Addr {
        self.lb.addr6
    }

    /// The router's interface towards the LB (in [`Topology::router_ns`]).
    pub fn lb_peer_if(&self) -> &str {
        &self.lb.router_if
    }

    /// The router's address on the LB link (the LB's next hop).
    pub fn lb_peer_addr(&self) -> Ipv4Addr {
        self.lb.gateway
    }

    /// The router's IPv6 address on the LB link.
    pub fn lb_peer_addr6(&self) -> Ipv6Addr {
        self.lb.gateway6
    }

    pub fn client_ns(&self, i: usize) -> &Netns {
        &self.clients[i].ns
    }

    pub fn client_addr(&self, i: usize) -> Ipv4Addr {
        self.clients[i].addr
    }

    pub fn client_addr6(&self, i: usize) -> Ipv6Addr {
        self.clients[i].addr6
    }

    pub fn backend_ns(&self, j: usize) -> &Netns {
        &self.backends[j].ns
    }

    pub fn backend_addr(&self, j: usize) -> Ipv4Addr {
        self.backends[j].addr
    }

    pub fn backend_addr6(&self, j: usize) -> Ipv6Addr {
        self.backends[j].addr6
    }

    pub fn backend_name(&self, j: usize) -> &str {
        &self.backends[j].name
    }

    pub fn backend_names(&self) -> Vec<String> {
        self.backends.iter().map(|b| b.name.clone()).collect()
    }

    /// Backend index of a name returned by the servers ("b2" → 1).
    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.name == name)
    }

    /// The loaded decap object of backend `j` (e.g. to read `DECAP_STATS`).
    pub fn decap_ebpf(&self, j: usize) -> Option<&Ebpf> {
        self.decap.get(j).and_then(Option::as_ref)
    }

    /// Whether backend `j`'s server process is running.
    pub fn server_running(&mut self, j: usize) -> bool {
        match self.servers.get_mut(j).and_then(Option::as_mut) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Every namespace of the topology.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut all = vec![&self.router];
        all.extend(self.lb_hosts().map(|h| &h.ns));
        all.extend(self.clients.iter().map(|h| &h.ns));
        all.extend(self.backends.iter().map(|h| &h.ns));
        all
    }

    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces()
            .iter()
            .map(|n| n.name().to_string())
            .collect()
    }

    // ---- traffic helpers ----

    /// Connects over TCP from client `client` to `addr:port` (either
    /// family) and reads the server's first line (its name). The stream
    /// keeps `timeout` as its read and write timeout.
    pub fn tcp_connect(
        &self,
        client: usize,
        addr: impl Into<IpAddr>,
        port: u16,
        timeout: Duration,
    ) -> Result<(String, TcpStream)> {
        self.tcp_connect_from(client, addr.into(), port, timeout, None)
    }

    /// [`Topology::tcp_connect`] from a thread pinned to CPU `cpu`: its SYN
    /// is sent, and handled by every veth and XDP program on the way, on
    /// that CPU (a veth's peer processes a frame on the sender's CPU). What
    /// makes per-CPU state such as round robin's cursor observable.
    pub fn tcp_connect_on_cpu(
        &self,
        client: usize,
        addr: impl Into<IpAddr>,
        port: u16,
        timeout: Duration,
        cpu: usize,
    ) -> Result<(String, TcpStream)> {
        self.tcp_connect_from(client, addr.into(), port, timeout, Some(cpu))
    }

    fn tcp_connect_from(
        &self,
        client: usize,
        addr: IpAddr,
        port: u16,
        timeout: Duration,
        cpu: Option<usize>,
    ) -> Result<(String, TcpStream)> {
        let c = self.clients.get(client).context("no such client")?;
        let target = SocketAddr::from((addr, port));
        c.ns.run(|| {
            if let Some(cpu) = cpu {
                pin_thread_to_cpu(cpu)?;
            }
            connect_and_read_name(target, timeout)
        })
        .with_context(|| format!("TCP from {} to {target}", c.name))
    }

    /// Sends one UDP datagram from client `client` (source port `src_port`,
    /// 0 = any) to `addr:port` (either family) and returns the name in the
    /// reply (`NAME payload`). Fails unless the reply echoes `payload`.
    pub fn udp_ask(
        &self,
        client: usize,
        src_port: u16,
        addr: impl Into<IpAddr>,
        port: u16,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<String> {
        let c = self.clients.get(client).context("no such client")?;
        let target = SocketAddr::new(addr.into(), port);
        c.ns.run(|| -> Result<String> {
            let socket = bind_udp(target, src_port)?;
            // Connected: only replies from `target` are accepted.
            socket.connect(target).context("connecting")?;
            socket.set_read_timeout(Some(timeout))?;
            socket.send(payload).context("sending")?;
            let mut buf = vec![0u8; 65536];
            let n = socket.recv(&mut buf).map_err(|e| match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                    anyhow::anyhow!("no reply within {timeout:?}")
                }
                _ => anyhow::Error::new(e).context("receiving"),
            })?;
            let reply = &buf[..n];
            let Some(space) = reply.iter().position(|b| *b == b' ') else {
                bail!("malformed reply {:?}", String::from_utf8_lossy(reply));
            };
            if &reply[space + 1..] != payload {
                bail!(
                    "reply does not echo the payload: {:?}",
                    String::from_utf8_lossy(reply)
                );
            }
            Ok(String::from_utf8_lossy(&reply[..space]).into_owned())
        })
        .with_context(|| format!("UDP from {} to {target}", c.name))
    }
}

/// Binds a UDP socket of `target`'s family to `src_port` (0 = any). A port
/// the last flow just closed can still be held for a moment by a process
/// this test process forks (the child holds a copy of our descriptors until
/// it execs), so "address in use" is retried for up to 2 s.
fn bind_udp(target: SocketAddr, src_port: u16) -> Result<UdpSocket> {
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match UdpSocket::bind((any, src_port)) {
            Err(e) if e.kind() == ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            result => return result.with_context(|| format!("binding UDP port {src_port}")),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for j in 0..self.backends.len() {
            let _ = std::fs::remove_file(self.sick_file(j));
        }
        for j in 0..self.servers.len() {
            if let Err(e) = self.stop_server(j) {
                log::warn!("{e:#}");
            }
        }
        for ebpf in std::mem::take(&mut self.router_xdp) {
            let cell = Mutex::new(Some(ebpf));
            if let Err(e) = self.router.try_run(|| {
                if let Ok(mut guard) = cell.lock() {
                    drop(guard.take());
                }
            }) {
                log::warn!("releasing the router's XDP program: {e:#}");
            }
        }
        // Release the decap programs inside their namespaces: a link attached
        // through the netlink fallback is detached by interface index, which
        // must be resolved in the backend's namespace, not in ours.
        for (j, slot) in self.decap.iter_mut().enumerate() {
            let Some(ebpf) = slot.take() else {
                continue;
            };
            let Some(b) = self.backends.get(j) else {
                std::mem::forget(ebpf);
                continue;
            };
            let cell = Mutex::new(Some(ebpf));
            let dropped = b.ns.try_run(|| {
                if let Ok(mut guard) = cell.lock() {
                    drop(guard.take());
                }
            });
            if let Err(e) = dropped {
                log::warn!("releasing decap of {}: {e:#}", b.name);
            }
            if let Ok(mut guard) = cell.lock() {
                // Never entered the namespace: leak rather than detach from
                // an interface of the same index in the wrong namespace. The
                // namespace's deletion detaches it.
                if let Some(ebpf) = guard.take() {
                    std::mem::forget(ebpf);
                }
            };
        }
        // The namespaces (fields) are deleted next, in Netns::drop.
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_thread_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity
    // only read and write it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// Connects to `target` (in the calling thread's namespace) and reads the
/// server's first line.
fn connect_and_read_name(target: SocketAddr, timeout: Duration) -> Result<(String, TcpStream)> {
    let mut stream = TcpStream::connect_timeout(&target, timeout)
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    // Byte by byte: nothing after the newline may be consumed.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => bail!("{target} closed before sending its name"),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                ensure!(line.len() <= 256, "{target} sent no name line");
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("reading the name from {target}")),
        }
    }
    Ok((String::from_utf8_lossy(&line).into_owned(), stream))
}

/// Echoes a round of `size` bytes on every connection (named by its
/// backend); panics naming the one that failed.
pub fn echo_all(connections: &mut [(String, TcpStream)], round: u8, size: usize) {
    for (i, (name, stream)) in connections.iter_mut().enumerate() {
        let data = vec![round ^ i as u8; size];
        let back = echo_roundtrip(stream, &data)
            .unwrap_or_else(|e| panic!("connection {i} to {name}, round {round}: {e:#}"));
        assert_eq!(back, data, "connection {i} to {name}, round {round}");
    }
}

/// Sends `data` on `stream` and reads the same number of bytes back.
pub fn echo_roundtrip(stream: &mut TcpStream, data: &[u8]) -> Result<Vec<u8>> {
    stream.write_all(data).context("sending")?;
    let mut back = vec![0u8; data.len()];
    stream.read_exact(&mut back).context("reading the echo")?;
    Ok(back)
}

/// `(rx_packets, tx_packets)` of interface `ifname` inside `ns`.
pub fn link_stats(ns: &Netns, ifname: &str) -> Result<(u64, u64)> {
    ns.link_stats(ifname)
}

fn validate(spec: &TopologySpec, lb_nodes: usize) -> Result<()> {
    ensure!(
        (2..=245).contains(&spec.clients),
        "TopologySpec.clients must be 2..=245, not {}",
        spec.clients
    );
    ensure!(
        (1..=254).contains(&spec.backends),
        "TopologySpec.backends must be 1..=254, not {}",
        spec.backends
    );
    ensure!(
        !spec.ports.contains(&0),
        "TopologySpec.ports may not contain 0"
    );
    // Network address (198.B.C.0) of every link; its IPv6 twin is the /64.
    let links: Vec<Ipv4Addr> = (0..lb_nodes)
        .map(lb_node_gateway)
        .chain((0..spec.clients).map(client_gateway))
        .chain((0..spec.backends).map(backend_gateway))
        .map(|gateway| Ipv4Addr::from(u32::from(gateway) & !0xff))
        .collect();
    for (k, vip) in spec.vips.iter().enumerate() {
        let in_link = match vip {
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                ensure!(
                    a == 198 && (b == 18 || b == 19),
                    "VIP {vip} is outside 198.18.0.0/15"
                );
                links.contains(&Ipv4Addr::from(u32::from(*v4) & !0xff))
            }
            IpAddr::V6(v6) => {
                let groups = v6.segments();
                ensure!(
                    groups[..2] == [0x2001, 0xdb8],
                    "VIP {vip} is outside 2001:db8::/32"
                );
                links
                    .iter()
                    .any(|net| ipv6_of(*net).segments()[..4] == groups[..4])
            }
        };
        ensure!(
            !in_link,
            "VIP {vip} lies inside one of the test bed's link subnets"
        );
        ensure!(!spec.vips[..k].contains(vip), "VIP {vip} is listed twice");
    }
    Ok(())
}

/// Prefix length of a single address of `addr`'s family (32 or 128).
fn host_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Finds `lb-backend-server`: `$LB_BACKEND_SERVER` if set, else next to the
/// current executable or in its parent directory (integration tests run
/// from `target/<profile>/deps`, binaries sit in `target/<profile>`).
pub fn locate_server_bin() -> Result<PathBuf> {
    locate_bin(SERVER_BIN, SERVER_BIN_ENV)
}

/// Finds one of the workspace's binaries: `$env` if set, else next to the
/// current executable or one directory up (tests run from
/// `target/<profile>/deps`, binaries sit in `target/<profile>`).
pub fn locate_bin(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        ensure!(path.is_file(), "{env}={} is not a file", path.display());
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    let mut tried = Vec::new();
    let mut dir: Option<&Path> = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
        dir = d.parent();
    }
    bail!(
        "{name} not found (tried {}); build it with `cargo build --workspace --bins` \
         (cargo xtask test does) or set {env}",
        tried.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_twins_read_like_the_ipv4_addresses() {
        assert_eq!(LB_ADDR6, "2001:db8:18:1::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(LB_GATEWAY6, "2001:db8:18:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(client_addr6(0).to_string(), "2001:db8:18:10::2");
        assert_eq!(client_gateway6(244).to_string(), "2001:db8:18:254::1");
        assert_eq!(backend_addr6(253).to_string(), "2001:db8:19:254::2");
        assert_eq!(lb_node_addr6(7).to_string(), "2001:db8:18:8::2");
        assert_eq!(
            ipv6_of(Ipv4Addr::new(198, 18, 0, 10)).to_string(),
            "2001:db8:18::10"
        );
    }

    #[test]
    fn vips_of_both_families_are_checked() {
        let spec = |vip: &str| TopologySpec {
            vips: vec![vip.parse().unwrap()],
            ..TopologySpec::default()
        };
        for good in ["198.18.0.10", "2001:db8:18::10", "2001:db8:ff::1"] {
            assert!(validate(&spec(good), 1).is_ok(), "{good}");
        }
        for bad in [
            "10.0.0.1",
            "198.18.10.7",
            "2001:db9::1",
            "2001:db8:18:10::7",
            "2001:db8:19:2::9",
            "2001:db8:18:1::9",
        ] {
            assert!(validate(&spec(bad), 1).is_err(), "{bad}");
        }
    }
}
