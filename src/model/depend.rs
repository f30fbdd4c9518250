//! Job dependencies (`submit --after/--afterok/--afternotok/--afterany ID`, or Slurm's
//! `--dependency`): which jobs a job waits for, on what condition, and whether a condition is met,
//! can still be met, or never can be.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::job::JobId;
use crate::model::jobstate::JobState;
use crate::model::text::quoted;

/// Most dependencies one job may name.
pub const MAX_DEPENDENCIES: usize = 256;

/// What a job waits for of another, with Slurm's names and meanings.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DepKind {
    /// It has started (or ended without starting).
    After,
    /// It has ended, however.
    AfterAny,
    /// It has succeeded (exit 0).
    AfterOk,
    /// It has ended without success: failed, cancelled, timed out or unschedulable.
    AfterNotOk,
}

impl DepKind {
    pub const ALL: [DepKind; 4] = [
        DepKind::After,
        DepKind::AfterAny,
        DepKind::AfterOk,
        DepKind::AfterNotOk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::After => "after",
            Self::AfterAny => "afterany",
            Self::AfterOk => "afterok",
            Self::AfterNotOk => "afternotok",
        }
    }
}

impl fmt::Display for DepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DepKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown dependency type {}; accepted: {}",
                    quoted(s),
                    Self::ALL.map(Self::as_str).join(", ")
                )
            })
    }
}

/// One condition on one other job.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    pub kind: DepKind,
    pub job: JobId,
}

/// Where a dependency stands, given its job's state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DepStatus {
    Met,
    /// Not yet: the other job has not reached the state it waits for, but may.
    Waiting,
    /// Never: the other job ended the wrong way, or is not known.
    Never,
}

impl Dependency {
    /// Where it stands when its job is in `state` (`None`: no such job is known).
    pub fn status(self, state: Option<JobState>) -> DepStatus {
        use JobState::*;
        let Some(state) = state else {
            return DepStatus::Never;
        };
        let met = match self.kind {
            DepKind::After => state != Pending,
            DepKind::AfterAny => state.is_terminal(),
            DepKind::AfterOk => state == Succeeded,
            DepKind::AfterNotOk => state.is_terminal() && state != Succeeded,
        };
        if met {
            DepStatus::Met
        } else if state.is_terminal() {
            DepStatus::Never
        } else {
            DepStatus::Waiting
        }
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.job)
    }
}

