//! `cargo xtask demo --ha`: an LB node fails and returns, live, on the
//! active-active test bed of tests/tests/ha_ecmp.rs (`lb_tests::cluster`):
//! two clients, a router running BIRD with ECMP, three LB nodes each
//! running lb-agent and BIRD, three backends.
//!
//! Long-lived connections stay open and exchange data every second; new
//! TCP connections are made from both clients all along. Every second a
//! line shows the flows each LB node selected, the new connections each
//! backend served, the new connections that failed and the long-lived ones
//! that broke. Node lb1 is killed (lb-agent and BIRD, `kill -9`): the
//! router withdraws its route, the other two take its flows, and its
//! long-lived connections continue through them to the same backend. Then
//! it returns (agent restarted on its pinned data path, BIRD started) and
//! takes its share again. The demo checks each of these claims on what it
//! saw and fails if one does not hold; zero new connections may fail.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_tests::{
    agent::TEST_VIP,
    churn::Churn,
    cluster::{self, Cluster, Conn, Failure, NODES, PORT, VIP_BACKENDS},
    topology::echo_roundtrip,
};

use crate::{say, INTERRUPTED};

/// The node that fails.
const DEAD: usize = 1;
const LONG_LIVED: usize = 60;
/// Each client's pause between new connections (a few hundred a second).
const PAUSE: Duration = Duration::from_millis(5);
/// The phases of the demo, as the per-second lines are tagged.
const UP: usize = 0;
const DOWN: usize = 1;
const RETURNING: usize = 2;
const BACK: usize = 3;
/// A returned node must take at least half of its fair share (1/3) of the
/// new flows of the last phase: far below what ECMP gives it (about a
/// third), far above what a node left out would see (none).
const MIN_SHARE: f64 = 1.0 / 6.0;

fn node(k: usize) -> String {
    format!("lb{k}")
}

/// What the watcher saw in one second.
struct Tick {
    phase: usize,
    /// Flows each node selected (none: its agent did not answer).
    flows: [Option<u64>; NODES],
    /// Long-lived connections that broke this second.
    broken: Vec<String>,
}

/// A long-lived connection, checked every second.
struct LongLived {
    conn: Conn,
    broken: bool,
}

/// Shared by the thread that changes the cluster and the watcher.
struct Shared {
    long_lived: Mutex<Vec<LongLived>>,
    ticks: Mutex<Vec<Tick>>,
    /// The event shown on the next line.
    note: Mutex<Option<String>>,
    phase: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    fn event(&self, note: &str, phase: usize) {
        if let Ok(mut n) = self.note.lock() {
            *n = Some(note.to_string());
        }
        self.phase.store(phase, Ordering::SeqCst);
    }
}

pub fn run(quick: bool, lbctl: &Path) -> Result<()> {
    let phase = if quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(8)
    };
    say(&format!(
        "building the topology: 2 clients, a router running BIRD (ECMP over the LB nodes), \
         3 LB nodes each running lb-agent and BIRD, {VIP_BACKENDS} backends \
         (network namespaces, 198.18.0.0/15)"
    ));
    let mut cluster = Cluster::start(VIP_BACKENDS)?;
    let outcome = demo(&mut cluster, phase, lbctl);
    if INTERRUPTED.load(Ordering::Relaxed) {
        say("interrupted");
    }
    say("stopping the agents (each withdraws its route and detaches) and BIRD, removing the namespaces");
    drop(cluster);
    outcome?;
    say("done: every claim above held");
    Ok(())
}

fn demo(c: &mut Cluster, phase: Duration, lbctl: &Path) -> Result<()> {
    let all: Vec<usize> = (0..NODES).collect();
    let t = c.wait_routes(&all, "all three nodes announced")?;
    say(&format!(
        "every node announces the VIP {TEST_VIP} over BGP; the router has one ECMP route over the three \
         ({:.1} s after the last node started):",
        t.as_secs_f64()
    ));
    show_route(c)?;
    say("each node builds the same Maglev table from the same configuration:");
    for k in 0..NODES {
        println!("    {}:", node(k));
        crate::lbctl(lbctl, &c.agents[k].socket(), &["digest"])?;
    }
    let digests = (0..NODES)
        .map(|k| c.digest(k))
        .collect::<Result<Vec<_>>>()?;
    if digests.iter().any(|d| *d != digests[0]) {
        bail!("the nodes' tables differ: {digests:?}");
    }

    let mut long_lived = Vec::new();
    for i in 0..LONG_LIVED {
        long_lived.push(LongLived {
            conn: c.open(i)?,
            broken: false,
        });
    }
    let per_node = count(long_lived.iter().map(|l| node(l.conn.node)));
    let per_backend = count(long_lived.iter().map(|l| l.conn.backend.clone()));
    say(&format!(
        "{LONG_LIVED} long-lived connections stay open and exchange data every second: \
         through {} to {}",
        show_counts(&per_node),
        show_counts(&per_backend)
    ));
    if per_node.len() < NODES {
        bail!("the long-lived connections did not spread over the three nodes: {per_node:?}");
    }

    let shared = Shared {
        long_lived: Mutex::new(long_lived),
        ticks: Mutex::default(),
        note: Mutex::default(),
        phase: AtomicUsize::new(UP),
        stop: AtomicBool::new(false),
    };
    let started = Instant::now();
    let churn = Churn::paced(
        vec![c.topo.client_ns(0).path(), c.topo.client_ns(1).path()],
        SocketAddr::from((TEST_VIP, PORT)),
        PAUSE,
    );
    let sockets: Vec<PathBuf> = c.agents.iter().map(|a| a.socket()).collect();
    let backends = c.topo.backend_names();
    say("new TCP connections from both clients, one after the other; each line is one second");
    println!(
        "    flows: selected from each node's table (new connections, and flows a node takes over)"
    );
    println!("    backends: new connections served; failed: new connections that failed;");
    println!("    broken: long-lived connections that broke");
    println!(
        "     time  {}  {}  failed  broken  event",
        columns((0..NODES).map(node)),
        columns(backends.iter())
    );
    let times = std::thread::scope(|scope| {
        scope.spawn(|| watch(&shared, &churn, &sockets, &backends));
        let result = phases(c, phase, &shared);
        shared.stop.store(true, Ordering::SeqCst);
        result
    });
    let (ok, failed) = churn.stop();
    let times = times?;
    check(&shared, ok, failed, &times, started)
}

