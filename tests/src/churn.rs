//! New TCP connections made continuously from client namespaces while a
//! test changes the topology (a node dies, a VIP moves): each one must
//! reach a backend (connect and read its name line, 5 s allowed, so a SYN
//! lost during a change is retransmitted rather than counted as failed).
//! The connections each backend served are counted by name, so a caller
//! (the demo) can print them as they go.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

/// Threads, one per client namespace, connecting until stopped.
pub struct Churn {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    served: Arc<Mutex<BTreeMap<String, usize>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Churn {
    /// One thread per namespace (given by its path, e.g. `Netns::path`,
    /// so the test keeps its topology to change it meanwhile).
    pub fn start(clients: Vec<PathBuf>, target: SocketAddr) -> Churn {
        Self::paced(clients, target, Duration::ZERO)
    }

    /// Like [`Churn::start`], each thread pausing `pause` after every
    /// connection: a rate a person can follow (the demo), and far from the
    /// clients' ~28,000 ephemeral ports per minute (TIME_WAIT), which
    /// connecting flat out exhausts within seconds and then slows.
    pub fn paced(clients: Vec<PathBuf>, target: SocketAddr, pause: Duration) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let served: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let threads = clients
            .into_iter()
            .map(|ns| {
                let counts = Counts {
                    failed: failed.clone(),
                    served: served.clone(),
                };
                let stop = stop.clone();
                std::thread::spawn(move || run(ns, target, pause, &stop, &counts))
            })
            .collect();
        Churn {
            stop,
            failed,
            served,
            threads,
        }
    }

    /// So far: the connections each backend served (by the name it
    /// sent), and how many failed.
    pub fn counts(&self) -> (BTreeMap<String, usize>, usize) {
        let served = self.served.lock().map(|m| m.clone()).unwrap_or_default();
        (served, self.failed.load(Ordering::Relaxed))
    }

    /// Stops the threads; returns (succeeded, failed).
    pub fn stop(mut self) -> (usize, usize) {
        self.join();
        let (served, failed) = self.counts();
        (served.values().sum(), failed)
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.join();
    }
}

/// What one thread adds to.
struct Counts {
    failed: Arc<AtomicUsize>,
    served: Arc<Mutex<BTreeMap<String, usize>>>,
}

fn run(ns: PathBuf, target: SocketAddr, pause: Duration, stop: &AtomicBool, counts: &Counts) {
    let Counts { failed, served } = counts;
    // Entered once: this thread's sockets live in the client's namespace.
    let entered = std::fs::File::open(&ns).is_ok_and(|f| {
        // SAFETY: setns on a namespace fd we hold, for this thread only.
        unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) == 0 }
    });
    if !entered {
        failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let result = (|| -> std::io::Result<String> {
            let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line)?;
            Ok(line)
        })();
        match result {
            Ok(name) if name.starts_with('b') => {
                if let Ok(mut m) = served.lock() {
                    *m.entry(name.trim_end().to_string()).or_insert(0) += 1;
                }
            }
            _ => {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}
