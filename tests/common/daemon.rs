//! A real `lowsched daemon` for end-to-end tests: its own temp socket, state dir and cgroup root
//! (`lowsched-test-<area>-<pid>-<n>`), started from the built binary with
//! `[service] enabled = "no"`, stopped with SIGTERM on drop, after which its cgroup tree is
//! destroyed (killing whatever jobs are left) so no group or process outlives the test.
//!
//! Include with `#[path = "common/daemon.rs"] mod daemon;` (root only: check `is_root` first).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lowsched::api::client::Client;
use lowsched::node::cgroup::{Layout, RootName, Tree, TreeConfig};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// The `lowsched` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_lowsched");
/// Debian's `nobody`.
pub const NOBODY: u32 = 65534;
pub const NOGROUP: u32 = 65534;

/// Generous: the machine is shared and tests must assert behaviour, not speed.
pub const LONG: Duration = Duration::from_secs(60);
/// Longest any one CLI command may take (`wait` included).
pub const CLI_LIMIT: Duration = Duration::from_secs(120);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One daemon under test. Restartable (`kill9`/`stop` then `start_again`) on the same state.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub cgroup_root: String,
    log: PathBuf,
    child: Option<Child>,
    /// Daemon runs so far (each appends to the same log file).
    pub runs: usize,
}

impl TestDaemon {
    /// Starts a daemon; `extra_toml` is appended to the config. Without a `[service]` section
    /// there, the config says `[service] enabled = "no"`.
    pub fn start(area: &str, extra_toml: &str) -> TestDaemon {
        let dir = tempfile::Builder::new()
            .prefix(&format!("lowsched-{area}-"))
            .tempdir()
            .unwrap();
        // Reachable for the non-root caller tests (the socket itself stays 0660 unless a test
        // opens it up).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let cgroup_root = format!("lowsched-test-{area}-{}-{n}", std::process::id());
        let socket = dir.path().join("s.sock");
        let state = dir.path().join("state");
        let config = dir.path().join("lowsched.toml");
        let log = dir.path().join("daemon.log");
        // No protected service unless the test configures one, and two cores (the first two
        // online), so tests that fill the node behave alike on this 2-vCPU host and in a
        // 4-vCPU guest.
        let service = if extra_toml.contains("[service]") {
            String::new()
        } else {
            "[service]\nenabled = \"no\"\n".to_string()
        };
        let node = if extra_toml.contains("[node]") {
            String::new()
        } else {
            format!("[node]\ncores = \"{}\"\n", two_cores())
        };
        let toml = format!(
            "socket = {socket:?}\nstate_dir = {state:?}\ncgroup_root = {cgroup_root:?}\n\
             log_level = \"debug\"\n\n{service}\n{node}\n{extra_toml}\n"
        );
        std::fs::write(&config, toml).unwrap();
        let mut d = TestDaemon {
            dir,
            socket,
            state,
            config,
            cgroup_root,
            log,
            child: None,
            runs: 0,
        };
        d.start_again();
        d
    }

