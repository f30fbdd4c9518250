//! Human-readable output of the client subcommands: job tables, job details, event lines.

use std::fmt::Write as _;

use crate::api::protocol::{EventRecord, JobStatus};
use crate::model::cpuset::CpuSet;

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
    let _ = writeln!(out, "id:        {}", j.id);
    let _ = writeln!(out, "name:      {}", j.name);
    let _ = writeln!(
        out,
        "state:     {}{}",
        j.state,
        if j.held { " (held by owner)" } else { "" }
    );
    let _ = writeln!(out, "user:      {} (uid {})", j.user, j.uid);
    let _ = writeln!(out, "command:   {}", j.argv.join(" "));
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
        let _ = writeln!(out, "reason:    {r}");
    }
    if let Some(env) = &j.env {
        for (k, v) in env {
            let _ = writeln!(out, "env:       {k}={v}");
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
        e.event,
        e.job
    );
    for a in &e.args {
        s.push(' ');
        s.push_str(a);
    }
    if !e.reason.is_empty() {
        s.push_str("  # ");
        s.push_str(&e.reason);
    }
    s
}
