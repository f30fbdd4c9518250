#![allow(clippy::unwrap_used)]
//! Pure cgroup v2 as lowsched will use it, checked inside QEMU guest A (stage 40-vm-cgroup-v2):
//! the mount and its controllers, cpuset placement and resizing, freeze/thaw, kill, memory.max,
//! and user lookup from a static binary.
//!
//! These tests only mean something in the guest (`LOWSCHED_IN_GUEST` set by tests/vm/guest-a.sh),
//! so they are `#[ignore]`d with that reason: `cargo test` on the host reports them as ignored
//! (not run, and stage 20 lists them so in the test command's summary), and stage 40 runs them in
//! the guest with `--include-ignored`. Run outside a guest they skip, which fails under the test
//! command.

mod common;

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Not a timing assertion: only how long to wait before calling the kernel's answer missing.
const PATIENCE: Duration = Duration::from_secs(60);

/// Why every test here is ignored on the host.
const GUEST_ONLY: &str = "runs only inside QEMU guest A (stage 40-vm-cgroup-v2)";

/// True in the guest (as root); elsewhere skips, saying why.
fn in_guest(test: &str) -> bool {
    !common::skip_unless(
        std::env::var_os("LOWSCHED_IN_GUEST").is_some(),
        &format!("{test}: not in a VM guest (LOWSCHED_IN_GUEST unset); it {GUEST_ONLY}"),
    ) && !common::skip_unless(common::is_root(), "guest tests need root")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn write(path: &Path, data: &str) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {data:?} to {}: {e}", path.display()))
}

