//! `lb-decap`: attaches the backends' `decap` XDP program, which strips the
//! balancer's IP-in-IP or GUE headers from packets to this host's own addresses,
//! and pins it in bpffs so it keeps working after the command exits. For
//! backends whose kernel has no ipip tunnel device. This file only wires
//! `lb_userspace::decap`.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use lb_userspace::{
    clidoc::{self, Generated},
    decap::{self, Attached, DEFAULT_DECAP_PIN_ROOT},
    host,
    loader::XdpModeSetting,
};

/// Attach, inspect and detach the load balancer's decap XDP program.
///
/// On a backend: the balancer sends each packet to its backend inside an
/// IP-in-IP header, or IPv4 and UDP for a GUE VIP; `decap` removes them from
/// packets whose outer destination is one of the local addresses given here
/// (and, for GUE, whose UDP port is one of the GUE ports) and hands the inner packet
/// (to a VIP configured on `lo`) to the kernel. Everything else passes
/// untouched. The program and its maps are pinned in bpffs, one directory
/// per interface, so they outlive this command and survive its upgrade.
#[derive(Parser)]
#[command(
    name = "lb-decap",
    version,
    arg_required_else_help = true,
    after_help = "Hosts whose kernel has ipip (tunl0) do not need lb-decap; see README.md."
)]
struct Cli {
    /// Where the program is pinned; one directory per interface.
    #[arg(long, global = true, default_value = DEFAULT_DECAP_PIN_ROOT)]
    pin_root: PathBuf,
    /// Print a man page or shell completions and exit (for packaging).
    #[arg(long, value_enum, hide = true, exclusive = true)]
    generate: Option<Generated>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach decap to an interface with these local addresses and pin it.
    /// If it is attached there already, the new program replaces it in place
    /// (its XDP mode stays) and the address set becomes exactly these.
    Attach {
        /// Interface the balancer's encapsulated packets arrive on.
        #[arg(long, short, value_parser = host::valid_interface_name)]
        interface: String,
        /// A local address the balancer sends to (the outer destination,
        /// i.e. this backend's address in the LB configuration), IPv4 or
        /// IPv6. Repeat the flag or separate addresses with commas.
        #[arg(long, short, required = true, value_delimiter = ',')]
        address: Vec<IpAddr>,
        /// A UDP port of the balancer's GUE VIPs (their `gue_port`, 6080 by
        /// default): UDP to it and a local address is stripped as GUE.
        /// Repeat the flag or separate ports with commas; none: IP-in-IP only.
        #[arg(long, short = 'g', value_delimiter = ',')]
        gue_port: Vec<u16>,
        /// XDP mode: auto tries native (driver) mode first, then generic.
        #[arg(long, short, value_enum, default_value_t = XdpModeSetting::Auto)]
        mode: XdpModeSetting,
    },
    /// Show the attached program's addresses and counters (summed over
    /// CPUs). Exits with 1 when nothing is attached.
    Status {
        /// Interface to report on.
        #[arg(long, short, value_parser = host::valid_interface_name)]
        interface: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Detach decap from an interface and remove its pins. Succeeds (and
    /// says so) when nothing is attached.
    Detach {
        /// Interface to detach from.
        #[arg(long, short, value_parser = host::valid_interface_name)]
        interface: String,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lb-decap: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(what) = cli.generate {
        clidoc::generate(what, Cli::command(), &mut std::io::stdout().lock())?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(command) = cli.command else {
        Cli::command().print_help()?;
        return Ok(ExitCode::from(2));
    };
    host::require_bpf_privileges("lb-decap")?;
    match command {
        Cmd::Attach {
            interface,
            address,
            gue_port,
            mode,
        } => {
            let pins = decap::pins(&cli.pin_root, &interface);
            let list = address
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let list = if gue_port.is_empty() {
                list
            } else {
                let ports: Vec<String> = gue_port.iter().map(u16::to_string).collect();
                format!("{list} (GUE on UDP port {})", ports.join(", "))
            };
            match decap::attach(&pins, &interface, &address, &gue_port, mode)? {
                Attached::New(mode) => println!(
                    "decap attached to {interface} in {} mode, pinned in {}; decapsulating for {list}",
                    mode_name(mode),
                    pins.dir().display()
                ),
                Attached::Updated => println!(
                    "decap was attached to {interface} already: program replaced in its pinned link \
                     (XDP mode unchanged; detach first to change it); decapsulating for {list}"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { interface, json } => {
            let pins = decap::pins(&cli.pin_root, &interface);
            let Some(status) = decap::status(&pins, &interface)? else {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"interface": interface, "attached": false})
                    );
                } else {
                    println!(
                        "no decap program attached to {interface} (nothing pinned in {})",
                        pins.dir().display()
                    );
                }
                return Ok(ExitCode::from(1));
            };
            if json {
                let mut value = serde_json::to_value(&status)?;
                value["attached"] = true.into();
                println!("{value}");
            } else {
                let addresses = status
                    .addresses
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                println!("interface     {}", status.interface);
                println!("pinned in     {}", status.pin_dir.display());
                println!(
                    "link          id {} (program id {})",
                    status.link_id, status.program_id
                );
                let ports: Vec<String> = status.gue_ports.iter().map(u16::to_string).collect();
                println!("addresses     {addresses}");
                println!(
                    "gue ports     {}",
                    if ports.is_empty() {
                        "-".to_string()
                    } else {
                        ports.join(", ")
                    }
                );
                println!();
                println!("COUNTER           VALUE");
                println!("decapsulated      {}", status.counters.decapsulated);
                println!("gue_decapsulated  {}", status.counters.gue_decapsulated);
                println!("passed            {}", status.counters.passed);
                println!("malformed         {}", status.counters.malformed);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Detach { interface } => {
            let pins = decap::pins(&cli.pin_root, &interface);
            if decap::detach(&pins)? {
                println!(
                    "decap detached from {interface}; removed {}",
                    pins.dir().display()
                );
            } else {
                println!(
                    "nothing to detach: no decap program pinned for {interface} in {}",
                    pins.dir().display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn mode_name(mode: XdpModeSetting) -> &'static str {
    match mode {
        XdpModeSetting::Auto => "auto",
        XdpModeSetting::Native => "native",
        XdpModeSetting::Generic => "generic",
    }
}
