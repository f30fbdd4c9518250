//! Every `unsafe` call of the crate: raw Linux syscalls nix does not wrap (clone3, pidfd_open,
//! pidfd_send_signal, io_uring submission, epoll with ns timeouts, clocks, SCHED_FIFO, xattrs, heap trimming) and the
//! async-signal-safe child programs that run between clone and exec.
//!
//! Nothing outside this module uses `unsafe`. Each block names the invariant it relies on.

pub mod child;
pub mod clock;
pub mod clone;
pub mod epoll;
pub mod fd;
pub mod heap;
pub mod pidfd;
mod raw;
pub mod sched;
pub mod uring;
pub mod xattr;

pub use child::{ChildPlan, ChildStage, OpenSpec, RawCreds, RawRlimit, SpawnError};
pub use clone::{PendingSpawn, SpawnMode, Spawned, spawn, spawn_async};
pub use fd::take_inherited;
pub use pidfd::{pidfd_open, pidfd_send_signal};

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::os::fd::AsFd;

    use nix::errno::Errno;
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};

    use super::*;

    fn plan(argv: &[&str]) -> ChildPlan {
        let argv: Vec<CString> = argv.iter().map(|a| CString::new(*a).unwrap()).collect();
        ChildPlan {
            programs: vec![argv[0].clone()],
            argv,
            new_session: true,
            reset_signals: true,
            ..ChildPlan::default()
        }
    }

    fn exit_code(s: &Spawned) -> i32 {
        match waitid(Id::PIDFd(s.pidfd.as_fd()), WaitPidFlag::WEXITED).unwrap() {
            WaitStatus::Exited(_, code) => code,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn spawns_in_both_modes_and_reports_exit() {
        for mode in [SpawnMode::Vfork, SpawnMode::Fork] {
            let s = spawn(plan(&["/bin/sh", "-c", "exit 7"]), mode, None).unwrap();
            assert!(s.pid.as_raw() > 0);
            assert_eq!(exit_code(&s), 7, "{mode:?}");
        }
    }

    #[test]
    fn exec_failure_comes_back_with_stage_and_errno() {
        for mode in [SpawnMode::Vfork, SpawnMode::Fork] {
            let err = spawn(plan(&["/nonexistent/prog"]), mode, None).unwrap_err();
            assert_eq!(
                err,
                SpawnError::Child {
                    stage: ChildStage::Exec,
                    errno: Errno::ENOENT,
                    index: 0
                },
                "{mode:?}"
            );
        }
        let err = spawn(plan(&["/etc/hostname"]), SpawnMode::Vfork, None).unwrap_err();
        assert!(err.to_string().contains("exec"), "{err}");
    }

    #[test]
    fn path_candidates_are_tried_in_order() {
        let mut p = plan(&["true"]);
        p.programs = vec![
            CString::new("/nonexistent/true").unwrap(),
            CString::new("/bin/true").unwrap(),
        ];
        let s = spawn(p, SpawnMode::Vfork, None).unwrap();
        assert_eq!(exit_code(&s), 0);
    }

    #[test]
    fn chdir_failure_names_the_stage() {
        let mut p = plan(&["/bin/true"]);
        p.cwd = Some(CString::new("/nonexistent-dir").unwrap());
        let err = spawn(p, SpawnMode::Fork, None).unwrap_err();
        assert!(
            matches!(
                err,
                SpawnError::Child {
                    stage: ChildStage::Chdir,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn async_spawn_reports_exec_and_failure_later() {
        let (s, pending) = spawn_async(plan(&["/bin/sh", "-c", "exit 5"]), None).unwrap();
        assert_eq!(pending.finish(), Ok(()));
        assert_eq!(exit_code(&s), 5);
        // The failed child still runs on memory `finish` frees after the report: it must wait
        // until the child is gone (a child that outlived its stack died of SIGSEGV here).
        for _ in 0..50 {
            let (s, pending) = spawn_async(plan(&["/nonexistent/prog"]), None).unwrap();
            assert!(matches!(
                pending.finish(),
                Err(SpawnError::Child {
                    stage: ChildStage::Exec,
                    errno: Errno::ENOENT,
                    ..
                })
            ));
            assert_eq!(exit_code(&s), 127);
        }
        // Dropped unfinished: waits for the child before freeing its memory.
        let (s, pending) = spawn_async(plan(&["/bin/true"]), None).unwrap();
        drop(pending);
        assert_eq!(exit_code(&s), 0);
    }

    #[test]
    fn pidfd_open_finds_ourselves() {
        let me = nix::unistd::getpid();
        assert!(pidfd_open(me).is_ok());
        assert!(pidfd_send_signal(&pidfd_open(me).unwrap(), nix::sys::signal::SIGCONT).is_ok());
    }

    /// Runs `script` under `sh -c` with `edit` applied to the plan; its exit code.
    fn sh_exit(script: &str, edit: impl FnOnce(&mut ChildPlan)) -> i32 {
        let mut p = plan(&["/bin/sh", "-c", script]);
        edit(&mut p);
        exit_code(&spawn(p, SpawnMode::Fork, None).unwrap())
    }

    #[test]
    fn descriptors_above_stderr_do_not_reach_the_program() {
        // An inherited, not close-on-exec descriptor, like one the daemon was started with.
        let fd = nix::fcntl::open(
            "/etc/hostname",
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let script = format!("test -e /proc/self/fd/{n}");
        assert_eq!(sh_exit(&script, |_| {}), 0, "visible without close_from");
        assert_ne!(sh_exit(&script, |p| p.close_from = Some(3)), 0);
        // A descriptor dup'ed below the bound stays.
        assert_eq!(
            sh_exit("test -e /proc/self/fd/3", |p| {
                p.dups.push((n, 3));
                p.close_from = Some(4);
            }),
            0
        );
    }

    #[test]
    fn umask_limits_and_no_new_privs_are_set() {
        assert_eq!(
            sh_exit("test \"$(umask)\" = 0077", |p| p.umask = Some(0o077)),
            0
        );
        let nofile = |soft, hard| RawRlimit {
            resource: libc::RLIMIT_NOFILE,
            soft,
            hard,
        };
        let script = "test \"$(ulimit -n)\" = 64 && test \"$(ulimit -Hn)\" = 128";
        assert_eq!(sh_exit(script, |p| p.limits.push(nofile(64, 128))), 0);
        // After the root limits, the job's own can only lower them.
        let script = "test \"$(ulimit -n)\" = 32";
        assert_eq!(
            sh_exit(script, |p| {
                p.limits.push(nofile(64, 128));
                p.user_limits.push(nofile(32, 128));
            }),
            0
        );
        let nnp = "grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status";
        assert_ne!(sh_exit(nnp, |_| {}), 0);
        assert_eq!(sh_exit(nnp, |p| p.no_new_privs = true), 0);
    }

    #[test]
    fn a_limit_above_the_hard_one_fails_as_the_user_with_its_index() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("LOWSCHED_NO_SKIP").is_none(),
                "needs root (becomes nobody)"
            );
            eprintln!("skipped: needs root (becomes nobody)");
            return;
        }
        let mut p = plan(&["/bin/true"]);
        let lim = |soft, hard| RawRlimit {
            resource: libc::RLIMIT_NOFILE,
            soft,
            hard,
        };
        p.limits.push(lim(64, 128));
        p.creds = Some(RawCreds {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        });
        p.user_limits.push(lim(64, 4096));
        let err = spawn(p, SpawnMode::Fork, None).unwrap_err();
        assert_eq!(
            err,
            SpawnError::Child {
                stage: ChildStage::Limits,
                errno: Errno::EPERM,
                index: 1
            }
        );
    }
}