    /// Starts the daemon (again) on the same config and state; returns once it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.runs += 1;
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("daemon exited at start-up ({status}):\n{}", self.log_text());
            }
            if let Ok(mut c) = Client::connect(&self.socket) {
                c.set_timeout(Some(Duration::from_secs(5))).unwrap();
                let req = lowsched::api::protocol::Request::Status(Default::default());
                if c.call(&req).is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not answer within {LONG:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("daemon not running").id() as i32)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// `kill -9` the daemon and reap it. Its jobs keep running.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon not running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon ignored SIGTERM for {LONG:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lets anyone connect (for the non-root caller tests).
    pub fn open_socket_to_all(&self) {
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--socket").arg(&self.socket).args(args);
        c.env_remove("LOWSCHED_SOCKET").current_dir(self.dir.path());
        c
    }

    /// Runs the CLI as root.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_bounded(self.command(args), args)
    }

    /// Runs the CLI as `uid`/`gid` (supplementary groups dropped).
    pub fn cli_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        let mut c = self.command(args);
        c.uid(uid).gid(gid);
        run_bounded(c, args)
    }

    /// `lowsched submit ARGS`; asserts it printed exactly one job id and returns it.
    pub fn submit(&self, args: &[&str]) -> u64 {
        let mut all = vec!["submit"];
        all.extend_from_slice(args);
        submitted_id(&self.cli(&all))
    }

    /// `lowsched status --json ID` as root.
    pub fn status(&self, id: u64) -> Value {
        let out = self.cli(&["status", "--json", &id.to_string()]);
        assert!(out.status.success(), "status {id}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Every job, as `lowsched status --json` shows them.
    pub fn all(&self) -> Vec<Value> {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "status: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Polls `status` until `pred` holds for job `id` (or panics after [`LONG`]).
    pub fn wait_for(&self, id: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LONG;
        loop {
            let s = self.status(id);
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never became {what}: {s:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_state(&self, id: u64, state: &str) -> Value {
        self.wait_for(id, state, |s| s["state"] == state)
    }

    /// `lowsched wait ID`: its exit code.
    pub fn wait_code(&self, id: u64) -> i32 {
        let out = self.cli(&["wait", &id.to_string()]);
        out.status.code().expect("wait killed by a signal")
    }

    /// A raw connection for protocol tests.
    pub fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        s
    }

    /// The daemon's current event log files.
    pub fn events_log(&self) -> String {
        std::fs::read_to_string(self.state.join("events.log")).unwrap()
    }

    pub fn events_jsonl(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state.join("events.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- daemon log ({}) ----\n{}",
                self.cgroup_root,
                self.log_text()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        destroy_tree(&self.cgroup_root);
    }
}

/// Runs a CLI command, but not forever: a daemon that stopped answering fails the test after
/// [`CLI_LIMIT`] (and the test's drop cleans up) instead of hanging it.
pub fn run_bounded(mut cmd: Command, args: &[&str]) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CLI_LIMIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            panic!("`lowsched {}` took over {CLI_LIMIT:?}", args.join(" "));
        }
    }
}

/// The first two online CPUs, in list format (tests need at least two).
pub fn two_cores() -> String {
    let online: lowsched::model::cpuset::CpuSet =
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let two: Vec<String> = online.iter().take(2).map(|c| c.to_string()).collect();
    assert_eq!(
        two.len(),
        2,
        "the daemon tests need two CPUs, this machine has [{online}]"
    );
    two.join(",")
}

/// Kills every job left under `root` and removes its groups in every hierarchy.
pub fn destroy_tree(root: &str) {
    let cfg = TreeConfig {
        root: RootName::Named(root.to_string()),
        ..TreeConfig::default()
    };
    let opened = Layout::detect(Path::new("/proc"))
        .and_then(|layout| Tree::open(layout, &cfg, Path::new("/proc")));
    match opened {
        Ok(tree) => {
            if let Err(e) = tree.destroy(Duration::from_secs(10)) {
                eprintln!("cleanup of cgroup root {root}: {e}");
            }
        }
        Err(e) => eprintln!("cleanup of cgroup root {root}: {e}"),
    }
}

/// The group that holds job `id`'s cores under cgroup root `root` (whether or not it exists).
pub fn job_cpuset_group(root: &str, id: u64) -> PathBuf {
    let cfg = TreeConfig {
        root: RootName::Named(root.to_string()),
        ..TreeConfig::default()
    };
    let tree = Layout::detect(Path::new("/proc"))
        .and_then(|layout| Tree::open(layout, &cfg, Path::new("/proc")))
        .unwrap();
    tree.job_paths(lowsched::model::job::JobId(id)).cpuset
}

/// The one job id a successful `submit` printed (and nothing else on stdout).
pub fn submitted_id(out: &Output) -> u64 {
    assert!(
        out.status.success(),
        "submit failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "submit must print only the id: {stdout:?}"
    );
    stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a job id: {stdout:?}"))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes `bytes` on a raw connection and reads one response line (None: closed first).
/// A write refused because the daemon already answered (`busy`) and closed still reads that answer.
pub fn exchange(s: &mut UnixStream, bytes: &[u8]) -> Option<Value> {
    let _ = s.write_all(bytes);
    read_response(s)
}

/// Reads one response line (byte by byte, so nothing after it is consumed); None when the
/// daemon closed (or reset) the connection first.
pub fn read_response(mut s: &UnixStream) -> Option<Value> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(0) | Err(_) if line.is_empty() => return None,
            Ok(0) | Err(_) => panic!("connection ended inside a response: {:?}", text(&line)),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
        }
    }
    Some(
        serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", text(&line))),
    )
}

/// Waits until `path` exists (written by a job), or panics after [`LONG`].
pub fn wait_file(path: &Path) {
    let deadline = Instant::now() + LONG;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lines of a file (empty if it does not exist).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Our own memcached on a local port, with a pid file the daemon can find it by; killed
/// on drop.
pub struct Memcached {
    child: Child,
    pub port: u16,
    pub pid_file: PathBuf,
}

impl Memcached {
    /// Starts one worker thread with 64 MB on `port`, its pid file in `dir`, and waits for
    /// the pid file.
    pub fn start(dir: &Path, port: u16) -> Memcached {
        let pid_file = dir.join("memcached.pid");
        let child = Command::new("memcached")
            .args(["-u", "root", "-l", "127.0.0.1", "-t", "1", "-m", "64"])
            .arg("-p")
            .arg(port.to_string())
            .arg("-P")
            .arg(&pid_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_file(&pid_file);
        Memcached {
            child,
            port,
            pid_file,
        }
    }

    /// A daemon config's `[service]` table that protects this memcached (found by its pid
    /// file only).
    pub fn service_toml(&self) -> String {
        format!(
            "[service]\nenabled = \"yes\"\npid_file = {:?}\n\
             process_name = \"lowsched-test-none\"\naddress = \"127.0.0.1:{}\"\n",
            self.pid_file, self.port
        )
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
