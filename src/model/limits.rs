//! What a job's processes get besides cores: resource limits (rlimits), umask, and the
//! per-job process and memory caps, with their text forms (`1024`, `1024:4096`, `unlimited`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Umask a job gets when neither the request nor the config says otherwise.
pub const DEFAULT_UMASK: u32 = 0o022;
/// Processes (threads included) one job may have at once on hosts with the pids controller.
pub const DEFAULT_PIDS_MAX: u64 = 4096;

/// The rlimit names accepted, as in `prlimit(1)` / limits.conf, with their `RLIMIT_*` numbers
/// (the same on every Linux architecture lowsched builds for).
pub const RLIMITS: &[(&str, u32)] = &[
    ("cpu", 0),
    ("fsize", 1),
    ("data", 2),
    ("stack", 3),
    ("core", 4),
    ("rss", 5),
    ("nproc", 6),
    ("nofile", 7),
    ("memlock", 8),
    ("as", 9),
    ("locks", 10),
    ("sigpending", 11),
    ("msgqueue", 12),
    ("nice", 13),
    ("rtprio", 14),
    ("rttime", 15),
];

/// Why a limit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("unknown resource limit {}; known: {}", super::text::quoted(.name), known())]
    UnknownName { name: String },
    #[error("bad limit {}: expected N, SOFT:HARD or unlimited", super::text::quoted(.text))]
    BadValue { text: String },
    #[error("limit {}: the soft limit is above the hard limit", super::text::quoted(.text))]
    SoftAboveHard { text: String },
    #[error("umask {value:#o} is not between 0 and 0777")]
    Umask { value: u32 },
}

fn known() -> String {
    RLIMITS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `RLIMIT_*` number of `name`.
pub fn rlimit_resource(name: &str) -> Result<u32, LimitError> {
    RLIMITS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r)
        .ok_or_else(|| LimitError::UnknownName { name: name.into() })
}

/// One resource limit: soft and hard, `u64::MAX` meaning unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    pub soft: u64,
    pub hard: u64,
}

fn parse_one(s: &str, whole: &str) -> Result<u64, LimitError> {
    match s.trim() {
        "unlimited" | "infinity" => Ok(u64::MAX),
        n => n.parse().map_err(|_| LimitError::BadValue {
            text: whole.to_string(),
        }),
    }
}

impl FromStr for Rlimit {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (soft, hard) = match s.split_once(':') {
            Some((a, b)) => (parse_one(a, s)?, parse_one(b, s)?),
            None => {
                let v = parse_one(s, s)?;
                (v, v)
            }
        };
        if soft > hard {
            return Err(LimitError::SoftAboveHard { text: s.into() });
        }
        Ok(Self { soft, hard })
    }
}

impl fmt::Display for Rlimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one = |v: u64| {
            if v == u64::MAX {
                "unlimited".to_string()
            } else {
                v.to_string()
            }
        };
        if self.soft == self.hard {
            f.write_str(&one(self.soft))
        } else {
            write!(f, "{}:{}", one(self.soft), one(self.hard))
        }
    }
}

impl Serialize for Rlimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Rlimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Self { soft: n, hard: n }),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Checks every name of a limit table.
pub fn check_rlimits(limits: &BTreeMap<String, Rlimit>) -> Result<(), LimitError> {
    for name in limits.keys() {
        rlimit_resource(name)?;
    }
    Ok(())
}

/// Checks a umask value.
pub fn check_umask(value: u32) -> Result<(), LimitError> {
    if value > 0o777 {
        Err(LimitError::Umask { value })
    } else {
        Ok(())
    }
}

/// What every job's processes get, decided by the daemon's config (not by the user).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLimits {
    /// Umask when the job's request names none.
    pub umask: u32,
    /// Set as root before the job drops to its user: soft and hard, raising or lowering. A
    /// job's own limits (its request) are set after the drop and can only lower these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rlimits: BTreeMap<String, Rlimit>,
    /// `PR_SET_NO_NEW_PRIVS`: setuid programs (sudo, ping on some systems) stop working in jobs,
    /// and no job process can gain privileges through exec.
    #[serde(default)]
    pub no_new_privs: bool,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            umask: DEFAULT_UMASK,
            rlimits: BTreeMap::new(),
            no_new_privs: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_print() {
        let l: Rlimit = "1024:4096".parse().unwrap();
        assert_eq!((l.soft, l.hard), (1024, 4096));
        assert_eq!(l.to_string(), "1024:4096");
        let u: Rlimit = "unlimited".parse().unwrap();
        assert_eq!(u.hard, u64::MAX);
        assert_eq!(u.to_string(), "unlimited");
        assert!(matches!(
            "9:1".parse::<Rlimit>(),
            Err(LimitError::SoftAboveHard { .. })
        ));
        assert!(matches!(
            "lots".parse::<Rlimit>(),
            Err(LimitError::BadValue { .. })
        ));
        let from_num: Rlimit = serde_json::from_str("64").unwrap();
        assert_eq!(from_num.soft, 64);
    }

    #[test]
    fn names_and_umask_are_checked() {
        assert_eq!(rlimit_resource("nofile").unwrap(), 7);
        let e = rlimit_resource("files").unwrap_err().to_string();
        assert!(e.contains("files") && e.contains("nofile"), "{e}");
        assert!(check_umask(0o077).is_ok());
        assert!(check_umask(0o1000).is_err());
    }
}
