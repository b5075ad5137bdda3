//! `cargo xtask deb`: a Debian package of the release binaries, assembled
//! with dpkg-deb. Man pages and completions come from the binaries
//! themselves (`--generate` for lb-agent and lb-decap, `lbctl man` and
//! `lbctl completions SHELL`), so they always match the flags shipped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{run, say};

pub const PACKAGE: &str = "lb";

/// A binary of the package: its name and where it is installed.
pub struct Binary {
    pub name: &'static str,
    /// `usr/sbin` for the root-only tools, `usr/bin` for the client.
    pub dir: &'static str,
    pub docs: Docs,
}

/// How a binary prints its man page and completions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Docs {
    /// `BIN --generate man|bash|zsh|fish` (lb_userspace::clidoc).
    GenerateFlag,
    /// `BIN man` and `BIN completions SHELL` (lbctl's subcommands).
    Subcommands,
}

pub const BINARIES: &[Binary] = &[
    Binary {
        name: "lb-agent",
        dir: "usr/sbin",
        docs: Docs::GenerateFlag,
    },
    Binary {
        name: "lb-decap",
        dir: "usr/sbin",
        docs: Docs::GenerateFlag,
    },
    Binary {
        name: "lbctl",
        dir: "usr/bin",
        docs: Docs::Subcommands,
    },
];

/// Where a shell's completion of the binary named so goes.
type CompletionPath = fn(&str) -> String;

/// (shell, where its completion of a binary goes).
const SHELLS: &[(&str, CompletionPath)] = &[
    ("bash", |name| {
        format!("usr/share/bash-completion/completions/{name}")
    }),
    ("zsh", |name| {
        format!("usr/share/zsh/vendor-completions/_{name}")
    }),
    ("fish", |name| {
        format!("usr/share/fish/vendor_completions.d/{name}.fish")
    }),
];

/// Files of the repository that go into the package as they are:
/// (source relative to the repository, destination, mode).
const FILES: &[(&str, &str, u32)] = &[
    (
        "packaging/lb-agent.service",
        "lib/systemd/system/lb-agent.service",
        0o644,
    ),
    (
        "packaging/lb-decap@.service",
        "lib/systemd/system/lb-decap@.service",
        0o644,
    ),
    ("examples/lb.jsonc", "etc/lb/lb.jsonc", 0o644),
    (
        "packaging/decap.env.example",
        "etc/lb/decap.env.example",
        0o644,
    ),
    ("packaging/copyright", "usr/share/doc/lb/copyright", 0o644),
    ("README.md", "usr/share/doc/lb/README.md", 0o644),
    (
        "docs/control-api.md",
        "usr/share/doc/lb/control-api.md",
        0o644,
    ),
];

