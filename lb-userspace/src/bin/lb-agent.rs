//! `lb-agent`: loads the balancer, writes its tables, serves the control
//! socket and keeps everything until stopped. This file only wires the
//! modules of `lb_userspace`.

use std::{
    io::Write,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use lb_common::names;
use lb_userspace::{
    announce::{Announcer, HoldDown, OnStop},
    clidoc::{self, Generated},
    config::{self, Config, NextHop},
    control::{protocol::DEFAULT_SOCKET, server, service::Service},
    dataplane::DataPlane,
    health::HealthChecker,
    host,
    instrument::Instruments,
    loader,
    maps::BalancerMaps,
    metrics::{self, Exporter},
    pins::{Pins, DEFAULT_PIN_ROOT},
    state::{StateFile, DEFAULT_STATE_FILE},
    trace::Tracer,
};
use log::{info, warn};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Mutex,
};

/// The XDP load balancer's agent.
///
/// It attaches the XDP balancer to an interface, builds the Maglev tables of the VIPs and writes them into the data path,
/// and serves the control socket (see `lbctl`). Every change is saved to
/// the state file. SIGHUP re-reads the configuration file and applies its
/// VIPs without disturbing established flows. The data path is pinned in
/// bpffs: when the agent stops (SIGINT, SIGTERM, a crash, an upgrade) it
/// keeps forwarding, and the next agent takes it over without resetting
/// the connection table. `lb-agent --detach` removes it.
#[derive(Parser)]
#[command(
    name = "lb-agent",
    version,
    after_help = "Example configuration: examples/lb.jsonc. Control protocol: docs/control-api.md. \
                  Logging: RUST_LOG=debug (also enables the data path's own log)."
)]
struct Args {
    /// Configuration file (JSON with // comments).
    #[arg(long, short, required_unless_present = "generate")]
    config: Option<PathBuf>,
    /// Check the configuration and exit without touching the host.
    #[arg(long)]
    check: bool,
    /// Control socket (overrides `control.socket`; default /run/lb/lb.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// State file (overrides `state_file`; default /var/lib/lb/state.json).
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Start from the config file's VIPs, replacing the saved state.
    #[arg(long)]
    reset_state: bool,
    /// Where the data path is pinned (overrides `pin_root`; default
    /// /sys/fs/bpf/lb); one directory per interface.
    #[arg(long)]
    pin_root: Option<PathBuf>,
    /// Remove the pinned data path of the configured interface (detaching
    /// the XDP program) and exit: a real shutdown.
    #[arg(long)]
    detach: bool,
    /// Serve Prometheus metrics (GET /metrics) on ADDR:PORT, e.g.
    /// 127.0.0.1:9100 (overrides `metrics.listen`; default: no endpoint).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Outer source address of packets to IPv6 backends (overrides
    /// `source_address6`; without either, IPv6 backends are refused).
    #[arg(long, value_name = "ADDR")]
    source_address6: Option<std::net::Ipv6Addr>,
    /// Log format on stderr: `text` (human-readable) or `json` (one JSON
    /// object per line: ts, level, target, msg), for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print a man page or shell completions and exit (for packaging).
    #[arg(long, value_enum, hide = true, exclusive = true)]
    generate: Option<Generated>,
}

