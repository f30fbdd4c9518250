//! Which cgroup hierarchies a host has and where: parsed from /proc/self/mountinfo, plus a
//! process's own groups from /proc/PID/cgroup.

use std::path::{Path, PathBuf};

use super::CgroupError;

/// One cgroup filesystem mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMount {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/cpuset`.
    pub point: PathBuf,
    /// Which group of the hierarchy the mount shows at `point` (`/` except in containers).
    pub root: String,
    /// `None` for cgroup2; for v1 the controllers (and `name=...`) from the super options.
    pub controllers: Option<Vec<String>>,
}

impl CgroupMount {
    pub fn is_v2(&self) -> bool {
        self.controllers.is_none()
    }

    pub fn has(&self, controller: &str) -> bool {
        self.controllers
            .as_ref()
            .is_some_and(|c| c.iter().any(|x| x == controller))
    }

    /// The directory of `group` (a path as /proc/PID/cgroup shows it), if this mount shows it.
    pub fn dir_of(&self, group: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" {
            group
        } else {
            let rest = group.strip_prefix(self.root.as_str())?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            rest
        };
        Some(self.point.join(rel.trim_start_matches('/')))
    }
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts listed in a mountinfo text, in file order. Lines that are not cgroup
/// mounts are skipped; a malformed cgroup line is an error naming the line.
pub fn parse_mountinfo(text: &str, source: &Path) -> Result<Vec<CgroupMount>, CgroupError> {
    let mut mounts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // id parent maj:min root point opts [optional fields...] - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            return Err(CgroupError::Parse {
                path: source.to_path_buf(),
                text: line.to_string(),
                what: format!("line {}: no ' - ' separator", n + 1),
            });
        };
        let mut r = right.split_whitespace();
        let fstype = r.next().unwrap_or("");
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let _source = r.next();
        let superopts = r.next().unwrap_or("");
        let l: Vec<&str> = left.split_whitespace().collect();
        if l.len() < 5 {
            return Err(CgroupError::Parse {
                path: source.to_path_buf(),
                text: line.to_string(),
                what: format!("line {}: fewer than 5 fields before ' - '", n + 1),
            });
        }
        let controllers = (fstype == "cgroup").then(|| {
            superopts
                .split(',')
                .filter(|o| {
                    !matches!(
                        *o,
                        "rw" | "ro" | "noprefix" | "clone_children" | "xattr" | "cpuset_v2_mode"
                    ) && !o.starts_with("release_agent=")
                })
                .map(str::to_string)
                .collect()
        });
        mounts.push(CgroupMount {
            point: PathBuf::from(unescape(l[4])),
            root: unescape(l[3]),
            controllers,
        });
    }
    Ok(mounts)
}

/// The group of a process in each hierarchy, from /proc/PID/cgroup:
/// `(hierarchy id, controllers, path)`; controllers is empty for cgroup2's `0::` line.
pub fn parse_proc_cgroup(text: &str) -> Vec<(u32, Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let id = it.next()?.parse().ok()?;
            let ctl = it.next()?;
            let path = it.next()?;
            let ctl = ctl
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Some((id, ctl, path.to_string()))
        })
        .collect()
}

/// The hierarchies lowsched uses on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Pure cgroup v2: one tree for placement, cores, freeze, kill and memory.
    Unified { mount: CgroupMount },
    /// v1 controllers beside a cgroup2 tree that has none: placement, freeze and kill in the
    /// unified tree, cores in the v1 cpuset hierarchy; memory is not enforced.
    Hybrid {
        unified: CgroupMount,
        cpuset: CgroupMount,
        freezer: Option<CgroupMount>,
    },
    /// v1 only (or a unified tree without `cgroup.freeze`/`cgroup.kill`): cores in the v1
    /// cpuset, pause in the v1 freezer, kill by signalling every pid.
    Legacy {
        cpuset: CgroupMount,
        freezer: CgroupMount,
    },
}

impl Layout {
    /// Picks the layout from parsed mounts. A cgroup2 mount without a v1 cpuset beside it is
    /// pure v2; with one it is hybrid; no cgroup2 means legacy (which needs a v1 freezer).
    /// When several cgroup2 mounts exist the one with the shortest mount point wins.
    pub fn from_mounts(mounts: &[CgroupMount]) -> Result<Self, CgroupError> {
        let unified = mounts
            .iter()
            .filter(|m| m.is_v2())
            .min_by_key(|m| m.point.as_os_str().len())
            .cloned();
        let v1 = |c: &str| mounts.iter().find(|m| m.has(c)).cloned();
        match (unified, v1("cpuset"), v1("freezer")) {
            (Some(mount), None, _) => Ok(Self::Unified { mount }),
            (Some(unified), Some(cpuset), freezer) => Ok(Self::Hybrid {
                unified,
                cpuset,
                freezer,
            }),
            (None, Some(cpuset), Some(freezer)) => Ok(Self::Legacy { cpuset, freezer }),
            (None, cpuset, freezer) => Err(CgroupError::Layout(format!(
                "no cgroup2 mount, and v1 {}{} missing",
                if cpuset.is_none() { "cpuset " } else { "" },
                if freezer.is_none() { "freezer" } else { "" },
            ))),
        }
    }

    /// Reads `<proc_root>/self/mountinfo` and picks the layout.
    pub fn detect(proc_root: &Path) -> Result<Self, CgroupError> {
        let path = proc_root.join("self/mountinfo");
        let text = std::fs::read_to_string(&path).map_err(|e| CgroupError::io("read", &path, e))?;
        Self::from_mounts(&parse_mountinfo(&text, &path)?)
    }

    /// The same host seen through the v1 freezer: hybrid hosts can be driven as legacy ones
    /// (for hosts whose unified tree cannot freeze, and to test that path).
    pub fn as_legacy(&self) -> Result<Self, CgroupError> {
        match self {
            Self::Legacy { .. } => Ok(self.clone()),
            Self::Hybrid {
                cpuset,
                freezer: Some(freezer),
                ..
            } => Ok(Self::Legacy {
                cpuset: cpuset.clone(),
                freezer: freezer.clone(),
            }),
            _ => Err(CgroupError::Layout(
                "the v1 freezer path needs v1 cpuset and freezer hierarchies".into(),
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Unified { .. } => "unified",
            Self::Hybrid { .. } => "hybrid",
            Self::Legacy { .. } => "legacy",
        }
    }
}
