//! Slurm's command-line tools (`scontrol`, `squeue`, `sinfo`) run with a time limit, and the
//! parsers of what they print.
//!
//! Each call is a child process killed when it outlives its timeout (slurmctld down makes
//! `scontrol` wait up to its MessageTimeout, 10 s by default). Calls block, so only the Slurm
//! worker thread makes them (see `worker.rs`), never the control loop.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::model::cpuset::CpuSet;

pub const SCONTROL: &str = "scontrol";
pub const SQUEUE: &str = "squeue";
pub const SINFO: &str = "sinfo";
/// How often a running call is checked for its end.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("{program} {args}: no answer within {} (killed)", crate::model::text::span(.timeout))]
    Timeout {
        program: PathBuf,
        args: String,
        timeout: Duration,
    },
    #[error("{program} {args}: exit {code}: {stderr}")]
    Failed {
        program: PathBuf,
        args: String,
        code: i32,
        stderr: String,
    },
    #[error("{program} {args}: cannot wait for it: {source}")]
    Wait {
        program: PathBuf,
        args: String,
        source: io::Error,
    },
}

/// Where the tools are and how long a call may take.
#[derive(Clone, Debug)]
pub struct Tools {
    /// Directory of the tools; `None`: found on PATH.
    pub bin_dir: Option<PathBuf>,
    pub timeout: Duration,
}

impl Tools {
    pub fn program(&self, tool: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(tool),
            None => PathBuf::from(tool),
        }
    }

    /// Runs `tool args…`; its stdout on exit 0, else the error with its stderr.
    pub fn run(&self, tool: &str, args: &[&str]) -> Result<String, ToolError> {
        let program = self.program(tool);
        let child = Command::new(&program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ToolError::Spawn {
                program: program.clone(),
                source,
            })?;
        finish(child, &program, &args.join(" "), self.timeout)
    }
}

/// Waits for `child` until `timeout`, collecting its output (readers on their own threads, so
/// a full pipe cannot stall it); kills it on timeout.
fn finish(
    mut child: Child,
    program: &Path,
    args: &str,
    timeout: Duration,
) -> Result<String, ToolError> {
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolError::Timeout {
                    program: program.to_path_buf(),
                    args: args.to_string(),
                    timeout,
                });
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(source) => {
                return Err(ToolError::Wait {
                    program: program.to_path_buf(),
                    args: args.to_string(),
                    source,
                });
            }
        }
    };
    let collect = |h: Option<std::thread::JoinHandle<String>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let (stdout, stderr) = (collect(out), collect(err));
    if status.success() {
        Ok(stdout)
    } else {
        Err(ToolError::Failed {
            program: program.to_path_buf(),
            args: args.to_string(),
            code: status.code().unwrap_or(-1),
            stderr: stderr.trim().to_string(),
        })
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// The `squeue -o` format [`parse_squeue`] reads: id, uid, state, priority.
pub const SQUEUE_FORMAT: &str = "%i|%U|%T|%Q";

/// One job as `squeue` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: u64,
    pub uid: Option<u32>,
    /// `RUNNING`, `SUSPENDED`, `PENDING`, `COMPLETING`, ...
    pub state: String,
    pub priority: Option<u64>,
}

impl QueuedJob {
    pub fn suspended(&self) -> bool {
        self.state == "SUSPENDED"
    }
}

/// Parses `squeue -h -o '%i|%U|%T|%Q'`; lines that do not parse are skipped (array and het
/// job ids like `12_3` or `12+1` are not jobs lowsched acts on by id).
pub fn parse_squeue(text: &str) -> Vec<QueuedJob> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim().split('|');
            let id = f.next()?.parse().ok()?;
            let uid = f.next()?.parse().ok();
            let state = f.next()?.to_string();
            let priority = f.next().and_then(|p| p.parse().ok());
            Some(QueuedJob {
                id,
                uid,
                state,
                priority,
            })
        })
        .collect()
}

/// The CPU ids Slurm allocated to a job on `node`, from `scontrol show job -d N`
/// (` Nodes=vm CPU_IDs=0-1 Mem=0 GRES=`). Slurm's ids are its abstract ones, equal to the
/// kernel's on hosts without a remapped topology; callers check them against the job's group.
pub fn parse_cpu_ids(text: &str, node: &str) -> Option<CpuSet> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let nodes = fields.next()?.strip_prefix("Nodes=")?;
        if nodes != node {
            return None;
        }
        fields
            .find_map(|f| f.strip_prefix("CPU_IDs="))
            .and_then(|ids| ids.parse().ok())
    })
}

/// How a job ended, from `scontrol show job -o N`: its `JobState` (`COMPLETED`, `FAILED`,
/// `CANCELLED`, `TIMEOUT`, ...; `COMPLETING` just after the script exits) and `ExitCode=C:S`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEnd {
    pub state: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

impl JobEnd {
    /// Whether Slurm still has the job as live: its group can vanish (slurmstepd removes it as
    /// the job's processes end) before slurmctld has taken in the end.
    pub fn still_live(&self) -> bool {
        matches!(
            self.state.as_str(),
            "RUNNING" | "SUSPENDED" | "PENDING" | "CONFIGURING"
        )
    }
}

