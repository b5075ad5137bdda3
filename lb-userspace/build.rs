//! Builds the eBPF objects (lb-ebpf, nightly, bpfel-unknown-none) so the
//! agent embeds them and an installed `lb-agent` is one self-contained file.
//! `cargo xtask setup` installs what this needs (rust-src, bpf-linker).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// (cargo feature of lb-ebpf, binaries it builds)
const OBJECTS: &[(&str, &[&str])] = &[
    ("balancer", &["lb-balancer", "lb-bench-programs"]),
    ("decap", &["lb-decap"]),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("lb-userspace sits in the workspace");
    let ebpf_dir = root.join("lb-ebpf");
    let common_dir = root.join("lb-common");
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        // Its target, flags and toolchain pin.
        ebpf_dir.join(".cargo"),
        ebpf_dir.join("rust-toolchain.toml"),
        common_dir.join("src"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    git_commit(root);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = ebpf_target_dir(&out_dir, root);

    for (feature, bins) in OBJECTS {
        build(&ebpf_dir, &target_dir, feature, bins);
        for bin in *bins {
            let built = target_dir
                .join("bpfel-unknown-none")
                .join("release")
                .join(bin);
            std::fs::copy(&built, out_dir.join(bin)).unwrap_or_else(|e| {
                panic!("copying {} into OUT_DIR: {e}", built.display());
            });
        }
    }
}

/// Where the eBPF crate is built: `ebpf/` in the target directory of this
/// build (OUT_DIR is `<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`),
/// so `cargo install` and `CARGO_TARGET_DIR` builds keep it in their own
/// target directory rather than writing into the source tree, and
/// rebuilds of either profile share it. Falls back to the workspace's.
fn ebpf_target_dir(out_dir: &Path, root: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|target| target.join("ebpf"))
        .unwrap_or_else(|| root.join("target").join("ebpf"))
}

fn build(ebpf_dir: &Path, target_dir: &Path, feature: &str, bins: &[&str]) {
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "--features",
        feature,
    ])
    .arg("--target-dir")
    .arg(target_dir)
    .current_dir(ebpf_dir);
    for bin in bins {
        cmd.args(["--bin", bin]);
    }
    // The outer cargo's toolchain and flags must not leak into the nightly
    // bpf build (build-std would then use the stable compiler).
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" || key.starts_with("RUSTC") {
            cmd.env_remove(key.as_ref());
        }
    }
    for key in ["RUSTUP_TOOLCHAIN", "RUSTFLAGS", "RUSTDOCFLAGS", "CARGO"] {
        cmd.env_remove(key);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("running rustup for the eBPF build ({e}); run `cargo xtask setup` first")
    });
    assert!(
        status.success(),
        "building lb-ebpf --features {feature} failed; run `cargo xtask setup` if bpf-linker or rust-src is missing"
    );
}

/// `LB_GIT_COMMIT` for the agent's build info (`lb_build_info`), when the
/// source is a git checkout with git installed; rebuilt when HEAD moves.
fn git_commit(root: &Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return;
    };
    println!("cargo:rustc-env=LB_GIT_COMMIT={commit}");
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // logs/HEAD changes with every commit and checkout.
        for file in ["HEAD", "logs/HEAD"] {
            println!("cargo:rerun-if-changed={dir}/{file}");
        }
    }
}
