//! Human-readable output of the client subcommands: job tables, job details, event lines.

use std::fmt::Write as _;

use crate::api::protocol::{EventRecord, JobStatus};
use crate::model::cpuset::CpuSet;
use crate::model::job::Origin;
use crate::model::job::escape_controls as esc;

fn cores(c: &[usize]) -> String {
    if c.is_empty() {
        return "-".into();
    }
    c.iter().copied().collect::<CpuSet>().to_string()
}

fn exit(j: &JobStatus) -> String {
    match (j.exit_code, j.signal) {
        (_, Some(sig)) => format!("sig {sig}"),
        (Some(code), None) => code.to_string(),
        (None, None) => "-".into(),
    }
}

/// `lowsched status ID`: one job, one field per line.
pub fn job_detail(j: &JobStatus, now_ms: u64) -> String {
    let mut out = String::new();
    let ms = |v: Option<u64>| {
        v.map_or("-".to_string(), |m| {
            crate::store::eventlog::iso8601(to_time(m))
        })
    };
    let _ = writeln!(out, "id:        {}", j.origin.display_id(j.id));
    if let Some(t) = j.task {
        let _ = writeln!(
            out,
            "array:     task {t} (job {} of array {})",
            j.id, t.array
        );
    }
    if let Origin::Slurm(n) = j.origin {
        let _ = writeln!(out, "origin:    slurm (job {n}; lowsched id {})", j.id);
    }
    let _ = writeln!(out, "name:      {}", esc(&j.name));
    let _ = writeln!(
        out,
        "state:     {}{}",
        j.state,
        if j.held { " (held by owner)" } else { "" }
    );
    let _ = writeln!(out, "user:      {} (uid {})", esc(&j.user), j.uid);
    let _ = writeln!(out, "command:   {}", esc(&j.argv.join(" ")));
    let _ = writeln!(out, "priority:  {}", j.priority);
    resources(&mut out, j);
    let pids: Vec<String> = j.pids.iter().map(|p| p.to_string()).collect();
    let _ = writeln!(
        out,
        "pids:      {}",
        if pids.is_empty() {
            "-".into()
        } else {
            pids.join(" ")
        }
    );
    let _ = writeln!(out, "exit:      {}", exit(j));
    let _ = writeln!(out, "submitted: {}", ms(Some(j.submitted_ms)));
    let _ = writeln!(out, "started:   {}", ms(j.started_ms));
    let _ = writeln!(out, "ended:     {}", ms(j.ended_ms));
    times(&mut out, j, now_ms);
    for d in &j.dependencies {
        let _ = writeln!(out, "depends:   {d}");
    }
    if let Some(r) = &j.reason {
        let _ = writeln!(out, "reason:    {}", esc(r));
    }
    if let Some(env) = &j.env {
        for (k, v) in env {
            let _ = writeln!(out, "env:       {}={}", esc(k), esc(v));
        }
    }
    out
}

/// What the job asked for beside what it was given, and where its output goes.
fn resources(out: &mut String, j: &JobStatus) {
    let Some(a) = &j.asked else {
        let _ = writeln!(out, "cores:     {}", cores(&j.cores));
        return;
    };
    let _ = writeln!(out, "cores:     {} (asked {})", cores(&j.cores), a.cores);
    let memory = a.memory.map_or("no limit".into(), |m| m.to_string());
    let _ = writeln!(out, "memory:    {memory}");
    if a.gpus.count > 0 {
        let given: Vec<String> = j.gpus.iter().map(u32::to_string).collect();
        let given = if given.is_empty() {
            "-".into()
        } else {
            given.join(",")
        };
        let asked = match &a.gpus.variant {
            Some(v) => format!("{}:{}", esc(v), a.gpus.count),
            None => a.gpus.count.to_string(),
        };
        let _ = writeln!(out, "gpus:      {given} (asked {asked})");
    }
    let path = |p: &Option<std::path::PathBuf>, which: &str| {
        p.as_ref().map_or_else(
            || format!("jobs/{}/{which} in the daemon's state dir", j.id),
            |p| esc(&p.to_string_lossy()).into_owned(),
        )
    };
    let _ = writeln!(out, "stdout:    {}", path(&a.stdout, "stdout"));
    let _ = writeln!(out, "stderr:    {}", path(&a.stderr, "stderr"));
    if let Some(cwd) = &a.cwd {
        let _ = writeln!(out, "cwd:       {}", esc(&cwd.to_string_lossy()));
    }
}

