//! The socket protocol: versioned newline-delimited JSON, one request line → one response line.
//!
//! Parsing is strict and total: any byte string yields either a typed [`Request`] or a
//! [`ProtocolError`] that names what was wrong (unknown verb, unknown field, wrong type, bad
//! version), never a panic. Requests are parsed in two steps — first the envelope (`v`, `verb`),
//! then the verb's own fields — so errors can say which verb a bad field belonged to.

pub use crate::store::eventlog::EventRecord;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use std::path::PathBuf;

use crate::model::array::ArrayTask;
use crate::model::depend::Dependency;
use crate::model::job::{JobId, JobSpec, Origin};
use crate::model::jobstate::JobState;
use crate::model::resources::{Bytes, CoreRange, GpuRequest};
pub use crate::model::usage::Usage;

/// The protocol version this build speaks.
pub const VERSION: u64 = 1;
/// Longest request line accepted, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Most jobs in one `submit_many`.
pub const MAX_BATCH: usize = 10_000;

/// Every verb, for error messages.
pub const VERBS: &[&str] = &[
    "submit",
    "submit_many",
    "status",
    "cancel",
    "pause",
    "resume",
    "wait",
    "stats",
    "events",
    "metrics",
];

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Submit(Box<Submit>),
    SubmitMany(SubmitMany),
    Status(Status),
    Cancel(Target),
    Pause(Target),
    Resume(Target),
    Wait(Wait),
    Stats(Stats),
    Events(Events),
    Metrics(Metrics),
}

/// `submit`: one job. `user` (root only) runs it as someone else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    pub job: JobSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `submit_many`: a job list, accepted all or nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitMany {
    pub jobs: Vec<JobSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `status`: one job, or all when `id` is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Status {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<JobId>,
}

/// `cancel`, `pause`, `resume`: the job to act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub id: JobId,
}

/// `wait`: answers once the job has ended, or with `done: false` after `timeout_ms` (long poll;
/// the client asks again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    pub id: JobId,
    #[serde(default = "default_poll_ms")]
    pub timeout_ms: u64,
}

/// `stats`: the latency monitor's dump; `hlog` asks for the histograms too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    #[serde(default)]
    pub histograms: bool,
}

/// `metrics`: the Prometheus metrics as exposition text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Metrics {}

/// `events`: events with sequence number above `after`; waits up to `timeout_ms` for one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Events {
    #[serde(default)]
    pub after: u64,
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Longest a long poll may be asked to wait.
pub const MAX_POLL_MS: u64 = 60_000;

fn default_poll_ms() -> u64 {
    30_000
}