/// The package's content tree: `tree` gets DEBIAN/ and the files; the
/// binaries are taken from `bin_dir`, the other files from `repo`.
/// Returns warnings about what had to be left out (today: lbctl's man page
/// and completions, until lbctl has its `man` and `completions`).
pub fn assemble(
    repo: &Path,
    bin_dir: &Path,
    tree: &Path,
    version: &str,
    arch: &str,
) -> Result<Vec<String>> {
    if tree.exists() {
        fs::remove_dir_all(tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    let mut warnings = Vec::new();
    for bin in BINARIES {
        let source = bin_dir.join(bin.name);
        let dest = tree.join(bin.dir).join(bin.name);
        install(&source, &dest, 0o755)?;
        strip(&dest)?;
        if let Err(e) = bin_docs(&source, bin, tree) {
            if bin.docs == Docs::Subcommands {
                // lbctl's `man` and `completions` are being added by the
                // split of lbctl.rs; until then it ships without them.
                warnings.push(format!(
                    "{} has no man page or completions in the package: {e:#} \
                     (expected `{0} man` and `{0} completions SHELL`)",
                    bin.name
                ));
            } else {
                return Err(e);
            }
        }
    }
    for (source, dest, mode) in FILES {
        install(&repo.join(source), &tree.join(dest), *mode)?;
    }
    let changelog = tree.join("usr/share/doc/lb/changelog.Debian.gz");
    gzip(&repo.join("packaging/changelog"), &changelog)?;

    let debian = tree.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let conffiles: Vec<String> = FILES
        .iter()
        .filter(|(_, dest, _)| dest.starts_with("etc/"))
        .map(|(_, dest, _)| format!("/{dest}\n"))
        .collect();
    write(&debian.join("conffiles"), &conffiles.concat(), 0o644)?;
    write(&debian.join("postinst"), MAINTAINER_SCRIPT, 0o755)?;
    write(&debian.join("postrm"), MAINTAINER_SCRIPT, 0o755)?;
    let depends = depends(tree)?;
    let control = control(version, arch, depends.as_deref(), installed_size_kib(tree)?);
    write(&debian.join("control"), &control, 0o644)?;
    Ok(warnings)
}

/// Only tells systemd that the units changed: starting the agent needs a
/// configuration the operator writes first, and stopping it on removal
/// would not stop the pinned data path anyway (`lb-agent --detach` does).
const MAINTAINER_SCRIPT: &str = "#!/bin/sh\nset -e\n\
if [ -d /run/systemd/system ]; then\n\tsystemctl daemon-reload >/dev/null || true\nfi\n";

fn control(version: &str, arch: &str, depends: Option<&str>, installed_size: u64) -> String {
    let depends = depends
        .map(|d| format!("Depends: {d}\n"))
        .unwrap_or_default();
    format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: lb developers <lb-dev@example.org>\n\
         Installed-Size: {installed_size}\n\
         {depends}\
         Section: net\n\
         Priority: optional\n\
         Description: XDP Maglev load balancer (L4, direct server return)\n \
         An XDP program balances packets for virtual IPs over backends with\n \
         Maglev hashing and a connection table, and sends them on in IP-in-IP.\n \
         lb-agent loads and pins it and serves a control socket (lbctl);\n \
         lb-decap strips the IP-in-IP header on backends without kernel ipip.\n"
    )
}

/// The shared-library dependencies of the binaries, from dpkg-shlibdeps
/// (which wants a debian/control, so it runs in a scratch directory).
fn depends(tree: &Path) -> Result<Option<String>> {
    let scratch = PathBuf::from(format!("{}-shlibdeps", tree.display()));
    fs::create_dir_all(scratch.join("debian"))?;
    fs::write(
        scratch.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let mut cmd = Command::new("dpkg-shlibdeps");
    cmd.arg("-O").current_dir(&scratch);
    for bin in BINARIES {
        cmd.arg(format!("-e{}", tree.join(bin.dir).join(bin.name).display()));
    }
    let out = cmd
        .output()
        .context("running dpkg-shlibdeps (package dpkg-dev)")?;
    let _ = fs::remove_dir_all(&scratch);
    if !out.status.success() {
        bail!(
            "dpkg-shlibdeps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Nothing at all for binaries that link no shared library.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string))
}

/// Runs `bin` for its man page and completions and installs them; all
/// are asked for before anything is written, so a binary that cannot
/// print one of them leaves none of them behind.
fn bin_docs(bin: &Path, spec: &Binary, tree: &Path) -> Result<()> {
    let man_args: &[&str] = match spec.docs {
        Docs::GenerateFlag => &["--generate", "man"],
        Docs::Subcommands => &["man"],
    };
    let man = output_of(bin, man_args)?;
    let section = man_section(&man)
        .with_context(|| format!("{} printed no .TH line for its man page", spec.name))?;
    let completions = SHELLS
        .iter()
        .map(|(shell, dest)| {
            let args: &[&str] = match spec.docs {
                Docs::GenerateFlag => &["--generate", shell],
                Docs::Subcommands => &["completions", shell],
            };
            Ok((dest(spec.name), output_of(bin, args)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let plain = tree.join(format!("{}.{section}", spec.name));
    write(&plain, &man, 0o644)?;
    gzip(
        &plain,
        &tree.join(format!(
            "usr/share/man/man{section}/{}.{section}.gz",
            spec.name
        )),
    )?;
    fs::remove_file(&plain)?;
    for (dest, text) in completions {
        write(&tree.join(dest), &text, 0o644)?;
    }
    Ok(())
}

/// The section of a man page from its `.TH NAME SECTION ...` line.
pub fn man_section(roff: &str) -> Option<String> {
    let th = roff.lines().find(|l| l.starts_with(".TH "))?;
    let section = th.split_whitespace().nth(2)?.trim_matches('"');
    let valid = section.starts_with(|c: char| c.is_ascii_digit())
        && section.chars().all(|c| c.is_ascii_alphanumeric());
    valid.then(|| section.to_string())
}

fn output_of(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "`{} {}` failed ({}): {}",
            bin.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{} printed non-UTF-8", bin.display()))
}

/// Drops the debug info (the release profile keeps line tables: most of
/// the binaries' size) from an ELF file, as Debian packages ship them.
fn strip(path: &Path) -> Result<()> {
    let magic = fs::read(path)
        .with_context(|| format!("reading {}", path.display()))?
        .starts_with(b"\x7fELF");
    if magic {
        run(Command::new("strip")
            .args([
                "--strip-debug",
                "--strip-unneeded",
                "--remove-section=.comment",
            ])
            .arg(path))?;
    }
    Ok(())
}

fn install(source: &Path, dest: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(source, dest)
        .with_context(|| format!("copying {} to {}", source.display(), dest.display()))?;
    set_mode(dest, mode)
}

fn write(dest: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(dest, text).with_context(|| format!("writing {}", dest.display()))?;
    set_mode(dest, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// `gzip -9n`: no name or time stamp in the header, as Debian wants.
fn gzip(source: &Path, dest: &Path) -> Result<()> {
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir)?;
    }
    let out = Command::new("gzip")
        .args(["-9n", "--stdout"])
        .arg(source)
        .output()
        .context("running gzip")?;
    if !out.status.success() {
        bail!("gzip {} failed", source.display());
    }
    fs::write(dest, out.stdout).with_context(|| format!("writing {}", dest.display()))?;
    set_mode(dest, 0o644)
}

/// Installed-Size: the files' sizes in KiB, rounded up per file.
fn installed_size_kib(tree: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                if entry.file_name() != "DEBIAN" {
                    walk(&entry.path(), total)?;
                }
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(tree, &mut total)?;
    Ok(total)
}

/// `dpkg-deb --build` of `tree` into `out_dir`; returns the .deb's path.
pub fn build_deb(tree: &Path, out_dir: &Path, version: &str, arch: &str) -> Result<PathBuf> {
    let deb = out_dir.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(tree)
        .arg(&deb))?;
    Ok(deb)
}

/// The architecture dpkg builds for (`amd64`, `arm64`, ...).
pub fn dpkg_arch() -> Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("running dpkg --print-architecture")?;
    if !out.status.success() {
        bail!("dpkg --print-architecture failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `cargo xtask deb`: build, assemble, package; prints the path.
pub fn deb(repo: &Path, cargo: &mut Command) -> Result<PathBuf> {
    say("building the release binaries for the package");
    run(cargo.args([
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "--bin",
        "lb-agent",
        "--bin",
        "lb-decap",
        "--bin",
        "lbctl",
    ]))?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = dpkg_arch()?;
    let out_dir = repo.join("target/deb");
    let tree = out_dir.join(format!("{PACKAGE}_{version}_{arch}"));
    for warning in assemble(repo, &repo.join("target/release"), &tree, version, &arch)? {
        say(&format!("warning: {warning}"));
    }
    let deb = build_deb(&tree, &out_dir, version, &arch)?;
    println!("{}", deb.display());
    Ok(deb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_section_comes_from_the_th_line() {
        assert_eq!(
            man_section(".ie x\n.TH lb-agent 8  \"lb-agent 0.1.0\"\n").as_deref(),
            Some("8")
        );
        assert_eq!(man_section(".TH \"lbctl\" \"1\"\n").as_deref(), Some("1"));
        assert_eq!(man_section(".TH lbctl ../x\n"), None);
        assert_eq!(man_section("no page\n"), None);
    }

    /// Stand-ins for the real binaries (building those needs bpf-linker):
    /// they answer `--generate` like lb-agent and lb-decap; the lbctl one
    /// either has `man`/`completions` or, like today's lbctl, refuses them.
    fn fake_binaries(dir: &Path, lbctl_has_docs: bool) {
        fs::create_dir_all(dir).expect("bin dir");
        for bin in BINARIES {
            let script = match (bin.docs, lbctl_has_docs) {
                (Docs::GenerateFlag, _) => format!(
                    "#!/bin/sh\ncase \"$1 $2\" in\n\
                     '--generate man') printf '.TH {0} 8 \"{0} 0.1.0\"\\n.SH NAME\\n{0}\\n' ;;\n\
                     '--generate '*) echo \"complete {0} for $2\" ;;\n\
                     *) exit 2 ;;\nesac\n",
                    bin.name
                ),
                (Docs::Subcommands, true) => format!(
                    "#!/bin/sh\ncase \"$1\" in\n\
                     man) printf '.TH {0} 1\\n.SH NAME\\n{0}\\n' ;;\n\
                     completions) echo \"complete {0} for $2\" ;;\n\
                     *) exit 2 ;;\nesac\n",
                    bin.name
                ),
                (Docs::Subcommands, false) => {
                    "#!/bin/sh\necho \"error: unrecognized subcommand '$1'\" >&2\nexit 2\n"
                        .to_string()
                }
            };
            write(&dir.join(bin.name), &script, 0o755).expect("fake binary");
        }
    }

    fn dpkg_deb(args: &[&str], deb: &Path) -> String {
        let out = Command::new("dpkg-deb")
            .args(args)
            .arg(deb)
            .output()
            .expect("running dpkg-deb");
        assert!(
            out.status.success(),
            "dpkg-deb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-xtask-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn the_package_holds_binaries_units_config_docs_and_completions() {
        let dir = scratch("deb");
        let repo = crate::root();
        let bin_dir = dir.join("bin");
        fake_binaries(&bin_dir, true);
        let tree = dir.join("tree");
        let arch = dpkg_arch().expect("dpkg architecture");
        let warnings = assemble(&repo, &bin_dir, &tree, "0.1.0", &arch).expect("assembling");
        assert!(warnings.is_empty(), "{warnings:?}");
        let deb = build_deb(&tree, &dir, "0.1.0", &arch).expect("dpkg-deb --build");

        let info = dpkg_deb(&["--info"], &deb);
        for field in [
            "Package: lb",
            "Version: 0.1.0",
            &format!("Architecture: {arch}"),
            "Maintainer: ",
            "Installed-Size: ",
            "Description: XDP Maglev load balancer",
            "conffiles",
            "postinst",
        ] {
            assert!(info.contains(field), "--info lacks {field:?}:\n{info}");
        }
        // The stand-ins are shell scripts: dpkg-shlibdeps finds no library,
        // so there is no Depends here; the real binaries get libc6 and
        // libgcc-s1.
        assert!(!info.contains("Depends:"), "{info}");
        let conffiles = fs::read_to_string(tree.join("DEBIAN/conffiles")).expect("conffiles");
        assert_eq!(conffiles, "/etc/lb/lb.jsonc\n/etc/lb/decap.env.example\n");

        let contents = dpkg_deb(&["--contents"], &deb);
        for (path, mode) in [
            ("./usr/sbin/lb-agent", "-rwxr-xr-x root/root"),
            ("./usr/sbin/lb-decap", "-rwxr-xr-x root/root"),
            ("./usr/bin/lbctl", "-rwxr-xr-x root/root"),
            (
                "./lib/systemd/system/lb-agent.service",
                "-rw-r--r-- root/root",
            ),
            (
                "./lib/systemd/system/lb-decap@.service",
                "-rw-r--r-- root/root",
            ),
            ("./etc/lb/lb.jsonc", "-rw-r--r-- root/root"),
            ("./etc/lb/decap.env.example", "-rw-r--r-- root/root"),
            ("./usr/share/man/man8/lb-agent.8.gz", "-rw-r--r--"),
            ("./usr/share/man/man8/lb-decap.8.gz", "-rw-r--r--"),
            ("./usr/share/man/man1/lbctl.1.gz", "-rw-r--r--"),
            (
                "./usr/share/bash-completion/completions/lb-agent",
                "-rw-r--r--",
            ),
            ("./usr/share/zsh/vendor-completions/_lb-decap", "-rw-r--r--"),
            (
                "./usr/share/fish/vendor_completions.d/lbctl.fish",
                "-rw-r--r--",
            ),
            ("./usr/share/doc/lb/copyright", "-rw-r--r--"),
            ("./usr/share/doc/lb/changelog.Debian.gz", "-rw-r--r--"),
        ] {
            let line = contents
                .lines()
                .find(|l| l.ends_with(path))
                .unwrap_or_else(|| panic!("{path} not in the package:\n{contents}"));
            assert!(line.starts_with(mode), "{line}");
        }
        let bash = fs::read_to_string(tree.join("usr/share/bash-completion/completions/lbctl"))
            .expect("lbctl's bash completion");
        assert_eq!(bash, "complete lbctl for bash\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_lbctl_without_man_and_completions_is_packaged_with_a_warning() {
        let dir = scratch("deb-old-lbctl");
        let bin_dir = dir.join("bin");
        fake_binaries(&bin_dir, false);
        let tree = dir.join("tree");
        let warnings =
            assemble(&crate::root(), &bin_dir, &tree, "0.1.0", "amd64").expect("assembling");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("lbctl man"), "{}", warnings[0]);
        assert!(tree.join("usr/bin/lbctl").is_file());
        assert!(!tree.join("usr/share/man/man1").exists());
        assert!(tree.join("usr/share/man/man8/lb-agent.8.gz").is_file());
        let _ = fs::remove_dir_all(&dir);
    }
}
