//! io_uring for the samplers: one submission per period sleeps until an absolute
//! `CLOCK_MONOTONIC` deadline and then reads a few files at offset 0 — one syscall, no separate
//! sleep.
//!
//! The chain is `Timeout(ABS) → Read → Read …`, hard-linked: a plain link would be severed by
//! the timeout's `-ETIME` and by every short read (and reading a proc file into a larger buffer is
//! always short), which would cancel the reads behind it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::{IoUring, opcode, squeue, types};

const TIMEOUT_TAG: u64 = u64::MAX;

/// A ring with one read buffer per file slot.
pub struct DeadlineReads {
    ring: IoUring,
    deadline: Box<types::Timespec>,
    bufs: Vec<Vec<u8>>,
    results: Vec<i32>,
}

impl std::fmt::Debug for DeadlineReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineReads")
            .field("slots", &self.bufs.len())
            .finish_non_exhaustive()
    }
}

impl DeadlineReads {
    /// A ring able to read up to `slots` files per period, each into a buffer of `capacity` bytes.
    pub fn new(slots: usize, capacity: usize) -> io::Result<Self> {
        let entries = (slots as u32 + 1).next_power_of_two().max(4);
        Ok(Self {
            ring: IoUring::new(entries)?,
            deadline: Box::new(types::Timespec::new()),
            bufs: vec![vec![0; capacity.max(1)]; slots],
            results: vec![0; slots],
        })
    }

    pub fn slots(&self) -> usize {
        self.bufs.len()
    }

    pub fn capacity(&self, slot: usize) -> usize {
        self.bufs.get(slot).map_or(0, Vec::len)
    }

    /// Resizes a slot's buffer (between periods only, so no read can be in flight).
    pub fn set_capacity(&mut self, slot: usize, capacity: usize) {
        if let Some(b) = self.bufs.get_mut(slot) {
            b.resize(capacity.max(1), 0);
        }
    }

    /// What the last period's read of `slot` returned: the bytes, or the error.
    pub fn result(&self, slot: usize) -> io::Result<&[u8]> {
        let (Some(&res), Some(buf)) = (self.results.get(slot), self.bufs.get(slot)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        if res < 0 {
            return Err(io::Error::from_raw_os_error(-res));
        }
        Ok(&buf[..(res as usize).min(buf.len())])
    }

    /// Sleeps until `deadline_ns` (absolute, `CLOCK_MONOTONIC`; a past deadline fires at once),
    /// then reads `fds[i]` at offset 0 into slot `i`. One `io_uring_enter` in the common case.
    /// Without a deadline the reads are issued at once.
    pub fn run(&mut self, deadline_ns: Option<u64>, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let n = fds.len().min(self.bufs.len());
        let mut entries = Vec::with_capacity(n + 1);
        if let Some(deadline_ns) = deadline_ns {
            *self.deadline = types::Timespec::new()
                .sec(deadline_ns / 1_000_000_000)
                .nsec((deadline_ns % 1_000_000_000) as u32);
            let timeout = opcode::Timeout::new(&*self.deadline)
                .flags(types::TimeoutFlags::ABS)
                .build()
                .user_data(TIMEOUT_TAG);
            entries.push(if n > 0 {
                timeout.flags(squeue::Flags::IO_HARDLINK)
            } else {
                timeout
            });
        }
        for (i, fd) in fds.iter().take(n).enumerate() {
            let buf = &mut self.bufs[i];
            let read = opcode::Read::new(
                types::Fd(fd.as_raw_fd()),
                buf.as_mut_ptr(),
                buf.len() as u32,
            )
            .offset(0)
            .build()
            .user_data(i as u64);
            let linked = deadline_ns.is_some() && i + 1 < n;
            entries.push(if linked {
                read.flags(squeue::Flags::IO_HARDLINK)
            } else {
                read
            });
        }
        if entries.is_empty() {
            return Ok(());
        }
        for r in &mut self.results {
            *r = -libc::ECANCELED;
        }
        {
            let mut sq = self.ring.submission();
            // SAFETY: every pointer in `entries` (the deadline box, the slot buffers with their
            // lengths) points into `self`, and this function does not return until all of the
            // chain's completions are reaped below — or, if waiting fails, it leaks the ring and
            // the buffers so the kernel can never write into freed memory. The fds are borrowed
            // for the whole call.
            unsafe { sq.push_multiple(&entries) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        let total = entries.len();
        let mut reaped = 0;
        while reaped < total {
            match self.ring.submit_and_wait(total - reaped) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    self.abandon()?;
                    return Err(e);
                }
            }
            for cqe in self.ring.completion() {
                reaped += 1;
                let tag = cqe.user_data();
                if tag != TIMEOUT_TAG {
                    if let Some(r) = self.results.get_mut(tag as usize) {
                        *r = cqe.result();
                    }
                }
            }
        }
        Ok(())
    }

    /// Gives up a ring whose requests may still be in flight: leaks it and the buffers it may
    /// write into, and starts afresh.
    fn abandon(&mut self) -> io::Result<()> {
        let fresh = IoUring::new(self.ring.params().sq_entries())?;
        std::mem::forget(std::mem::replace(&mut self.ring, fresh));
        let cap: Vec<usize> = self.bufs.iter().map(Vec::len).collect();
        let old = std::mem::replace(&mut self.bufs, cap.iter().map(|&c| vec![0; c]).collect());
        std::mem::forget(old);
        std::mem::forget(std::mem::replace(
            &mut self.deadline,
            Box::new(types::Timespec::new()),
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    #[test]
    fn sleeps_until_the_deadline_then_reads_fresh_data() {
        let f = File::open("/proc/stat").unwrap();
        let mut ring = DeadlineReads::new(1, 8192).unwrap();
        let t0 = super::super::clock::monotonic_ns();
        ring.run(Some(t0 + 3_000_000), &[f.as_fd()]).unwrap();
        let t1 = super::super::clock::monotonic_ns();
        assert!(t1 - t0 >= 3_000_000, "woke after {} ns", t1 - t0);
        let data = ring.result(0).unwrap();
        assert!(
            data.starts_with(b"cpu "),
            "{:?}",
            String::from_utf8_lossy(data)
        );
        // A second period reads again from offset 0.
        ring.run(Some(0), &[f.as_fd()]).unwrap();
        assert!(ring.result(0).unwrap().starts_with(b"cpu "));
        ring.run(None, &[f.as_fd()]).unwrap();
        assert!(ring.result(0).unwrap().starts_with(b"cpu "));
    }

    #[test]
    fn a_failing_read_does_not_cancel_the_next() {
        let dir = File::open("/proc").unwrap(); // reading a directory fails with EISDIR
        let f = File::open("/proc/stat").unwrap();
        let mut ring = DeadlineReads::new(2, 4096).unwrap();
        ring.run(Some(0), &[dir.as_fd(), f.as_fd()]).unwrap();
        assert_eq!(
            ring.result(0).unwrap_err().raw_os_error(),
            Some(libc::EISDIR)
        );
        assert!(ring.result(1).unwrap().starts_with(b"cpu "));
    }
}