/// The job ids of one `--after`-style flag: `3`, `3,4` or `3:4` (Slurm separates ids by `:`).
pub fn parse_ids(kind: DepKind, text: &str) -> Result<Vec<Dependency>, String> {
    let out: Vec<Dependency> = text
        .split([',', ':'])
        .map(|w| {
            let w = w.trim();
            w.parse::<u64>()
                .map(|n| Dependency {
                    kind,
                    job: JobId(n),
                })
                .map_err(|_| {
                    format!(
                        "bad job id {} in {}: expected ids like 12 or 12,13",
                        quoted(w),
                        quoted(text)
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(out)
}

/// Slurm's `--dependency` list: `TYPE:ID[:ID...][,TYPE:ID...]`, all of which must hold
/// (`afterok:12:13,after:14`). Slurm's `?` (any of them) and the `singleton`, `aftercorr` and
/// `afterburstbuffer` types are refused, naming what is accepted.
pub fn parse_slurm(text: &str) -> Result<Vec<Dependency>, String> {
    if text.contains('?') {
        return Err(format!(
            "dependency {}: '?' (any one of them) is not supported; all listed must hold \
             (separate them with ',')",
            quoted(text)
        ));
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        let (kind, ids) = part
            .split_once(':')
            .ok_or_else(|| format!("dependency {}: expected TYPE:ID[:ID...]", quoted(part)))?;
        let kind: DepKind = kind.parse()?;
        out.extend(parse_ids(kind, ids)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(kind: DepKind, n: u64) -> Dependency {
        Dependency {
            kind,
            job: JobId(n),
        }
    }

    #[test]
    fn conditions_follow_slurms_meanings() {
        use DepStatus::*;
        use JobState::*;
        let cases = [
            (DepKind::After, Pending, Waiting),
            (DepKind::After, Running, Met),
            (DepKind::After, Paused, Met),
            (DepKind::After, Cancelled, Met),
            (DepKind::AfterAny, Running, Waiting),
            (DepKind::AfterAny, Failed, Met),
            (DepKind::AfterAny, Succeeded, Met),
            (DepKind::AfterOk, Running, Waiting),
            (DepKind::AfterOk, Succeeded, Met),
            (DepKind::AfterOk, Failed, Never),
            (DepKind::AfterOk, Timeout, Never),
            (DepKind::AfterOk, Cancelled, Never),
            (DepKind::AfterNotOk, Pending, Waiting),
            (DepKind::AfterNotOk, Failed, Met),
            (DepKind::AfterNotOk, Timeout, Met),
            (DepKind::AfterNotOk, Unschedulable, Met),
            (DepKind::AfterNotOk, Succeeded, Never),
        ];
        for (kind, state, want) in cases {
            assert_eq!(dep(kind, 1).status(Some(state)), want, "{kind} on {state}");
        }
        for kind in DepKind::ALL {
            assert_eq!(dep(kind, 1).status(None), Never, "{kind} on an unknown job");
        }
    }

    #[test]
    fn id_lists_and_slurm_form_parse() {
        assert_eq!(
            parse_ids(DepKind::AfterOk, "3, 4:5").unwrap(),
            [
                dep(DepKind::AfterOk, 3),
                dep(DepKind::AfterOk, 4),
                dep(DepKind::AfterOk, 5)
            ]
        );
        assert_eq!(
            parse_slurm("afterok:12:13,AFTER:14").unwrap(),
            [
                dep(DepKind::AfterOk, 12),
                dep(DepKind::AfterOk, 13),
                dep(DepKind::After, 14)
            ]
        );
        for bad in ["", "x", "3,", "-1", "3_1"] {
            let e = parse_ids(DepKind::After, bad).unwrap_err();
            assert!(e.contains("bad job id"), "{bad}: {e}");
        }
        for bad in [
            "afterok",
            "afterok:1?after:2",
            "singleton",
            "aftercorr:3",
            "afterok:x",
        ] {
            assert!(parse_slurm(bad).is_err(), "{bad}");
        }
        assert!(parse_slurm("nope:1").unwrap_err().contains("afternotok"));
    }

    proptest::proptest! {
        /// Any list of dependencies written in Slurm's form parses back to itself.
        #[test]
        fn slurm_form_round_trips(
            deps in proptest::collection::vec((0usize..4, 0u64..1_000_000), 1..20),
        ) {
            let deps: Vec<Dependency> =
                deps.iter().map(|&(k, n)| dep(DepKind::ALL[k], n)).collect();
            let text: Vec<String> = deps.iter().map(Dependency::to_string).collect();
            proptest::prop_assert_eq!(parse_slurm(&text.join(",")).unwrap(), deps);
        }

        /// A dependency is never both met and never-met, and only a terminal parent can make it
        /// never-met (a live one may still get there).
        #[test]
        fn live_parents_never_end_a_wait(k in 0usize..4, s in 0usize..8) {
            let state = JobState::ALL[s];
            let status = dep(DepKind::ALL[k], 1).status(Some(state));
            if !state.is_terminal() {
                proptest::prop_assert_ne!(status, DepStatus::Never);
            }
            if state.is_terminal() {
                proptest::prop_assert_ne!(status, DepStatus::Waiting);
            }
        }
    }

    #[test]
    fn display_round_trips_through_the_slurm_form() {
        let deps = [dep(DepKind::AfterNotOk, 7), dep(DepKind::AfterAny, 9)];
        let text: Vec<String> = deps.iter().map(Dependency::to_string).collect();
        assert_eq!(parse_slurm(&text.join(",")).unwrap(), deps);
    }
}
