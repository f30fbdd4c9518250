#![allow(clippy::unwrap_used)]
//! Who may do what, end to end: the socket's mode, SO_PEERCRED identifying the caller, jobs
//! running as their submitter, only root or a job's owner changing it or seeing its
//! environment, only root submitting as someone else. The non-root caller is the `lowsched`
//! CLI run as `nobody` (uid 65534); raw requests as `nobody` go through a one-line perl
//! relay (perl-base is part of every Debian system).

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{have, root_or_skip, skip_unless};
use daemon::{NOBODY, NOGROUP, TestDaemon, submitted_id, text};

/// Sends one raw request line to the daemon as `nobody` and returns the answer line.
fn raw_as_nobody(d: &TestDaemon, line: &str) -> serde_json::Value {
    let out = Command::new("perl")
        .arg("-MIO::Socket::UNIX")
        .arg("-e")
        .arg(
            r#"my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n";
               print $s "$ARGV[1]\n"; my $l = <$s>; print $l;"#,
        )
        .arg(&d.socket)
        .arg(line)
        .uid(NOBODY)
        .gid(NOGROUP)
        .output()
        .unwrap();
    assert!(out.status.success(), "perl relay: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn refused(out: &std::process::Output, want: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "expected a refusal: {out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(want), "want {want:?} in {err}");
    err
}

#[test]
fn socket_is_0660_root_or_group_lowsched_and_closed_to_others() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("sec-mode", "");
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), 0);
    let group = nix::unistd::Group::from_name("lowsched")
        .unwrap()
        .map_or(0, |g| g.gid.as_raw());
    assert_eq!(meta.gid(), group);
    // nobody is in neither group: it cannot connect at all.
    let out = d.cli_as(NOBODY, NOGROUP, &["status"]);
    // The refusal says which group to join.
    let err = refused(&out, "permission denied on the lowsched socket");
    let name = if group == 0 { "root" } else { "lowsched" };
    assert!(err.contains(&format!("usermod -aG {name} USER")), "{err}");
}

#[test]
fn non_root_callers_act_only_on_their_own_jobs() {
    if root_or_skip()
        || skip_unless(
            have("perl"),
            "perl (Debian's perl-base) relays raw requests as nobody",
        )
    {
        return;
    }
    let d = TestDaemon::start("sec-owner", "");
    d.open_socket_to_all();
    let release = d.dir.path().join("release");
    let wait_release = format!("while [ ! -e {} ]; do sleep 0.02; done", release.display());

    // root's job, with a secret in its environment.
    let root_job = d.submit(&["--env", "SECRET=hunter2", "--", "sh", "-c", &wait_release]);
    d.wait_state(root_job, "running");
    nobody_may_look_but_not_touch(&d, root_job);
    nobody_does_not_see_its_environment(&d, root_job);
    nobody_cannot_submit_as_another_user(&d);
    nobody_owns_its_own_job(&d, &wait_release, &release);
    assert_eq!(d.wait_code(root_job), 0);

    root_may_submit_as_nobody_and_cancel_it(&d);
}

