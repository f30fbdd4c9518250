//! The client side of the socket protocol: connect, send one request, read its response.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::protocol::{ErrorCode, JobStatus, ProtocolError, Reply, Request, Response};
use crate::model::job::JobId;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/lowsched/lowsched.sock";
/// Environment variable naming the socket.
pub const SOCKET_ENV: &str = "LOWSCHED_SOCKET";

/// The socket to use: the explicit flag, else `$LOWSCHED_SOCKET`, else the default.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(SOCKET_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the lowsched daemon at {path}: {source} (is `lowsched daemon` running? set --socket or {SOCKET_ENV})"
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error(
        "permission denied on the lowsched socket {path}: it admits root and the group \
         '{group}'; ask an administrator to add you (usermod -aG {group} USER), then log in \
         again"
    )]
    Permission { path: PathBuf, group: String },
    #[error("lost the connection to the daemon at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the daemon at {path} closed the connection without answering")]
    Closed { path: PathBuf },
    #[error("the daemon sent an answer this client cannot read ({why}): {line}")]
    Garbled { why: String, line: String },
    /// The daemon answered with an error.
    #[error("{0}")]
    Refused(ProtocolError),
}

/// A refused connect names the socket's group, which a user must join; other errors as they are.
fn connect_error(path: &Path, source: io::Error) -> ClientError {
    use std::os::unix::fs::MetadataExt;
    if source.kind() == io::ErrorKind::PermissionDenied {
        if let Ok(meta) = std::fs::metadata(path) {
            let gid = nix::unistd::Gid::from_raw(meta.gid());
            let group = nix::unistd::Group::from_gid(gid)
                .ok()
                .flatten()
                .map_or_else(|| gid.to_string(), |g| g.name);
            return ClientError::Permission {
                path: path.to_path_buf(),
                group,
            };
        }
    }
    ClientError::Connect {
        path: path.to_path_buf(),
        source,
    }
}

/// A connection to the daemon. Requests on one connection are answered in order.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| connect_error(path, source))?;
        let reader = stream.try_clone().map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Client {
            path: path.to_path_buf(),
            writer: stream,
            reader: BufReader::new(reader),
        })
    }

    /// Bounds how long one answer may take (`None`: wait forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), ClientError> {
        self.writer
            .set_read_timeout(t)
            .map_err(|source| self.io(source))
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends a request without waiting for its answer (pipelining); pair with [`Client::recv`].
    ///
    /// A daemon at its connection limit answers `busy` and closes before reading anything, so
    /// the write can fail with a broken pipe while that answer waits unread: the answer is the
    /// error worth reporting, not the pipe.
    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = req.to_line();
        line.push('\n');
        match self.writer.write_all(line.as_bytes()) {
            Ok(()) => Ok(()),
            Err(source) => match self.recv() {
                Err(refused @ ClientError::Refused(_)) => Err(refused),
                _ => Err(self.io(source)),
            },
        }
    }

    /// Reads the next answer.
    pub fn recv(&mut self) -> Result<Reply, ClientError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        let resp: Response =
            serde_json::from_str(line.trim_end()).map_err(|e| ClientError::Garbled {
                why: e.to_string(),
                line: line.trim_end().to_string(),
            })?;
        match (resp.ok, resp.error, resp.reply) {
            (false, Some(e), _) => Err(ClientError::Refused(e)),
            (true, None, Some(reply)) => Ok(reply),
            _ => Err(ClientError::Garbled {
                why: "neither a result nor an error".into(),
                line: line.trim_end().to_string(),
            }),
        }
    }

    /// One request, one answer.
    pub fn call(&mut self, req: &Request) -> Result<Reply, ClientError> {
        self.send(req)?;
        self.recv()
    }
}

/// How long [`call`] keeps retrying a daemon that answers `busy`.
pub const BUSY_PATIENCE: Duration = Duration::from_secs(10);

