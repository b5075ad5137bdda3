//! `cargo xtask demo`: builds a topology of network namespaces (two clients,
//! a router, the LB, four backends), starts `lb-agent` on the LB with an
//! HTTP health check, sends real TCP connections to the VIP and prints,
//! every second, how many new connections each backend served. Along the
//! way it shows what a plain balancer does not do:
//!
//! - `b2` is **drained** while `b3` is **removed**, at the same moment:
//!   b2's open connections keep working while new ones go elsewhere; b3's
//!   open connections are cut (their backend is gone);
//! - `b4` starts answering its health check with 503: the agent takes it
//!   out of the table on its own and brings it back when it recovers;
//!
//! all with zero failed new connections. It exits non-zero if any of that
//! does not hold, so CI runs it (`--quick`: shorter phases). Everything is
//! removed at the end, on error, and on Ctrl-C.
//!
//! `--ha` runs the active-active demo instead (see `ha`): three LB nodes
//! behind ECMP, one of which fails and returns.

mod ha;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_tests::{
    agent::{agent_config, Bed, TEST_VIP},
    topology::{echo_roundtrip, locate_bin, Topology, HEALTH_PORT},
};
use lb_userspace::{
    control::{
        client,
        protocol::{Request, ResponseData, VipInfo},
    },
    health::Health,
};
use serde_json::json;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const BACKENDS: usize = 4;
const PORT: u16 = 8080;
const LONG_LIVED: usize = 12;
/// Health check of the demo's VIP: fast enough to watch, with a timeout as
/// long as the interval so a loaded machine does not flap a healthy backend.
const CHECK_INTERVAL_MS: u64 = 300;
const CHECK_RISE: u32 = 3;
const CHECK_FALL: u32 = 2;
/// How long the demo waits for a health transition before it fails.
const HEALTH_DEADLINE: Duration = Duration::from_secs(15);
const LBCTL_ENV: &str = "LB_LBCTL";

fn say(msg: &str) {
    println!("\n==> {msg}");
}

/// What the clients saw: every finished attempt, kept for the per-second
/// lines and the final checks.
#[derive(Default)]
struct Record {
    /// (started, completed, backend) of every new connection that
    /// exchanged data.
    served: Vec<(Instant, Instant, String)>,
    /// (started, ended, backend if its banner arrived) of every failure.
    failed: Vec<(Instant, Instant, Option<String>)>,
}

/// When a backend stopped taking new connections and whether its open ones
/// are expected to be cut.
struct OutOfService {
    backend: usize,
    /// The change took effect somewhere in `[from, to]`.
    from: Instant,
    to: Instant,
    /// Until when (None: the end of the demo).
    until: Option<Instant>,
    cuts_open_connections: bool,
    why: &'static str,
}

struct Demo<'a> {
    topo: &'a Topology,
    socket: PathBuf,
    lbctl: PathBuf,
    out: Vec<OutOfService>,
}

