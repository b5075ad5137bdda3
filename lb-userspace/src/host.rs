//! Facts about and settings of the host the agent runs on.

use std::ffi::CString;

use anyhow::{anyhow, bail, Context, Result};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const MAX_INTERFACE_NAME: usize = 15;

/// Checks that `name` can be an interface name. It also becomes a pin
/// directory's name, so anything that could step out of the pin root
/// (`/`, `..`) is refused, as the kernel refuses it.
pub fn valid_interface_name(name: &str) -> Result<String> {
    if name.is_empty()
        || name.len() > MAX_INTERFACE_NAME
        || name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        bail!(
            "{name:?} is not an interface name (1 to {MAX_INTERFACE_NAME} bytes, no '/', ':' or spaces)"
        );
    }
    Ok(name.to_string())
}

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

/// Capability numbers (linux/capability.h) that loading and attaching an
/// XDP program needs.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails with a clear message unless this process may load and attach our
/// XDP programs, rather than letting the kernel's EPERM surface from the
/// middle of a load. That is CAP_NET_ADMIN (XDP is a networking program
/// type), CAP_BPF (maps, loading) and CAP_PERFMON: without it the verifier
/// refuses the packet-pointer arithmetic both programs do ("pointer
/// arithmetic prohibited for !root"). CAP_SYS_ADMIN stands in for the last
/// two.
pub fn require_bpf_privileges(program: &str) -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = parse_cap_eff(&status).context("no CapEff line in /proc/self/status")?;
    if has_bpf_privileges(effective) {
        return Ok(());
    }
    bail!(
        "{program} must run as root (it needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN to load and attach XDP programs)"
    )
}

fn has_bpf_privileges(effective: u64) -> bool {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_SYS_ADMIN) || has(CAP_BPF) && has(CAP_PERFMON))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
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

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("{text:?} is not a MAC address (six hex bytes separated by ':')");
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            bail!("{text:?} is not a MAC address");
        }
        *byte =
            u8::from_str_radix(part, 16).map_err(|_| anyhow!("{text:?} is not a MAC address"))?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_cannot_leave_the_pin_root() {
        for good in ["eth0", "eth0.100", "lbt-b1", "enp3s0f1np1"] {
            assert_eq!(valid_interface_name(good).expect(good), good);
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "eth0:1",
            "a b",
            "sixteen-chars-xx",
        ] {
            assert!(valid_interface_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn effective_capabilities_are_read_from_the_status_file() {
        let status = "Name:\tlb-decap\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        let caps = parse_cap_eff(status).expect("parsed");
        assert!(has_bpf_privileges(caps));
        assert!(!has_bpf_privileges(caps & !(1 << CAP_PERFMON)));
        assert!(!has_bpf_privileges(caps & !(1 << CAP_NET_ADMIN)));
        assert!(has_bpf_privileges(1 << CAP_NET_ADMIN | 1 << CAP_SYS_ADMIN));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn a_dotted_interface_name_stays_one_sysctl_component() {
        assert_eq!(
            sysctl_path(&["net", "ipv4", "conf", "eth0.100", "forwarding"]),
            "/proc/sys/net/ipv4/conf/eth0.100/forwarding"
        );
    }
}
