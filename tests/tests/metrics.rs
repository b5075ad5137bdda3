//! The agent's Prometheus endpoint against real traffic: scraped from
//! inside the LB namespace and parsed as Prometheus text, its per-VIP and
//! per-backend counters match the connections and datagrams sent (and the
//! control API's `stats`), the health gauges follow a backend whose server
//! stops, HTTP misuse gets 404/405, and a bad listen address is refused.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Bed, AGENT_BIN, AGENT_BIN_ENV, TEST_VIP},
    topology::{locate_bin, Topology},
};
use lb_userspace::control::{
    client,
    protocol::{Request, ResponseData, StatsReport},
};
use prometheus_parse::{Scrape, Value};
use serde_json::json;

const LISTEN: &str = "127.0.0.1:9100";
const DEADLINE: Duration = Duration::from_secs(15);

fn bed() -> Bed {
    Bed::start_with(3, "native", |topo: &Topology| {
        let backends: Vec<_> = (0..3)
            .map(|j| json!({"address": topo.backend_addr(j).to_string()}))
            .collect();
        let check =
            json!({"type": "tcp", "interval_ms": 200, "timeout_ms": 200, "rise": 2, "fall": 2});
        let vip = |proto: &str| {
            json!({"address": TEST_VIP.to_string(), "port": 8080, "protocol": proto,
                   "health_check": check, "backends": backends})
        };
        let mut config =
            lb_tests::agent::agent_config(topo, "native", vec![vip("tcp"), vip("udp")]);
        config["metrics"] = json!({"listen": LISTEN});
        config
    })
}

/// One HTTP request from inside the LB namespace: (status line, body).
fn http(bed: &Bed, request: &str) -> (String, String) {
    let request = request.to_string();
    let text = bed.topo.lb_ns().run(move || {
        let mut stream = TcpStream::connect(LISTEN).expect("connecting to the metrics endpoint");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(request.as_bytes()).expect("sending");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("reading");
        text
    });
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

struct Metrics(Scrape);

impl Metrics {
    /// The value of the sample `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                ref other => panic!("{name}: not a number: {other:?}"),
            })
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:#?}", self.0.samples))
            as u64
    }
}