/// One request on a fresh connection. A `busy` daemon refused the connection before reading the
/// request, so nothing was done and the request is sent again, with back-off, for up to
/// `patience`.
pub fn call(path: &Path, req: &Request, patience: Duration) -> Result<Reply, ClientError> {
    let deadline = std::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(10);
    loop {
        match Client::connect(path)?.call(req) {
            Err(ClientError::Refused(e))
                if e.code == ErrorCode::Busy && std::time::Instant::now() + pause < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// How long [`wait_job`] keeps trying to reach a daemon that went away (a restart) before it
/// gives up: systemd restarts a failed daemon within seconds, recovery takes seconds more.
pub const RECONNECT_PATIENCE: Duration = Duration::from_secs(120);

/// Whether `e` means the daemon is not there right now (stopping, restarting): the socket is
/// missing or refuses, the connection broke or closed, or the daemon answered `busy`.
fn daemon_gone(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { source, .. } => matches!(
            source.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        ),
        ClientError::Io { .. } | ClientError::Closed { .. } => true,
        ClientError::Refused(p) => p.code == ErrorCode::Busy,
        ClientError::Permission { .. } | ClientError::Garbled { .. } => false,
    }
}

/// Waits until job `id` ends and returns its final status, across daemon restarts: when the
/// daemon goes away, it reconnects with back-off (50 ms doubling to 1 s) for up to `patience`
/// since the daemon was last reachable, then asks for the job again (the next daemon adopted
/// it, so its real end is reported). Any other error ends the wait.
pub fn wait_job(path: &Path, id: JobId, patience: Duration) -> Result<JobStatus, ClientError> {
    let mut lost: Option<std::time::Instant> = None;
    let mut pause = Duration::from_millis(50);
    loop {
        let err = match wait_on_one_connection(path, id, &mut lost) {
            Ok(job) => return Ok(job),
            Err(e) if daemon_gone(&e) => e,
            Err(e) => return Err(e),
        };
        let since = *lost.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() + pause > patience {
            return Err(err);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Waits on one connection until the job ends or the connection fails; a connection that
/// answers clears `lost`.
fn wait_on_one_connection(
    path: &Path,
    id: JobId,
    lost: &mut Option<std::time::Instant>,
) -> Result<JobStatus, ClientError> {
    let mut client = Client::connect(path)?;
    loop {
        let req = Request::Wait(crate::api::protocol::Wait {
            id,
            timeout_ms: 30_000,
        });
        match client.call(&req)? {
            Reply::Waited { done: true, job } => return Ok(job),
            Reply::Waited { done: false, .. } => *lost = None,
            other => {
                return Err(ClientError::Garbled {
                    why: "expected an answer to wait".into(),
                    line: serde_json::to_string(&other).unwrap_or_default(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::protocol::Status;
    use crate::model::job::JobId;
    use std::os::unix::net::UnixListener;

    /// A fake daemon: the first `busy` connections get `busy` before anything is read and are
    /// closed; the next is answered `answer`.
    fn fake_daemon(dir: &Path, busy: usize, answer: Response) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(dir.join("sock")).unwrap();
        std::thread::spawn(move || {
            for _ in 0..busy {
                let (mut s, _) = listener.accept().unwrap();
                let e = ProtocolError::new(ErrorCode::Busy, "too many connections");
                let _ = s.write_all(format!("{}\n", Response::err(e).to_line()).as_bytes());
            }
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(format!("{}\n", answer.to_line()).as_bytes())
                .unwrap();
        })
    }

    fn status() -> Request {
        Request::Status(Status { id: None })
    }

    #[test]
    fn a_busy_daemon_is_asked_again_until_it_answers() {
        let dir = tempfile::tempdir().unwrap();
        let ok = Response::ok(Reply::Submitted { id: JobId(7) });
        let server = fake_daemon(dir.path(), 3, ok);
        let reply = call(&dir.path().join("sock"), &status(), Duration::from_secs(10)).unwrap();
        assert_eq!(reply, Reply::Submitted { id: JobId(7) });
        server.join().unwrap();
    }

    #[test]
    fn busy_past_the_patience_is_reported_as_busy_not_as_a_broken_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let ok = Response::ok(Reply::Submitted { id: JobId(7) });
        let _server = fake_daemon(dir.path(), 1000, ok);
        let err = call(&dir.path().join("sock"), &status(), Duration::ZERO).unwrap_err();
        assert!(
            matches!(&err, ClientError::Refused(e) if e.code == ErrorCode::Busy),
            "{err}"
        );
    }
}
