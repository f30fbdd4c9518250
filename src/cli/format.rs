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
pub fn job_detail(j: &JobStatus) -> String {
    let mut out = String::new();
    let ms = |v: Option<u64>| {
        v.map_or("-".to_string(), |m| {
            crate::store::eventlog::iso8601(to_time(m))
        })
    };
    let _ = writeln!(out, "id:        {}", j.origin.display_id(j.id));
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
    let _ = writeln!(out, "cores:     {}", cores(&j.cores));
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
    fn escape_codes_never_reach_the_terminal() {
        let j = hostile();
        assert_eq!(j.state, JobState::Pending);
        let table = crate::cli::status::table(
            std::slice::from_ref(&j),
            &crate::cli::status::StatusArgs::default(),
            0,
        );
        for out in [table, job_detail(&j)] {
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
