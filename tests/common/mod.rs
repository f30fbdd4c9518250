//! Shared helpers for integration tests: honest skipping.
//!
//! A test that cannot run here (not root, a tool missing) prints why and returns. Under the test
//! command (`LOWSCHED_NO_SKIP=1`) a skip is a failure instead, because there every stage must run.

#![allow(dead_code)]

/// Returns true (after saying why) when the test must be skipped; panics instead of skipping
/// when `LOWSCHED_NO_SKIP` is set.
pub fn skip_unless(ok: bool, why: &str) -> bool {
    if ok {
        return false;
    }
    if std::env::var_os("LOWSCHED_NO_SKIP").is_some() {
        panic!("cannot run under the test command: {why}");
    }
    eprintln!("SKIP: {why}");
    true
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `cmd` is found on PATH.
pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Skips (printing why) unless running as root, which a test daemon needs.
pub fn root_or_skip() -> bool {
    skip_unless(
        is_root(),
        "the daemon creates cgroups and runs jobs: needs root",
    )
}

/// A local TCP port nobody listened on a moment ago (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
