//! ICMP with real traffic in the test bed: `ping` of the VIP is answered
//! by the balancer itself (and not once the VIPs turn `icmp_echo` off),
//! and a TCP client whose path MTU is larger than the tunnel allows still
//! completes a 1 MiB transfer, because the balancer answers its too-big
//! packets with "fragmentation needed" and the client lowers its PMTU; and
//! a router's "fragmentation needed" about the backend's replies reaches
//! that backend through the LB.

use std::time::Duration;

use lb_tests::agent::{agent_config, vip_config, Bed, TEST_VIP};
use serde_json::Value;

/// `ping -c COUNT` of the VIP from client 0: the ping output, and whether
/// it exited 0 (some reply came).
fn ping_vip(bed: &Bed, count: u32) -> (bool, String) {
    let out = bed.topo.client_ns(0).exec(&[
        "ping",
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        &TEST_VIP.to_string(),
    ]);
    match out {
        Ok(text) => (true, text),
        Err(e) => (false, format!("{e:#}")),
    }
}

/// TCP and UDP VIPs on port 8080 with both backends and `icmp_echo` set.
fn config(bed_topo: &lb_tests::topology::Topology, icmp_echo: bool) -> Value {
    let backends = [(bed_topo.backend_addr(0), 1), (bed_topo.backend_addr(1), 1)];
    let mut vips = vec![
        vip_config(TEST_VIP, 8080, "tcp", &backends),
        vip_config(TEST_VIP, 8080, "udp", &backends),
    ];
    for v in &mut vips {
        v["icmp_echo"] = Value::Bool(icmp_echo);
    }
    agent_config(bed_topo, "native", vips)
}

#[test]
fn ping_of_the_vip_is_answered_by_the_balancer_unless_turned_off() {
    let mut bed = Bed::start_with(2, "native", |topo| config(topo, true));
    let before = bed.global_stats();
    let (ok, out) = ping_vip(&bed, 3);
    assert!(
        ok && out.contains("3 received"),
        "ping with icmp_echo on: {out}"
    );
    // The VIP lives on no host's stack in the LB namespace: only the
    // balancer can have answered, with its TTL of 64 (one hop: the router).
    assert!(
        out.contains("ttl=63"),
        "replies come from the balancer: {out}"
    );
    let after = bed.global_stats();
    assert_eq!(
        after.icmp_echo_replies - before.icmp_echo_replies,
        3,
        "{after:?}"
    );

    bed.agent
        .reload(&config(&bed.topo, false))
        .expect("reloading with icmp_echo off");
    let before = bed.global_stats();
    let (ok, out) = ping_vip(&bed, 2);
    assert!(
        !ok && !out.contains(" 2 received") && !out.contains(" 1 received"),
        "ping with icmp_echo off got replies: {out}"
    );
    let after = bed.global_stats();
    assert_eq!(after.icmp_echo_replies, before.icmp_echo_replies);
}

/// Gives the LB's route to the backends a locked MTU of 1400 and empties
/// client 0's route cache.
fn shrink_tunnel_path(bed: &Bed) {
    // The LB's path to the backends carries at most 1400-byte packets
    // (locked, so forwarding and bpf_fib_lookup honour it): an
    // encapsulated 1500-byte client packet (1520 bytes) does not fit. The
    // client's own link is 1500 bytes, so it starts with 1500-byte packets.
    bed.topo
        .lb_ns()
        .ip(&[
            "route",
            "add",
            "198.19.0.0/16",
            "via",
            &bed.topo.lb_peer_addr().to_string(),
            "mtu",
            "lock",
            "1400",
        ])
        .expect("the LB's route to the backends with MTU 1400");
    // No PMTU learnt before the test.
    bed.topo
        .client_ns(0)
        .ip(&["route", "flush", "cache"])
        .expect("flushing the route cache");
}

/// Behind a tunnel path of 1400 bytes, client 0 sends 1 MiB through the
/// VIP: the balancer must tell it the tunnel's MTU (1400 less the outer
/// headers: `pmtu`), which its route cache then shows.
fn transfer_through_a_small_tunnel_path(bed: &Bed, pmtu: u16) {
    shrink_tunnel_path(bed);
    let before = bed.global_stats();

    bed.transfer_1_mib();

    let after = bed.global_stats();
    let sent = after.icmp_frag_needed_sent - before.icmp_frag_needed_sent;
    assert!(
        sent >= 1,
        "the client was told about the tunnel's MTU: {after:?}"
    );
    println!(
        "1 MiB through the VIP; fragmentation needed sent {sent}, rate limited {}",
        after.icmp_rate_limited - before.icmp_rate_limited
    );
    let route = bed
        .topo
        .client_ns(0)
        .ip(&["route", "get", &TEST_VIP.to_string()])
        .expect("ip route get");
    assert!(
        route.contains(&format!("mtu {pmtu}")),
        "the client's PMTU to the VIP: {route}"
    );
}

