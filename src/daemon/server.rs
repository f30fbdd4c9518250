//! The daemon's Unix socket: accepts connections, identifies callers by SO_PEERCRED, frames
//! newline-delimited requests and hands them to a [`Handler`].
//!
//! Client input can never stall or crash the daemon: at most `max_connections` are served at
//! once (the next one gets a `busy` error and is closed), a request line over
//! [`MAX_REQUEST`] gets a `too_large` error and the connection is closed (it cannot be
//! resynchronised), a client idle or stalled mid-line longer than `idle_timeout` is dropped, and
//! writes to a client that stopped reading time out. Requests that arrive together on one
//! connection (pipelining) are handed over as one batch, so their journal writes share an fsync.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Group, Uid, chown};

use crate::api::protocol::{ErrorCode, MAX_REQUEST, ProtocolError, Request, Response};

/// The group whose members may use the socket, if it exists.
pub const SOCKET_GROUP: &str = "lowsched";

/// The gid of [`SOCKET_GROUP`], if the group exists: its members use the socket and read the
/// event logs.
pub fn socket_gid() -> Option<u32> {
    Group::from_name(SOCKET_GROUP)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// Who is on the other end of a connection, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

impl Caller {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Answers requests. Implemented by the daemon; tests use small fakes.
pub trait Handler: Send + Sync + 'static {
    /// Answers a batch of requests from one connection, one response per entry, in order.
    /// Entries that failed to parse arrive as errors and must be answered with them.
    fn handle_batch(
        &self,
        caller: &Caller,
        reqs: Vec<Result<Request, ProtocolError>>,
    ) -> Vec<Response>;
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another daemon is already listening on {0}")]
    InUse(PathBuf),
    #[error("cannot create socket directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot remove stale socket {path}: {source}")]
    Stale { path: PathBuf, source: io::Error },
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set owner or mode of {path}: {source}")]
    Permissions { path: PathBuf, source: io::Error },
}

/// Limits on what clients may do.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections of non-root users at once.
    pub max_connections: usize,
    /// Connections of one non-root user at once, so that one user cannot lock the others out.
    /// Root is never refused for this and has [`ROOT_RESERVE`] connections beyond the total.
    pub max_per_user: usize,
    /// A client silent this long (between requests or inside one) is disconnected.
    pub idle_timeout: Duration,
    /// A client that does not read its answers for this long is disconnected.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 128,
            max_per_user: 16,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Connections root may open beyond `max_connections`: root (the admin, a health check, the
/// daemon stopping itself) always gets in, however many other users' connections are open.
pub const ROOT_RESERVE: usize = 32;

/// Open connections, in all and per non-root uid.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    root: usize,
    by_uid: std::collections::HashMap<u32, usize>,
}

/// A bound, listening socket.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    limits: Limits,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    counts: Arc<std::sync::Mutex<Counts>>,
}

