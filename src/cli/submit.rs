//! `lowsched submit`: builds job specs from flags or a job-list file and submits them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use argh::{ArgsInfo, FromArgs};

use crate::api::client::ClientError;
use crate::api::protocol::{Reply, Request, Submit, SubmitMany};
use crate::model::array::ArraySpec;
use crate::model::depend::{self, DepKind, Dependency};
use crate::model::job::{JobId, JobSpec};
use crate::model::resources::{Bytes, CoreRange, GpuRequest};

use super::units;

/// Submit a job and print its id: lowsched submit [options] [--] CMD [ARGS...]
#[derive(FromArgs, ArgsInfo, Debug, Default)]
#[argh(subcommand, name = "submit", help_triggers("-h", "--help"))]
pub struct SubmitArgs {
    /// job name (default: the command's file name)
    #[argh(option, short = 'J')]
    pub name: Option<String>,
    /// priority, a whole number; higher runs first (default 0)
    #[argh(option, default = "0", from_str_fn(units::priority))]
    pub priority: i32,
    /// cores: N, or MIN:MAX to start on MIN and widen up to MAX (default 1)
    #[argh(option, short = 'c', from_str_fn(units::cores))]
    pub cpus: Option<CoreRange>,
    /// memory limit with a unit, e.g. 512M, 8G, 1.5G (at least 1M; a bare number is refused)
    #[argh(option, from_str_fn(units::memory))]
    pub memory: Option<Bytes>,
    /// GPUs: N, VARIANT or VARIANT:N (e.g. 2, A100, A100:2)
    #[argh(option, from_str_fn(units::gpus))]
    pub gpus: Option<GpuRequest>,
    /// expected run time (used by sjf, ljf and backfill): seconds, 30m, or [D-]HH:MM:SS
    #[argh(option, from_str_fn(units::duration))]
    pub estimate: Option<Duration>,
    /// finish within this long of submission (used by edf): seconds, 30m, or [D-]HH:MM:SS
    #[argh(option, from_str_fn(units::duration))]
    pub deadline: Option<Duration>,
    /// give up if not started within this long (the job becomes unschedulable): seconds, 30m,
    /// or [D-]HH:MM:SS
    #[argh(option, from_str_fn(units::duration))]
    pub timeout: Option<Duration>,
    /// run-time limit: at it the job is killed and ends as timeout (`wait` exits 123). Only
    /// time running counts, not time paused, so a job paused to protect the service keeps its
    /// time. Seconds (a bare number is seconds, not Slurm's minutes), 30m, MM:SS or
    /// [D-]HH:MM:SS
    #[argh(option, short = 't', from_str_fn(units::duration))]
    pub time: Option<Duration>,
    /// start only once these jobs have started (ids: 12, 12,13 or 12:13; repeatable)
    #[argh(option)]
    pub after: Vec<String>,
    /// start only once these jobs have ended, however they ended
    #[argh(option)]
    pub afterany: Vec<String>,
    /// start only once these jobs have succeeded; if one ends otherwise, this job is given up
    /// on (unschedulable, DependencyNeverSatisfied)
    #[argh(option)]
    pub afterok: Vec<String>,
    /// start only once these jobs have ended without success (failed, cancelled, timeout,
    /// unschedulable); if one succeeds, this job is given up on
    #[argh(option)]
    pub afternotok: Vec<String>,
    /// dependencies in Slurm's form: TYPE:ID[:ID...][,TYPE:ID...] with TYPE after,
    /// afterany, afterok or afternotok; all must hold (e.g. afterok:12:13,after:14)
    #[argh(option, short = 'd')]
    pub dependency: Vec<String>,
    /// a job array: one task per index, e.g. 0-99, 1,3,5-7 or 0-15:4, with %N to run at most
    /// N at once (0-99%4); each task finds LOWSCHED_ARRAY_TASK_ID and LOWSCHED_ARRAY_JOB_ID in
    /// its environment; the array is known by the id printed, its tasks as ID_INDEX
    #[argh(option, short = 'a', from_str_fn(array))]
    pub array: Option<ArraySpec>,
    /// file for the job's stdout (default: in the daemon's state dir)
    #[argh(option, short = 'o')]
    pub stdout: Option<PathBuf>,
    /// file for the job's stderr (default: in the daemon's state dir)
    #[argh(option, short = 'e')]
    pub stderr: Option<PathBuf>,
    /// working directory (default: the current directory)
    #[argh(option)]
    pub cwd: Option<PathBuf>,
    /// environment variable K=V for the job (repeatable); the job starts from a clean env
    #[argh(option)]
    pub env: Vec<String>,
    /// run as this user (root only)
    #[argh(option)]
    pub user: Option<String>,
    /// colocation class other jobs can name in --avoid
    #[argh(option)]
    pub class: Option<String>,
    /// job name or class this job must not share a physical core with (repeatable)
    #[argh(option)]
    pub avoid: Vec<String>,
    /// never run on a physical core shared with the protected service
    #[argh(switch)]
    pub not_beside_service: bool,
    /// submit every job of a JSON job list (native or seed form) instead of one command
    #[argh(option)]
    pub file: Option<PathBuf>,
    /// print the answer as JSON
    #[argh(switch)]
    pub json: bool,
    /// the command to run and its arguments; options after it are the command's own (write
    /// -- before it if it starts with -)
    #[argh(positional, greedy)]
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("no command given: lowsched submit [options] -- CMD [ARGS...]")]
    NoCommand,
    #[error("give either --file or a command, not both")]
    FileAndCommand,
    #[error("bad --env '{0}': expected NAME=VALUE with a non-empty NAME")]
    Env(String),
    #[error(transparent)]
    JobFile(#[from] crate::api::jobfile::JobFileError),
    #[error("{0}")]
    Dependency(String),
    #[error("cannot determine the current directory: {0}")]
    Cwd(std::io::Error),
    #[error("job {index} ({name}) of the list is {bytes} bytes as a request; the limit is {limit}")]
    JobTooLarge {
        index: usize,
        name: String,
        bytes: usize,
        limit: usize,
    },
}

