//! Many short HTTP connections (wrk, `Connection: close`, 32 at a time)
//! from a client through the router and the balancer to three nginx
//! backends, against the same load straight to one backend, counting the
//! client's TCP resets. Every reset must be one that wrk made itself by
//! closing connections it had not finished reading (at the end of its
//! run): a SYN answered with a reset (a reused port sent to the wrong
//! backend), or an established connection reset from the other side, is
//! the balancer's fault.
//!
//! Needs `nginx` and `wrk` (installed by `cargo xtask setup`).

use std::{collections::BTreeMap, path::PathBuf, process::Child, time::Duration};

use lb_tests::{
    agent::{agent_config, vip_config, Bed, TEST_VIP},
    netns::Netns,
};

const PORT: u16 = 8081;
const SECONDS: u32 = 5;
/// The client's TCP counters (`nstat`) the test reads.
const COUNTERS: [&str; 5] = [
    "TcpActiveOpens",
    "TcpAttemptFails",
    "TcpEstabResets",
    "TcpExtTCPAbortOnClose",
    "TcpExtTCPAbortOnData",
];

/// nginx in a backend's namespace, answering every request with its name;
/// killed and its directory removed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(ns: &Netns, name: &str) -> Nginx {
        let dir = std::env::temp_dir().join(format!("lbt-nginx-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("nginx directory");
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n\
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen {PORT} backlog=4096; location / {{ return 200 \"{name}\\n\"; }} }} }}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("nginx.conf");
        let child = ns
            .spawn(
                "nginx",
                &["-c", &path.display().to_string(), "-p", &d.to_string()],
            )
            .unwrap_or_else(|e| panic!("starting nginx ({e:#}); `cargo xtask setup` installs it"));
        Nginx { child, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The client's counters since the last call (`nstat` keeps the history).
fn counters(ns: &Netns) -> BTreeMap<String, u64> {
    let mut args = vec!["nstat", "-z"];
    args.extend(COUNTERS);
    let out = ns.exec(&args).expect("nstat");
    out.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.parse().ok()?))
        })
        .collect()
}

struct Run {
    requests: u64,
    wrk: String,
    counters: BTreeMap<String, u64>,
}

impl Run {
    fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Resets of established connections that wrk's own aborts do not
    /// explain.
    fn unexplained_resets(&self) -> u64 {
        self.get("TcpEstabResets")
            .saturating_sub(self.get("TcpExtTCPAbortOnClose") + self.get("TcpExtTCPAbortOnData"))
    }
}

fn wrk(client: &Netns, url: &str) -> Run {
    counters(client);
    let wrk = client
        .exec(&[
            "wrk",
            "-t2",
            "-c32",
            &format!("-d{SECONDS}s"),
            "-H",
            "Connection: close",
            url,
        ])
        .unwrap_or_else(|e| panic!("wrk {url}: {e:#}; `cargo xtask setup` installs it"));
    let counters = counters(client);
    let requests = wrk
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{wrk}"));
    Run {
        requests,
        wrk,
        counters,
    }
}

#[test]
fn short_connections_through_the_balancer_get_no_resets_of_their_own() {
    let bed = Bed::start_with(3, "native", |topo| {
        let backends: Vec<_> = (0..3).map(|j| (topo.backend_addr(j), 1)).collect();
        agent_config(
            topo,
            "native",
            vec![vip_config(TEST_VIP, PORT, "tcp", &backends)],
        )
    });
    let _servers: Vec<Nginx> = (0..3)
        .map(|j| Nginx::start(bed.topo.backend_ns(j), &format!("b{}", j + 1)))
        .collect();
    let client = bed.topo.client_ns(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for j in 0..3 {
        let ns = bed.topo.backend_ns(j);
        while !ns
            .exec(&["ss", "-ltnH", &format!("sport = :{PORT}")])
            .is_ok_and(|out| !out.trim().is_empty())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx on backend {j} did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let direct = wrk(
        client,
        &format!("http://{}:{PORT}/", bed.topo.backend_addr(0)),
    );
    let via = wrk(client, &format!("http://{TEST_VIP}:{PORT}/"));
    for (what, run) in [("straight to b1", &direct), ("through the balancer", &via)] {
        println!(
            "{what}: {} requests in {SECONDS} s, counters {:?}, unexplained resets {}",
            run.requests,
            run.counters,
            run.unexplained_resets()
        );
    }
    // Enough connections that the client reuses its ports (more than its
    // ephemeral range holds in the run) through the balancer as well.
    assert!(
        via.requests > 10_000,
        "too few requests to tell:\n{}",
        via.wrk
    );
    for line in via.wrk.lines() {
        assert!(
            !line.contains("Non-2xx") && !line.contains("Socket errors"),
            "wrk through the balancer: {line}\n{}",
            via.wrk
        );
    }
    assert_eq!(
        via.get("TcpAttemptFails"),
        0,
        "connection attempts answered with a reset through the balancer: {:?}",
        via.counters
    );
    assert!(
        via.unexplained_resets() <= direct.unexplained_resets(),
        "resets through the balancer that wrk's aborts do not explain: {} (straight to a backend: {})\n{:?}",
        via.unexplained_resets(),
        direct.unexplained_resets(),
        via.counters
    );
}