#[test]
fn a_client_with_a_larger_path_mtu_completes_a_1_mib_transfer() {
    let bed = Bed::start(2, &[Some(1), Some(1)], "native");
    // 1400 - 20 bytes of outer header.
    transfer_through_a_small_tunnel_path(&bed, 1380);
}

/// The same through a GUE VIP: the tunnel takes 28 bytes, so the client
/// learns a PMTU of 1400 - 28.
#[test]
fn a_client_of_a_gue_vip_completes_a_1_mib_transfer() {
    let bed = Bed::start_with(2, "native", |topo| {
        let mut config = config(topo, true);
        if let Some(vips) = config["vips"].as_array_mut() {
            for v in vips {
                v["encap"] = "gue".into();
            }
        }
        config
    });
    transfer_through_a_small_tunnel_path(&bed, 1372);
}

/// The control: with "fragmentation needed" off (`icmp.rate_per_cpu` 0)
/// the same path is a PMTU black hole, and the transfer stalls.
#[test]
fn without_fragmentation_needed_the_transfer_stalls() {
    let bed = Bed::start_with(2, "native", |topo| {
        let mut c = config(topo, true);
        c["icmp"] = serde_json::json!({"rate_per_cpu": 0});
        c
    });
    shrink_tunnel_path(&bed);
    let (_, mut stream) = bed
        .topo
        .tcp_connect(0, TEST_VIP, bed.port, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connecting: {e:#}"));
    let data = vec![0x5a; 64 * 1024];
    let result = lb_tests::topology::echo_roundtrip(&mut stream, &data);
    assert!(
        result.is_err(),
        "64 KiB crossed a tunnel too small for them"
    );
    let stats = bed.global_stats();
    assert!(
        stats.icmp_rate_limited > 0 && stats.icmp_frag_needed_sent == 0,
        "{stats:?}"
    );
}

/// An ICMP error from a router on the client's side reaches the backend
/// that owns the flow: the router's link to the client carries 1400-byte
/// packets while the client asks for 1460-byte segments, so the
/// router answers the backend's replies with "fragmentation needed" to
/// their source, the VIP, which routes to the LB. The LB sends it on to the
/// flow's backend, whose kernel lowers its PMTU to the client: the 1 MiB
/// echo completes.
#[test]
fn a_routers_fragmentation_needed_reaches_the_flows_backend() {
    let bed = Bed::start(2, &[Some(1), Some(1)], "native");
    // A veth drops what exceeds its MTU on receipt too, so the client
    // sends at most 1400 bytes, yet asks for 1460-byte segments.
    bed.topo
        .router_ns()
        .ip(&["link", "set", "lbt-c0", "mtu", "1400"])
        .expect("shrinking the router's link to client 0");
    bed.topo
        .client_ns(0)
        .ip(&[
            "route",
            "replace",
            "default",
            "via",
            &lb_tests::topology::client_gateway(0).to_string(),
            "dev",
            "eth0",
            "mtu",
            "lock",
            "1400",
            "advmss",
            "1460",
        ])
        .expect("client 0's route: send 1400, advertise 1460");
    for j in 0..2 {
        bed.topo
            .backend_ns(j)
            .ip(&["route", "flush", "cache"])
            .expect("flushing a backend's route cache");
    }
    let before = bed.global_stats();
    let name = bed.transfer_1_mib();
    let after = bed.global_stats();
    let forwarded = after.icmp_errors_forwarded - before.icmp_errors_forwarded;
    assert!(forwarded >= 1, "no ICMP error reached a backend: {after:?}");
    println!("1 MiB echoed by {name}; ICMP errors sent to backends: {forwarded}");
    let j = bed.topo.backend_index(&name).expect("a backend's name");
    let route = bed
        .topo
        .backend_ns(j)
        .ip(&["route", "get", &bed.topo.client_addr(0).to_string()])
        .expect("ip route get");
    assert!(
        route.contains("mtu 1400"),
        "{name}'s PMTU to the client: {route}"
    );
}
