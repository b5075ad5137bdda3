//! Running `lb-agent` inside a test bed's LB namespace.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::topology::{locate_bin, Topology};

pub const AGENT_BIN: &str = "lb-agent";
pub const AGENT_BIN_ENV: &str = "LB_AGENT";

/// A backend entry of a test config: (address, weight).
pub fn vip_config(
    addr: std::net::Ipv4Addr,
    port: u16,
    proto: &str,
    backends: &[(std::net::Ipv4Addr, u32)],
) -> Value {
    json!({
        "address": addr.to_string(),
        "port": port,
        "protocol": proto,
        "backends": backends.iter().map(|(a, w)| json!({"address": a.to_string(), "weight": w})).collect::<Vec<_>>(),
    })
}

/// An agent config for the test bed's LB.
pub fn agent_config(topo: &Topology, xdp_mode: &str, vips: Vec<Value>) -> Value {
    json!({
        "interface": topo.lb_if,
        "xdp_mode": xdp_mode,
        "source_address": topo.lb_addr().to_string(),
        "flow_table_entries": 65536,
        "ring_pool_slots": 16 * 65537,
        "vips": vips,
    })
}

pub struct Agent {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent in the LB namespace and waits until it is attached.
    pub fn start(topo: &Topology, config: &Value) -> Result<Agent> {
        Self::start_with_log_level(topo, config, "info")
    }

    /// Like [`Agent::start`] with `RUST_LOG=level`.
    pub fn start_with_log_level(topo: &Topology, config: &Value, level: &str) -> Result<Agent> {
        let bin = locate_bin(AGENT_BIN, AGENT_BIN_ENV)?;
        let dir = std::env::temp_dir().join(format!("lbt-agent-{}", topo.lb_ns().name()));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("lb.json");
        std::fs::write(&config_path, serde_json::to_string_pretty(config)?)?;
        let log = dir.join("agent.log");
        let log_file = File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", topo.lb_ns().name()])
            .arg(&bin)
            .arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(dir.join("lb.sock"))
            .arg("--state-file")
            .arg(dir.join("state.json"))
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting lb-agent")?;
        let mut agent = Agent { child, dir, log };
        agent.wait_for_log("ready;", 1, Duration::from_secs(20))?;
        Ok(agent)
    }

    /// The agent's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("lb.sock")
    }

    /// The agent's state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> Result<String> {
        self.signal(libc::SIGTERM);
        let status = self.child.wait()?;
        let log = self.log();
        if !status.success() {
            bail!("lb-agent exited with {status}:\n{log}");
        }
        Ok(log)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test bed with the agent attached: one TCP+UDP service per port on
/// [`TEST_VIP`], the given backend weights (backend `j` = `b{j+1}`).
pub struct Bed {
    pub topo: Topology,
    pub agent: Agent,
    pub xdp_mode: &'static str,
    pub port: u16,
}

pub const TEST_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 10);

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
        let port = 8080;
        let topo = Topology::build(crate::topology::TopologySpec {
            clients: 2,
            backends,
            vips: vec![TEST_VIP],
            ports: vec![port],
        })
        .context("building the test bed")?;
        let config = Self::config_for(&topo, xdp_mode, port, weights);
        let agent = Agent::start(&topo, &config).context("starting lb-agent")?;
        Ok(Bed {
            topo,
            agent,
            xdp_mode,
            port,
        })
    }

    /// The agent config for these weights.
    pub fn config_for(
        topo: &Topology,
        xdp_mode: &str,
        port: u16,
        weights: &[Option<u32>],
    ) -> Value {
        let backends: Vec<(std::net::Ipv4Addr, u32)> = weights
            .iter()
            .enumerate()
            .filter_map(|(j, w)| w.map(|w| (topo.backend_addr(j), w)))
            .collect();
        agent_config(
            topo,
            xdp_mode,
            vec![
                vip_config(TEST_VIP, port, "tcp", &backends),
                vip_config(TEST_VIP, port, "udp", &backends),
            ],
        )
    }

    /// Applies new weights through a config reload (SIGHUP).
    pub fn set_weights(&mut self, weights: &[Option<u32>]) {
        let config = Self::config_for(&self.topo, self.xdp_mode, self.port, weights);
        self.agent.reload(&config).expect("reloading the agent");
    }

    /// Opens `n` TCP connections to the VIP from alternating clients and
    /// keeps them open: (backend name, stream).
    pub fn open(&self, n: usize) -> Vec<(String, std::net::TcpStream)> {
        (0..n)
            .map(|i| {
                self.topo
                    .tcp_connect(i % 2, TEST_VIP, self.port, Duration::from_secs(5))
                    .unwrap_or_else(|e| {
                        panic!("connection {i}: {e:#}\nagent log:\n{}", self.agent.log())
                    })
            })
            .collect()
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
