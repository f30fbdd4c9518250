//! Finding the protected service's processes: by pid file, by process name, or by an existing
//! cgroup, and telling a live process from a recycled pid.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{ServiceConfig, ServiceError};

const PROC_STAT: &str = "stat";
const PROC_COMM: &str = "comm";
const PROC_TASK: &str = "task";
const CGROUP_PROCS: &str = "cgroup.procs";

/// A process of the service, identified by pid and start time (field 22 of /proc/PID/stat), so
/// a pid reused by another process after a restart is not mistaken for the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

/// How the service was found, for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FoundBy {
    PidFile(PathBuf),
    ProcessName(String),
    Cgroup(PathBuf),
}

/// The service's processes as last found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub processes: Vec<ProcessId>,
    pub by: FoundBy,
}

/// Reads a process's start time; `None` if it is gone or unreadable.
pub fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(proc_root.join(pid.to_string()).join(PROC_STAT)).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3.. ; start time is field 22, i.e. the 20th here.
    after.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Whether the process is still the same one (same pid, same start time).
pub fn alive(proc_root: &Path, p: ProcessId) -> bool {
    start_time(proc_root, p.pid) == Some(p.start_time)
}

fn process(proc_root: &Path, pid: u32) -> Option<ProcessId> {
    start_time(proc_root, pid).map(|start_time| ProcessId { pid, start_time })
}

