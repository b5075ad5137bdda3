//! `lb-agent` refuses bad configurations with a message naming the field, a
//! non-zero exit, and nothing attached.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn agent_with(config: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!(
        "lb-agent-cli-{}-{}",
        std::process::id(),
        config.len()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("lb.json");
    std::fs::write(&path, config).expect("writing config");
    // A pin root that is no bpffs mount: should a bad config ever be
    // accepted, the agent fails there instead of attaching to this host.
    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .arg("--config")
        .arg(&path)
        .arg("--state-file")
        .arg(dir.join("state.json"))
        .arg("--socket")
        .arg(dir.join("lb.sock"))
        .arg("--pin-root")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running lb-agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for lb-agent") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            panic!("lb-agent still runs 30 s after starting with {config}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
    (status.code().unwrap_or(-1), stderr)
}

const GOOD: &str = r#"{"interface": "lo", "source_address": "198.18.1.2",
  "vips": [{"address": "198.18.0.10", "port": 80, "protocol": "tcp",
            "backends": [{"address": "198.19.1.2", "weight": 1}]}]}"#;

#[test]
fn bad_configs_are_refused_with_the_field_named() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown interface",
            GOOD.replace("\"lo\"", "\"lbt-nope0\""),
            "no interface named",
        ),
        ("malformed JSON", GOOD.replace("}]}]}", "}]"), "EOF"),
        (
            "invalid address",
            GOOD.replace("198.19.1.2", "198.19.1"),
            "vips[0].backends[0].address",
        ),
        (
            "unknown field",
            GOOD.replace("\"port\"", "\"porr\""),
            "unknown field `porr`",
        ),
        (
            "table size not prime",
            GOOD.replace("\"port\": 80,", "\"port\": 80, \"table_size\": 1000,"),
            "1000",
        ),
        (
            "duplicate VIP",
            GOOD.replace(
                "\"vips\": [",
                "\"vips\": [{\"address\": \"198.18.0.10\", \"port\": 80, \"protocol\": \"tcp\"},",
            ),
            "configured twice",
        ),
        (
            "weight out of range",
            GOOD.replace("\"weight\": 1", "\"weight\": 100000"),
            "weight",
        ),
        ("missing file", String::new(), "EOF"),
    ];
    for (name, config, expect) in cases {
        let (code, stderr) = agent_with(&config);
        assert_eq!(code, 2, "{name}: exit code (stderr: {stderr})");
        assert!(
            stderr.contains(expect),
            "{name}: stderr should mention {expect:?}: {stderr}"
        );
    }
}

#[test]
fn too_many_vips_are_refused() {
    let vips: Vec<String> = (0..600)
        .map(|i| {
            format!(
                r#"{{"address": "198.18.0.10", "port": {}, "protocol": "tcp", "table_size": 251}}"#,
                i + 1
            )
        })
        .collect();
    let config = format!(
        r#"{{"interface": "lo", "source_address": "198.18.1.2", "vips": [{}]}}"#,
        vips.join(",")
    );
    let (code, stderr) = agent_with(&config);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("at most 512"), "{stderr}");
}

#[test]
fn check_accepts_a_good_config_and_help_works() {
    let dir = std::env::temp_dir().join(format!("lb-agent-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("lb.json");
    std::fs::write(&path, GOOD).expect("write");
    // --check judges the file alone: a running agent's state file, even a
    // damaged one, is none of its business.
    let state = dir.join("state.json");
    std::fs::write(&state, "{not json").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .arg("--state-file")
        .arg(&state)
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration OK: 1 VIP(s) on lo"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .arg("--help")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config"));
}
