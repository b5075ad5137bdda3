//! The active-active test bed: three LB nodes, each running BIRD and
//! lb-agent, announce one TCP VIP to an upstream router (BIRD, ECMP by L4
//! hash) in front of the backends. Shared by tests/tests/ha_ecmp.rs and
//! `lb-demo --ha`, so the demo shows exactly what the tests check.
//!
//! A node can fail in three ways ([`Failure`]), each as a real failure
//! does it: its processes die (SIGKILL, the link stays up), its link goes
//! down (the processes keep running), or both.

use std::{
    net::{Ipv4Addr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use lb_userspace::{
    control::{
        client,
        protocol::{Request, ResponseData},
    },
    dataplane::{Protocol, VipAddr},
};
use serde_json::json;

use crate::{
    agent::{announced_routes, node_config, Agent, TEST_VIP},
    bird::{self, Bird},
    topology::{Topology, TopologySpec},
};

pub const NODES: usize = 3;
pub const PORT: u16 = 8080;
/// The agents' announce table and protocol (what BIRD learns).
pub const TABLE: u32 = 100;
pub const PROTOCOL: u8 = 201;
/// How long a routing change may take before it counts as failed: far
/// above the 3 s hold time, for a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Backends in the VIP at start (backends beyond them are spare).
pub const VIP_BACKENDS: usize = 3;

/// The cluster's VIP.
pub fn vip() -> VipAddr {
    VipAddr {
        addr: TEST_VIP.into(),
        port: PORT,
        proto: Protocol::Tcp,
    }
}

/// How an LB node fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Agent and BIRD SIGKILLed, the link stays up: the kernel closes
    /// BIRD's BGP connection, so the router drops the session at once; the
    /// pinned data path keeps forwarding what still arrives meanwhile.
    Processes,
    /// The node's link goes down, its processes keep running: the router
    /// skips the next hop at once (`ignore_routes_with_linkdown`) and BIRD
    /// drops the session at once too (`check link`, see `bird`).
    Link,
    /// Both: the node is gone.
    Node,
}

impl Failure {
    fn kills_processes(self) -> bool {
        matches!(self, Failure::Processes | Failure::Node)
    }

    fn cuts_link(self) -> bool {
        matches!(self, Failure::Link | Failure::Node)
    }

    /// What failed, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Failure::Processes => "agent and BIRD killed (link up)",
            Failure::Link => "link down (agent and BIRD running)",
            Failure::Node => "agent and BIRD killed, link down",
        }
    }
}

/// Fields drop in order: agents, then the daemons, then the namespaces.
pub struct Cluster {
    pub agents: Vec<Agent>,
    lb_birds: Vec<Option<Bird>>,
    router_bird: Bird,
    pub topo: Topology,
    dir: PathBuf,
}

impl Cluster {
    /// [`NODES`] nodes in front of `backends` backends, of which the first
    /// [`VIP_BACKENDS`] are in the VIP (TCP health check every 500 ms).
    pub fn start(backends: usize) -> Result<Cluster> {
        let topo = Topology::build_multi(
            TopologySpec {
                clients: 2,
                backends,
                vips: vec![TEST_VIP.into()],
                ports: vec![PORT],
            },
            NODES,
        )
        .context("building the test bed")?;
        let dir = std::env::temp_dir().join(format!("lbt-bird-{}", topo.router_ns().name()));
        std::fs::create_dir_all(&dir).context("bird dir")?;
        let router_bird = Bird::start(
            topo.router_ns(),
            &dir,
            "router",
            &bird::router_config(&topo, &dir.join("router.log")),
        )
        .context("starting the router's BIRD")?;
        let mut agents = Vec::new();
        let mut lb_birds = Vec::new();
        for k in 0..NODES {
            let mut config = node_config(
                &topo,
                k,
                "native",
                vec![json!({
                    "address": TEST_VIP.to_string(), "port": PORT, "protocol": "tcp",
                    "health_check": {"type": "tcp", "interval_ms": 500, "timeout_ms": 500, "rise": 2, "fall": 3},
                    "backends": (0..VIP_BACKENDS).map(|j| json!({"address": topo.backend_addr(j).to_string()})).collect::<Vec<_>>(),
                })],
            );
            config["announce"] = json!({"table": TABLE, "protocol": PROTOCOL});
            agents.push(
                Agent::start_on(&topo, k, &config, "info", &[])
                    .with_context(|| format!("agent on node {k}"))?,
            );
            lb_birds.push(Some(
                bird::start_lb(&topo, k, &dir, TABLE, PROTOCOL)
                    .with_context(|| format!("BIRD on node {k}"))?,
            ));
        }
        Ok(Cluster {
            agents,
            lb_birds,
            router_bird,
            topo,
            dir,
        })
    }

