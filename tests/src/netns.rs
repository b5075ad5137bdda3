//! Network namespaces for the test bed.
//!
//! Every namespace is named `lbt<pid>-<seq>-<role>`: the `lbt` prefix lets
//! `cargo xtask` find leftovers, the pid of the creating process lets
//! [`reap_orphans`] remove the namespaces of a test run that was killed
//! (Ctrl-C, SIGKILL) before its `Drop`s ran, and the per-process sequence
//! number keeps the names of tests running in parallel apart.
//!
//! Namespaces are never linked to the root namespace: veth pairs are created
//! directly inside the namespaces they connect (see [`veth`]).

use std::{
    fs::File,
    io::Write,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

/// Prefix of everything the test bed creates.
pub const PREFIX: &str = "lbt";

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

static NEXT_SEQ: AtomicU64 = AtomicU64::new(0);

/// A network namespace owned by this process; deleted on drop, together
/// with every process still running inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Processes started with [`Netns::spawn`]: killed on drop by pid too,
    /// since one that has not entered the namespace yet is not listed by
    /// `ip netns pids` (it would survive the namespace).
    /// Held as pidfds, so a pid reused after the child was reaped is safe.
    spawned: std::sync::Mutex<Vec<std::os::fd::OwnedFd>>,
}

impl Netns {
    /// Creates `lbt<pid>-<seq>-<role>` and sets its `lo` up.
    pub fn new(role: &str) -> Result<Netns> {
        install_interrupt_cleanup();
        if role.is_empty()
            || !role
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("namespace role {role:?} must be non-empty ASCII letters, digits, '-' or '_'");
        }
        let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{seq}-{role}", std::process::id());
        run_cmd(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        // From here on, Drop removes it again.
        let ns = Netns {
            name,
            spawned: std::sync::Mutex::new(Vec::new()),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Runs `args` inside the namespace (`ip netns exec NAME args...`) and
    /// returns its standard output. Fails, quoting standard error, unless
    /// the command exits with status 0.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let Some((program, rest)) = args.split_first() else {
            bail!("Netns::exec: empty command");
        };
        let out = run_cmd(
            Command::new("ip")
                .args(["netns", "exec", &self.name, program])
                .args(rest),
        )
        .with_context(|| format!("in namespace {}: {}", self.name, args.join(" ")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip -n NAME args...` (faster than `exec(["ip", ...])`: no mount
    /// namespace is set up).
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = run_cmd(Command::new("ip").args(["-n", &self.name]).args(args))
            .with_context(|| format!("in namespace {}: ip {}", self.name, args.join(" ")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs several `ip` commands (one per line, without the leading `ip`)
    /// in one `ip -n NAME -batch -` process; stops at the first failure.
    pub fn ip_batch(&self, commands: &[String]) -> Result<()> {
        if commands.is_empty() {
            return Ok(());
        }
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ip -batch")?;
        let script = commands.join("\n") + "\n";
        {
            let mut stdin = child.stdin.take().context("ip -batch has no stdin")?;
            stdin
                .write_all(script.as_bytes())
                .context("writing to ip -batch")?;
        }
        let out = child.wait_with_output().context("waiting for ip -batch")?;
        if !out.status.success() {
            bail!(
                "in namespace {}: ip -batch failed ({}): {}\ncommands:\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                script.trim_end()
            );
        }
        Ok(())
    }

    /// Starts `cmd args...` inside the namespace. Whatever still runs in the
    /// namespace when it is dropped is killed (the caller should still
    /// `wait` the child it gets back, or it stays a zombie).
    pub fn spawn(&self, cmd: &str, args: &[&str]) -> Result<Child> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("in namespace {}: starting {cmd}", self.name))?;
        // SAFETY: pidfd_open on our own, not yet reaped child.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        if fd >= 0 {
            // SAFETY: a new fd we own.
            let fd =
                unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
            if let Ok(mut spawned) = self.spawned.lock() {
                spawned.push(fd);
            }
        }
        Ok(child)
    }

    /// Runs `f` on a fresh thread that first enters the namespace, so that
    /// sockets created in `f` live there (a socket keeps its namespace when
    /// it is used later from other threads). Panics if the namespace cannot
    /// be entered, and passes on panics of `f`.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match self.try_run(f) {
            Ok(v) => v,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Like [`Netns::run`], but returns an error when the namespace cannot be
    /// entered (`f` is then dropped without being called, on the new thread
    /// which is still in the caller's namespace). Panics of `f` are passed on.
    pub fn try_run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = self.path();
        let name = self.name.as_str();
        thread::scope(|s| {
            let handle = s.spawn(move || -> Result<T> {
                let file =
                    File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                // SAFETY: plain syscall on a valid descriptor; it only
                // changes the network namespace of this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("entering network namespace {name}"));
                }
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Sets a sysctl inside the namespace (`key` in dotted form, e.g.
    /// `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Sets several sysctls in one process.
    pub fn sysctls(&self, settings: &[(&str, &str)]) -> Result<()> {
        if settings.is_empty() {
            return Ok(());
        }
        let args: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut argv = vec!["sysctl", "-q", "-w"];
        argv.extend(args.iter().map(String::as_str));
        self.exec(&argv)?;
        Ok(())
    }

    /// Reads a sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        Ok(self.exec(&["sysctl", "-n", key])?.trim().to_string())
    }

    /// `(rx_packets, tx_packets)` of interface `ifname` in this namespace.
    pub fn link_stats(&self, ifname: &str) -> Result<(u64, u64)> {
        check_ifname(ifname)?;
        let base = format!("/sys/class/net/{ifname}/statistics");
        let out = self.exec(&[
            "cat",
            &format!("{base}/rx_packets"),
            &format!("{base}/tx_packets"),
        ])?;
        let mut values = out.split_whitespace().map(|v| {
            v.parse::<u64>()
                .with_context(|| format!("{}: bad counter {v:?} for {ifname}", self.name))
        });
        match (values.next(), values.next()) {
            (Some(rx), Some(tx)) => Ok((rx?, tx?)),
            _ => bail!("{}: no statistics for {ifname}: {out:?}", self.name),
        }
    }

    /// Pids of the processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<i32>> {
        namespace_pids(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(pidfds) = self.spawned.lock() {
            for fd in pidfds.iter() {
                // SAFETY: pidfd_send_signal on a pidfd we own; an exited
                // process makes it fail harmlessly.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        std::os::fd::AsRawFd::as_raw_fd(fd),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
            }
        }
        if let Err(e) = destroy(&self.name) {
            log::error!("removing network namespace {}: {e:#}", self.name);
        }
    }
}

/// Creates a veth pair: `a_if` inside `a`, its peer `b_if` inside `b`, and
/// sets both ends up. The pair is created directly inside the namespaces
/// (never in the root namespace).
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    check_ifname(a_if)?;
    check_ifname(b_if)?;
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])
    .with_context(|| format!("creating veth {}:{a_if} <-> {}:{b_if}", a.name, b.name))?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_IFNAME
        || name.contains('/')
        || name.contains(char::is_whitespace)
        || name == "."
        || name == ".."
    {
        bail!("bad interface name {name:?} (1 to {MAX_IFNAME} characters, no '/' or blanks)");
    }
    Ok(())
}

