//! `lb-decap`, the binary, on a backend of the test bed: the test bed
//! attaches no decap program of its own, so every packet that reaches the
//! service went through the one `lb-decap attach` pinned.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use lb_tests::{
    agent::{mount_bpffs, pin_root_for, Bed, TEST_VIP},
    netns::Netns,
    topology::{echo_roundtrip, locate_bin},
    xdp::require_root,
};
use serde_json::Value;

/// Runs the real `lb-decap` inside one namespace with a bpffs of the
/// test's own (`ip netns exec` hides /sys/fs/bpf). Dropping it detaches
/// whatever is still attached and unmounts the bpffs.
struct DecapCli {
    ns: String,
    pin_root: PathBuf,
    bin: PathBuf,
}

impl DecapCli {
    fn new(ns: &Netns) -> DecapCli {
        let pin_root = pin_root_for(ns.name());
        mount_bpffs(&pin_root).expect("mounting a bpffs for lb-decap");
        DecapCli {
            ns: ns.name().to_string(),
            pin_root,
            bin: locate_bin("lb-decap", "LB_DECAP").expect("lb-decap binary"),
        }
    }

    fn run_as(&self, prefix: &[&str], args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(prefix)
            .arg(&self.bin)
            .args(args)
            .arg("--pin-root")
            .arg(&self.pin_root)
            .output()
            .expect("running lb-decap")
    }

    /// (exit code, stdout, stderr)
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.run_as(&[], args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(args);
        assert_eq!(
            code,
            0,
            "lb-decap {} failed: {stdout}{stderr}",
            args.join(" ")
        );
        stdout
    }

    fn status(&self) -> Value {
        let stdout = self.ok(&["status", "--interface", "eth0", "--json"]);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("status JSON {stdout:?}: {e}"))
    }

    fn pin_dir(&self) -> PathBuf {
        self.pin_root.join("eth0")
    }
}

impl Drop for DecapCli {
    fn drop(&mut self) {
        let _ = self.run_as(&[], &["detach", "--interface", "eth0"]);
        let _ = Command::new("umount").arg(&self.pin_root).status();
        let _ = std::fs::remove_dir(&self.pin_root);
    }
}

fn decapsulated(status: &Value) -> u64 {
    status["counters"]["decapsulated"]
        .as_u64()
        .unwrap_or_else(|| panic!("no decapsulated counter in {status}"))
}

/// Whether backend 0's interface has an XDP program (any mode).
fn xdp_attached(bed: &Bed) -> bool {
    let link = bed
        .topo
        .backend_ns(0)
        .ip(&["-d", "link", "show", "eth0"])
        .expect("ip link show");
    link.contains(" xdp")
}

fn vip_answers(bed: &Bed) -> bool {
    bed.topo
        .tcp_connect(0, TEST_VIP, bed.port, Duration::from_secs(1))
        .is_ok()
}

