//! The network-namespace test bed itself, without the load balancer: hosts
//! reach each other, the backend servers answer, and nothing is left behind.
//!
//! Needs root. Every test builds its own topology, so they run in parallel.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{
    netns::{self, Netns},
    topology::{echo_roundtrip, link_stats, Topology, TopologySpec},
};

const PORT: u16 = 8080;
const PORT2: u16 = 9090;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const TIMEOUT: Duration = Duration::from_secs(3);

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the test bed tests create network namespaces and must run as root"
    );
}

fn spec() -> TopologySpec {
    TopologySpec {
        clients: 2,
        backends: 2,
        vips: vec![VIP.into()],
        ports: vec![PORT, PORT2],
    }
}

fn build() -> Topology {
    require_root();
    Topology::build(spec()).unwrap_or_else(|e| panic!("building the test bed: {e:#}"))
}

/// Names in `ip netns list`.
fn listed_namespaces() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("running ip netns list");
    assert!(out.status.success(), "ip netns list failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Links of the root namespace whose name starts with `lbt`.
fn root_lbt_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("running ip link show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("lbt"))
        .collect()
}

fn assert_gone(names: &[String]) {
    let listed = listed_namespaces();
    let left: Vec<&String> = names.iter().filter(|n| listed.contains(*n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let links = root_lbt_links();
    assert!(
        links.is_empty(),
        "lbt links in the root namespace: {links:?}"
    );
}

#[test]
fn client_reaches_backend_directly_over_tcp_and_udp() {
    let topo = build();
    assert_eq!(topo.backend_names(), ["b1", "b2"]);
    assert_eq!(topo.client_addr(0), Ipv4Addr::new(198, 18, 10, 2));
    assert_eq!(topo.backend_addr(1), Ipv4Addr::new(198, 19, 2, 2));
    assert_eq!(topo.lb_addr(), Ipv4Addr::new(198, 18, 1, 2));
    assert_eq!(topo.lb_if, "eth0");

    for port in [PORT, PORT2] {
        let (name, mut stream) = topo
            .tcp_connect(0, topo.backend_addr(1), port, TIMEOUT)
            .unwrap_or_else(|e| panic!("TCP to backend 1 port {port}: {e:#}"));
        assert_eq!(name, "b2", "TCP answered by the wrong server");
        let echoed = echo_roundtrip(&mut stream, b"hello test bed\n")
            .unwrap_or_else(|e| panic!("TCP echo: {e:#}"));
        assert_eq!(echoed, b"hello test bed\n");

        let name = topo
            .udp_ask(0, 0, topo.backend_addr(1), port, b"ping", TIMEOUT)
            .unwrap_or_else(|e| panic!("UDP to backend 1 port {port}: {e:#}"));
        assert_eq!(name, "b2", "UDP answered by the wrong server");
    }
    // From the other client, to the other backend, with a fixed source port.
    let name = topo
        .udp_ask(1, 40000, topo.backend_addr(0), PORT, b"x", TIMEOUT)
        .unwrap_or_else(|e| panic!("UDP from client 1 to backend 0: {e:#}"));
    assert_eq!(name, "b1");

    // The VIP sits on the backends' lo; servers answer on it from there.
    let (name, _) = topo
        .backend_ns(0)
        .run(|| -> anyhow::Result<(String, TcpStream)> {
            let mut s = TcpStream::connect_timeout(&SocketAddr::from((VIP, PORT)), TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            let mut buf = [0u8; 3];
            std::io::Read::read_exact(&mut s, &mut buf)?;
            Ok((String::from_utf8_lossy(&buf).into_owned(), s))
        })
        .unwrap_or_else(|e| panic!("VIP on backend 0's lo: {e:#}"));
    assert_eq!(name, "b1\n");

    // Decap is attached on every backend's eth0.
    for j in 0..2 {
        let link = topo
            .backend_ns(j)
            .ip(&["link", "show", "eth0"])
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            link.contains("xdp"),
            "no XDP program on backend {j}: {link}"
        );
        assert!(topo.decap_ebpf(j).is_some());
    }
    assert_eq!(topo.decap_modes.len(), 2);
    eprintln!("decap attach modes: {:?}", topo.decap_modes);

    // Counters move.
    let (rx, tx) = link_stats(topo.client_ns(0), "eth0").unwrap_or_else(|e| panic!("{e:#}"));
    assert!(rx > 0 && tx > 0, "client 0 eth0 counters: rx {rx} tx {tx}");
}

#[test]
fn client_reaches_router_and_routing_is_in_place() {
    let topo = build();
    let gateway = Ipv4Addr::new(198, 18, 10, 1);
    let have_ping = Command::new("ping").arg("-V").output().is_ok();
    if have_ping {
        topo.client_ns(0)
            .exec(&["ping", "-c1", "-W2", &gateway.to_string()])
            .unwrap_or_else(|e| panic!("ping from client 0 to the router: {e:#}"));
    } else {
        // No ping here: a TCP SYN to a closed port of the router must come
        // back as a reset (connection refused), not time out.
        let result = topo.client_ns(0).run(|| {
            TcpStream::connect_timeout(&SocketAddr::from((gateway, 9)), TIMEOUT).map(|_| ())
        });
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => panic!("expected the router to refuse port 9, got {other:?}"),
        }
    }
    // Client 1 reaches the LB's address through the router (the LB has no
    // XDP yet, so its kernel answers with a reset).
    let result = topo.client_ns(1).run(|| {
        TcpStream::connect_timeout(&SocketAddr::from((topo.lb_addr(), 9)), TIMEOUT).map(|_| ())
    });
    assert!(
        matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "expected the LB to refuse port 9, got {result:?}"
    );

    // Router: the VIP is routed to the LB.
    let route = topo
        .router_ns()
        .ip(&["route", "get", &VIP.to_string()])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        route.contains("via 198.18.1.2"),
        "VIP not routed via the LB: {route}"
    );
    assert_eq!(
        topo.router_ns()
            .sysctl_get("net.ipv4.ip_forward")
            .unwrap_or_else(|e| panic!("{e:#}")),
        "1"
    );
    // LB settings.
    let lb = topo.lb_ns();
    for (key, want) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.accept_local", "1"),
        ("net.ipv4.conf.eth0.accept_local", "1"),
        ("net.ipv4.conf.eth0.rp_filter", "0"),
    ] {
        let got = lb.sysctl_get(key).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(got, want, "LB {key}");
    }
    let mtu = lb
        .exec(&["cat", "/sys/class/net/eth0/mtu"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(mtu.trim(), "1600");
    let gro = topo
        .router_ns()
        .exec(&["ethtool", "-k", topo.lb_peer_if()])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        gro.contains("generic-receive-offload: on"),
        "GRO off on the router's LB-facing veth: {gro}"
    );
    // Backend ARP settings.
    let b = topo.backend_ns(0);
    assert_eq!(
        b.sysctl_get("net.ipv4.conf.eth0.arp_ignore")
            .unwrap_or_else(|e| panic!("{e:#}")),
        "1"
    );
    assert_eq!(
        b.sysctl_get("net.ipv4.conf.eth0.arp_announce")
            .unwrap_or_else(|e| panic!("{e:#}")),
        "2"
    );
}

#[test]
fn dropping_the_topology_removes_everything() {
    let topo = build();
    let names = topo.namespace_names();
    assert_eq!(names.len(), 6, "router + lb + 2 clients + 2 backends");
    let listed = listed_namespaces();
    for n in &names {
        assert!(n.starts_with(&format!("lbt{}-", std::process::id())), "{n}");
        assert!(listed.contains(n), "{n} not in ip netns list");
    }
    drop(topo);
    assert_gone(&names);
}

#[test]
fn a_panic_still_removes_everything() {
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let topo = build();
        *names.lock().expect("lock") = topo.namespace_names();
        panic!("deliberate panic with a live topology");
    });
    assert!(result.is_err(), "the closure should have panicked");
    let names = names.into_inner().expect("lock");
    assert_eq!(names.len(), 6);
    assert_gone(&names);
}

