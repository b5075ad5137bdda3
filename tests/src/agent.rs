//! Running `lb-agent` inside a test bed's LB namespace.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use lb_userspace::control::{
    client,
    protocol::{BackendInfo, GlobalCounters, Request, Response, ResponseData, VipInfo},
};
use lb_userspace::dataplane::VipAddr;

use crate::topology::{locate_bin, BackendDecap, Topology};

/// The backend of address `addr` in `info`; panics if it has none.
pub fn backend_info(info: &VipInfo, addr: impl Into<IpAddr>) -> BackendInfo {
    let addr = addr.into();
    info.backends
        .iter()
        .find(|b| b.address == addr)
        .cloned()
        .unwrap_or_else(|| panic!("backend {addr} in {info:?}"))
}

pub const AGENT_BIN: &str = "lb-agent";
pub const AGENT_BIN_ENV: &str = "LB_AGENT";

/// A VIP entry of a test config with its (address, weight) backends, of
/// either family.
pub fn vip_config<A: Into<IpAddr> + Copy>(
    addr: impl Into<IpAddr>,
    port: u16,
    proto: &str,
    backends: &[(A, u32)],
) -> Value {
    let addr: IpAddr = addr.into();
    json!({
        "address": addr.to_string(),
        "port": port,
        "protocol": proto,
        "backends": backends.iter().map(|&(a, w)| json!({"address": a.into().to_string(), "weight": w})).collect::<Vec<_>>(),
    })
}

/// An agent config for the test bed's LB.
pub fn agent_config(topo: &Topology, xdp_mode: &str, vips: Vec<Value>) -> Value {
    node_config(topo, 0, xdp_mode, vips)
}

/// An agent config for LB node `k` of the test bed.
pub fn node_config(topo: &Topology, k: usize, xdp_mode: &str, vips: Vec<Value>) -> Value {
    json!({
        "interface": topo.lb_host(k).ifname,
        "xdp_mode": xdp_mode,
        "source_address": topo.lb_host(k).addr.to_string(),
        "source_address6": topo.lb_host(k).addr6.to_string(),
        "flow_table_entries": 65536,
        "ring_pool_slots": 16 * 65537,
        "vips": vips,
    })
}

pub struct Agent {
    child: Child,
    /// Holds the config, socket, state file and logs of this agent.
    dir: PathBuf,
    /// bpffs directory of the pinned data path (removed on drop).
    pin_root: PathBuf,
    lb_ns: String,
    log_level: String,
    /// More `lb-agent` arguments, for every launch.
    extra_args: Vec<String>,
    launches: usize,
}

impl Agent {
    /// Starts the agent in the LB namespace and waits until it is attached.
    pub fn start(topo: &Topology, config: &Value) -> Result<Agent> {
        Self::start_with_log_level(topo, config, "info")
    }

    /// Like [`Agent::start`] with `RUST_LOG=level`.
    pub fn start_with_log_level(topo: &Topology, config: &Value, level: &str) -> Result<Agent> {
        Self::start_with_args(topo, config, level, &[])
    }

    /// Like [`Agent::start_with_log_level`], with more `lb-agent` arguments.
    pub fn start_with_args(
        topo: &Topology,
        config: &Value,
        level: &str,
        extra_args: &[&str],
    ) -> Result<Agent> {
        Self::start_on(topo, 0, config, level, extra_args)
    }

