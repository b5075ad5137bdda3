//! `cargo xtask demo`: builds a topology of network namespaces (two clients,
//! a router, the LB, three backends), starts `lb-agent` on the LB, sends
//! real TCP connections to the VIP and prints, every second, how many new
//! connections each backend served. Midway it takes one backend out of the
//! VIP and puts it back, so the table can be seen adapting. Everything is
//! removed at the end, on error, and on Ctrl-C.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lb_tests::{
    agent::{Bed, TEST_VIP},
    topology::echo_roundtrip,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const PHASE: Duration = Duration::from_secs(8);

fn say(msg: &str) {
    println!("\n==> {msg}");
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--agent" {
            let path = args.next().context("--agent needs a path")?;
            std::env::set_var(lb_tests::agent::AGENT_BIN_ENV, path);
        }
    }
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };

    say("building the topology: 2 clients, a router, the LB, 3 backends (network namespaces, 198.18.0.0/15)");
    say("starting lb-agent on the LB (XDP balancer in native mode), VIP 198.18.0.10:8080 -> b1, b2, b3");
    let mut bed = Bed::try_start(3, &[Some(1), Some(1), Some(1)], "native")?;
    for line in bed.agent.log().lines() {
        println!(
            "    agent | {}",
            line.split_once("] ").map(|(_, m)| m).unwrap_or(line)
        );
    }

    say("long-lived connections: 6 connections stay open and exchange data all along");
    let mut long_lived = bed.open(6);
    for (name, _) in &long_lived {
        println!("    long-lived connection on {name}");
    }

    say("sending new TCP connections from both clients; each line is one second");
    let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let failures = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    println!("     time      b1     b2     b3  failures  event");
    let started = Instant::now();
    let phases = [
        (
            PHASE,
            "all three backends in the VIP",
            [Some(1), Some(1), Some(1)],
        ),
        (PHASE, "b2 taken out of the VIP", [Some(1), None, Some(1)]),
        (PHASE, "b2 back in the VIP", [Some(1), Some(1), Some(1)]),
    ];
    let topo = &bed.topo;
    let agent = &mut bed.agent;
    std::thread::scope(|scope| -> Result<()> {
        for client in 0..2 {
            let counts = Arc::clone(&counts);
            let failures = Arc::clone(&failures);
            let stop = Arc::clone(&stop);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) && !INTERRUPTED.load(Ordering::Relaxed) {
                    let served = topo
                        .tcp_connect(client, TEST_VIP, 8080, Duration::from_secs(2))
                        .and_then(|(name, mut stream)| {
                            echo_roundtrip(&mut stream, b"ping").map(|_| name)
                        });
                    match served {
                        Ok(name) => {
                            if let Ok(mut c) = counts.lock() {
                                *c.entry(name).or_default() += 1;
                            }
                        }
                        Err(_) => {
                            if let Ok(mut f) = failures.lock() {
                                *f += 1;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        let mut second = 0;
        'phases: for (duration, event, weights) in phases {
            if second > 0 {
                agent.reload(&Bed::config_for(topo, "native", 8080, &weights))?;
            }
            let mut note = event;
            let phase_end = Instant::now() + duration;
            while Instant::now() < phase_end {
                std::thread::sleep(Duration::from_secs(1));
                if INTERRUPTED.load(Ordering::Relaxed) {
                    break 'phases;
                }
                second += 1;
                let snapshot = counts
                    .lock()
                    .map(|mut c| std::mem::take(&mut *c))
                    .unwrap_or_default();
                let failed = failures
                    .lock()
                    .map(|mut f| std::mem::take(&mut *f))
                    .unwrap_or_default();
                let get = |n: &str| snapshot.get(n).copied().unwrap_or(0);
                println!(
                    "    {:>4}s  {:>6} {:>6} {:>6}  {:>8}  {}",
                    second,
                    get("b1"),
                    get("b2"),
                    get("b3"),
                    failed,
                    note
                );
                note = "";
            }
            // The long-lived connections on the backends that stay keep
            // working; those of a removed backend are re-selected and reset.
            long_lived.retain_mut(|(name, stream)| {
                let ok = echo_roundtrip(stream, b"still here").is_ok();
                let in_vip = match name.as_str() {
                    "b1" => weights[0].is_some(),
                    "b2" => weights[1].is_some(),
                    _ => weights[2].is_some(),
                };
                let status = match (ok, in_vip) {
                    (true, _) => "ok",
                    (false, false) => "reset (its backend left the VIP)",
                    (false, true) => "BROKEN",
                };
                println!("    long-lived connection on {name}: {status}");
                ok
            });
        }
        stop.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    if INTERRUPTED.load(Ordering::Relaxed) {
        say("interrupted");
    }
    println!("    total time {:.0} s", started.elapsed().as_secs_f64());

    say("stopping lb-agent (the pinned data path keeps forwarding without it)");
    let Bed {
        topo, mut agent, ..
    } = bed;
    let log = agent.stop()?;
    for line in log
        .lines()
        .filter(|l| l.contains("stopping:") || l.contains("stopped;"))
    {
        println!(
            "    agent | {}",
            line.split_once("] ").map(|(_, m)| m).unwrap_or(line)
        );
    }
    say("lb-agent --detach: removing the pinned data path");
    for line in agent.detach()?.lines() {
        println!(
            "    agent | {}",
            line.split_once("] ").map(|(_, m)| m).unwrap_or(line)
        );
    }
    drop(agent);
    say("removing the namespaces");
    drop(topo);
    say("done");
    Ok(())
}