/// Splits a job list into `submit_many` requests that each fit the daemon's request-line limit.
///
/// The limit (64 KiB) keeps one client from tying up the daemon with a huge line; a list of a
/// few hundred jobs passes it, so the list goes in order in as many requests as needed.
pub fn chunks(
    jobs: Vec<JobSpec>,
    user: Option<String>,
    limit: usize,
) -> Result<Vec<SubmitMany>, SubmitError> {
    let line_len = |jobs: Vec<JobSpec>| {
        let req = Request::SubmitMany(SubmitMany {
            jobs,
            user: user.clone(),
        });
        req.to_line().len() + 1
    };
    let empty = line_len(Vec::new());
    let mut out: Vec<SubmitMany> = Vec::new();
    let (mut current, mut size) = (Vec::new(), empty);
    for (index, job) in jobs.into_iter().enumerate() {
        // Each job adds its own JSON and a comma.
        let own = line_len(vec![job.clone()]) - empty + 1;
        if empty + own >= limit {
            return Err(SubmitError::JobTooLarge {
                index,
                name: job.name.clone(),
                bytes: empty + own,
                limit,
            });
        }
        if size + own >= limit || current.len() == crate::api::protocol::MAX_BATCH {
            out.push(SubmitMany {
                jobs: std::mem::take(&mut current),
                user: user.clone(),
            });
            size = empty;
        }
        size += own;
        current.push(job);
    }
    if !current.is_empty() || out.is_empty() {
        out.push(SubmitMany {
            jobs: current,
            user,
        });
    }
    Ok(out)
}

/// Makes `p` absolute against `base` (the daemon does not know the client's directory).
fn absolute(base: &Path, p: Option<PathBuf>) -> Option<PathBuf> {
    p.map(|p| if p.is_absolute() { p } else { base.join(p) })
}

