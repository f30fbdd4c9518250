#![allow(clippy::unwrap_used)]
//! Issue 15 end to end, with real local users the tests create (`useradd`, removed on drop):
//! an inherited descriptor does not reach a job, one user's connection flood leaves another
//! user and root served, another user's `memcached` is not protected, escape codes never reach
//! `status`, and a full state dir refuses submits clearly and takes them again once space is
//! back, without a restart.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{free_port, have, root_or_skip, skip_unless};
use daemon::{TestDaemon, text};

static USERS: AtomicUsize = AtomicUsize::new(0);

/// A local user made for one test, deleted (with its processes) on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    children: Vec<Child>,
}

impl TestUser {
    fn create() -> TestUser {
        let n = USERS.fetch_add(1, Ordering::Relaxed);
        let name = format!("lshard{}x{n}", std::process::id() % 100_000);
        let out = Command::new("useradd")
            .args([
                "--no-create-home",
                "--shell",
                "/bin/sh",
                "--user-group",
                &name,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd: {}", text(&out.stderr));
        let u = nix::unistd::User::from_name(&name).unwrap().unwrap();
        TestUser {
            name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            children: Vec::new(),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.uid(self.uid).gid(self.gid).current_dir("/");
        c
    }

    /// Starts `c` (built by [`TestUser::command`]) and kills it on drop.
    fn spawn(&mut self, mut c: Command) -> &mut Child {
        let child = c.spawn().unwrap();
        self.children.push(child);
        self.children.last_mut().unwrap()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn users_or_skip() -> bool {
    root_or_skip() || skip_unless(have("useradd") && have("perl"), "useradd and perl")
}

/// One raw request line as `user`, through a one-line perl relay; the answer line.
fn raw_as(d: &TestDaemon, user: &TestUser, line: &str) -> serde_json::Value {
    let out = user
        .command("perl")
        .arg("-MIO::Socket::UNIX")
        .arg("-e")
        .arg(
            r#"my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n";
               print $s "$ARGV[1]\n"; my $l = <$s>; print $l;"#,
        )
        .arg(&d.socket)
        .arg(line)
        .output()
        .unwrap();
    assert!(out.status.success(), "perl relay: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_descriptor_the_daemon_inherited_is_not_visible_in_a_job() {
    if users_or_skip() {
        return;
    }
    let user = TestUser::create();
    // A root-only secret, open without close-on-exec while the daemon starts: like a
    // descriptor a careless init or shell hands it.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "root-only-secret").unwrap();
    let file = std::fs::File::open(&secret).unwrap();
    let fd = file.as_raw_fd();
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let d = TestDaemon::start("hard-fd", "");
    drop(file);
    let inherited = std::fs::read_link(format!("/proc/{}/fd/{fd}", d.pid()));
    assert_eq!(
        inherited.ok(),
        Some(secret.clone()),
        "the daemon did inherit it"
    );
    d.open_socket_to_all();
    let script = format!(
        "test ! -e /proc/self/fd/{fd} && ! cat /proc/self/fd/{fd} 2>/dev/null && \
         ls /proc/self/fd | sort -n | tr '\\n' ' '"
    );
    let out = d.cli_as(
        user.uid,
        user.gid,
        &["submit", "--name", "fdcheck", "--", "sh", "-c", &script],
    );
    let id = daemon::submitted_id(&out);
    assert_eq!(
        d.wait_code(id),
        0,
        "the job saw descriptor {fd}: {}",
        d.status(id)
    );
    // Only stdin, stdout, stderr (and ls's own directory descriptor).
    let shown = std::fs::read_to_string(d.state.join(format!("jobs/{id}/stdout"))).unwrap();
    assert_eq!(shown.trim(), "0 1 2 3", "{shown}");
}

#[test]
fn one_users_connection_flood_leaves_another_user_and_root_served() {
    if users_or_skip() {
        return;
    }
    let mut flooder = TestUser::create();
    let other = TestUser::create();
    let d = TestDaemon::start(
        "hard-flood",
        "[server]\nmax_connections = 64\nmax_connections_per_user = 8\n",
    );
    d.open_socket_to_all();
    // 300 connections held open by one user, more than the whole limit.
    let mut c = flooder.command("perl");
    c.arg("-MIO::Socket::UNIX")
        .arg("-e")
        .arg(
            r#"$| = 1; my @s; for (1..300) { my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]);
               push @s, $s if $s } print scalar(@s), "\n"; sleep 120;"#,
        )
        .arg(&d.socket)
        .stdout(Stdio::piped());
    let child = flooder.spawn(c);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.trim().parse::<u32>().unwrap() > 8,
        "flood opened {line}"
    );
    std::thread::sleep(Duration::from_millis(300));
    // The flooder's next connection is refused, naming the per-user limit...
    let answer = raw_as(&d, &flooder, r#"{"v":1,"verb":"status"}"#);
    assert_eq!(answer["error"]["code"], "busy", "{answer}");
    let msg = answer["error"]["message"].as_str().unwrap();
    assert!(msg.contains("per user"), "{msg}");
    // ...while another user and root are served.
    let answer = raw_as(&d, &other, r#"{"v":1,"verb":"status"}"#);
    assert_eq!(answer["ok"], true, "{answer}");
    let out = d.cli(&["status"]);
    assert!(out.status.success(), "root: {}", text(&out.stderr));
    let out = d.cli_as(other.uid, other.gid, &["submit", "--", "true"]);
    let id = daemon::submitted_id(&out);
    assert_eq!(d.wait_code(id), 0);
}

/// Waits for memcached to answer `version` on `port`.
fn wait_memcached(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let mut buf = [0u8; 64];
            if s.write_all(b"version\r\n").is_ok() && s.read(&mut buf).unwrap_or(0) > 0 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("memcached on port {port} did not answer");
}

#[test]
fn another_users_memcached_is_not_protected() {
    if users_or_skip() || skip_unless(have("memcached"), "memcached") {
        return;
    }
    let mut spoofer = TestUser::create();
    let port = free_port();
    let mut c = spoofer.command("memcached");
    c.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-m",
        "8",
        "-t",
        "1",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    spoofer.spawn(c);
    wait_memcached(port);
    let cfg = |port: u16| {
        format!(
            "[service]\nenabled = \"auto\"\naddress = \"127.0.0.1:{port}\"\nrescan_ms = 100\n\
             resume_latency_us = -1\n"
        )
    };
    let d = TestDaemon::start("hard-spoof", &cfg(port));
    std::thread::sleep(Duration::from_secs(2));
    let log = d.log_text();
    assert!(!log.contains("protecting memcached"), "{log}");
    let out = d.cli(&["stats"]);
    assert!(!out.status.success(), "stats answered for a spoof");
    assert!(
        text(&out.stderr).contains("no protected service"),
        "{}",
        text(&out.stderr)
    );
    drop(d);

    // The control: root's memcached on its address is found by the same name.
    let port = free_port();
    let mut real = Command::new("memcached")
        .args([
            "-u",
            "root",
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            "8",
            "-t",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_memcached(port);
    let d = TestDaemon::start("hard-real", &cfg(port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.log_text().contains("protecting memcached") {
        assert!(
            Instant::now() < deadline,
            "root's memcached not found:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        d.log_text().contains(&format!("pid {}", real.id())),
        "{}",
        d.log_text()
    );
    drop(d);
    let _ = real.kill();
    let _ = real.wait();
}

#[test]
fn escape_codes_never_reach_status_output() {
    if users_or_skip() {
        return;
    }
    let user = TestUser::create();
    let d = TestDaemon::start("hard-esc", "");
    d.open_socket_to_all();
    let esc = "\u{1b}]0;owned\u{7}\u{1b}[2J";
    // A name with control characters is refused, the message showing them escaped.
    let line = serde_json::json!({"v": 1, "verb": "submit",
        "job": {"name": format!("x{esc}"), "argv": ["true"]}})
    .to_string();
    let answer = raw_as(&d, &user, &line);
    assert_eq!(answer["error"]["code"], "invalid", "{answer}");
    let msg = answer["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("control character") && !msg.contains('\u{1b}'),
        "{msg}"
    );
    // A program name with them is allowed (it is the user's own file name), and its failure
    // reason carries them: every view escapes it.
    let out = d.cli_as(
        user.uid,
        user.gid,
        &[
            "submit",
            "--name",
            "ok",
            "--",
            &format!("/nonexistent{esc}"),
        ],
    );
    let id = daemon::submitted_id(&out);
    d.wait_for(id, "ended", |s| s["ended_ms"].is_number());
    let reason = d.status(id)["reason"].as_str().unwrap_or("").to_string();
    assert!(
        reason.contains('\u{1b}'),
        "the test needs a hostile reason: {reason:?}"
    );
    for args in [
        vec!["status".to_string()],
        vec!["status".to_string(), id.to_string()],
        vec!["events".to_string()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = d.cli(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let shown = text(&out.stdout);
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{args:?}: {shown:?}"
        );
    }
    assert!(!d.events_log().contains('\u{1b}'));
}

/// A small tmpfs mounted on a directory, unmounted (lazily) on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(on: &std::path::Path, size: &str) -> SmallFs {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "lowsched-test",
            ])
            .arg(on)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", on.display());
        SmallFs(on.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_job_that_fills_the_state_dir_stops_submits_until_space_returns() {
    if users_or_skip() {
        return;
    }
    let user = TestUser::create();
    let mut d = TestDaemon::start("hard-full", "");
    // The state dir becomes a 4 MiB tmpfs: a fresh state there.
    d.stop();
    let _fs = SmallFs::mount(&d.state, "4m");
    d.start_again();
    d.open_socket_to_all();
    let state = d.state.clone();
    // The user's job fills the state dir through its default output.
    let out = d.cli_as(
        user.uid,
        user.gid,
        &[
            "submit",
            "--name",
            "filler",
            "--",
            "sh",
            "-c",
            "yes lowsched",
        ],
    );
    let filler = daemon::submitted_id(&out);
    let code = d.wait_code(filler);
    assert_ne!(code, 0, "yes stops at ENOSPC");
    // Full: submits are refused, clearly, once the journal's last page is used up (until
    // then a record still fits, and is rightly accepted).
    let pad = "p".repeat(3000);
    let mut ids = Vec::new();
    let err = loop {
        let out = d.cli_as(user.uid, user.gid, &["submit", "--", "true", &pad]);
        if !out.status.success() {
            break text(&out.stderr);
        }
        ids.push(daemon::submitted_id(&out));
        assert!(ids.len() < 50, "50 submits accepted on a full disk");
    };
    assert!(err.contains("no space left on the state dir"), "{err}");
    // Space returns (root removes the output): submits work again, no restart.
    std::fs::remove_file(state.join(format!("jobs/{filler}/stdout"))).unwrap();
    // Jobs accepted while nearly full may not have started (no room for their output
    // directory): they end once, as "did not start" (126), like any other.
    for id in &ids {
        let code = d.wait_code(*id);
        assert!(code == 0 || code == 126, "job {id}: {code}");
    }
    for _ in 0..5 {
        let out = d.cli_as(user.uid, user.gid, &["submit", "--", "true"]);
        let id = daemon::submitted_id(&out);
        assert_eq!(d.wait_code(id), 0, "after space returned");
        ids.push(id);
    }
    // Every job of this run ended exactly once, and no refused job appeared.
    let all = d.all();
    assert_eq!(all.len(), 1 + ids.len(), "{all:#?}");
    // The in-memory event ring (events.log could not take every line while full).
    let out = d.cli(&["events"]);
    let events = text(&out.stdout);
    for id in &ids {
        let ends = events
            .lines()
            .filter(|l| {
                l.contains(" end ") && l.split_whitespace().any(|w| w == format!("id={id}"))
            })
            .count();
        assert_eq!(ends, 1, "job {id}:\n{events}");
    }
}
