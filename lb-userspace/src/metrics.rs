//! The Prometheus endpoint: `GET /metrics` on `metrics.listen`, in the
//! Prometheus text format (0.0.4).
//!
//! What a scrape reads, and from where:
//!
//! - data-path counters (`VIP_STATS`, `BACKEND_STATS`, `GLOBAL_STATS`,
//!   summed over CPUs) and the backends' health, through the control
//!   service's own `stats` and `list_vips` requests: the service lock is
//!   held for those two requests only, off the runtime's task threads
//!   (as the control socket does), never across network I/O;
//! - the connection table's occupancy by a batch walk of `FLOWS` and `FLOWS6` on a
//!   handle of its own, without the service lock, recounted only when the
//!   last count is older than 20 walks' time (at least 1 s), so frequent
//!   scrapes of a 1M-entry table stay cheap;
//! - event metrics (`instrument`): probes, transitions, table rebuilds and
//!   swaps, as recorded.
//!
//! The HTTP side is a minimal HTTP/1.x server: one request per connection,
//! a bounded request head, a deadline for the whole exchange and a bound on
//! concurrent clients, so a slow or hostile client costs a task and a
//! socket for at most [`CLIENT_DEADLINE`], and the agent never waits for it.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use lb_common::GlobalStats;
use prometheus_client::{
    encoding::prometheus_text,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Mutex, Semaphore},
};

use crate::{
    control::{
        protocol::{Request, ResponseData, StatsReport, VipInfo},
        server::handle_off_the_runtime,
        service::Service,
    },
    health::Health,
    instrument::Instruments,
    maps::FlowTables,
};

/// A client must send its request and take the response within this time.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(10);
/// Clients served at once; more are closed at once until one finishes.
const MAX_CLIENTS: usize = 16;
/// Longest request head (request line and headers) accepted.
const MAX_HEAD: usize = 8192;
/// The shortest time between two counts of the connection table.
const MIN_RECOUNT: Duration = Duration::from_secs(1);

/// The git commit the agent was built from (`build.rs`), if known.
pub const GIT_COMMIT: &str = match option_env!("LB_GIT_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

type Labels = Vec<(&'static str, String)>;

/// What one scrape read from the control service.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub stats: StatsReport,
    pub vips: Vec<VipInfo>,
}

/// The connection table's occupancy at the last count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    pub entries: u64,
    pub capacity: u32,
}

struct Count {
    at: Instant,
    entries: u64,
    took: Duration,
}

/// Everything a scrape needs; shared by the connection tasks.
pub struct Exporter {
    service: Arc<Mutex<Service>>,
    instruments: Instruments,
    flows: FlowTables,
    last_count: std::sync::Mutex<Option<Count>>,
}

impl Exporter {
    /// `flows` is a handle of its own on the connection table
    /// (`BalancerMaps::flow_table`); `instruments` are those the data plane
    /// and the health checker record into.
    pub fn new(service: Arc<Mutex<Service>>, instruments: Instruments, flows: FlowTables) -> Self {
        Self {
            service,
            instruments,
            flows,
            last_count: std::sync::Mutex::new(None),
        }
    }

    /// The text of one scrape.
    pub async fn render(&self) -> Result<String> {
        let snapshot = {
            let mut service = self.service.lock().await;
            handle_off_the_runtime(|| snapshot(&mut service))?
        };
        let occupancy = handle_off_the_runtime(|| self.occupancy());
        let occupancy = match occupancy {
            Ok(o) => Some(o),
            Err(e) => {
                log::warn!("metrics: counting the connection table: {e:#}");
                None
            }
        };
        encode(&snapshot, &self.instruments, occupancy)
    }

    /// The connection table's entries, recounted when the last count is
    /// stale (see the module documentation). Concurrent scrapes wait for
    /// one count rather than walk the table twice.
    fn occupancy(&self) -> Result<Occupancy> {
        let mut last = self
            .last_count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fresh = last
            .as_ref()
            .is_some_and(|c| c.at.elapsed() < MIN_RECOUNT.max(c.took * 20));
        if !fresh {
            let start = Instant::now();
            let entries = self.flows.v4.for_each(|_, _| {})? + self.flows.v6.for_each(|_, _| {})?;
            *last = Some(Count {
                at: Instant::now(),
                entries,
                took: start.elapsed(),
            });
        }
        Ok(Occupancy {
            entries: last.as_ref().map_or(0, |c| c.entries),
            capacity: self.flows.v4.capacity() + self.flows.v6.capacity(),
        })
    }
}

