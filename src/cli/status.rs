//! `lowsched status` as squeue users expect it: filters (ids, --state, --user, --name), named
//! columns (--format), --noheader, --parsable, an elapsed column; and the job selection that
//! `cancel`, `pause` and `resume` share with it. Names, users and reasons come from users: their
//! control characters are shown escaped, never sent to the terminal.

use std::fmt::Write as _;

use argh::{ArgsInfo, FromArgs};

use crate::api::protocol::JobStatus;
use crate::model::array::JobRef;
use crate::model::cpuset::CpuSet;
use crate::model::job::escape_controls as esc;
use crate::model::jobstate::JobState;

/// Show jobs as a table (filtered, formatted), or one job field by field.
#[derive(FromArgs, ArgsInfo, Debug, Default)]
#[argh(subcommand, name = "status", help_triggers("-h", "--help"))]
pub struct StatusArgs {
    /// print JSON
    #[argh(switch)]
    pub json: bool,
    /// only jobs in these states, comma-separated (pending, running, paused, succeeded,
    /// failed, cancelled, unschedulable, timeout; active = pending,running,paused)
    #[argh(option, from_str_fn(states))]
    pub state: Option<Vec<JobState>>,
    /// only this user's jobs
    #[argh(option)]
    pub user: Option<String>,
    /// only jobs with this name
    #[argh(option)]
    pub name: Option<String>,
    /// columns, comma-separated: id, name, state, user, cores, prio, exit, elapsed,
    /// submitted, reason, timelimit, runtime (not counting time paused), cputime, maxmem
    /// (default id,name,state,user,cores,prio,elapsed,exit,reason)
    #[argh(option, from_str_fn(columns))]
    pub format: Option<Vec<Column>>,
    /// no header line
    #[argh(switch)]
    pub noheader: bool,
    /// fields separated by |, not padded (for scripts)
    #[argh(switch)]
    pub parsable: bool,
    /// the jobs to show: ids, an array's id (all its tasks) or ARRAY_INDEX (one task); one
    /// id alone shows that job field by field (what it asked for and was given, its outputs)
    #[argh(positional)]
    pub ids: Vec<JobRef>,
}

/// Finished jobs as sacct shows them: elapsed, run time, CPU time and peak memory (where the
/// job's cgroup reports them; n/a where it does not, e.g. memory on hybrid cgroup hosts).
#[derive(FromArgs, ArgsInfo, Debug, Default)]
#[argh(subcommand, name = "history", help_triggers("-h", "--help"))]
pub struct HistoryArgs {
    /// print JSON
    #[argh(switch)]
    pub json: bool,
    /// only jobs in these finished states, comma-separated (succeeded, failed, cancelled,
    /// unschedulable, timeout)
    #[argh(option, from_str_fn(states))]
    pub state: Option<Vec<JobState>>,
    /// only this user's jobs
    #[argh(option)]
    pub user: Option<String>,
    /// only jobs with this name
    #[argh(option)]
    pub name: Option<String>,
    /// columns, comma-separated, as for status (default
    /// id,name,user,state,exit,elapsed,runtime,cputime,maxmem,timelimit)
    #[argh(option, from_str_fn(columns))]
    pub format: Option<Vec<Column>>,
    /// no header line
    #[argh(switch)]
    pub noheader: bool,
    /// fields separated by |, not padded (for scripts)
    #[argh(switch)]
    pub parsable: bool,
    /// the jobs to show: ids, an array's id (all its tasks) or ARRAY_INDEX
    #[argh(positional)]
    pub ids: Vec<JobRef>,
}

impl HistoryArgs {
    /// The status listing it is: only finished jobs, sacct's columns by default.
    pub fn as_status(&self) -> StatusArgs {
        let finished: Vec<JobState> = JobState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .filter(|s| self.state.as_ref().is_none_or(|want| want.contains(s)))
            .collect();
        StatusArgs {
            json: self.json,
            state: Some(finished),
            user: self.user.clone(),
            name: self.name.clone(),
            format: Some(
                self.format
                    .clone()
                    .unwrap_or_else(|| Column::HISTORY.to_vec()),
            ),
            noheader: self.noheader,
            parsable: self.parsable,
            ids: self.ids.clone(),
        }
    }
}