impl Demo<'_> {
    fn vip(&self) -> String {
        format!("{TEST_VIP}:{PORT}/tcp")
    }

    fn addr(&self, j: usize) -> String {
        self.topo.backend_addr(j).to_string()
    }

    fn lbctl(&self, args: &[&str]) -> Result<()> {
        lbctl(&self.lbctl, &self.socket, args)
    }

    fn vip_info(&self) -> Result<VipInfo> {
        let response = client::request(&self.socket, &Request::ListVips {}, Duration::from_secs(5))
            .map_err(|e| anyhow::anyhow!("asking the agent for its VIPs: {e}"))?;
        match response.data {
            Some(ResponseData::Vips { vips }) => vips
                .into_iter()
                .find(|v| v.vip.addr == TEST_VIP && v.vip.port == PORT)
                .context("the agent no longer has the demo's VIP"),
            other => bail!("unexpected answer to list_vips: {other:?}"),
        }
    }

    /// Polls the agent until backend `j` reaches `health` and has (or has
    /// no) share of the table; returns when that was first seen.
    fn wait_health(&self, j: usize, health: Health, since: Instant) -> Result<Instant> {
        let addr = self.topo.backend_addr(j);
        loop {
            let info = self.vip_info()?;
            let b = info
                .backends
                .iter()
                .find(|b| b.address == addr)
                .context("backend left the VIP")?;
            let in_table = b.ring_share > 0.0;
            if b.health == health && in_table == (health == Health::Healthy) {
                return Ok(Instant::now());
            }
            if since.elapsed() > HEALTH_DEADLINE || INTERRUPTED.load(Ordering::Relaxed) {
                bail!(
                    "b{} did not become {health:?} within {HEALTH_DEADLINE:?}: {b:?}",
                    j + 1
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn out_of_service(
        &mut self,
        j: usize,
        from: Instant,
        to: Instant,
        cuts: bool,
        why: &'static str,
    ) {
        self.out.push(OutOfService {
            backend: j,
            from,
            to,
            until: None,
            cuts_open_connections: cuts,
            why,
        });
    }

    fn back_in_service(&mut self, j: usize, at: Instant) {
        for o in self
            .out
            .iter_mut()
            .filter(|o| o.backend == j && o.until.is_none())
        {
            o.until = Some(at);
        }
    }

    /// Why backend `name`'s open connections may be cut at `at`, if they may.
    fn cut_reason(&self, name: &str, start: Instant, end: Instant) -> Option<&'static str> {
        let j = self.topo.backend_index(name)?;
        self.out
            .iter()
            .find(|o| {
                o.backend == j
                    && o.cuts_open_connections
                    && o.from <= end
                    && o.until.is_none_or(|u| u >= start)
            })
            .map(|o| o.why)
    }

    /// Whether a change that cuts connections took effect while an attempt
    /// that never learned its backend was in flight.
    fn change_during(&self, start: Instant, end: Instant) -> bool {
        self.out
            .iter()
            .any(|o| o.cuts_open_connections && o.from <= end && o.to >= start)
    }
}

/// Runs `lbctl --socket SOCKET ARGS` as an operator would and prints the
/// command and its answer.
fn lbctl(lbctl: &Path, socket: &Path, args: &[&str]) -> Result<()> {
    println!("    $ lbctl {}", args.join(" "));
    let out = Command::new(lbctl)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .with_context(|| format!("running {}", lbctl.display()))?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("      {line}");
    }
    if !out.status.success() {
        bail!("lbctl {} failed with {}", args.join(" "), out.status);
    }
    Ok(())
}

struct Args {
    quick: bool,
    ha: bool,
}

const USAGE: &str = "usage: lb-demo [--quick] [--ha]";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        ha: false,
    };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--ha" => args.ha = true,
            "-h" | "--help" => {
                println!(
                    "{USAGE}   (needs root; `cargo xtask demo [--quick] [--ha]` builds and runs it)"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} ({USAGE})"),
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
    let lbctl = locate_bin("lbctl", LBCTL_ENV)?;
    if args.ha {
        return ha::run(args.quick, &lbctl);
    }
    let phase = if args.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(6)
    };

    say("building the topology: 2 clients, a router, the LB, 4 backends (network namespaces, 198.18.0.0/15)");
    say(&format!(
        "starting lb-agent on the LB (XDP balancer in native mode), VIP {TEST_VIP}:{PORT}/tcp -> b1..b4, \
         HTTP health check every {CHECK_INTERVAL_MS} ms (rise {CHECK_RISE}, fall {CHECK_FALL})"
    ));
    let bed = Bed::try_start_with(BACKENDS, "native", |topo| {
        let vip = json!({
            "address": TEST_VIP.to_string(),
            "port": PORT,
            "protocol": "tcp",
            "backends": (0..BACKENDS).map(|j| json!({"address": topo.backend_addr(j).to_string()})).collect::<Vec<_>>(),
            "health_check": {"type": "http", "port": HEALTH_PORT, "path": "/health",
                             "interval_ms": CHECK_INTERVAL_MS, "timeout_ms": CHECK_INTERVAL_MS,
                             "rise": CHECK_RISE, "fall": CHECK_FALL},
        });
        agent_config(topo, "native", vec![vip])
    })?;
    for line in bed.agent.log().lines() {
        println!("    agent | {}", agent_message(line));
    }
    let mut demo = Demo {
        topo: &bed.topo,
        socket: bed.agent.socket(),
        lbctl,
        out: Vec::new(),
    };
    let started = Instant::now();
    for j in 0..BACKENDS {
        demo.wait_health(j, Health::Healthy, started)?;
    }
    demo.lbctl(&["backends", &demo.vip()])?;

    say(&format!(
        "long-lived connections: {LONG_LIVED} connections stay open and exchange data all along"
    ));
    let mut long_lived = Vec::new();
    for i in 0..LONG_LIVED {
        let (name, stream) = bed
            .topo
            .tcp_connect(i % 2, TEST_VIP, PORT, Duration::from_secs(5))
            .with_context(|| format!("long-lived connection {i}"))?;
        long_lived.push((name, stream));
    }
    let mut names: Vec<&str> = long_lived.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    println!("    on {}", names.join(" "));

    say("sending new TCP connections from both clients; each line is one second");
    let record: Arc<Mutex<Record>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let outcome = std::thread::scope(|scope| -> Result<()> {
        for client in 0..2 {
            let record = Arc::clone(&record);
            let stop = Arc::clone(&stop);
            let topo = &bed.topo;
            scope.spawn(move || client_loop(topo, client, &record, &stop));
        }
        let result = run_phases(&mut demo, phase, &record, &mut long_lived);
        stop.store(true, Ordering::Relaxed);
        result
    });
    let verdict = outcome.and_then(|()| check(&demo, &record, started));
    if INTERRUPTED.load(Ordering::Relaxed) {
        say("interrupted");
    }

    say("stopping lb-agent (the pinned data path keeps forwarding without it)");
    let Bed {
        topo, mut agent, ..
    } = bed;
    let log = agent.stop()?;
    for line in log
        .lines()
        .filter(|l| l.contains("stopping:") || l.contains("stopped;"))
    {
        println!("    agent | {}", agent_message(line));
    }
    say("lb-agent --detach: removing the pinned data path");
    for line in agent.detach()?.lines() {
        println!("    agent | {}", agent_message(line));
    }
    drop(agent);
    say("removing the namespaces");
    drop(topo);
    verdict?;
    say("done: every claim above held");
    Ok(())
}

