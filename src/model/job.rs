//! The job model: what a user submits (`JobSpec`), how it is named (`JobId`), and its checks.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::array::{ArraySpec, ArrayTask};
use crate::model::depend::{Dependency, MAX_DEPENDENCIES};
use crate::model::limits::{self, LimitError, Rlimit};
use crate::model::resources::{Bytes, CoreRange, GpuRequest, MIN_MEMORY};
pub use crate::model::text::{escape_controls, is_unsafe_char};

/// Longest job name, class name or colocation entry accepted.
pub const MAX_NAME_LEN: usize = 128;
/// Most argv entries, env entries or colocation entries in one job.
pub const MAX_LIST_LEN: usize = 4096;

/// A job's identity: assigned by the daemon at submit, unique for the life of a state dir.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.0)
    }
}

impl FromStr for JobId {
    type Err = JobError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse().map(JobId).map_err(|_| JobError::BadId {
            text: s.to_string(),
        })
    }
}

/// Wall-clock time in milliseconds since the Unix epoch. Policies receive it as an input and never
/// read a clock; the journal stores it, so it survives restarts (unlike `Instant`).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Whom a job must not share cores with, and whether it may run next to the protected service.
///
/// "Share cores" means the same physical core: batch jobs never get the same logical CPU, but
/// SMT siblings share caches and execution units, which is where interference comes from.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Colocation {
    /// A class name other jobs can refer to (e.g. `membw`, `io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Names or classes of jobs this one must not share a physical core with. The rule is
    /// symmetric: either side naming the other is enough.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid: Vec<String>,
    /// When false, the job never runs on a physical core shared with the protected service.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub beside_service: bool,
}

impl Default for Colocation {
    fn default() -> Self {
        Self {
            class: None,
            avoid: Vec::new(),
            beside_service: true,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Everything a user says about a job. Relative times (deadline, timeout) count from submission.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub cores: CoreRange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    #[serde(default, skip_serializing_if = "GpuRequest::is_none")]
    pub gpus: GpuRequest,
    /// Expected run time, used by `sjf`, `ljf` and backfill.
    #[serde(default, with = "secs", skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Duration>,
    /// Should finish within this long after submission; `edf` orders by it.
    #[serde(default, with = "secs", skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
    /// Becomes Unschedulable if it has not started this long after submission.
    #[serde(default, with = "secs", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Run-time limit (`submit --time`): killed, ending as Timeout, once it has run this long.
    /// Only time running counts, not time paused (see `decide::policy::timelimit`).
    #[serde(default, with = "secs", skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<Duration>,
    /// Jobs this one waits for (`submit --afterok ID` ...); all must be met.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Dependency>,
    /// In a submit: make one task per index (`submit --array`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArraySpec>,
    /// Which array task this job is; only the daemon sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<ArrayTask>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "is_default_colocation")]
    pub colocation: Colocation,
    /// The job's umask (`lowsched submit` sends the caller's); the config's default otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    /// Resource limits the job asks for (e.g. the caller's own), set after it became its user:
    /// they can lower the daemon's limits, never raise a hard one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rlimits: BTreeMap<String, Rlimit>,
    /// Who placed and started the job; only the daemon sets anything but `lowsched`.
    #[serde(default, skip_serializing_if = "Origin::is_lowsched")]
    pub origin: Origin,
}

/// Where a job comes from: submitted to lowsched, or found running under another scheduler
/// (a Slurm job on this node, which lowsched squeezes but does not start or end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    #[default]
    Lowsched,
    /// Slurm's job id.
    Slurm(u64),
}

impl Origin {
    pub fn is_lowsched(&self) -> bool {
        *self == Origin::Lowsched
    }

