//! Connection tables filled the way the data path fills them, for the
//! batch tests and the benchmark. `FLOWS` keeps one LRU list per CPU, each
//! with an equal share of the capacity, and an insert takes a node from the
//! inserting CPU's list: a table fills to capacity without evictions only
//! when every CPU inserts its share.

use std::net::Ipv4Addr;

use anyhow::{anyhow, Context, Result};
use lb_common::{ipv4_to_wire, port_to_wire, FlowKey, FlowPin};
use lb_userspace::maps::FlowTable;

/// The `i`-th test flow to `vip:port`/TCP: sources from 198.19.128.0/17,
/// 16384 source ports per address, so a million flows are distinct.
pub fn flow_key(i: u32, vip: Ipv4Addr, port: u16) -> FlowKey {
    let src = u32::from(Ipv4Addr::new(198, 19, 128, 0)) + (i >> 14);
    FlowKey {
        src_addr: ipv4_to_wire(Ipv4Addr::from(src).octets()),
        dst_addr: ipv4_to_wire(vip.octets()),
        src_port: port_to_wire(1024 + (i & 0x3fff) as u16),
        dst_port: port_to_wire(port),
        proto: 6,
        _pad: 0,
        _pad2: 0,
    }
}

/// Inserts `keys` (each pinned to backend `pin(i)`) from every CPU in
/// turn, each CPU its equal share, with batch updates.
pub fn fill(table: &FlowTable, keys: &[FlowKey], pin: impl Fn(usize) -> FlowPin) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))?;
    let share = keys.len().div_ceil(cpus);
    let pins: Vec<FlowPin> = (0..keys.len()).map(pin).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = keys
            .chunks(share.max(1))
            .zip(pins.chunks(share.max(1)))
            .enumerate()
            .map(|(cpu, (keys, pins))| {
                scope.spawn(move || -> Result<()> {
                    pin_thread_to_cpu(cpu)?;
                    table
                        .update(keys, pins)
                        .with_context(|| format!("filling the table from CPU {cpu}"))
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow!("a filling thread panicked"))?)
    })
}

fn pin_thread_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("pinning to CPU {cpu}"));
        }
    }
    Ok(())
}