/// `--log-format`: chosen by the operator, read once at start-up.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// env_logger (level from RUST_LOG, default info), in the chosen format.
fn init_logging(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": buf.timestamp_micros().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Applies the VIPs of the re-read configuration file to the running data
/// path (connection table and unchanged rings stay) and saves them. A bad
/// file changes nothing.
fn reload(
    path: &std::path::Path,
    source_address6: Option<std::net::Ipv6Addr>,
    service: &mut Service,
) {
    let new = match Config::from_file_with(path, source_address6) {
        Ok(new) => new,
        Err(e) => {
            warn!("reload refused, nothing changed: {e:#}");
            return;
        }
    };
    let running = &service.config;
    if new.interface != running.interface
        || new.source_address != running.source_address
        || new.source_address6 != running.source_address6
        || new.next_hop != running.next_hop
        || new.xdp_mode != running.xdp_mode
        || new.ring_pool_slots != running.ring_pool_slots
        || new.flow_table_entries != running.flow_table_entries
        || new.metrics != running.metrics
    {
        warn!("reload: only the VIPs change at run time; interface, address, next hop, XDP mode, sizes and metrics.listen need a restart");
    }
    let replaced = service.replace_vips(new.vips);
    // The reload bypasses `Service::handle`, which publishes the rest.
    service.publish_announcements();
    match replaced {
        Ok(r) => info!(
            "reloaded: {} VIP(s) added, {} removed, {} ring(s) rewritten, {} backend(s) added, {} removed",
            r.vips_added.len(),
            r.vips_removed.len(),
            r.rings_written.len(),
            r.backends_added,
            r.backends_removed
        ),
        Err(e) => warn!("reload refused, nothing changed: {e}"),
    }
}

fn run(args: Args) -> Result<()> {
    if let Some(what) = args.generate {
        return clidoc::generate(what, Args::command(), &mut std::io::stdout().lock());
    }
    let config_path = args.config.clone().context("--config is required")?;
    if let Some(addr) = args.source_address6 {
        config::validate_source_address6(addr).context("--source-address6")?;
    }
    let mut config = Config::from_file_with(&config_path, args.source_address6)?;
    let pins = Pins::new(
        &args
            .pin_root
            .clone()
            .or_else(|| config.pin_root.clone())
            .unwrap_or_else(|| DEFAULT_PIN_ROOT.into()),
        &config.interface,
    );
    if args.detach {
        // Withdrawn first: the node leaves the ECMP group while it still
        // forwards what the router sends until it has converged.
        if let Some(announce) = &config.announce {
            let change = Announcer::new(announce).withdraw_all()?;
            info!(
                "withdrew {} VIP route(s) from table {}",
                change.withdrawn.len(),
                announce.table
            );
        }
        let was_attached = pins.attached();
        pins.remove()?;
        info!(
            "removed the pinned data path in {}{}",
            pins.dir().display(),
            if was_attached {
                " (program detached)"
            } else {
                " (nothing was attached)"
            }
        );
        return Ok(());
    }
    let if_index = host::interface_index(&config.interface)?;
    let state = StateFile::new(
        args.state_file
            .clone()
            .or_else(|| config.state_file.clone())
            .unwrap_or_else(|| DEFAULT_STATE_FILE.into()),
    );
    let socket = args
        .socket
        .clone()
        .or_else(|| config.control.socket.clone())
        .unwrap_or_else(|| DEFAULT_SOCKET.into());
    let options =
        config.balancer_options(config.data_path_config(host::interface_mac(&config.interface)?)?);
    if let Some(addr) = args.metrics_listen {
        config::validate_metrics_listen(addr).context("--metrics-listen")?;
        config.metrics.listen = Some(addr);
    }

    // The file alone: the state file is the running agent's business.
    if args.check {
        println!(
            "configuration OK: {} VIP(s) on {}",
            config.vips.len(),
            config.interface
        );
        return Ok(());
    }
    let metrics_listener = config.metrics.listen.map(metrics::bind).transpose()?;

    // Which VIPs to serve: the saved state, unless there is none yet or
    // the operator resets it (see lb_userspace::state).
    match state.load()? {
        Some(saved) if !args.reset_state => {
            config::validate_vips(
                &saved,
                options.ring_pool_slots,
                config.source_address6.is_some(),
            )
            .with_context(|| format!("state file {}", state.path().display()))?;
            info!(
                "serving the {} VIP(s) saved in {}",
                saved.len(),
                state.path().display()
            );
            config.vips = saved;
        }
        _ => info!(
            "serving the {} VIP(s) of {}",
            config.vips.len(),
            config_path.display()
        ),
    }
    pins.prepare()?;
    let adopting = pins.attached();
    if adopting {
        pins.check_compatible(options.ring_pool_slots, options.flow_table_entries)?;
    }
    let mut ebpf = loader::load_balancer_pinned(&options, &pins.map_paths())?;
    info!(
        "loaded the balancer: ring pool {} slots, connection table {} entries",
        options.ring_pool_slots, options.flow_table_entries
    );
    let maps = BalancerMaps::take_from(&mut ebpf)?;
    let flow_tables = maps.flow_tables()?;
    let mut dataplane = if adopting {
        DataPlane::adopt(maps)?
    } else {
        DataPlane::new(maps)
    };
    dataplane.set_ipv6_source(config.source_address6.is_some());
    let instruments = Instruments::new();
    dataplane.set_instruments(instruments.clone());
    // Admin states count from the start (drained at weight 0, disabled
    // out); health counts once probes report.
    let report = dataplane.apply(&config::vip_specs(&config.vips))?;
    if adopting {
        info!(
            "adopted the data path pinned in {}: {} ring(s) differed from the state and were rewritten, \
             the connection table is kept",
            pins.dir().display(),
            report.rings_written.len()
        );
    }
    state.save(&config.vips)?;
    for vip in &config.vips {
        info!(
            "VIP {}: {} backend(s), table size {}",
            vip.vip(),
            vip.backends.len(),
            vip.table_size
        );
    }
    info!(
        "wrote {} ring(s), {} backend(s)",
        report.rings_written.len(),
        report.backends_added
    );

    if config.next_hop == NextHop::Fib {
        host::prepare_fib_next_hop(&config.interface)?;
    }

    // Two workers: a control request that blocks (a connection-table walk,
    // an fsync) must not hold up the health probes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let _runtime_context = runtime.enter();
    if let Err(e) = loader::spawn_data_path_log(&mut ebpf) {
        warn!("the data path's log is unavailable: {e:#}");
    }

    match pins.attach(
        &mut ebpf,
        names::BALANCER_PROGRAM,
        &config.interface,
        config.xdp_mode,
    )? {
        Some(mode) => info!(
            "attached to {} (ifindex {if_index}) in {mode:?} mode",
            config.interface
        ),
        None => info!(
            "swapped the new program into the pinned link on {} (ifindex {if_index})",
            config.interface
        ),
    }

    let listener = server::bind(&socket, config.control.group.as_deref())?;
    info!("control socket {}", socket.display());
    let ring_pool_slots = options.ring_pool_slots;
    let service_metrics_addr = config.metrics.listen;
    let (transitions, mut transition_rx) = tokio::sync::mpsc::unbounded_channel();
    let checker = HealthChecker::with_instruments(transitions, instruments.clone());
    let tracer = Tracer::new(options, pins.clone(), config.interface.clone());
    let announce = config.announce.clone();
    // How long a withdrawn VIP address waits before it is announced again
    // (see `HoldDown`): the largest check interval of the configuration
    // the agent starts with.
    let settle = Duration::from_millis(
        config
            .vips
            .iter()
            .flat_map(|v| {
                v.backends
                    .iter()
                    .filter_map(|b| v.check_for(b).ok().flatten())
            })
            .map(|check| check.interval_ms)
            .max()
            .unwrap_or(0),
    );
    let mut service =
        Service::new(dataplane, config, state, ring_pool_slots, checker).with_tracer(tracer);
    // Announcing starts only now that the data path is attached.
    let mut announcer = None;
    if let Some(a) = &announce {
        let (tx, rx) = tokio::sync::watch::channel(Default::default());
        service = service.with_announcements(tx);
        let shared = Arc::new(std::sync::Mutex::new(AnnouncerState {
            announcer: Announcer::new(a),
            stopped: false,
        }));
        runtime.spawn(announce_loop(
            Arc::clone(&shared),
            rx,
            HoldDown::new(settle),
        ));
        info!(
            "announcing VIPs through routing table {} (protocol {})",
            a.table, a.protocol
        );
        announcer = Some(shared);
    }
    let service = Arc::new(Mutex::new(service));
    runtime.spawn(server::serve(listener, Arc::clone(&service)));
    if let (Some(listener), Some(addr)) = (metrics_listener, service_metrics_addr) {
        let exporter = Exporter::new(Arc::clone(&service), instruments, flow_tables);
        runtime.spawn(metrics::serve(listener, Arc::new(exporter)));
        info!("metrics on http://{addr}/metrics");
    }
    // Health transitions: everything that arrives within a short window is
    // one batch, and a batch is one table rebuild. A rebuild that failed is
    // retried every second.
    let health_service = Arc::clone(&service);
    runtime.spawn(async move {
        loop {
            let retry = health_service.lock().await.refresh_pending();
            tokio::select! {
                transition = transition_rx.recv() => {
                    if transition.is_none() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while transition_rx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(Duration::from_secs(1)), if retry => {}
            }
            health_service.lock().await.refresh_health();
        }
    });

    // least-conn counts: connections that end without a FIN or RST the
    // data path saw (idle, evicted) are dropped from the counts here.
    let reconcile_service = Arc::clone(&service);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(lb_userspace::dataplane::RECONCILE_INTERVAL);
        loop {
            tick.tick().await;
            if let Err(e) = reconcile_service.lock().await.reconcile_connections() {
                warn!("least-conn: reconciling the connection counts failed: {e:#}");
            }
        }
    });

    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        info!(
            "ready; SIGHUP reloads {}, SIGINT or SIGTERM stops",
            config_path.display()
        );
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    r.context("waiting for SIGINT")?;
                    break;
                }
                _ = term.recv() => break,
                _ = hup.recv() => reload(&config_path, args.source_address6, &mut *service.lock().await),
            }
        }
        anyhow::Ok(())
    })?;
    // Before anything else: the router moves the flows to other nodes
    // while this one's pinned data path still forwards them.
    if let (Some(shared), Some(a)) = (&announcer, &announce) {
        let mut state = shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.stopped = true;
        match a.on_stop {
            OnStop::Withdraw => match state.announcer.withdraw_all() {
                Ok(change) => info!(
                    "stopping: withdrew {} VIP route(s) from table {}",
                    change.withdrawn.len(),
                    a.table
                ),
                Err(e) => warn!("stopping: withdrawing the VIP routes failed: {e:#}"),
            },
            OnStop::Keep => info!(
                "stopping: the VIP routes in table {} stay (announce.on_stop = keep)",
                a.table
            ),
        }
    }
    server::unlink(&socket);
    let service = runtime.block_on(service.lock());
    match service.dataplane.maps().global_stats() {
        Ok(s) => info!(
            "stopping: {} packets sent to backends, {} passed, {} dropped, {} answered with ICMP",
            s.tx + s.redirected + s.fib_no_neigh,
            s.passed + s.malformed,
            s.drop_fragment
                + s.drop_too_big
                + s.drop_no_backend
                + s.encap_errors
                + s.fib_failures
                + s.icmp_rate_limited,
            s.icmp_echo_replies + s.icmp_frag_needed_sent
        ),
        Err(e) => warn!("stopping (counters unreadable: {e:#})"),
    }
    drop(service);
    drop(ebpf);
    info!("stopped; the data path keeps forwarding (lb-agent --detach removes it)");
    Ok(())
}

