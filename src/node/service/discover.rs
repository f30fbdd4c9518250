//! Finding the protected service's processes: by pid file, by process name, or by an existing
//! cgroup, and telling a live process from a recycled pid.
//!
//! A process name proves nothing (any user can start a program called `memcached`), so a
//! process found by name is taken only if it runs as one of the configured users and holds
//! the listening socket of the service's address: it is the process that answers there.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{ServiceConfig, ServiceError};

const PROC_STAT: &str = "stat";
const PROC_COMM: &str = "comm";
const PROC_TASK: &str = "task";
const CGROUP_PROCS: &str = "cgroup.procs";
const PROC_STATUS: &str = "status";
const PROC_FD: &str = "fd";
const NET_TCP: [&str; 2] = ["net/tcp", "net/tcp6"];
/// `st` of a listening socket in /proc/net/tcp.
const TCP_LISTEN: &str = "0A";

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

impl std::fmt::Display for FoundBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FoundBy::PidFile(p) => write!(f, "pid file {}", p.display()),
            FoundBy::ProcessName(n) => write!(f, "process name {}", crate::model::text::quoted(n)),
            FoundBy::Cgroup(p) => write!(f, "cgroup {}", p.display()),
        }
    }
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

/// The real and effective uid of a process (`Uid:` of /proc/PID/status).
pub fn uids(proc_root: &Path, pid: u32) -> Option<(u32, u32)> {
    let status = fs::read_to_string(proc_root.join(pid.to_string()).join(PROC_STATUS)).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut f = line.split_ascii_whitespace().map(|v| v.parse::<u32>().ok());
    Some((f.next()??, f.next()??))
}

/// Socket inodes listening on TCP `port` (any local address), from /proc/net/tcp and tcp6.
pub fn listening_inodes(proc_root: &Path, port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in NET_TCP {
        let Ok(text) = fs::read_to_string(proc_root.join(table)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            let (Some(local), Some(st), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let p = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if p == Some(port) && *st == TCP_LISTEN {
                out.extend(inode.parse::<u64>().ok().filter(|&i| i != 0));
            }
        }
    }
    out
}

/// Whether process `pid` holds one of the socket `inodes` (a `socket:[N]` link in its fd/).
pub fn holds_socket(proc_root: &Path, pid: u32, inodes: &[u64]) -> bool {
    let dir = proc_root.join(pid.to_string()).join(PROC_FD);
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        fs::read_link(e.path()).ok().is_some_and(|l| {
            l.to_str()
                .and_then(|s| s.strip_prefix("socket:["))
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| inodes.contains(&n))
        })
    })
}

/// The port of an address like `127.0.0.1:11211` or `[::1]:11211`.
fn port_of(address: &str) -> Option<u16> {
    address.rsplit_once(':')?.1.parse().ok()
}

/// Of processes found by name, those that may be the service: running as one of `uids` (real
/// and effective) and holding the listening socket of `address`.
pub fn trusted(
    proc_root: &Path,
    procs: Vec<ProcessId>,
    uids_allowed: &[u32],
    address: &str,
) -> Vec<ProcessId> {
    let inodes = port_of(address).map_or_else(Vec::new, |p| listening_inodes(proc_root, p));
    procs
        .into_iter()
        .filter(|p| {
            uids(proc_root, p.pid)
                .is_some_and(|(r, e)| uids_allowed.contains(&r) && uids_allowed.contains(&e))
        })
        .filter(|p| holds_socket(proc_root, p.pid, &inodes))
        .collect()
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
        let procs = trusted(proc_root, procs, &cfg.process_uids(), &cfg.address);
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

    /// A fake /proc with the given (pid, comm, start time, threads): every process runs as root
    /// and holds socket inode 1000+pid, listening on port 11211 (the default address).
    fn fake_proc(procs: &[(u32, &str, u64, &[u32])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("net")).unwrap();
        let mut tcp = String::from(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
        );
        for &(pid, ..) in procs {
            tcp.push_str(&format!(
                "   0: 0100007F:2BCB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {} 1 0\n",
                1000 + pid
            ));
        }
        fs::write(dir.path().join("net/tcp"), tcp).unwrap();
        for &(pid, comm, start, tids) in procs {
            let p = dir.path().join(pid.to_string());
            fs::create_dir_all(p.join("task")).unwrap();
            fs::create_dir_all(p.join("fd")).unwrap();
            std::os::unix::fs::symlink(format!("socket:[{}]", 1000 + pid), p.join("fd/3")).unwrap();
            fs::write(p.join("status"), "Name:\tx\nUid:\t0\t0\t0\t0\n").unwrap();
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
    fn by_name_takes_only_the_configured_users_process_that_holds_the_port() {
        let d = fake_proc(&[(10, "memcached", 500, &[10]), (20, "memcached", 600, &[20])]);
        // pid 20 is another user's spoof.
        fs::write(d.path().join("20/status"), "Uid:\t1001\t1001\t1001\t1001\n").unwrap();
        let cfg = ServiceConfig::default();
        let f = find(&cfg, d.path(), d.path()).unwrap().unwrap();
        assert_eq!(f.processes.iter().map(|p| p.pid).collect::<Vec<_>>(), [10]);
        // A root process named memcached that does not hold the listening socket is not it.
        fs::remove_file(d.path().join("10/fd/3")).unwrap();
        assert_eq!(find(&cfg, d.path(), d.path()).unwrap(), None);
        std::os::unix::fs::symlink("socket:[1010]", d.path().join("10/fd/3")).unwrap();
        // Another port configured: nobody holds it.
        let other = ServiceConfig {
            address: "127.0.0.1:11311".into(),
            ..ServiceConfig::default()
        };
        assert_eq!(find(&other, d.path(), d.path()).unwrap(), None);
        // The spoofing user is trusted only if configured.
        let lax = ServiceConfig {
            process_users: vec!["root".into(), "nobody".into()],
            ..ServiceConfig::default()
        };
        fs::write(
            d.path().join("20/status"),
            "Uid:\t65534\t65534\t65534\t65534\n",
        )
        .unwrap();
        assert_eq!(
            find(&lax, d.path(), d.path())
                .unwrap()
                .unwrap()
                .processes
                .len(),
            2
        );
        assert_eq!(uids(d.path(), 20), Some((65534, 65534)));
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
