//! Per-CPU PM QoS resume latency for the service's cores, so an idle service core is not in an
//! idle state that is slow to leave when the next request arrives.
//!
//! A core that halts when idle pays an idle-state exit before the service runs again: tens of
//! µs from a deep C-state on bare metal, and on a VM the host's wake-up of a halted vCPU,
//! which on a busy host takes milliseconds. With a resume-latency limit of 0 the cpuidle
//! governor only polls. The kernel file is `devices/system/cpu/cpuN/power/
//! pm_qos_resume_latency_us`: it reads and takes "n/a" for a limit of 0, "0" for no limit
//! and N for N µs.
//!
//! Every value lowsched replaces is saved in the state directory before the first write and
//! put back when the core returns to batch or the daemon stops (also on drop), so a daemon
//! that died with limits in place restores the right values after its restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::cpuset::CpuSet;

/// The per-CPU directories, under the sysfs root.
pub const CPU_DIR: &str = "devices/system/cpu";
/// The limit's file, under a CPU's directory.
pub const RESUME_LATENCY: &str = "power/pm_qos_resume_latency_us";
/// Where the replaced values are kept, under the state directory.
pub const SAVED: &str = "pm_qos_saved.json";
/// The kernel's spelling of a limit of 0 µs.
const ZERO_LIMIT: &str = "n/a";

#[derive(Debug, thiserror::Error)]
pub enum PmQosError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {} to {path}: {source}", crate::model::text::quoted(.data))]
    Write {
        path: PathBuf,
        data: String,
        source: std::io::Error,
    },
    #[error("{path} is not a saved-limits file: {why}")]
    Saved { path: PathBuf, why: String },
}

/// The resume-latency limits lowsched holds on cores.
#[derive(Debug)]
pub struct ResumeLatency {
    sys_root: PathBuf,
    saved_path: PathBuf,
    /// What a service core gets.
    limit: String,
    /// The value each held core had before, by CPU.
    saved: BTreeMap<usize, String>,
}

impl ResumeLatency {
    /// Limits of `limit_us` (0: poll only) for the cores given to [`apply`](Self::apply). Takes
    /// over the values a previous daemon saved and did not restore.
    pub fn open(
        sys_root: impl Into<PathBuf>,
        state_dir: &Path,
        limit_us: u32,
    ) -> Result<Self, PmQosError> {
        let saved_path = state_dir.join(SAVED);
        let saved = match std::fs::read_to_string(&saved_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| PmQosError::Saved {
                path: saved_path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(PmQosError::Read {
                    path: saved_path,
                    source,
                });
            }
        };
        Ok(Self {
            sys_root: sys_root.into(),
            saved_path,
            limit: if limit_us == 0 {
                ZERO_LIMIT.into()
            } else {
                limit_us.to_string()
            },
            saved,
        })
    }

    fn file(&self, cpu: usize) -> PathBuf {
        self.sys_root
            .join(CPU_DIR)
            .join(format!("cpu{cpu}"))
            .join(RESUME_LATENCY)
    }

    /// The cores holding a limit now.
    pub fn held(&self) -> CpuSet {
        self.saved.keys().copied().collect()
    }

    /// Holds the limit on exactly `cores`: new cores get it (their value saved first), cores
    /// no longer in the set get their value back.
    pub fn apply(&mut self, cores: &CpuSet) -> Result<(), PmQosError> {
        let released: Vec<usize> = self
            .saved
            .keys()
            .copied()
            .filter(|c| !cores.contains(*c))
            .collect();
        let taken: Vec<usize> = cores
            .iter()
            .filter(|c| !self.saved.contains_key(c))
            .collect();
        if released.is_empty() && taken.is_empty() {
            return Ok(());
        }
        // Given back before they are forgotten: a crash in between gives them back again.
        for &cpu in &released {
            write(&self.file(cpu), &self.saved[&cpu])?;
        }
        for cpu in &released {
            self.saved.remove(cpu);
        }
        for &cpu in &taken {
            let path = self.file(cpu);
            let old = std::fs::read_to_string(&path)
                .map_err(|source| PmQosError::Read { path, source })?
                .trim()
                .to_string();
            // A core already at our limit was most likely left so by a lowsched that died
            // with its state directory, or is held by a second daemon (tests run several):
            // putting the limit back at exit would pin the core at it for good, so "no limit".
            let old = if old == self.limit {
                "0".to_string()
            } else {
                old
            };
            self.saved.insert(cpu, old);
        }
        // Saved once, before any limit is written.
        self.save()?;
        for &cpu in &taken {
            write(&self.file(cpu), &self.limit)?;
        }
        Ok(())
    }