    /// The id users know the job by: lowsched's own, or `slurm:<id>`.
    pub fn display_id(&self, id: JobId) -> String {
        match self {
            Origin::Lowsched => id.to_string(),
            Origin::Slurm(n) => format!("slurm:{n}"),
        }
    }
}

fn is_default_colocation(c: &Colocation) -> bool {
    c.class.is_none() && c.avoid.is_empty() && c.beside_service
}

/// Why a job spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("bad job id {}: expected a non-negative integer", super::text::quoted(.text))]
    BadId { text: String },
    #[error("job has no command (argv is empty)")]
    EmptyArgv,
    #[error("origin is set by the daemon (jobs of other schedulers are found, not submitted)")]
    Origin,
    #[error("time limit must be above zero (a job that may not run cannot finish)")]
    ZeroTimeLimit,
    #[error("{field} contains a NUL byte")]
    Nul { field: String },
    #[error("{field} is {len} long; the limit is {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("job name must not be empty")]
    EmptyName,
    #[error("bad environment variable name {}: must be non-empty and contain no '='", super::text::quoted(.name))]
    EnvName { name: String },
    #[error("bad core range {min}:{max}: need 1 <= min <= max")]
    Cores { min: u32, max: u32 },
    #[error("{field} must be a relative or absolute path, not empty")]
    EmptyPath { field: &'static str },
    #[error(
        "memory limit {bytes} bytes is below the floor of {floor}: no job runs in that; \
         give a size with a unit, e.g. 512M or 8G"
    )]
    MemoryFloor { bytes: u64, floor: Bytes },
    #[error("{field} {} contains a control character (shown escaped); use printable text", super::text::quoted(.text))]
    Control { field: &'static str, text: String },
    #[error(transparent)]
    Limit(#[from] LimitError),
}

impl JobSpec {
    /// A spec with defaults for everything but the command; the name is argv[0]'s file name.
    pub fn new(argv: Vec<String>) -> Self {
        let name = argv
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_default();
        Self {
            name,
            argv,
            env: BTreeMap::new(),
            cwd: None,
            priority: 0,
            cores: CoreRange::default(),
            memory: None,
            gpus: GpuRequest::default(),
            estimate: None,
            deadline: None,
            timeout: None,
            time_limit: None,
            dependencies: Vec::new(),
            array: None,
            task: None,
            stdout: None,
            stderr: None,
            colocation: Colocation::default(),
            umask: None,
            rlimits: BTreeMap::new(),
            origin: Origin::Lowsched,
        }
    }

    /// Checks what can be checked without knowing the node: a runnable argv, sane names and
    /// ranges, nothing that cannot cross `execve` (NUL bytes).
    pub fn validate(&self) -> Result<(), JobError> {
        if self.argv.is_empty() {
            return Err(JobError::EmptyArgv);
        }
        if !self.origin.is_lowsched() {
            return Err(JobError::Origin);
        }
        if self.name.is_empty() {
            return Err(JobError::EmptyName);
        }
        check_len("name", self.name.len(), MAX_NAME_LEN)?;
        check_len("argv", self.argv.len(), MAX_LIST_LEN)?;
        check_len("env", self.env.len(), MAX_LIST_LEN)?;
        check_len(
            "colocation.avoid",
            self.colocation.avoid.len(),
            MAX_LIST_LEN,
        )?;
        check_nul("name", &self.name)?;
        for (i, arg) in self.argv.iter().enumerate() {
            check_nul(&format!("argv[{i}]"), arg)?;
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') {
                return Err(JobError::EnvName { name: k.clone() });
            }
            check_nul(&format!("env name {}", super::text::quoted(k)), k)?;
            check_nul(&format!("env {k}"), v)?;
        }
        check_len("dependencies", self.dependencies.len(), MAX_DEPENDENCIES)?;
        if self.time_limit.is_some_and(|t| t.is_zero()) {
            return Err(JobError::ZeroTimeLimit);
        }
        if !self.cores.is_valid() {
            return Err(JobError::Cores {
                min: self.cores.min,
                max: self.cores.max,
            });
        }
        if let Some(m) = self.memory {
            if m < MIN_MEMORY {
                return Err(JobError::MemoryFloor {
                    bytes: m.get(),
                    floor: MIN_MEMORY,
                });
            }
        }
        for (field, path) in [
            ("cwd", &self.cwd),
            ("stdout", &self.stdout),
            ("stderr", &self.stderr),
        ] {
            if let Some(p) = path {
                if p.as_os_str().is_empty() {
                    return Err(JobError::EmptyPath { field });
                }
                check_nul(field, &p.to_string_lossy())?;
            }
        }
        check_printable("name", &self.name)?;
        if let Some(class) = &self.colocation.class {
            check_len("colocation.class", class.len(), MAX_NAME_LEN)?;
            check_printable("colocation.class", class)?;
        }
        for name in &self.colocation.avoid {
            check_len("colocation.avoid entry", name.len(), MAX_NAME_LEN)?;
            check_printable("colocation.avoid entry", name)?;
        }
        if let Some(mask) = self.umask {
            limits::check_umask(mask)?;
        }
        limits::check_rlimits(&self.rlimits)?;
        Ok(())
    }

    /// True when this job and `other` must not share a physical core.
    pub fn conflicts_with(&self, other: &JobSpec) -> bool {
        let names = |s: &JobSpec, n: &str| s.name == n || s.colocation.class.as_deref() == Some(n);
        self.colocation.avoid.iter().any(|n| names(other, n))
            || other.colocation.avoid.iter().any(|n| names(self, n))
    }
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), JobError> {
    if len > max {
        Err(JobError::TooLong { field, len, max })
    } else {
        Ok(())
    }
}