    pub fn node_addrs(&self, nodes: &[usize]) -> Vec<Ipv4Addr> {
        nodes.iter().map(|&k| self.topo.lb_host(k).addr).collect()
    }

    /// The LB node whose address is `addr`.
    pub fn node_of(&self, addr: Ipv4Addr) -> Option<usize> {
        self.topo.lb_hosts().position(|h| h.addr == addr)
    }

    /// The nodes the router's route to the VIP goes through now, sorted.
    pub fn routed_nodes(&self) -> Result<Vec<usize>> {
        let mut nodes: Vec<usize> = bird::router_next_hops(self.topo.router_ns(), TEST_VIP)?
            .into_iter()
            .filter_map(|a| self.node_of(a))
            .collect();
        nodes.sort_unstable();
        Ok(nodes)
    }

    /// Waits until the router routes the VIP through exactly `nodes`;
    /// returns how long that took.
    pub fn wait_routes(&self, nodes: &[usize], what: &str) -> Result<Duration> {
        bird::wait_next_hops(
            self.topo.router_ns(),
            TEST_VIP,
            &self.node_addrs(nodes),
            DEADLINE,
        )
        .map_err(|e| anyhow!("{what}: {e:#}\n{}", self.diagnose()))
    }

    /// The routing state of every daemon and node, for failure messages.
    pub fn diagnose(&self) -> String {
        let mut text = format!(
            "router BIRD:\n{}\n",
            self.router_bird
                .birdc(&["show", "protocols", "all"])
                .unwrap_or_else(|e| format!("{e:#}"))
        );
        for (k, b) in self.lb_birds.iter().enumerate() {
            let host = self.topo.lb_host(k);
            text += &format!(
                "node {k} table {TABLE}: {}\nnode {k} BIRD routes: {}\n",
                host.ns
                    .ip(&["route", "show", "table", &TABLE.to_string()])
                    .unwrap_or_else(|e| format!("{e:#}")),
                b.as_ref().map_or("not running".into(), |b| b
                    .birdc(&["show", "route", "all"])
                    .unwrap_or_else(|e| format!("{e:#}")))
            );
        }
        text
    }

    /// The nodes whose connection table pins this flow, with the backend
    /// each pins it to (each node asked; a dead node pins nothing).
    pub fn pins(&self, source: Ipv4Addr, source_port: u16) -> Vec<(usize, std::net::IpAddr)> {
        let request = Request::LookupFlow {
            vip: vip(),
            source: source.into(),
            source_port,
        };
        (0..NODES)
            .filter_map(|k| {
                match client::request(&self.agents[k].socket(), &request, Duration::from_secs(5)) {
                    Ok(r) => match r.data {
                        Some(ResponseData::Flow { flow }) => flow.pinned_backend.map(|b| (k, b)),
                        _ => None,
                    },
                    Err(_) => None,
                }
            })
            .collect()
    }