fn scrape(bed: &Bed) -> Metrics {
    let (status, body) = http(bed, "GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    Metrics(Scrape::parse(lines).expect("Prometheus text"))
}

fn wait_for(bed: &Bed, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let m = scrape(bed);
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {DEADLINE:?}:\n{}",
            bed.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stats(bed: &Bed) -> StatsReport {
    let response = client::request(
        &bed.agent.socket(),
        &Request::Stats {},
        Duration::from_secs(5),
    )
    .expect("stats");
    match response.data {
        Some(ResponseData::Stats { stats }) => stats,
        other => panic!("{other:?}"),
    }
}

fn health(m: &Metrics, vip: &str, backend: &str, state: &str) -> u64 {
    m.value(
        "lb_backend_health",
        &[("vip", vip), ("backend", backend), ("state", state)],
    )
}

#[test]
fn counters_match_the_traffic_and_health_follows_the_backends() {
    let mut bed = bed();
    let tcp_vip = format!("{TEST_VIP}:8080/tcp");
    let udp_vip = format!("{TEST_VIP}:8080/udp");
    let names: Vec<String> = (0..3)
        .map(|j| bed.topo.backend_addr(j).to_string())
        .collect();
    wait_for(&bed, "every backend healthy", |m| {
        names.iter().all(|b| health(m, &tcp_vip, b, "healthy") == 1)
    });

    // TCP: each connection is one new flow; its packets (SYN, ACK, FIN,
    // ACK and what the server's greeting makes the client acknowledge)
    // all reach the backend that took it.
    const CONNECTIONS: usize = 60;
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for (name, stream) in bed.open(CONNECTIONS) {
        *per_backend.entry(name).or_insert(0) += 1;
        drop(stream);
    }
    // UDP: one packet per datagram, of a known size.
    const DATAGRAMS: u64 = 25;
    let payload = b"metrics-test-payload";
    for i in 0..DATAGRAMS {
        bed.topo
            .udp_ask(
                i as usize % 2,
                0,
                TEST_VIP,
                8080,
                payload,
                Duration::from_secs(5),
            )
            .expect("UDP through the VIP");
    }
    // The last FINs and ACKs arrive after the connections are dropped.
    std::thread::sleep(Duration::from_millis(500));
    // Occupancy is recounted at most once a second.
    std::thread::sleep(Duration::from_millis(1000));
    let m = scrape(&bed);
    let s = stats(&bed);

    let tcp = |name: &str| m.value(name, &[("vip", &tcp_vip)]);
    assert_eq!(tcp("lb_vip_new_flows_total"), CONNECTIONS as u64);
    let packets = tcp("lb_vip_packets_total");
    assert!(
        (3 * CONNECTIONS as u64..=8 * CONNECTIONS as u64).contains(&packets),
        "{packets} packets for {CONNECTIONS} connections"
    );
    let mut backend_sum = 0;
    for (j, addr) in names.iter().enumerate() {
        let p = m.value(
            "lb_backend_packets_total",
            &[("vip", &tcp_vip), ("backend", addr)],
        );
        let took = per_backend
            .get(bed.topo.backend_name(j))
            .copied()
            .unwrap_or(0) as u64;
        assert!(
            (3 * took..=8 * took).contains(&p),
            "backend {addr} took {took} connections and {p} packets"
        );
        backend_sum += p;
    }
    assert_eq!(backend_sum, packets, "backends' packets sum to the VIP's");

    let udp = |name: &str| m.value(name, &[("vip", &udp_vip)]);
    assert_eq!(udp("lb_vip_packets_total"), DATAGRAMS);
    assert_eq!(udp("lb_vip_new_flows_total"), DATAGRAMS);
    // Ethernet 14 + IPv4 20 + UDP 8 + payload.
    let frame = (14 + 20 + 8 + payload.len()) as u64;
    assert_eq!(udp("lb_vip_bytes_total"), DATAGRAMS * frame);

    // The same numbers as the control API, summed over CPUs the same way.
    for v in &s.vips {
        let vip = v.vip.to_string();
        assert_eq!(m.value("lb_vip_packets_total", &[("vip", &vip)]), v.packets);
        assert_eq!(m.value("lb_vip_bytes_total", &[("vip", &vip)]), v.bytes);
        for b in &v.backends {
            let labels = [("vip", vip.as_str()), ("backend", &b.address.to_string())];
            assert_eq!(m.value("lb_backend_packets_total", &labels), b.packets);
            assert_eq!(m.value("lb_backend_bytes_total", &labels), b.bytes);
        }
    }
    assert_eq!(
        m.value("lb_packets_total", &[("verdict", "tx")]),
        s.global.tx
    );
    assert_eq!(
        m.value("lb_flow_events_total", &[("event", "misses")]),
        s.global.flow_misses
    );
    let entries = m.value("lb_flow_table_entries", &[]);
    assert!(
        entries >= CONNECTIONS as u64 + DATAGRAMS,
        "{entries} connection-table entries"
    );
    // FLOWS and FLOWS6, each of the config's 65536 entries.
    assert_eq!(m.value("lb_flow_table_capacity", &[]), 2 * 65536);
    assert!(
        m.value(
            "lb_health_probe_duration_seconds_count",
            &[("backend", &names[1])]
        ) > 0
    );
    assert_eq!(m.value("lb_build_info", &[]), 1);

    // A backend made sick: its gauge turns, one transition is counted,
    // and its VIPs' tables are rebuilt without it.
    let rebuilds = tcp("lb_table_rebuilds_total");
    bed.topo.stop_server(1).expect("stopping b2's server");
    let m = wait_for(&bed, "b2 unhealthy", |m| {
        health(m, &tcp_vip, &names[1], "unhealthy") == 1
    });
    assert_eq!(health(&m, &tcp_vip, &names[1], "healthy"), 0);
    assert_eq!(health(&m, &tcp_vip, &names[0], "healthy"), 1);
    let to_unhealthy = [("backend", names[1].as_str()), ("to", "unhealthy")];
    assert_eq!(m.value("lb_health_transitions_total", &to_unhealthy), 1);
    let m = wait_for(&bed, "the table rebuilt without b2", |m| {
        m.value("lb_table_rebuilds_total", &[("vip", &tcp_vip)]) > rebuilds
    });
    assert!(m.value("lb_table_swap_duration_seconds_count", &[]) > 0);
    assert_eq!(m.value("lb_vip_failing_open", &[("vip", &tcp_vip)]), 0);
}

#[test]
fn other_paths_and_methods_are_refused() {
    let bed = bed();
    let (status, _) = http(&bed, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = http(&bed, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, _) = http(&bed, "nonsense\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    // A client that connects and says nothing does not hold up a scrape.
    let silent = bed
        .topo
        .lb_ns()
        .run(|| TcpStream::connect(LISTEN).expect("connecting"));
    let start = Instant::now();
    scrape(&bed);
    assert!(start.elapsed() < Duration::from_secs(2));
    drop(silent);
}

#[test]
fn a_bad_listen_address_is_refused() {
    let dir = std::env::temp_dir().join(format!("lbt-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bin = locate_bin(AGENT_BIN, AGENT_BIN_ENV).expect("lb-agent");
    let check = |listen: serde_json::Value, args: &[&str]| {
        let config = json!({"interface": "lo", "source_address": "198.18.1.2",
                            "metrics": {"listen": listen}});
        let path = dir.join("lb.json");
        std::fs::write(&path, config.to_string()).expect("writing the config");
        let out = Command::new(&bin)
            .arg("--check")
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .expect("running lb-agent --check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for bad in [
        "127.0.0.1",
        "localhost:9100",
        "127.0.0.1:0",
        "127.0.0.1:70000",
    ] {
        let (code, stderr) = check(json!(bad), &[]);
        assert_eq!(code, Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("metrics.listen"), "{bad}: {stderr}");
    }
    let (code, stderr) = check(json!(9100), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("metrics.listen"), "{stderr}");
    let (code, stderr) = check(json!(LISTEN), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = check(json!(LISTEN), &["--metrics-listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--metrics-listen"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