/// How long the routing changes took.
struct Times {
    withdrawn: Duration,
    returned: Duration,
}

/// The failure and the return, as the watcher prints.
fn phases(c: &mut Cluster, phase: Duration, shared: &Shared) -> Result<Times> {
    shared.event("all three nodes up", UP);
    wait(phase)?;

    say(&format!(
        "{}: {}, kill -9",
        node(DEAD),
        Failure::Processes.describe()
    ));
    shared.event(&format!("{} killed", node(DEAD)), DOWN);
    let withdrawn = c.fail(DEAD, Failure::Processes)?;
    println!(
        "    the router withdrew {}'s route {:.0} ms after the kill (its BGP session closed with BIRD):",
        node(DEAD),
        withdrawn.as_secs_f64() * 1e3
    );
    show_route(c)?;
    println!("      router$ birdc show protocols");
    for line in c
        .router_birdc(&["show", "protocols"])?
        .lines()
        .filter(|l| l.starts_with("Name") || l.contains("BGP"))
    {
        println!("        {}", line.trim_end());
    }
    wait(phase)?;
    took_over(c, shared)?;

    say(&format!(
        "{} returns: lb-agent restarted (it adopts its pinned data path), BIRD started",
        node(DEAD)
    ));
    shared.event(&format!("{} returns", node(DEAD)), RETURNING);
    let returned = c.revive(DEAD, Failure::Processes)?;
    println!(
        "    the router routes to {} again {:.1} s after the restart:",
        node(DEAD),
        returned.as_secs_f64()
    );
    show_route(c)?;
    if c.digest(DEAD)? != c.digest(0)? {
        bail!("the returned node's table differs from the others'");
    }
    shared.event(&format!("{} back", node(DEAD)), BACK);
    wait(phase)?;
    Ok(Times {
        withdrawn,
        returned,
    })
}

/// The dead node's long-lived connections now live in the other nodes'
/// tables, each pinned to the backend it began on.
fn took_over(c: &Cluster, shared: &Shared) -> Result<()> {
    let long_lived = shared
        .long_lived
        .lock()
        .map_err(|_| anyhow::anyhow!("the watcher panicked"))?;
    let mut through = BTreeMap::new();
    let mut moved = 0;
    for l in long_lived.iter().filter(|l| l.conn.node == DEAD) {
        let backend = c
            .topo
            .backend_index(&l.conn.backend)
            .map(|j| c.topo.backend_addr(j))
            .context("a backend's name")?;
        let pins = c.pins(c.topo.client_addr(l.conn.client), l.conn.port);
        if l.broken || pins.is_empty() || pins.iter().any(|&(k, b)| k == DEAD || b != backend) {
            bail!(
                "a long-lived connection of {} to {} did not move to another node with its backend \
                 (broken: {}, pinned: {pins:?})",
                node(DEAD),
                l.conn.backend,
                l.broken
            );
        }
        for (k, _) in pins {
            *through.entry(node(k)).or_insert(0) += 1;
        }
        moved += 1;
    }
    println!(
        "    {}'s {moved} long-lived connections all continue, through {}, each to the backend it began on",
        node(DEAD),
        show_counts(&through)
    );
    Ok(())
}

