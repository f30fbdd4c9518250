//! The event log: every decision and state change, twice — `events.log` in the course-project
//! format and `events.jsonl` with the decision's reason and inputs — plus a ring of recent events
//! that `lowsched events` reads (with long polling for `--follow`).
//!
//! `events.log` lines are `<ISO-8601 time> <event> <job> [args]`: events `start` (with the core
//! list and thread count), `end`, `update_cores`, `pause`, `unpause` and `custom`; each daemon run
//! opens with `start scheduler` and closes with `end scheduler`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::cpuset::CpuSet;
use crate::model::job::{JobId, escape_controls};

/// One line of the event log as kept in the ring and served to `lowsched events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub time_ms: u64,
    pub event: String,
    pub job: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

pub const EVENTS_LOG: &str = "events.log";
pub const EVENTS_JSONL: &str = "events.jsonl";
/// The job name the scheduler's own start and end are logged under.
pub const SCHEDULER: &str = "scheduler";
/// Events kept in memory for `lowsched events`: at most this many,
pub const RING_LEN: usize = 100_000;
/// and at most this many bytes of text (names and reasons come from users: a count alone let
/// long ones grow the ring without bound).
pub const RING_BYTES: usize = 16 << 20;
/// Mode of `events.log` and `events.jsonl`: root writes, the socket's group reads (job names
/// and reasons of every user are in them), others nothing.
pub const LOG_MODE: u32 = 0o640;

impl EventRecord {
    /// Heap bytes this record holds, roughly (its strings plus their headers).
    fn weight(&self) -> usize {
        let strings = self.event.len()
            + self.job.len()
            + self.reason.len()
            + self.args.iter().map(|a| a.len() + 24).sum::<usize>();
        std::mem::size_of::<Self>() + strings
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A job (or the service) started on `cores` with `threads` threads.
    Start {
        cores: CpuSet,
        threads: usize,
    },
    End,
    UpdateCores {
        cores: CpuSet,
    },
    Pause,
    Unpause,
    /// Anything else worth a line: a controller decision, a refused command, a state change.
    Custom {
        text: String,
    },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start { .. } => "start",
            Self::End => "end",
            Self::UpdateCores { .. } => "update_cores",
            Self::Pause => "pause",
            Self::Unpause => "unpause",
            Self::Custom { .. } => "custom",
        }
    }

    fn args(&self) -> Vec<String> {
        match self {
            Self::Start { cores, threads } => vec![bracketed(cores), threads.to_string()],
            Self::UpdateCores { cores } => vec![bracketed(cores)],
            Self::Custom { text } => vec![text.clone()],
            Self::End | Self::Pause | Self::Unpause => Vec::new(),
        }
    }
}

/// `[0,1,2]`, the course format's core list.
fn bracketed(cores: &CpuSet) -> String {
    let ids: Vec<String> = cores.iter().map(|c| c.to_string()).collect();
    format!("[{}]", ids.join(","))
}

/// One event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// A job name, `memcached` (the protected service) or `scheduler`.
    pub job: String,
    pub id: Option<JobId>,
    pub kind: Kind,
    /// Why (for decisions); empty for plain state changes.
    pub reason: String,
    /// The decision's inputs, e.g. the controller's latency and utilization readings.
    pub inputs: Option<Value>,
}

impl Event {
    pub fn new(job: impl Into<String>, id: Option<JobId>, kind: Kind) -> Self {
        Self {
            job: job.into(),
            id,
            kind,
            reason: String::new(),
            inputs: None,
        }
    }

    pub fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    pub fn with_inputs(mut self, inputs: Value) -> Self {
        self.inputs = Some(inputs);
        self
    }
}

/// Something that wants to see every event as it is recorded (the metrics' decision counts).
/// Called on the recording thread: it must be quick and never block for long.
pub trait EventTap: Send + Sync + std::fmt::Debug {
    fn event(&self, ev: &Event);
}

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("cannot open event log {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
}

#[derive(Debug)]
struct Inner {
    log: Option<File>,
    jsonl: Option<File>,
    ring: VecDeque<EventRecord>,
    /// Sum of the ring's [`EventRecord::weight`]s.
    ring_bytes: usize,
    next_seq: u64,
    /// Last write error, reported once rather than on every event.
    write_error: Option<String>,
}