#[test]
fn netns_run_exec_and_veth() {
    require_root();
    let a = Netns::new("ta").unwrap_or_else(|e| panic!("{e:#}"));
    let b = Netns::new("tb").unwrap_or_else(|e| panic!("{e:#}"));
    netns::veth(&a, "eth0", &b, "lbt-peer").unwrap_or_else(|e| panic!("{e:#}"));
    a.ip(&["addr", "add", "198.18.250.1/24", "dev", "eth0"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    b.ip(&["addr", "add", "198.18.250.2/24", "dev", "lbt-peer"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    // A listener created inside `b` keeps working from this thread.
    let listener = b
        .run(|| std::net::TcpListener::bind("198.18.250.2:7000"))
        .unwrap_or_else(|e| panic!("bind in b: {e}"));
    let stream = a
        .run(|| TcpStream::connect_timeout(&"198.18.250.2:7000".parse().expect("addr"), TIMEOUT))
        .unwrap_or_else(|e| panic!("connect from a: {e}"));
    let (_, peer) = listener.accept().expect("accept");
    assert_eq!(peer.ip(), Ipv4Addr::new(198, 18, 250, 1));
    drop(stream);
    // Errors carry stderr.
    let err = a
        .exec(&["ip", "link", "show", "nosuchdev"])
        .expect_err("showing a missing device must fail");
    assert!(format!("{err:#}").contains("nosuchdev"), "{err:#}");
    // A spawned process is killed when its namespace goes away.
    let mut child = a
        .spawn("sleep", &["600"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let names = vec![a.name().to_string(), b.name().to_string()];
    drop(a);
    drop(b);
    let status = child.wait().expect("wait sleep");
    assert!(!status.success(), "sleep should have been killed");
    assert_gone(&names);
}

#[test]
fn reap_orphans_removes_namespaces_of_dead_processes() {
    require_root();
    // Topologies built by the other tests reap too: none may reap our fake
    // orphan (under a live `ip netns exec`) before we do.
    let reaper = netns::hold_reaper();
    // A pid that surely is dead: a child we started and reaped.
    let mut child = Command::new("true").spawn().expect("spawning true");
    let dead_pid = child.id();
    child.wait().expect("waiting for true");
    let orphan = format!("lbt{dead_pid}-0-orphan");
    let alive = format!("lbt{}-999999-notorphan", std::process::id());
    for name in [&orphan, &alive] {
        let st = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip netns add");
        assert!(st.success(), "ip netns add {name}");
    }
    // A process left running inside the orphan is killed too.
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &orphan, "sleep", "600"])
        .spawn()
        .expect("spawning sleep in the orphan");
    // `ip netns exec` opens the namespace before it enters it: reaping before
    // it has entered would delete the namespace under it and leave the sleep
    // running. Wait until the kernel lists it inside.
    let entered = Instant::now() + Duration::from_secs(30);
    while !namespace_has_processes(&orphan) {
        if Instant::now() > entered {
            let _ = sleeper.kill();
            let _ = Command::new("ip").args(["netns", "del", &orphan]).status();
            let _ = Command::new("ip").args(["netns", "del", &alive]).status();
            panic!("sleep never entered namespace {orphan}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let reaped = reaper.reap_orphans();
    drop(reaper);
    // Clean up our own before asserting, so a failure leaves nothing behind.
    let _ = Command::new("ip").args(["netns", "del", &alive]).status();
    let reaped = reaped.unwrap_or_else(|e| panic!("reap_orphans: {e:#}"));
    let listed = listed_namespaces();
    if listed.contains(&orphan) {
        let _ = sleeper.kill();
        let _ = Command::new("ip").args(["netns", "del", &orphan]).status();
        panic!("orphan {orphan} survived reap_orphans (reaped {reaped:?})");
    }
    assert!(
        !reaped.contains(&alive),
        "reap_orphans removed a namespace of a live process"
    );
    // Bounded: a sleeper that survived must fail the test, not hang it.
    let status = lb_tests::agent::wait_or_kill(&mut sleeper, Duration::from_secs(10))
        .expect("wait sleep")
        .unwrap_or_else(|| panic!("the orphan's process still ran 10 s after reap_orphans"));
    assert!(
        !status.success(),
        "the orphan's process should have been killed"
    );
}

/// Whether `ip netns pids` lists any process inside `name`.
fn namespace_has_processes(name: &str) -> bool {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|out| out.status.success() && !out.stdout.trim_ascii().is_empty())
        .unwrap_or(false)
}

#[test]
fn servers_take_many_concurrent_connections() {
    let topo = build();
    let target = topo.backend_addr(0);
    // Open them all first, so they are concurrent, then echo on each.
    let mut streams: Vec<TcpStream> = (0..300)
        .map(|k| {
            let (name, stream) = topo
                .tcp_connect(1, target, PORT, TIMEOUT)
                .unwrap_or_else(|e| panic!("connection {k}: {e:#}"));
            assert_eq!(name, "b1");
            stream
        })
        .collect();
    for (k, stream) in streams.iter_mut().enumerate() {
        let msg = format!("message {k}\n");
        let back = echo_roundtrip(stream, msg.as_bytes()).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(back, msg.as_bytes());
    }
    // Many UDP source ports.
    for src_port in 41000..41100 {
        let name = topo
            .udp_ask(0, src_port, target, PORT2, b"u", TIMEOUT)
            .unwrap_or_else(|e| panic!("UDP from port {src_port}: {e:#}"));
        assert_eq!(name, "b1");
    }
}
