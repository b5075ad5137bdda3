//! Real HTTP load in the test bed: nginx on backends, wrk on clients, and
//! the machine's CPU time, for the reset-counting test and the
//! real-traffic benchmark. Needs `nginx` and `wrk` (`cargo xtask setup`).

use std::{path::PathBuf, process::Child, time::Duration};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// nginx in a backend's namespace on `port`: `/` answers with the
/// backend's name, `/bulk` is a file of `bulk_mib` MiB. Killed and its
/// directory removed on drop.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    pub fn start(ns: &Netns, name: &str, port: u16, bulk_mib: usize) -> Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("lbt-nginx-{}-{name}", std::process::id()));
        std::fs::create_dir_all(dir.join("www")).context("nginx directory")?;
        if bulk_mib > 0 {
            std::fs::write(dir.join("www/bulk"), vec![0x5a; bulk_mib << 20])
                .context("nginx bulk file")?;
        }
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; sendfile on; keepalive_requests 1000000;\n\
             client_body_temp_path {d}; proxy_temp_path {d};\n\
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen {port} backlog=4096; root {d}/www;\n\
             location = / {{ return 200 \"{name}\\n\"; }} }} }}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).context("nginx.conf")?;
        let child = ns
            .spawn(
                "nginx",
                &["-c", &path.display().to_string(), "-p", &d.to_string()],
            )
            .context("starting nginx; `cargo xtask setup` installs it")?;
        let nginx = Nginx { child, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ns
            .exec(&["ss", "-ltnH", &format!("sport = :{port}")])
            .is_ok_and(|out| !out.trim().is_empty())
        {
            if std::time::Instant::now() > deadline {
                bail!("nginx in {} did not listen on port {port}", ns.name());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one wrk run reported.
#[derive(Debug, Clone)]
pub struct WrkRun {
    pub requests: u64,
    /// Bytes read, as wrk reports them (rounded to its unit).
    pub bytes: f64,
    pub seconds: f64,
    /// The "Socket errors" and "Non-2xx" lines, if any.
    pub errors: Vec<String>,
    pub output: String,
}

/// Runs wrk in `client` against `url` for `seconds` with `connections`
/// connections on two threads; `close`: a new connection per request.
pub fn wrk(
    client: &Netns,
    url: &str,
    seconds: u32,
    connections: u32,
    close: bool,
) -> Result<WrkRun> {
    let duration = format!("-d{seconds}s");
    let conns = format!("-c{connections}");
    let mut args = vec!["wrk", "-t2", conns.as_str(), duration.as_str()];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let output = client
        .exec(&args)
        .with_context(|| format!("wrk {url}; `cargo xtask setup` installs it"))?;
    let (requests, bytes, seconds) = output
        .lines()
        .find_map(|l| {
            // "  40450 requests in 5.00s, 5.59MB read"
            let (n, rest) = l.trim().split_once(" requests in ")?;
            let (secs, read) = rest.split_once("s, ")?;
            Some((
                n.parse().ok()?,
                parse_size(read.strip_suffix(" read")?)?,
                secs.parse().ok()?,
            ))
        })
        .with_context(|| format!("no request count in wrk's output:\n{output}"))?;
    let errors = output
        .lines()
        .filter(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
        .map(|l| l.trim().to_string())
        .collect();
    Ok(WrkRun {
        requests,
        bytes,
        seconds,
        errors,
        output,
    })
}

/// "5.59MB" → bytes (wrk's units are powers of 1024).
fn parse_size(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// CPU time the whole machine has spent busy (every CPU, every namespace:
/// user, system, interrupts), in microseconds, from `/proc/stat`.
pub fn machine_busy_us() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if fields.len() < 5 {
        bail!("/proc/stat cpu line too short: {line}");
    }
    // user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    let busy: f64 = fields.iter().sum::<f64>() - fields[3] - fields[4];
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy / hz * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_wrk_units() {
        assert_eq!(parse_size("512B"), Some(512.0));
        assert_eq!(parse_size("5.5MB"), Some(5.5 * 1024.0 * 1024.0));
        assert_eq!(parse_size("1.25GB"), Some(1.25 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_size("3XB"), None);
    }
}
