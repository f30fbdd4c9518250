//! What the daemon tells a job's waiter: the job's command, user, directory, files and groups.
//! Passed as JSON on the waiter's fd 3 (a memfd, so its size is not limited by a pipe).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::credentials::Credentials;
use crate::model::job::JobId;
use crate::model::limits::{JobLimits, Rlimit};
use crate::node::cgroup::JobPaths;

/// The descriptor the waiter reads its request from.
pub const REQUEST_FD: i32 = 3;

/// Default PATH for jobs whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Everything the waiter needs to start and watch one job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRequest {
    pub job: JobId,
    pub argv: Vec<String>,
    /// The job's complete environment (the waiter adds nothing).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub user: Credentials,
    /// Opened by the job's user after dropping privileges; relative paths are relative to
    /// `cwd`. When both are the same path the file is opened once.
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// The default output directory (`jobs/<id>/`), created by the waiter and given to the
    /// user, when stdout or stderr goes there.
    pub output_dir: Option<PathBuf>,
    /// The exit record the waiter writes.
    pub record: PathBuf,
    pub group: JobPaths,
    /// Run the job at idle CPU priority (`SCHED_IDLE`, inherited by all its processes).
    #[serde(default)]
    pub idle: bool,
    /// The daemon's limits for every job, its umask already the job's own when it named one.
    #[serde(default)]
    pub limits: JobLimits,
    /// Limits the job asked for, set after it became its user.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_rlimits: BTreeMap<String, Rlimit>,
}

impl ShimRequest {
    /// Candidate program paths for `argv[0]`, as execvp would try them: the name itself if it
    /// has a slash, else each PATH directory (from the job's environment) in order.
    pub fn programs(&self) -> Vec<PathBuf> {
        let Some(name) = self.argv.first() else {
            return Vec::new();
        };
        if name.contains('/') {
            return vec![PathBuf::from(name)];
        }
        let path = self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .map(|dir| if dir.is_empty() { "." } else { dir })
            .map(|dir| PathBuf::from(dir).join(name))
            .collect()
    }
}
