//! The job waiter (`lowsched-shim`): one small process per job that starts the job as its
//! user inside the job's groups, waits for it, and writes how it ended to the state dir.
//!
//! Why a waiter and not the daemon: the daemon may restart or crash while jobs run. The waiter
//! is the job's parent, so it alone can collect the exit status; it records it durably, and the
//! next daemon finds both the waiter (through the job's cgroup) and the record. See
//! cgroups/DESIGN.md.
//!
//! The waiter lives in the job's group (so the job "runs in its cgroup" from the daemon's clone
//! on); the job's processes live in `task/` below it, so killing them never kills the waiter.

mod request;

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

pub use request::{DEFAULT_PATH, REQUEST_FD, ShimRequest};

use crate::model::exit::ExitStatus;
use crate::node::cgroup::{DEFAULT_TIMEOUT, JobGroup, Knob, Mode, PROCS};
use crate::sys::{
    self, ChildPlan, ChildStage, OpenSpec, RawCreds, RawRlimit, SpawnError, SpawnMode,
};

/// Exit codes of the waiter itself (the job's status is in the record, not here).
pub const EXIT_RECORDED: i32 = 0;
pub const EXIT_NO_REQUEST: i32 = 2;
pub const EXIT_NO_RECORD: i32 = 3;

/// The waiter's main: returns its exit code. Diagnostics go to stderr (the daemon points it at
/// /dev/null; run by hand they show).
pub fn main() -> i32 {
    // The daemon blocks all signals around the clone; the waiter starts with a clean mask.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let req = match read_request() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lowsched-shim: {e}");
            return EXIT_NO_REQUEST;
        }
    };
    let mut record = match open_record(&req.record) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("lowsched-shim: job {}: {e}", req.job);
            return EXIT_NO_RECORD;
        }
    };
    // Orphaned descendants of the job come to the waiter, which reaps them.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let status = match start(&req) {
        Ok(pid) => {
            // Tells the daemon the job is in place: a kill issued before this line would find
            // task/ empty and must wait for it (see Actuator::kill).
            let _ = record.write_all(crate::model::exit::started_line(pid.as_raw()).as_bytes());
            wait_for(pid)
        }
        Err(why) => ExitStatus::NotStarted(why),
    };
    let written = write_record(&mut record, &status);
    kill_stragglers(&req);
    match written {
        Ok(()) => EXIT_RECORDED,
        Err(e) => {
            eprintln!(
                "lowsched-shim: job {}: cannot write {}: {e}",
                req.job,
                req.record.display()
            );
            EXIT_NO_RECORD
        }
    }
}

fn read_request() -> Result<ShimRequest, String> {
    let fd = sys::take_inherited(REQUEST_FD).ok_or_else(|| {
        format!("no request on fd {REQUEST_FD} (this program is started by lowsched)")
    })?;
    let mut file = File::from(fd);
    file.seek(SeekFrom::Start(0))
        .map_err(|e| format!("request fd: {e}"))?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("request fd: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("bad request: {e}"))
}

/// Bytes reserved for the exit record: its lines are short (a reason is one line of text).
const RECORD_RESERVE: i64 = 16 * 1024;

/// The exit record, created empty now ("started"): root only, never through a symlink. Its
/// blocks are reserved now (fallocate, size unchanged), so that a job which fills the state
/// dir's filesystem cannot stop the waiter from recording how the job ended. Best effort: a
/// filesystem without fallocate records as before.
fn open_record(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let _ = nix::fcntl::fallocate(
        &file,
        nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        RECORD_RESERVE,
    );
    Ok(file)
}

fn write_record(file: &mut File, status: &ExitStatus) -> std::io::Result<()> {
    file.write_all(status.to_record().as_bytes())?;
    file.sync_all()
}

/// Creates the default output directory for the job's user. The parent (`jobs/`) is root's,
/// so nobody else can have planted anything there; an existing entry must be a real directory
/// of that user.
fn prepare_output_dir(req: &ShimRequest) -> Result<(), String> {
    let Some(dir) = &req.output_dir else {
        return Ok(());
    };
    let fail = |e: std::io::Error| format!("create output directory {}: {e}", dir.display());
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            std::os::unix::fs::lchown(dir, Some(req.user.uid), Some(req.user.gid)).map_err(fail)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir).map_err(fail)?;
            if meta.is_dir() && meta.uid() == req.user.uid {
                Ok(())
            } else {
                Err(format!(
                    "output directory {} exists and is not a directory of uid {}",
                    dir.display(),
                    req.user.uid
                ))
            }
        }
        Err(e) => Err(fail(e)),
    }
}

fn raw_limits(
    limits: &std::collections::BTreeMap<String, crate::model::limits::Rlimit>,
) -> Result<Vec<RawRlimit>, String> {
    limits
        .iter()
        .map(|(name, l)| {
            Ok(RawRlimit {
                resource: crate::model::limits::rlimit_resource(name).map_err(|e| e.to_string())?,
                soft: l.soft,
                hard: l.hard,
            })
        })
        .collect()
}

fn cstring(what: &str, s: impl AsRef<[u8]>) -> Result<CString, String> {
    CString::new(s.as_ref()).map_err(|_| format!("{what} contains a NUL byte"))
}

