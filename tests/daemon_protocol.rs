#![allow(clippy::unwrap_used)]
//! The daemon against hostile and broken clients, on its real socket: a table of bad requests
//! each answered with a structured error (or a close where none can be given), slow,
//! half-closed, silent and non-reading clients, and more connections than
//! `server.max_connections`. Afterwards the daemon still serves a normal submit and never
//! panicked.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::root_or_skip;
use daemon::{TestDaemon, exchange, read_response, text};
use lowsched::api::protocol::MAX_REQUEST;
use serde_json::Value;

const MAX_CONNECTIONS: usize = 8;
const IDLE_MS: u64 = 1500;

fn start(area: &str) -> TestDaemon {
    TestDaemon::start(
        area,
        &format!("[server]\nmax_connections = {MAX_CONNECTIONS}\nidle_timeout_ms = {IDLE_MS}\n"),
    )
}

/// What a bad request must get.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// This error code; the connection stays usable.
    Error(&'static str),
    /// This error code, then the daemon closes the connection.
    ErrorThenClose(&'static str),
}

fn submit_line(job: &str) -> Vec<u8> {
    format!("{{\"v\":1,\"verb\":\"submit\",\"job\":{job}}}\n").into_bytes()
}

/// (what, bytes sent, expected answer). Each runs on a fresh connection.
fn table() -> Vec<(&'static str, Vec<u8>, Want)> {
    [
        framing_cases(),
        envelope_cases(),
        numbers_cases(),
        resources_cases(),
        text_cases(),
        unknown_ids_cases(),
    ]
    .concat()
}

fn line(s: &str) -> Vec<u8> {
    format!("{s}\n").into_bytes()
}

/// A submit of a job `true` named `x`, with `extra` fields.
fn job(extra: &str) -> Vec<u8> {
    submit_line(&format!("{{\"name\":\"x\",\"argv\":[\"true\"]{extra}}}"))
}

/// Lines that are not one JSON object: too long, cut short, not text, not an object, or more
/// than one.
fn framing_cases() -> Vec<(&'static str, Vec<u8>, Want)> {
    use Want::*;
    let mut oversized = b"{\"v\":1,\"verb\":\"status\",\"pad\":\"".to_vec();
    oversized.resize(MAX_REQUEST + 40 * 1024, b'a');
    oversized.extend_from_slice(b"\"}\n");
    vec![
        (
            "oversized line (104 KiB)",
            oversized,
            ErrorThenClose("too_large"),
        ),
        (
            "truncated JSON",
            line(r#"{"v":1,"verb":"sta"#),
            Error("bad_request"),
        ),
        (
            "binary garbage",
            b"\xff\xfe\x00\x01\x80\x7f\n".to_vec(),
            Error("bad_request"),
        ),
        (
            "raw NUL inside JSON",
            b"{\"v\":1,\x00\"verb\":\"status\"}\n".to_vec(),
            Error("bad_request"),
        ),
        (
            "invalid UTF-8 in a string",
            b"{\"v\":1,\"verb\":\"st\xffatus\"}\n".to_vec(),
            Error("bad_request"),
        ),
        (
            "array, not an object",
            line("[1,2,3]"),
            Error("bad_request"),
        ),
        (
            "string, not an object",
            line(r#""status""#),
            Error("bad_request"),
        ),
        ("null", line("null"), Error("bad_request")),
        (
            "trailing garbage",
            line(r#"{"v":1,"verb":"status"} x"#),
            Error("bad_request"),
        ),
        (
            "two objects on one line",
            line(r#"{"v":1,"verb":"status"}{"v":1,"verb":"status"}"#),
            Error("bad_request"),
        ),
    ]
}

/// Objects with a bad envelope: version, verb, unknown fields, ids of the wrong type.
fn envelope_cases() -> Vec<(&'static str, Vec<u8>, Want)> {
    use Want::*;
    vec![
        (
            "missing version",
            line(r#"{"verb":"status"}"#),
            Error("bad_version"),
        ),
        (
            "version 2",
            line(r#"{"v":2,"verb":"status"}"#),
            Error("bad_version"),
        ),
        (
            "version as a string",
            line(r#"{"v":"1","verb":"status"}"#),
            Error("bad_version"),
        ),
        (
            "version -1",
            line(r#"{"v":-1,"verb":"status"}"#),
            Error("bad_version"),
        ),
        ("missing verb", line(r#"{"v":1}"#), Error("bad_request")),
        (
            "verb not a string",
            line(r#"{"v":1,"verb":7}"#),
            Error("bad_request"),
        ),
        (
            "unknown verb",
            line(r#"{"v":1,"verb":"launch"}"#),
            Error("unknown_verb"),
        ),
        (
            "empty verb",
            line(r#"{"v":1,"verb":""}"#),
            Error("unknown_verb"),
        ),
        (
            "unknown field",
            line(r#"{"v":1,"verb":"status","idd":1}"#),
            Error("bad_request"),
        ),
        (
            "unknown job field",
            job(r#","cpus":2"#),
            Error("bad_request"),
        ),
        (
            "id of the wrong type",
            line(r#"{"v":1,"verb":"cancel","id":"x"}"#),
            Error("bad_request"),
        ),
        (
            "id true",
            line(r#"{"v":1,"verb":"status","id":true}"#),
            Error("bad_request"),
        ),
    ]
}

/// Job fields of the wrong type or out of their integer range.
fn numbers_cases() -> Vec<(&'static str, Vec<u8>, Want)> {
    use Want::*;
    vec![
        (
            "job as a string",
            line(r#"{"v":1,"verb":"submit","job":"true"}"#),
            Error("bad_request"),
        ),
        (
            "argv as a string",
            submit_line(r#"{"name":"x","argv":"true"}"#),
            Error("bad_request"),
        ),
        (
            "priority 1.5",
            job(r#","priority":1.5"#),
            Error("bad_request"),
        ),
        (
            "env value a number",
            job(r#","env":{"A":1}"#),
            Error("bad_request"),
        ),
        (
            "id 1e400",
            line(r#"{"v":1,"verb":"cancel","id":1e400}"#),
            Error("bad_request"),
        ),
        (
            "id 2^64",
            line(r#"{"v":1,"verb":"cancel","id":18446744073709551616}"#),
            Error("bad_request"),
        ),
        (
            "id -1",
            line(r#"{"v":1,"verb":"cancel","id":-1}"#),
            Error("bad_request"),
        ),
        (
            "priority beyond i32",
            job(r#","priority":99999999999"#),
            Error("bad_request"),
        ),
        (
            "cores beyond u32",
            job(r#","cores":{"min":1,"max":4294967296}"#),
            Error("bad_request"),
        ),
    ]
}

/// Resource requests the node can never meet or that make no sense, and bad time-outs.
fn resources_cases() -> Vec<(&'static str, Vec<u8>, Want)> {
    use Want::*;
    vec![
        (
            "negative cores",
            job(r#","cores":{"min":-1,"max":1}"#),
            Error("bad_request"),
        ),
        (
            "cores min > max",
            job(r#","cores":{"min":3,"max":1}"#),
            Error("invalid"),
        ),
        (
            "zero cores",
            job(r#","cores":{"min":0,"max":0}"#),
            Error("invalid"),
        ),
        (
            "more cores than the node",
            job(r#","cores":{"min":64,"max":64}"#),
            Error("invalid"),
        ),
        (
            "a GPU on a node without",
            job(r#","gpus":{"count":1}"#),
            Error("invalid"),
        ),
        (
            "bad memory text",
            job(r#","memory":"lots""#),
            Error("bad_request"),
        ),
        (
            "negative memory",
            job(r#","memory":"-1G""#),
            Error("bad_request"),
        ),
        (
            "more memory than the node",
            job(r#","memory":"900T""#),
            Error("invalid"),
        ),
        ("timeout -1", job(r#","timeout":-1"#), Error("bad_request")),
        (
            "timeout 1e400",
            job(r#","timeout":1e400"#),
            Error("bad_request"),
        ),
        (
            "wait timeout_ms -5",
            line(r#"{"v":1,"verb":"wait","id":1,"timeout_ms":-5}"#),
            Error("bad_request"),
        ),
    ]
}

/// Job text the kernel could not take (empty argv, NULs, `=` in env names), bad names and
/// paths, unknown users, and a batch with one bad job.
fn text_cases() -> Vec<(&'static str, Vec<u8>, Want)> {
    use Want::*;
    let nested = format!("{}{}\n", "[".repeat(30_000), "]".repeat(30_000)).into_bytes();
    let many_args = job(&format!(",\"argv\":[{}]", vec!["\"a\""; 5000].join(",")));
    let long_name = submit_line(&format!(
        "{{\"name\":\"{}\",\"argv\":[\"true\"]}}",
        "n".repeat(200)
    ));
    vec![
        (
            "empty argv",
            submit_line(r#"{"name":"x","argv":[]}"#),
            Error("invalid"),
        ),
        (
            "NUL in argv",
            submit_line(r#"{"name":"x","argv":["a\u0000b"]}"#),
            Error("invalid"),
        ),
        (
            "NUL in an env value",
            job(r#","env":{"A":"a\u0000"}"#),
            Error("invalid"),
        ),
        (
            "'=' in an env name",
            job(r#","env":{"A=B":"1"}"#),
            Error("invalid"),
        ),
        (
            "empty name",
            submit_line(r#"{"name":"","argv":["true"]}"#),
            Error("invalid"),
        ),
        ("name over 128 bytes", long_name, Error("invalid")),
        ("5000 arguments", many_args, Error("invalid")),
        (
            "empty stdout path",
            job(r#","stdout":"""#),
            Error("invalid"),
        ),
        (
            "unknown user",
            line(
                r#"{"v":1,"verb":"submit","user":"no-such-user-x","job":{"name":"x","argv":["true"]}}"#,
            ),
            Error("invalid"),
        ),
        (
            "submit_many with one bad job",
            line(
                r#"{"v":1,"verb":"submit_many","jobs":[{"name":"a","argv":["true"]},{"name":"b","argv":[]}]}"#,
            ),
            Error("invalid"),
        ),
        ("nested 30 000 deep", nested, Error("bad_request")),
    ]
}

/// Well-formed requests about jobs or services that do not exist.
fn unknown_ids_cases() -> Vec<(&'static str, Vec<u8>, Want)> {
    use Want::*;
    vec![
        (
            "unknown job: status",
            line(r#"{"v":1,"verb":"status","id":987654}"#),
            Error("not_found"),
        ),
        (
            "unknown job: cancel",
            line(r#"{"v":1,"verb":"cancel","id":987654}"#),
            Error("not_found"),
        ),
        (
            "unknown job: pause",
            line(r#"{"v":1,"verb":"pause","id":987654}"#),
            Error("not_found"),
        ),
        (
            "unknown job: resume",
            line(r#"{"v":1,"verb":"resume","id":987654}"#),
            Error("not_found"),
        ),
        (
            "unknown job: wait",
            line(r#"{"v":1,"verb":"wait","id":987654,"timeout_ms":10}"#),
            Error("not_found"),
        ),
        (
            "stats without a service",
            line(r#"{"v":1,"verb":"stats"}"#),
            Error("not_found"),
        ),
    ]
}

fn is_error(answer: &Value, code: &str) -> bool {
    answer["v"] == 1
        && answer["ok"] == false
        && answer["error"]["code"] == code
        && answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
}

/// True when the daemon closed the connection (end of stream or reset).
fn closed(s: &mut UnixStream) -> bool {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => rest.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn still_serves(s: &mut UnixStream) -> bool {
    exchange(s, b"{\"v\":1,\"verb\":\"events\",\"limit\":1}\n").is_some_and(|a| a["ok"] == true)
}

#[test]
fn bad_requests_get_structured_errors_and_the_daemon_carries_on() {
    if root_or_skip() {
        return;
    }
    let mut d = start("proto-table");
    let cases = table();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (what, bytes, want) in &cases {
        let mut s = d.raw();
        // The daemon may close before taking all of an oversized line: ignore write errors.
        let _ = s.write_all(bytes);
        let answer = read_response(&s);
        let ok = match (want, &answer) {
            (Want::Error(code), Some(a)) => is_error(a, code) && still_serves(&mut s),
            (Want::ErrorThenClose(code), Some(a)) => is_error(a, code) && closed(&mut s),
            (_, None) => false,
        };
        if !ok {
            failures.push(format!("{what}: want {want:?}, got {answer:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing bad was accepted; the daemon is alive and still runs jobs.
    assert!(d.all().is_empty(), "{:#?}", d.all());
    assert!(d.is_running());
    let id = d.submit(&["--", "true"]);
    assert_eq!(d.wait_code(id), 0);
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

#[test]
fn pipelined_requests_are_answered_one_each_in_order() {
    if root_or_skip() {
        return;
    }
    let d = start("proto-pipe");
    let mut s = d.raw();
    // A blank line is not a request; CRLF endings are accepted.
    let batch = b"{\"v\":1,\"verb\":\"submit\",\"job\":{\"name\":\"a\",\"argv\":[\"true\"]}}\n\
        \n{bad\r\n\
        {\"v\":1,\"verb\":\"status\",\"id\":1}\r\n\
        {\"v\":1,\"verb\":\"launch\"}\n\
        {\"v\":1,\"verb\":\"submit\",\"job\":{\"name\":\"b\",\"argv\":[\"true\"]}}\n";
    s.write_all(batch).unwrap();
    let answers: Vec<Value> = (0..5).map(|_| read_response(&s).unwrap()).collect();
    assert_eq!(answers[0]["id"], 1, "{answers:#?}");
    assert!(is_error(&answers[1], "bad_request"), "{answers:#?}");
    // The status after the submit on the same connection sees the job.
    assert_eq!(answers[2]["job"]["name"], "a", "{answers:#?}");
    assert!(is_error(&answers[3], "unknown_verb"), "{answers:#?}");
    assert_eq!(answers[4]["id"], 2, "{answers:#?}");
    assert!(still_serves(&mut s));
}

#[test]
fn slow_half_closed_silent_and_deaf_clients_do_not_stall_the_daemon() {
    if root_or_skip() {
        return;
    }
    let d = start("proto-slow");

    // Half-closed after a partial line: the partial line is answered, then the close.
    let mut s = d.raw();
    s.write_all(br#"{"v":1,"verb":"sta"#).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(is_error(&read_response(&s).unwrap(), "bad_request"));
    assert!(closed(&mut s));
    // Half-closed after whole requests: every one is still answered.
    let mut s = d.raw();
    s.write_all(b"{\"v\":1,\"verb\":\"status\"}\n{\"v\":1,\"verb\":\"status\"}")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_response(&s).unwrap()["ok"], true);
    assert_eq!(read_response(&s).unwrap()["ok"], true);
    assert!(closed(&mut s));

    // A deaf client: pipelines requests and never reads its answers, so the daemon's writes
    // to it block. A silent one connects and sends nothing.
    let mut deaf = d.raw();
    deaf.set_nonblocking(true).unwrap();
    let req = b"{\"v\":1,\"verb\":\"events\"}\n".repeat(200);
    for _ in 0..200 {
        let _ = deaf.write(&req);
    }
    let silent = d.raw();

    // A slow trickle that finishes within the idle timeout is answered normally ...
    let mut slow = d.raw();
    for b in br#"{"v":1,"verb":"status"}"#.iter().chain(b"\n") {
        slow.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(15));
    }
    assert_eq!(read_response(&slow).unwrap()["ok"], true);

    // ... one that never finishes its line is told so and closed, however often it sends.
    let mut trickle = d.raw();
    let reader = trickle.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_response(&reader));
    });
    let started = Instant::now();
    let mut told = None;
    for b in br#"{"v":1,"verb":"status","pad":""#.iter().cycle() {
        if let Ok(answer) = rx.try_recv() {
            told = answer;
            break;
        }
        if trickle.write_all(&[*b]).is_err() {
            told = rx.recv_timeout(daemon::LONG).ok().flatten();
            break;
        }
        assert!(started.elapsed() < daemon::LONG, "trickle never cut off");
        std::thread::sleep(Duration::from_millis(100));
    }
    let told = told.expect("the trickling client got no answer");
    assert!(is_error(&told, "bad_request"), "{told}");
    assert!(
        told["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in time")
    );
    assert!(closed(&mut trickle));

    // The silent client is dropped after the idle timeout, without an answer.
    let mut silent = silent;
    assert!(closed(&mut silent));

    // All the while the daemon serves everyone else.
    let id = d.submit(&["--", "true"]);
    assert_eq!(d.wait_code(id), 0);
    drop(deaf);
    assert!(!d.log_text().contains("panicked"));
}

#[test]
fn connections_beyond_the_limit_are_told_busy() {
    if root_or_skip() {
        return;
    }
    // Idle clients must keep their slots for the whole test here.
    let d = TestDaemon::start(
        "proto-busy",
        &format!("[server]\nmax_connections = {MAX_CONNECTIONS}\nidle_timeout_ms = 600000\n"),
    );
    // Fill every slot with a client that was served once (so it surely holds its slot). The
    // start-up probe's connection may still hold a slot for a moment after its answer: a client
    // told `busy` then tries again.
    // The test runs as root, which has ROOT_RESERVE slots beyond the total: fill those too.
    let slots = MAX_CONNECTIONS + lowsched::daemon::server::ROOT_RESERVE;
    let mut held: Vec<UnixStream> = (0..slots)
        .map(|_| {
            let deadline = Instant::now() + daemon::LONG;
            loop {
                let mut s = d.raw();
                if still_serves(&mut s) {
                    break s;
                }
                assert!(Instant::now() < deadline, "a slot never came free");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .collect();

    // Many more at once: every one gets a structured `busy` and a close.
    let extra: Vec<_> = (0..40)
        .map(|_| {
            let path = d.socket.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(path).unwrap();
                s.set_read_timeout(Some(daemon::LONG)).unwrap();
                let answer = read_response(&s);
                (answer, closed(&mut s))
            })
        })
        .collect();
    for t in extra {
        let (answer, was_closed) = t.join().unwrap();
        let answer = answer.expect("no answer beyond the limit");
        assert!(is_error(&answer, "busy"), "{answer}");
        assert!(was_closed);
    }
    // The held clients were not disturbed; once they leave, others get in again.
    for s in &mut held {
        assert!(still_serves(s));
    }
    drop(held);
    let deadline = Instant::now() + daemon::LONG;
    loop {
        let mut s = d.raw();
        match exchange(&mut s, b"{\"v\":1,\"verb\":\"status\"}\n") {
            Some(a) if a["ok"] == true => break,
            other => {
                assert!(Instant::now() < deadline, "never served again: {other:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // Bursts of clients: each gets an answer or `busy`, never silence.
    let burst: Vec<_> = (0..60)
        .map(|_| {
            let path = d.socket.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(path).unwrap();
                s.set_read_timeout(Some(daemon::LONG)).unwrap();
                exchange(&mut s, b"{\"v\":1,\"verb\":\"status\"}\n")
            })
        })
        .collect();
    let mut served = 0;
    for t in burst {
        let a = t.join().unwrap().expect("a burst client got no answer");
        if a["ok"] == true {
            served += 1;
        } else {
            assert!(is_error(&a, "busy"), "{a}");
        }
    }
    assert!(served > 0);
    let out = d.cli(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
