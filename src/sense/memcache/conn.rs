//! A non-blocking TCP connection to memcached with an input and an output buffer.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use std::time::Duration;

/// Read chunk size; replies to small gets are ~30 bytes, so one read takes many.
const READ_CHUNK: usize = 64 * 1024;

/// One connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Received bytes are `inbuf[in_start..in_end]`; the rest is zeroed room for the next
    /// read, zeroed once: zeroing 64 KiB per read was a tenth of the probe's CPU.
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    /// Room for the arrival stamp's control message, kept between reads.
    cmsg: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
}

impl Conn {
    /// Connects (blocking, bounded by `timeout`), then switches to non-blocking, no Nagle.
    pub fn connect(addr: &SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            inbuf: vec![0; READ_CHUNK],
            in_start: 0,
            in_end: 0,
            cmsg: nix::cmsg_space!(nix::sys::time::TimeSpec),
            out: Vec::with_capacity(4096),
            out_pos: 0,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The output buffer: append requests, then [`Conn::flush`].
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Bytes queued but not yet accepted by the socket.
    pub fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes what it can; `Ok(true)` when everything queued went out.
    pub fn flush(&mut self) -> io::Result<bool> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(true)
    }

    /// Reads what is available (one read, which is enough for a level-triggered loop). Returns
    /// the bytes read; the peer closing is an `UnexpectedEof` error.
    pub fn fill(&mut self) -> io::Result<usize> {
        self.compact();
        let r = loop {
            match self.stream.read(&mut self.inbuf[self.in_end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map(|n| (n, None)),
            }
        };
        self.finish_fill(r).map(|(n, _)| n)
    }

    /// Asks the kernel to stamp received data with its arrival time (`SO_TIMESTAMPNS`), for
    /// [`Conn::fill_stamped`].
    pub fn enable_rx_timestamps(&self) -> io::Result<()> {
        nix::sys::socket::setsockopt(
            &self.stream,
            nix::sys::socket::sockopt::ReceiveTimestampns,
            &true,
        )
        .map_err(io::Error::from)
    }

    /// Like [`Conn::fill`], also returning the kernel's arrival time (`CLOCK_REALTIME` ns) of
    /// the last segment read, when timestamps are enabled. Right after the first socket on the
    /// host enables them the kernel may stamp nothing for a moment (it switches stamping on
    /// through deferred work): callers fall back to their own clock then.
    pub fn fill_stamped(&mut self) -> io::Result<(usize, Option<u64>)> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        self.compact();
        let r = loop {
            let mut iov = [io::IoSliceMut::new(&mut self.inbuf[self.in_end..])];
            match recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut self.cmsg),
                MsgFlags::MSG_DONTWAIT,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => break Err(io::Error::from(e)),
                Ok(msg) => {
                    let mut stamp = None;
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                                stamp = Some(
                                    (ts.tv_sec() as u64)
                                        .saturating_mul(1_000_000_000)
                                        .saturating_add(ts.tv_nsec() as u64),
                                );
                            }
                        }
                    }
                    break Ok((msg.bytes, stamp));
                }
            }
        };
        self.finish_fill(r)
    }

    /// Moves unconsumed bytes to the front when that frees a chunk, and makes sure a whole
    /// chunk of room follows them.
    fn compact(&mut self) {
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        } else if self.in_start > READ_CHUNK {
            self.inbuf.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
        }
        if self.inbuf.len() - self.in_end < READ_CHUNK {
            self.inbuf.resize(self.in_end + READ_CHUNK, 0);
        }
    }

    fn finish_fill(
        &mut self,
        r: io::Result<(usize, Option<u64>)>,
    ) -> io::Result<(usize, Option<u64>)> {
        match r {
            Ok((0, _)) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "memcached closed the connection",
            )),
            Ok((n, stamp)) => {
                self.in_end += n;
                Ok((n, stamp))
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    Ok((0, None))
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Received bytes not yet consumed.
    pub fn pending(&self) -> &[u8] {
        &self.inbuf[self.in_start..self.in_end]
    }

    pub fn consume(&mut self, n: usize) {
        self.in_start = (self.in_start + n).min(self.in_end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn bytes_come_out_in_order_across_reads_partial_consumes_and_compaction() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = Conn::connect(&l.local_addr().unwrap(), Duration::from_secs(1)).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn(move || {
            for chunk in data.chunks(7_000) {
                peer.write_all(chunk).unwrap();
            }
        });
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut closed = false;
        while got.len() < 300_000 && std::time::Instant::now() < deadline {
            if !closed {
                // The writer may finish and close while bytes are still unconsumed here.
                closed = c.fill().is_err();
            }

            // Consume less than arrived, so unconsumed bytes are carried and moved.
            let n = c.pending().len().min(1_000);
            got.extend_from_slice(&c.pending()[..n]);
            c.consume(n);
        }
        writer.join().unwrap();
        let want: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes out of order");
    }

    #[test]
    fn stamps_received_data_with_its_arrival_time() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = Conn::connect(&l.local_addr().unwrap(), Duration::from_secs(1)).unwrap();
        c.enable_rx_timestamps().unwrap();
        let (mut peer, _) = l.accept().unwrap();
        assert_eq!(c.fill_stamped().unwrap(), (0, None), "nothing yet");
        // The kernel may switch receive stamping on a moment later (a deferred static key).
        std::thread::sleep(Duration::from_millis(50));
        let before = crate::sys::clock::unix_time_s();
        peer.write_all(b"END\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let (n, stamp) = c.fill_stamped().unwrap();
        let after = crate::sys::clock::unix_time_s();
        assert_eq!(n, 5);
        let t = stamp.expect("a kernel timestamp") as f64 / 1e9;
        assert!(
            t >= before - 0.001 && t <= after - 0.015,
            "{before} <= {t} <= {after} - 20 ms"
        );
        assert_eq!(c.pending(), b"END\r\n");
        c.consume(5);
        drop(peer);
        assert!(c.fill_stamped().is_err(), "EOF is an error");
    }
}
