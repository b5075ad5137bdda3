//! The state file: every VIP, backend, weight and drain state the agent
//! serves, rewritten atomically after each accepted change, so a restarted
//! agent comes back with exactly what it had.
//!
//! Reconciliation with the config file: the config file gives the host
//! settings (interface, addresses, sizes) and the *initial* VIPs. Once a
//! state file exists it holds the VIPs, including every change made through
//! the control socket, and the config file's VIPs are not used at start-up.
//! Two things replace the state file's VIPs with the config file's: a
//! reload (SIGHUP), which is an operator asking for the file's contents, and
//! `lb-agent --reset-state`.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::VipConfig;

/// Format version of the state file.
pub const STATE_VERSION: u32 = 1;
pub const DEFAULT_STATE_FILE: &str = "/var/lib/lb/state.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateDoc {
    version: u32,
    vips: Vec<VipConfig>,
}

#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved VIPs, or `None` if there is no state file yet.
    pub fn load(&self) -> Result<Option<Vec<VipConfig>>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading state file {}", self.path.display()))
            }
        };
        let de = &mut serde_json::Deserializer::from_str(&text);
        let doc: StateDoc = serde_path_to_error::deserialize(de)
            .map_err(|e| anyhow::anyhow!("{}: {}", e.path(), e.inner()))
            .with_context(|| {
                format!(
                    "state file {} is damaged (move it away to start from the config file)",
                    self.path.display()
                )
            })?;
        if doc.version != STATE_VERSION {
            bail!(
                "state file {} has version {}, this agent reads version {STATE_VERSION}",
                self.path.display(),
                doc.version
            );
        }
        Ok(Some(doc.vips))
    }

    /// Writes the VIPs: temporary file, fsync, rename over the old file,
    /// fsync of the directory. A crash leaves the old or the new file,
    /// never a mix.
    pub fn save(&self, vips: &[VipConfig]) -> Result<()> {
        self.stage(vips)?.commit()
    }

    /// The first half of [`Self::save`]: the new state written and synced
    /// next to the file. A change stages its state before it touches the
    /// data path (a full or read-only disk then refuses it with nothing
    /// changed) and commits after; dropping the stage discards it.
    pub fn stage(&self, vips: &[VipConfig]) -> Result<StagedState> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let doc = StateDoc {
            version: STATE_VERSION,
            vips: vips.to_vec(),
        };
        let text = serde_json::to_string_pretty(&doc)? + "\n";
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staged = StagedState {
            tmp: dir.join(format!(".{file_name}.tmp")),
            path: self.path.clone(),
            dir,
            committed: false,
        };
        let mut f = File::create(&staged.tmp)
            .with_context(|| format!("creating {}", staged.tmp.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", staged.tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", staged.tmp.display()))?;
        Ok(staged)
    }
}

/// A state written and synced beside the state file, not yet in its place
/// (see [`StateFile::stage`]).
#[must_use = "a staged state is discarded unless committed"]
pub struct StagedState {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    committed: bool,
}

impl StagedState {
    /// Renames the staged file over the state file and syncs the directory.
    /// Fails only if the rename fails: once renamed the new state is the
    /// state, and a failed directory sync is logged.
    pub fn commit(mut self) -> Result<()> {
        fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        self.committed = true;
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            log::warn!(
                "{} replaced, but syncing {} failed: {e}",
                self.path.display(),
                self.dir.display()
            );
        }
        Ok(())
    }
}

impl Drop for StagedState {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::BackendConfig, dataplane::Protocol};

    fn vips() -> Vec<VipConfig> {
        vec![VipConfig {
            address: "198.18.0.10".parse().expect("address"),
            port: 80,
            protocol: Protocol::Tcp,
            table_size: 65537,
            policy: Default::default(),
            source_prefix: None,
            affinity_timeout: None,
            idle_timeout: None,
            hash_source_only: false,
            icmp_echo: true,
            encap: Some(crate::encap::EncapKind::Gue),
            gue_port: Some(9000),
            health_check: Some(crate::config::HealthCheckConfig {
                kind: Some(crate::config::CheckType::Http),
                path: Some("/health".into()),
                ..Default::default()
            }),
            fail_open: false,
            backends: vec![BackendConfig {
                address: "198.19.1.2".parse().expect("address"),
                weight: 3,
                admin: crate::config::AdminState::Draining,
                health_check: None,
            }],
        }]
    }

    #[test]
    fn ipv6_vips_and_backends_round_trip() {
        let dir = std::env::temp_dir().join(format!("lb-state6-test-{}", std::process::id()));
        let state = StateFile::new(dir.join("state.json"));
        let mut saved = vips();
        let mut v6 = saved[0].clone();
        v6.address = "2001:db8::10".parse().expect("address");
        v6.encap = None;
        v6.gue_port = None;
        v6.source_prefix = Some(64);
        v6.policy = crate::policy::Policy::MaglevSource;
        v6.backends[0].address = "2001:db8:1::2".parse().expect("address");
        v6.backends.push(BackendConfig {
            address: "198.19.1.3".parse().expect("address"),
            weight: 1,
            admin: crate::config::AdminState::Enabled,
            health_check: None,
        });
        saved.push(v6);
        state.save(&saved).expect("save");
        let text = fs::read_to_string(state.path()).expect("read");
        assert!(text.contains("\"2001:db8::10\""), "{text}");
        assert!(text.contains("\"2001:db8:1::2\""), "{text}");
        assert_eq!(state.load().expect("load"), Some(saved));
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn saves_and_loads_atomically() {
        let dir = std::env::temp_dir().join(format!("lb-state-test-{}", std::process::id()));
        let state = StateFile::new(dir.join("sub").join("state.json"));
        assert_eq!(state.load().expect("no file is fine"), None);
        state.save(&vips()).expect("save");
        assert_eq!(state.load().expect("load"), Some(vips()));
        state.save(&[]).expect("save again");
        assert_eq!(state.load().expect("load"), Some(vec![]));
        let leftovers: Vec<_> = fs::read_dir(dir.join("sub"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
        fs::write(
            state.path(),
            "{\"version\": 1, \"vips\": [{\"address\": 1}]}",
        )
        .expect("write");
        let err = format!("{:#}", state.load().expect_err("damaged"));
        assert!(err.contains("damaged") && err.contains("vips[0]"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_staged_state_counts_only_once_committed() {
        let dir = std::env::temp_dir().join(format!("lb-stage-test-{}", std::process::id()));
        let state = StateFile::new(dir.join("state.json"));
        state.save(&[]).expect("save");
        let staged = state.stage(&vips()).expect("stage");
        assert_eq!(state.load().expect("load"), Some(vec![]), "not yet");
        drop(staged);
        assert_eq!(state.load().expect("load"), Some(vec![]), "discarded");
        let files = fs::read_dir(&dir).expect("dir").flatten().count();
        assert_eq!(files, 1, "a discarded stage leaves no temporary file");
        state
            .stage(&vips())
            .expect("stage")
            .commit()
            .expect("commit");
        assert_eq!(state.load().expect("load"), Some(vips()));
        let _ = fs::remove_dir_all(&dir);
    }
}
