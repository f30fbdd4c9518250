//! Finding the cgroups of the Slurm jobs on this node, in the cgroup/v1 plugin's layout
//! (`<cpuset|freezer>/slurm[_<node>]/uid_<U>/job_<N>/step_<S>`) and the cgroup/v2 plugin's
//! (`<unified>/system.slice/[<node>_]slurmstepd.scope/job_<N>/step_<S>/{slurm,user}`).
//!
//! Where each plugin keeps slurmstepd matters for freezing: v1 keeps it in the freezer's
//! `job_<N>` group and the job's processes in `step_<S>`; v2 keeps it in `step_<S>/slurm` and
//! the processes in `step_<S>/user`. lowsched freezes only the groups of the job's own
//! processes, so slurmstepd keeps answering Slurm while the job is frozen.

use std::io;
use std::path::{Path, PathBuf};

use crate::node::cgroup::{Layout, PROCS};

/// Names in Slurm's trees.
pub const V1_PREFIX: &str = "slurm";
pub const V2_SLICE: &str = "system.slice";
pub const V2_SCOPE: &str = "slurmstepd.scope";
pub const UID_PREFIX: &str = "uid_";
pub const JOB_PREFIX: &str = "job_";
pub const STEP_PREFIX: &str = "step_";
/// The v2 step's leaf that holds the job's processes (slurmstepd sits in `slurm`).
pub const V2_USER: &str = "user";

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: io::Error },
}

/// Where Slurm's cgroup plugins put jobs on this host: the mount points to search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlurmRoots {
    /// cgroup/v1 plugin: the v1 cpuset and freezer mounts.
    V1 { cpuset: PathBuf, freezer: PathBuf },
    /// cgroup/v2 plugin: the unified mount.
    V2 { unified: PathBuf },
}

impl SlurmRoots {
    /// The roots Slurm's autodetected plugin uses on a host of this layout: v1 wherever a v1
    /// cpuset and freezer exist (Slurm picks cgroup/v1 on hybrid hosts), else v2. `None` on a
    /// hybrid host without a v1 freezer.
    pub fn for_layout(layout: &Layout) -> Option<Self> {
        match layout {
            Layout::Unified { mount } => Some(Self::V2 {
                unified: mount.point.clone(),
            }),
            Layout::Hybrid {
                cpuset,
                freezer: Some(freezer),
                ..
            }
            | Layout::Legacy { cpuset, freezer } => Some(Self::V1 {
                cpuset: cpuset.point.clone(),
                freezer: freezer.point.clone(),
            }),
            Layout::Hybrid { freezer: None, .. } => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::V1 { .. } => "cgroup/v1",
            Self::V2 { .. } => "cgroup/v2",
        }
    }
}

/// The groups of one Slurm job on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlurmJobGroups {
    /// Slurm's job id.
    pub job: u64,
    /// The job's owner, from the v1 path (`uid_<U>`); v2 paths do not say.
    pub uid: Option<u32>,
    /// `job_<N>` in the hierarchy that holds `cpuset.cpus`.
    pub cpuset_job: PathBuf,
    /// Its `step_<S>` children there, sorted.
    pub cpuset_steps: Vec<PathBuf>,
    /// The groups to freeze: v1 `freezer/.../step_<S>`, v2 `step_<S>/user`.
    pub freeze: Vec<PathBuf>,
    /// v2 (`cgroup.freeze`) or v1 (`freezer.state`).
    pub v2: bool,
}

/// Finds every job of node `node` under `roots`. A group that vanishes while it is read is
/// skipped (its job just ended); a missing Slurm tree means no jobs.
pub fn discover(roots: &SlurmRoots, node: &str) -> Result<Vec<SlurmJobGroups>, DiscoverError> {
    let mut jobs = match roots {
        SlurmRoots::V1 { cpuset, freezer } => discover_v1(cpuset, freezer, node)?,
        SlurmRoots::V2 { unified } => discover_v2(unified, node)?,
    };
    jobs.sort_by_key(|j| j.job);
    Ok(jobs)
}

fn discover_v1(
    cpuset: &Path,
    freezer: &Path,
    node: &str,
) -> Result<Vec<SlurmJobGroups>, DiscoverError> {
    let mut jobs = Vec::new();
    for prefix in [format!("{V1_PREFIX}_{node}"), V1_PREFIX.to_string()] {
        let top = cpuset.join(&prefix);
        for (uid, uid_dir) in numbered(&top, UID_PREFIX)? {
            for (job, job_dir) in numbered(&uid_dir, JOB_PREFIX)? {
                let steps = steps(&job_dir)?;
                let rel = Path::new(&prefix)
                    .join(format!("{UID_PREFIX}{uid}"))
                    .join(format!("{JOB_PREFIX}{job}"));
                let freeze = steps
                    .iter()
                    .filter_map(|s| s.file_name())
                    .map(|name| freezer.join(&rel).join(name))
                    .filter(|p| p.is_dir())
                    .collect();
                jobs.push(SlurmJobGroups {
                    job,
                    uid: u32::try_from(uid).ok(),
                    cpuset_job: job_dir,
                    cpuset_steps: steps,
                    freeze,
                    v2: false,
                });
            }
        }
        if !jobs.is_empty() {
            break;
        }
    }
    Ok(jobs)
}

fn discover_v2(unified: &Path, node: &str) -> Result<Vec<SlurmJobGroups>, DiscoverError> {
    let slice = unified.join(V2_SLICE);
    let mut jobs = Vec::new();
    for scope in [
        slice.join(format!("{node}_{V2_SCOPE}")),
        slice.join(V2_SCOPE),
    ] {
        for (job, job_dir) in numbered(&scope, JOB_PREFIX)? {
            let steps = steps(&job_dir)?;
            let freeze = steps
                .iter()
                .map(|s| {
                    let user = s.join(V2_USER);
                    if user.is_dir() { user } else { s.clone() }
                })
                .collect();
            jobs.push(SlurmJobGroups {
                job,
                uid: None,
                cpuset_job: job_dir,
                cpuset_steps: steps,
                freeze,
                v2: true,
            });
        }
        if !jobs.is_empty() {
            break;
        }
    }
    Ok(jobs)
}