fn check_nul(field: &str, s: &str) -> Result<(), JobError> {
    if s.contains('\0') {
        Err(JobError::Nul {
            field: field.to_string(),
        })
    } else {
        Ok(())
    }
}

/// Names end up on other users' terminals (`status`, `events`): no control characters (C0,
/// DEL, C1: escape sequences start with one), no bidirectional overrides.
fn check_printable(field: &'static str, s: &str) -> Result<(), JobError> {
    if s.chars().any(is_unsafe_char) {
        Err(JobError::Control {
            field,
            text: s.escape_default().to_string(),
        })
    } else {
        Ok(())
    }
}

/// Serde for `Option<Duration>` as (fractional) seconds, the unit users type.
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(v) = Option::<f64>::deserialize(d)? else {
            return Ok(None);
        };
        Duration::try_from_secs_f64(v).map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "{v} is not a valid number of seconds (need a finite value >= 0)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        let mut s = JobSpec::new(vec![
            "/usr/bin/stress-ng".into(),
            "--cpu".into(),
            "1".into(),
        ]);
        s.env.insert("OMP_NUM_THREADS".into(), "2".into());
        s.priority = 5;
        s.cores = CoreRange { min: 1, max: 2 };
        s.memory = Some("512m".parse().unwrap());
        s.gpus = "A100:2".parse().unwrap();
        s.estimate = Some(Duration::from_millis(1500));
        s.deadline = Some(Duration::from_secs(60));
        s.timeout = Some(Duration::from_secs(30));
        s.time_limit = Some(Duration::from_secs(90));
        s.stdout = Some("/tmp/out".into());
        s.colocation.class = Some("cpu".into());
        s.colocation.avoid = vec!["radix".into()];
        s.colocation.beside_service = false;
        s
    }

    #[test]
    fn spec_json_round_trip() {
        let s = spec();
        let json = serde_json::to_string(&s).unwrap();
        let back: JobSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.name, "stress-ng");
        assert!(json.contains("\"memory\":\"512M\""), "{json}");
        assert!(json.contains("\"time_limit\":90.0"), "{json}");
        let mut zero = s.clone();
        zero.time_limit = Some(Duration::ZERO);
        assert_eq!(zero.validate(), Err(JobError::ZeroTimeLimit));
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let s: JobSpec = serde_json::from_str(r#"{"name":"t","argv":["true"]}"#).unwrap();
        assert_eq!(s.cores, CoreRange::exactly(1));
        assert!(s.colocation.beside_service);
        s.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_times_are_refused() {
        let e = serde_json::from_str::<JobSpec>(r#"{"name":"t","argv":["x"],"prio":1}"#);
        assert!(e.unwrap_err().to_string().contains("prio"));
        let e = serde_json::from_str::<JobSpec>(r#"{"name":"t","argv":["x"],"timeout":-1}"#);
        assert!(e.unwrap_err().to_string().contains("-1"));
    }

    #[test]
    fn validation_names_the_problem() {
        let mut s = spec();
        s.argv.clear();
        assert_eq!(s.validate(), Err(JobError::EmptyArgv));
        let mut s = spec();
        s.argv.push("a\0b".into());
        assert!(s.validate().unwrap_err().to_string().contains("argv[3]"));
        let mut s = spec();
        s.env.insert("A=B".into(), "1".into());
        assert!(matches!(s.validate(), Err(JobError::EnvName { .. })));
        let mut s = spec();
        s.cores = CoreRange { min: 3, max: 2 };
        assert!(matches!(s.validate(), Err(JobError::Cores { .. })));
        let mut s = spec();
        s.name = "x".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            s.validate(),
            Err(JobError::TooLong { field: "name", .. })
        ));
    }

    #[test]
    fn control_characters_in_names_are_refused() {
        for bad in [
            "\u{1b}[2Jowned",
            "a\nb",
            "x\u{9b}31m",
            "bell\u{7}",
            "rtl\u{202e}gpj.exe",
        ] {
            let mut s = spec();
            s.name = bad.into();
            let e = s.validate().unwrap_err();
            assert!(
                matches!(e, JobError::Control { field: "name", .. }),
                "{bad:?}: {e}"
            );
            assert!(
                !e.to_string().contains('\u{1b}'),
                "the error itself is escaped"
            );
            let mut s = spec();
            s.colocation.class = Some(bad.into());
            assert!(s.validate().is_err(), "{bad:?}");
            let mut s = spec();
            s.colocation.avoid.push(bad.into());
            assert!(s.validate().is_err(), "{bad:?}");
        }
        let mut s = spec();
        s.name = "Größe-日本".into();
        s.validate().unwrap();
    }

    #[test]
    fn escaping_keeps_text_and_shows_controls() {
        assert_eq!(escape_controls("Größe job"), "Größe job");
        let e = escape_controls("a\u{1b}[31mb\u{9b}c\n");
        assert_eq!(e, "a\\u{1b}[31mb\\u{9b}c\\n");
        assert!(!e.chars().any(is_unsafe_char));
    }

    #[test]
    fn umask_and_limits_are_checked() {
        let mut s = spec();
        s.umask = Some(0o1777);
        assert!(matches!(s.validate(), Err(JobError::Limit(_))));
        let mut s = spec();
        s.rlimits.insert("nofiles".into(), "10".parse().unwrap());
        assert!(s.validate().unwrap_err().to_string().contains("nofiles"));
        let s: JobSpec = serde_json::from_str(
            r#"{"name":"t","argv":["x"],"umask":18,"rlimits":{"nofile":"64:128"}}"#,
        )
        .unwrap();
        assert_eq!(s.umask, Some(0o22));
        assert_eq!(s.rlimits["nofile"].hard, 128);
        s.validate().unwrap();
    }

    #[test]
    fn colocation_conflicts_are_symmetric_and_match_classes() {
        let a = spec();
        let mut radix = JobSpec::new(vec!["radix".into()]);
        assert!(a.conflicts_with(&radix) && radix.conflicts_with(&a));
        radix.name = "other".into();
        assert!(!a.conflicts_with(&radix));
        radix.colocation.avoid = vec!["cpu".into()];
        assert!(radix.conflicts_with(&a));
    }

    #[test]
    fn job_id_parses() {
        assert_eq!("42".parse::<JobId>().unwrap(), JobId(42));
        assert!(
            "-1".parse::<JobId>()
                .unwrap_err()
                .to_string()
                .contains("\"-1\"")
        );
    }
}