fn agent_message(line: &str) -> &str {
    line.split_once("] ").map(|(_, m)| m).unwrap_or(line)
}

/// One client: new connections one after the other, each exchanging data.
fn client_loop(topo: &Topology, client: usize, record: &Mutex<Record>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) && !INTERRUPTED.load(Ordering::Relaxed) {
        let start = Instant::now();
        let result = match topo.tcp_connect(client, TEST_VIP, PORT, Duration::from_secs(2)) {
            Ok((name, mut stream)) => match echo_roundtrip(&mut stream, b"ping") {
                Ok(_) => Ok(name),
                Err(_) => Err(Some(name)),
            },
            Err(_) => Err(None),
        };
        let end = Instant::now();
        if let Ok(mut r) = record.lock() {
            match result {
                Ok(name) => r.served.push((start, end, name)),
                Err(name) => r.failed.push((start, end, name)),
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the phases, printing a line per second; fails on the first broken
/// long-lived connection.
fn run_phases(
    demo: &mut Demo,
    phase: Duration,
    record: &Mutex<Record>,
    long_lived: &mut Vec<(String, std::net::TcpStream)>,
) -> Result<()> {
    // `errors` counts every connection that did not complete; the summary
    // tells failed new connections from those cut in flight by a removal.
    println!("     time      b1     b2     b3     b4  errors  event");
    let mut ticker = Ticker::new();
    // 1: everything in service.
    ticker.run_for(phase, record, "all four backends in the VIP")?;
    check_long_lived(demo, long_lived)?;

    // 2: drain b2 and remove b3 at the same moment.
    say("b2 drained (its open connections stay), b3 removed (its open connections go)");
    let vip = demo.vip();
    let from = Instant::now();
    demo.lbctl(&["backend", "drain", &vip, &demo.addr(1)])?;
    demo.lbctl(&["backend", "remove", &vip, &demo.addr(2)])?;
    let to = Instant::now();
    demo.out_of_service(1, from, to, false, "drained");
    demo.out_of_service(2, from, to, true, "removed from the VIP");
    ticker.run_for(phase, record, "b2 draining, b3 removed")?;
    check_long_lived(demo, long_lived)?;

    // 3: both back.
    say("b2 undrained, b3 added back");
    // Out of service until the first command starts: from then on they may
    // take new connections again.
    let back = Instant::now();
    demo.lbctl(&["backend", "undrain", &vip, &demo.addr(1)])?;
    demo.lbctl(&["backend", "add", &vip, &demo.addr(2)])?;
    demo.back_in_service(1, back);
    demo.back_in_service(2, back);
    ticker.run_for(phase, record, "b2 and b3 back")?;
    check_long_lived(demo, long_lived)?;

    // 4: b4's application turns sick; the agent notices on its own.
    say("b4's health endpoint starts answering 503 (its service port stays open)");
    demo.topo.set_http_health(3, false)?;
    let sick = Instant::now();
    let seen = ticker.run_until(record, "b4 answers 503", || {
        demo.wait_health(3, Health::Unhealthy, sick)
    })?;
    println!(
        "    b4 taken out by the agent {:.1} s after it turned sick",
        (seen - sick).as_secs_f64()
    );
    demo.out_of_service(3, sick, seen, true, "unhealthy (its flows are re-selected)");
    demo.lbctl(&["backends", &vip])?;
    ticker.run_for(phase, record, "b4 unhealthy")?;
    check_long_lived(demo, long_lived)?;

    // 5: b4 recovers.
    say("b4's health endpoint answers 200 again");
    demo.topo.set_http_health(3, true)?;
    let healed = Instant::now();
    let seen = ticker.run_until(record, "b4 answers 200", || {
        demo.wait_health(3, Health::Healthy, healed)
    })?;
    println!(
        "    b4 back in the table {:.1} s after it recovered (rise {CHECK_RISE})",
        (seen - healed).as_secs_f64()
    );
    demo.back_in_service(3, healed);
    ticker.run_for(phase, record, "b4 healthy again")?;
    check_long_lived(demo, long_lived)
}

/// Prints a line per second of what the clients recorded since the last.
struct Ticker {
    second: u64,
    next: Instant,
    printed_served: usize,
    printed_failed: usize,
    note: Option<String>,
}

impl Ticker {
    fn new() -> Self {
        Ticker {
            second: 0,
            next: Instant::now() + Duration::from_secs(1),
            printed_served: 0,
            printed_failed: 0,
            note: None,
        }
    }

    fn run_for(&mut self, duration: Duration, record: &Mutex<Record>, note: &str) -> Result<()> {
        self.note = Some(note.to_string());
        let end = Instant::now() + duration;
        while Instant::now() < end {
            self.step(record)?;
        }
        Ok(())
    }

    /// Keeps printing lines while `wait` (which blocks) runs on this thread's
    /// behalf in another thread.
    fn run_until<T: Send>(
        &mut self,
        record: &Mutex<Record>,
        note: &str,
        wait: impl FnOnce() -> Result<T> + Send,
    ) -> Result<T> {
        self.note = Some(note.to_string());
        std::thread::scope(|scope| {
            let waiter = scope.spawn(wait);
            while !waiter.is_finished() {
                self.step(record)?;
            }
            waiter
                .join()
                .map_err(|_| anyhow::anyhow!("the health watcher panicked"))?
        })
    }

    fn step(&mut self, record: &Mutex<Record>) -> Result<()> {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let now = Instant::now();
        if now < self.next {
            std::thread::sleep((self.next - now).min(Duration::from_millis(50)));
            return Ok(());
        }
        self.next += Duration::from_secs(1);
        self.second += 1;
        let (counts, failed) = {
            let r = record
                .lock()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
            let mut counts = [0u64; BACKENDS];
            for (_, _, name) in &r.served[self.printed_served..] {
                if let Some(j) = name.strip_prefix('b').and_then(|n| n.parse::<usize>().ok()) {
                    if let Some(c) = counts.get_mut(j.wrapping_sub(1)) {
                        *c += 1;
                    }
                }
            }
            let failed = r.failed.len() - self.printed_failed;
            self.printed_served = r.served.len();
            self.printed_failed = r.failed.len();
            (counts, failed)
        };
        println!(
            "    {:>4}s  {:>6} {:>6} {:>6} {:>6}  {:>6}  {}",
            self.second,
            counts[0],
            counts[1],
            counts[2],
            counts[3],
            failed,
            self.note.take().unwrap_or_default()
        );
        Ok(())
    }
}

/// Each long-lived connection exchanges data: it must work unless its
/// backend was taken out in a way that cuts connections.
fn check_long_lived(
    demo: &Demo,
    long_lived: &mut Vec<(String, std::net::TcpStream)>,
) -> Result<()> {
    let mut broken = Vec::new();
    let now = Instant::now();
    let mut lines = Vec::new();
    long_lived.retain_mut(|(name, stream)| {
        let ok = echo_roundtrip(stream, b"still here").is_ok();
        if !ok {
            match demo.cut_reason(name, now, now) {
                Some(why) => lines.push(format!("{name}: reset, its backend was {why}")),
                None => broken.push(name.clone()),
            }
        }
        ok
    });
    let mut open: Vec<&str> = long_lived.iter().map(|(n, _)| n.as_str()).collect();
    open.sort_unstable();
    println!(
        "    long-lived connections still working: {}",
        open.join(" ")
    );
    for line in lines {
        println!("    long-lived {line}");
    }
    if !broken.is_empty() {
        bail!(
            "long-lived connections on {} broke although their backend stayed in service",
            broken.join(", ")
        );
    }
    Ok(())
}

/// The demo's claims, checked on everything the clients recorded.
fn check(demo: &Demo, record: &Mutex<Record>, started: Instant) -> Result<()> {
    let r = record
        .lock()
        .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    let mut failed = 0;
    let mut cut = 0;
    for (start, end, name) in &r.failed {
        let was_cut = match name {
            Some(name) => demo.cut_reason(name, *start, *end).is_some(),
            None => demo.change_during(*start, *end),
        };
        if was_cut {
            cut += 1;
        } else {
            failed += 1;
        }
    }
    // No connection started after a backend left service may reach it (a
    // SYN is always balanced on the table, never on an old pin).
    let mut leaks = Vec::new();
    for o in &demo.out {
        let name = format!("b{}", o.backend + 1);
        let late: Vec<String> = r
            .served
            .iter()
            .filter(|(start, _, b)| {
                *b == name && *start > o.to && o.until.is_none_or(|u| *start < u)
            })
            .map(|(start, end, _)| {
                format!(
                    "started {:.0} ms after the change, took {:.0} ms",
                    (*start - o.to).as_secs_f64() * 1e3,
                    (*end - *start).as_secs_f64() * 1e3
                )
            })
            .collect();
        if !late.is_empty() {
            leaks.push(format!(
                "{} new connections reached {name} while it was {} ({})",
                late.len(),
                o.why,
                late.join(", ")
            ));
        }
    }
    say("summary");
    println!(
        "    {} new connections in {:.0} s, {failed} failed{}",
        r.served.len(),
        started.elapsed().as_secs_f64(),
        if cut > 0 {
            format!("; {cut} cut: already open on a backend at the moment it was taken out")
        } else {
            String::new()
        }
    );
    println!(
        "    new connections to a drained, removed or unhealthy backend: {}",
        if leaks.is_empty() {
            "none".to_string()
        } else {
            leaks.join("; ")
        }
    );
    if failed > 0 {
        bail!("{failed} new connections failed");
    }
    if !leaks.is_empty() {
        bail!("{}", leaks.join("; "));
    }
    Ok(())
}