/// The job spec the flags describe.
pub fn spec_from_args(args: &SubmitArgs, here: &Path) -> Result<JobSpec, SubmitError> {
    if args.command.is_empty() {
        return Err(SubmitError::NoCommand);
    }
    let mut spec = JobSpec::new(args.command.clone());
    if let Some(name) = &args.name {
        spec.name = name.clone();
    }
    spec.priority = args.priority;
    spec.cores = args.cpus.unwrap_or_default();
    spec.memory = args.memory;
    spec.gpus = args.gpus.clone().unwrap_or_default();
    spec.estimate = args.estimate;
    spec.deadline = args.deadline;
    spec.timeout = args.timeout;
    spec.time_limit = args.time;
    spec.dependencies = dependencies(args).map_err(SubmitError::Dependency)?;
    spec.array = args.array.clone();
    spec.stdout = absolute(here, args.stdout.clone());
    spec.stderr = absolute(here, args.stderr.clone());
    spec.cwd = absolute(here, args.cwd.clone()).or_else(|| Some(here.to_path_buf()));
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| SubmitError::Env(kv.clone()))?;
        if k.is_empty() {
            return Err(SubmitError::Env(kv.clone()));
        }
        spec.env.insert(k.to_string(), v.to_string());
    }
    spec.colocation.class = args.class.clone();
    spec.colocation.avoid = args.avoid.clone();
    spec.colocation.beside_service = !args.not_beside_service;
    spec.umask = caller_umask();
    Ok(spec)
}

/// Every dependency the flags name, in the order given.
fn dependencies(args: &SubmitArgs) -> Result<Vec<Dependency>, String> {
    let mut out = Vec::new();
    for (kind, flag, lists) in [
        (DepKind::After, "--after", &args.after),
        (DepKind::AfterAny, "--afterany", &args.afterany),
        (DepKind::AfterOk, "--afterok", &args.afterok),
        (DepKind::AfterNotOk, "--afternotok", &args.afternotok),
    ] {
        for list in lists {
            out.extend(depend::parse_ids(kind, list).map_err(|e| format!("{flag}: {e}"))?);
        }
    }
    for list in &args.dependency {
        out.extend(depend::parse_slurm(list).map_err(|e| format!("--dependency: {e}"))?);
    }
    Ok(out)
}

/// An `--array` value.
fn array(text: &str) -> Result<ArraySpec, String> {
    text.parse()
}

/// This process's umask (the `Umask:` line of /proc/self/status, Linux 4.7+): jobs get the
/// submitter's umask, as if run from the same shell. `None` where it cannot be read.
pub fn caller_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// The jobs of a job-list file (native or seed form, see [`crate::api::jobfile`]), with relative
/// paths made absolute against the current directory.
pub fn specs_from_file(path: &Path, here: &Path) -> Result<Vec<JobSpec>, SubmitError> {
    let mut specs = crate::api::jobfile::load(path)?;
    let umask = caller_umask();
    for s in &mut specs {
        s.umask = s.umask.or(umask);
        s.stdout = absolute(here, s.stdout.take());
        s.stderr = absolute(here, s.stderr.take());
        s.cwd = absolute(here, s.cwd.take()).or_else(|| Some(here.to_path_buf()));
    }
    Ok(specs)
}