/// The announcer and whether the agent is stopping: once `stopped` is set
/// (under the lock), the loop writes no more routes, so a sync in flight
/// cannot put back what the stopping agent withdrew.
struct AnnouncerState {
    announcer: Announcer,
    stopped: bool,
}

/// Keeps the kernel's announce table equal to the addresses the service
/// publishes: on every change, every 10 s (a route deleted by hand or a
/// failed write is repaired) and, after a failure, every second.
async fn announce_loop(
    shared: Arc<std::sync::Mutex<AnnouncerState>>,
    mut rx: tokio::sync::watch::Receiver<std::collections::BTreeSet<std::net::IpAddr>>,
    mut hold: HoldDown,
) {
    loop {
        let (wanted, settling) = hold.release(&rx.borrow_and_update(), Instant::now());
        let state = Arc::clone(&shared);
        // `ip` runs as a child process: off the runtime's threads.
        let result = tokio::task::spawn_blocking(move || {
            let state = state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if state.stopped {
                return Ok(None);
            }
            let table = state.announcer.table();
            state.announcer.sync(&wanted).map(|c| Some((c, table)))
        })
        .await;
        let retry = match result {
            Ok(Ok(None)) => return,
            Ok(Ok(Some((change, table)))) => {
                for addr in &change.announced {
                    info!("announce: VIP address {addr} announced (route in table {table})");
                }
                for addr in &change.withdrawn {
                    info!(
                        "announce: VIP address {addr} withdrawn (route removed from table {table})"
                    );
                }
                false
            }
            Ok(Err(e)) => {
                warn!("announce: updating the VIP routes failed, retrying: {e:#}");
                true
            }
            Err(e) => {
                warn!("announce: the route update task failed, retrying: {e}");
                true
            }
        };
        let mut wait = if retry {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        if let Some(due) = settling {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
