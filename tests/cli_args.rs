#![allow(clippy::unwrap_used)]
//! Argument conventions through the real binary: -h/--help everywhere, -V/--version,
//! --flag=value and Slurm's short letters reaching the daemon.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::process::Command;

use common::root_or_skip;
use daemon::{BIN, TestDaemon, text};

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn help_and_version_answer_on_stdout_with_success() {
    let out = run(&["-V"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("lowsched {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(run(&["--version"]).status.success());
    for sub in [
        "daemon", "submit", "status", "history", "cancel", "pause", "resume", "wait", "stats",
        "events", "metrics", "report", "loadgen",
    ] {
        for h in ["-h", "--help"] {
            let out = run(&[sub, h]);
            assert!(out.status.success(), "{sub} {h}: {}", text(&out.stderr));
            assert!(
                text(&out.stdout).starts_with(&format!("Usage: lowsched {sub}")),
                "{sub} {h}"
            );
        }
    }
    let out = run(&["-h"]);
    assert!(out.status.success() && text(&out.stdout).contains("Commands:"));
}

#[test]
fn an_unknown_flag_points_at_the_subcommands_help() {
    let out = run(&["status", "--bogus"]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("--bogus") && e.contains("lowsched status --help"),
        "{e}"
    );
}

#[test]
fn flag_equals_value_and_slurm_letters_reach_the_daemon() {
    if root_or_skip() {
        return;
    }
    let d = TestDaemon::start("args", "");
    let out_file = d.dir.path().join("o.txt");
    let id = d.submit(&[
        "--cpus=2",
        "-J",
        "letters",
        &format!("--stdout={}", out_file.display()),
        "--",
        "sh",
        "-c",
        "nproc; echo --cpus=9",
    ]);
    assert_eq!(d.wait_code(id), 0);
    let s = d.status(id);
    assert_eq!(s["name"], "letters", "{s}");
    // `--cpus=2` gave it both cores; its own `--cpus=9` went to the job untouched.
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "2\n--cpus=9\n");
    let out = d.cli(&[
        "submit",
        "-c",
        "1",
        "-o",
        "/dev/null",
        "-e",
        "/dev/null",
        "true",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn check_config_validates_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[service]\nenabled = \"no\"\n").unwrap();
    let out = run(&["daemon", "--check-config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("valid"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[service]\nmin_cores = 0\n").unwrap();
    let out = run(&[
        "daemon",
        "--config",
        bad.to_str().unwrap(),
        "--check-config",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("min_cores") && e.contains("bad.toml"), "{e}");
    // A positional file without --check-config is refused, not silently ignored.
    let out = run(&["daemon", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}
