//! Facts about and settings of the host the agent runs on.

use std::ffi::CString;

use anyhow::{anyhow, bail, Context, Result};

use crate::config::parse_mac;

/// The interface's index, or a clear error if it does not exist.
pub fn interface_index(name: &str) -> Result<u32> {
    let c_name = CString::new(name).map_err(|_| anyhow!("interface name {name:?} contains NUL"))?;
    // SAFETY: c_name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        bail!("interface: no interface named {name:?} on this host");
    }
    Ok(index)
}

/// The interface's MAC address.
pub fn interface_mac(name: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{name}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_mac(text.trim()).with_context(|| format!("parsing {path}"))
}

/// The file of the sysctl named by `components`; taken one by one, so an
/// interface name with a dot (`eth0.100`) stays one component.
fn sysctl_path(components: &[&str]) -> String {
    format!("/proc/sys/{}", components.join("/"))
}

/// Writes `value` to the sysctl named by `components` if it differs;
/// returns whether it changed anything.
pub fn ensure_sysctl(components: &[&str], value: &str) -> Result<bool> {
    let path = sysctl_path(components);
    let current = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    if current.trim() == value {
        return Ok(false);
    }
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))?;
    Ok(true)
}

/// Magic number of the bpf filesystem (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_FS_MOUNT: &str = "/sys/fs/bpf";

/// Makes sure `root` can hold pins. Under /sys/fs/bpf, bpffs is mounted
/// there when missing (as on a fresh host); any other root must already be
/// a bpffs mount (`mount -t bpf bpf ROOT`).
pub fn ensure_bpffs(root: &std::path::Path) -> Result<()> {
    if !root.starts_with(BPF_FS_MOUNT) {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        if !is_bpffs(&root.to_string_lossy())? {
            bail!(
                "pin root {} is not on a bpf filesystem (mount -t bpf bpf {0})",
                root.display()
            );
        }
        return Ok(());
    }
    if is_bpffs(BPF_FS_MOUNT)? {
        return Ok(());
    }
    let target = CString::new(BPF_FS_MOUNT).map_err(|_| anyhow!("mount point contains NUL"))?;
    let fstype = CString::new("bpf").map_err(|_| anyhow!("fs type contains NUL"))?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
    }
    log::info!("mounted bpffs on {BPF_FS_MOUNT}");
    Ok(())
}

fn is_bpffs(path: &str) -> Result<bool> {
    let c_path = CString::new(path).map_err(|_| anyhow!("path contains NUL"))?;
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statfs {path}"));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Enables what the FIB next hop needs on `interface`: bpf_fib_lookup
/// refuses to route for an interface without forwarding, and accept_local
/// lets the kernel forward the encapsulated packets (our own source
/// address) it is handed while it resolves a neighbour.
pub fn prepare_fib_next_hop(interface: &str) -> Result<()> {
    for setting in ["forwarding", "accept_local"] {
        let components = ["net", "ipv4", "conf", interface, setting];
        if ensure_sysctl(&components, "1")? {
            log::info!(
                "set {} = 1 (needed by the FIB next hop)",
                sysctl_path(&components)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dotted_interface_name_stays_one_sysctl_component() {
        assert_eq!(
            sysctl_path(&["net", "ipv4", "conf", "eth0.100", "forwarding"]),
            "/proc/sys/net/ipv4/conf/eth0.100/forwarding"
        );
    }
}
