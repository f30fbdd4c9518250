//! `lowsched daemon --relax`, run by systemd as `ExecStopPost=`: lets the unit start again while
//! its jobs keep running.
//!
//! The problem: systemd before 254 starts a delegated unit's processes in the unit's own
//! cgroup, and the kernel refuses a process in a cgroup that hands controllers to children ("no
//! internal processes"): with jobs running below it, `systemctl restart` fails with
//! 219/CGROUP — even `ExecStartPre=` fails. `ExecStopPost=` runs in the `.control` sub-group
//! instead, after the daemon is gone: there this disables the controllers bottom-up, so the
//! next start can attach. Jobs keep running (unconfined for the second it takes); the next
//! daemon enables the controllers again and puts cores and memory limits back.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::node::cgroup::Layout;

const SUBTREE_CONTROL: &str = "cgroup.subtree_control";
/// The sub-group systemd runs a delegated unit's control processes in.
const CONTROL_GROUP: &str = ".control";

#[derive(Debug, thiserror::Error)]
pub enum RelaxError {
    #[error("cannot read the cgroup layout: {0}")]
    Layout(String),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {} to {path}: {source}", crate::model::text::quoted(.data))]
    Write {
        path: PathBuf,
        data: String,
        source: io::Error,
    },
}

/// Disables every controller in `root`'s subtree, deepest groups first. Returns how many
/// controller switches it turned off.
pub fn relax(root: &Path) -> Result<usize, RelaxError> {
    let mut n = 0;
    let entries = fs::read_dir(root).map_err(|source| RelaxError::Read {
        path: root.to_path_buf(),
        source,
    })?;
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            n += relax(&e.path())?;
        }
    }
    let path = root.join(SUBTREE_CONTROL);
    let text = fs::read_to_string(&path).map_err(|source| RelaxError::Read {
        path: path.clone(),
        source,
    })?;
    for c in text.split_whitespace() {
        let data = format!("-{c}");
        fs::write(&path, &data).map_err(|source| RelaxError::Write {
            path: path.clone(),
            data,
            source,
        })?;
        n += 1;
    }
    Ok(n)
}

/// Relaxes the systemd unit this process runs for (its cgroup, or the parent of `.control`).
pub fn relax_own_unit() -> Result<String, RelaxError> {
    let layout =
        Layout::detect(Path::new("/proc")).map_err(|e| RelaxError::Layout(e.to_string()))?;
    let Layout::Unified { mount } = layout else {
        return Ok("not pure cgroup v2: nothing to relax".into());
    };
    let own = fs::read_to_string("/proc/self/cgroup").map_err(|source| RelaxError::Read {
        path: "/proc/self/cgroup".into(),
        source,
    })?;
    let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Ok("no cgroup2 membership: nothing to relax".into());
    };
    let mut group = mount.point.join(path.trim_start_matches('/'));
    if group.file_name().is_some_and(|n| n == CONTROL_GROUP) {
        group.pop();
    }
    if group == mount.point {
        return Ok("running in the root cgroup: nothing to relax".into());
    }
    let n = relax(&group)?;
    Ok(format!(
        "relaxed {} ({n} controller switches off); jobs keep running",
        group.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disables_deepest_groups_first() {
        // A fake tree where each file records what was written: a write of "-x" removes x.
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for (dir, ctl) in [
            ("", "cpuset memory"),
            ("batch", "cpuset"),
            ("batch/job-1", ""),
            ("daemon", ""),
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
            fs::write(root.join(dir).join(SUBTREE_CONTROL), ctl).unwrap();
        }
        // Plain files keep the last write, which is enough to see the order and count.
        let n = relax(root).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            fs::read_to_string(root.join("batch").join(SUBTREE_CONTROL)).unwrap(),
            "-cpuset"
        );
        assert_eq!(
            fs::read_to_string(root.join(SUBTREE_CONTROL)).unwrap(),
            "-memory"
        );
    }
}
