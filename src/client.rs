//! The client side of the socket protocol: connect, send one request, read its response.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::{ProtocolError, Reply, Request, Response};

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

/// A connection to the daemon. Requests on one connection are answered in order.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
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
    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = req.to_line();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })
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
