//! systemd's notify protocol: READY=1, STATUS=…, WATCHDOG=1, STOPPING=1 and
//! EXTEND_TIMEOUT_USEC=… datagrams to `$NOTIFY_SOCKET`, and the watchdog interval from
//! `$WATCHDOG_USEC`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// While the daemon starts (journal replay, adopting jobs), it asks systemd for this much more
/// time every [`EXTEND_EVERY`], so a long recovery is not killed by `TimeoutStartSec`...
pub const EXTEND_BY: Duration = Duration::from_secs(30);
pub const EXTEND_EVERY: Duration = Duration::from_secs(10);
/// ...but not forever: a start-up stuck this long lets systemd's timeout act again.
pub const EXTEND_AT_MOST: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot send {} to notify socket {socket}: {source}", crate::model::text::quoted(.state))]
    Send {
        socket: String,
        state: String,
        source: io::Error,
    },
}

/// A handle on the service manager's notify socket; a no-op when not run by systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(String, SocketAddr, UnixDatagram)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
    pub fn from_env() -> Notifier {
        let target = std::env::var(NOTIFY_SOCKET).ok().and_then(|name| {
            let addr = match name.strip_prefix('@') {
                Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()).ok()?,
                None => SocketAddr::from_pathname(PathBuf::from(&name)).ok()?,
            };
            let sock = UnixDatagram::unbound().ok()?;
            Some((name, addr, sock))
        });
        Notifier { target }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends newline-separated assignments, e.g. `READY=1\nSTATUS=…`.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some((name, addr, sock)) = &self.target else {
            return Ok(());
        };
        sock.send_to_addr(state.as_bytes(), addr)
            .map(|_| ())
            .map_err(|source| NotifyError::Send {
                socket: name.clone(),
                state: state.to_string(),
                source,
            })
    }

    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&format!("STATUS={}", one_line(status)))
    }

    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify("WATCHDOG=1")
    }

    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.notify("STOPPING=1")
    }

    /// Asks systemd to let start-up run `by` longer from now.
    pub fn extend_timeout(&self, by: Duration, status: &str) -> Result<(), NotifyError> {
        self.notify(&format!(
            "EXTEND_TIMEOUT_USEC={}\nSTATUS={}",
            by.as_micros(),
            one_line(status)
        ))
    }

    /// Until [`Starting::done`] (or drop), asks for more start-up time every `every` (by
    /// `by`), for at most `at_most`. Nothing happens when not run by systemd.
    pub fn keep_starting(&self, every: Duration, by: Duration, at_most: Duration) -> Starting {
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        let Some((name, addr, sock)) = &self.target else {
            return Starting {
                done: tx,
                thread: None,
            };
        };
        let Ok(sock) = sock.try_clone() else {
            return Starting {
                done: tx,
                thread: None,
            };
        };
        let me = Notifier {
            target: Some((name.clone(), addr.clone(), sock)),
        };
        let thread = std::thread::Builder::new()
            .name("lowsched-starting".into())
            .spawn(move || {
                let began = Instant::now();
                while began.elapsed() < at_most {
                    let status = format!("starting: recovering ({} s)", began.elapsed().as_secs());
                    if let Err(e) = me.extend_timeout(by, &status) {
                        crate::log::warn(&e.to_string());
                    }
                    match rx.recv_timeout(every) {
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })
            .ok();
        Starting { done: tx, thread }
    }
}

/// A start-up in progress (see [`Notifier::keep_starting`]).
#[derive(Debug)]
pub struct Starting {
    done: crossbeam_channel::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Starting {
    /// Stops asking for more time (call before READY=1).
    pub fn done(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.done.send(());
            let _ = t.join();
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.stop();
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// How often to send WATCHDOG=1: half of `$WATCHDOG_USEC`, if the watchdog is meant for us.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var(WATCHDOG_PID) {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var(WATCHDOG_USEC).ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_watchdog_and_stopping_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some((
                path.display().to_string(),
                SocketAddr::from_pathname(&path).unwrap(),
                UnixDatagram::unbound().unwrap(),
            )),
        };
        n.ready("up\n2 jobs").unwrap();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up 2 jobs");
        n.watchdog().unwrap();
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        n.stopping().unwrap();
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
        // A long start-up asks for more time until it is done.
        let starting = n.keep_starting(
            Duration::from_millis(20),
            Duration::from_secs(30),
            Duration::from_secs(60),
        );
        for _ in 0..2 {
            let len = server.recv(&mut buf).unwrap();
            let text = std::str::from_utf8(&buf[..len]).unwrap();
            assert!(
                text.starts_with("EXTEND_TIMEOUT_USEC=30000000\nSTATUS=starting"),
                "{text}"
            );
        }
        starting.done();
        server.set_nonblocking(true).unwrap();
        while server.recv(&mut buf).is_ok() {}
        std::thread::sleep(Duration::from_millis(60));
        assert!(server.recv(&mut buf).is_err(), "nothing after done");
        // A socket that went away is an error naming it and what was not sent.
        drop(server);
        std::fs::remove_file(&path).unwrap();
        let err = n.watchdog().unwrap_err().to_string();
        assert!(
            err.contains("WATCHDOG=1") && err.contains(&path.display().to_string()),
            "{err}"
        );
    }
}