pub fn run(socket: &Path, args: SubmitArgs) -> Result<ExitCode, ClientError> {
    let fail = |e: SubmitError| {
        eprintln!("lowsched: {e}");
        Ok(ExitCode::from(super::exit::ERROR))
    };
    let here = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => return fail(SubmitError::Cwd(e)),
    };
    let req = match &args.file {
        Some(_) if !args.command.is_empty() => return fail(SubmitError::FileAndCommand),
        Some(path) => {
            let parts = match specs_from_file(path, &here)
                .and_then(|jobs| chunks(jobs, args.user.clone(), crate::api::protocol::MAX_REQUEST))
            {
                Ok(parts) => parts,
                Err(e) => return fail(e),
            };
            return submit_list(socket, parts, args.json);
        }
        None => match spec_from_args(&args, &here) {
            Ok(job) => Request::Submit(Box::new(Submit {
                job,
                user: args.user.clone(),
            })),
            Err(e) => return fail(e),
        },
    };
    match crate::api::client::call(socket, &req, crate::api::client::BUSY_PATIENCE)? {
        Reply::Submitted { id } if args.json => println!("{{\"id\":{id}}}"),
        Reply::Submitted { id } => println!("{id}"),
        other => return Err(super::unexpected(other)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Submits a job list's requests in order. Should one be refused, the ids already acknowledged
/// are still printed and the error says from which job on nothing was submitted, so no job is
/// silently lost or submitted twice by a blind retry.
fn submit_list(socket: &Path, parts: Vec<SubmitMany>, json: bool) -> Result<ExitCode, ClientError> {
    let mut done: Vec<JobId> = Vec::new();
    let mut failed = None;
    for part in parts {
        match crate::api::client::call(
            socket,
            &Request::SubmitMany(part),
            crate::api::client::BUSY_PATIENCE,
        ) {
            Ok(Reply::SubmittedMany { ids }) => {
                if !json {
                    for id in &ids {
                        println!("{id}");
                    }
                }
                done.extend(ids);
            }
            Ok(other) => failed = Some(super::unexpected(other)),
            Err(e) => failed = Some(e),
        }
        if failed.is_some() {
            break;
        }
    }
    if json {
        println!("{}", serde_json::json!({ "ids": done }));
    }
    match failed {
        None => Ok(ExitCode::SUCCESS),
        Some(e) if done.is_empty() => Err(e),
        Some(e) => {
            eprintln!(
                "lowsched: the first {} jobs of the list were submitted (ids above); job {} and the rest were not: {e}",
                done.len(),
                done.len()
            );
            Ok(ExitCode::from(super::exit::ERROR))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<SubmitArgs, String> {
        SubmitArgs::from_args(&["submit"], args).map_err(|e| e.output)
    }

    #[test]
    fn flags_become_a_spec() {
        let args = parse(&[
            "--name",
            "bs",
            "--priority",
            "-3",
            "--cpus",
            "1:2",
            "--memory",
            "1.5G",
            "--gpus",
            "A100:2",
            "--timeout",
            "2.5",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--stdout",
            "out",
            "--",
            "stress-ng",
            "--cpu",
            "1",
        ])
        .unwrap();
        let spec = spec_from_args(&args, Path::new("/home/u")).unwrap();
        assert_eq!(spec.name, "bs");
        assert_eq!(spec.priority, -3);
        assert_eq!(spec.cores, CoreRange { min: 1, max: 2 });
        assert_eq!(spec.memory, Some(Bytes(3 << 29)));
        assert_eq!(spec.gpus.count, 2);
        assert_eq!(spec.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(spec.env["B"], "x=y");
        assert_eq!(spec.argv, ["stress-ng", "--cpu", "1"]);
        assert_eq!(spec.stdout.as_deref(), Some(Path::new("/home/u/out")));
        assert_eq!(spec.cwd.as_deref(), Some(Path::new("/home/u")));
        spec.validate().unwrap();
    }

    #[test]
    fn memory_without_a_unit_never_becomes_bytes() {
        // `--memory 8 GB -- true` used to run `GB -- true` with an 8-byte limit.
        let e = parse(&["--memory", "8", "GB", "--", "true"]).unwrap_err();
        assert!(e.contains("'--memory' with value '8'"), "{e}");
        assert!(e.contains("did you mean 8M?"), "{e}");
        let e = parse(&["--memory", "4096", "--", "true"]).unwrap_err();
        assert!(e.contains("did you mean 4096M?"), "{e}");
        let e = parse(&["--memory", "100k", "--", "true"]).unwrap_err();
        assert!(e.contains("floor of 1M"), "{e}");
    }

    #[test]
    fn slurm_letters_and_time_forms_fill_the_spec() {
        let args = parse(&[
            "-J",
            "sim",
            "-c",
            "2",
            "-o",
            "o.log",
            "-e",
            "/e.log",
            "--timeout",
            "1:30",
            "--estimate",
            "2h",
            "--",
            "true",
        ])
        .unwrap();
        let spec = spec_from_args(&args, Path::new("/w")).unwrap();
        assert_eq!(spec.name, "sim");
        assert_eq!(spec.cores, CoreRange::exactly(2));
        assert_eq!(spec.stdout.as_deref(), Some(Path::new("/w/o.log")));
        assert_eq!(spec.stderr.as_deref(), Some(Path::new("/e.log")));
        assert_eq!(spec.timeout, Some(Duration::from_secs(90)));
        assert_eq!(spec.estimate, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn job_files_take_both_forms_and_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.json");
        std::fs::write(
            &path,
            r#"[{"name":"seed","command":"echo hi","resources":{"cpu":2,"memory":"8G","gpu":1},
                 "priority":1,"output":"out/seed.log"},
                {"name":"native","argv":["true"],"stdout":"/abs/n.out","cwd":"sub"}]"#,
        )
        .unwrap();
        let specs = specs_from_file(&path, Path::new("/home/u")).unwrap();
        assert_eq!(specs[0].argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(specs[0].cores, CoreRange::exactly(2));
        assert_eq!(specs[0].priority, 1);
        let log = Path::new("/home/u/out/seed.log");
        assert_eq!(specs[0].stdout.as_deref(), Some(log));
        assert_eq!(specs[0].stderr.as_deref(), Some(log));
        assert_eq!(specs[0].cwd.as_deref(), Some(Path::new("/home/u")));
        assert_eq!(specs[1].stdout.as_deref(), Some(Path::new("/abs/n.out")));
        assert_eq!(specs[1].cwd.as_deref(), Some(Path::new("/home/u/sub")));
        std::fs::write(&path, r#"[{"command":"x","resources":{"cpus":2}}]"#).unwrap();
        let e = specs_from_file(&path, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("jobs.json") && e.contains("cpus"), "{e}");
    }

    #[test]
    fn command_options_are_not_taken_as_ours() {
        let args = parse(&["sleep", "--cpus", "3"]).unwrap();
        assert_eq!(args.command, ["sleep", "--cpus", "3"]);
        assert!(args.cpus.is_none());
    }

    #[test]
    fn bad_flags_say_what_was_wrong() {
        let e = parse(&["--memory", "lots", "--", "x"]).unwrap_err();
        assert!(
            e.contains("'--memory'") && e.contains("'lots'") && e.contains("8G"),
            "{e}"
        );
        let e = parse(&["--cpus", "3:1", "--", "x"]).unwrap_err();
        assert!(e.contains("3:1"), "{e}");
        let args = parse(&["--env", "NOEQUALS", "--", "x"]).unwrap();
        let e = spec_from_args(&args, Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("NOEQUALS"));
        let e = parse(&["--timeout", "-1", "--", "x"]).unwrap_err();
        assert!(
            e.contains("'--timeout'") && e.contains("'-1'") && e.contains("HH:MM:SS"),
            "{e}"
        );
        let args = parse(&[]).unwrap();
        assert!(matches!(
            spec_from_args(&args, Path::new("/")),
            Err(SubmitError::NoCommand)
        ));
    }

    #[test]
    fn long_job_lists_go_in_order_in_requests_under_the_limit() {
        let jobs: Vec<JobSpec> = (0..2000)
            .map(|i| JobSpec::new(vec!["/bin/echo".into(), format!("job number {i}")]))
            .collect();
        let parts = chunks(
            jobs.clone(),
            Some("alice".into()),
            crate::api::protocol::MAX_REQUEST,
        )
        .unwrap();
        assert!(parts.len() > 1, "2000 jobs fit one request?");
        for p in &parts {
            let line = Request::SubmitMany(p.clone()).to_line();
            assert!(
                line.len() + 1 < crate::api::protocol::MAX_REQUEST,
                "{} bytes",
                line.len()
            );
            assert_eq!(p.user.as_deref(), Some("alice"));
        }
        let back: Vec<JobSpec> = parts.into_iter().flat_map(|p| p.jobs).collect();
        assert_eq!(back, jobs);
    }

    #[test]
    fn a_job_too_large_for_any_request_is_named() {
        let mut jobs = vec![JobSpec::new(vec!["true".into()])];
        let mut big = JobSpec::new(vec!["echo".into(), "x".repeat(70_000)]);
        big.name = "huge".into();
        jobs.push(big);
        let e = chunks(jobs, None, crate::api::protocol::MAX_REQUEST).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("job 1") && e.contains("huge"), "{e}");
    }
}