/// Which jobs a command applies to: ids (any, if none given) and the filters, all of which
/// must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub ids: Vec<JobRef>,
    pub states: Option<Vec<JobState>>,
    pub user: Option<String>,
    pub name: Option<String>,
}

impl Filter {
    /// The filter of a command's `ids`, `--state`, `--user` and `--name` (status, cancel, pause,
    /// resume each take the same four).
    pub fn of(
        ids: &[JobRef],
        states: &Option<Vec<JobState>>,
        user: &Option<String>,
        name: &Option<String>,
    ) -> Self {
        Self {
            ids: ids.to_vec(),
            states: states.clone(),
            user: user.clone(),
            name: name.clone(),
        }
    }

    pub fn matches(&self, j: &JobStatus) -> bool {
        (self.ids.is_empty() || self.ids.iter().any(|r| r.names(j.id, j.task)))
            && self.states.as_ref().is_none_or(|s| s.contains(&j.state))
            && self.user.as_ref().is_none_or(|u| *u == j.user)
            && self.name.as_ref().is_none_or(|n| *n == j.name)
    }

    /// Whether anything beyond ids narrows the selection.
    pub fn has_filters(&self) -> bool {
        self.states.is_some() || self.user.is_some() || self.name.is_some()
    }
}

impl StatusArgs {
    pub fn filter(&self) -> Filter {
        Filter::of(&self.ids, &self.state, &self.user, &self.name)
    }

    /// One job field by field: exactly one id and no table options.
    pub fn wants_detail(&self) -> bool {
        self.ids.len() == 1
            && !self.filter().has_filters()
            && self.format.is_none()
            && !self.noheader
            && !self.parsable
    }
}

/// A `--state` list.
pub fn states(text: &str) -> Result<Vec<JobState>, String> {
    let mut out = Vec::new();
    for word in text.split(',').map(str::trim) {
        if word.eq_ignore_ascii_case("active") {
            out.extend([JobState::Pending, JobState::Running, JobState::Paused]);
            continue;
        }
        let s = word.to_ascii_lowercase().parse().map_err(|_| {
            format!(
                "unknown state '{word}'; accepted, comma-separated: {}, active",
                JobState::ALL.map(JobState::as_str).join(", ")
            )
        })?;
        out.push(s);
    }
    Ok(out)
}

/// A column of the status table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Id,
    Name,
    State,
    User,
    Cores,
    Prio,
    Exit,
    Elapsed,
    Submitted,
    Reason,
    TimeLimit,
    RunTime,
    CpuTime,
    MaxMem,
}

impl Column {
    const ALL: [(Column, &'static str, usize); 14] = [
        (Column::Id, "id", 6),
        (Column::Name, "name", 16),
        (Column::State, "state", 13),
        (Column::User, "user", 10),
        (Column::Cores, "cores", 9),
        (Column::Prio, "prio", 5),
        (Column::Exit, "exit", 6),
        (Column::Elapsed, "elapsed", 11),
        (Column::Submitted, "submitted", 24),
        (Column::Reason, "reason", 0),
        (Column::TimeLimit, "timelimit", 11),
        (Column::RunTime, "runtime", 11),
        (Column::CpuTime, "cputime", 12),
        (Column::MaxMem, "maxmem", 8),
    ];
    const HISTORY: [Column; 10] = [
        Column::Id,
        Column::Name,
        Column::User,
        Column::State,
        Column::Exit,
        Column::Elapsed,
        Column::RunTime,
        Column::CpuTime,
        Column::MaxMem,
        Column::TimeLimit,
    ];
    const DEFAULT: [Column; 9] = [
        Column::Id,
        Column::Name,
        Column::State,
        Column::User,
        Column::Cores,
        Column::Prio,
        Column::Elapsed,
        Column::Exit,
        Column::Reason,
    ];

    fn name(self) -> &'static str {
        Self::ALL.iter().find(|c| c.0 == self).map_or("", |c| c.1)
    }

    fn width(self) -> usize {
        Self::ALL.iter().find(|c| c.0 == self).map_or(0, |c| c.2)
    }
}

/// A `--format` list.
pub fn columns(text: &str) -> Result<Vec<Column>, String> {
    text.split(',')
        .map(|w| {
            let w = w.trim().to_ascii_lowercase();
            Column::ALL
                .iter()
                .find(|c| c.1 == w)
                .map(|c| c.0)
                .ok_or_else(|| {
                    let names: Vec<&str> = Column::ALL.iter().map(|c| c.1).collect();
                    format!(
                        "unknown column '{w}'; accepted, comma-separated: {}",
                        names.join(", ")
                    )
                })
        })
        .collect()
}