    /// Starts the agent on LB node `k` (see `Topology::build_multi`).
    pub fn start_on(
        topo: &Topology,
        k: usize,
        config: &Value,
        level: &str,
        extra_args: &[&str],
    ) -> Result<Agent> {
        let name = topo.lb_host(k).ns.name();
        let dir = std::env::temp_dir().join(format!("lbt-agent-{name}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("lb.json"), serde_json::to_string_pretty(config)?)?;
        // A bpffs of the test's own in the root mount namespace: `ip netns
        // exec` gives the agent a fresh /sys (without /sys/fs/bpf) in a
        // mount namespace that dies with it, but sees mounts under /run.
        let pin_root = pin_root_for(name);
        mount_bpffs(&pin_root)?;
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let child = Self::spawn(&dir, name, level, &extra_args, 1)?;
        let mut agent = Agent {
            child,
            dir,
            pin_root,
            lb_ns: name.to_string(),
            log_level: level.to_string(),
            extra_args,
            launches: 1,
        };
        agent.wait_for_log("ready;", 1, Duration::from_secs(20))?;
        Ok(agent)
    }

    fn spawn(
        dir: &std::path::Path,
        lb_ns: &str,
        level: &str,
        extra_args: &[String],
        launch: usize,
    ) -> Result<Child> {
        let bin = locate_bin(AGENT_BIN, AGENT_BIN_ENV)?;
        let log_file = File::create(dir.join(format!("agent.{launch}.log")))?;
        Command::new("ip")
            .args(["netns", "exec", lb_ns])
            .arg(&bin)
            .arg("--config")
            .arg(dir.join("lb.json"))
            .arg("--socket")
            .arg(dir.join("lb.sock"))
            .arg("--state-file")
            .arg(dir.join("state.json"))
            .arg("--pin-root")
            .arg(pin_root_for(lb_ns))
            .args(extra_args)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting lb-agent")
    }

    /// Starts a new agent process after this one stopped (or was killed):
    /// it finds the pinned data path and the state file of the last one.
    pub fn relaunch(&mut self) -> Result<()> {
        if matches!(self.child.try_wait(), Ok(None)) {
            bail!("the agent is still running");
        }
        self.launches += 1;
        self.child = Self::spawn(
            &self.dir,
            &self.lb_ns,
            &self.log_level,
            &self.extra_args,
            self.launches,
        )?;
        self.wait_for_log("ready;", 1, Duration::from_secs(20))
    }

    /// SIGKILL, as in a crash: nothing is cleaned up.
    pub fn kill9(&mut self) -> Result<()> {
        self.signal(libc::SIGKILL);
        self.child.wait()?;
        Ok(())
    }

    /// The agent's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("lb.sock")
    }

    /// The table digest of the agent's first VIP (`list_vips`), to compare
    /// nodes.
    pub fn first_digest(&self) -> Result<String> {
        use lb_userspace::control::{
            client,
            protocol::{Request, ResponseData},
        };
        let r = client::request(
            &self.socket(),
            &Request::ListVips {},
            Duration::from_secs(5),
        )
        .map_err(|e| anyhow::anyhow!("list_vips: {e}"))?;
        match r.data {
            Some(ResponseData::Vips { vips }) => vips
                .first()
                .and_then(|v| v.digest.clone())
                .context("no VIP with a digest"),
            other => bail!("list_vips answered {other:?}"),
        }
    }

    /// The agent's state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The log of the current launch.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("agent.{}.log", self.launches)))
            .unwrap_or_default()
    }