    /// Gives every held core its value back and forgets the saved file.
    pub fn restore(&mut self) -> Result<(), PmQosError> {
        self.apply(&CpuSet::new())?;
        match std::fs::remove_file(&self.saved_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PmQosError::Write {
                path: self.saved_path.clone(),
                data: "(remove)".into(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn save(&self) -> Result<(), PmQosError> {
        let data = serde_json::to_string(&self.saved).unwrap_or_default();
        let tmp = self.saved_path.with_extension("tmp");
        write(&tmp, &data)?;
        std::fs::rename(&tmp, &self.saved_path).map_err(|source| PmQosError::Write {
            path: self.saved_path.clone(),
            data,
            source,
        })
    }
}

impl Drop for ResumeLatency {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            crate::log::error(&format!("cannot restore the cores' resume latency: {e}"));
        }
    }
}

fn write(path: &Path, data: &str) -> Result<(), PmQosError> {
    std::fs::write(path, data).map_err(|source| PmQosError::Write {
        path: path.to_path_buf(),
        data: data.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sys(cpus: usize) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for c in 0..cpus {
            let dir = d.path().join(CPU_DIR).join(format!("cpu{c}/power"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("pm_qos_resume_latency_us"), "0\n").unwrap();
        }
        d
    }

    fn value(sys: &Path, cpu: usize) -> String {
        std::fs::read_to_string(
            sys.join(CPU_DIR)
                .join(format!("cpu{cpu}"))
                .join(RESUME_LATENCY),
        )
        .unwrap()
        .trim()
        .to_string()
    }

    fn set(cpus: &str) -> CpuSet {
        cpus.parse().unwrap()
    }

    #[test]
    fn service_cores_poll_and_returned_cores_get_their_value_back() {
        let sys = fake_sys(3);
        std::fs::write(
            sys.path().join(CPU_DIR).join("cpu2").join(RESUME_LATENCY),
            "20",
        )
        .unwrap();
        let state = tempfile::tempdir().unwrap();
        let mut q = ResumeLatency::open(sys.path(), state.path(), 0).unwrap();
        q.apply(&set("0")).unwrap();
        assert_eq!(value(sys.path(), 0), "n/a");
        assert_eq!(value(sys.path(), 1), "0");
        q.apply(&set("1-2")).unwrap();
        assert_eq!(value(sys.path(), 0), "0", "returned to batch");
        assert_eq!(value(sys.path(), 1), "n/a");
        assert_eq!(value(sys.path(), 2), "n/a");
        assert_eq!(q.held(), set("1-2"));
        q.restore().unwrap();
        assert_eq!(value(sys.path(), 1), "0");
        assert_eq!(
            value(sys.path(), 2),
            "20",
            "the operator's own limit is kept"
        );
        assert!(!state.path().join(SAVED).exists());
    }

    #[test]
    fn a_core_found_at_the_limit_gets_no_limit_back() {
        let sys = fake_sys(1);
        std::fs::write(
            sys.path().join(CPU_DIR).join("cpu0").join(RESUME_LATENCY),
            "n/a\n",
        )
        .unwrap();
        let state = tempfile::tempdir().unwrap();
        let mut q = ResumeLatency::open(sys.path(), state.path(), 0).unwrap();
        q.apply(&set("0")).unwrap();
        q.restore().unwrap();
        assert_eq!(value(sys.path(), 0), "0");
    }

    #[test]
    fn a_nonzero_limit_is_written_as_microseconds() {
        let sys = fake_sys(1);
        let state = tempfile::tempdir().unwrap();
        let mut q = ResumeLatency::open(sys.path(), state.path(), 5).unwrap();
        q.apply(&set("0")).unwrap();
        assert_eq!(value(sys.path(), 0), "5");
    }

    #[test]
    fn values_saved_by_a_daemon_that_died_are_restored_by_the_next() {
        let sys = fake_sys(2);
        std::fs::write(
            sys.path().join(CPU_DIR).join("cpu1").join(RESUME_LATENCY),
            "50",
        )
        .unwrap();
        let state = tempfile::tempdir().unwrap();
        let mut q = ResumeLatency::open(sys.path(), state.path(), 0).unwrap();
        q.apply(&set("0-1")).unwrap();
        std::mem::forget(q); // died without restoring
        assert_eq!(value(sys.path(), 1), "n/a");
        let mut next = ResumeLatency::open(sys.path(), state.path(), 0).unwrap();
        assert_eq!(next.held(), set("0-1"));
        next.apply(&set("0")).unwrap();
        assert_eq!(
            value(sys.path(), 1),
            "50",
            "the value from before the first daemon"
        );
        drop(next);
        assert_eq!(value(sys.path(), 0), "0", "restored on drop");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it_and_restore_undoes_the_rest() {
        let sys = fake_sys(1);
        let state = tempfile::tempdir().unwrap();
        let mut q = ResumeLatency::open(sys.path(), state.path(), 0).unwrap();
        let e = q.apply(&set("0-1")).unwrap_err().to_string();
        assert!(e.contains("cpu1/power/pm_qos_resume_latency_us"), "{e}");
        q.restore().unwrap();
        assert_eq!(value(sys.path(), 0), "0");
    }

    #[test]
    fn a_corrupt_saved_file_is_refused_by_name() {
        let sys = fake_sys(1);
        let state = tempfile::tempdir().unwrap();
        std::fs::write(state.path().join(SAVED), "{not json").unwrap();
        let e = ResumeLatency::open(sys.path(), state.path(), 0).unwrap_err();
        assert!(e.to_string().contains(SAVED), "{e}");
    }
}