/// Machine-readable error class in an error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, wrong types, unknown fields.
    BadRequest,
    /// Newer protocol version than this daemon speaks.
    BadVersion,
    UnknownVerb,
    /// Over [`MAX_REQUEST`].
    TooLarge,
    /// The job spec is invalid or can never fit this node.
    Invalid,
    NotFound,
    /// The caller may not act on this job or as this user.
    Forbidden,
    /// The job's state does not allow the action (e.g. resuming a finished job).
    Conflict,
    /// Too many connections; try again.
    Busy,
    /// The daemon failed (journal write, cgroup write); the message has the path and OS error.
    Internal,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl Request {
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Submit(_) => "submit",
            Self::SubmitMany(_) => "submit_many",
            Self::Status(_) => "status",
            Self::Cancel(_) => "cancel",
            Self::Pause(_) => "pause",
            Self::Resume(_) => "resume",
            Self::Wait(_) => "wait",
            Self::Stats(_) => "stats",
            Self::Events(_) => "events",
            Self::Metrics(_) => "metrics",
        }
    }

    /// Parses one request line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Request, ProtocolError> {
        use ErrorCode::*;
        if line.len() >= MAX_REQUEST {
            return Err(ProtocolError::new(
                TooLarge,
                format!(
                    "request is {} bytes; the limit is {MAX_REQUEST}",
                    line.len()
                ),
            ));
        }
        let value: Value = serde_json::from_slice(line).map_err(|e| {
            ProtocolError::new(BadRequest, format!("request is not valid JSON: {e}"))
        })?;
        let Value::Object(mut obj) = value else {
            return Err(ProtocolError::new(
                BadRequest,
                "request must be a JSON object",
            ));
        };
        match obj.remove("v") {
            None => {
                return Err(ProtocolError::new(
                    BadVersion,
                    "request has no version field \"v\"",
                ));
            }
            Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
            Some(other) => {
                return Err(ProtocolError::new(
                    BadVersion,
                    format!(
                        "protocol version {other} is not supported; this daemon speaks {VERSION}"
                    ),
                ));
            }
        }
        let verb = match obj.remove("verb") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(ProtocolError::new(BadRequest, "\"verb\" must be a string")),
            None => return Err(ProtocolError::new(BadRequest, "request has no \"verb\"")),
        };
        let req = match verb.as_str() {
            "submit" => Self::Submit(Box::new(fields(&verb, obj)?)),
            "submit_many" => {
                let many: SubmitMany = fields(&verb, obj)?;
                if many.jobs.len() > MAX_BATCH {
                    return Err(ProtocolError::new(
                        TooLarge,
                        format!(
                            "{} jobs in one request; the limit is {MAX_BATCH}",
                            many.jobs.len()
                        ),
                    ));
                }
                Self::SubmitMany(many)
            }
            "status" => Self::Status(fields(&verb, obj)?),
            "cancel" => Self::Cancel(fields(&verb, obj)?),
            "pause" => Self::Pause(fields(&verb, obj)?),
            "resume" => Self::Resume(fields(&verb, obj)?),
            "wait" => Self::Wait(fields(&verb, obj)?),
            "stats" => Self::Stats(fields(&verb, obj)?),
            "events" => Self::Events(fields(&verb, obj)?),
            "metrics" => Self::Metrics(fields(&verb, obj)?),
            _ => {
                return Err(ProtocolError::new(
                    UnknownVerb,
                    format!(
                        "unknown verb {}; expected one of: {}",
                        crate::model::text::quoted(&verb),
                        VERBS.join(", ")
                    ),
                ));
            }
        };
        Ok(req)
    }

    /// The request as one JSON line (no newline), for the client.
    pub fn to_line(&self) -> String {
        let body = match self {
            Self::Submit(x) => serde_json::to_value(x),
            Self::SubmitMany(x) => serde_json::to_value(x),
            Self::Status(x) => serde_json::to_value(x),
            Self::Cancel(x) | Self::Pause(x) | Self::Resume(x) => serde_json::to_value(x),
            Self::Wait(x) => serde_json::to_value(x),
            Self::Stats(x) => serde_json::to_value(x),
            Self::Events(x) => serde_json::to_value(x),
            Self::Metrics(x) => serde_json::to_value(x),
        };
        let mut obj = match body {
            Ok(Value::Object(o)) => o,
            _ => Map::new(),
        };
        obj.insert("v".into(), VERSION.into());
        obj.insert("verb".into(), self.verb().into());
        Value::Object(obj).to_string()
    }
}

fn fields<T: DeserializeOwned>(verb: &str, obj: Map<String, Value>) -> Result<T, ProtocolError> {
    serde_json::from_value(Value::Object(obj))
        .map_err(|e| ProtocolError::new(ErrorCode::BadRequest, format!("bad {verb} request: {e}")))
}

/// What the daemon reports about a job. `env` is present only for root and the job's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: JobId,
    pub name: String,
    pub state: JobState,
    pub user: String,
    pub uid: u32,
    pub cores: Vec<usize>,
    pub pids: Vec<u32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub priority: i32,
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<std::collections::BTreeMap<String, String>>,
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub held: bool,
    #[serde(default, skip_serializing_if = "Origin::is_lowsched")]
    pub origin: Origin,
    /// Which array task it is (shown as `ARRAY_INDEX`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<ArrayTask>,
    /// Run-time limit in seconds (`submit --time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_s: Option<f64>,
    /// Time it ran before it last started or resumed (time paused not counted).
    #[serde(default)]
    pub ran_ms: u64,
    /// When it last started or resumed, while it runs: its run time is `ran_ms` plus the
    /// time since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Dependency>,
    /// What it asked for (absent from older daemons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<Asked>,
    /// GPUs it was given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
    /// What its cgroup reported when it ended (`history`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// The resources and outputs a job asked for, as `status ID` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Asked {
    pub cores: CoreRange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    #[serde(default, skip_serializing_if = "GpuRequest::is_none")]
    pub gpus: GpuRequest,
    /// Output files it named (`None`: `jobs/ID/stdout` or `stderr` in the daemon's state dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
}

impl Asked {
    pub fn of(spec: &JobSpec) -> Self {
        Self {
            cores: spec.cores,
            memory: spec.memory,
            gpus: spec.gpus.clone(),
            stdout: spec.stdout.clone(),
            stderr: spec.stderr.clone(),
            cwd: spec.cwd.clone(),
        }
    }
}

/// A successful answer's payload (its fields sit beside `v` and `ok` in the response object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Submitted { id: JobId },
    SubmittedMany { ids: Vec<JobId> },
    // Before `Job`: untagged matching takes the first variant whose fields are all present.
    Waited { done: bool, job: JobStatus },
    Job { job: JobStatus },
    Jobs { jobs: Vec<JobStatus> },
    Stats { stats: Value },
    Events { events: Vec<EventRecord>, last: u64 },
    Metrics { metrics: String },
}

