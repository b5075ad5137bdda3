//! Hitless restarts: the agent is killed with SIGKILL (and later stopped
//! and restarted, as in an upgrade) while many connections are open and new
//! ones keep arriving. The pinned data path keeps forwarding, the new agent
//! adopts it without rewriting a table or resetting the connection table,
//! and not one connection fails.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use lb_tests::{
    agent::{Bed, TEST_VIP},
    topology::echo_roundtrip,
};
use lb_userspace::{
    control::{
        client,
        protocol::{Request, Response, ResponseData},
    },
    dataplane::{Protocol, VipAddr},
};

fn ask(bed: &Bed, request: Request) -> Response {
    let response = client::request(&bed.agent.socket(), &request, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{request:?}: {e}"));
    assert!(response.ok, "{request:?}: {response:?}");
    response
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn flow_hits(bed: &Bed) -> u64 {
    match ask(bed, Request::Stats {}).data {
        Some(ResponseData::Stats { stats }) => stats.global.flow_hits,
        other => panic!("stats: {other:?}"),
    }
}

#[test]
fn kill_9_and_restart_lose_no_connection() {
    let mut bed = Bed::start(3, &[Some(1), Some(1), Some(1)], "native");
    let vip = VipAddr {
        addr: std::net::IpAddr::V4(TEST_VIP),
        port: bed.port,
        proto: Protocol::Tcp,
    };
    let mut long_lived = bed.open(40);
    let stop = AtomicBool::new(false);
    let new_ok = AtomicU64::new(0);
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));

    std::thread::scope(|scope| {
        // Whatever happens below, even a panic, stops the connection
        // threads: the scope joins them before it passes a panic on.
        let _stop_on_exit = StopOnDrop(&stop);
        // A steady stream of new connections from both clients.
        for client in 0..2 {
            let (topo, stop, new_ok, failures) = (&bed.topo, &stop, &new_ok, &failures);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let result = topo
                        .tcp_connect(client, TEST_VIP, 8080, Duration::from_secs(3))
                        .and_then(|(_, mut s)| echo_roundtrip(&mut s, b"new"));
                    match result {
                        Ok(_) => {
                            new_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures
                            .lock()
                            .expect("lock")
                            .push(format!("new connection: {e:#}")),
                    }
                }
            });
        }
        let exercise = |long_lived: &mut Vec<(String, std::net::TcpStream)>, when: &str| {
            for (i, (name, stream)) in long_lived.iter_mut().enumerate() {
                if let Err(e) = echo_roundtrip(stream, format!("{when} {i}").as_bytes()) {
                    failures
                        .lock()
                        .expect("lock")
                        .push(format!("long-lived {i} on {name} {when}: {e:#}"));
                }
            }
        };

        std::thread::sleep(Duration::from_millis(500));
        let hits_before = flow_hits(&bed);
        exercise(&mut long_lived, "before the kill");

        bed.agent.kill9().expect("SIGKILL");
        // No agent: the pinned data path forwards alone.
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(200));
            exercise(&mut long_lived, "while no agent runs");
        }
        bed.agent.relaunch().expect("a new agent starts");
        let log = bed.agent.log();
        assert!(
            log.contains("adopted the data path") && log.contains("0 ring(s) differed"),
            "the new agent adopts the pinned tables unchanged:\n{log}"
        );
        assert!(
            log.contains("swapped the new program into the pinned link"),
            "{log}"
        );
        exercise(&mut long_lived, "after the restart");
        assert!(
            flow_hits(&bed) > hits_before,
            "the counters survive the restart"
        );

        // A graceful stop and start, as in an upgrade.
        bed.agent.stop().expect("SIGTERM");
        exercise(&mut long_lived, "while stopped");
        bed.agent.relaunch().expect("a new agent starts");
        exercise(&mut long_lived, "after the second restart");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });

    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let new = new_ok.load(Ordering::Relaxed);
    assert!(new > 50, "new connections kept arriving ({new})");
    println!(
        "{new} new connections and 40 long-lived ones across a SIGKILL and a restart: none failed"
    );

    // The connection table was not reset: each long-lived connection is
    // still pinned to the backend that served it.
    for (name, stream) in &long_lived {
        let local = stream.local_addr().expect("local address");
        let source = match local.ip() {
            std::net::IpAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        let flow = match ask(
            &bed,
            Request::LookupFlow {
                vip,
                source: std::net::IpAddr::V4(source),
                source_port: local.port(),
            },
        )
        .data
        {
            Some(ResponseData::Flow { flow }) => flow,
            other => panic!("lookup: {other:?}"),
        };
        let backend = bed
            .topo
            .backend_index(name)
            .map(|j| bed.topo.backend_addr(j).into());
        assert_eq!(
            flow.pinned_backend, backend,
            "{local} served by {name} is still pinned to it"
        );
    }
}

/// A restarted agent (after SIGKILL, then after a graceful stop) keeps the
/// operator's admin states: a drained backend takes no new flows and a
/// disabled one stays out of the data path.
#[test]
fn restarts_keep_drained_and_disabled_backends_out() {
    let mut bed = Bed::start(3, &[Some(1), Some(1), Some(1)], "native");
    let vip = VipAddr {
        addr: std::net::IpAddr::V4(TEST_VIP),
        port: bed.port,
        proto: Protocol::Tcp,
    };
    let (b2, b3) = (bed.topo.backend_addr(1), bed.topo.backend_addr(2));
    ask(
        &bed,
        Request::Drain {
            vip,
            backend: std::net::IpAddr::V4(b2),
        },
    );
    ask(
        &bed,
        Request::Disable {
            vip,
            backend: std::net::IpAddr::V4(b3),
        },
    );
    let only_b1 = |bed: &Bed, when: &str| {
        let counts = bed.count_new(60);
        assert_eq!(
            counts.keys().map(String::as_str).collect::<Vec<_>>(),
            ["b1"],
            "{when}: new connections reach only b1 (b2 drained, b3 disabled): {counts:?}\n{}",
            bed.agent.log()
        );
    };
    only_b1(&bed, "before any restart");

    bed.agent.kill9().expect("SIGKILL");
    bed.agent.relaunch().expect("a new agent starts");
    only_b1(&bed, "after SIGKILL and a restart");

    bed.agent.stop().expect("SIGTERM");
    bed.agent.relaunch().expect("a new agent starts");
    only_b1(&bed, "after a graceful restart");
}