/// Serializes reaping within this process: every [`Topology::build`]
/// reaps, and a test that plants a fake orphan must call the reaper itself
/// before a topology built beside it does.
///
/// [`Topology::build`]: crate::topology::Topology::build
static REAPER: Mutex<()> = Mutex::new(());

/// Exclusive use of the reaper until dropped (see [`hold_reaper`]).
pub struct ReaperGuard {
    _held: MutexGuard<'static, ()>,
}

impl ReaperGuard {
    /// [`reap_orphans`] under this guard.
    pub fn reap_orphans(&self) -> Result<Vec<String>> {
        reap_orphans_exclusively()
    }
}

/// Keeps every other [`reap_orphans`] call of this process waiting until the
/// guard is dropped.
pub fn hold_reaper() -> ReaperGuard {
    ReaperGuard {
        _held: REAPER.lock().unwrap_or_else(PoisonError::into_inner),
    }
}

/// Deletes every `lbt<pid>-...` namespace whose creating process is no longer
/// alive (left behind by a killed test run), killing whatever still runs in
/// it. Namespaces of live processes and names of another form are left
/// alone. Returns the names it removed.
pub fn reap_orphans() -> Result<Vec<String>> {
    hold_reaper().reap_orphans()
}

fn reap_orphans_exclusively() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_DIR}")),
    };
    let mut reaped = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {NETNS_DIR}"))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        match destroy(&name) {
            Ok(()) => {
                log::info!("removed orphaned network namespace {name} (pid {pid} is gone)");
                reaped.push(name);
            }
            Err(e) => errors.push(format!("{name}: {e:#}")),
        }
    }
    reap_run_dirs(|pid| !pid_alive(pid), &mut reaped);
    if !errors.is_empty() {
        bail!(
            "could not remove orphaned namespaces: {}",
            errors.join("; ")
        );
    }
    Ok(reaped)
}

