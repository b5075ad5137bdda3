//! `lb-agent`: loads the balancer, writes its tables and keeps them until
//! stopped. This file only wires the modules of `lb_userspace`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Parser;
use lb_common::names;
use lb_userspace::{
    config::{Config, NextHop},
    dataplane::DataPlane,
    host, loader,
    maps::BalancerMaps,
};
use log::{info, warn};
use tokio::signal::unix::{signal, SignalKind};

/// The load balancer's agent: attaches the XDP balancer to an interface,
/// builds the Maglev tables of the configured VIPs and writes them into the
/// data path. SIGHUP re-reads the configuration and applies VIP and backend
/// changes without disturbing established flows. Runs until SIGINT or
/// SIGTERM, then detaches.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example configuration: examples/lb.jsonc. Logging: RUST_LOG=debug."
)]
struct Args {
    /// Configuration file (JSON with // comments).
    #[arg(long, short)]
    config: PathBuf,
    /// Check the configuration and exit without touching the host.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Applies the VIPs of the (re-read) configuration file to the running
/// data path: the connection table and unchanged rings stay as they are.
/// A bad file changes nothing.
fn reload(path: &std::path::Path, running: &Config, dataplane: &mut DataPlane) {
    let new = match Config::from_file(path) {
        Ok(new) => new,
        Err(e) => {
            warn!("reload refused, nothing changed: {e:#}");
            return;
        }
    };
    if new.interface != running.interface
        || new.source_address != running.source_address
        || new.next_hop != running.next_hop
        || new.xdp_mode != running.xdp_mode
        || new.ring_pool_slots != running.ring_pool_slots
        || new.flow_table_entries != running.flow_table_entries
    {
        warn!("reload: only the VIPs change at run time; interface, address, next hop, XDP mode and sizes need a restart");
    }
    match dataplane.apply(&new.vip_specs()) {
        Ok(r) => info!(
            "reloaded: {} VIP(s) added, {} removed, {} ring(s) rewritten, {} backend(s) added, {} removed",
            r.vips_added.len(),
            r.vips_removed.len(),
            r.rings_written.len(),
            r.backends_added,
            r.backends_removed
        ),
        Err(e) => warn!("reload refused, nothing changed: {e:#}"),
    }
}

fn run(args: Args) -> Result<()> {
    let config = Config::from_file(&args.config)?;
    let if_index = host::interface_index(&config.interface)?;
    if args.check {
        println!(
            "configuration OK: {} VIP(s) on {}",
            config.vips.len(),
            config.interface
        );
        return Ok(());
    }
    let mac = host::interface_mac(&config.interface)?;
    let options = config.balancer_options(config.data_path_config(mac)?);

    let mut ebpf = loader::load_balancer(&options)?;
    info!(
        "loaded the balancer: ring pool {} slots, connection table {} entries",
        options.ring_pool_slots, options.flow_table_entries
    );
    let mut dataplane = DataPlane::new(BalancerMaps::take_from(&mut ebpf)?);
    let report = dataplane.apply(&config.vip_specs())?;
    for vip in &config.vips {
        info!(
            "VIP {}:{}/{}: {} backend(s), table size {}",
            vip.address,
            vip.port,
            vip.protocol,
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
        // bpf_fib_lookup refuses to route for an interface without
        // forwarding; accept_local lets the kernel forward encapsulated
        // packets (our own source address) it is handed while it resolves
        // a neighbour.
        for key in [
            format!("net.ipv4.conf.{}.forwarding", config.interface),
            format!("net.ipv4.conf.{}.accept_local", config.interface),
        ] {
            if host::ensure_sysctl(&key, "1")? {
                info!("set {key} = 1 (needed by the FIB next hop)");
            }
        }
    }

    let mode = loader::attach(
        &mut ebpf,
        names::BALANCER_PROGRAM,
        &config.interface,
        config.xdp_mode,
    )?;
    info!(
        "attached to {} (ifindex {if_index}) in {mode:?} mode",
        config.interface
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // The data path's own log (aya-log), at the agent's log level.
    match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => {
            let _guard = runtime.enter();
            // SAFETY: the logger owns the ring buffer's fd and keeps it open
            // for as long as the AsyncFd owns the logger.
            let mut logger = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    logger,
                    tokio::io::Interest::READABLE,
                )
            }
            .context("watching the data path's log")?;
            runtime.spawn(async move {
                while let Ok(mut guard) = logger.readable_mut().await {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => warn!("the data path's log is unavailable: {e}"),
    }
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        info!(
            "ready; SIGHUP reloads {}, SIGINT or SIGTERM stops",
            args.config.display()
        );
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    r.context("waiting for SIGINT")?;
                    break;
                }
                _ = term.recv() => break,
                _ = hup.recv() => reload(&args.config, &config, &mut dataplane),
            }
        }
        anyhow::Ok(())
    })?;
    match dataplane.maps().global_stats() {
        Ok(s) => info!(
            "stopping: {} packets sent to backends, {} passed, {} dropped",
            s.tx + s.redirected + s.fib_no_neigh,
            s.passed + s.malformed,
            s.drop_fragment + s.drop_too_big + s.drop_no_backend + s.encap_errors + s.fib_failures
        ),
        Err(e) => warn!("stopping (counters unreadable: {e:#})"),
    }
    drop(ebpf);
    info!("detached from {}", config.interface);
    Ok(())
}
