//! Many short HTTP connections (wrk, `Connection: close`, 32 at a time)
//! from a client through the router and the balancer to three nginx
//! backends, against the same load straight to one backend, counting the
//! client's TCP resets. Every reset must be one that wrk made itself by
//! closing connections it had not finished reading (at the end of its
//! run): a SYN answered with a reset (a reused port sent to the wrong
//! backend), or an established connection reset from the other side, is
//! the balancer's fault.

use std::collections::BTreeMap;

use lb_tests::{
    agent::{agent_config, vip_config, Bed, TEST_VIP},
    httpload::{wrk, Nginx, WrkRun},
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
    wrk: WrkRun,
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

fn short_connections(client: &Netns, url: &str) -> Run {
    counters(client);
    let wrk = wrk(client, url, SECONDS, 32, true).unwrap_or_else(|e| panic!("{e:#}"));
    Run {
        wrk,
        counters: counters(client),
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
        .map(|j| {
            Nginx::start(bed.topo.backend_ns(j), &format!("b{}", j + 1), PORT, 0)
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect();
    let client = bed.topo.client_ns(0);

    let direct = short_connections(
        client,
        &format!("http://{}:{PORT}/", bed.topo.backend_addr(0)),
    );
    let via = short_connections(client, &format!("http://{TEST_VIP}:{PORT}/"));
    for (what, run) in [("straight to b1", &direct), ("through the balancer", &via)] {
        println!(
            "{what}: {} requests in {SECONDS} s, counters {:?}, unexplained resets {}",
            run.wrk.requests,
            run.counters,
            run.unexplained_resets()
        );
    }
    // Enough connections to tell (on a quiet machine about 40,000, more
    // than the client's ephemeral range: its ports are reused in the run).
    assert!(
        via.wrk.requests > 10_000,
        "too few requests to tell:\n{}",
        via.wrk.output
    );
    assert!(
        via.wrk.errors.is_empty(),
        "wrk through the balancer: {:?}\n{}",
        via.wrk.errors,
        via.wrk.output
    );
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
