//! Slurm's jobs as batch: lowsched as the node agent under Slurm. It finds the cgroups of the
//! Slurm jobs on its node, narrows them within Slurm's allocation when the service needs cores,
//! freezes those left without a core (and suspends them in Slurm), and drains the node in Slurm
//! while batch has no core. Slurm still places and accounts for every job.
//!
//! `discover` finds the groups, `group` acts on them, `scontrol` runs Slurm's tools with a
//! time limit, `worker` runs those calls off the control loop, `drain` keeps the node's drain
//! state, `agent` ties them together for the daemon.

pub mod agent;
pub mod discover;
pub mod drain;
pub mod group;
pub mod scontrol;
pub mod worker;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::node::service::Enabled;

pub use agent::{SlurmAgent, SlurmChange, SlurmJob};

/// The `[slurm]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlurmConfig {
    /// `auto`: when a `slurmd` process runs on this host; `yes`: always; `no`: never.
    pub enabled: Enabled,
    /// This node's name in Slurm; default: the host's short name (`hostname -s`).
    pub node_name: Option<String>,
    /// Where `scontrol`, `squeue` and `sinfo` are; default: found on PATH.
    pub bin_dir: Option<PathBuf>,
    /// A Slurm command taking longer is killed and counted as failed, ms.
    pub command_timeout_ms: u64,
    /// How often Slurm's cgroups are looked for new and ended jobs, ms.
    pub scan_ms: u64,
    /// How often `squeue` and `sinfo` are asked about the node's jobs and state, ms.
    pub poll_ms: u64,
    /// Also suspend a frozen job in Slurm (`scontrol suspend`), so `squeue` shows SUSPENDED and
    /// the time is not charged to its limit.
    pub suspend: bool,
    /// Drain the node in Slurm while batch has had no core for `drain_hold_s`; 0 disables.
    pub drain_hold_s: f64,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        Self {
            enabled: Enabled::No,
            node_name: None,
            bin_dir: None,
            command_timeout_ms: 10_000,
            scan_ms: 500,
            poll_ms: 2_000,
            suspend: true,
            drain_hold_s: 30.0,
        }
    }
}

impl SlurmConfig {
    /// What is wrong with the section, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.command_timeout_ms == 0 || self.scan_ms == 0 || self.poll_ms == 0 {
            return Err("slurm.command_timeout_ms, scan_ms and poll_ms must be positive".into());
        }
        if !(self.drain_hold_s >= 0.0 && self.drain_hold_s.is_finite()) {
            return Err(format!(
                "slurm.drain_hold_s is {}: use 0 (never drain) or a number of seconds",
                self.drain_hold_s
            ));
        }
        Ok(())
    }

    pub fn drain_hold(&self) -> Option<Duration> {
        (self.drain_hold_s > 0.0).then(|| Duration::from_secs_f64(self.drain_hold_s))
    }

    /// The node's name: `node_name`, else the host name up to its first dot, from
    /// `<proc_root>/sys/kernel/hostname`.
    pub fn node(&self, proc_root: &Path) -> std::io::Result<String> {
        if let Some(n) = &self.node_name {
            return Ok(n.clone());
        }
        let text = std::fs::read_to_string(proc_root.join(HOSTNAME))?;
        Ok(text
            .trim()
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string())
    }

    /// Whether to run the agent: `yes`, or `auto` with slurmd running.
    pub fn wanted(&self, proc_root: &Path) -> bool {
        match self.enabled {
            Enabled::Yes => true,
            Enabled::No => false,
            Enabled::Auto => slurmd_running(proc_root),
        }
    }
}

/// `/proc/sys/kernel/hostname`, relative to the proc root.
pub const HOSTNAME: &str = "sys/kernel/hostname";
const SLURMD: &str = "slurmd";

/// Whether a process named `slurmd` runs (`<proc_root>/<pid>/comm`).
pub fn slurmd_running(proc_root: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            && std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == SLURMD)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_means_slurmd_runs_and_the_node_name_defaults_to_the_short_host_name() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        std::fs::create_dir_all(p.join("sys/kernel")).unwrap();
        std::fs::write(p.join(HOSTNAME), "node17.cluster.example\n").unwrap();
        std::fs::create_dir_all(p.join("42")).unwrap();
        std::fs::write(p.join("42/comm"), "memcached\n").unwrap();
        let cfg = SlurmConfig {
            enabled: Enabled::Auto,
            ..SlurmConfig::default()
        };
        assert!(!cfg.wanted(p));
        std::fs::create_dir_all(p.join("43")).unwrap();
        std::fs::write(p.join("43/comm"), "slurmd\n").unwrap();
        assert!(cfg.wanted(p));
        assert_eq!(cfg.node(p).unwrap(), "node17");
        let named = SlurmConfig {
            node_name: Some("n1".into()),
            ..cfg
        };
        assert_eq!(named.node(p).unwrap(), "n1");
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let bad = SlurmConfig {
            drain_hold_s: -1.0,
            ..SlurmConfig::default()
        };
        assert!(bad.check().unwrap_err().contains("drain_hold_s"));
        let bad = SlurmConfig {
            scan_ms: 0,
            ..SlurmConfig::default()
        };
        assert!(bad.check().unwrap_err().contains("scan_ms"));
        assert_eq!(
            SlurmConfig::default().drain_hold(),
            Some(Duration::from_secs(30))
        );
    }
}