/// The open event log. Events are also kept when the files cannot be written (full disk): the
/// daemon keeps scheduling and reports the write error once.
#[derive(Debug)]
pub struct EventLog {
    dir: Option<PathBuf>,
    inner: Mutex<Inner>,
    added: Condvar,
    tap: std::sync::OnceLock<std::sync::Arc<dyn EventTap>>,
    /// The files' group (see [`EventLog::open_with_group`]), kept for [`EventLog::reopen`].
    group: Option<u32>,
}

impl EventLog {
    /// Opens both files in `dir` for appending and logs `start scheduler`. They are readable
    /// by root and group `group` only (the socket's group; `None`: root's).
    pub fn open(dir: &Path) -> Result<EventLog, EventLogError> {
        Self::open_with_group(dir, None)
    }

    /// As [`EventLog::open`], with the files' group set to `group`.
    pub fn open_with_group(dir: &Path, group: Option<u32>) -> Result<EventLog, EventLogError> {
        let mut log = Self::with_files(
            Some(dir.to_path_buf()),
            Some(open_file(dir, EVENTS_LOG, group)?),
            Some(open_file(dir, EVENTS_JSONL, group)?),
        );
        log.group = group;
        log.record(Event::new(
            SCHEDULER,
            None,
            Kind::Start {
                cores: CpuSet::new(),
                threads: 0,
            },
        ));
        Ok(log)
    }

