//! With the balancer attached, the LB host's own traffic still works, and
//! backends' replies go straight to the client (direct server return).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use lb_tests::{
    agent::Bed,
    topology::{echo_roundtrip, link_stats},
};

#[test]
fn lb_host_traffic_passes() {
    let bed = Bed::start(2, &[Some(1), Some(1)], "native");
    let lb_addr = bed.topo.lb_addr();

    // ICMP echo to the LB's own address.
    let ping = bed.topo.client_ns(0).exec(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        &lb_addr.to_string(),
    ]);
    let ping = ping.unwrap_or_else(|e| panic!("ping to the LB with the balancer attached: {e:#}"));
    assert!(ping.contains("3 received"), "ping: {ping}");

    // TCP to a service on the LB host itself.
    let listener = bed
        .topo
        .lb_ns()
        .run(|| TcpListener::bind((lb_addr, 7000)).expect("listening on the LB"));
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        s.write_all(&buf).expect("write");
    });
    let target = SocketAddr::from((lb_addr, 7000));
    let mut stream = bed
        .topo
        .client_ns(1)
        .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))
        .expect("TCP to the LB host with the balancer attached");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(
        echo_roundtrip(&mut stream, b"hello").expect("echo"),
        b"hello"
    );
    server.join().expect("server thread");
}

#[test]
fn replies_do_not_cross_the_lb() {
    let bed = Bed::start(2, &[Some(1), Some(1)], "native");
    let lb_ns = bed.topo.lb_ns();
    let mut connections = bed.open(10);

    let lb_before = link_stats(lb_ns, &bed.topo.lb_if).expect("LB counters");
    let clients_before: Vec<(u64, u64)> = (0..2)
        .map(|c| link_stats(bed.topo.client_ns(c), "eth0").expect("client counters"))
        .collect();
    for (name, stream) in connections.iter_mut() {
        for _ in 0..20 {
            let data = vec![0x5a; 3000];
            assert_eq!(
                echo_roundtrip(stream, &data).unwrap_or_else(|e| panic!("{name}: {e:#}")),
                data
            );
        }
    }
    let lb_after = link_stats(lb_ns, &bed.topo.lb_if).expect("LB counters");
    let clients_after: Vec<(u64, u64)> = (0..2)
        .map(|c| link_stats(bed.topo.client_ns(c), "eth0").expect("client counters"))
        .collect();

    let client_sent: u64 = (0..2)
        .map(|c| clients_after[c].1 - clients_before[c].1)
        .sum();
    let client_received: u64 = (0..2)
        .map(|c| clients_after[c].0 - clients_before[c].0)
        .sum();
    let lb_received = lb_after.0 - lb_before.0;
    let lb_sent = lb_after.1 - lb_before.1;
    println!("clients sent {client_sent}, received {client_received}; LB received {lb_received}, sent {lb_sent}");
    assert!(
        client_received >= 400,
        "the clients received the echoes ({client_received} packets)"
    );
    // The LB sees the clients' packets (plus a little IPv6 housekeeping),
    // never the backends' replies.
    assert!(
        lb_received <= client_sent + 10,
        "the LB received {lb_received} packets but the clients sent only {client_sent}: replies crossed the LB"
    );
    assert!(
        lb_sent + 10 >= client_sent,
        "the LB forwarded the clients' packets ({lb_sent} of {client_sent})"
    );
}