pub fn parse_job_end(text: &str) -> Option<JobEnd> {
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .map(str::to_string)
    };
    let state = field("JobState=")?;
    let (code, signal) = match field("ExitCode=") {
        Some(v) => {
            let (c, s) = v.split_once(':').unwrap_or((v.as_str(), "0"));
            (c.parse().ok(), s.parse().ok().filter(|&s: &i32| s != 0))
        }
        None => (None, None),
    };
    Some(JobEnd {
        state,
        exit_code: code,
        signal,
    })
}

/// The `sinfo -o` format [`parse_node`] reads: state and reason.
pub const SINFO_FORMAT: &str = "%T|%E";

/// A node's state and reason, as `sinfo -h -N -n NODE -o '%T|%E'` prints them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// `idle`, `allocated`, `mixed`, `draining`, `drained`, `down`, ... (lower case).
    pub state: String,
    /// `none` when there is no reason.
    pub reason: String,
}

impl NodeStatus {
    pub fn draining_or_drained(&self) -> bool {
        self.state.starts_with("drain")
    }
}

pub fn parse_node(text: &str) -> Option<NodeStatus> {
    let line = text.lines().next()?.trim();
    let (state, reason) = line.split_once('|')?;
    Some(NodeStatus {
        state: state
            .trim_end_matches(['*', '~', '#', '$', '@', '^', '-', '!', '%'])
            .into(),
        reason: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_rows_parse_and_odd_ids_are_skipped() {
        let text = "2|0|SUSPENDED|4294901758\n3|1000|RUNNING|100\n4_1|0|RUNNING|1\ngarbage\n";
        let jobs = parse_squeue(text);
        assert_eq!(
            jobs,
            vec![
                QueuedJob {
                    id: 2,
                    uid: Some(0),
                    state: "SUSPENDED".into(),
                    priority: Some(4_294_901_758)
                },
                QueuedJob {
                    id: 3,
                    uid: Some(1000),
                    state: "RUNNING".into(),
                    priority: Some(100)
                }
            ]
        );
        assert!(jobs[0].suspended() && !jobs[1].suspended());
    }

    #[test]
    fn cpu_ids_come_from_this_nodes_line_only() {
        let text = "JobId=2 JobName=x\n   NumNodes=1 NumCPUs=2\n     Nodes=n2 CPU_IDs=2-3 Mem=0 GRES=\n     Nodes=vm CPU_IDs=0-1 Mem=0 GRES=\n";
        assert_eq!(parse_cpu_ids(text, "vm"), Some("0-1".parse().unwrap()));
        assert_eq!(parse_cpu_ids(text, "n2"), Some("2-3".parse().unwrap()));
        assert_eq!(parse_cpu_ids(text, "n9"), None);
    }

    #[test]
    fn a_jobs_end_is_its_state_and_exit_code() {
        let text =
            "JobId=2 JobName=job.sh JobState=COMPLETED Reason=None ExitCode=0:0 RunTime=00:00:30";
        let end = parse_job_end(text).unwrap();
        assert_eq!(end.state, "COMPLETED");
        assert_eq!((end.exit_code, end.signal), (Some(0), None));
        let end = parse_job_end("JobState=CANCELLED ExitCode=0:15").unwrap();
        assert_eq!((end.exit_code, end.signal), (Some(0), Some(15)));
        assert_eq!(parse_job_end("slurm_load_jobs error: Invalid job id"), None);
    }

    #[test]
    fn node_state_and_reason_parse_with_flags_removed() {
        let n = parse_node("drained*|lowsched: batch has no core\n").unwrap();
        assert_eq!(n.state, "drained");
        assert_eq!(n.reason, "lowsched: batch has no core");
        assert!(n.draining_or_drained());
        let n = parse_node("allocated|none").unwrap();
        assert!(!n.draining_or_drained());
        assert_eq!(parse_node(""), None);
    }

    #[test]
    fn a_missing_tool_is_a_spawn_error_naming_it() {
        let t = Tools {
            bin_dir: Some(PathBuf::from("/nonexistent-lowsched-test")),
            timeout: Duration::from_secs(1),
        };
        let e = t.run(SCONTROL, &["ping"]).unwrap_err();
        assert!(matches!(e, ToolError::Spawn { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("/nonexistent-lowsched-test/scontrol"),
            "{e}"
        );
    }

    #[test]
    fn a_hanging_tool_is_killed_at_its_timeout_and_a_failing_one_reports_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            let mut perm = std::fs::metadata(&p).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
            std::fs::set_permissions(&p, perm).unwrap();
        };
        script(SCONTROL, "exec sleep 30");
        script(
            SQUEUE,
            "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1",
        );
        script(SINFO, "echo 'idle|none'");
        let t = Tools {
            bin_dir: Some(dir.path().to_path_buf()),
            timeout: Duration::from_millis(200),
        };
        let e = t.run(SCONTROL, &["suspend", "5"]).unwrap_err();
        assert!(matches!(e, ToolError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("suspend 5"), "{e}");
        let e = t.run(SQUEUE, &[]).unwrap_err();
        assert!(e.to_string().contains("Unable to contact"), "{e}");
        assert_eq!(t.run(SINFO, &[]).unwrap(), "idle|none\n");
    }
}
