//! New TCP connections made continuously from client namespaces while a
//! test changes the topology (a node dies, a VIP moves): each one must
//! reach a backend (connect and read its name line, 5 s allowed, so a SYN
//! lost during a change is retransmitted rather than counted as failed).

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// Threads, one per client namespace, connecting until stopped.
pub struct Churn {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Churn {
    /// One thread per namespace (given by its path, e.g. `Netns::path`,
    /// so the test keeps its topology to change it meanwhile).
    pub fn start(clients: Vec<PathBuf>, target: SocketAddr) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let threads = clients
            .into_iter()
            .map(|ns| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || run(ns, target, &stop, &ok, &failed))
            })
            .collect();
        Churn {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the threads; returns (succeeded, failed).
    pub fn stop(mut self) -> (usize, usize) {
        self.join();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
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

fn run(ns: PathBuf, target: SocketAddr, stop: &AtomicBool, ok: &AtomicUsize, failed: &AtomicUsize) {
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
            Ok(name) if name.starts_with('b') => ok.fetch_add(1, Ordering::Relaxed),
            _ => failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}