/// A field of /proc/PID/status, e.g. `Cpus_allowed_list`.
fn status_field(pid: u32, field: &str) -> String {
    let status = read(&PathBuf::from(format!("/proc/{pid}/status")));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// A child cgroup of the root, killed and removed on drop.
struct Group {
    path: PathBuf,
    children: Vec<Child>,
}

impl Group {
    fn new(area: &str) -> Group {
        let path =
            Path::new(CGROUP_ROOT).join(format!("lowsched-vmtest-{area}-{}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Group {
            path,
            children: Vec::new(),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Starts `sh -c script` and moves it into this group before the script runs (the shell
    /// first waits for a line on stdin, sent once it is in the group), so that everything the
    /// script forks starts inside the group.
    fn spawn(&mut self, script: &str) -> u32 {
        let mut child = Command::new("sh")
            .args(["-c", &format!("read -r go; {script}")])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn sh -c {script:?}: {e}"));
        let pid = child.id();
        let mut go = child.stdin.take().unwrap();
        self.children.push(child);
        write(&self.file("cgroup.procs"), &pid.to_string());
        go.write_all(b"go\n").unwrap();
        pid
    }

    /// Waits until cgroup.events shows `key value`.
    fn wait_event(&self, key: &str, value: &str) {
        let want = format!("{key} {value}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let events = read(&self.file("cgroup.events"));
            if events.lines().any(|l| l.trim() == want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no '{want}' in cgroup.events: {events:?}"
            );
            sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = fs::write(self.file("cgroup.kill"), "1");
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + PATIENCE;
        while let Err(e) = fs::remove_dir(&self.path) {
            if e.kind() == ErrorKind::NotFound || Instant::now() > deadline {
                break;
            }
            sleep(Duration::from_millis(5));
        }
    }
}

#[test]
#[ignore = "runs only inside QEMU guest A (stage 40-vm-cgroup-v2)"]
fn guest_mounts_pure_cgroup_v2_with_every_controller_enabled() {
    if !in_guest("guest_mounts_pure_cgroup_v2_with_every_controller_enabled") {
        return;
    }
    let mountinfo = read(Path::new("/proc/self/mountinfo"));
    // mountinfo: "... MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS"
    let fstypes: Vec<(&str, &str)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            Some((left.split(' ').nth(4)?, right.split(' ').next()?))
        })
        .collect();
    assert!(
        fstypes.contains(&(CGROUP_ROOT, "cgroup2")),
        "cgroup2 not at {CGROUP_ROOT}: {mountinfo}"
    );
    assert!(
        !fstypes.iter().any(|(_, t)| *t == "cgroup"),
        "a cgroup v1 hierarchy is mounted: {mountinfo}"
    );
    let controllers = read(&Path::new(CGROUP_ROOT).join("cgroup.controllers"));
    let enabled = read(&Path::new(CGROUP_ROOT).join("cgroup.subtree_control"));
    for c in ["cpuset", "cpu", "memory", "pids", "io"] {
        assert!(
            controllers.split_whitespace().any(|x| x == c),
            "{c} not in cgroup.controllers: {controllers}"
        );
        assert!(
            enabled.split_whitespace().any(|x| x == c),
            "{c} not in root subtree_control: {enabled}"
        );
    }
}

#[test]
#[ignore = "runs only inside QEMU guest A (stage 40-vm-cgroup-v2)"]
fn cpuset_places_a_moved_process_and_follows_a_rewrite() {
    if !in_guest("cpuset_places_a_moved_process_and_follows_a_rewrite") {
        return;
    }
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(cpus >= 4, "guest A runs with -smp 4, saw {cpus} CPUs");
    let mut group = Group::new("cpuset");
    write(&group.file("cpuset.cpus"), "1");
    write(&group.file("cpuset.mems"), "0");
    assert_eq!(read(&group.file("cpuset.cpus.effective")).trim(), "1");

    let pid = group.spawn("exec sleep 600");
    let name = group
        .path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        read(&PathBuf::from(format!("/proc/{pid}/cgroup"))).trim(),
        format!("0::/{name}")
    );
    assert_eq!(status_field(pid, "Cpus_allowed_list"), "1");

    // Resizing a job = rewriting its cpuset: the kernel moves the running task.
    write(&group.file("cpuset.cpus"), "2-3");
    assert_eq!(status_field(pid, "Cpus_allowed_list"), "2-3");
}

#[test]
#[ignore = "runs only inside QEMU guest A (stage 40-vm-cgroup-v2)"]
fn cgroup_freeze_stops_and_thaws_the_whole_group() {
    if !in_guest("cgroup_freeze_stops_and_thaws_the_whole_group") {
        return;
    }
    let mut group = Group::new("freeze");
    let pid = group.spawn("sleep 600 & exec sleep 600");
    group.wait_event("populated", "1");
    write(&group.file("cgroup.freeze"), "1");
    group.wait_event("frozen", "1");
    // A frozen group still holds its task; the task sits in the freezer's sleep.
    assert!(
        read(&group.file("cgroup.procs"))
            .lines()
            .any(|l| l.trim() == pid.to_string())
    );
    write(&group.file("cgroup.freeze"), "0");
    group.wait_event("frozen", "0");
    assert_eq!(read(&group.file("cgroup.freeze")).trim(), "0");
}

#[test]
#[ignore = "runs only inside QEMU guest A (stage 40-vm-cgroup-v2)"]
fn cgroup_kill_ends_every_process_of_the_group() {
    if !in_guest("cgroup_kill_ends_every_process_of_the_group") {
        return;
    }
    let mut group = Group::new("kill");
    group.spawn("sleep 600 & sleep 600 & wait");
    // The shell's two children were forked inside the group.
    let deadline = Instant::now() + PATIENCE;
    while read(&group.file("cgroup.procs")).lines().count() < 3 {
        assert!(
            Instant::now() < deadline,
            "the shell's children never showed up in the group"
        );
        sleep(Duration::from_millis(5));
    }
    write(&group.file("cgroup.kill"), "1");
    let status = group.children[0].wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the group's shell ended with {status:?}"
    );
    group.wait_event("populated", "0");
    assert_eq!(read(&group.file("cgroup.procs")).trim(), "");
}

#[test]
#[ignore = "runs only inside QEMU guest A (stage 40-vm-cgroup-v2)"]
fn memory_max_reads_back_in_bytes() {
    if !in_guest("memory_max_reads_back_in_bytes") {
        return;
    }
    let group = Group::new("memory");
    write(&group.file("memory.max"), "64M");
    assert_eq!(read(&group.file("memory.max")).trim(), "67108864");
}

#[test]
#[ignore = "runs only inside QEMU guest A (stage 40-vm-cgroup-v2)"]
fn static_binary_resolves_users_from_etc_passwd() {
    if !in_guest("static_binary_resolves_users_from_etc_passwd") {
        return;
    }
    // lowsched drops job privileges with uids looked up by name; a crt-static glibc binary
    // must still read /etc/passwd and /etc/group.
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("nobody in /etc/passwd");
    assert_eq!(nobody.uid.as_raw(), 65534);
    let user = nix::unistd::User::from_name("lowsched-test")
        .unwrap()
        .expect("lowsched-test in /etc/passwd");
    assert_eq!(user.uid.as_raw(), 1000);
    let group = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .expect("nogroup in /etc/group");
    assert_eq!(group.gid.as_raw(), 65534);
}
