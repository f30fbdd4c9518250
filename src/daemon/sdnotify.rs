//! systemd's notify protocol: READY=1, STATUS=…, WATCHDOG=1 and STOPPING=1 datagrams to
//! `$NOTIFY_SOCKET`, and the watchdog interval from `$WATCHDOG_USEC`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
const WATCHDOG_PID: &str = "WATCHDOG_PID";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot send {state:?} to notify socket {socket}: {source}")]
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
