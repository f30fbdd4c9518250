//! The whole latency history: every probe window of the daemon's run, kept under the state
//! directory as HdrHistogram interval logs (`history/latency-<start>.hlog`) beside a line per
//! window with what the histogram cannot say (`history/service-<start>.jsonl`: QPS, cores,
//! the SLO verdict). A new pair of files (a segment) starts at each daemon start and whenever
//! the current one grows past a size or an age; the oldest segments beyond a count are removed.
//!
//! Units: the logs hold nanoseconds, the unit the standard HdrHistogram tools assume
//! (`HistogramLogProcessor` divides by 10^6 and prints milliseconds by default; the
//! `Interval_Max` column is in milliseconds, as Java's `HistogramLogWriter` writes it). Intervals
//! are untagged because those tools read only untagged intervals unless given `-tag`; the unit is
//! named in the header comments. A probe that got no answer is recorded at the histogram's top
//! value ([`FAILED_NS`], 60 s), so a window's p95 from the log is the daemon's SLO verdict, which
//! counts failures as infinitely slow.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

/// The history's folder under the state directory.
pub const HISTORY_DIR: &str = "history";
const HLOG_PREFIX: &str = "latency-";
const HLOG_SUFFIX: &str = ".hlog";
const SERVICE_PREFIX: &str = "service-";
const SERVICE_SUFFIX: &str = ".jsonl";
/// Bounds of the logged histograms, in ns: 1 µs to 60 s, 3 significant digits.
pub const LOW_NS: u64 = 1_000;
pub const FAILED_NS: u64 = 60_000_000_000;
const SIGFIG: u8 = 3;

/// Why the history could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot write history file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read history {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("history file {path} is corrupt at byte {offset}")]
    Corrupt { path: PathBuf, offset: usize },
    #[error("cannot encode a histogram: {0}")]
    Encode(String),
    #[error("history file {path}: bad histogram: {why}")]
    Decode { path: PathBuf, why: String },
}

/// When a segment is closed and a new one started, and how many are kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rotation {
    /// Start a new segment once the interval log reaches this size (0: never by size).
    pub max_bytes: u64,
    /// Start a new segment once the current one is this old (zero: never by age).
    pub max_age: Duration,
    /// Segments kept, the current one included (0: keep all).
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(86_400),
            keep: 30,
        }
    }
}

/// What the history keeps of one window besides its histogram.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceWindow {
    /// Window start, seconds since the Unix epoch.
    pub t: f64,
    /// Window length, seconds.
    pub dur: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_cores: Option<u32>,
    /// The SLO quantile as the daemon judged it (µs); absent when it fell on a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_us: Option<u64>,
    /// The SLO's limit (µs) the window was judged against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_us: Option<u64>,
    pub over: bool,
    pub answered: u64,
    pub failed: u64,
}

/// One interval read back: its start (Unix seconds), length and histogram (ns).
#[derive(Clone, Debug)]
pub struct Interval {
    pub start_unix_s: f64,
    pub duration_s: f64,
    pub hist_ns: Histogram<u64>,
}

/// A fresh histogram with the log's bounds (ns).
pub fn new_ns_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOW_NS, FAILED_NS, SIGFIG).expect("constant bounds are valid")
}

/// A window's µs histogram and failure count as the log's ns histogram.
pub fn to_ns(latency_us: &Histogram<u64>, failed: u64) -> Histogram<u64> {
    let mut h = new_ns_histogram();
    for v in latency_us.iter_recorded() {
        let ns = v
            .value_iterated_to()
            .saturating_mul(1_000)
            .clamp(LOW_NS, FAILED_NS);
        h.saturating_record_n(ns, v.count_at_value());
    }
    if failed > 0 {
        h.saturating_record_n(FAILED_NS, failed);
    }
    h
}