/// Unmounts and removes `/run/lbt<pid>-...` directories (the agents' bpffs
/// mounts) of the pids `gone` says are gone, and `/tmp/lbt-agent-lbt<pid>-...`
/// working directories.
fn reap_run_dirs(gone: impl Fn(i32) -> bool, reaped: &mut Vec<String>) {
    for dir in ["/run", "/tmp"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = owner_pid(name.strip_prefix("lbt-agent-").unwrap_or(&name));
            let Some(_) = owner.filter(|&pid| gone(pid)) else {
                continue;
            };
            let path = entry.path();
            let _ = Command::new("umount")
                .arg(&path)
                .stderr(Stdio::null())
                .status();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if removed.is_ok() {
                reaped.push(path.display().to_string());
            }
        }
    }
}

/// On Ctrl-C (SIGINT) or SIGTERM, removes every namespace, bpffs mount and
/// working directory this process created, then exits: test processes do
/// not run destructors when interrupted. Installed by the first
/// [`Netns::new`].
fn install_interrupt_cleanup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    ONCE.call_once(|| {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        // SAFETY: the handler only stores to an atomic.
        let previous = unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
        if previous != libc::SIG_DFL {
            // The program handles Ctrl-C itself (the demo): leave it be.
            // SAFETY: restoring the disposition we just replaced.
            unsafe { libc::signal(libc::SIGINT, previous) };
            return;
        }
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGTERM, handler as libc::sighandler_t) };
        let _ = thread::Builder::new()
            .name("lbt-interrupt".into())
            .spawn(|| loop {
                thread::sleep(Duration::from_millis(100));
                if !INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let me = std::process::id() as i32;
                if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
                    for entry in entries.flatten() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if owner_pid(&name) == Some(me) {
                            let _ = destroy(&name);
                        }
                    }
                }
                reap_run_dirs(|pid| pid == me, &mut Vec::new());
                eprintln!("interrupted: removed this run's namespaces and mounts");
                std::process::exit(130);
            });
    });
}

/// The pid encoded in a name of the form `lbt<pid>-...`.
pub fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (digits, _) = rest.split_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|pid| *pid > 0)
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn namespace_pids(name: &str) -> Result<Vec<i32>> {
    let out = run_cmd(Command::new("ip").args(["netns", "pids", name]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .collect())
}

/// Kills every process inside namespace `name`, then deletes it.
fn destroy(name: &str) -> Result<()> {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = match namespace_pids(name) {
            Ok(pids) => pids.into_iter().filter(|p| *p != me && *p > 1).collect(),
            Err(e) => {
                log::warn!("listing processes in {name}: {e:#}");
                Vec::new()
            }
        };
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            // SAFETY: plain syscall; pid was listed as running in our namespace.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        if Instant::now() > deadline {
            log::warn!("processes {pids:?} still run in {name}; deleting it anyway");
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let mut last = None;
    for _ in 0..20 {
        match run_cmd(Command::new("ip").args(["netns", "del", name])) {
            Ok(_) => return Ok(()),
            Err(e) => {
                if !PathBuf::from(NETNS_DIR).join(name).exists() {
                    return Ok(());
                }
                last = Some(e);
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("ip netns del {name} failed")))
}

/// Runs a command to completion; fails with its stderr unless it exits 0.
fn run_cmd(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_our_names_only() {
        assert_eq!(owner_pid("lbt1234-0-router"), Some(1234));
        assert_eq!(owner_pid("lbt1-17-b1"), Some(1));
        assert_eq!(owner_pid("lbt-1-x"), None);
        assert_eq!(owner_pid("lbtx12-1-x"), None);
        assert_eq!(owner_pid("lbt12"), None);
        assert_eq!(owner_pid("other12-1"), None);
        assert_eq!(owner_pid("lbt0-1-x"), None);
    }

    #[test]
    fn ifname_limits() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok());
        assert!(check_ifname("abcdefghijklmnop").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
    }
}
