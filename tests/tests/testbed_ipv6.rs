//! The test bed's IPv6, without the load balancer: every host has its
//! 2001:db8::/32 twin address, clients and backends reach each other through
//! the router, `lb-backend-server` answers IPv6 with its name, and a VIP on
//! a backend's `lo` answers an IPv6 client directly (what the backend sees
//! once its decap has stripped a tunnel).
//!
//! Needs root. Every test builds its own topology, so they run in parallel.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use lb_tests::topology::{
    backend_addr6, client_addr6, echo_roundtrip, Topology, TopologySpec, HEALTH_PORT, HOST_IF,
    LB_ADDR6, LB_GATEWAY6, SHARED_BRIDGE,
};

const PORT: u16 = 8080;
const PORT2: u16 = 9090;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0x10);
const TIMEOUT: Duration = Duration::from_secs(3);

fn spec() -> TopologySpec {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the test bed tests create network namespaces and must run as root"
    );
    TopologySpec {
        clients: 2,
        backends: 2,
        vips: vec![VIP.into(), VIP6.into()],
        ports: vec![PORT, PORT2],
    }
}

fn build() -> Topology {
    Topology::build(spec()).unwrap_or_else(|e| panic!("building the test bed: {e:#}"))
}

/// Panics unless the router's route to the IPv6 VIP says `how`.
fn assert_vip6_routed(topo: &Topology, how: &str) {
    let route = ok(
        topo.router_ns()
            .ip(&["-6", "route", "get", &VIP6.to_string()]),
        "looking up the VIP's route",
    );
    assert!(route.contains(how), "{VIP6} not routed {how}: {route}");
}

