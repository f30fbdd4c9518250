//! A blocking epoll set with a nanosecond timeout (`epoll_pwait2`), for the probe and the load
//! generator: they sleep until a socket is ready or the next request is due, never spin.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// What a registered descriptor is watched for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    pub const READ: Interest = Interest {
        read: true,
        write: false,
    };
    pub const READ_WRITE: Interest = Interest {
        read: true,
        write: true,
    };

    fn bits(self) -> u32 {
        let mut bits = (libc::EPOLLRDHUP) as u32;
        if self.read {
            bits |= libc::EPOLLIN as u32;
        }
        if self.write {
            bits |= libc::EPOLLOUT as u32;
        }
        bits
    }
}

/// One readiness report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// Error or hang-up: the peer is gone or the socket failed.
    pub closed: bool,
}

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
    pwait2: bool,
}

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Self> {
        // SAFETY: epoll_create1 takes only flags and returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1, is valid and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
            pwait2: true,
        })
    }

    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, Interest::READ)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.bits(),
            u64: token,
        };
        // SAFETY: `ev` is a live epoll_event for the call; the kernel copies it and keeps no
        // pointer. A stale `fd` only makes the call fail with EBADF.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (None: forever) and calls `f` for each ready descriptor. Returns
    /// how many were ready; an interrupted wait returns 0.
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
        mut f: impl FnMut(Ready),
    ) -> io::Result<usize> {
        let n = self.wait_raw(timeout)?;
        for ev in &self.events[..n] {
            let bits = ev.events;
            f(Ready {
                token: ev.u64,
                readable: bits & (libc::EPOLLIN as u32) != 0,
                writable: bits & (libc::EPOLLOUT as u32) != 0,
                closed: bits & ((libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP) as u32) != 0,
            });
        }
        Ok(n)
    }

    fn wait_raw(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let max = self.events.len() as libc::c_int;
        let rc = if self.pwait2 {
            let ts = timeout.map(|t| libc::timespec {
                tv_sec: t.as_secs() as libc::time_t,
                tv_nsec: t.subsec_nanos() as libc::c_long,
            });
            let ts_ptr = ts
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `events` has room for `max` entries and outlives the call; `ts_ptr` is null
            // or points at `ts`, alive until the call returns; a null sigmask keeps the mask.
            unsafe {
                libc::epoll_pwait2(
                    self.fd.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    max,
                    ts_ptr,
                    std::ptr::null(),
                )
            }
        } else {
            let ms = timeout.map_or(-1, |t| {
                t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            });
            // SAFETY: `events` has room for `max` entries and outlives the call.
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), self.events.as_mut_ptr(), max, ms) }
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EINTR) => Ok(0),
                Some(libc::ENOSYS) if self.pwait2 => {
                    // Kernels before 5.11: fall back to millisecond timeouts.
                    self.pwait2 = false;
                    self.wait_raw(timeout)
                }
                _ => Err(err),
            };
        }
        Ok(rc as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reports_readable_and_times_out() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut ep = Epoll::new(8).unwrap();
        ep.add(b.as_raw_fd(), 7, Interest::READ).unwrap();
        let t0 = std::time::Instant::now();
        let n = ep.wait(Some(Duration::from_micros(300)), |_| {}).unwrap();
        assert_eq!(n, 0);
        assert!(t0.elapsed() >= Duration::from_micros(300));
        a.write_all(b"x").unwrap();
        let mut seen = Vec::new();
        ep.wait(Some(Duration::from_secs(1)), |r| seen.push(r))
            .unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].token, 7);
        assert!(seen[0].readable);
        drop(a);
        let mut closed = false;
        ep.wait(Some(Duration::from_secs(1)), |r| closed = r.closed)
            .unwrap();
        assert!(closed);
        ep.delete(b.as_raw_fd()).unwrap();
    }
}