/// Run time against its limit, and what its cgroup reported once it ended.
fn times(out: &mut String, j: &JobStatus, now_ms: u64) {
    use super::status::{elapsed, run_ms};
    if j.started_ms.is_some() {
        let _ = writeln!(
            out,
            "run time:  {} (time paused not counted)",
            elapsed(run_ms(j, now_ms))
        );
    }
    if let Some(s) = j.time_limit_s {
        let _ = writeln!(out, "limit:     {}", elapsed((s * 1000.0) as u64));
    }
    if let Some(u) = j.usage {
        let cpu = u.cpu_us.map_or("n/a".into(), |us| {
            format!("{}.{:03}", elapsed(us / 1000), us / 1000 % 1000)
        });
        let mem = u.memory_peak.map_or("n/a".into(), |b| {
            crate::model::resources::Bytes(b).to_string()
        });
        let _ = writeln!(out, "cpu time:  {cpu}");
        let _ = writeln!(out, "peak mem:  {mem}");
    }
}

fn to_time(ms: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

/// One event in the `events.log` style, with the reason appended after `#`.
pub fn event_line(e: &EventRecord) -> String {
    let mut s = format!(
        "{} {} {}",
        crate::store::eventlog::iso8601(to_time(e.time_ms)),
        esc(&e.event),
        esc(&e.job)
    );
    for a in &e.args {
        s.push(' ');
        s.push_str(&esc(a));
    }
    if !e.reason.is_empty() {
        s.push_str("  # ");
        s.push_str(&esc(&e.reason));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::jobstate::JobState;

    fn hostile() -> JobStatus {
        let evil = "x\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}1m";
        let mut j: JobStatus = serde_json::from_value(serde_json::json!({
            "id": 1, "name": evil, "state": "pending", "user": evil, "uid": 1000,
            "cores": [], "pids": [], "exit_code": null, "signal": null, "reason": evil,
            "priority": 0, "argv": [evil], "submitted_ms": 0, "started_ms": null,
            "ended_ms": null, "held": false,
        }))
        .unwrap();
        j.env = Some(
            vec![(evil.to_string(), evil.to_string())]
                .into_iter()
                .collect(),
        );
        j
    }

    #[test]
    fn detail_shows_what_was_asked_and_given_and_where_output_goes() {
        let mut spec = crate::model::job::JobSpec::new(vec!["x".into()]);
        spec.cores = "1:4".parse().unwrap();
        spec.memory = Some("512M".parse().unwrap());
        spec.gpus = "A100:1".parse().unwrap();
        spec.stdout = Some("/tmp/o.log".into());
        let mut j = hostile();
        j.cores = vec![2, 3];
        j.gpus = vec![1];
        j.asked = Some(crate::api::protocol::Asked::of(&spec));
        j.started_ms = Some(1_000);
        j.ran_ms = 5_000;
        j.resumed_ms = Some(10_000);
        j.time_limit_s = Some(60.0);
        let out = job_detail(&j, 12_000);
        for want in [
            "cores:     2-3 (asked 1:4)",
            "memory:    512M",
            "gpus:      1 (asked A100:1)",
            "stdout:    /tmp/o.log",
            "stderr:    jobs/1/stderr in the daemon's state dir",
            "run time:  00:00:07 (time paused not counted)",
            "limit:     00:01:00",
        ] {
            assert!(out.contains(want), "{want}: {out}");
        }
    }

    #[test]
    fn escape_codes_never_reach_the_terminal() {
        let j = hostile();
        assert_eq!(j.state, JobState::Pending);
        let table = crate::cli::status::table(
            std::slice::from_ref(&j),
            &crate::cli::status::StatusArgs::default(),
            0,
        );
        for out in [table, job_detail(&j, 0)] {
            assert!(
                !out.chars()
                    .any(|c| c != '\n' && crate::model::job::is_unsafe_char(c)),
                "{out:?}"
            );
            assert!(out.contains("\\u{1b}"), "{out}");
        }
        let e = EventRecord {
            seq: 1,
            time_ms: 0,
            event: "custom".into(),
            job: "\u{1b}[31m".into(),
            args: vec!["\u{7}".into()],
            reason: "\u{1b}c".into(),
        };
        let line = event_line(&e);
        assert!(
            !line.chars().any(crate::model::job::is_unsafe_char),
            "{line:?}"
        );
    }
}
