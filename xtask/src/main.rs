//! `cargo xtask <command>`: setup, build, test, bench, demo, deb.
//!
//! xtask depends on nothing that needs bpf-linker or system libraries, so it
//! runs on a machine that has only the Rust toolchains and installs the rest.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod deb;

#[derive(Parser)]
#[command(about = "Build, test, benchmark and demo the load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks (idempotent, fast when done).
    Setup,
    /// Build the eBPF objects and the userspace binaries (release).
    Build,
    /// Run every test: unit, packet (BPF_PROG_TEST_RUN) and integration.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks; writes target/bench/results.json.
    Bench {
        /// Also write target/bench/report.html: SVG charts of the results.
        #[arg(long)]
        report: bool,
    },
    /// Run the demo: a built-in topology with real traffic.
    Demo {
        /// Shorter phases (CI runs this on every clean clone).
        #[arg(long)]
        quick: bool,
        /// The active-active demo instead: three LB nodes (lb-agent and
        /// BIRD each) behind a BIRD router doing ECMP; one fails and returns.
        #[arg(long)]
        ha: bool,
    },
    /// Run N frames of the hostile-input corpus through the XDP programs,
    /// checking every verdict and output frame (needs root).
    Fuzz {
        /// Frames to run.
        #[arg(long, default_value_t = 1_000_000)]
        runs: u64,
        /// Corpus seed (default: the time; a failure prints it).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Build the release binaries and a Debian package of them
    /// (target/deb/lb_VERSION_ARCH.deb); prints its path.
    Deb,
}

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Debian packages the project uses at run time (tests, demo).
const RUNTIME_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("ping", "iputils-ping"),
    // `cargo xtask deb` (dpkg-deb is dpkg's own; dpkg-shlibdeps is not).
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("setpriv", "util-linux"),
    // The active-active tests' routing daemons (tests/src/bird.rs) and the
    // active-passive test's VRRP daemon.
    ("bird", "bird2"),
    ("keepalived", "keepalived"),
    // The reset-counting test's backends and load (tests/traffic_resets.rs).
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
];
/// Debian packages needed only to build bpf-linker.
const LINKER_BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    setup()?;
    match cli.command {
        Cmd::Setup => {
            say(&format!(
                "everything is installed: bpf-linker {BPF_LINKER_VERSION}, rust-src for nightly, {}",
                RUNTIME_PACKAGES.iter().map(|(_, pkg)| *pkg).collect::<Vec<_>>().join(", ")
            ));
            Ok(())
        }
        Cmd::Build => build(),
        Cmd::Test { args } => test(&args),
        Cmd::Bench { report } => bench(report),
        Cmd::Demo { quick, ha } => demo(quick, ha),
        Cmd::Fuzz { runs, seed } => fuzz(runs, seed),
        Cmd::Deb => deb::deb(&root(), &mut cargo()).map(|_| ()),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn say(msg: &str) {
    eprintln!("xtask: {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let status: ExitStatus = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn has_command(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()))
        .unwrap_or(false)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    say(&format!(
        "installing Debian packages: {}",
        packages.join(" ")
    ));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn setup() -> Result<()> {
    let started = Instant::now();
    let missing: Vec<&str> = RUNTIME_PACKAGES
        .iter()
        .filter(|(bin, _)| {
            !has_command(bin)
                && !Path::new("/usr/sbin").join(bin).is_file()
                && !Path::new("/sbin").join(bin).is_file()
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }

    // rust-src for the nightly toolchain (build-std=core for bpfel).
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("running rustc +nightly: the nightly toolchain must be installed")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        say("adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if !linker_ok {
        let missing: Vec<&str> = LINKER_BUILD_PACKAGES
            .iter()
            .copied()
            .filter(|p| !dpkg_installed(p))
            .collect();
        if !missing.is_empty() {
            apt_install(&missing)?;
        }
        say(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        ));
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTFLAGS"))?;
    }
    let elapsed = started.elapsed();
    if elapsed.as_millis() > 1000 {
        say(&format!("setup done in {:.1} s", elapsed.as_secs_f64()));
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn build() -> Result<()> {
    say("building the eBPF objects and the userspace binaries (release)");
    run(cargo().args(["build", "--release", "--workspace"]))
}

fn test(args: &[String]) -> Result<()> {
    say("running every test (unit, packet, integration); the packet and integration tests need root");
    run(cargo()
        .args(["test", "--workspace", "--release"])
        .args(args))?;
    leftover_check()
}

/// Fails if a test left a network namespace, veth or pinned object of ours
/// behind (they are all named with the `lbt` prefix, most as
/// `lbt<pid>-...` after the process that made them). Objects of a process
/// that is still running belong to someone else's run on the same machine
/// (every test process of this run has exited), so they are not counted.
fn leftover_check() -> Result<()> {
    let mut leftovers = Vec::new();
    let ours = |name: &str| name.starts_with("lbt") && !owner_alive(name);
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if ours(name) {
                leftovers.push(format!("network namespace {line}"));
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split(':').nth(1).map(str::trim) {
                if ours(name) {
                    leftovers.push(format!("link {name}"));
                }
            }
        }
    }
    for dir in ["/sys/fs/bpf", "/run"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if ours(&name) {
                    leftovers.push(format!("pinned objects or bpffs mount {dir}/{name}"));
                }
            }
        }
    }
    if !leftovers.is_empty() {
        bail!("tests left these behind:\n  {}", leftovers.join("\n  "));
    }
    say("no namespace, link or pinned object left behind");
    Ok(())
}

/// `cargo run --release -p lb-tests --bin BIN --`: the benchmark and the
/// fuzzer run from the tests crate, which has the packet builders.
fn run_tests_bin(bin: &str) -> Command {
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-p", "lb-tests", "--bin", bin, "--"]);
    cmd
}

/// Whether `lbt<pid>-...` names a process that is still running.
fn owner_alive(name: &str) -> bool {
    let Some((digits, _)) = name.strip_prefix("lbt").and_then(|r| r.split_once('-')) else {
        return false;
    };
    match digits.parse::<i32>() {
        // SAFETY: signal 0 only checks that the process exists.
        Ok(pid) if pid > 0 => unsafe { libc::kill(pid, 0) == 0 },
        _ => false,
    }
}

fn bench(report: bool) -> Result<()> {
    say("running the benchmarks (release build)");
    // The real-traffic case starts lb-agent and the test servers.
    run(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
    let mut cmd = run_tests_bin("lb-bench");
    cmd.arg(root().join("target/bench/results.json"));
    if report {
        cmd.arg("--report")
            .arg(root().join("target/bench/report.html"));
    }
    run(&mut cmd)
}

fn fuzz(runs: u64, seed: Option<u64>) -> Result<()> {
    say("running the hostile-input corpus (release build)");
    let mut cmd = run_tests_bin("lb-fuzz");
    cmd.args(["--runs", &runs.to_string()]);
    if let Some(seed) = seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    run(&mut cmd)
}

/// The binaries the demo runs: the demo itself starts the agent, the
/// backends' servers and `lbctl` from the directory it sits in (`--ha`
/// too, and BIRD: `bird2`, which `setup` installs with the other
/// [`RUNTIME_PACKAGES`]).
const DEMO_BINS: &[(&str, &str)] = &[
    ("lb-tests", "lb-demo"),
    ("lb-tests", "lb-backend-server"),
    ("lb-userspace", "lb-agent"),
    ("lb-userspace", "lbctl"),
];

fn demo(quick: bool, ha: bool) -> Result<()> {
    say("building the demo (release)");
    let mut build = cargo();
    build.args(["build", "--release"]);
    for (package, bin) in DEMO_BINS {
        build.args(["-p", package, "--bin", bin]);
    }
    run(&mut build)?;
    let mut demo = Command::new(root().join("target/release/lb-demo"));
    if quick {
        demo.arg("--quick");
    }
    if ha {
        demo.arg("--ha");
    }
    run(&mut demo)
}

#[cfg(test)]
mod tests {
    use super::owner_alive;

    #[test]
    fn a_running_owner_is_someone_elses_run() {
        assert!(owner_alive(&format!("lbt{}-3-router", std::process::id())));
        // pid_max is at most 2^22: this pid cannot exist.
        assert!(!owner_alive("lbt99999999-1-lb"));
        assert!(!owner_alive("lbt-agent-x"));
        assert!(!owner_alive("lbtx-1"));
        assert!(!owner_alive("lbt0-1-x"));
    }
}