fn encode(h: &Histogram<u64>) -> Result<String, HistoryError> {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| HistoryError::Encode(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

/// `YYYYmmddTHHMMSS.mmmZ`: segment names sort in time order.
fn stamp(unix_s: f64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs_f64(unix_s.max(0.0));
    let iso = crate::store::eventlog::iso8601(t);
    // 2026-12-07T00:45:12.123456+00:00 -> 20261207T004512.123Z
    let digits: String = iso[..19]
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("{digits}.{}Z", &iso[20..23])
}

/// The header of an interval log starting at `start_unix_s`.
pub fn header(start_unix_s: f64, comment: &str) -> String {
    format!(
        "#{comment}\n\
         #[Histogram log format version 1.3]\n\
         #values in nanoseconds; Interval_Max in milliseconds\n\
         #[StartTime: {start_unix_s:.3} (seconds since epoch)]\n\
         #[BaseTime: {start_unix_s:.3} (seconds since epoch)]\n\
         \"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n"
    )
}

/// One interval line: start relative to the log's BaseTime, length, max (ms), histogram.
pub fn interval_line(
    rel_start_s: f64,
    duration_s: f64,
    h: &Histogram<u64>,
) -> Result<String, HistoryError> {
    Ok(format!(
        "{:.3},{:.3},{:.3},{}\n",
        rel_start_s.max(0.0),
        duration_s.max(0.0),
        h.max() as f64 / 1e6,
        encode(h)?
    ))
}

#[derive(Debug)]
struct Segment {
    start_unix_s: f64,
    hlog_path: PathBuf,
    hlog: BufWriter<File>,
    service_path: PathBuf,
    service: BufWriter<File>,
    bytes: u64,
}

/// Appends windows to the current segment, rotating as configured.
#[derive(Debug)]
pub struct HistoryWriter {
    dir: PathBuf,
    rotation: Rotation,
    comment: String,
    current: Option<Segment>,
}

impl HistoryWriter {
    /// A writer into `<state_dir>/history`; the first window starts a new segment.
    pub fn new(state_dir: &Path, rotation: Rotation, comment: &str) -> Self {
        Self {
            dir: state_dir.join(HISTORY_DIR),
            rotation,
            comment: comment.into(),
            current: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes the current segment: the next window starts a new pair of files (SIGHUP, so a
    /// file renamed or removed by an operator is not written to again).
    pub fn reopen(&mut self) {
        self.current = None;
    }

    /// Appends one window (histogram in µs, failures apart) and flushes it to the files.
    pub fn append(
        &mut self,
        w: &ServiceWindow,
        latency_us: &Histogram<u64>,
    ) -> Result<(), HistoryError> {
        self.rotate_if_due(w.t)?;
        let seg = match self.current.as_mut() {
            Some(s) => s,
            None => self.current.insert(self.start_segment(w.t)?),
        };
        let line = interval_line(w.t - seg.start_unix_s, w.dur, &to_ns(latency_us, w.failed))?;
        let mut json = serde_json::to_string(w).unwrap_or_default();
        json.push('\n');
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HistoryError::Write { path, source }
        };
        seg.hlog
            .write_all(line.as_bytes())
            .and_then(|()| seg.hlog.flush())
            .map_err(werr(&seg.hlog_path))?;
        seg.service
            .write_all(json.as_bytes())
            .and_then(|()| seg.service.flush())
            .map_err(werr(&seg.service_path))?;
        seg.bytes += line.len() as u64;
        Ok(())
    }

    fn rotate_if_due(&mut self, now_unix_s: f64) -> Result<(), HistoryError> {
        let Some(seg) = &self.current else {
            return Ok(());
        };
        let r = self.rotation;
        let by_size = r.max_bytes > 0 && seg.bytes >= r.max_bytes;
        let by_age =
            !r.max_age.is_zero() && now_unix_s - seg.start_unix_s >= r.max_age.as_secs_f64();
        if by_size || by_age {
            self.current = None;
            self.current = Some(self.start_segment(now_unix_s)?);
        }
        Ok(())
    }

    fn start_segment(&self, start_unix_s: f64) -> Result<Segment, HistoryError> {
        fs::create_dir_all(&self.dir).map_err(|source| HistoryError::Write {
            path: self.dir.clone(),
            source,
        })?;
        let mut name = stamp(start_unix_s);
        // Two segments in one millisecond (tests, a clock step back): never reuse a name.
        while self
            .dir
            .join(format!("{HLOG_PREFIX}{name}{HLOG_SUFFIX}"))
            .exists()
        {
            name.push('a');
        }
        let hlog_path = self.dir.join(format!("{HLOG_PREFIX}{name}{HLOG_SUFFIX}"));
        let service_path = self
            .dir
            .join(format!("{SERVICE_PREFIX}{name}{SERVICE_SUFFIX}"));
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(BufWriter::new)
                .map_err(|source| HistoryError::Write {
                    path: p.to_path_buf(),
                    source,
                })
        };
        let mut hlog = open(&hlog_path)?;
        let head = header(start_unix_s, &self.comment);
        hlog.write_all(head.as_bytes())
            .and_then(|()| hlog.flush())
            .map_err(|source| HistoryError::Write {
                path: hlog_path.clone(),
                source,
            })?;
        let service = open(&service_path)?;
        self.prune();
        Ok(Segment {
            start_unix_s,
            hlog_path,
            hlog,
            service_path,
            service,
            bytes: head.len() as u64,
        })
    }

    /// Removes the oldest segments beyond `keep` (best effort: a failure only leaves files).
    fn prune(&self) {
        if self.rotation.keep == 0 {
            return;
        }
        let Ok(segs) = segments(&self.dir) else {
            return;
        };
        let extra = segs.len().saturating_sub(self.rotation.keep);
        for name in &segs[..extra] {
            let _ = fs::remove_file(self.dir.join(format!("{HLOG_PREFIX}{name}{HLOG_SUFFIX}")));
            let _ = fs::remove_file(
                self.dir
                    .join(format!("{SERVICE_PREFIX}{name}{SERVICE_SUFFIX}")),
            );
        }
    }
}

/// Segment names (the stamp part), oldest first.
fn segments(dir: &Path) -> Result<Vec<String>, HistoryError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(HistoryError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut out: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix(HLOG_PREFIX)
                .and_then(|s| s.strip_suffix(HLOG_SUFFIX))
                .map(str::to_string)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The interval log files of a history folder, oldest first.
pub fn hlog_files(dir: &Path) -> Result<Vec<PathBuf>, HistoryError> {
    Ok(segments(dir)?
        .into_iter()
        .map(|n| dir.join(format!("{HLOG_PREFIX}{n}{HLOG_SUFFIX}")))
        .collect())
}

/// Reads the intervals of one interval log (any writer's: StartTime/BaseTime honoured).
pub fn read_hlog(path: &Path) -> Result<Vec<Interval>, HistoryError> {
    let bytes = fs::read(path).map_err(|source| HistoryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut start = None;
    let mut base = None;
    let mut out = Vec::new();
    let mut de = Deserializer::new();
    for entry in IntervalLogIterator::new(&bytes) {
        match entry {
            Ok(LogEntry::StartTime(d)) => start = Some(d.as_secs_f64()),
            Ok(LogEntry::BaseTime(d)) => base = Some(d.as_secs_f64()),
            Ok(LogEntry::Interval(iv)) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(iv.encoded_histogram())
                    .map_err(|e| HistoryError::Decode {
                        path: path.to_path_buf(),
                        why: e.to_string(),
                    })?;
                let hist_ns: Histogram<u64> =
                    de.deserialize(&mut raw.as_slice())
                        .map_err(|e| HistoryError::Decode {
                            path: path.to_path_buf(),
                            why: e.to_string(),
                        })?;
                let ts = iv.start_timestamp().as_secs_f64();
                // Java's rule: without BaseTime, timestamps a year or more below StartTime are
                // offsets from it, else absolute.
                let origin = base.unwrap_or(match start {
                    Some(s) if ts < s - 365.0 * 86_400.0 => s,
                    _ => 0.0,
                });
                out.push(Interval {
                    start_unix_s: origin + ts,
                    duration_s: iv.duration().as_secs_f64(),
                    hist_ns,
                });
            }
            Err(hdrhistogram::serialization::interval_log::LogIteratorError::ParseError {
                offset,
            }) => {
                return Err(HistoryError::Corrupt {
                    path: path.to_path_buf(),
                    offset,
                });
            }
        }
    }
    Ok(out)
}

/// Every interval of a history folder that overlaps `[since, until)` (Unix seconds), in order.
pub fn read_intervals(
    dir: &Path,
    since: Option<f64>,
    until: Option<f64>,
) -> Result<Vec<Interval>, HistoryError> {
    let mut out = Vec::new();
    for path in hlog_files(dir)? {
        out.extend(read_hlog(&path)?.into_iter().filter(|iv| {
            since.is_none_or(|s| iv.start_unix_s + iv.duration_s > s)
                && until.is_none_or(|u| iv.start_unix_s < u)
        }));
    }
    out.sort_by(|a, b| a.start_unix_s.total_cmp(&b.start_unix_s));
    Ok(out)
}

/// Every window line of a history folder within `[since, until)`, in order. Lines that do not
/// parse (a torn last line after a crash) are skipped.
pub fn read_service(
    dir: &Path,
    since: Option<f64>,
    until: Option<f64>,
) -> Result<Vec<ServiceWindow>, HistoryError> {
    let mut out = Vec::new();
    for name in segments(dir)? {
        let path = dir.join(format!("{SERVICE_PREFIX}{name}{SERVICE_SUFFIX}"));
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(HistoryError::Read { path, source }),
        };
        out.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<ServiceWindow>(l).ok())
                .filter(|w| since.is_none_or(|s| w.t + w.dur > s) && until.is_none_or(|u| w.t < u)),
        );
    }
    out.sort_by(|a, b| a.t.total_cmp(&b.t));
    Ok(out)
}

/// Writes intervals as one interval log whose StartTime and BaseTime are `start_unix_s` or the
/// first interval's start, whichever is earlier (an interval may begin before a span's start).
pub fn write_intervals(
    out: &mut impl Write,
    start_unix_s: Option<f64>,
    comment: &str,
    intervals: &[Interval],
) -> Result<(), HistoryError> {
    let first = intervals.first().map(|i| i.start_unix_s);
    let start = match (start_unix_s, first) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
    .unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    });
    let werr = |source| HistoryError::Write {
        path: PathBuf::from("<output>"),
        source,
    };
    out.write_all(header(start, comment).as_bytes())
        .map_err(werr)?;
    for iv in intervals {
        let line = interval_line(iv.start_unix_s - start, iv.duration_s, &iv.hist_ns)?;
        out.write_all(line.as_bytes()).map_err(werr)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
