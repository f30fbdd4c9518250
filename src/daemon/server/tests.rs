//! Socket tests: framing, limits per user and in all, stalled and half-closed clients.

use super::*;
use crate::api::protocol::Reply;
use crate::model::job::JobId;
use std::io::{BufRead, BufReader};

/// Answers `status` with the caller's uid as the job id; echoes parse errors.
struct Echo;

impl Handler for Echo {
    fn handle_batch(
        &self,
        caller: &Caller,
        reqs: Vec<Result<Request, ProtocolError>>,
    ) -> Vec<Response> {
        reqs.into_iter()
            .map(|r| match r {
                Ok(_) => Response::ok(Reply::Submitted {
                    id: JobId(u64::from(caller.uid)),
                }),
                Err(e) => Response::err(e),
            })
            .collect()
    }
}

fn start(limits: Limits) -> (tempfile::TempDir, PathBuf, Arc<AtomicBool>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let server = Server::bind(&path, limits).unwrap();
    let stop = server.stop_flag();
    std::thread::spawn(move || server.serve(Arc::new(Echo)));
    (dir, path, stop)
}

fn lines(stream: &UnixStream, n: usize) -> Vec<Response> {
    let mut r = BufReader::new(stream.try_clone().unwrap());
    (0..n)
        .map(|_| {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            serde_json::from_str(&l).unwrap()
        })
        .collect()
}

#[test]
fn answers_pipelined_requests_in_order_with_peer_uid() {
    let (_d, path, stop) = start(Limits::default());
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"{\"v\":1,\"verb\":\"status\"}\n\n{bad\n{\"v\":1,\"verb\":\"stats\"}\n")
        .unwrap();
    let got = lines(&s, 3);
    let uid = nix::unistd::getuid().as_raw();
    assert_eq!(
        got[0].reply,
        Some(Reply::Submitted {
            id: JobId(u64::from(uid))
        })
    );
    assert_eq!(got[1].error.as_ref().unwrap().code, ErrorCode::BadRequest);
    assert!(got[2].ok);
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn oversized_request_gets_an_error_and_a_close() {
    let (_d, path, stop) = start(Limits::default());
    let mut s = UnixStream::connect(&path).unwrap();
    let _ = s.write_all(&vec![b'a'; MAX_REQUEST + 10]);
    let got = lines(&s, 1);
    assert_eq!(got[0].error.as_ref().unwrap().code, ErrorCode::TooLarge);
    // Closed: end of stream, or a reset because our unread bytes were discarded.
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
    }
    // The daemon still serves others.
    let mut s2 = UnixStream::connect(&path).unwrap();
    s2.write_all(b"{\"v\":1,\"verb\":\"stats\"}\n").unwrap();
    assert!(lines(&s2, 1)[0].ok);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn connections_beyond_the_limit_are_told_busy() {
    let limits = Limits {
        max_connections: 2,
        max_per_user: 2,
        ..Limits::default()
    };
    let (_d, path, stop) = start(limits);
    let me = nix::unistd::getuid().as_raw();
    // Root has its reserve beyond the total: fill that too when the test runs as root.
    let n = if me == 0 { 2 + ROOT_RESERVE } else { 2 };
    // Answered, so all are being served (no sleep and hope that they were accepted).
    let held: Vec<UnixStream> = (0..n)
        .map(|_| {
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(
                b"{\"v\":1,\"verb\":\"stats\"}
",
            )
            .unwrap();
            assert!(lines(&s, 1)[0].ok);
            s
        })
        .collect();
    let s = UnixStream::connect(&path).unwrap();
    assert_eq!(
        lines(&s, 1)[0].error.as_ref().unwrap().code,
        ErrorCode::Busy
    );
    drop(held);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn one_user_cannot_lock_out_others_and_root_always_gets_in() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_connections: 10,
        max_per_user: 4,
        ..Limits::default()
    };
    let server = Server::bind(&dir.path().join("s.sock"), limits).unwrap();
    let who = |uid| Caller {
        uid,
        gid: uid,
        pid: 1,
    };
    for _ in 0..4 {
        server.admit(&who(1000)).unwrap();
    }
    let e = server.admit(&who(1000)).unwrap_err();
    assert!(e.contains("uid 1000") && e.contains("per user"), "{e}");
    for uid in 1001..1007 {
        server.admit(&who(uid)).unwrap();
    }
    // The total is reached: other users wait, root does not.
    assert!(server.admit(&who(2000)).is_err());
    for _ in 0..ROOT_RESERVE {
        server.admit(&who(0)).unwrap();
    }
    assert!(server.admit(&who(0)).is_err());
    Server::release(&server.counts, &server.active, &who(1000));
    Server::release(&server.counts, &server.active, &who(0));
    server.admit(&who(1000)).unwrap();
    assert_eq!(server.active(), 10 + ROOT_RESERVE - 1);
    assert!(server.counts.lock().unwrap().by_uid[&1000] == 4);
}

#[test]
fn half_closed_client_gets_its_last_unterminated_line_answered() {
    let (_d, path, stop) = start(Limits::default());
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"{\"v\":1,\"verb\":\"stats\"}\n{\"v\":1,\"verb\":\"sta")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = lines(&s, 2);
    assert!(got[0].ok);
    assert_eq!(got[1].error.as_ref().unwrap().code, ErrorCode::BadRequest);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"{\"v\":1,\"verb\":\"stats\"}").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(lines(&s, 1)[0].ok);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn stalled_client_is_dropped_after_the_idle_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    let (_d, path, stop) = start(limits);
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"{\"v\":1,\"ve").unwrap();
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_live_daemon_is_not_replaced() {
    let (_d, path, stop) = start(Limits::default());
    assert!(matches!(
        Server::bind(&path, Limits::default()),
        Err(ServerError::InUse(_))
    ));
    stop.store(true, Ordering::Relaxed);
}
