//! The exit watcher: one thread polls the pidfds of all waiters and, when one ends, reads the
//! job's exit record and sends an [`ExitEvent`].

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::{pipe2, read, write};

use crate::model::exit::{ExitEvent, ExitStatus};
use crate::model::job::JobId;
use crate::sys::PendingSpawn;

/// A waiter to watch: its pidfd and where its job's record is.
#[derive(Debug)]
pub struct Watch {
    pub job: JobId,
    pub pidfd: OwnedFd,
    pub record: PathBuf,
    /// A waiter started without waiting for its exec: whether the exec worked is still to be
    /// read (and its memory freed) here.
    pub pending: Option<PendingSpawn>,
    /// The waiter binary, for messages.
    pub shim: PathBuf,
}

impl Watch {
    pub fn new(job: JobId, pidfd: OwnedFd, record: PathBuf) -> Self {
        Self {
            job,
            pidfd,
            record,
            pending: None,
            shim: PathBuf::new(),
        }
    }

    /// Collects the exec outcome of a pending waiter; `Some(why)` if it could not start.
    fn settle(&mut self) -> Option<String> {
        let pending = self.pending.take()?;
        pending
            .finish()
            .err()
            .map(|e| format!("cannot start its waiter {}: {e}", self.shim.display()))
    }
}

enum Msg {
    Watch(Watch),
    Stop,
}

/// Handle on the watcher thread; dropping it stops the thread (the jobs go on).
#[derive(Debug)]
pub struct Reaper {
    tx: Sender<Msg>,
    /// Write end of the self-pipe that wakes the thread's poll.
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Watch(w) => write!(f, "Watch({:?})", w.job),
            Self::Stop => f.write_str("Stop"),
        }
    }
}

impl Reaper {
    pub fn start(events: Sender<ExitEvent>) -> std::io::Result<Self> {
        let (woken, wake) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let wake = Arc::new(wake);
        let (tx, rx) = unbounded();
        let thread = std::thread::Builder::new()
            .name("lowsched-reaper".into())
            .spawn(move || run(&rx, &woken, &events))?;
        Ok(Self {
            tx,
            wake,
            thread: Some(thread),
        })
    }

    pub fn watch(&self, w: Watch) {
        let _ = self.tx.send(Msg::Watch(w));
        let _ = write(&*self.wake, b"w");
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        let _ = write(&*self.wake, b"s");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: &Receiver<Msg>, wake: &OwnedFd, events: &Sender<ExitEvent>) {
    let mut watches: Vec<Watch> = Vec::new();
    // Per watch: why its waiter could not start, once known.
    let mut failed: Vec<Option<String>> = Vec::new();
    loop {
        let (woken, ended, settled) = {
            // [wake, pidfd per watch, pending exec pipe per watch (or the pidfd again)]
            let mut fds = vec![PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
            fds.extend(
                watches
                    .iter()
                    .map(|w| PollFd::new(w.pidfd.as_fd(), PollFlags::POLLIN)),
            );
            fds.extend(watches.iter().map(|w| match &w.pending {
                Some(p) => PollFd::new(p.fd(), PollFlags::POLLIN),
                None => PollFd::new(w.pidfd.as_fd(), PollFlags::empty()),
            }));
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
            let ready = |f: &PollFd<'_>| {
                f.revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
            };
            let n = watches.len();
            let ended: Vec<usize> = (0..n).filter(|&i| ready(&fds[1 + i])).collect();
            let settled: Vec<usize> = (0..n)
                .filter(|&i| watches[i].pending.is_some() && ready(&fds[1 + n + i]))
                .collect();
            (ready(&fds[0]), ended, settled)
        };
        for i in settled {
            failed[i] = watches[i].settle();
        }
        for i in ended.into_iter().rev() {
            let mut w = watches.swap_remove(i);
            let why = failed.swap_remove(i).or_else(|| w.settle());
            let status = match why {
                Some(why) => {
                    reap(&w);
                    ExitStatus::NotStarted(why)
                }
                None => finish(&w),
            };
            let _ = events.send(ExitEvent { job: w.job, status });
        }
        if woken {
            let mut buf = [0u8; 64];
            while matches!(read(wake, &mut buf), Ok(n) if n > 0) {}
            for msg in rx.try_iter() {
                match msg {
                    Msg::Watch(w) => {
                        watches.push(w);
                        failed.push(None);
                    }
                    Msg::Stop => return,
                }
            }
        }
    }
}

/// Reaps the waiter if it is our child (a waiter adopted after a restart is not: ECHILD) and
/// says how it ended.
fn reap(w: &Watch) -> String {
    match waitid(
        Id::PIDFd(w.pidfd.as_fd()),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
    ) {
        Ok(ws) => wait_status(&ws),
        Err(e) => format!("not our child: {e}"),
    }
}

/// How a waiter process ended, in words.
fn wait_status(ws: &nix::sys::wait::WaitStatus) -> String {
    use nix::sys::wait::WaitStatus as W;
    match ws {
        W::Exited(pid, code) => format!("pid {pid} exited with {code}"),
        W::Signaled(pid, sig, core) => {
            let core = if *core { " (core dumped)" } else { "" };
            format!("pid {pid} killed by {sig}{core}")
        }
        W::Stopped(pid, sig) => format!("pid {pid} stopped by {sig}"),
        W::StillAlive => "still running".into(),
        W::Continued(pid) => format!("pid {pid} continued"),
        _ => "in an unusual state".into(),
    }
}

/// The job's status once its waiter ended: the record, or `Lost` saying what the waiter did.
fn finish(w: &Watch) -> ExitStatus {
    let waiter = reap(w);
    read_record(&w.record).unwrap_or_else(|why| {
        ExitStatus::Lost(format!(
            "its waiter ended ({waiter}) without recording the job's exit: {why}"
        ))
    })
}

/// The ended job's status from its record, or why there is none.
pub fn read_record(path: &std::path::Path) -> Result<ExitStatus, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match ExitStatus::from_record(&text) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(format!("{} is empty", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