/// `D-HH:MM:SS` (days only when there are any), as Slurm prints times.
pub fn elapsed(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// How long the job has run (until now, or until it ended); `-` if it never started.
fn run_time(j: &JobStatus, now_ms: u64) -> String {
    match j.started_ms {
        Some(start) => elapsed(j.ended_ms.unwrap_or(now_ms).saturating_sub(start)),
        None => "-".into(),
    }
}

fn cell(j: &JobStatus, c: Column, now_ms: u64) -> String {
    match c {
        Column::Id => j
            .task
            .map_or_else(|| j.origin.display_id(j.id), |t| t.to_string()),
        Column::Name => esc(&j.name).into_owned(),
        Column::State if j.held => format!("{} (held)", j.state),
        Column::State => j.state.to_string(),
        Column::User => esc(&j.user).into_owned(),
        Column::Cores if j.cores.is_empty() => "-".into(),
        Column::Cores => j.cores.iter().copied().collect::<CpuSet>().to_string(),
        Column::Prio => j.priority.to_string(),
        Column::Exit => match (j.exit_code, j.signal) {
            (_, Some(sig)) => format!("sig {sig}"),
            (Some(code), None) => code.to_string(),
            (None, None) => "-".into(),
        },
        Column::Elapsed => run_time(j, now_ms),
        Column::Submitted => crate::store::eventlog::iso8601(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(j.submitted_ms),
        ),
        Column::Reason => esc(j.reason.as_deref().unwrap_or("")).into_owned(),
        Column::TimeLimit => j
            .time_limit_s
            .map_or("-".into(), |s| elapsed((s * 1000.0) as u64)),
        Column::RunTime if j.started_ms.is_none() => "-".into(),
        Column::RunTime => elapsed(run_ms(j, now_ms)),
        Column::CpuTime => match j.usage {
            None => "-".into(),
            Some(u) => u.cpu_us.map_or("n/a".into(), |us| {
                format!("{}.{:03}", elapsed(us / 1000), us / 1000 % 1000)
            }),
        },
        Column::MaxMem => match j.usage {
            None => "-".into(),
            Some(u) => u.memory_peak.map_or("n/a".into(), |b| {
                crate::model::resources::Bytes(b).to_string()
            }),
        },
    }
}

/// How long the job has run, time paused not counted (what its time limit counts).
pub fn run_ms(j: &JobStatus, now_ms: u64) -> u64 {
    j.ran_ms + j.resumed_ms.map_or(0, |r| now_ms.saturating_sub(r))
}

/// The table `args` ask for, of the jobs the filter selects, at `now_ms` (Unix ms).
pub fn table(jobs: &[JobStatus], args: &StatusArgs, now_ms: u64) -> String {
    let cols: &[Column] = args.format.as_deref().unwrap_or(&Column::DEFAULT);
    let filter = args.filter();
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .filter(|j| filter.matches(j))
        .map(|j| cols.iter().map(|&c| cell(j, c, now_ms)).collect())
        .collect();
    let header: Vec<String> = cols.iter().map(|c| c.name().to_uppercase()).collect();
    let mut out = String::new();
    let lines = (!args.noheader)
        .then_some(&header)
        .into_iter()
        .chain(rows.iter());
    for row in lines {
        if args.parsable {
            let _ = writeln!(out, "{}", row.join("|"));
            continue;
        }
        let mut line = String::new();
        for (i, (c, v)) in cols.iter().zip(row).enumerate() {
            let last = i + 1 == cols.len();
            let w = c.width();
            // An id is never clipped: it is what users copy into the next command.
            let v = if last || w == 0 || *c == Column::Id {
                v.clone()
            } else {
                clip(v, w)
            };
            let pad = if last { 0 } else { w.max(v.chars().count()) };
            let _ = write!(line, "{v:<pad$} ");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::array::ArrayTask;
    use crate::model::job::JobId;
    use crate::model::usage::Usage;

    fn job(id: u64, name: &str, user: &str, state: JobState) -> JobStatus {
        JobStatus {
            id: JobId(id),
            name: name.into(),
            state,
            user: user.into(),
            uid: 1000,
            cores: vec![0, 1],
            pids: vec![],
            exit_code: None,
            signal: None,
            reason: None,
            priority: 0,
            argv: vec!["true".into()],
            env: None,
            submitted_ms: 1_000,
            started_ms: Some(2_000),
            ended_ms: None,
            held: false,
            origin: crate::model::job::Origin::Lowsched,
            task: None,
            time_limit_s: None,
            ran_ms: 0,
            resumed_ms: None,
            dependencies: vec![],
            asked: None,
            gpus: vec![],
            usage: None,
        }
    }

    fn args(a: &[&str]) -> StatusArgs {
        StatusArgs::from_args(&["status"], a).unwrap()
    }

    fn jobs() -> Vec<JobStatus> {
        vec![
            job(1, "a", "alice", JobState::Running),
            job(2, "b", "bob", JobState::Pending),
            job(3, "a", "bob", JobState::Failed),
        ]
    }

    #[test]
    fn filters_all_hold_together() {
        let t = table(
            &jobs(),
            &args(&["--user", "bob", "--format", "id", "--noheader"]),
            0,
        );
        assert_eq!(t, "2\n3\n");
        let t = table(
            &jobs(),
            &args(&["--state", "active", "--name", "a", "--format", "id"]),
            0,
        );
        assert_eq!(t, "ID\n1\n");
        let t = table(
            &jobs(),
            &args(&["--format", "id", "--noheader", "3", "1"]),
            0,
        );
        assert_eq!(t, "1\n3\n");
    }

    #[test]
    fn parsable_output_has_no_padding_and_an_elapsed_column() {
        let a = args(&["--parsable", "--format", "id,user,elapsed,state"]);
        let t = table(&jobs(), &a, 3_723_000 + 2_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID|USER|ELAPSED|STATE");
        assert_eq!(lines[1], "1|alice|01:02:03|running");
        assert_eq!(elapsed(90_061_000), "1-01:01:01");
    }

    #[test]
    fn bad_states_and_columns_say_what_is_accepted() {
        let e = StatusArgs::from_args(&["status"], &["--state", "done"])
            .unwrap_err()
            .output;
        assert!(e.contains("'done'") && e.contains("succeeded"), "{e}");
        let e = StatusArgs::from_args(&["status"], &["--format", "id,when"])
            .unwrap_err()
            .output;
        assert!(e.contains("'when'") && e.contains("elapsed"), "{e}");
    }

    #[test]
    fn array_tasks_show_and_select_as_array_index() {
        let mut all = jobs();
        for (id, index) in [(12, 0), (13, 1), (14, 2)] {
            let mut t = job(id, "arr", "alice", JobState::Pending);
            t.task = Some(ArrayTask {
                array: JobId(12),
                index,
                limit: None,
            });
            all.push(t);
        }
        let t = table(&all, &args(&["--format", "id", "--noheader", "12"]), 0);
        assert_eq!(t, "12_0\n12_1\n12_2\n");
        let t = table(
            &all,
            &args(&["--format", "id", "--noheader", "12_1", "1"]),
            0,
        );
        assert_eq!(t, "1\n12_1\n");
        let t = table(&all, &args(&["--format", "id", "--noheader", "14"]), 0);
        assert_eq!(t, "12_2\n");
    }

    #[test]
    fn history_shows_finished_jobs_with_sacct_columns() {
        let mut all = jobs();
        all[2].ended_ms = Some(62_000);
        all[2].ran_ms = 30_000;
        all[2].time_limit_s = Some(90.0);
        all[2].usage = Some(Usage {
            cpu_us: Some(61_500_000),
            memory_peak: None,
        });
        let h = HistoryArgs::from_args(&["history"], &["--parsable"]).unwrap();
        let t = table(&all, &h.as_status(), 100_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID|NAME|USER|STATE|EXIT|ELAPSED|RUNTIME|CPUTIME|MAXMEM|TIMELIMIT"
        );
        assert_eq!(
            lines[1..],
            ["3|a|bob|failed|-|00:01:00|00:00:30|00:01:01.500|n/a|00:01:30"]
        );
    }

    #[test]
    fn one_id_alone_is_the_detail_view() {
        assert!(args(&["7"]).wants_detail());
        assert!(!args(&["7", "8"]).wants_detail());
        assert!(!args(&["7", "--noheader"]).wants_detail());
        assert!(!args(&[]).wants_detail());
    }
}