/// nobody may look at root's job but not cancel, pause or resume it, through the CLI or a
/// raw request.
fn nobody_may_look_but_not_touch(d: &TestDaemon, root_job: u64) {
    let rid = root_job.to_string();
    for verb in ["cancel", "pause", "resume"] {
        let out = d.cli_as(NOBODY, NOGROUP, &[verb, &rid]);
        refused(&out, "only its owner or root may change it");
        let line = format!(r#"{{"v":1,"verb":"{verb}","id":{root_job}}}"#);
        let answer = raw_as_nobody(d, &line);
        assert_eq!(answer["ok"], false, "{answer}");
        assert_eq!(answer["error"]["code"], "forbidden", "{verb}: {answer}");
    }
    let s = d.status(root_job);
    assert_eq!(
        (s["state"].as_str(), s["held"].as_bool()),
        (Some("running"), Some(false))
    );
}

/// nobody does not see root's job's environment in any view, nor in the daemon's files (the
/// journal, which holds it, is root's alone); root does.
fn nobody_does_not_see_its_environment(d: &TestDaemon, root_job: u64) {
    let rid = root_job.to_string();
    let out = d.cli_as(NOBODY, NOGROUP, &["status", "--json", &rid]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["id"], root_job);
    assert!(seen.get("env").is_none(), "{seen:#}");
    for args in [
        vec!["status", &rid],
        vec!["status", "--json"],
        vec!["status"],
    ] {
        let out = d.cli_as(NOBODY, NOGROUP, &args);
        assert!(out.status.success());
        assert!(!text(&out.stdout).contains("hunter2"), "{args:?}");
    }
    let answer = raw_as_nobody(d, &format!(r#"{{"v":1,"verb":"status","id":{root_job}}}"#));
    assert!(answer["job"].get("env").is_none(), "{answer}");
    // Nor in the daemon's files: the journal (which holds it) is root's alone.
    let journal = d.state.join("journal");
    assert_eq!(
        std::fs::metadata(&journal).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for f in ["journal", "events.log", "events.jsonl"] {
        let out = Command::new("cat")
            .arg(d.state.join(f))
            .uid(NOBODY)
            .gid(NOGROUP)
            .output()
            .unwrap();
        assert!(!text(&out.stdout).contains("hunter2"), "{f}");
    }
    // The owner (root) does see it.
    assert_eq!(d.status(root_job)["env"]["SECRET"], "hunter2");
}

/// nobody cannot submit as root (or anyone else); nothing is accepted.
fn nobody_cannot_submit_as_another_user(d: &TestDaemon) {
    let before = d.all().len();
    let out = d.cli_as(NOBODY, NOGROUP, &["submit", "--user", "root", "--", "true"]);
    refused(&out, "only root may submit jobs as another user");
    let answer = raw_as_nobody(
        d,
        r#"{"v":1,"verb":"submit","user":"root","job":{"name":"x","argv":["true"]}}"#,
    );
    assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
    assert_eq!(d.all().len(), before);
}

/// nobody's own job runs as nobody, output files included, and nobody may change it.
fn nobody_owns_its_own_job(d: &TestDaemon, wait_release: &str, release: &std::path::Path) {
    let out = d.cli_as(
        NOBODY,
        NOGROUP,
        &[
            "submit",
            "--env",
            "MINE=1",
            "--",
            "sh",
            "-c",
            &format!("id -u; id -g; {wait_release}"),
        ],
    );
    let own = submitted_id(&out);
    let s = d.wait_state(own, "running");
    assert_eq!(
        (s["user"].as_str(), s["uid"].as_u64()),
        (Some("nobody"), Some(65534))
    );
    let oid = own.to_string();
    for (verb, state) in [("pause", "paused"), ("resume", "running")] {
        let out = d.cli_as(NOBODY, NOGROUP, &[verb, &oid]);
        assert!(out.status.success(), "{verb}: {}", text(&out.stderr));
        d.wait_state(own, state);
    }
    let out = d.cli_as(NOBODY, NOGROUP, &["status", "--json", &oid]);
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["env"]["MINE"], "1");
    std::fs::write(release, "").unwrap();
    let out = d.cli_as(NOBODY, NOGROUP, &["wait", &oid]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = d.state.join(format!("jobs/{own}/stdout"));
    assert_eq!(std::fs::read_to_string(&stdout).unwrap(), "65534\n65534\n");
    assert_eq!(std::fs::metadata(&stdout).unwrap().uid(), NOBODY);
}

/// Root may submit as nobody, and cancel nobody's jobs.
fn root_may_submit_as_nobody_and_cancel_it(d: &TestDaemon) {
    let as_nobody = d.submit(&["--user", "nobody", "--", "sh", "-c", "id -u; sleep 600"]);
    d.wait_state(as_nobody, "running");
    assert_eq!(d.status(as_nobody)["uid"], 65534);
    let out = d.state.join(format!("jobs/{as_nobody}/stdout"));
    let deadline = std::time::Instant::now() + daemon::LONG;
    while std::fs::read_to_string(&out).unwrap_or_default() != "65534\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "no output from the job run as nobody"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(d.cli(&["cancel", &as_nobody.to_string()]).status.success());
    assert_eq!(d.wait_code(as_nobody), 125);
}

#[test]
fn job_files_are_opened_with_the_jobs_own_permissions() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("sec-files", "");
    d.open_socket_to_all();
    let private = d.dir.path().join("root-only");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let target = private.join("planted");
    let out = d.cli_as(
        NOBODY,
        NOGROUP,
        &["submit", "--stdout", target.to_str().unwrap(), "--", "true"],
    );
    let id = submitted_id(&out);
    // It cannot start: its stdout is not the user's to open. Nothing is created there.
    assert_eq!(d.wait_code(id), 126);
    let s = d.status(id);
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("planted") && reason.contains("ermission"),
        "{s:#}"
    );
    assert!(!target.exists());
    // Nor can it run in a directory it may not enter.
    let out = d.cli_as(
        NOBODY,
        NOGROUP,
        &["submit", "--cwd", private.to_str().unwrap(), "--", "true"],
    );
    let id = submitted_id(&out);
    assert_eq!(d.wait_code(id), 126);
}