/// The counters and the VIPs' health, through the same requests `lbctl
/// stats` and `lbctl vips` make.
fn snapshot(service: &mut Service) -> Result<Snapshot> {
    let stats = match service.handle(Request::Stats {}) {
        r if r.ok => match r.data {
            Some(ResponseData::Stats { stats }) => stats,
            other => return Err(anyhow!("unexpected stats response {other:?}")),
        },
        r => return Err(anyhow!("stats: {:?}", r.error)),
    };
    let vips = match service.handle(Request::ListVips {}).data {
        Some(ResponseData::Vips { vips }) => vips,
        other => return Err(anyhow!("unexpected list_vips response {other:?}")),
    };
    Ok(Snapshot { stats, vips })
}

fn counter_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family.clone()),
        None => registry.register(name, help, family.clone()),
    }
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Renders a scrape: pure, for the unit tests.
pub fn encode(
    snapshot: &Snapshot,
    instruments: &Instruments,
    occupancy: Option<Occupancy>,
) -> Result<String> {
    let mut registry = Registry::with_prefix("lb");
    registry.register(
        "build",
        "The agent's version and the git commit it was built from",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("git_commit", GIT_COMMIT.to_string()),
        ]),
    );

    // Data-path counters, summed over CPUs (written by `balancer`).
    let packets = counter_family(
        &mut registry,
        "packets",
        "Packets seen by the XDP balancer, by verdict",
        None,
    );
    let events = counter_family(
        &mut registry,
        "flow_events",
        "Connection-table events of VIP packets (hits, misses, reselected, pin_errors)",
        None,
    );
    let icmp_events = counter_family(
        &mut registry,
        "icmp_events",
        "ICMP events of the XDP balancer that are not verdicts (errors_forwarded: ICMP errors sent to the backend of the quoted flow)",
        None,
    );
    let global = &snapshot.stats.global;
    for (name, value) in GlobalStats::NAMES.iter().zip(global.values()) {
        // Each packet has exactly one verdict; `flow_*` count
        // connection-table events, the other events are ICMP's (see
        // GlobalStats::is_verdict).
        let label = |key: &'static str, value: &str| vec![(key, value.to_string())];
        if GlobalStats::is_verdict(name) {
            packets.get_or_create(&label("verdict", name))
        } else if let Some(event) = name.strip_prefix("flow_") {
            events.get_or_create(&label("event", event))
        } else {
            icmp_events.get_or_create(&label("event", name.strip_prefix("icmp_").unwrap_or(name)))
        }
        .inc_by(value);
    }
    let vip_packets = counter_family(&mut registry, "vip_packets", "Packets to a VIP", None);
    let vip_bytes = counter_family(
        &mut registry,
        "vip",
        "Bytes to a VIP (frames as received, Ethernet header included)",
        Some(Unit::Bytes),
    );
    let vip_new_flows = counter_family(
        &mut registry,
        "vip_new_flows",
        "Flows of a VIP given a backend from its table (misses, SYNs, re-selections)",
        None,
    );
    let backend_packets = counter_family(
        &mut registry,
        "backend_packets",
        "Packets sent to a backend of a VIP",
        None,
    );
    let backend_bytes = counter_family(
        &mut registry,
        "backend",
        "Bytes sent to a backend of a VIP (frames as received, before encapsulation)",
        Some(Unit::Bytes),
    );
    for v in &snapshot.stats.vips {
        let vip = vec![("vip", v.vip.to_string())];
        vip_packets.get_or_create(&vip).inc_by(v.packets);
        vip_bytes.get_or_create(&vip).inc_by(v.bytes);
        vip_new_flows.get_or_create(&vip).inc_by(v.new_flows);
        for b in &v.backends {
            let labels = vec![
                ("vip", v.vip.to_string()),
                ("backend", b.address.to_string()),
            ];
            backend_packets.get_or_create(&labels).inc_by(b.packets);
            backend_bytes.get_or_create(&labels).inc_by(b.bytes);
        }
    }

    // Health, as the control service reports it.
    let health = gauge_family(
        &mut registry,
        "backend_health",
        "1 for a backend's current health state (unknown counts as healthy), 0 for the others",
    );
    let failing_open = gauge_family(
        &mut registry,
        "vip_failing_open",
        "1 while every enabled backend of the VIP is unhealthy and it fails open",
    );
    for v in &snapshot.vips {
        let vip = v.vip.to_string();
        failing_open
            .get_or_create(&vec![("vip", vip.clone())])
            .set(i64::from(v.failing_open));
        for b in &v.backends {
            for state in [Health::Unknown, Health::Healthy, Health::Unhealthy] {
                health
                    .get_or_create(&vec![
                        ("vip", vip.clone()),
                        ("backend", b.address.to_string()),
                        ("state", state.to_string()),
                    ])
                    .set(i64::from(b.health == state));
            }
        }
    }

    if let Some(o) = occupancy {
        let entries = Gauge::<i64>::default();
        entries.set(to_i64(o.entries));
        registry.register(
            "flow_table_entries",
            "Entries in the connection table (FLOWS and FLOWS6), at the last count",
            entries,
        );
        let capacity = Gauge::<i64>::default();
        capacity.set(i64::from(o.capacity));
        registry.register(
            "flow_table_capacity",
            "Capacity of the connection table (FLOWS and FLOWS6, each flow_table_entries)",
            capacity,
        );
    }
    instruments.register(&mut registry);

    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).context("encoding the metrics")?;
    Ok(text)
}

