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

/// Writes `value` to `/proc/sys/<key with dots as slashes>` if it differs;
/// returns whether it changed anything.
pub fn ensure_sysctl(key: &str, value: &str) -> Result<bool> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let current = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    if current.trim() == value {
        return Ok(false);
    }
    std::fs::write(&path, value).with_context(|| format!("setting {key} = {value}"))?;
    Ok(true)
}
