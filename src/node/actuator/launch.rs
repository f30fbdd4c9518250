//! Turning a job into a running waiter: the job's environment and files, the request the
//! waiter reads, and the clone3 that starts the waiter inside the job's group.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use nix::sys::memfd::{MFdFlags, memfd_create};

use super::ActuationError;
use crate::model::credentials::Credentials;
use crate::model::inventory::GpuSet;
use crate::model::job::{JobId, JobSpec};
use crate::model::limits::JobLimits;
use crate::node::cgroup::{JobGroup, JobPaths};
use crate::node::shim::{DEFAULT_PATH, REQUEST_FD, ShimRequest};
use crate::store::statedir::StateDir;
use crate::sys::{self, ChildPlan, PendingSpawn, SpawnMode, Spawned};

/// What the daemon knows about a job it wants started.
#[derive(Clone, Copy, Debug)]
pub struct LaunchRequest<'a> {
    pub id: JobId,
    pub spec: &'a JobSpec,
    /// Who it runs as (resolved at submit: the peer's uid, or root's `--user`).
    pub user: &'a Credentials,
    /// GPUs granted to it, passed as `CUDA_VISIBLE_DEVICES`.
    pub gpus: GpuSet,
}

/// The job's environment: a clean base (PATH, HOME, USER, LOGNAME, SHELL, LOWSCHED_JOB_ID,
/// LOWSCHED_JOB_NAME), then the job's own variables, then `CUDA_VISIBLE_DEVICES` when GPUs
/// were granted (the grant wins over a user's value). Nothing of the daemon's environment.
pub fn job_env(req: &LaunchRequest<'_>) -> Vec<(String, String)> {
    let mut env = BTreeMap::new();
    let user = req.user;
    env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
    env.insert("HOME".into(), user.home.to_string_lossy().into_owned());
    env.insert("USER".into(), user.name.clone());
    env.insert("LOGNAME".into(), user.name.clone());
    env.insert("SHELL".into(), user.shell.to_string_lossy().into_owned());
    env.insert("LOWSCHED_JOB_ID".into(), req.id.to_string());
    env.insert("LOWSCHED_JOB_NAME".into(), req.spec.name.clone());
    for (k, v) in &req.spec.env {
        env.insert(k.clone(), v.clone());
    }
    if !req.gpus.is_empty() {
        env.insert("CUDA_VISIBLE_DEVICES".into(), req.gpus.to_string());
    }
    env.into_iter().collect()
}

/// The waiter's request: outputs default to `jobs/<id>/stdout|stderr` in the state dir, the
/// working directory to the user's home.
pub fn shim_request(
    req: &LaunchRequest<'_>,
    state: &StateDir,
    group: JobPaths,
    idle: bool,
    limits: &JobLimits,
) -> ShimRequest {
    let dir = state.job_dir(req.id);
    let stdout = req
        .spec
        .stdout
        .clone()
        .unwrap_or_else(|| dir.join("stdout"));
    let stderr = req
        .spec
        .stderr
        .clone()
        .unwrap_or_else(|| dir.join("stderr"));
    let uses_dir = stdout.starts_with(&dir) || stderr.starts_with(&dir);
    ShimRequest {
        job: req.id,
        argv: req.spec.argv.clone(),
        env: job_env(req),
        cwd: req
            .spec
            .cwd
            .clone()
            .unwrap_or_else(|| default_cwd(req.user)),
        user: req.user.clone(),
        stdout,
        stderr,
        output_dir: uses_dir.then_some(dir),
        record: state.exit_record(req.id),
        group,
        idle,
        limits: JobLimits {
            umask: req.spec.umask.unwrap_or(limits.umask),
            ..limits.clone()
        },
        user_rlimits: req.spec.rlimits.clone(),
    }
}

/// The user's home if it is a directory (Debian's `nobody` has `/nonexistent`), else `/`.
fn default_cwd(user: &Credentials) -> std::path::PathBuf {
    if user.home.is_dir() {
        user.home.clone()
    } else {
        "/".into()
    }
}

