//! One cgroup control file held open ("knob"), and the waits on `cgroup.events` and
//! `freezer.state` that turn a request (freeze, kill) into a confirmed state.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::time::TimeSpec;

use super::CgroupError;

/// Longest sleep between two reads of a file a wait watches, with or without a notification.
///
/// cgroupfs rate-limits change notifications to one per 10 ms per file (a second change
/// within 10 ms is announced only when a timer fires), so a freeze right after a thaw of the
/// same group would sleep up to 10 ms in poll. Waits therefore re-read after a short sleep
/// that doubles from [`FIRST_RECHECK`] up to this. It also lets waits on fake (regular-file)
/// trees see changes.
const RECHECK: Duration = Duration::from_millis(10);
const FIRST_RECHECK: Duration = Duration::from_micros(20);

/// A cgroup file opened once and written or read at offset 0 on every use.
#[derive(Debug)]
pub struct Knob {
    path: PathBuf,
    file: File,
    /// Not on a cgroup filesystem (a test fake): a write replaces the content, as a cgroup
    /// file's would.
    plain: bool,
}

impl Knob {
    pub fn open_write(path: PathBuf) -> Result<Self, CgroupError> {
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| CgroupError::io("open", &path, e))?;
        Ok(Self::new(path, file))
    }

    fn new(path: PathBuf, file: File) -> Self {
        let plain = !nix::sys::statfs::fstatfs(&file).is_ok_and(|fs| {
            let t = fs.filesystem_type();
            t == nix::sys::statfs::CGROUP2_SUPER_MAGIC || t == nix::sys::statfs::CGROUP_SUPER_MAGIC
        });
        Self { path, file, plain }
    }

    pub fn open_read(path: PathBuf) -> Result<Self, CgroupError> {
        let file = File::open(&path).map_err(|e| CgroupError::io("open", &path, e))?;
        Ok(Self::new(path, file))
    }

    pub fn open_rw(path: PathBuf) -> Result<Self, CgroupError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| CgroupError::io("open", &path, e))?;
        Ok(Self::new(path, file))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One write(2) of `data` at offset 0: cgroup files take each write as one command.
    pub fn write(&self, data: &str) -> Result<(), CgroupError> {
        match self.file.write_at(data.as_bytes(), 0) {
            Ok(n) if n == data.len() => {
                if self.plain {
                    self.file
                        .set_len(n as u64)
                        .map_err(|e| CgroupError::write(&self.path, data, e))?;
                }
                Ok(())
            }
            Ok(n) => Err(CgroupError::write(
                &self.path,
                data,
                io::Error::other(format!("short write: {n} of {} bytes", data.len())),
            )),
            Err(e) => Err(CgroupError::write(&self.path, data, e)),
        }
    }

    /// The whole file, read from offset 0 (cgroupfs regenerates it on every read at 0).
    pub fn read(&self) -> Result<String, CgroupError> {
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        loop {
            let n = self
                .file
                .read_at(&mut buf[len..], len as u64)
                .map_err(|e| CgroupError::io("read", &self.path, e))?;
            if n == 0 {
                break;
            }
            len += n;
            if len == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
        }
        buf.truncate(len);
        String::from_utf8(buf).map_err(|e| CgroupError::Parse {
            path: self.path.clone(),
            text: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            what: "not UTF-8".into(),
        })
    }

    /// Waits until the flat-keyed file (`cgroup.events`: `populated 0\nfrozen 1\n`) has
    /// `key` equal to `want`. Reads, and if not there yet sleeps in poll(POLLPRI), which
    /// cgroupfs signals on every change; reading re-arms the notification.
    pub fn wait_key(&self, key: &str, want: &str, timeout: Duration) -> Result<(), CgroupError> {
        let start = Instant::now();
        let mut slice = FIRST_RECHECK;
        loop {
            let text = self.read()?;
            let value = keyed(&text, key).ok_or_else(|| CgroupError::Parse {
                path: self.path.clone(),
                text: text.clone(),
                what: format!("no {} line", crate::model::text::quoted(key)),
            })?;
            if value == want {
                return Ok(());
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(CgroupError::Timeout {
                    path: self.path.clone(),
                    what: format!("{key} {want}"),
                    waited: start.elapsed(),
                });
            }
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLPRI)];
            let wait = TimeSpec::from_duration(left.min(slice));
            slice = (slice * 2).min(RECHECK);
            match ppoll(&mut fds, Some(wait), None) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(CgroupError::io("poll", &self.path, e.into())),
            }
        }
    }

    /// Waits until the whole (trimmed) file reads `want`, re-reading with a growing pause:
    /// v1 `freezer.state` has no notification (FREEZING → FROZEN).
    pub fn wait_value(&self, want: &str, timeout: Duration) -> Result<(), CgroupError> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(10);
        loop {
            if self.read()?.trim() == want {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(CgroupError::Timeout {
                    path: self.path.clone(),
                    what: want.to_string(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }
}

/// The value of `key` in a flat-keyed file (`key value` per line).
pub fn keyed<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim())
    })
}

/// Reads a small file by path.
pub fn read_path(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| CgroupError::io("read", path, e))
}

/// One write to a file by path (open, write, close): for cold-path settings.
pub fn write_path(path: &Path, data: &str) -> Result<(), CgroupError> {
    Knob::open_write(path.to_path_buf())?.write(data)
}

/// The pids in a `cgroup.procs` file.
pub fn parse_pids(text: &str) -> Vec<nix::unistd::Pid> {
    text.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .map(nix::unistd::Pid::from_raw)
        .collect()
}

impl AsRawFd for Knob {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}