    /// The nodes whose connection table pins this flow.
    pub fn carriers(&self, source: Ipv4Addr, source_port: u16) -> Vec<usize> {
        self.pins(source, source_port)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    /// Opens connection `i` (from client i % 2) and finds the node that
    /// carries it: exactly one node's table must hold it.
    pub fn open(&self, i: usize) -> Result<Conn> {
        let client = i % 2;
        let (backend, stream) = self
            .topo
            .tcp_connect(client, TEST_VIP, PORT, Duration::from_secs(5))
            .with_context(|| format!("connection {i}"))?;
        let port = stream.local_addr().context("local address")?.port();
        let carriers = self.carriers(self.topo.client_addr(client), port);
        let [node] = carriers[..] else {
            bail!("connection {i} in the tables of nodes {carriers:?}, not of one");
        };
        Ok(Conn {
            client,
            port,
            backend,
            stream,
            node,
        })
    }

    /// Node `k` fails as `how` says; returns once the router no longer
    /// routes to it, with the time from the failure to the withdrawal.
    pub fn fail(&mut self, k: usize, how: Failure) -> Result<Duration> {
        let others: Vec<usize> = (0..NODES).filter(|&n| n != k).collect();
        let died = Instant::now();
        if how.kills_processes() {
            if let Some(mut b) = self.lb_birds[k].take() {
                b.kill().context("killing BIRD")?;
            }
            self.agents[k].kill9().context("killing the agent")?;
        }
        if how.cuts_link() {
            let host = self.topo.lb_host(k);
            host.ns
                .ip(&["link", "set", &host.ifname, "down"])
                .context("link down")?;
        }
        self.wait_routes(&others, &format!("node {k} withdrawn"))?;
        Ok(died.elapsed())
    }

    /// Waits until node `k`'s agent has no route in its announce table
    /// (it withdrew on its own, e.g. when its link failure made every
    /// backend look down).
    pub fn wait_own_withdrawal(&self, k: usize) -> Result<()> {
        let start = Instant::now();
        let ns = &self.topo.lb_host(k).ns;
        loop {
            let routes = announced_routes(ns, TABLE, PROTOCOL)?;
            if routes.is_empty() {
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                bail!("node {k}'s agent still announces {routes:?} after {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node `k` recovers from `how` (link up, agent relaunched on its
    /// pinned data path, BIRD started, as needed); returns once the router
    /// routes to every node again, with the time that took.
    pub fn revive(&mut self, k: usize, how: Failure) -> Result<Duration> {
        let start = Instant::now();
        if how.cuts_link() {
            let host = self.topo.lb_host(k);
            host.ns
                .ip(&["link", "set", &host.ifname, "up"])
                .context("link up")?;
            // The link going down took the node's default routes with it (a
            // rebooted node configures them again); without them the agent's
            // health checks fail and it rightly announces nothing.
            host.restore_default_routes().context("default routes")?;
        }
        if how.kills_processes() {
            self.agents[k]
                .relaunch()
                .with_context(|| format!("relaunching node {k}'s agent"))?;
            self.lb_birds[k] = Some(
                bird::start_lb(&self.topo, k, &self.dir, TABLE, PROTOCOL)
                    .with_context(|| format!("restarting BIRD on node {k}"))?,
            );
        }
        let all: Vec<usize> = (0..NODES).collect();
        self.wait_routes(&all, &format!("node {k} back"))?;
        Ok(start.elapsed())
    }

    /// The table digest of node `k`'s VIP.
    pub fn digest(&self, k: usize) -> Result<String> {
        self.agents[k]
            .first_digest()
            .with_context(|| format!("node {k}'s digest"))
    }

    /// Node `k`'s count of flows selected from its table; see
    /// [`new_flows`].
    pub fn new_flows(&self, k: usize) -> Option<u64> {
        new_flows(&self.agents[k].socket())
    }

    /// The router's kernel route to the VIP (`ip route show`), as an
    /// operator would look at it.
    pub fn router_route(&self) -> Result<String> {
        self.topo
            .router_ns()
            .ip(&["route", "show", &format!("{TEST_VIP}/32")])
    }

    /// `birdc ARGS` on the router.
    pub fn router_birdc(&self, args: &[&str]) -> Result<String> {
        self.router_bird.birdc(args)
    }

    /// Empties every node's connection table of the VIP, so that each new
    /// connection afterwards is found in exactly one table.
    pub fn flush_flows(&self) -> Result<()> {
        for k in 0..NODES {
            let flush = Request::FlushFlows { vip: vip() };
            let r = client::request(&self.agents[k].socket(), &flush, Duration::from_secs(30))
                .map_err(|e| anyhow!("flush_flows on node {k}: {e}"))?;
            if !r.ok {
                bail!("flush_flows on node {k}: {r:?}");
            }
        }
        Ok(())
    }
}

/// The count of flows selected from the VIP's table (new connections and
/// flows taken over from another node) by the agent at `socket`; none if
/// it does not answer (a dead node). A free function so that a thread can
/// watch the nodes while another changes the cluster.
pub fn new_flows(socket: &std::path::Path) -> Option<u64> {
    let r = client::request(socket, &Request::Stats {}, Duration::from_millis(500)).ok()?;
    match r.data {
        Some(ResponseData::Stats { stats }) => stats
            .vips
            .iter()
            .find(|v| v.vip == vip())
            .map(|v| v.new_flows),
        _ => None,
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A long-lived connection: its client, source port, backend, stream and
/// the node that first carried it.
pub struct Conn {
    pub client: usize,
    pub port: u16,
    pub backend: String,
    pub stream: TcpStream,
    pub node: usize,
}
