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
    inbuf: Vec<u8>,
    in_start: usize,
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
            inbuf: Vec::with_capacity(READ_CHUNK),
            in_start: 0,
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
        if self.in_start > 0 && self.in_start == self.inbuf.len() {
            self.inbuf.clear();
            self.in_start = 0;
        } else if self.in_start > READ_CHUNK {
            self.inbuf.drain(..self.in_start);
            self.in_start = 0;
        }
        let len = self.inbuf.len();
        self.inbuf.resize(len + READ_CHUNK, 0);
        let r = loop {
            match self.stream.read(&mut self.inbuf[len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match r {
            Ok(0) => {
                self.inbuf.truncate(len);
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "memcached closed the connection",
                ))
            }
            Ok(n) => {
                self.inbuf.truncate(len + n);
                Ok(n)
            }
            Err(e) => {
                self.inbuf.truncate(len);
                if e.kind() == io::ErrorKind::WouldBlock {
                    Ok(0)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Received bytes not yet consumed.
    pub fn pending(&self) -> &[u8] {
        &self.inbuf[self.in_start..]
    }

    pub fn consume(&mut self, n: usize) {
        self.in_start = (self.in_start + n).min(self.inbuf.len());
    }
}