/// Starts the waiter: clone3 (vfork-style, so cheap for a big daemon) straight into the job's
/// unified group. On v1 cpuset hosts the waiter joins the job's cpuset group itself, before it
/// starts the job: a write to `cgroup.procs` waits for an RCU grace period (milliseconds; see
/// cgroups/DESIGN.md), which belongs on the waiter's time, not the daemon's.
/// Its stdin, stdout and stderr are /dev/null, its request is on fd 3, it leads a new session.
///
/// With `wait_for_exec` the calling thread waits (CLONE_VFORK) until the waiter has exec'd
/// and a failed exec is returned here. Without, it returns as soon as the waiter exists in its
/// group, and the returned [`PendingSpawn`] tells later whether the exec worked: on this host
/// the vfork wait is most of a launch (the child must be scheduled first; see
/// cgroups/DESIGN.md).
pub fn start_waiter(
    shim: &Path,
    null: BorrowedFd<'_>,
    group: &JobGroup,
    request: &ShimRequest,
    wait_for_exec: bool,
) -> Result<(Spawned, Option<PendingSpawn>), ActuationError> {
    let job = request.job;
    let json = serde_json::to_vec(request).map_err(|e| ActuationError::Request {
        job,
        what: e.to_string(),
    })?;
    let memfd = memfd_create("lowsched-request", MFdFlags::MFD_CLOEXEC).map_err(|e| {
        ActuationError::Request {
            job,
            what: format!("memfd_create: {e}"),
        }
    })?;
    std::fs::File::from(memfd.try_clone().map_err(|e| ActuationError::Request {
        job,
        what: format!("dup: {e}"),
    })?)
    .write_all(&json)
    .map_err(|e| ActuationError::Request {
        job,
        what: format!("write: {e}"),
    })?;
    let dirfd = group
        .unified_dir()
        .map_err(|e| ActuationError::cgroup(job, e))?;
    let null = null.as_raw_fd();
    let bad = |what: &str| ActuationError::Request {
        job,
        what: format!("{what} contains a NUL byte"),
    };
    let program =
        CString::new(shim.as_os_str().as_encoded_bytes()).map_err(|_| bad("waiter path"))?;
    let plan = ChildPlan {
        new_session: true,
        dups: vec![
            (null, 0),
            (null, 1),
            (null, 2),
            (memfd.as_raw_fd(), REQUEST_FD),
        ],
        // Nothing the daemon was started with, or opened without close-on-exec, reaches the
        // waiter (and so the job).
        close_from: Some(REQUEST_FD + 1),
        programs: vec![program],
        argv: vec![
            CString::new("lowsched-shim").map_err(|_| bad("argv"))?,
            CString::new(format!("job-{}", job.0)).map_err(|_| bad("argv"))?,
        ],
        ..ChildPlan::default()
    };
    let cgroup = dirfd.as_ref().map(|f| f.as_fd());
    let result = if wait_for_exec {
        sys::spawn(plan, SpawnMode::Vfork, cgroup).map(|s| (s, None))
    } else {
        sys::spawn_async(plan, cgroup).map(|(s, p)| (s, Some(p)))
    };
    result.map_err(|source| ActuationError::Launch {
        job,
        shim: shim.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::cgroup::Mode;

    #[test]
    fn env_is_clean_and_layered() {
        let user = Credentials::from_ids(1000, 1000);
        let mut spec = JobSpec::new(vec!["sim".into()]);
        spec.env.insert("PATH".into(), "/opt/bin".into());
        spec.env.insert("CUDA_VISIBLE_DEVICES".into(), "7".into());
        let mut gpus = GpuSet::default();
        gpus.insert(0);
        gpus.insert(2);
        let req = LaunchRequest {
            id: JobId(4),
            spec: &spec,
            user: &user,
            gpus,
        };
        let env: BTreeMap<_, _> = job_env(&req).into_iter().collect();
        assert_eq!(env["PATH"], "/opt/bin");
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "0,2");
        assert_eq!(env["LOWSCHED_JOB_ID"], "4");
        assert_eq!(env["HOME"], "/");
        assert!(!env.contains_key("TERM"));
        let req = LaunchRequest {
            gpus: GpuSet::default(),
            ..req
        };
        assert_eq!(
            job_env(&req)
                .iter()
                .find(|(k, _)| k == "CUDA_VISIBLE_DEVICES")
                .unwrap()
                .1,
            "7"
        );
    }

    #[test]
    fn outputs_default_to_the_state_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::create(tmp.path()).unwrap();
        let user = Credentials::from_ids(1000, 1000);
        let spec = JobSpec::new(vec!["true".into()]);
        let paths = JobPaths {
            mode: Mode::Unified,
            unified: None,
            task: "/x".into(),
            cpuset: "/x".into(),
        };
        let req = LaunchRequest {
            id: JobId(9),
            spec: &spec,
            user: &user,
            gpus: GpuSet::default(),
        };
        let r = shim_request(&req, &state, paths.clone(), false, &JobLimits::default());
        assert_eq!(r.stdout, tmp.path().join("jobs/9/stdout"));
        assert_eq!(r.stderr, tmp.path().join("jobs/9/stderr"));
        assert_eq!(r.output_dir, Some(tmp.path().join("jobs/9")));
        assert_eq!(r.record, tmp.path().join("exits/9"));
        assert_eq!(r.cwd, std::path::PathBuf::from("/"));
        assert_eq!(
            r.programs()[0],
            std::path::PathBuf::from("/usr/local/bin/true")
        );
        let mut spec2 = spec.clone();
        spec2.stdout = Some("out.txt".into());
        spec2.stderr = Some("out.txt".into());
        let req = LaunchRequest {
            spec: &spec2,
            ..req
        };
        let r = shim_request(&req, &state, paths, false, &JobLimits::default());
        assert_eq!(r.output_dir, None);
        assert_eq!(r.stdout, std::path::PathBuf::from("out.txt"));
    }
}