/// Starts the job: born in `task/` (CLONE_INTO_CGROUP) or, on v1, joining the freezer group
/// before exec; as its user; in its directory; stdin from /dev/null, stdout and stderr to its
/// files opened with the user's permissions. Returns its pid, or why it could not start.
fn start(req: &ShimRequest) -> Result<Pid, String> {
    if req.group.mode != Mode::Unified {
        // v1 cpuset: the daemon left joining to the waiter (see actuator::launch); the job,
        // forked below, inherits the group. Writing "0" moves the writer.
        Knob::open_write(req.group.cpuset.join(PROCS))
            .and_then(|k| k.write("0"))
            .map_err(|e| format!("join the job's cpuset group: {e}"))?;
    }
    prepare_output_dir(req)?;
    let mut plan = ChildPlan {
        new_session: true,
        reset_signals: true,
        creds: Some(RawCreds {
            uid: req.user.uid,
            gid: req.user.gid,
            groups: req.user.groups.clone(),
        }),
        cwd: Some(cstring("cwd", req.cwd.as_os_str().as_bytes())?),
        limits: raw_limits(&req.limits.rlimits)?,
        user_limits: raw_limits(&req.user_rlimits)?,
        umask: Some(req.limits.umask & 0o777),
        no_new_privs: req.limits.no_new_privs,
        // The job gets stdin, stdout and stderr, nothing else of the waiter's.
        close_from: Some(3),
        ..ChildPlan::default()
    };
    let out_flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    let mut opens = vec![(Path::new("/dev/null"), libc::O_RDONLY, 0)];
    opens.push((req.stdout.as_path(), out_flags, 1));
    if req.stderr == req.stdout {
        plan.dups.push((1, 2));
    } else {
        opens.push((req.stderr.as_path(), out_flags, 2));
    }
    for (path, flags, target) in &opens {
        plan.opens.push(OpenSpec {
            path: cstring("output path", path.as_os_str().as_bytes())?,
            flags: *flags,
            mode: 0o644,
            target: *target,
        });
    }
    for p in req.programs() {
        plan.programs
            .push(cstring("program path", p.as_os_str().as_bytes())?);
    }
    for a in &req.argv {
        plan.argv.push(cstring("argv", a)?);
    }
    for (k, v) in &req.env {
        plan.envp.push(cstring("environment", format!("{k}={v}"))?);
    }
    // Where the job is born: task/ in the unified tree, or (v1) a join of the freezer group.
    let (dirfd, join);
    if req.group.mode == Mode::Legacy {
        dirfd = None;
        join = Some(Knob::open_write(req.group.task.join(PROCS)).map_err(|e| e.to_string())?);
    } else {
        let task = &req.group.task;
        let fd = nix::fcntl::open(
            task,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("open {}: {e}", task.display()))?;
        dirfd = Some(fd);
        join = None;
    }
    if let Some(k) = &join {
        plan.join.push(k.as_raw_fd());
    }
    if req.idle {
        // The waiter only waits; the job it forks inherits the policy, and so do its children.
        sys::sched::set_idle().map_err(|e| format!("set SCHED_IDLE for the job: {e}"))?;
    }
    match sys::spawn(plan, SpawnMode::Fork, dirfd.as_ref().map(|f| f.as_fd())) {
        Ok(child) => Ok(child.pid),
        Err(e) => Err(describe(req, &opens, &e)),
    }
}

/// A clear sentence for a failed start: the step, the path involved, the OS error.
fn describe(req: &ShimRequest, opens: &[(&Path, i32, i32)], e: &SpawnError) -> String {
    let SpawnError::Child {
        stage,
        errno,
        index,
    } = e
    else {
        return e.to_string();
    };
    let err = std::io::Error::from_raw_os_error(*errno as i32);
    let i = *index as usize;
    let argv0 = req.argv.first().map(String::as_str).unwrap_or("");
    match stage {
        ChildStage::Exec => format!("exec {argv0}: {err}"),
        ChildStage::Chdir => format!("enter working directory {}: {err}", req.cwd.display()),
        ChildStage::Open => {
            let what = ["stdin", "stdout", "stderr"].get(opens.get(i).map_or(0, |o| o.2) as usize);
            let path = opens.get(i).map_or(Path::new("?"), |o| o.0);
            format!("open {} {}: {err}", what.unwrap_or(&"file"), path.display())
        }
        ChildStage::SetUid => format!("become uid {}: {err}", req.user.uid),
        ChildStage::SetGid => format!("become gid {}: {err}", req.user.gid),
        ChildStage::JoinCgroup => format!("join {}: {err}", req.group.task.display()),
        ChildStage::Limits => {
            let all = req.limits.rlimits.iter().chain(req.user_rlimits.iter());
            let name = all.clone().nth(i).map_or("?", |(n, _)| n.as_str());
            format!("set resource limit {name}: {err}")
        }
        other => format!("{other}: {err}"),
    }
}

/// Reaps children until the job's main process has ended, and returns how it ended.
fn wait_for(main: Pid) -> ExitStatus {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::__WALL)) {
            Ok(ws) if ws.pid() == Some(main) => {
                if let Some(status) = ExitStatus::from_wait(ws) {
                    return status;
                }
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return ExitStatus::Lost(format!("waiting for pid {main}: {e}")),
        }
    }
}

/// After the main process ended, the job is over: kill what it left behind in its group and
/// reap those that were reparented to the waiter.
fn kill_stragglers(req: &ShimRequest) {
    if let Ok(mut group) = JobGroup::open(req.group.clone()) {
        if group.pids().is_ok_and(|p| !p.is_empty()) {
            let _ = group.kill(DEFAULT_TIMEOUT);
        }
    }
    while let Ok(ws) = waitpid(
        None::<Pid>,
        Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
    ) {
        if ws == WaitStatus::StillAlive {
            break;
        }
    }
}