/// The watcher: a line per second until told to stop.
fn watch(shared: &Shared, churn: &Churn, sockets: &[PathBuf], backends: &[String]) {
    let mut last_flows: [Option<u64>; NODES] = [None; NODES];
    for (k, s) in sockets.iter().enumerate() {
        last_flows[k] = cluster::new_flows(s);
    }
    let (mut last_served, mut last_failed) = churn.counts();
    let mut next = Instant::now() + Duration::from_secs(1);
    let mut second = 0;
    while !shared.stop.load(Ordering::SeqCst) && !INTERRUPTED.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        next += Duration::from_secs(1);
        second += 1;
        let phase = shared.phase.load(Ordering::SeqCst);
        let mut flows = [None; NODES];
        for (k, s) in sockets.iter().enumerate() {
            let now = cluster::new_flows(s);
            // A node's counters may restart with its agent: then all it
            // counted is new. While its agent is away its last count
            // stays the baseline.
            flows[k] = now.map(|n| match last_flows[k] {
                Some(l) if l <= n => n - l,
                _ => n,
            });
            if now.is_some() {
                last_flows[k] = now;
            }
        }
        let (served, failed) = churn.counts();
        let per_backend: Vec<usize> = backends
            .iter()
            .map(|b| served.get(b).copied().unwrap_or(0) - last_served.get(b).copied().unwrap_or(0))
            .collect();
        let new_failed = failed - last_failed;
        (last_served, last_failed) = (served, failed);
        let mut broken = Vec::new();
        if let Ok(mut long_lived) = shared.long_lived.lock() {
            for l in long_lived.iter_mut().filter(|l| !l.broken) {
                if !echo_roundtrip(&mut l.conn.stream, b"still there?")
                    .is_ok_and(|b| b == b"still there?")
                {
                    l.broken = true;
                    broken.push(format!(
                        "from {} through {} to {}",
                        l.conn.port,
                        node(l.conn.node),
                        l.conn.backend
                    ));
                }
            }
        }
        let note = shared
            .note
            .lock()
            .ok()
            .and_then(|mut n| n.take())
            .unwrap_or_default();
        println!(
            "    {second:>4}s  {}  {}  {new_failed:>6}  {:>6}  {note}",
            columns(
                flows
                    .iter()
                    .map(|f| f.map_or("-".to_string(), |f| f.to_string()))
            ),
            columns(per_backend.iter()),
            broken.len()
        );
        if let Ok(mut ticks) = shared.ticks.lock() {
            ticks.push(Tick {
                phase,
                flows,
                broken,
            });
        }
    }
}

/// The claims, checked on what the watcher saw.
fn check(shared: &Shared, ok: usize, failed: usize, times: &Times, started: Instant) -> Result<()> {
    let ticks = shared
        .ticks
        .lock()
        .map_err(|_| anyhow::anyhow!("the watcher panicked"))?;
    let broken: Vec<&String> = ticks.iter().flat_map(|t| &t.broken).collect();
    let flows_in = |phase: usize| -> [u64; NODES] {
        let mut sum = [0; NODES];
        for t in ticks.iter().filter(|t| t.phase == phase) {
            for (k, f) in t.flows.iter().enumerate() {
                sum[k] += f.unwrap_or(0);
            }
        }
        sum
    };
    let (up, down, back) = (flows_in(UP), flows_in(DOWN), flows_in(BACK));
    let share = |f: [u64; NODES], k: usize| f[k] as f64 / f.iter().sum::<u64>().max(1) as f64;
    let shares = |f: [u64; NODES]| {
        (0..NODES)
            .map(|k| format!("{} {:.0}%", node(k), share(f, k) * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    say("summary");
    println!(
        "    {ok} new connections in {:.0} s, {failed} failed",
        started.elapsed().as_secs_f64()
    );
    println!(
        "    {LONG_LIVED} long-lived connections, {} broke{}",
        broken.len(),
        if broken.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                broken
                    .iter()
                    .map(|b| b.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    );
    println!(
        "    {}'s route withdrawn {:.0} ms after the kill; back {:.1} s after the restart",
        node(DEAD),
        times.withdrawn.as_secs_f64() * 1e3,
        times.returned.as_secs_f64()
    );
    println!("    flows per node, all up: {}", shares(up));
    println!("    flows per node, {} down: {}", node(DEAD), shares(down));
    println!("    flows per node, {} back: {}", node(DEAD), shares(back));
    if failed > 0 {
        bail!("{failed} new connections failed");
    }
    if ok == 0 {
        bail!("no new connection was made");
    }
    if !broken.is_empty() {
        bail!("{} long-lived connections broke", broken.len());
    }
    if let Some(k) = (0..NODES).find(|&k| up[k] == 0) {
        bail!("{} took no flows while every node was up", node(k));
    }
    if share(back, DEAD) < MIN_SHARE {
        bail!(
            "{} took {:.0}% of the new flows after its return, less than {:.0}%",
            node(DEAD),
            share(back, DEAD) * 100.0,
            MIN_SHARE * 100.0
        );
    }
    Ok(())
}

/// The router's route to the VIP, indented.
fn show_route(c: &Cluster) -> Result<()> {
    println!("      router$ ip route show {TEST_VIP}");
    for line in c.router_route()?.lines() {
        println!("        {}", line.trim_end());
    }
    Ok(())
}

/// Sleeps `d`, unless interrupted.
fn wait(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The columns of a per-second line: right-aligned, five wide.
fn columns<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items
        .map(|i| format!("{i:>5}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn count(items: impl Iterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in items {
        *counts.entry(i).or_insert(0) += 1;
    }
    counts
}

fn show_counts(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}