/// The `step_<S>` subdirectories of a job group, sorted.
fn steps(job_dir: &Path) -> Result<Vec<PathBuf>, DiscoverError> {
    let mut steps: Vec<PathBuf> = subdirs(job_dir)?
        .into_iter()
        .filter(|(name, _)| name.starts_with(STEP_PREFIX))
        .map(|(_, path)| path)
        .collect();
    steps.sort();
    Ok(steps)
}

/// The subdirectories `<prefix><number>` of `dir`, with their numbers.
fn numbered(dir: &Path, prefix: &str) -> Result<Vec<(u64, PathBuf)>, DiscoverError> {
    Ok(subdirs(dir)?
        .into_iter()
        .filter_map(|(name, path)| {
            let n = name.strip_prefix(prefix)?.parse().ok()?;
            Some((n, path))
        })
        .collect())
}

/// The subdirectories of `dir` by name; none if `dir` is gone.
fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, DiscoverError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DiscoverError::List {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    Ok(entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect())
}

/// Whether a group still holds processes (its `cgroup.procs` is non-empty); false if gone.
pub fn populated(group: &Path) -> bool {
    std::fs::read_to_string(group.join(PROCS)).is_ok_and(|t| !t.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(root: &Path, rel: &str) -> PathBuf {
        let p = root.join(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn v1_jobs_are_found_under_the_node_prefix_with_uid_steps_and_freezer_groups() {
        let t = tempfile::tempdir().unwrap();
        let (cs, fr) = (t.path().join("cpuset"), t.path().join("freezer"));
        mk(&cs, "slurm_n1/uid_1000/job_42/step_batch");
        mk(&cs, "slurm_n1/uid_1000/job_42/step_extern");
        mk(&cs, "slurm_n1/uid_0/job_7/step_batch");
        mk(&cs, "slurm_n1/uid_0/notajob");
        mk(&cs, "slurm_n2/uid_0/job_8/step_batch");
        mk(&fr, "slurm_n1/uid_1000/job_42/step_batch");
        mk(&fr, "slurm_n1/uid_1000/job_42/step_extern");
        mk(&fr, "slurm_n1/uid_0/job_7/step_batch");
        let roots = SlurmRoots::V1 {
            cpuset: cs.clone(),
            freezer: fr.clone(),
        };
        let jobs = discover(&roots, "n1").unwrap();
        assert_eq!(jobs.iter().map(|j| j.job).collect::<Vec<_>>(), vec![7, 42]);
        let j = &jobs[1];
        assert_eq!(j.uid, Some(1000));
        assert_eq!(j.cpuset_job, cs.join("slurm_n1/uid_1000/job_42"));
        assert_eq!(
            j.cpuset_steps,
            vec![
                cs.join("slurm_n1/uid_1000/job_42/step_batch"),
                cs.join("slurm_n1/uid_1000/job_42/step_extern")
            ]
        );
        assert_eq!(
            j.freeze,
            vec![
                fr.join("slurm_n1/uid_1000/job_42/step_batch"),
                fr.join("slurm_n1/uid_1000/job_42/step_extern")
            ]
        );
        assert!(!j.v2);
    }

    #[test]
    fn v1_without_a_node_prefix_is_found_too_and_no_tree_means_no_jobs() {
        let t = tempfile::tempdir().unwrap();
        let (cs, fr) = (t.path().join("cpuset"), t.path().join("freezer"));
        let roots = SlurmRoots::V1 {
            cpuset: cs.clone(),
            freezer: fr.clone(),
        };
        assert!(discover(&roots, "n1").unwrap().is_empty());
        mk(&cs, "slurm/uid_5/job_3/step_0");
        mk(&fr, "slurm/uid_5/job_3/step_0");
        let jobs = discover(&roots, "n1").unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].freeze, vec![fr.join("slurm/uid_5/job_3/step_0")]);
    }

    #[test]
    fn v2_jobs_freeze_the_user_leaf_so_slurmstepd_stays_awake() {
        let t = tempfile::tempdir().unwrap();
        let u = t.path();
        mk(
            u,
            "system.slice/n1_slurmstepd.scope/job_9/step_batch/user/task_special",
        );
        mk(u, "system.slice/n1_slurmstepd.scope/job_9/step_batch/slurm");
        mk(u, "system.slice/n1_slurmstepd.scope/job_9/step_extern");
        mk(u, "system.slice/n1_slurmstepd.scope/system");
        let jobs = discover(
            &SlurmRoots::V2 {
                unified: u.to_path_buf(),
            },
            "n1",
        )
        .unwrap();
        assert_eq!(jobs.len(), 1);
        let scope = u.join("system.slice/n1_slurmstepd.scope/job_9");
        assert_eq!(jobs[0].uid, None);
        assert_eq!(
            jobs[0].freeze,
            vec![scope.join("step_batch/user"), scope.join("step_extern")]
        );
        assert!(jobs[0].v2);
    }

    #[test]
    fn v2_scope_without_the_node_name_is_found() {
        let t = tempfile::tempdir().unwrap();
        mk(t.path(), "system.slice/slurmstepd.scope/job_1/step_0/user");
        let roots = SlurmRoots::V2 {
            unified: t.path().to_path_buf(),
        };
        assert_eq!(discover(&roots, "x").unwrap()[0].job, 1);
    }
}