/// Binds the metrics listener; before the agent touches the data path, so
/// an address in use stops it while nothing has changed.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("metrics.listen: binding {addr}"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("metrics.listen: {addr}"))?;
    Ok(listener)
}

/// Serves scrapes until the task is dropped.
pub async fn serve(listener: std::net::TcpListener, exporter: Arc<Exporter>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            log::error!("metrics: no endpoint: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Busy: close at once rather than queue behind slow clients.
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let exporter = Arc::clone(&exporter);
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(CLIENT_DEADLINE, client(stream, &exporter)).await {
                Ok(Err(e)) => log::debug!("metrics client: {e:#}"),
                Err(_) => log::debug!("metrics client: too slow, dropped"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (or `HEAD`, without the body).
    Metrics { head_only: bool },
    /// A status and a short body.
    Refuse {
        status: &'static str,
        allow: bool,
        body: &'static str,
    },
}

/// Routes a request head (request line and headers, as received).
pub fn route(head: &[u8]) -> Route {
    let refuse = |status, allow, body| Route::Refuse {
        status,
        allow,
        body,
    };
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).unwrap_or_default().trim_end();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return refuse("400 Bad Request", false, "bad request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return refuse("400 Bad Request", false, "HTTP/1.x only\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return refuse(
            "404 Not Found",
            false,
            "not found; metrics are at /metrics\n",
        );
    }
    match method {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => refuse("405 Method Not Allowed", true, "only GET and HEAD\n"),
    }
}

async fn client(mut stream: TcpStream, exporter: &Exporter) -> Result<()> {
    let mut head = Vec::with_capacity(1024);
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() > MAX_HEAD {
            let status = "431 Request Header Fields Too Large";
            return respond(
                &mut stream,
                status,
                false,
                "request head too large\n",
                false,
            )
            .await;
        }
        if stream.read_buf(&mut head).await? == 0 {
            return Ok(());
        }
    }
    match route(&head) {
        Route::Metrics { head_only } => match exporter.render().await {
            Ok(text) => respond(&mut stream, "200 OK", false, &text, head_only).await,
            Err(e) => {
                log::warn!("metrics: {e:#}");
                let body = "reading the metrics failed; see the agent's log\n";
                respond(
                    &mut stream,
                    "500 Internal Server Error",
                    false,
                    body,
                    head_only,
                )
                .await
            }
        },
        Route::Refuse {
            status,
            allow,
            body,
        } => respond(&mut stream, status, allow, body, false).await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    allow: bool,
    body: &str,
    head_only: bool,
) -> Result<()> {
    let content_type = if status.starts_with("200") {
        prometheus_text::CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let allow = if allow { "Allow: GET, HEAD\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{
        config::AdminState,
        control::protocol::{BackendCounters, BackendInfo, VipCounters},
        dataplane::{Protocol, VipAddr},
    };

    fn vip() -> VipAddr {
        VipAddr {
            addr: Ipv4Addr::new(198, 18, 0, 10).into(),
            port: 8080,
            proto: Protocol::Tcp,
        }
    }

    fn backend(address: IpAddr, health: Health) -> BackendInfo {
        BackendInfo {
            address,
            weight: 1,
            admin: AdminState::Enabled,
            health,
            check: None,
            last_probe: None,
            consecutive_ok: 0,
            consecutive_fail: 0,
            last_transition_unix_ms: None,
            ring_share: 0.5,
            connections: None,
        }
    }

    fn snapshot() -> Snapshot {
        let global = GlobalStats {
            tx: 40,
            passed: 2,
            flow_hits: 30,
            flow_misses: 10,
            ..Default::default()
        };
        let b1: IpAddr = Ipv4Addr::new(198, 19, 1, 2).into();
        let b2: IpAddr = Ipv4Addr::new(198, 19, 2, 2).into();
        Snapshot {
            stats: StatsReport {
                global,
                vips: vec![VipCounters {
                    vip: vip(),
                    packets: 40,
                    bytes: 4000,
                    new_flows: 10,
                    backends: vec![
                        BackendCounters {
                            address: b1,
                            packets: 25,
                            bytes: 2500,
                        },
                        BackendCounters {
                            address: b2,
                            packets: 15,
                            bytes: 1500,
                        },
                    ],
                }],
            },
            vips: vec![VipInfo {
                vip: vip(),
                table_size: 65537,
                policy: Default::default(),
                icmp_echo: true,
                encap: Default::default(),
                gue_port: None,
                health_check: None,
                fail_open: true,
                failing_open: false,
                digest: None,
                backends: vec![backend(b1, Health::Healthy), backend(b2, Health::Unhealthy)],
            }],
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn renders_counters_health_occupancy_and_build_info() {
        let instruments = Instruments::new();
        instruments
            .table_rebuilds
            .get_or_create(&crate::instrument::VipLabel {
                vip: vip().to_string(),
            })
            .inc();
        instruments.table_swap_duration.observe(0.002);
        let occupancy = Occupancy {
            entries: 12,
            capacity: 65536,
        };
        let text = encode(&snapshot(), &instruments, Some(occupancy)).expect("encodes");
        let samples = lines(&text);
        for want in [
            r#"lb_vip_packets_total{vip="198.18.0.10:8080/tcp"} 40"#,
            r#"lb_vip_bytes_total{vip="198.18.0.10:8080/tcp"} 4000"#,
            r#"lb_vip_new_flows_total{vip="198.18.0.10:8080/tcp"} 10"#,
            r#"lb_backend_packets_total{vip="198.18.0.10:8080/tcp",backend="198.19.1.2"} 25"#,
            r#"lb_backend_bytes_total{vip="198.18.0.10:8080/tcp",backend="198.19.2.2"} 1500"#,
            r#"lb_packets_total{verdict="tx"} 40"#,
            r#"lb_packets_total{verdict="drop_no_backend"} 0"#,
            r#"lb_flow_events_total{event="hits"} 30"#,
            r#"lb_flow_events_total{event="misses"} 10"#,
            r#"lb_backend_health{vip="198.18.0.10:8080/tcp",backend="198.19.2.2",state="unhealthy"} 1"#,
            r#"lb_backend_health{vip="198.18.0.10:8080/tcp",backend="198.19.2.2",state="healthy"} 0"#,
            r#"lb_vip_failing_open{vip="198.18.0.10:8080/tcp"} 0"#,
            "lb_flow_table_entries 12",
            "lb_flow_table_capacity 65536",
            r#"lb_table_rebuilds_total{vip="198.18.0.10:8080/tcp"} 1"#,
            "lb_table_swap_duration_seconds_count 1",
        ] {
            assert!(samples.contains(&want), "missing {want:?} in\n{text}");
        }
        let build = samples
            .iter()
            .find(|l| l.starts_with("lb_build_info{"))
            .expect("build info");
        assert!(
            build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
            "{build}"
        );
        assert!(
            text.contains("# TYPE lb_vip_packets_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lb_table_swap_duration_seconds histogram"),
            "{text}"
        );
        // Every verdict and event counter appears once.
        let global = samples
            .iter()
            .filter(|l| {
                l.starts_with("lb_packets_total")
                    || l.starts_with("lb_flow_events_total")
                    || l.starts_with("lb_icmp_events_total")
            })
            .count();
        assert_eq!(global, GlobalStats::NAMES.len());
    }

    #[test]
    fn without_a_count_there_is_no_occupancy() {
        let text = encode(&snapshot(), &Instruments::new(), None).expect("encodes");
        assert!(!text.contains("lb_flow_table_entries"), "{text}");
    }

    #[test]
    fn routes() {
        let metrics = Route::Metrics { head_only: false };
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), metrics);
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        let status = |head: &[u8]| match route(head) {
            Route::Refuse { status, .. } => status,
            Route::Metrics { .. } => "200",
        };
        assert_eq!(
            status(b"POST /metrics HTTP/1.1\r\n\r\n"),
            "405 Method Not Allowed"
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), "404 Not Found");
        assert_eq!(status(b"GET /metricsx HTTP/1.1\r\n\r\n"), "404 Not Found");
        assert_eq!(status(b"GET /metrics\r\n\r\n"), "400 Bad Request");
        assert_eq!(status(b"GET /metrics SPDY/3\r\n\r\n"), "400 Bad Request");
        assert_eq!(status(b"\xff\xfe\r\n\r\n"), "400 Bad Request");
    }
}