impl Server {
    /// Binds `path` (mode 0660, group `lowsched` if it exists, else root's), replacing a stale
    /// socket file but never a live daemon's.
    pub fn bind(path: &Path, limits: Limits) -> Result<Server, ServerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| ServerError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            fs::remove_file(path).map_err(|source| ServerError::Stale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        let perm = |source| ServerError::Permissions {
            path: path.to_path_buf(),
            source,
        };
        let group = Group::from_name(SOCKET_GROUP).ok().flatten().map(|g| g.gid);
        if Uid::effective().is_root() {
            chown(
                path,
                Some(Uid::from_raw(0)),
                Some(group.unwrap_or(Gid::from_raw(0))),
            )
            .map_err(|e| perm(io::Error::from(e)))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(perm)?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            limits,
            stop: Arc::new(AtomicBool::new(false)),
            active: Arc::new(AtomicUsize::new(0)),
            counts: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A flag that makes [`Server::serve`] return when set: at the next connection (the daemon
    /// makes one to its own socket to stop), or within a second.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Connections being served right now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Accepts and serves connections until the stop flag is set; then removes the socket file.
    /// Connections already open finish on their own threads.
    pub fn serve<H: Handler>(&self, handler: Arc<H>) {
        while !self.stop.load(Ordering::Relaxed) {
            let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            // A long timeout: the wake-up is the only cost of an idle daemon's accept thread.
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(0) => continue,
                Ok(_) if self.stop.load(Ordering::Relaxed) => break,
                Ok(_) => {}

                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    crate::log::error(&format!("poll on {}: {e}", self.path.display()));
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    crate::log::warn(&format!("accept on {}: {e}", self.path.display()));
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            self.dispatch(stream, &handler);
        }
        let _ = fs::remove_file(&self.path);
    }

    /// Admits a connection of `caller` (counting it) or says why not.
    fn admit(&self, caller: &Caller) -> Result<(), String> {
        let limits = self.limits;
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if caller.is_root() {
            if c.total >= limits.max_connections + ROOT_RESERVE {
                return Err(format!(
                    "too many connections ({} open, root's reserve used up); try again",
                    c.total
                ));
            }
        } else {
            let mine = c.by_uid.get(&caller.uid).copied().unwrap_or(0);
            if mine >= limits.max_per_user {
                return Err(format!(
                    "too many connections from uid {} (limit {} per user); close some and try again",
                    caller.uid, limits.max_per_user
                ));
            }
            if c.total - c.root >= limits.max_connections {
                return Err(format!(
                    "too many connections (limit {}); try again",
                    limits.max_connections
                ));
            }
            *c.by_uid.entry(caller.uid).or_default() += 1;
        }
        if caller.is_root() {
            c.root += 1;
        }
        c.total += 1;
        self.active.store(c.total, Ordering::Relaxed);
        Ok(())
    }

    /// Counts a connection of `caller` as closed.
    fn release(counts: &std::sync::Mutex<Counts>, active: &AtomicUsize, caller: &Caller) {
        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if caller.is_root() {
            c.root = c.root.saturating_sub(1);
        } else {
            if let Some(n) = c.by_uid.get_mut(&caller.uid) {
                *n -= 1;
                if *n == 0 {
                    c.by_uid.remove(&caller.uid);
                }
            }
        }
        active.store(c.total, Ordering::Relaxed);
    }

    fn dispatch<H: Handler>(&self, stream: UnixStream, handler: &Arc<H>) {
        let limits = self.limits;
        let _ = stream.set_write_timeout(Some(limits.write_timeout));
        let refuse = |code, msg: String| {
            let _ = (&stream).write_all(
                Response::err(ProtocolError::new(code, msg))
                    .to_line()
                    .as_bytes(),
            );
        };
        let Some(caller) = peer(&stream) else {
            refuse(
                ErrorCode::Forbidden,
                "cannot identify the caller (SO_PEERCRED)".into(),
            );
            return;
        };
        if let Err(msg) = self.admit(&caller) {
            refuse(ErrorCode::Busy, msg);
            return;
        }
        let (active, counts) = (self.active.clone(), self.counts.clone());
        let handler = handler.clone();
        let spawned = std::thread::Builder::new()
            .name("lowsched-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                serve_connection(stream, &*handler, limits);
                Self::release(&counts, &active, &caller);
            });
        if let Err(e) = spawned {
            Self::release(&self.counts, &self.active, &caller);
            crate::log::error(&format!("cannot start a connection thread: {e}"));
        }
    }
}

/// The credentials of the peer, or `None` if the kernel will not say (then the peer is refused).
pub fn peer(stream: &UnixStream) -> Option<Caller> {
    let cred = getsockopt(stream, PeerCredentials).ok()?;
    Some(Caller {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    })
}

/// Serves one connection until the client closes it, misbehaves, or goes idle.
pub fn serve_connection<H: Handler + ?Sized>(stream: UnixStream, handler: &H, limits: Limits) {
    let Some(caller) = peer(&stream) else {
        let e = ProtocolError::new(
            ErrorCode::Forbidden,
            "cannot identify the caller (SO_PEERCRED)",
        );
        let _ = (&stream).write_all(Response::err(e).to_line().as_bytes());
        return;
    };
    let _ = stream.set_read_timeout(Some(limits.idle_timeout));
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    // When the unfinished line in `buf` began: a client trickling bytes must finish a request
    // within the idle timeout too, not just send something every so often.
    let mut partial_since: Option<Instant> = None;
    loop {
        let n = match (&stream).read(&mut chunk) {
            Ok(0) => {
                // Closed, or half-closed: nothing more will come, but the client may still be
                // reading. A last line without its newline is answered like any other.
                let line = buf.strip_suffix(b"\r").unwrap_or(&buf);
                if !line.iter().all(u8::is_ascii_whitespace) {
                    let out = handler.handle_batch(&caller, vec![Request::parse(line)]);
                    let _ = (&stream).write_all(
                        out.iter()
                            .map(Response::to_line)
                            .collect::<String>()
                            .as_bytes(),
                    );
                }
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return, // idle timeout or reset
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut reqs = Vec::new();
        let mut consumed = 0;
        while let Some(pos) = memchr::memchr(b'\n', &buf[consumed..]) {
            let line = &buf[consumed..consumed + pos];
            consumed += pos + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            reqs.push(Request::parse(line));
        }
        buf.drain(..consumed);
        let too_large = buf.len() >= MAX_REQUEST;
        partial_since = if buf.is_empty() {
            None
        } else {
            partial_since.or(Some(Instant::now()))
        };
        if partial_since.is_some_and(|t| t.elapsed() > limits.idle_timeout) {
            let e = ProtocolError::new(
                ErrorCode::BadRequest,
                "request not finished in time; closing",
            );
            let _ = (&stream).write_all(Response::err(e).to_line().as_bytes());
            return;
        }
        if !reqs.is_empty() {
            let out: String = handler
                .handle_batch(&caller, reqs)
                .iter()
                .map(Response::to_line)
                .collect();
            if (&stream).write_all(out.as_bytes()).is_err() {
                return;
            }
        }
        if too_large {
            let e = ProtocolError::new(
                ErrorCode::TooLarge,
                format!("request line exceeds {MAX_REQUEST} bytes; closing the connection"),
            );
            let _ = (&stream).write_all(Response::err(e).to_line().as_bytes());
            return;
        }
    }
}

#[cfg(test)]
mod tests;