    /// Waits until `needle` occurs at least `count` times in the log.
    pub fn wait_for_log(&mut self, needle: &str, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("lb-agent exited ({status}) before logging {needle:?}:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("lb-agent did not log {needle:?} within {timeout:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Rewrites the config file and sends SIGHUP; waits for the reload.
    pub fn reload(&mut self, config: &Value) -> Result<()> {
        let before = self.log().matches("reload").count();
        std::fs::write(
            self.dir.join("lb.json"),
            serde_json::to_string_pretty(config)?,
        )?;
        self.signal(libc::SIGHUP);
        self.wait_for_log("reload", before + 1, Duration::from_secs(20))?;
        let log = self.log();
        if log.matches("reload refused").count() > 0 {
            bail!("the agent refused the reload:\n{log}");
        }
        Ok(())
    }

    fn signal(&self, sig: i32) {
        // `ip netns exec` execs the agent, so the child's pid is the agent's.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then waits (at most 20 s, then SIGKILL and an error) for a
    /// clean exit. The data path stays attached.
    pub fn stop(&mut self) -> Result<String> {
        self.signal(libc::SIGTERM);
        let Some(status) = wait_or_kill(&mut self.child, Duration::from_secs(20))? else {
            bail!(
                "lb-agent did not stop within 20 s of SIGTERM:\n{}",
                self.log()
            );
        };
        let log = self.log();
        if !status.success() {
            bail!("lb-agent exited with {status}:\n{log}");
        }
        Ok(log)
    }

    /// `lb-agent --detach`: removes the pinned data path.
    pub fn detach(&self) -> Result<String> {
        let bin = locate_bin(AGENT_BIN, AGENT_BIN_ENV)?;
        let mut detach = Command::new("ip")
            .args(["netns", "exec", &self.lb_ns])
            .arg(&bin)
            .arg("--detach")
            .arg("--config")
            .arg(self.dir.join("lb.json"))
            .arg("--pin-root")
            .arg(&self.pin_root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running lb-agent --detach")?;
        let Some(status) = wait_or_kill(&mut detach, Duration::from_secs(30))? else {
            bail!("lb-agent --detach still ran after 30 s");
        };
        let mut text = String::new();
        if let Some(mut pipe) = detach.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut text)?;
        }
        if !status.success() {
            bail!("lb-agent --detach failed: {text}");
        }
        Ok(text)
    }
}

/// Waits up to `limit` for `child` to exit; past it, kills it and returns
/// `None`.
pub fn wait_or_kill(
    child: &mut Child,
    limit: Duration,
) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The VIP addresses routed in an agent's announce table (`table`,
/// routes of `protocol`) in `ns`: what it announces now (the table does
/// not exist before its first route: nothing).
pub fn announced_routes(
    ns: &crate::netns::Netns,
    table: u32,
    protocol: u8,
) -> Result<std::collections::BTreeSet<std::net::IpAddr>> {
    use lb_userspace::announce::{is_missing_table, parse_routes};
    let out = match ns.ip(&[
        "-json",
        "-4",
        "route",
        "show",
        "table",
        &table.to_string(),
        "proto",
        &protocol.to_string(),
    ]) {
        Ok(out) => out,
        Err(e) if is_missing_table(&format!("{e:#}")) => String::new(),
        Err(e) => return Err(e.context("ip route show")),
    };
    parse_routes(&out).context("ip -json output")
}

/// Where a test's agent pins its data path.
pub fn pin_root_for(lb_ns: &str) -> PathBuf {
    PathBuf::from(format!("/run/{lb_ns}-bpf"))
}

/// Mounts a bpffs of the test's own at `path` (see [`Agent::start`] for why).
pub fn mount_bpffs(path: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(path)?;
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(path)
        .status()?;
    if !status.success() {
        bail!("mounting bpffs on {}", path.display());
    }
    Ok(())
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            let _ = wait_or_kill(&mut self.child, Duration::from_secs(5));
        }
        if let Err(e) = self.detach() {
            log::warn!("{e:#}");
        }
        let _ = Command::new("umount").arg(&self.pin_root).status();
        let _ = std::fs::remove_dir(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test bed with the agent attached: one TCP+UDP service per port on
/// [`TEST_VIP`], the given backend weights (backend `j` = `b{j+1}`).
/// Fields drop in order: the agent stops and detaches before the
/// namespaces go.
pub struct Bed {
    pub agent: Agent,
    pub topo: Topology,
    pub xdp_mode: &'static str,
    pub port: u16,
    /// The VIP the bed's helpers (`open`, `udp_flows_stay`, `count_new`)
    /// talk to: [`TEST_VIP`], or [`TEST_VIP6`] for [`Bed::start6`].
    pub vip: IpAddr,
}

/// The beds' VIPs: every bed routes both to the LB and carries both on the
/// backends' `lo`; the agent config says which is served.
pub const TEST_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const TEST_VIP6: Ipv6Addr = crate::topology::ipv6_of(TEST_VIP);

impl Bed {
    /// `backends` backends, of which those with `Some(weight)` are in the VIP.
    pub fn start(backends: usize, weights: &[Option<u32>], xdp_mode: &'static str) -> Bed {
        crate::xdp::require_root();
        Self::try_start(backends, weights, xdp_mode).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn try_start(
        backends: usize,
        weights: &[Option<u32>],
        xdp_mode: &'static str,
    ) -> Result<Bed> {
        Self::try_start_with(backends, xdp_mode, |topo| {
            Self::config_for(topo, xdp_mode, 8080, weights)
        })
    }

    /// A bed whose agent config is built by `config` (VIP [`TEST_VIP`],
    /// service port 8080 on every backend).
    pub fn start_with(
        backends: usize,
        xdp_mode: &'static str,
        config: impl Fn(&Topology) -> Value,
    ) -> Bed {
        crate::xdp::require_root();
        Self::try_start_with(backends, xdp_mode, config).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Bed::start_with`] that reports a failure instead of panicking.
    pub fn try_start_with(
        backends: usize,
        xdp_mode: &'static str,
        config: impl Fn(&Topology) -> Value,
    ) -> Result<Bed> {
        Self::try_start_full(backends, xdp_mode, BackendDecap::TestBed, config)
    }

    /// A bed whose backends run no decap program: the test attaches one
    /// itself (the agent is running already).
    pub fn start_without_decap(
        backends: usize,
        weights: &[Option<u32>],
        xdp_mode: &'static str,
    ) -> Bed {
        crate::xdp::require_root();
        Self::try_start_full(backends, xdp_mode, BackendDecap::Caller, |topo| {
            Self::config_for(topo, xdp_mode, 8080, weights)
        })
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn try_start_full(
        backends: usize,
        xdp_mode: &'static str,
        decap: BackendDecap,
        config: impl Fn(&Topology) -> Value,
    ) -> Result<Bed> {
        let port = 8080;
        let topo = Topology::build_with(
            crate::topology::TopologySpec {
                clients: 2,
                backends,
                vips: vec![TEST_VIP.into(), TEST_VIP6.into()],
                ports: vec![port],
            },
            decap,
        )
        .context("building the test bed")?;
        let agent = Agent::start(&topo, &config(&topo)).context("starting lb-agent")?;
        Ok(Bed {
            topo,
            agent,
            xdp_mode,
            port,
            vip: TEST_VIP.into(),
        })
    }

    /// A bed serving [`TEST_VIP6`] (TCP and UDP on 8080) with the backends'
    /// IPv6 addresses, those with `Some(weight)` in the VIP; the helpers
    /// talk IPv6.
    pub fn start6(backends: usize, weights: &[Option<u32>], xdp_mode: &'static str) -> Bed {
        let mut bed = Self::start_with(backends, xdp_mode, |topo| {
            Self::config_for_vip(topo, xdp_mode, TEST_VIP6.into(), 8080, weights)
        });
        bed.vip = TEST_VIP6.into();
        bed
    }

    /// The agent config for these weights.
    pub fn config_for(
        topo: &Topology,
        xdp_mode: &str,
        port: u16,
        weights: &[Option<u32>],
    ) -> Value {
        Self::config_for_vip(topo, xdp_mode, TEST_VIP.into(), port, weights)
    }

    /// The agent config for these weights on `vip` (TCP and UDP), its
    /// backends' addresses of the VIP's family.
    pub fn config_for_vip(
        topo: &Topology,
        xdp_mode: &str,
        vip: IpAddr,
        port: u16,
        weights: &[Option<u32>],
    ) -> Value {
        let backends: Vec<(IpAddr, u32)> = weights
            .iter()
            .enumerate()
            .filter_map(|(j, w)| {
                let addr: IpAddr = match vip {
                    IpAddr::V4(_) => topo.backend_addr(j).into(),
                    IpAddr::V6(_) => topo.backend_addr6(j).into(),
                };
                w.map(|w| (addr, w))
            })
            .collect();
        agent_config(
            topo,
            xdp_mode,
            vec![
                vip_config(vip, port, "tcp", &backends),
                vip_config(vip, port, "udp", &backends),
            ],
        )
    }

    /// Applies new weights through a config reload (SIGHUP).
    pub fn set_weights(&mut self, weights: &[Option<u32>]) {
        let config = Self::config_for_vip(&self.topo, self.xdp_mode, self.vip, self.port, weights);
        self.agent.reload(&config).expect("reloading the agent");
    }

    /// Opens `n` TCP connections to the VIP from alternating clients and
    /// keeps them open: (backend name, stream).
    pub fn open(&self, n: usize) -> Vec<(String, std::net::TcpStream)> {
        (0..n)
            .map(|i| {
                self.topo
                    .tcp_connect(i % 2, self.vip, self.port, Duration::from_secs(5))
                    .unwrap_or_else(|e| {
                        panic!("connection {i}: {e:#}\nagent log:\n{}", self.agent.log())
                    })
            })
            .collect()
    }

    /// Sends a first datagram and then `datagrams` more from each source
    /// port of `ports` (from alternating clients) to the VIP's UDP port;
    /// panics when a flow's datagrams reach more than one backend. Returns
    /// how many flows each backend took.
    pub fn udp_flows_stay(
        &self,
        ports: std::ops::Range<u16>,
        datagrams: usize,
    ) -> std::collections::BTreeMap<String, usize> {
        let mut seen = std::collections::BTreeMap::new();
        for src_port in ports {
            let ask = |payload: &[u8]| {
                self.topo.udp_ask(
                    (src_port % 2) as usize,
                    src_port,
                    self.vip,
                    self.port,
                    payload,
                    Duration::from_secs(3),
                )
            };
            let first = ask(b"first").unwrap_or_else(|e| panic!("port {src_port}: {e:#}"));
            for k in 0..datagrams {
                let name = ask(format!("datagram {k}").as_bytes())
                    .unwrap_or_else(|e| panic!("port {src_port}, datagram {k}: {e:#}"));
                assert_eq!(
                    name, first,
                    "UDP flow from port {src_port} moved from {first} to {name}"
                );
            }
            *seen.entry(first).or_insert(0) += 1;
        }
        seen
    }

    /// A control request that must succeed; panics naming it otherwise.
    pub fn ask(&self, request: Request) -> Response {
        let response = client::request(&self.agent.socket(), &request, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{request:?}: {e}"));
        assert!(response.ok, "{request:?}: {response:?}");
        response
    }

    /// The agent's global counters, summed over CPUs (`stats`).
    pub fn global_stats(&self) -> GlobalCounters {
        match self.ask(Request::Stats {}).data {
            Some(ResponseData::Stats { stats }) => stats.global,
            other => panic!("stats: {other:?}"),
        }
    }

    /// The decap counters of backends `0..n`.
    pub fn decap_stats(&self, n: usize) -> Vec<lb_common::DecapStats> {
        (0..n)
            .map(|j| {
                crate::xdp::decap_stats(
                    self.topo
                        .decap_ebpf(j)
                        .unwrap_or_else(|| panic!("backend {j} runs no decap program")),
                )
            })
            .collect()
    }

    /// The VIP `vip` as `list_vips` shows it.
    pub fn vip_info(&self, vip: &VipAddr) -> VipInfo {
        match self.ask(Request::ListVips {}).data {
            Some(ResponseData::Vips { vips }) => vips
                .into_iter()
                .find(|v| v.vip == *vip)
                .unwrap_or_else(|| panic!("no VIP {vip}")),
            other => panic!("list_vips: {other:?}"),
        }
    }

    /// Polls `list_vips` until `done` holds for `vip`, for at most 15 s
    /// (then panics with the agent's log); returns the VIP then.
    pub fn wait_until(
        &self,
        vip: &VipAddr,
        what: &str,
        done: impl Fn(&VipInfo) -> bool,
    ) -> VipInfo {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let info = self.vip_info(vip);
            if done(&info) {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached within 15 s: {info:#?}\n{}",
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends 1 MiB from client 0 to the bed's VIP and reads its echo back,
    /// reading while writing (neither side's buffers hold it all); returns
    /// the name of the backend that served it. Panics with the agent's log
    /// on any failure.
    pub fn transfer_1_mib(&self) -> String {
        use std::io::{Read, Write};
        let (name, mut stream) = self
            .topo
            .tcp_connect(0, self.vip, self.port, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connecting: {e:#}\nagent log:\n{}", self.agent.log()));
        let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let mut reader = stream.try_clone().expect("cloning the stream");
        let expected = data.len();
        let echo = std::thread::spawn(move || {
            let mut back = vec![0u8; expected];
            reader.read_exact(&mut back).map(|_| back)
        });
        stream
            .write_all(&data)
            .unwrap_or_else(|e| panic!("sending 1 MiB to {name}: {e}"));
        let back = echo
            .join()
            .expect("reader thread")
            .unwrap_or_else(|e| panic!("reading the 1 MiB echo from {name}: {e}"));
        assert!(back == data, "the echo of 1 MiB from {name} differs");
        name
    }

    /// Opens and closes `n` connections; returns how many each backend took.
    pub fn count_new(&self, n: usize) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for (name, _) in self.open(n) {
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    }
}