/// A response line: `{"v":1,"ok":true,...}` or `{"v":1,"ok":false,"error":{code,message}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProtocolError>,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
}

impl Response {
    pub fn ok(reply: Reply) -> Self {
        Self {
            v: VERSION,
            ok: true,
            error: None,
            reply: Some(reply),
        }
    }

    pub fn err(e: ProtocolError) -> Self {
        Self {
            v: VERSION,
            ok: false,
            error: Some(e),
            reply: None,
        }
    }

    /// One JSON line including the newline.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"v":{VERSION},"ok":false,"error":{{"code":"internal","message":"cannot encode response: {e}"}}}}"#
            )
        });
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, ProtocolError> {
        Request::parse(s.as_bytes())
    }

    fn code(s: &str) -> ErrorCode {
        parse(s).unwrap_err().code
    }

    #[test]
    fn requests_round_trip() {
        let mut spec = JobSpec::new(vec!["sleep".into(), "1".into()]);
        spec.priority = 3;
        let reqs = [
            Request::Submit(Box::new(Submit {
                job: spec.clone(),
                user: Some("nobody".into()),
            })),
            Request::SubmitMany(SubmitMany {
                jobs: vec![spec.clone(), spec],
                user: None,
            }),
            Request::Status(Status { id: None }),
            Request::Status(Status { id: Some(JobId(4)) }),
            Request::Cancel(Target { id: JobId(1) }),
            Request::Pause(Target { id: JobId(1) }),
            Request::Resume(Target { id: JobId(1) }),
            Request::Wait(Wait {
                id: JobId(1),
                timeout_ms: 5,
            }),
            Request::Stats(Stats { histograms: true }),
            Request::Events(Events {
                after: 3,
                timeout_ms: 100,
                limit: Some(7),
            }),
        ];
        for r in reqs {
            assert_eq!(parse(&r.to_line()).unwrap(), r);
        }
    }

    #[test]
    fn bad_requests_get_named_errors() {
        use ErrorCode::*;
        assert_eq!(code("{"), BadRequest);
        assert_eq!(code("[1]"), BadRequest);
        assert_eq!(code(r#"{"verb":"status"}"#), BadVersion);
        assert_eq!(code(r#"{"v":2,"verb":"status"}"#), BadVersion);
        assert_eq!(code(r#"{"v":"1","verb":"status"}"#), BadVersion);
        assert_eq!(code(r#"{"v":1}"#), BadRequest);
        assert_eq!(code(r#"{"v":1,"verb":7}"#), BadRequest);
        assert_eq!(code(r#"{"v":1,"verb":"launch"}"#), UnknownVerb);
        assert_eq!(code(r#"{"v":1,"verb":"status","idd":1}"#), BadRequest);
        assert_eq!(code(r#"{"v":1,"verb":"cancel","id":"x"}"#), BadRequest);
        assert_eq!(code(r#"{"v":1,"verb":"cancel","id":-1}"#), BadRequest);
        assert_eq!(code(r#"{"v":1,"verb":"cancel","id":1e400}"#), BadRequest);
        assert_eq!(code(r#"{"v":1,"verb":"cancel"}"#), BadRequest);
        let e = parse(r#"{"v":1,"verb":"status","idd":1}"#).unwrap_err();
        assert!(
            e.message.contains("idd") && e.message.contains("status"),
            "{e}"
        );
        let e = parse(r#"{"v":1,"verb":"launch"}"#).unwrap_err();
        assert!(
            e.message.contains("launch") && e.message.contains("submit"),
            "{e}"
        );
        let big = format!(
            r#"{{"v":1,"verb":"status","x":"{}"}}"#,
            "a".repeat(MAX_REQUEST)
        );
        assert_eq!(code(&big), TooLarge);
        assert_eq!(
            Request::parse(&[0xff, 0xfe, 0]).unwrap_err().code,
            BadRequest
        );
    }

    #[test]
    fn responses_are_single_lines_with_version() {
        let ok = Response::ok(Reply::Submitted { id: JobId(9) }).to_line();
        assert_eq!(ok, "{\"v\":1,\"ok\":true,\"id\":9}\n");
        let err = Response::err(ProtocolError::new(ErrorCode::NotFound, "no job 9")).to_line();
        assert!(err.ends_with('\n') && err.matches('\n').count() == 1);
        let back: Response = serde_json::from_str(err.trim()).unwrap();
        assert_eq!(back.error.unwrap().code, ErrorCode::NotFound);
        let back: Response = serde_json::from_str(ok.trim()).unwrap();
        assert_eq!(back.reply, Some(Reply::Submitted { id: JobId(9) }));
    }
}
