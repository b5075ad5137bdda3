//! keepalived (VRRP) in the test bed: one VRRP instance per LB node on the
//! shared segment of [`Topology::build_shared`]; the master holds the VIP
//! addresses on its interface and answers the router's ARP for them. The
//! configuration is the one docs/deployment.md shows, with a short
//! advertisement interval. Each daemon runs in the foreground in its
//! namespace and is killed when its [`Keepalived`] is dropped.

use std::{net::Ipv4Addr, path::PathBuf, process::Child, time::Duration};

use anyhow::{Context, Result};

use crate::{agent::wait_or_kill, netns::Netns};

/// The VRRP instance of one node: `priority` decides the master.
pub fn config(
    node: &str,
    ifname: &str,
    priority: u8,
    advert_int_ms: u32,
    vips: &[Ipv4Addr],
) -> String {
    let vips: String = vips
        .iter()
        .map(|v| format!("    {v}/32 dev {ifname}\n"))
        .collect();
    format!(
        r#"global_defs {{
  router_id {node}
  vrrp_version 3
  # The VIP moves with the master: announce it at once with gratuitous ARP.
  vrrp_garp_master_delay 0
  vrrp_garp_master_repeat 3
}}
vrrp_instance lb_vips {{
  state BACKUP
  interface {ifname}
  virtual_router_id 51
  priority {priority}
  advert_int {advert}
  virtual_ipaddress {{
{vips}  }}
}}
"#,
        advert = advert_int_ms as f64 / 1000.0
    )
}

/// A running keepalived (VRRP only).
pub struct Keepalived {
    child: Option<Child>,
    /// The VRRP child process's pid file (keepalived runs VRRP in a child
    /// of the process we started).
    vrrp_pid: PathBuf,
}

impl Keepalived {
    pub fn start(ns: &Netns, dir: &std::path::Path, name: &str, config: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join(format!("{name}.keepalived.conf"));
        std::fs::write(&conf, config)?;
        let path = |suffix: &str| -> Result<String> {
            let p: PathBuf = dir.join(format!("{name}.{suffix}"));
            p.to_str().map(str::to_string).context("path is not UTF-8")
        };
        let conf_s = conf.to_str().context("path is not UTF-8")?.to_string();
        let (pid, vrrp_pid) = (path("pid")?, path("vrrp.pid")?);
        let child = ns.spawn(
            "keepalived",
            &[
                "--dont-fork",
                "--vrrp",
                "--log-console",
                "--use-file",
                &conf_s,
                "--pid",
                &pid,
                "--vrrp_pid",
                &vrrp_pid,
            ],
        )?;
        Ok(Self {
            child: Some(child),
            vrrp_pid: dir.join(format!("{name}.vrrp.pid")),
        })
    }

    /// SIGKILL to the VRRP process first, then to its parent: no VRRP
    /// "priority 0" goodbye, as in a node crash (killing only the parent
    /// makes the VRRP child shut down cleanly and say goodbye).
    pub fn kill(&mut self) -> Result<()> {
        let pid = std::fs::read_to_string(&self.vrrp_pid)
            .with_context(|| format!("reading {}", self.vrrp_pid.display()))?;
        let pid: i32 = pid
            .trim()
            .parse()
            .with_context(|| format!("{} holds no pid", self.vrrp_pid.display()))?;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = wait_or_kill(&mut child, Duration::from_secs(5));
        }
    }
}

/// Whether `ns` holds `addr` on `ifname` (it is the VRRP master).
pub fn holds(ns: &Netns, ifname: &str, addr: Ipv4Addr) -> Result<bool> {
    let out = ns.ip(&["-4", "-o", "addr", "show", "dev", ifname])?;
    Ok(out.contains(&format!("inet {addr}/32")))
}
