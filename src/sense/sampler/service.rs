//! The protected service's CPU use: a cgroup's usage counter (v2 `cpu.stat` usage_usec, v1
//! `cpuacct.usage`), or, when the service sits in no cgroup lowsched controls, the sum of its
//! threads' `/proc/PID/task/*/schedstat` run time.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Cgroup v2 CPU statistics (`usage_usec` line), present in every v2 group.
pub const CPU_STAT: &str = "cpu.stat";
/// Cgroup v1 cpuacct total usage in ns.
pub const CPUACCT_USAGE: &str = "cpuacct.usage";
/// Per-thread scheduler statistics; the first field is run time in ns.
pub const SCHEDSTAT: &str = "schedstat";
/// A process's cgroup membership.
pub const PROC_CGROUP: &str = "cgroup";
/// A process's thread directory.
pub const PROC_TASKS: &str = "task";
/// Present in every cgroup v2 directory.
pub const CGROUP_CONTROLLERS: &str = "cgroup.controllers";
/// Where hybrid hosts mount the v2 tree, under the cgroup root.
pub const UNIFIED_DIR: &str = "unified";
/// The v1 CPU accounting controller.
pub const CPUACCT: &str = "cpuacct";

/// Where the service's CPU use comes from. Settable while the samplers run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", content = "at", rename_all = "snake_case")]
pub enum ServiceSource {
    /// No service: nothing is read.
    #[default]
    None,
    /// A cgroup directory (its root included, so tests can point at a fake tree). v1 when it has
    /// `cpuacct.usage`, else v2 `cpu.stat`.
    Cgroup(PathBuf),
    /// A process id, summed over its threads (needs the proc root).
    Pid(u32),
}

/// Which kind of counter is being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    None = 0,
    CgroupV2 = 1,
    CgroupV1 = 2,
    Pid = 3,
}

impl ServiceKind {
    pub(crate) fn from_code(c: u64) -> Self {
        match c {
            1 => Self::CgroupV2,
            2 => Self::CgroupV1,
            3 => Self::Pid,
            _ => Self::None,
        }
    }
}

/// Why the service's counter could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} has no usable counter: {what}")]
    Malformed { path: PathBuf, what: &'static str },
    #[error("process {pid} has no threads under {path} (it exited?)")]
    NoThreads { pid: u32, path: PathBuf },
}

impl ServiceError {
    /// The errno, for publishing through a seqlock word (0 when not an OS error).
    pub fn errno(&self) -> i32 {
        match self {
            Self::Io { source, .. } => source.raw_os_error().unwrap_or(0),
            Self::Malformed { .. } => libc::EINVAL,
            Self::NoThreads { .. } => libc::ESRCH,
        }
    }
}

/// An opened cgroup counter: the held fd (read through the ring) and how to parse it.
#[derive(Debug)]
pub struct CgroupCounter {
    pub file: File,
    pub path: PathBuf,
    pub kind: ServiceKind,
}

impl CgroupCounter {
    pub fn open(dir: &Path) -> Result<Self, ServiceError> {
        let v1 = dir.join(CPUACCT_USAGE);
        if v1.exists() {
            let file = File::open(&v1).map_err(|source| ServiceError::Io {
                path: v1.clone(),
                source,
            })?;
            return Ok(Self {
                file,
                path: v1,
                kind: ServiceKind::CgroupV1,
            });
        }
        let v2 = dir.join(CPU_STAT);
        let file = File::open(&v2).map_err(|source| ServiceError::Io {
            path: v2.clone(),
            source,
        })?;
        Ok(Self {
            file,
            path: v2,
            kind: ServiceKind::CgroupV2,
        })
    }

    /// The usage in ns from what one read of the file returned.
    pub fn parse(&self, buf: &[u8]) -> Result<u64, ServiceError> {
        let bad = |what| ServiceError::Malformed {
            path: self.path.clone(),
            what,
        };
        match self.kind {
            ServiceKind::CgroupV1 => {
                let end = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
                parse_u64(&buf[..end]).ok_or_else(|| bad("cpuacct.usage is not a number"))
            }
            _ => parse_usage_usec(buf)
                .map(|us| us.saturating_mul(1000))
                .ok_or_else(|| bad("no usage_usec line")),
        }
    }
}

/// `usage_usec N` from a v2 `cpu.stat`.
pub fn parse_usage_usec(buf: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"usage_usec ";
    let mut at = 0;
    while at < buf.len() {
        let end = memchr::memchr(b'\n', &buf[at..]).map_or(buf.len(), |e| at + e);
        if let Some(v) = buf[at..end].strip_prefix(KEY) {
            return parse_u64(v);
        }
        at = end + 1;
    }
    None
}

/// The first field of a `schedstat` line (run time in ns).
pub fn parse_schedstat(buf: &[u8]) -> Option<u64> {
    let end = memchr::memchr2(b' ', b'\n', buf).unwrap_or(buf.len());
    parse_u64(&buf[..end])
}