#[test]
fn attached_by_the_binary_it_carries_real_traffic_and_detaches_cleanly() {
    let bed = Bed::start_without_decap(1, &[Some(1)], "native");
    let cli = DecapCli::new(bed.topo.backend_ns(0));
    let backend = bed.topo.backend_addr(0).to_string();

    // Without decap the backend's kernel cannot read the IP-in-IP packets.
    assert!(!xdp_attached(&bed));
    assert!(
        !vip_answers(&bed),
        "the VIP answered with no decap attached"
    );

    let out = cli.ok(&["attach", "--interface", "eth0", "--address", &backend]);
    assert!(out.contains("decap attached to eth0"), "{out}");
    let before = cli.status();
    assert_eq!(before["attached"], true);
    assert_eq!(before["addresses"], serde_json::json!([backend]));

    // The lb-decap process is gone: the pins keep the program attached.
    assert!(xdp_attached(&bed));
    let mut connections = bed.open(20);
    for (name, stream) in connections.iter_mut() {
        assert_eq!(name, "b1");
        let data = vec![0x42; 2000];
        assert_eq!(echo_roundtrip(stream, &data).expect("echo"), data);
    }
    drop(connections);
    let after = cli.status();
    // Each connection: SYN, ACK, the data (two segments) and more.
    assert!(
        decapsulated(&after) >= decapsulated(&before) + 20 * 4,
        "decapsulated {} -> {}",
        decapsulated(&before),
        decapsulated(&after)
    );
    let table = cli.ok(&["status", "--interface", "eth0"]);
    assert!(table.contains(&backend), "{table}");
    assert!(table.contains("decapsulated"), "{table}");

    // A second attach replaces the program in place and sets the address
    // set; the counters (pinned maps) carry on.
    let extra = Ipv4Addr::new(198, 19, 200, 1).to_string();
    let out = cli.ok(&[
        "attach",
        "--interface",
        "eth0",
        "--address",
        &format!("{backend},{extra}"),
    ]);
    assert!(out.contains("attached to eth0 already"), "{out}");
    let updated = cli.status();
    assert_eq!(updated["addresses"], serde_json::json!([backend, extra]));
    assert_ne!(updated["program_id"], after["program_id"]);
    assert_eq!(updated["link_id"], after["link_id"]);
    assert!(decapsulated(&updated) >= decapsulated(&after));
    assert!(
        vip_answers(&bed),
        "the VIP stopped answering after re-attach"
    );

    let out = cli.ok(&["detach", "--interface", "eth0"]);
    assert!(out.contains("decap detached from eth0"), "{out}");
    assert!(!cli.pin_dir().exists(), "pins left in {:?}", cli.pin_dir());
    assert!(!xdp_attached(&bed), "XDP still attached after detach");
    assert!(!vip_answers(&bed), "the VIP answered after detach");
    let out = cli.ok(&["detach", "--interface", "eth0"]);
    assert!(out.contains("nothing to detach"), "{out}");
    let (code, stdout, _) = cli.run(&["status", "--interface", "eth0", "--json"]);
    assert_eq!(code, 1, "status with nothing attached: {stdout}");
    assert!(stdout.contains(r#""attached":false"#), "{stdout}");
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    require_root();
    let ns = Netns::new("dcli").expect("namespace");
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])
    .expect("an eth0");
    let cli = DecapCli::new(&ns);
    let cases: &[(&[&str], &str)] = &[
        (
            &["attach", "-i", "eth0", "-a", "198.18.0.300"],
            "invalid IP address syntax",
        ),
        (&["attach", "-i", "eth0"], "--address"),
        (
            &["attach", "-i", "lbt-nosuch0", "-a", "198.18.0.2"],
            "no interface named \"lbt-nosuch0\"",
        ),
        (
            &["attach", "-i", "../eth0", "-a", "198.18.0.2"],
            "is not an interface name",
        ),
        (&["attach", "-a", "198.18.0.2"], "--interface"),
        (&["detach"], "--interface"),
        (
            &[
                "attach",
                "-i",
                "eth0",
                "-a",
                "198.18.0.2",
                "--gue-port",
                "0",
            ],
            "gue-port: 0 is not a UDP port",
        ),
        (
            &[
                "attach",
                "-i",
                "eth0",
                "-a",
                "198.18.0.2",
                "--gue-port",
                "70000",
            ],
            "--gue-port",
        ),
    ];
    for (args, message) in cases {
        let (code, stdout, stderr) = cli.run(args);
        assert_eq!(code, 2, "lb-decap {args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(message),
            "lb-decap {args:?} should say {message:?}: {stderr}"
        );
    }
    let nobody = cli.run_as(
        &[
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
        ],
        &["attach", "-i", "eth0", "-a", "198.18.0.2"],
    );
    assert_eq!(nobody.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert!(stderr.contains("must run as root"), "{stderr}");
    // Nothing of the refused attaches was pinned.
    assert!(is_empty_of_pins(&cli.pin_root), "{:?}", cli.pin_root);
}

/// A fresh bpffs holds only the kernel's own `maps.debug` / `progs.debug`.
fn is_empty_of_pins(root: &Path) -> bool {
    std::fs::read_dir(root)
        .expect("reading the pin root")
        .flatten()
        .all(|e| e.file_name().to_string_lossy().ends_with(".debug"))
}
