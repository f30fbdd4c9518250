//! Acting on one Slurm job's groups: rewriting its cpusets in the hierarchy's order, freezing
//! and thawing the groups of its processes, and reading back what it has.

use std::path::Path;
use std::time::Duration;

use crate::decide::slurm::{Level, cpuset_writes};
use crate::model::cpuset::CpuSet;
use crate::node::cgroup::{CPUSET_CPUS, CgroupError, EVENTS, FREEZE, FREEZER_STATE, Knob};
use crate::node::cgroup::{keyed, read_path, write_path};

use super::discover::SlurmJobGroups;

/// The cores the job's group has now (`job_<N>/cpuset.cpus`).
pub fn cores(groups: &SlurmJobGroups) -> Result<CpuSet, CgroupError> {
    let path = groups.cpuset_job.join(CPUSET_CPUS);
    let text = read_path(&path)?;
    text.trim().parse().map_err(|e| CgroupError::Parse {
        path,
        text: text.clone(),
        what: format!("{e}"),
    })
}

/// Takes the job's tree from `current` to `target` (see [`cpuset_writes`]): steps that appear
/// or vanish meanwhile are Slurm's business; a job group that vanished is reported as missing
/// (`CgroupError::is_missing`).
pub fn resize(groups: &SlurmJobGroups, current: CpuSet, target: CpuSet) -> Result<(), CgroupError> {
    if target.is_empty() {
        return Err(CgroupError::NoCores {
            path: groups.cpuset_job.clone(),
        });
    }
    for (level, cpus) in cpuset_writes(current, target) {
        let text = cpus.to_string();
        match level {
            Level::Job => write_path(&groups.cpuset_job.join(CPUSET_CPUS), &text)?,
            Level::Steps => {
                for step in &groups.cpuset_steps {
                    match write_path(&step.join(CPUSET_CPUS), &text) {
                        Err(e) if e.is_missing() => {}
                        other => other?,
                    }
                }
            }
        }
    }
    Ok(())
}

/// Freezes (or thaws) every group of the job's processes and waits until the kernel says so.
pub fn set_frozen(
    groups: &SlurmJobGroups,
    frozen: bool,
    timeout: Duration,
) -> Result<(), CgroupError> {
    for dir in &groups.freeze {
        if groups.v2 {
            write_path(&dir.join(FREEZE), if frozen { "1" } else { "0" })?;
        } else {
            write_path(
                &dir.join(FREEZER_STATE),
                if frozen { "FROZEN" } else { "THAWED" },
            )?;
        }
    }
    for dir in &groups.freeze {
        if groups.v2 {
            let knob = Knob::open_read(dir.join(EVENTS))?;
            knob.wait_key("frozen", if frozen { "1" } else { "0" }, timeout)?;
        } else {
            let knob = Knob::open_read(dir.join(FREEZER_STATE))?;
            knob.wait_value(if frozen { "FROZEN" } else { "THAWED" }, timeout)?;
        }
    }
    Ok(())
}

/// Whether any group of the job's processes is frozen now (by lowsched or by Slurm).
pub fn is_frozen(groups: &SlurmJobGroups) -> Result<bool, CgroupError> {
    for dir in &groups.freeze {
        let frozen = if groups.v2 {
            let path = dir.join(EVENTS);
            keyed(&read_path(&path)?, "frozen") == Some("1")
        } else {
            read_path(&dir.join(FREEZER_STATE))?.trim() == "FROZEN"
        };
        if frozen {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the job's group is still there.
pub fn exists(groups: &SlurmJobGroups) -> bool {
    Path::new(&groups.cpuset_job).is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fake_v1(root: &Path, cores: &str) -> SlurmJobGroups {
        let job = root.join("cpuset/slurm_n/uid_0/job_1");
        let step = job.join("step_batch");
        let fr = root.join("freezer/slurm_n/uid_0/job_1/step_batch");
        for d in [&step, &fr] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(job.join(CPUSET_CPUS), cores).unwrap();
        std::fs::write(step.join(CPUSET_CPUS), cores).unwrap();
        std::fs::write(fr.join(FREEZER_STATE), "THAWED\n").unwrap();
        SlurmJobGroups {
            job: 1,
            uid: Some(0),
            cpuset_job: job,
            cpuset_steps: vec![step],
            freeze: vec![fr],
            v2: false,
        }
    }

    #[test]
    fn resize_sets_the_job_and_its_steps_and_reads_back() {
        let t = tempfile::tempdir().unwrap();
        let g = fake_v1(t.path(), "0-3");
        resize(&g, "0-3".parse().unwrap(), "2-3".parse().unwrap()).unwrap();
        assert_eq!(cores(&g).unwrap(), "2-3".parse().unwrap());
        let step = std::fs::read_to_string(g.cpuset_steps[0].join(CPUSET_CPUS)).unwrap();
        assert_eq!(step.trim(), "2-3");
    }

    #[test]
    fn an_empty_target_is_refused_and_a_vanished_job_is_missing() {
        let t = tempfile::tempdir().unwrap();
        let g = fake_v1(t.path(), "0");
        assert!(matches!(
            resize(&g, "0".parse().unwrap(), CpuSet::new()),
            Err(CgroupError::NoCores { .. })
        ));
        let gone = SlurmJobGroups {
            cpuset_job: PathBuf::from("/nonexistent-lowsched-test/job_1"),
            cpuset_steps: vec![],
            ..g
        };
        let e = resize(&gone, "1".parse().unwrap(), "0-1".parse().unwrap()).unwrap_err();
        assert!(e.is_missing(), "{e}");
        assert!(e.to_string().contains("job_1/cpuset.cpus"), "{e}");
        assert!(!exists(&gone));
    }

    #[test]
    fn freeze_writes_the_v1_state_and_reads_it_back() {
        let t = tempfile::tempdir().unwrap();
        let g = fake_v1(t.path(), "0");
        assert!(!is_frozen(&g).unwrap());
        set_frozen(&g, true, Duration::from_secs(1)).unwrap();
        assert!(is_frozen(&g).unwrap());
        set_frozen(&g, false, Duration::from_secs(1)).unwrap();
        assert!(!is_frozen(&g).unwrap());
    }
}