pub(crate) fn parse_u64(s: &[u8]) -> Option<u64> {
    let s = s.trim_ascii();
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(0u64, |v, &b| {
        b.is_ascii_digit()
            .then(|| v.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// Sums a process's thread run times into a counter that never goes backwards.
///
/// Problem: summing `task/*/schedstat` drops when a thread exits (its time leaves the sum), and a
/// thread first seen at a rescan would add all its past time at once. Approach: remember each
/// thread's last value and add only per-thread changes; a new thread's first reading is its
/// baseline. The task list is rescanned every `rescan_every` reads or when a thread vanishes.
#[derive(Debug)]
pub struct PidCounter {
    pid: u32,
    task_dir: PathBuf,
    tasks: Vec<Task>,
    total_ns: u64,
    reads_since_scan: u32,
    rescan_every: u32,
    buf: [u8; 128],
}

#[derive(Debug)]
struct Task {
    tid: u32,
    file: File,
    last_ns: u64,
}

impl PidCounter {
    pub fn new(proc_root: &Path, pid: u32, rescan_every: u32) -> Result<Self, ServiceError> {
        let mut me = Self {
            pid,
            task_dir: proc_root.join(pid.to_string()).join(PROC_TASKS),
            tasks: Vec::new(),
            total_ns: 0,
            reads_since_scan: 0,
            rescan_every: rescan_every.max(1),
            buf: [0; 128],
        };
        me.rescan()?;
        Ok(me)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn rescan(&mut self) -> Result<(), ServiceError> {
        self.reads_since_scan = 0;
        let entries = std::fs::read_dir(&self.task_dir).map_err(|source| ServiceError::Io {
            path: self.task_dir.clone(),
            source,
        })?;
        let mut seen = Vec::new();
        for e in entries.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            seen.push(tid);
            if self.tasks.iter().any(|t| t.tid == tid) {
                continue;
            }
            let Ok(file) = File::open(e.path().join(SCHEDSTAT)) else {
                continue; // exited between listing and opening
            };
            let mut task = Task {
                tid,
                file,
                last_ns: 0,
            };
            match read_schedstat(&task.file, &mut self.buf) {
                Some(v) => task.last_ns = v,
                None => continue,
            }
            self.tasks.push(task);
        }
        self.tasks.retain(|t| seen.contains(&t.tid));
        if self.tasks.is_empty() {
            return Err(ServiceError::NoThreads {
                pid: self.pid,
                path: self.task_dir.clone(),
            });
        }
        Ok(())
    }

    /// Reads every thread and returns the process's cumulative run time in ns (monotone).
    pub fn read(&mut self) -> Result<u64, ServiceError> {
        self.reads_since_scan += 1;
        let mut vanished = false;
        for t in &mut self.tasks {
            match read_schedstat(&t.file, &mut self.buf) {
                Some(v) if v >= t.last_ns => {
                    self.total_ns += v - t.last_ns;
                    t.last_ns = v;
                }
                Some(v) => t.last_ns = v, // a reused fd or a reset: new baseline
                None => {
                    vanished = true;
                    t.tid = 0;
                }
            }
        }
        if vanished || self.reads_since_scan >= self.rescan_every {
            self.tasks.retain(|t| t.tid != 0);
            self.rescan()?;
        }
        Ok(self.total_ns)
    }
}

fn read_schedstat(file: &File, buf: &mut [u8]) -> Option<u64> {
    let n = file.read_at(buf, 0).ok()?;
    parse_schedstat(&buf[..n])
}

/// The cgroup directory holding `pid`'s CPU accounting: the v1 `cpuacct` group when that
/// hierarchy exists (hybrid hosts), else the v2 group (under `unified/` on hybrid hosts).
pub fn cgroup_of_pid(
    proc_root: &Path,
    cgroup_root: &Path,
    pid: u32,
) -> Result<PathBuf, ServiceError> {
    let path = proc_root.join(pid.to_string()).join(PROC_CGROUP);
    let text = std::fs::read_to_string(&path).map_err(|source| ServiceError::Io {
        path: path.clone(),
        source,
    })?;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(rel)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rel = rel.trim_start_matches('/');
        if ctrls.split(',').any(|c| c == CPUACCT) {
            let dir = cgroup_root.join(ctrls).join(rel);
            if dir.exists() {
                return Ok(dir);
            }
            let dir = cgroup_root.join(CPUACCT).join(rel);
            if dir.exists() {
                return Ok(dir);
            }
        }
        if id == "0" && ctrls.is_empty() {
            v2 = Some(rel.to_owned());
        }
    }
    let Some(rel) = v2 else {
        return Err(ServiceError::Malformed {
            path,
            what: "no cpuacct or cgroup2 line",
        });
    };
    let unified = cgroup_root.join(UNIFIED_DIR);
    let base = if unified.join(CGROUP_CONTROLLERS).exists() {
        unified
    } else {
        cgroup_root.to_path_buf()
    };
    Ok(base.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v2_cpu_stat_and_v1_usage() {
        let v2 = b"usage_usec 264721888\nuser_usec 194399157\nsystem_usec 70322731\n";
        assert_eq!(parse_usage_usec(v2), Some(264_721_888));
        assert_eq!(parse_usage_usec(b"nr_periods 0\nusage_usec 5"), Some(5));
        assert_eq!(parse_usage_usec(b"nr_periods 0\nthrottled_time 9\n"), None);
        assert_eq!(parse_usage_usec(b"usage_usec x1\n"), None);
        assert_eq!(
            parse_schedstat(b"227881197 17169743 441\n"),
            Some(227_881_197)
        );
        assert_eq!(parse_schedstat(b"garbage"), None);
        assert_eq!(parse_u64(b"269711657523\n"), Some(269_711_657_523));
    }

    #[test]
    fn picks_v1_or_v2_by_the_files_present() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CPU_STAT), "usage_usec 7\n").unwrap();
        let c = CgroupCounter::open(dir.path()).unwrap();
        assert_eq!(c.kind, ServiceKind::CgroupV2);
        assert_eq!(c.parse(b"usage_usec 7\n").unwrap(), 7000);
        std::fs::write(dir.path().join(CPUACCT_USAGE), "123\n").unwrap();
        let c = CgroupCounter::open(dir.path()).unwrap();
        assert_eq!(c.kind, ServiceKind::CgroupV1);
        assert_eq!(c.parse(b"123\n").unwrap(), 123);
        assert!(c.parse(b"oops\n").is_err());
        let missing = CgroupCounter::open(&dir.path().join("gone")).unwrap_err();
        assert!(missing.to_string().contains("gone"), "{missing}");
    }

    fn fake_task(root: &Path, pid: u32, tid: u32, ns: u64) {
        let d = root
            .join(pid.to_string())
            .join("task")
            .join(tid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(SCHEDSTAT), format!("{ns} 0 1\n")).unwrap();
    }

    #[test]
    fn pid_counter_survives_threads_coming_and_going() {
        let root = tempfile::tempdir().unwrap();
        fake_task(root.path(), 42, 42, 1_000);
        fake_task(root.path(), 42, 43, 5_000);
        let mut c = PidCounter::new(root.path(), 42, 1000).unwrap();
        assert_eq!(c.read().unwrap(), 0, "first readings are baselines");
        fake_task(root.path(), 42, 42, 1_500);
        fake_task(root.path(), 42, 43, 5_200);
        assert_eq!(c.read().unwrap(), 700);
        // Thread 43 exits; its past time must not be subtracted. (On procfs a held fd of an
        // exited thread fails to read; an empty file stands in for that here.)
        std::fs::write(root.path().join("42/task/43/schedstat"), "").unwrap();
        std::fs::remove_dir_all(root.path().join("42/task/43")).unwrap();
        fake_task(root.path(), 42, 42, 1_600);
        assert_eq!(c.read().unwrap(), 800);
        // A new thread with a lot of past time counts only from its first reading.
        fake_task(root.path(), 42, 44, 9_999_999);
        c.rescan().unwrap();
        fake_task(root.path(), 42, 44, 10_000_099);
        assert_eq!(c.read().unwrap(), 900);
        std::fs::remove_dir_all(root.path().join("42")).unwrap();
        c.rescan_every = 1;
        assert!(matches!(
            c.read(),
            Err(ServiceError::Io { .. } | ServiceError::NoThreads { .. })
        ));
    }

    #[test]
    fn pid_counter_reads_a_real_process() {
        let me = std::process::id();
        let mut c = PidCounter::new(Path::new("/proc"), me, 10).unwrap();
        let a = c.read().unwrap();
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(7).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(c.read().unwrap() > a);
    }

    #[test]
    fn finds_a_pids_cgroup_on_hybrid_and_pure_v2_layouts() {
        let proc_root = tempfile::tempdir().unwrap();
        let cg = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(proc_root.path().join("7")).unwrap();
        std::fs::write(
            proc_root.path().join("7/cgroup"),
            "2:cpu,cpuacct:/svc\n0::/unified-svc\n",
        )
        .unwrap();
        std::fs::create_dir_all(cg.path().join("cpu,cpuacct/svc")).unwrap();
        assert_eq!(
            cgroup_of_pid(proc_root.path(), cg.path(), 7).unwrap(),
            cg.path().join("cpu,cpuacct/svc")
        );
        std::fs::write(
            proc_root.path().join("7/cgroup"),
            "0::/system.slice/mc.service\n",
        )
        .unwrap();
        assert_eq!(
            cgroup_of_pid(proc_root.path(), cg.path(), 7).unwrap(),
            cg.path().join("system.slice/mc.service")
        );
        std::fs::write(proc_root.path().join("7/cgroup"), "junk\n").unwrap();
        assert!(cgroup_of_pid(proc_root.path(), cg.path(), 7).is_err());
    }
}