/// Whether a TCP SYN from client `i` to `target` comes back refused: the
/// host's kernel answered, so the path there and back works.
fn refused(topo: &Topology, i: usize, target: SocketAddr) -> bool {
    let result = topo
        .client_ns(i)
        .run(|| TcpStream::connect_timeout(&target, TIMEOUT).map(|_| ()));
    matches!(result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

fn ok<T>(result: anyhow::Result<T>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

#[test]
fn addresses_are_static_and_usable_at_once() {
    let topo = build();
    assert_eq!(topo.lb_addr6(), LB_ADDR6);
    assert_eq!(topo.lb_addr6().to_string(), "2001:db8:18:1::2");
    assert_eq!(topo.lb_peer_addr6().to_string(), "2001:db8:18:1::1");
    assert_eq!(topo.client_addr6(1).to_string(), "2001:db8:18:11::2");
    assert_eq!(topo.backend_addr6(1).to_string(), "2001:db8:19:2::2");
    assert_eq!(topo.client_addr6(0), client_addr6(0));
    assert_eq!(topo.backend_addr6(0), backend_addr6(0));

    let hosts = topo
        .lb_hosts()
        .chain(&topo.clients)
        .chain(&topo.backends)
        .collect::<Vec<_>>();
    for host in &hosts {
        let addrs = ok(
            host.ns.ip(&["-6", "-o", "addr", "show", "dev", HOST_IF]),
            "listing IPv6 addresses",
        );
        let global: Vec<&str> = addrs
            .lines()
            .filter(|l| l.contains("scope global"))
            .collect();
        assert_eq!(
            global.len(),
            1,
            "{}: exactly its planned global address, nothing autoconfigured: {addrs}",
            host.name
        );
        assert!(
            global[0].contains(&format!("{}/64", host.addr6)),
            "{}: eth0 lacks {}/64: {addrs}",
            host.name,
            host.addr6
        );
        for state in ["tentative", "dadfailed"] {
            assert!(
                !addrs.contains(state),
                "{}: an address is {state} (DAD should be off): {addrs}",
                host.name
            );
        }
        let routes = ok(host.ns.ip(&["-6", "route", "show"]), "listing IPv6 routes");
        assert!(
            routes.contains(&format!("default via {} dev {HOST_IF}", host.gateway6)),
            "{}: no IPv6 default route via {}: {routes}",
            host.name,
            host.gateway6
        );
        assert!(
            !routes.contains("proto ra"),
            "{}: a route learned from a router advertisement: {routes}",
            host.name
        );
        for (key, want) in [
            (format!("net.ipv6.conf.{HOST_IF}.accept_ra"), "0"),
            (format!("net.ipv6.conf.{HOST_IF}.autoconf"), "0"),
            (format!("net.ipv6.conf.{HOST_IF}.accept_dad"), "0"),
        ] {
            let got = ok(host.ns.sysctl_get(&key), "reading a sysctl");
            assert_eq!(got, want, "{}: {key}", host.name);
        }
    }
    for (ns, name) in [(topo.router_ns(), "router"), (topo.lb_ns(), "LB")] {
        let got = ok(
            ns.sysctl_get("net.ipv6.conf.all.forwarding"),
            "reading a sysctl",
        );
        assert_eq!(got, "1", "IPv6 forwarding on the {name}");
    }

    // The IPv6 VIP: on every backend's lo as /128, routed to the LB's
    // IPv6 address.
    for j in 0..2 {
        let lo = ok(
            topo.backend_ns(j)
                .ip(&["-6", "-o", "addr", "show", "dev", "lo"]),
            "listing lo",
        );
        assert!(
            lo.contains(&format!("{VIP6}/128")),
            "backend {j}'s lo lacks {VIP6}/128: {lo}"
        );
    }
    assert_vip6_routed(&topo, &format!("via {LB_ADDR6}"));
}

#[test]
fn client_reaches_every_backend_over_ipv6_tcp_udp_and_http() {
    let topo = build();
    for j in 0..2 {
        let addr = topo.backend_addr6(j);
        let want = topo.backend_name(j);
        for port in [PORT, PORT2] {
            let (name, mut stream) = topo
                .tcp_connect(0, addr, port, TIMEOUT)
                .unwrap_or_else(|e| panic!("TCP from client 0 to [{addr}]:{port}: {e:#}"));
            assert_eq!(
                name, want,
                "TCP to [{addr}]:{port} answered by the wrong server"
            );
            // Many full-size IPv6 segments both ways (transmit checksums
            // are off on the senders, MTUs 1500 and 1600 on the path).
            let data: Vec<u8> = (0..100_000u32).map(|k| k as u8).collect();
            let echoed = echo_roundtrip(&mut stream, &data)
                .unwrap_or_else(|e| panic!("TCP echo over IPv6 from {want}: {e:#}"));
            assert!(echoed == data, "{want} echoed other bytes over IPv6");

            let name = topo
                .udp_ask(1, 0, addr, port, b"ping6", TIMEOUT)
                .unwrap_or_else(|e| panic!("UDP from client 1 to [{addr}]:{port}: {e:#}"));
            assert_eq!(
                name, want,
                "UDP to [{addr}]:{port} answered by the wrong server"
            );
        }
        let name = topo
            .udp_ask(0, 40000, addr, PORT, b"fixed source port", TIMEOUT)
            .unwrap_or_else(|e| panic!("UDP from client 0 port 40000 to {want}: {e:#}"));
        assert_eq!(name, want);

        let response = topo
            .client_ns(0)
            .run(|| http_get(SocketAddr::from((addr, HEALTH_PORT))));
        let response = response.unwrap_or_else(|e| panic!("HTTP health of {want} over IPv6: {e}"));
        assert!(
            response.starts_with("HTTP/1.1 200") && response.ends_with(&format!("ok {want}")),
            "health endpoint of {want} over IPv6: {response:?}"
        );
    }
    // IPv4 still reaches the same dual-stack servers.
    let name = ok(
        topo.udp_ask(0, 0, topo.backend_addr(1), PORT, b"v4", TIMEOUT),
        "UDP over IPv4 beside IPv6",
    );
    assert_eq!(name, "b2");
}

#[test]
fn backend_reaches_client_over_ipv6_from_its_own_address() {
    let topo = build();
    let client = topo.client_addr6(1);
    let (listener, udp) = topo.client_ns(1).run(|| {
        let listener = TcpListener::bind((client, 7000)).expect("binding TCP in client 1");
        let udp = UdpSocket::bind((client, 7001)).expect("binding UDP in client 1");
        udp.set_read_timeout(Some(TIMEOUT)).expect("UDP timeout");
        (listener, udp)
    });
    for j in 0..2 {
        let own = IpAddr::from(topo.backend_addr6(j));
        let stream = topo
            .backend_ns(j)
            .run(|| TcpStream::connect_timeout(&SocketAddr::from((client, 7000)), TIMEOUT))
            .unwrap_or_else(|e| panic!("TCP from backend {j} to [{client}]:7000: {e}"));
        let (mut accepted, peer) = listener.accept().expect("accepting the backend");
        assert_eq!(
            peer.ip(),
            own,
            "backend {j} connects from its eth0 address, not a VIP"
        );
        let mut stream = stream;
        stream.write_all(b"from the backend").expect("writing");
        let mut buf = [0u8; 16];
        accepted
            .set_read_timeout(Some(TIMEOUT))
            .expect("read timeout");
        accepted.read_exact(&mut buf).expect("reading");
        assert_eq!(&buf, b"from the backend");

        topo.backend_ns(j)
            .run(|| -> std::io::Result<usize> {
                UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?
                    .send_to(b"datagram", SocketAddr::from((client, 7001)))
            })
            .unwrap_or_else(|e| panic!("UDP from backend {j}: {e}"));
        let mut buf = [0u8; 64];
        let (n, from) = udp
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no datagram from backend {j} at client 1: {e}"));
        assert_eq!(&buf[..n], b"datagram");
        assert_eq!(from.ip(), own, "datagram from backend {j}");
    }
}

/// A packet for the IPv6 VIP arriving on a backend's eth0 from a client,
/// as it does once decap has stripped the LB's tunnel, is accepted on the
/// VIP of `lo` and answered from the VIP straight through the router
/// (direct server return: the backend routes the reply to the router, the
/// only way to the client).
#[test]
fn ipv6_vip_on_a_backend_answers_the_client_directly() {
    let topo = build();
    // Stand-in for the LB and the tunnel: the router hands the VIP's
    // packets to backend 1 itself.
    ok(
        topo.router_ns().ip(&[
            "route",
            "replace",
            &format!("{VIP6}/128"),
            "via",
            &topo.backend_addr6(1).to_string(),
        ]),
        "routing the VIP to backend 1",
    );
    for port in [PORT, PORT2] {
        let (name, mut stream) = topo
            .tcp_connect(0, VIP6, port, TIMEOUT)
            .unwrap_or_else(|e| panic!("TCP from client 0 to [{VIP6}]:{port}: {e:#}"));
        assert_eq!(name, "b2", "TCP to the VIP on port {port}");
        let echoed = ok(echo_roundtrip(&mut stream, b"dsr\n"), "echo via the VIP");
        assert_eq!(echoed, b"dsr\n");
        let peer = stream.peer_addr().expect("the stream's peer address");
        assert_eq!(peer.ip(), IpAddr::from(VIP6), "TCP answered from the VIP");
        // udp_ask's socket is connected to the VIP: a reply from the
        // backend's own address would not be received.
        let name = topo
            .udp_ask(1, 0, VIP6, port, b"to the vip", TIMEOUT)
            .unwrap_or_else(|e| panic!("UDP from client 1 to [{VIP6}]:{port}: {e:#}"));
        assert_eq!(name, "b2", "UDP to the VIP on port {port}");
    }
}

#[test]
fn every_lb_node_has_its_ipv6_address_on_its_own_link_or_the_shared_one() {
    let topo = Topology::build_multi(spec(), 3)
        .unwrap_or_else(|e| panic!("building a bed of 3 LB nodes: {e:#}"));
    for k in 0..3 {
        let addr = topo.lb_host(k).addr6;
        assert_eq!(addr, lb_tests::topology::lb_node_addr6(k));
        assert!(
            refused(&topo, 1, SocketAddr::from((addr, 9))),
            "LB node {k} at {addr} does not answer client 1"
        );
    }
    drop(topo);

    let topo = Topology::build_shared(spec(), 2)
        .unwrap_or_else(|e| panic!("building a shared LB segment: {e:#}"));
    let node1 = topo.lb_host(1).addr6;
    assert_eq!(node1.to_string(), "2001:db8:18:1::3");
    assert_eq!(topo.lb_host(1).gateway6, LB_GATEWAY6);
    assert!(
        refused(&topo, 0, SocketAddr::from((node1, 9))),
        "LB node 1 at {node1} does not answer across the shared segment"
    );
    assert_vip6_routed(&topo, &format!("dev {SHARED_BRIDGE}"));
}

#[test]
fn a_link_taken_down_keeps_its_ipv6_address_and_gets_its_routes_back() {
    let topo = build();
    let lb = topo.lb_host(0);
    for state in ["down", "up"] {
        ok(lb.ns.ip(&["link", "set", HOST_IF, state]), "LB link");
    }
    let addrs = ok(
        lb.ns.ip(&["-6", "addr", "show", "dev", HOST_IF]),
        "LB addresses",
    );
    assert!(
        addrs.contains(&format!("{}/64", lb.addr6)),
        "the LB lost its IPv6 address with its link: {addrs}"
    );
    ok(
        lb.restore_default_routes(),
        "restoring the LB's default routes",
    );
    for target in [
        SocketAddr::from((lb.addr, 9)),
        SocketAddr::from((lb.addr6, 9)),
    ] {
        assert!(
            refused(&topo, 0, target),
            "the LB at {target} is unreachable after its link came back"
        );
    }
}

/// `GET /` over a fresh connection; the whole response.
fn http_get(target: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