/// Thread ids of a process (entries of /proc/PID/task).
pub fn threads(proc_root: &Path, pid: u32) -> Result<Vec<u32>, ServiceError> {
    let dir = proc_root.join(pid.to_string()).join(PROC_TASK);
    let mut tids: Vec<u32> = fs::read_dir(&dir)
        .map_err(|source| ServiceError::Read {
            path: dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

fn read_pid_file(path: &Path) -> Result<Option<u32>, ServiceError> {
    match fs::read_to_string(path) {
        // Created but not written yet: the service is starting.
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ServiceError::BadPidFile {
                path: path.to_path_buf(),
                text,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ServiceError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Processes whose command name (/proc/PID/comm) is `name`, lowest pid first.
pub fn by_name(proc_root: &Path, name: &str) -> Result<Vec<ProcessId>, ServiceError> {
    let entries = fs::read_dir(proc_root).map_err(|source| ServiceError::Read {
        path: proc_root.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(e.path().join(PROC_COMM)).unwrap_or_default();
        if comm.trim_end_matches('\n') == name {
            out.extend(process(proc_root, pid));
        }
    }
    out.sort_by_key(|p| p.pid);
    Ok(out)
}

/// Processes in a cgroup directory (its `cgroup.procs`).
pub fn in_cgroup(proc_root: &Path, dir: &Path) -> Result<Vec<ProcessId>, ServiceError> {
    let path = dir.join(CGROUP_PROCS);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ServiceError::Read { path, source }),
    };
    Ok(text
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter_map(|pid| process(proc_root, pid))
        .collect())
}

/// Looks for the service the way the config says, in order: pid file, cgroup, process name.
/// `cgroup_mount` is where `cfg.cgroup` paths are rooted (the unified mount).
pub fn find(
    cfg: &ServiceConfig,
    proc_root: &Path,
    cgroup_mount: &Path,
) -> Result<Option<Found>, ServiceError> {
    if let Some(path) = &cfg.pid_file {
        if let Some(pid) = read_pid_file(path)? {
            if let Some(p) = process(proc_root, pid) {
                return Ok(Some(Found {
                    processes: vec![p],
                    by: FoundBy::PidFile(path.clone()),
                }));
            }
        }
    }
    if let Some(cg) = &cfg.cgroup {
        let dir = cgroup_mount.join(cg.strip_prefix("/").unwrap_or(cg));
        let procs = in_cgroup(proc_root, &dir)?;
        if !procs.is_empty() {
            return Ok(Some(Found {
                processes: procs,
                by: FoundBy::Cgroup(dir),
            }));
        }
    }
    if let Some(name) = cfg.process_name() {
        let procs = by_name(proc_root, name)?;
        if !procs.is_empty() {
            return Ok(Some(Found {
                processes: procs,
                by: FoundBy::ProcessName(name.to_string()),
            }));
        }
    }
    Ok(None)
}

/// Whether the pid file now names a live process other than the one found through it (the
/// service was restarted while its old process lingers, or the pid file moved on).
pub fn pid_file_moved(proc_root: &Path, found: &Found) -> bool {
    let (FoundBy::PidFile(path), Some(p)) = (&found.by, found.processes.first()) else {
        return false;
    };
    match read_pid_file(path) {
        Ok(Some(pid)) => pid != p.pid && start_time(proc_root, pid).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc with the given (pid, comm, start time, threads).
    fn fake_proc(procs: &[(u32, &str, u64, &[u32])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for &(pid, comm, start, tids) in procs {
            let p = dir.path().join(pid.to_string());
            fs::create_dir_all(p.join("task")).unwrap();
            fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
            let stat = format!(
                "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 {} 0 {start} 1000 200",
                tids.len()
            );
            fs::write(p.join("stat"), stat).unwrap();
            for t in tids {
                fs::create_dir_all(p.join("task").join(t.to_string())).unwrap();
            }
        }
        fs::create_dir_all(dir.path().join("self")).unwrap();
        dir
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let d = fake_proc(&[(7, "a (b) c", 4242, &[7])]);
        assert_eq!(start_time(d.path(), 7), Some(4242));
        assert_eq!(start_time(d.path(), 8), None);
    }

    #[test]
    fn finds_by_name_and_detects_pid_reuse() {
        let d = fake_proc(&[
            (10, "memcached", 500, &[10, 11, 12]),
            (20, "bash", 9, &[20]),
        ]);
        let found = by_name(d.path(), "memcached").unwrap();
        assert_eq!(
            found,
            vec![ProcessId {
                pid: 10,
                start_time: 500
            }]
        );
        assert_eq!(threads(d.path(), 10).unwrap(), vec![10, 11, 12]);
        assert!(alive(d.path(), found[0]));
        // Restarted under the same pid: a different start time, so not the same process.
        fs::write(
            d.path().join("10/stat"),
            "10 (memcached) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 1 1",
        )
        .unwrap();
        assert!(!alive(d.path(), found[0]));
    }

    #[test]
    fn search_order_pid_file_then_cgroup_then_name() {
        let d = fake_proc(&[(10, "memcached", 500, &[10]), (30, "memcached", 600, &[30])]);
        let cg = tempfile::tempdir().unwrap();
        fs::create_dir_all(cg.path().join("system.slice/memcached.service")).unwrap();
        fs::write(
            cg.path()
                .join("system.slice/memcached.service/cgroup.procs"),
            "30\n",
        )
        .unwrap();
        let pidfile = d.path().join("memcached.pid");
        fs::write(&pidfile, "10\n").unwrap();
        let mut cfg = ServiceConfig {
            pid_file: Some(pidfile.clone()),
            cgroup: Some("/system.slice/memcached.service".into()),
            process_name: Some("memcached".into()),
            ..ServiceConfig::default()
        };
        let f = find(&cfg, d.path(), cg.path()).unwrap().unwrap();
        assert_eq!(
            (f.processes[0].pid, &f.by),
            (10, &FoundBy::PidFile(pidfile.clone()))
        );
        cfg.pid_file = None;
        let f = find(&cfg, d.path(), cg.path()).unwrap().unwrap();
        assert_eq!(f.processes[0].pid, 30);
        assert!(matches!(f.by, FoundBy::Cgroup(_)));
        cfg.cgroup = None;
        let f = find(&cfg, d.path(), cg.path()).unwrap().unwrap();
        assert_eq!(f.processes.len(), 2);
        // Without an explicit process name, a configured pid file does not fall back to it.
        let only_pidfile = ServiceConfig {
            pid_file: Some(d.path().join("gone.pid")),
            ..ServiceConfig::default()
        };
        assert_eq!(find(&only_pidfile, d.path(), cg.path()).unwrap(), None);
        assert!(
            find(&ServiceConfig::default(), d.path(), cg.path())
                .unwrap()
                .is_some()
        );
        cfg.process_name = Some("redis".into());
        assert_eq!(find(&cfg, d.path(), cg.path()).unwrap(), None);
        fs::write(&pidfile, "garbage").unwrap();
        cfg.pid_file = Some(pidfile);
        let e = find(&cfg, d.path(), cg.path()).unwrap_err();
        assert!(e.to_string().contains("garbage"), "{e}");
    }
}