    /// Closes both files and opens them again by name (after logrotate renamed them: later
    /// events go to new files). On failure the old files stay in use.
    pub fn reopen(&self) -> Result<(), EventLogError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let log = open_file(dir, EVENTS_LOG, self.group)?;
        let jsonl = open_file(dir, EVENTS_JSONL, self.group)?;
        let mut inner = self.lock();
        for f in [&inner.log, &inner.jsonl].into_iter().flatten() {
            let _ = f.sync_data();
        }
        inner.log = Some(log);
        inner.jsonl = Some(jsonl);
        inner.write_error = None;
        Ok(())
    }

    /// An event log that only keeps the in-memory ring (tests, tools).
    pub fn in_memory() -> EventLog {
        Self::with_files(None, None, None)
    }

    fn with_files(dir: Option<PathBuf>, log: Option<File>, jsonl: Option<File>) -> EventLog {
        EventLog {
            dir,
            inner: Mutex::new(Inner {
                log,
                jsonl,
                ring: VecDeque::new(),
                ring_bytes: 0,
                next_seq: 1,
                write_error: None,
            }),
            added: Condvar::new(),
            tap: std::sync::OnceLock::new(),
            group: None,
        }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event and returns its sequence number. A failed file write is logged once (to
    /// stderr) until a write succeeds again; the event still reaches the in-memory ring.
    pub fn record(&self, ev: Event) -> u64 {
        if let Some(tap) = self.tap.get() {
            tap.event(&ev);
        }
        self.record_at(ev, SystemTime::now())
    }

    /// Shows every later event to `tap` (once; a second tap is refused and returned).
    pub fn set_tap(
        &self,
        tap: std::sync::Arc<dyn EventTap>,
    ) -> Result<(), std::sync::Arc<dyn EventTap>> {
        self.tap.set(tap)
    }

    fn record_at(&self, ev: Event, at: SystemTime) -> u64 {
        let time_ms = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let iso = iso8601(at);
        // `start scheduler` / `end scheduler` carry no arguments in the course format.
        let mut args = if ev.job == SCHEDULER {
            Vec::new()
        } else {
            ev.kind.args()
        };
        // The course format is whitespace-separated: keep the job name one token. Whoever
        // reads the log with `cat` or `tail -f` must not get a user's escape codes.
        let job: String = ev
            .job
            .chars()
            .map(|c| if c.is_whitespace() { '_' } else { c })
            .collect();
        let mut line = format!("{iso} {} {}", ev.kind.name(), escape_controls(&job));
        for a in &args {
            line.push(' ');
            line.push_str(&escape_controls(a));
        }
        line.push('\n');

        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let mut json = serde_json::json!({
            "seq": seq, "time": iso, "time_ms": time_ms, "event": ev.kind.name(), "job": ev.job,
        });
        if let Some(id) = ev.id {
            json["id"] = id.0.into();
        }
        if !args.is_empty() {
            json["args"] = args.clone().into();
        }
        if !ev.reason.is_empty() {
            json["reason"] = ev.reason.clone().into();
        }
        if let Some(inputs) = &ev.inputs {
            json["inputs"] = inputs.clone();
        }
        let mut jline = json.to_string();
        jline.push('\n');
        let result = write_both(&mut inner, line.as_bytes(), jline.as_bytes());
        match result {
            Ok(()) => inner.write_error = None,
            Err(e) if inner.write_error.is_none() => {
                crate::log::error(&format!("event log write failed: {e}"));
                inner.write_error = Some(e.to_string());
            }
            Err(_) => {}
        }
        if let Some(id) = ev.id {
            args.push(format!("id={id}"));
        }
        let rec = EventRecord {
            seq,
            time_ms,
            event: ev.kind.name().to_string(),
            job: ev.job,
            args,
            reason: ev.reason,
        };
        inner.ring_bytes += rec.weight();
        inner.ring.push_back(rec);
        while inner.ring.len() > RING_LEN || inner.ring_bytes > RING_BYTES {
            let Some(old) = inner.ring.pop_front() else {
                break;
            };
            inner.ring_bytes -= old.weight();
        }
        drop(inner);
        self.added.notify_all();
        seq
    }

    /// Writes one JSON line to `events.jsonl` only (not `events.log`, not the ring): bulk
    /// records such as the controller's turns, which `lowsched events` need not show.
    pub fn record_json(&self, value: &Value) {
        let mut line = value.to_string();
        line.push('\n');
        let mut inner = self.lock();
        let Some(f) = inner.jsonl.as_mut() else {
            return;
        };
        match f.write_all(line.as_bytes()) {
            Ok(()) => inner.write_error = None,
            Err(e) if inner.write_error.is_none() => {
                crate::log::error(&format!("event log write failed: {e}"));
                inner.write_error = Some(e.to_string());
            }
            Err(_) => {}
        }
    }

    /// Events with `seq > after`, at most `limit`; if there are none yet, waits up to `timeout`
    /// for one. Returns them and the last sequence number handed out so far.
    pub fn since(&self, after: u64, limit: usize, timeout: Duration) -> (Vec<EventRecord>, u64) {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            let last = inner.next_seq - 1;
            if last > after || Instant::now() >= deadline {
                let out: Vec<EventRecord> = inner
                    .ring
                    .iter()
                    .filter(|e| e.seq > after)
                    .take(limit)
                    .cloned()
                    .collect();
                let last_sent = out.last().map_or(last.max(after), |e| e.seq);
                return (out, last_sent);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            inner = self
                .added
                .wait_timeout(inner, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Logs `end scheduler` and flushes both files.
    pub fn close(&self) {
        self.record(Event::new(SCHEDULER, None, Kind::End));
        let inner = self.lock();
        for f in [&inner.log, &inner.jsonl].into_iter().flatten() {
            let _ = f.sync_data();
        }
    }
}

/// Opens `dir/name` for appending, readable by root and `group` only (`None`: root's group).
fn open_file(dir: &Path, name: &str, group: Option<u32>) -> Result<File, EventLogError> {
    let path = dir.join(name);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_MODE)
        .open(&path)
        .map_err(|source| EventLogError::Open {
            path: path.clone(),
            source,
        })?;
    // Files made by older versions were 0644: fix owner and mode on every open.
    std::os::unix::fs::fchown(&file, Some(0), Some(group.unwrap_or(0)))
        .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(LOG_MODE)))
        .map_err(|source| EventLogError::Open { path, source })?;
    Ok(file)
}

fn write_both(inner: &mut Inner, line: &[u8], jline: &[u8]) -> io::Result<()> {
    if let Some(f) = inner.log.as_mut() {
        f.write_all(line)?;
    }
    if let Some(f) = inner.jsonl.as_mut() {
        f.write_all(jline)?;
    }
    Ok(())
}

/// UTC time as ISO 8601 with microseconds and an explicit offset, which every ISO parser
/// (including Python's `datetime.fromisoformat`) reads: `2026-11-22T22:06:01.123456+00:00`.
pub fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`: shift to a March-based era of 400 years, then split).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests;
