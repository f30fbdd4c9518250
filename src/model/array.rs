//! Job arrays (`submit --array 0-99%4`): the index set a user types, and what each task of an
//! array carries.
//!
//! One submit of an array makes one job (a *task*) per index. The array is known by its first
//! task's id, as in Slurm, and its tasks are shown as `ARRAY_INDEX` (`12_3`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::job::JobId;
use crate::model::text::quoted;

/// Most tasks one array may have (Slurm's default `MaxArraySize` is 1001).
pub const MAX_TASKS: usize = 10_000;
/// Highest index accepted.
pub const MAX_INDEX: u32 = 9_999_999;

/// The environment variables a task finds its place in.
pub const ENV_ARRAY_JOB_ID: &str = "LOWSCHED_ARRAY_JOB_ID";
pub const ENV_ARRAY_TASK_ID: &str = "LOWSCHED_ARRAY_TASK_ID";

/// An array as submitted: its indices (sorted, distinct) and how many tasks may run at once.
/// Travels and is stored in its text form (`0-99%4`), so a big array stays a short request.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArraySpec {
    indices: Vec<u32>,
    /// At most this many tasks running or paused at once (`%N`).
    pub limit: Option<u32>,
}

/// Which task of which array a job is. Set by the daemon when it makes the tasks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrayTask {
    /// The array's id: its first task's job id.
    pub array: JobId,
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl fmt::Display for ArrayTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.array, self.index)
    }
}

impl ArraySpec {
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }
}

impl FromStr for ArraySpec {
    type Err = String;

    /// `0-99`, `1,3,5-7`, `0-15:4` (every 4th), each optionally followed by `%N`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let accepted = "accepted: 0-99, 1,3,5-7, 0-15:4 (every 4th), each with an optional %N \
                        (at most N tasks at once)";
        let bad = |why: &str| format!("array {}: {why}; {accepted}", quoted(text));
        let (list, limit) = match text.trim().split_once('%') {
            Some((l, n)) => {
                let n: u32 = n.parse().map_err(|_| bad("%N needs a whole number"))?;
                if n == 0 {
                    return Err(bad("%0 would never run a task"));
                }
                (l, Some(n))
            }
            None => (text.trim(), None),
        };
        let number = |w: &str| -> Result<u32, String> {
            w.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= MAX_INDEX)
                .ok_or_else(|| {
                    bad(&format!(
                        "{} is not an index from 0 to {MAX_INDEX}",
                        quoted(w)
                    ))
                })
        };
        let mut indices = Vec::new();
        for part in list.split(',') {
            let (range, step) = match part.split_once(':') {
                Some((r, s)) => (r, number(s)?),
                None => (part, 1),
            };
            if step == 0 {
                return Err(bad("a step of 0"));
            }
            let (lo, hi) = match range.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(range)?, number(range)?),
            };
            if lo > hi {
                return Err(bad(&format!("{lo}-{hi} runs backwards")));
            }
            let count = (hi - lo) / step + 1;
            if indices.len() + count as usize > MAX_TASKS {
                return Err(bad(&format!("more than {MAX_TASKS} tasks")));
            }
            indices.extend((lo..=hi).step_by(step as usize));
        }
        indices.sort_unstable();
        indices.dedup();
        Ok(Self { indices, limit })
    }
}

impl TryFrom<String> for ArraySpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ArraySpec> for String {
    fn from(a: ArraySpec) -> String {
        a.to_string()
    }
}

impl fmt::Display for ArraySpec {
    /// Runs of consecutive indices as `lo-hi`, joined by commas, then `%N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < self.indices.len() {
            let lo = self.indices[i];
            let mut j = i;
            while j + 1 < self.indices.len() && self.indices[j + 1] == self.indices[j] + 1 {
                j += 1;
            }
            let hi = self.indices[j];
            parts.push(if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            });
            i = j + 1;
        }
        f.write_str(&parts.join(","))?;
        if let Some(n) = self.limit {
            write!(f, "%{n}")?;
        }
        Ok(())
    }
}

/// A job named on the command line: a job (`12`; an array's id names all its tasks) or one
/// task of an array (`12_3`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum JobRef {
    Job(JobId),
    Task(JobId, u32),
}

impl FromStr for JobRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "bad job id {}: expected a job id (12) or an array task (12_3)",
                quoted(s)
            )
        };
        let t = s.trim();
        match t.split_once('_') {
            Some((a, i)) => Ok(Self::Task(
                JobId(a.parse().map_err(|_| bad())?),
                i.parse().map_err(|_| bad())?,
            )),
            None => t.parse().map(|n| Self::Job(JobId(n))).map_err(|_| bad()),
        }
    }
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Job(n) => write!(f, "{n}"),
            Self::Task(a, i) => write!(f, "{a}_{i}"),
        }
    }
}

