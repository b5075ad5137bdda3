//! BIRD 2 in the test bed: the upstream router announces nothing and
//! installs every VIP route its LB peers send as one multipath (ECMP) kernel
//! route; each LB node exports the agent's announce table over eBGP. The
//! configurations are the ones docs/deployment.md shows, with timers made
//! short for tests. Each daemon runs in the foreground (`bird -f`) in its
//! namespace and is killed when its [`Bird`] is dropped.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{agent::wait_or_kill, netns::Netns, topology::Topology};

/// The router's AS and the LB nodes' AS (one AS for all nodes: their
/// routes then have equal AS paths, which BIRD merges into one ECMP route).
pub const ROUTER_AS: u32 = 64512;
pub const LB_AS: u32 = 64513;

/// How soon a BGP session starts, and restarts after an error, on both
/// ends. How fast a failed node leaves does not depend on these: a killed
/// BIRD's connection is closed by the kernel and a lost link is seen at
/// once ("Error: Link down"), both withdraw within milliseconds; a node
/// that dies silently (a hung kernel, its link up) leaves when the 3 s
/// hold timer expires. What these set is how fast it *returns*: BIRD waits
/// `connect delay time` (default 5 s) before its first connection, and after
/// an error (the link loss) `error wait time` (default 60 s, doubling up
/// to 300 s on repeated errors) before it tries again, on each end. The
/// tests use 1 s; docs/deployment.md explains the production choice.
const RESTART_TIMERS: &str = "  connect delay time 1; error wait time 1, 5; error forget time 10;";

/// The router's BIRD configuration for the test bed's LB nodes.
pub fn router_config(topo: &Topology, log: &std::path::Path) -> String {
    let mut conf = format!(
        r#"log "{log}" all;
router id {router_id};
protocol device {{ scan time 1; }}
# Every BGP route to the kernel, equal-cost paths merged into one route.
protocol kernel {{
  ipv4 {{ import none; export all; }};
  merge paths on limit 16;
}}
template bgp lb_node {{
  local as {ROUTER_AS};
  hold time 3; keepalive time 1; connect retry time 1;
{RESTART_TIMERS}
  graceful restart off;
  ipv4 {{ import all; export none; }};
}}
"#,
        log = log.display(),
        router_id = topo.lb_host(0).gateway,
    );
    for (k, lb) in topo.lb_hosts().enumerate() {
        conf += &format!(
            "protocol bgp lb{k} from lb_node {{ neighbor {} as {LB_AS}; }}\n",
            lb.addr
        );
    }
    conf
}

/// An LB node's BIRD configuration: the agent's routes (table `table`,
/// protocol `protocol`) learnt and exported to the router.
pub fn lb_config(
    addr: Ipv4Addr,
    router: Ipv4Addr,
    table: u32,
    protocol: u8,
    log: &std::path::Path,
) -> String {
    format!(
        r#"log "{log}" all;
router id {addr};
protocol device {{ scan time 1; }}
# The agent's VIP routes: learnt from their own kernel table, never written.
protocol kernel vips {{
  kernel table {table};
  learn;
  scan time 1;
  ipv4 {{ import where krt_source = {protocol}; export none; }};
}}
protocol bgp upstream {{
  local {addr} as {LB_AS};
  neighbor {router} as {ROUTER_AS};
  hold time 3; keepalive time 1; connect retry time 1;
{RESTART_TIMERS}
  graceful restart off;
  ipv4 {{ import none; export where proto = "vips"; next hop self; }};
}}
"#,
        log = log.display()
    )
}

/// Starts BIRD on LB node `k` of `topo` with [`lb_config`] (files in `dir`).
pub fn start_lb(
    topo: &Topology,
    k: usize,
    dir: &std::path::Path,
    table: u32,
    protocol: u8,
) -> Result<Bird> {
    let host = topo.lb_host(k);
    let log = dir.join(format!("{}.log", host.name));
    Bird::start(
        &host.ns,
        dir,
        &host.name,
        &lb_config(host.addr, host.gateway, table, protocol, &log),
    )
}

/// A running BIRD.
pub struct Bird {
    child: Option<Child>,
    ns_name: String,
    config: PathBuf,
    socket: PathBuf,
}

impl Bird {
    /// Writes `config` into `dir` and starts BIRD on it in `ns`; returns
    /// once its control socket answers.
    pub fn start(ns: &Netns, dir: &std::path::Path, name: &str, config: &str) -> Result<Bird> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join(format!("{name}.conf"));
        let socket = dir.join(format!("{name}.ctl"));
        std::fs::write(&conf, config)?;
        let _ = std::fs::remove_file(&socket);
        let conf_s = conf.to_str().context("config path is not UTF-8")?;
        let sock_s = socket.to_str().context("socket path is not UTF-8")?;
        let child = ns.spawn("bird", &["-f", "-c", conf_s, "-s", sock_s])?;
        let mut bird = Bird {
            child: Some(child),
            ns_name: ns.name().to_string(),
            config: conf,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while bird.birdc(&["show", "status"]).is_err() {
            if let Some(child) = bird.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "bird in {} exited ({status}); config {}",
                        bird.ns_name,
                        bird.config.display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("bird in {} did not answer within 10 s", bird.ns_name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(bird)
    }

    /// `birdc -s SOCKET ARGS`: its output.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running birdc")?;
        if !out.status.success() {
            bail!(
                "birdc {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGKILL, as in a node crash: no session is closed cleanly (the
    /// kernel still resets the TCP connections of a dead process).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = wait_or_kill(&mut child, Duration::from_secs(5));
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The next hops of the router's kernel route to `vip` (empty: no route).
pub fn router_next_hops(router: &Netns, vip: Ipv4Addr) -> Result<Vec<Ipv4Addr>> {
    let out = router.ip(&["-4", "route", "show", &format!("{vip}/32")])?;
    Ok(out
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .filter_map(|w| w[1].parse().ok())
        .collect())
}

/// Waits until the router's route to `vip` goes exactly through `want`
/// (in any order); returns how long that took.
pub fn wait_next_hops(
    router: &Netns,
    vip: Ipv4Addr,
    want: &[Ipv4Addr],
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let mut want = want.to_vec();
    want.sort();
    loop {
        let mut now = router_next_hops(router, vip)?;
        now.sort();
        if now == want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("router's next hops for {vip}: {now:?}, want {want:?} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