impl JobRef {
    /// Whether this names the job `id`, which is `task` of an array if it is one.
    pub fn names(self, id: JobId, task: Option<ArrayTask>) -> bool {
        match self {
            Self::Job(n) => n == id || task.is_some_and(|t| t.array == n),
            Self::Task(a, i) => task.is_some_and(|t| t.array == a && t.index == i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ArraySpec {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_lists_steps_and_limits() {
        let a = parse("0-99%4");
        assert_eq!(a.indices().len(), 100);
        assert_eq!((a.indices()[0], a.indices()[99], a.limit), (0, 99, Some(4)));
        assert_eq!(parse("1,3,5-7").indices(), [1, 3, 5, 6, 7]);
        assert_eq!(parse("0-15:4").indices(), [0, 4, 8, 12]);
        assert_eq!(parse("7,3,3").indices(), [3, 7]);
        assert_eq!(parse("5").indices(), [5]);
    }

    #[test]
    fn nonsense_is_refused_naming_the_input() {
        for bad in [
            "",
            "a",
            "3-1",
            "1-",
            "0-9%0",
            "0-9%x",
            "0-9:0",
            "-1",
            "0-99999999",
            "1,,2",
        ] {
            let e = bad.parse::<ArraySpec>().unwrap_err();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("accepted"),
                "{e}"
            );
        }
        let e = "0-10000".parse::<ArraySpec>().unwrap_err();
        assert!(e.contains("more than 10000 tasks"), "{e}");
    }

    #[test]
    fn text_form_round_trips_compactly() {
        for s in ["0-99%4", "1,3,5-7", "0,4,8,12", "5"] {
            assert_eq!(parse(s).to_string(), s);
        }
        let json = serde_json::to_string(&parse("0-9999%10")).unwrap();
        assert_eq!(json, "\"0-9999%10\"");
        assert_eq!(
            serde_json::from_str::<ArraySpec>(&json).unwrap(),
            parse("0-9999%10")
        );
    }

    proptest::proptest! {
        /// Any set of indices, written as a comma list in any order with repeats, parses to the
        /// set, and its compact text form parses back to the same.
        #[test]
        fn any_index_list_parses_to_its_set(
            mut idx in proptest::collection::vec(0u32..500, 1..60),
            limit in proptest::option::of(1u32..50),
        ) {
            let mut text = idx.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            if let Some(n) = limit {
                text.push_str(&format!("%{n}"));
            }
            let a: ArraySpec = text.parse().unwrap();
            idx.sort_unstable();
            idx.dedup();
            proptest::prop_assert_eq!(a.indices(), idx.as_slice());
            proptest::prop_assert_eq!(a.limit, limit);
            proptest::prop_assert_eq!(a.to_string().parse::<ArraySpec>().unwrap(), a);
        }

        /// A range with a step has exactly the indices lo, lo+step, ... up to hi.
        #[test]
        fn stepped_ranges(lo in 0u32..1000, len in 0u32..1000, step in 1u32..50) {
            let hi = lo + len;
            let a: ArraySpec = format!("{lo}-{hi}:{step}").parse().unwrap();
            let want: Vec<u32> = (lo..=hi).step_by(step as usize).collect();
            proptest::prop_assert_eq!(a.indices(), want.as_slice());
        }

        /// Nothing typed makes the parser panic or exceed the task cap.
        #[test]
        fn arbitrary_text_never_panics(text in "[0-9,:%-]{0,24}") {
            if let Ok(a) = text.parse::<ArraySpec>() {
                proptest::prop_assert!(!a.indices().is_empty() && a.indices().len() <= MAX_TASKS);
            }
        }
    }

    #[test]
    fn job_refs_name_arrays_and_tasks() {
        let task = ArrayTask {
            array: JobId(12),
            index: 3,
            limit: None,
        };
        let t = Some(task);
        let whole: JobRef = "12".parse().unwrap();
        let one: JobRef = "12_3".parse().unwrap();
        assert!(whole.names(JobId(15), t) && one.names(JobId(15), t));
        assert!(whole.names(JobId(12), None));
        assert!(!"12_4".parse::<JobRef>().unwrap().names(JobId(15), t));
        assert!(!"13".parse::<JobRef>().unwrap().names(JobId(15), t));
        assert!("12_".parse::<JobRef>().is_err() && "x".parse::<JobRef>().is_err());
        assert_eq!(task.to_string(), "12_3");
    }
}
